"""kd: knowledge-distillation experiments in JAX/Flax.

The pieces a notebook needs:
    kd.run(config, workdir)        run an experiment's stages and its report card
    kd.load_model(path)            an exported model (a stage folder) or a Hugging Face checkpoint
                                   folder: its apply function and variables
    kd.load_config(path, arg)      an experiment file's config, validated
"""

import warnings

from kd import checkpoint as _checkpoint
from kd.convert import hf as _hf
from kd.experiment import load_config
from kd.experiment import run

__version__ = "0.1.0"


def load_model(path: str, **kwargs) -> _checkpoint.LoadedModel:
  """A stage's export (`<workdir>/seed_<n>/<stage>`) or a Hugging Face checkpoint folder (config.json +
  safetensors; `kwargs`: `shardings`, `dtype`, see kd.convert.hf.load_model), as `LoadedModel`:
  `model.apply(model.variables, batch, train=False)`."""
  if _hf.is_hf_folder(path):
    return _hf.load_model(path, **kwargs)
  return _checkpoint.load_model(path, **kwargs)

# `python -m kd.report` runs a module this package has already imported (through kd.experiment);
# runpy warns about that, harmlessly: the module defines only functions.
warnings.filterwarnings("ignore", message="'kd.report' found in sys.modules", category=RuntimeWarning)
