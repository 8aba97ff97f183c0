"""Installs `kd`, a JAX/Flax framework for knowledge-distillation experiments."""

import setuptools

setuptools.setup(
    name="kd",
    version="0.1.0",
    description="Knowledge-distillation experiments in JAX/Flax: configs, pure train steps, reports.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["kd", "kd.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml-collections>=1.1",
        "tensorflow-datasets>=4.9.10",
        "absl-py>=2.5",
        "grain>=0.2.18",
        "array-record>=0.8",
        "tensorboardX>=2.6",
        "scikit-learn>=1.9",  # The offline `digits` dataset.
        "mnist1d>=0.0.2",  # The offline `mnist1d` dataset (generated, no download).
        "importlib_resources",  # Needed by TFDS's builders when TensorFlow is absent.
        "pillow>=10",  # Resizing images of varying size (data.image_size).
        "submitit>=1.5",  # The Slurm backend of kd.sweep.
        "safetensors>=0.4",  # Reading PyTorch-layout checkpoints without torch (kd.convert).
        "ml-dtypes>=0.4",  # bfloat16 tensors in torch.save files (kd.convert.torch_pickle).
        "tokenizers>=0.20",  # Subword tokenizers: Hugging Face tokenizer.json, BPE training (kd.lm.tokenizer).
        "jinja2>=3.1",  # Chat templates, rendered as transformers renders them (kd.lm.tokenizer).
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.11", "ipykernel>=6", "matplotlib>=3.8"],
        "notebook": ["jupyter", "matplotlib>=3.8"],
    },
)
