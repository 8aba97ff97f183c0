r"""Hugging Face checkpoint folders <-> kd's decoders (kd.models.hf_decoders), read without torch.

    model_config, variables = kd.convert.hf.load("path/to/Qwen3-0.6B")     # config.json + safetensors
    kd.convert.hf.to_hf(model_config, variables, "out/")                  # transformers loads out/
    python -m kd.convert runs/lm/student out/ --to=hf                      # a kd export -> a HF folder

A folder is a Hugging Face checkpoint when it has a `config.json` with a `model_type`; its weights are
`model.safetensors`, or shards `model-0000x-of-0000y.safetensors` listed by
`model.safetensors.index.json`. `model_type` selects the family (`FAMILIES`); the config's fields
become the kd model's attributes under the same names (`rope_scaling` / `rope_parameters` become
`rope_type`, `rope_factor`, ...), and each array is placed as transformers names it
(`modeling_gpt2.py`, `modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`):

    Linear weight [out, in]         -> Dense kernel [in, out] (transposed)
    GPT-2 Conv1D weight [in, out]   -> Dense kernel [in, out] (as it is)
    LayerNorm / RMSNorm weight      -> scale
    Embedding weight [vocab, width] -> embedding (and the tied head)

A checkpoint's `tokenizer.json`, if any, is recorded in the model config as `tokenizer` (its path).
Problems (no weights, an unknown `model_type`, a missing field, an array that is missing or does not
fit) are one `kd.errors.ConfigError` line, raised before any weight is read.

Arrays are read one at a time (`safetensors.safe_open`; bfloat16 ones straight from the file's bytes,
which numpy cannot name) and, with `shardings`, each is put on the devices at once, so the host never
holds a second copy of the whole model. They become float32 by default; `dtype=None` keeps them as
stored (`load_model(folder, dtype=None)` then also computes in bfloat16 for a bfloat16 checkpoint).
"""

import json
import os
import shutil
from typing import Any, Callable, Mapping

import jax
import ml_dtypes
import numpy as np

from kd import models
from kd.errors import ConfigError
from kd.models import hf_decoders

CONFIG_JSON = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_JSON = "model.safetensors.index.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")

# transformers' model_type -> (kd model name, the prefix of the base model's arrays, the class to_hf names).
FAMILIES = {
    "gpt2": ("gpt2", "transformer.", "GPT2LMHeadModel"),
    "llama": ("llama", "model.", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "model.", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "model.", "Qwen3ForCausalLM"),
}
_MODEL_TYPE = {kd_name: model_type for model_type, (kd_name, _, _) in FAMILIES.items()}

# config.json fields without which the model's shapes are unknown.
_REQUIRED = {
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions"),
    "rotary": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
}
# kd attribute = config.json field, read as it is when present (else the class default, which is
# transformers' config default).
_GPT2_FIELDS = ("n_positions", "n_embd", "n_layer", "n_head", "activation_function", "layer_norm_epsilon",
                "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "tie_word_embeddings")
_ROTARY_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "max_position_embeddings", "rms_norm_eps", "hidden_act", "tie_word_embeddings")
_EXTRA_FIELDS = {"llama": ("attention_bias", "mlp_bias"), "qwen2": (), "qwen3": ("attention_bias",)}
# Arrays some checkpoints carry that are no weights: GPT-2's causal-mask buffers, old rotary caches.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")

# A layout row: (path inside "params", array name without the family prefix, transposed?).
Row = tuple[tuple[str, ...], str, bool]
# Where `load` puts the arrays (see its docstring).
Shardings = jax.sharding.Sharding | Mapping[str, Any] | Callable[[tuple[str, ...], tuple[int, ...]], Any] | None


def is_hf_folder(path: str) -> bool:
  """Whether `path` is a Hugging Face checkpoint folder (a config.json with a model_type, no kd model.json)."""
  config_path = os.path.join(path, CONFIG_JSON)
  if not os.path.isdir(path) or not os.path.isfile(config_path) or os.path.exists(os.path.join(path, "model.json")):
    return False
  try:
    with open(config_path) as f:
      return "model_type" in json.load(f)
  except (OSError, ValueError):
    return False


