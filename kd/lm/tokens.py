"""Next-token prediction on batches of fixed-length windows: targets and the weights of real tokens."""

import jax
import jax.numpy as jnp


def is_language_model(spec) -> bool:
  """Whether a dataset (a `kd.data.DatasetSpec`) is a token dataset for language modelling."""
  return spec.input_key == "tokens"


def next_token_targets(batch) -> tuple[jax.Array, jax.Array]:
  """The targets [B, L-1] of logits[:, :-1] and their weights (1 for a real next token, 0 for padding).

  Position i predicts token i+1; `batch["mask"]` marks real tokens, and `batch["loss_mask"]` (when a
  batch-preparation step sets it, e.g. to leave out a prompt) further restricts which targets count.
  """
  tokens_BxL = batch["tokens"]
  weights_BxL = batch["mask"] if "mask" in batch else jnp.ones(tokens_BxL.shape, bool)
  if "loss_mask" in batch:
    weights_BxL = weights_BxL & batch["loss_mask"]
  return tokens_BxL[:, 1:].astype(jnp.int32), weights_BxL[:, 1:].astype(jnp.float32)


def masked_mean(values_BxT: jax.Array, weights_BxT: jax.Array) -> jax.Array:
  """Mean over real tokens: sum(values * weights) / number of real tokens (not batch x length)."""
  return jnp.sum(values_BxT * weights_BxT) / jnp.maximum(jnp.sum(weights_BxT), 1.0)


def check_stages(config, spec, stages) -> None:
  """Raises ConfigError when a stage's model or method does not fit the dataset's kind.

  Language-model methods (`LANGUAGE_MODEL = True`) and models (`integer_inputs`) need a token dataset,
  and a token dataset needs both.
  """
  from kd import methods, models  # pylint: disable=g-import-not-at-top  # kd.methods imports this module.
  from kd.errors import ConfigError  # pylint: disable=g-import-not-at-top
  token_data = is_language_model(spec)
  for name in stages:
    stage = config.stages[name]
    lm_method = getattr(methods.METHODS[stage.method.name], "LANGUAGE_MODEL", False)
    # A LoRA student reads what its base reads.
    model_name = stage.model.base["name"] if stage.model.name == "lora" else stage.model.name
    lm_model = getattr(models.resolve_model_class(model_name), "integer_inputs", False)
    if token_data and not lm_method:
      language_methods = sorted(k for k, v in methods.METHODS.items() if getattr(v, "LANGUAGE_MODEL", False))
      raise ConfigError(f"stages.{name}.method.name={stage.method.name!r} is a classifier method but "
                        f"data.name={spec.name!r} is a token dataset: use one of {language_methods}")
    if token_data and not lm_model:
      raise ConfigError(f"stages.{name}.model.name={stage.model.name!r} cannot read tokens of "
                        f"data.name={spec.name!r}: use 'transformer_lm'")
    if token_data and config.teacher_cache.enabled and stage.teacher and not getattr(
        methods.METHODS[stage.method.name], "CACHEABLE", False):
      cacheable = sorted(key for key, module in methods.METHODS.items()
                         if getattr(module, "CACHEABLE", False) and getattr(module, "LANGUAGE_MODEL", False))
      raise ConfigError(f"stages.{name}.method.name={stage.method.name!r} runs the teacher model itself "
                        "(generation or layers), so its outputs cannot come from the teacher cache: use "
                        f"one of {cacheable} or set teacher_cache.enabled=False")
    if token_data and config.teacher_cache.enabled and stage.teacher and stage.method.get("chunk_size", 0):
      raise ConfigError(f"stages.{name}.method.chunk_size={stage.method.chunk_size} computes the divergence from "
                        "the teacher's hidden states and head, which the teacher cache does not hold: set "
                        "chunk_size=0 or teacher_cache.enabled=False")
    if not token_data and (lm_method or lm_model):
      what = f"method.name={stage.method.name!r}" if lm_method else f"model.name={stage.model.name!r}"
      raise ConfigError(f"stages.{name}.{what} is for language models but data.name={spec.name!r} is not a "
                        "token dataset: use data.name='stdlib_text' or a classifier method and model")
    if token_data:
      for key in ("teacher_checkpoint", "init_from"):
        if not (key == "teacher_checkpoint" and _cross_tokenizer(spec)):  # Its vocabulary is the teacher's.
          _check_checkpoint_vocabulary(stage.get(key, ""), spec, f"stages.{name}.{key}")
    if token_data and lm_method and (stage.teacher or stage.get("teacher_checkpoint", "")):
      _check_tokenizers(config, name, spec)


def _cross_tokenizer(spec) -> bool:
  from kd.data import text_files  # pylint: disable=g-import-not-at-top
  return bool(text_files.teacher_vocab_size_of(spec.name))


def _check_tokenizers(config, name: str, spec) -> None:
  """One tokenizer for a same-tokenizer method, two for a cross-tokenizer one (kd.methods.lm_uld): the
  dataset's tokenizations and the teacher's vocabulary (its logits, traced, not computed) must agree."""
  import jax  # pylint: disable=g-import-not-at-top
  from kd import external, methods  # pylint: disable=g-import-not-at-top
  from kd.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from kd.methods import lm_uld  # pylint: disable=g-import-not-at-top

  stage = config.stages[name]
  if stage.teacher.startswith(external.EMA):  # The student's own average: its vocabulary.
    return
  try:
    module = external.teacher_module(config, name, spec)
  except ConfigError:  # An apply function given in memory: nothing to trace here.
    return
  if not hasattr(module, "init"):  # Not a Linen module (an NNX model): its vocabulary is checked when it runs.
    return
  tokens = jax.ShapeDtypeStruct((2,) + tuple(spec.input_shape), "int32")
  variables = jax.eval_shape(lambda x: module.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x,
                                                   train=False), tokens)
  logits = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, tokens)
  lm_uld.check_tokenizers(stage.method.name, methods.METHODS[stage.method.name], spec.name, spec.num_classes,
                          int(logits.shape[-1]), f"stages.{name}.method")


def _check_checkpoint_vocabulary(path: str, spec, where: str) -> None:
  """ConfigError unless a Hugging Face checkpoint folder has exactly the dataset's vocabulary.

  Hugging Face checkpoints pad their embedding beyond their tokenizer (Qwen3: 151,936 rows for 151,669
  ids). A student is built with the dataset's vocabulary, so a padded teacher's logits (or a padded
  init_from's embedding) fit it only when the dataset states the padded size (text_files' `vocab_size`).
  """
  from kd.convert import hf  # pylint: disable=g-import-not-at-top  # It imports the model zoo.
  from kd.errors import ConfigError  # pylint: disable=g-import-not-at-top

  if not path or not hf.is_hf_folder(path):
    return
  _, vocab_size = hf.read_config(path, where)
  if vocab_size == spec.num_classes:
    return
  if vocab_size < spec.num_classes:
    raise ConfigError(f"{where}={path!r} has a vocabulary of {vocab_size} tokens, but {spec.name} has token ids up "
                      f"to {spec.num_classes - 1}: tokenize the data with the checkpoint's tokenizer")
  fix = (f"add vocab_size={vocab_size} to the text_files dataset name (data.name=...,vocab_size={vocab_size})"
         if spec.name.startswith("text_files/") else "tokenize the data with the checkpoint's tokenizer (text_files/...)")
  raise ConfigError(f"{where}={path!r} has a vocabulary of {vocab_size} tokens (an embedding padded beyond its "
                    f"tokenizer) but the models of {spec.name} have {spec.num_classes}: the student needs the "
                    f"checkpoint's vocabulary, so {fix}")