def _read_json(path: str, where: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ConfigError(f"{where}: {os.path.basename(path)} is not JSON ({e})") from None


def _rope_attributes(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
  """rope_theta and rope_scaling (transformers 4) or rope_parameters (transformers 5) as kd attributes."""
  rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
  if rope and all(isinstance(value, Mapping) for value in rope.values()):
    raise ConfigError(f"{where}: rotary parameters per layer type ({sorted(rope)}) are not supported; kd reads "
                      "one rope_parameters for all layers")
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in hf_decoders.ROPE_TYPES:
    raise ConfigError(f"{where}: rope_type {rope_type!r} is not supported; kd implements {list(hf_decoders.ROPE_TYPES)}")
  if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ConfigError(f"{where}: partial_rotary_factor != 1 is not supported (kd rotates every channel of a head)")
  attributes = {"rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), "rope_type": rope_type}
  if rope_type in ("linear", "llama3"):
    if "factor" not in rope:
      raise ConfigError(f"{where}: rope_type {rope_type!r} needs a 'factor' in rope_scaling / rope_parameters")
    attributes["rope_factor"] = float(rope["factor"])
  if rope_type == "llama3":
    for key in ("low_freq_factor", "high_freq_factor"):
      if key not in rope:
        raise ConfigError(f"{where}: rope_type 'llama3' needs {key!r} in rope_scaling / rope_parameters")
      attributes[f"rope_{key}"] = float(rope[key])
    attributes["rope_original_max_position_embeddings"] = int(rope.get(
        "original_max_position_embeddings", hf.get("max_position_embeddings", 8192)))
  return attributes


def model_config_from_hf(hf: Mapping[str, Any], where: str) -> tuple[dict[str, Any], int]:
  """(kd model config, vocabulary size) of a transformers config (config.json's dict)."""
  model_type = hf.get("model_type")
  if model_type not in FAMILIES:
    raise ConfigError(f"{where}: model_type {model_type!r} is not supported; kd reads {sorted(FAMILIES)}")
  name = FAMILIES[model_type][0]
  kind = "gpt2" if name == "gpt2" else "rotary"
  missing = [key for key in _REQUIRED[kind] if hf.get(key) is None]
  if missing:
    raise ConfigError(f"{where}: config.json (model_type {model_type!r}) has no {', '.join(missing)}: the model's "
                      "shapes are unknown without them; add them, or save the model again with transformers")
  if name == "gpt2":
    if hf.get("add_cross_attention"):
      raise ConfigError(f"{where}: GPT-2 with cross-attention (add_cross_attention) is not supported")
    attributes = {key: hf[key] for key in _GPT2_FIELDS if key in hf}
    attributes["n_inner"] = int(hf.get("n_inner") or 0)
  else:
    if hf.get("use_sliding_window"):
      raise ConfigError(f"{where}: use_sliding_window=true is not supported (kd attends to every earlier token)")
    attributes = {key: hf[key] for key in _ROTARY_FIELDS + _EXTRA_FIELDS[name] if key in hf}
    attributes["num_key_value_heads"] = int(hf.get("num_key_value_heads") or hf["num_attention_heads"])
    # Stated even where it follows from the others (as transformers 5 writes it), so configs compare equal.
    derived = 128 if name == "qwen3" else hf["hidden_size"] // hf["num_attention_heads"]  # Qwen3Config: 128.
    attributes["head_dim"] = int(hf.get("head_dim") or derived)
    attributes.update(_rope_attributes(hf, where))
  model_config = models.model_config(name, **attributes)
  models.check_model_config(model_config, where)
  return model_config, int(hf["vocab_size"])


def read_config(folder: str, where: str | None = None) -> tuple[dict[str, Any], int]:
  """(kd model config, vocabulary size) of the checkpoint folder; the config records its tokenizer.json."""
  where = where or folder
  config_path = os.path.join(folder, CONFIG_JSON)
  if not os.path.isfile(config_path):
    raise ConfigError(f"{where}: no {CONFIG_JSON}: not a Hugging Face checkpoint folder")
  model_config, vocab_size = model_config_from_hf(_read_json(config_path, where), where)
  tokenizer = os.path.join(folder, TOKENIZER_JSON)
  if os.path.isfile(tokenizer):
    model_config["tokenizer"] = os.path.abspath(tokenizer)
  return model_config, vocab_size


def weight_files(folder: str, where: str | None = None) -> list[str]:
  """The safetensors files of the checkpoint: model.safetensors, or the shards its index lists."""
  where = where or folder
  index_path = os.path.join(folder, INDEX_JSON)
  if os.path.isfile(index_path):
    weight_map = _read_json(index_path, where).get("weight_map", {})
    files = sorted(set(weight_map.values()))
    absent = [name for name in files if not os.path.isfile(os.path.join(folder, name))]
    if not files or absent:
      raise ConfigError(f"{where}: {INDEX_JSON} lists {'no shards' if not files else 'absent shards ' + ', '.join(absent)}:"
                        " download every shard of the checkpoint")
    return [os.path.join(folder, name) for name in files]
  if os.path.isfile(os.path.join(folder, SINGLE_FILE)):
    return [os.path.join(folder, SINGLE_FILE)]
  others = sorted(name for name in os.listdir(folder) if name.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack")))
  found = f" (it has {', '.join(others)}: save it again with transformers' save_pretrained(safe_serialization=True))" \
      if others else ""
  raise ConfigError(f"{where}: no weights: expected {SINGLE_FILE}, or shards listed by {INDEX_JSON}{found}")


def layout(model_config: Mapping[str, Any]) -> list[Row]:
  """Every kd parameter of the model and the transformers array it comes from (without the base prefix)."""
  config = models.model_config(**{k: v for k, v in model_config.items() if k not in models.CONFIG_KEYS or k == "name"})
  name = config["name"]
  if name == "gpt2":
    rows: list[Row] = [(("wte", "embedding"), "wte.weight", False), (("wpe", "embedding"), "wpe.weight", False)]
    for i in range(config["n_layer"]):
      block = f"layers_{i}"
      for kd_name, hf_name in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
        rows += [((block, kd_name, "scale"), f"h.{i}.{hf_name}.weight", False),
                 ((block, kd_name, "bias"), f"h.{i}.{hf_name}.bias", False)]
      for kd_path, hf_name in ((("attn", "c_attn"), "attn.c_attn"), (("attn", "c_proj"), "attn.c_proj"),
                               (("c_fc",), "mlp.c_fc"), (("c_proj",), "mlp.c_proj")):
        # Conv1D stores [in, out], as Flax does.
        rows += [((block,) + kd_path + ("kernel",), f"h.{i}.{hf_name}.weight", False),
                 ((block,) + kd_path + ("bias",), f"h.{i}.{hf_name}.bias", False)]
    rows += [(("final_norm", "scale"), "ln_f.weight", False), (("final_norm", "bias"), "ln_f.bias", False)]
  else:
    qkv_bias, o_bias, mlp_bias = models.build_model(config, 1)._biases()
    rows = [(("embed_tokens", "embedding"), "embed_tokens.weight", False)]
    for i in range(config["num_hidden_layers"]):
      block, hf_block = f"layers_{i}", f"layers.{i}"
      rows += [((block, "input_layernorm", "scale"), f"{hf_block}.input_layernorm.weight", False),
               ((block, "post_attention_layernorm", "scale"), f"{hf_block}.post_attention_layernorm.weight", False)]
      for projection, bias in (("q_proj", qkv_bias), ("k_proj", qkv_bias), ("v_proj", qkv_bias), ("o_proj", o_bias)):
        rows.append(((block, "self_attn", projection, "kernel"), f"{hf_block}.self_attn.{projection}.weight", True))
        if bias:
          rows.append(((block, "self_attn", projection, "bias"), f"{hf_block}.self_attn.{projection}.bias", False))
      if name == "qwen3":
        rows += [((block, "self_attn", norm, "scale"), f"{hf_block}.self_attn.{norm}.weight", False)
                 for norm in ("q_norm", "k_norm")]
      for projection in ("gate_proj", "up_proj", "down_proj"):
        rows.append(((block, projection, "kernel"), f"{hf_block}.mlp.{projection}.weight", True))
        if mlp_bias:
          rows.append(((block, projection, "bias"), f"{hf_block}.mlp.{projection}.bias", False))
    rows.append((("final_norm", "scale"), "norm.weight", False))
  if not config["tie_word_embeddings"]:
    rows.append((("lm_head", "kernel"), "lm_head.weight", True))
  return rows


def _family_prefix(model_config: Mapping[str, Any]) -> str:
  return FAMILIES[_MODEL_TYPE[model_config["name"]]][1]


def _expected_shapes(model_config: Mapping[str, Any], vocab_size: int) -> dict[tuple[str, ...], tuple[int, ...]]:
  module = models.build_model(model_config, vocab_size)
  abstract = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, 1), np.int32))
  return {tuple(key.key for key in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract["params"])[0]}


class _Safetensors:
  """The arrays of some safetensors files, by name, read one at a time (headers first, data on demand)."""

  _DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
             "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

  def __init__(self, paths: list[str], where: str):
    self.entries: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for path in paths:
      try:
        with open(path, "rb") as f:
          header_size = int.from_bytes(f.read(8), "little")
          header = json.loads(f.read(header_size))
      except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: {os.path.basename(path)} is not a safetensors file ({type(e).__name__}: {e})") from None
      header.pop("__metadata__", None)
      for name, entry in header.items():
        self.entries[name] = (path, 8 + header_size, entry)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name][2]["shape"])

  def get(self, name: str) -> np.ndarray:
    path, data_start, entry = self.entries[name]
    dtype = self._DTYPES.get(entry["dtype"])
    if dtype is None:
      raise ConfigError(f"{path}: array {name} has dtype {entry['dtype']}, which kd does not read")
    if entry["dtype"] != "BF16":
      import safetensors  # pylint: disable=g-import-not-at-top
      with safetensors.safe_open(path, framework="np") as f:
        return f.get_tensor(name)
    begin, end = entry["data_offsets"]
    # numpy has no name for bfloat16 (safetensors' numpy reader refuses it): view the bytes.
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))
    return np.array(raw.view(dtype).reshape(entry["shape"]))


def _listed(names: list[str], limit: int = 4) -> str:
  return ", ".join(names[:limit]) + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _sharding_of(shardings, path: tuple[str, ...], shape: tuple[int, ...]):
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    return shardings
  if callable(shardings):
    return shardings(path, shape)
  node = shardings["params"] if "params" in shardings else shardings
  for key in path:
    node = node[key]
  return node


def load(folder: str, *, shardings: Shardings = None, dtype=np.float32, where: str | None = None,
         model_config: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """(kd model config, variables) of a Hugging Face checkpoint folder.

  Args:
    folder: the checkpoint folder (config.json and safetensors weights).
    shardings: None (numpy arrays on the host); one `jax.sharding.Sharding` for every array; a pytree of
      shardings shaped like the variables (e.g. `jax.jit(init).out_shardings`, with or without the
      "params" level); or `(path, shape) -> Sharding`. Each array goes to its devices as it is read.
    dtype: the parameters' dtype (kd's models hold float32 parameters), or None: each array as the
      file stores it (bfloat16 weights stay bfloat16: half the memory of float32).
    where: how errors name the folder (a config key).
    model_config: the kd model config to read the folder with (e.g. a config's `dtype` override);
      default: the one config.json describes.
  """
  where = where or folder
  hf_config, vocab_size = read_config(folder, where)
  model_config = dict(model_config or hf_config)
  files = weight_files(folder, where)
  arrays = _Safetensors(files, where)
  prefix = _family_prefix(model_config)
  names = {(name[len(prefix):] if name.startswith(prefix) else name): name for name in arrays.entries}
  rows = layout(model_config)
  expected = _expected_shapes(model_config, vocab_size)
  wanted = {hf_name for _, hf_name, _ in rows}
  missing = [hf_name for _, hf_name, _ in rows if hf_name not in names]
  misfits = []
  for kd_path, hf_name, transposed in rows:
    if hf_name in names:
      want = expected[kd_path][::-1] if transposed else expected[kd_path]
      if arrays.shape(names[hf_name]) != tuple(want):
        misfits.append(f"{names[hf_name]} is {arrays.shape(names[hf_name])}, expected {tuple(want)}")
  tied_head = "lm_head.weight" if model_config.get("tie_word_embeddings") else None
  unused = sorted(names[name] for name in names
                  if name not in wanted and name != tied_head and not name.endswith(_BUFFER_SUFFIXES))
  problems = ([f"missing {_listed(missing)}"] if missing else []) + (
      [f"misfitting {_listed(misfits)}"] if misfits else []) + ([f"not in the model {_listed(unused)}"] if unused else [])
  if problems:
    raise ConfigError(f"{where}: the weights do not fit its config.json ({model_config['name']}): {'; '.join(problems)}")
  params: dict[str, Any] = {}
  for kd_path, hf_name, transposed in rows:
    array = arrays.get(names[hf_name])
    array = np.ascontiguousarray(array.T if transposed else array, dtype=array.dtype if dtype is None else dtype)
    sharding = _sharding_of(shardings, kd_path, array.shape)
    node = params
    for key in kd_path[:-1]:
      node = node.setdefault(key, {})
    node[kd_path[-1]] = jax.device_put(array, sharding) if sharding is not None else array
    del array
  return model_config, {"params": params}


def vocab_size_of(variables: Mapping[str, Any]) -> int:
  """The vocabulary size of a decoder's variables (rows of its token embedding)."""
  params = variables["params"]
  table = params["wte"] if "wte" in params else params["embed_tokens"]
  return int(np.shape(table["embedding"])[0])


def hf_config(model_config: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
  """The transformers config.json of a kd decoder's model config."""
  config = models.model_config(**{k: v for k, v in model_config.items() if k not in models.CONFIG_KEYS or k == "name"})
  name = config["name"]
  if name not in _MODEL_TYPE:
    raise ConfigError(f"model {name!r} has no Hugging Face layout; kd writes {sorted(_MODEL_TYPE)}")
  model_type = _MODEL_TYPE[name]
  out: dict[str, Any] = {"model_type": model_type, "architectures": [FAMILIES[model_type][2]],
                         "vocab_size": int(vocab_size), "dtype": "float32", "use_cache": True}
  if name == "gpt2":
    out.update({key: config[key] for key in _GPT2_FIELDS})
    out["n_inner"] = config["n_inner"] or None
    return out
  out.update({key: config[key] for key in _ROTARY_FIELDS + _EXTRA_FIELDS[name]})
  out["num_key_value_heads"] = config["num_key_value_heads"] or config["num_attention_heads"]
  out["head_dim"] = config["head_dim"] or config["hidden_size"] // config["num_attention_heads"]
  rope = {"rope_type": config["rope_type"], "rope_theta": config["rope_theta"]}
  if config["rope_type"] in ("linear", "llama3"):
    rope["factor"] = config["rope_factor"]
  if config["rope_type"] == "llama3":
    rope.update(low_freq_factor=config["rope_low_freq_factor"], high_freq_factor=config["rope_high_freq_factor"],
                original_max_position_embeddings=config["rope_original_max_position_embeddings"])
  # Both spellings: transformers 5 reads rope_parameters, transformers 4 rope_theta and rope_scaling.
  out["rope_parameters"] = rope
  out["rope_theta"] = config["rope_theta"]
  out["rope_scaling"] = None if config["rope_type"] == "default" else {k: v for k, v in rope.items() if k != "rope_theta"}
  return out


def to_hf(model_config: Mapping[str, Any], variables: Mapping[str, Any], out_dir: str) -> str:
  """Writes a Hugging Face checkpoint folder (config.json, model.safetensors) of a kd decoder; returns it.

  transformers' `AutoModelForCausalLM.from_pretrained(out_dir)` loads it (tests/fixtures/hf checks the
  logits). The tokenizer files next to the model config's `tokenizer`, if any, are copied along.
  """
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  if model_config.get("name") not in _MODEL_TYPE:
    raise ConfigError(f"model {model_config.get('name')!r} has no Hugging Face layout; kd writes {sorted(_MODEL_TYPE)}")
  vocab_size = vocab_size_of(variables)
  config = hf_config(model_config, vocab_size)
  for name in (CONFIG_JSON, SINGLE_FILE, INDEX_JSON):
    if os.path.exists(os.path.join(out_dir, name)):
      raise ConfigError(f"{out_dir} already holds {name}: choose another destination (nothing was overwritten)")
  prefix = _family_prefix(model_config)
  params = variables["params"]
  tensors = {}
  for kd_path, hf_name, transposed in layout(model_config):
    node = params
    for key in kd_path:
      node = node[key]
    array = np.asarray(node, np.float32)
    full_name = hf_name if hf_name.startswith("lm_head.") else prefix + hf_name
    tensors[full_name] = np.ascontiguousarray(array.T if transposed else array)
  os.makedirs(out_dir, exist_ok=True)
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, SINGLE_FILE), metadata={"format": "pt"})
  with open(os.path.join(out_dir, CONFIG_JSON), "w") as f:
    json.dump(config, f, indent=2)
  tokenizer = model_config.get("tokenizer")
  if tokenizer and os.path.isfile(tokenizer):
    for name in TOKENIZER_FILES:
      source = os.path.join(os.path.dirname(tokenizer), name)
      if os.path.isfile(source):
        shutil.copyfile(source, os.path.join(out_dir, name))
  return out_dir


def module_of(model_config: Mapping[str, Any], vocab_size: int):
  """The kd module of a decoder model config (kd.models.build_model with the vocabulary as classes)."""
  return models.build_model({k: tuple(v) if isinstance(v, list) else v for k, v in model_config.items()}, vocab_size)

def spec_of(model_config: Mapping[str, Any], vocab_size: int, sequence_length: int | None = None):
  """The DatasetSpec a decoder reads: windows of token ids ("tokens") over its vocabulary."""
  from kd.data import DatasetSpec  # pylint: disable=g-import-not-at-top

  length = sequence_length or module_of(model_config, vocab_size).max_len
  return DatasetSpec(name=f"huggingface:{_MODEL_TYPE[model_config['name']]}", input_key="tokens",
                     input_shape=(int(length),), input_dtype="int32", num_classes=int(vocab_size), split_sizes={})


def load_model(folder: str, *, shardings: Shardings = None, dtype=np.float32):
  """A Hugging Face checkpoint folder as `kd.load_model` returns a kd export (a `kd.checkpoint.LoadedModel`).

  `loaded.apply(loaded.variables, {"tokens": ids_BxT}, train=False)["logits"]` is [B, T, vocab];
  `loaded.model_config` is the kd model config (with `tokenizer` when the folder has a tokenizer.json).
  `dtype=None` keeps the weights as stored and, when they are all bfloat16 (or float16), computes in
  that dtype too, as transformers' `from_pretrained(..., dtype="auto")` does.
  """
  from kd import checkpoint  # pylint: disable=g-import-not-at-top  # kd.checkpoint imports the model zoo.

  model_config, variables = load(folder, shardings=shardings, dtype=dtype)
  stored = {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(variables)}
  if dtype is None and len(stored) == 1 and next(iter(stored)) in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)):
    model_config = {**model_config, "dtype": next(iter(stored)).name}
  vocab_size = vocab_size_of(variables)
  module = module_of(model_config, vocab_size)
  apply = models.make_apply(module, "tokens", preprocess=models.preprocess_of(model_config))
  return checkpoint.LoadedModel(model_config, spec_of(model_config, vocab_size), module, apply, variables)


def main(argv: list[str]) -> None:
  """`python -m kd.convert <kd export> <dst> --to=hf`: a kd export of a decoder as a Hugging Face folder."""
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from kd import checkpoint  # pylint: disable=g-import-not-at-top
  from kd.errors import UserError  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m kd.convert", description=main.__doc__)
  parser.add_argument("source", help="a kd export (a stage folder with model.json) of a gpt2/llama/qwen2/qwen3 model")
  parser.add_argument("destination", help="the folder for config.json and model.safetensors")
  parser.add_argument("--to", choices=["hf"], required=True, help="hf: a Hugging Face checkpoint folder")
  args = parser.parse_args(argv)
  try:
    loaded = checkpoint.load_model(args.source)
    model_config = dict(loaded.model_config)
    if not model_config.get("tokenizer") and loaded.spec.name.startswith("text_files/"):
      from kd.data import text_files  # pylint: disable=g-import-not-at-top  # Its tokenizer goes along.
      try:
        model_config["tokenizer"] = text_files.parse(loaded.spec.name[len("text_files/"):]).tokenizer
      except UserError:  # The data's files or tokenizer have moved: the weights still convert.
        pass
    to_hf(model_config, loaded.variables, args.destination)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {args.destination}: {_MODEL_TYPE[loaded.model_config['name']]} "
        f"({models.count_params(loaded.variables['params']):,} parameters, vocabulary "
        f"{vocab_size_of(loaded.variables)}); transformers' AutoModelForCausalLM.from_pretrained reads it")
