r"""Students cut out of a teacher: fewer layers by a layer map, narrower layers by activation-based pruning.

    student_config, student_variables = students.derive_student(
        teacher_config, teacher_variables, num_layers=2, hidden_size=64, intermediate_size=192,
        num_heads=2, calibration_tokens=tokens_BxT)
    python -m kd.lm.students <teacher HF folder or kd export> <out HF folder> --num_layers=2 \
        --hidden_size=64 --intermediate_size=192 --num_heads=2 --calibration="text_files/..."

The result is an ordinary model config and variables (the teacher's family, with smaller sizes); the
CLI writes them as a Hugging Face folder (`kd.convert.hf.to_hf`, the teacher's tokenizer files copied),
which a stage names as `init_from` with `model = kd.convert.hf.read_config(folder)[0]`.

Depth. Student layer i is a copy of teacher layer `layer_map[i]`; by default the layers spread evenly
from the first to the last (`default_layer_map`, the formula of HF's DistilBERT extraction and of
`kd.methods.lm_distilbert`: 12 -> 6 keeps [0, 2, 4, 7, 9, 11]). Embeddings, norms and the head are
copied.

Width (Minitron: S. Muralidharan, S. T. Sreenivas, R. Joshi, M. Chochowski, M. Patwary, M. Shoeybi,
B. Catanzaro, J. Kautz, P. Molchanov, "Compact Language Models via Pruning and Knowledge Distillation",
NeurIPS 2024, arXiv:2407.14679, Section 2.2, activation-based importance). One forward pass of the
teacher over a calibration batch X (B sequences of T tokens, padding masked out) ranks:

    MLP neuron i of a layer      F(i) = mean_{B,T} |h_i|,  h = act(X W_gate) * (X W_up), the input of
                                 down_proj (GPT-2: act(X W_fc), the input of mlp.c_proj)
    attention head h of a layer  F(h) = mean_{B,T} ||attn_h(X)||_2, head h's output before o_proj;
                                 with grouped-query attention a key/value head and its query heads
                                 are one group, ranked by the sum of its query heads' F, kept or cut whole
    embedding channel j          F(j) = sum over the kept layers' RMSNorms (input_layernorm,
                                 post_attention_layernorm) and final_norm of mean_{B,T} |LN(X)_j|

and keeps the top ones (ties by index), in their original order, slicing every weight that reads or
writes them: the embedding's columns, every norm's scale, the rows of q/k/v and gate/up kernels and
the columns of o_proj and down_proj (channels), the columns of q/k/v and the rows of o_proj (heads), the
columns of gate/up and the rows of down_proj (neurons), the head's rows. `head_dim` is kept (Qwen3's
q/k norms are per head channel, so they stay whole). The paper then retrains the pruned model by
distillation, which is what the stages of `experiments/qwen3_stdlib.py` do.

Families: llama, qwen2, qwen3 (depth and every width); gpt2 (depth and the MLP; its attention width
is its hidden size, so heads and channels are not pruned); transformer_lm (depth only). A derived
student with every layer and the full widths is the teacher, array for array (tested).
"""

import argparse
import os
import sys
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd import models
from kd.errors import ConfigError
from kd.errors import UserError
from kd.models import hf_decoders

ROTARY = ("llama", "qwen2", "qwen3")
FAMILIES = ROTARY + ("gpt2", "transformer_lm")
CALIBRATION_BATCH = 16


def default_layer_map(num_teacher_layers: int, num_student_layers: int) -> tuple[int, ...]:
  """Teacher layers for the student's, evenly spread, first and last kept (12 -> 6: 0, 2, 4, 7, 9, 11)."""
  from kd.methods import lm_distilbert  # pylint: disable=g-import-not-at-top

  return lm_distilbert.default_layer_map(num_teacher_layers, num_student_layers)


def _full_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
  plain = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()}
  name = plain.get("name")
  if name not in FAMILIES:
    raise ConfigError(f"model {name!r}: students are derived from {list(FAMILIES)} only")
  full = models.model_config(**{k: v for k, v in plain.items() if k not in models.CONFIG_KEYS or k == "name"})
  return {**plain, **full}


def sizes(model_config: Mapping[str, Any]) -> dict[str, int]:
  """num_layers, hidden_size, intermediate_size, num_heads, num_key_value_heads, head_dim of a model."""
  config = _full_config(model_config)
  name = config["name"]
  if name == "gpt2":
    return {"num_layers": config["n_layer"], "hidden_size": config["n_embd"],
            "intermediate_size": config["n_inner"] or 4 * config["n_embd"], "num_heads": config["n_head"],
            "num_key_value_heads": config["n_head"], "head_dim": config["n_embd"] // config["n_head"]}
  if name == "transformer_lm":
    return {"num_layers": config["num_layers"], "hidden_size": config["width"],
            "intermediate_size": config["mlp_ratio"] * config["width"], "num_heads": config["num_heads"],
            "num_key_value_heads": config["num_heads"], "head_dim": config["width"] // config["num_heads"]}
  heads = config["num_attention_heads"]
  return {"num_layers": config["num_hidden_layers"], "hidden_size": config["hidden_size"],
          "intermediate_size": config["intermediate_size"], "num_heads": heads,
          "num_key_value_heads": config["num_key_value_heads"] or heads,
          "head_dim": config["head_dim"] or config["hidden_size"] // heads}


# --- Importance (Minitron's activation-based scores) -------------------------------------------------------


def _recorded(model_config: Mapping[str, Any], module, variables, tokens_BxT, weights_BxT):
  """Weighted sums over batch and sequence of the activations the scores read, by module path."""
  name = model_config["name"]
  sums: dict[str, jax.Array] = {}

  def add(key, per_token_BxTxN):
    sums[key] = sums.get(key, 0.0) + jnp.einsum("bt,btn->n", weights_BxT, per_token_BxTxN.astype(jnp.float32))

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != "__call__" or context.module.scope is None:
      return out
    path = tuple(context.module.scope.path)
    leaf = path[-1] if path else ""
    if name in ROTARY:
      if leaf == "down_proj":
        add(f"{path[0]}/neurons", jnp.abs(args[0]))
      elif leaf == "o_proj":
        heads_in = args[0]
        head_dim = sizes(model_config)["head_dim"]
        per_head = heads_in.reshape(heads_in.shape[:2] + (-1, head_dim)).astype(jnp.float32)
        add(f"{path[0]}/heads", jnp.sqrt(jnp.sum(per_head * per_head, axis=-1)))
      elif leaf in ("input_layernorm", "post_attention_layernorm"):
        add(f"{path[0]}/{leaf}", jnp.abs(out))
      elif leaf == "final_norm":
        add("final_norm", jnp.abs(out))
    elif name == "gpt2" and leaf == "c_proj" and len(path) == 2:  # The MLP's, not the attention's.
      add(f"{path[0]}/neurons", jnp.abs(args[0]))
    return out

  with nn.intercept_methods(interceptor):
    module.apply(variables, tokens_BxT, train=False)
  return sums


def importance(model_config: Mapping[str, Any], variables: Mapping[str, Any], tokens_BxT: np.ndarray,
               mask_BxT: np.ndarray | None = None, batch_size: int = CALIBRATION_BATCH) -> dict[str, np.ndarray]:
  """Minitron's activation-based importance of a decoder's MLP neurons, heads and hidden channels.

  Args:
    model_config: the teacher's model config (llama, qwen2, qwen3 or gpt2).
    variables: its variables.
    tokens_BxT: int [B, T], the calibration batch.
    mask_BxT: bool [B, T], the real tokens (default: all).
    batch_size: sequences per forward pass.

  Returns:
    {"layers_<l>/neurons": [intermediate_size], "layers_<l>/heads": [num_heads] (rotary families),
     "layers_<l>/input_layernorm", "layers_<l>/post_attention_layernorm", "final_norm": [hidden_size]
     (rotary families)}: each the mean over the real tokens of |activation| (heads: of the L2 norm of
     the head's output).
  """
  config = _full_config(model_config)
  tokens_BxT = np.asarray(tokens_BxT, np.int32)
  mask_BxT = np.ones(tokens_BxT.shape, bool) if mask_BxT is None else np.asarray(mask_BxT, bool)
  if tokens_BxT.ndim != 2 or mask_BxT.shape != tokens_BxT.shape or not mask_BxT.any():
    raise ConfigError(f"calibration tokens must be [batch, length] with some real tokens; got {tokens_BxT.shape}")
  vocab = vocab_size_of(variables)
  if tokens_BxT.max() >= vocab:
    raise ConfigError(f"calibration token id {int(tokens_BxT.max())} is outside the teacher's vocabulary of "
                      f"{vocab}: tokenize the calibration text with the teacher's tokenizer")
  module = models.build_model({k: v for k, v in config.items() if k != "tokenizer"}, vocab)
  run = jax.jit(lambda v, t, w: _recorded(config, module, v, t, w))
  totals: dict[str, np.ndarray] = {}
  for start in range(0, len(tokens_BxT), batch_size):
    weights = mask_BxT[start:start + batch_size].astype(np.float32)
    for key, value in run(variables, tokens_BxT[start:start + batch_size], weights).items():
      totals[key] = totals.get(key, 0.0) + np.asarray(value, np.float64)
  count = float(mask_BxT.sum())
  return {key: value / count for key, value in totals.items()}


def vocab_size_of(variables: Mapping[str, Any]) -> int:
  params = variables["params"]
  for table in ("wte", "embed_tokens", "embed"):
    if table in params:
      return int(np.shape(params[table]["embedding"])[0])
  raise ConfigError(f"no token embedding among the teacher's parameters {sorted(params)}")


def top(scores: np.ndarray, keep: int) -> np.ndarray:
  """The indices of the `keep` largest scores (ties: the lower index), in increasing order."""
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  return np.sort(order[:keep])


# --- Deriving ----------------------------------------------------------------------------------------------


def _positive(value, key: str, teacher_value: int, where: str) -> int:
  if value is None:
    return teacher_value
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ConfigError(f"{where}: {key}={value!r} must be a positive integer")
  if value > teacher_value:
    raise ConfigError(f"{where}: {key}={value} is larger than the teacher's {teacher_value}: a student is "
                      "cut out of its teacher, so each size is at most the teacher's")
  return int(value)


def resolve_layer_map(num_teacher_layers: int, num_layers: int | None = None,
                      layer_map: Sequence[int] | None = None, where: str = "derive_student") -> tuple[int, ...]:
  """The teacher layer of each student layer: `layer_map`, or `default_layer_map` for `num_layers`."""
  if layer_map is not None and len(layer_map):
    chosen = tuple(layer_map)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in chosen):
      raise ConfigError(f"{where}: layer_map={chosen!r} must hold teacher layer indices")
    if num_layers is not None and num_layers != len(chosen):
      raise ConfigError(f"{where}: layer_map has {len(chosen)} entries but num_layers={num_layers}; give one "
                        "teacher layer per student layer")
    outside = [int(i) for i in chosen if not 0 <= i < num_teacher_layers]
    if outside:
      raise ConfigError(f"{where}: layer_map={tuple(int(i) for i in chosen)} names layer(s) {outside} the teacher "
                        f"lacks (it has {num_teacher_layers}: 0..{num_teacher_layers - 1})")
    return tuple(int(i) for i in chosen)
  count = _positive(num_layers, "num_layers", num_teacher_layers, where)
  return default_layer_map(num_teacher_layers, count)


def _sliced(dense, rows, columns):
  """A Dense's kernel [in, out] cut to `rows` x `columns`, and its bias (if any) to `columns`."""
  sliced = {"kernel": _take(_take(dense["kernel"], 0, rows), 1, columns)}
  if "bias" in dense:
    sliced["bias"] = _take(dense["bias"], 0, columns)
  return sliced


def _take(array: np.ndarray, axis: int, indices: np.ndarray) -> np.ndarray:
  return np.take(np.asarray(array), indices, axis=axis)


def _head_columns(heads: np.ndarray, head_dim: int) -> np.ndarray:
  return (np.asarray(heads)[:, None] * head_dim + np.arange(head_dim)[None, :]).reshape(-1)


def derive_student(teacher_config: Mapping[str, Any], teacher_variables: Mapping[str, Any], *,
                   num_layers: int | None = None, layer_map: Sequence[int] | None = None,
                   intermediate_size: int | None = None, num_heads: int | None = None,
                   num_key_value_heads: int | None = None, hidden_size: int | None = None,
                   calibration_tokens: np.ndarray | None = None, calibration_mask: np.ndarray | None = None,
                   where: str = "derive_student") -> tuple[dict[str, Any], dict[str, Any]]:
  """A smaller model of the teacher's family, initialised from the teacher's weights.

  Args:
    teacher_config: the teacher's kd model config (e.g. `kd.convert.hf.read_config(folder)[0]`).
    teacher_variables: its variables ({"params": ...}).
    num_layers: the student's depth (default: the teacher's); the layers are `default_layer_map`'s.
    layer_map: the teacher layer of each student layer (overrides the default; repeats are allowed).
    intermediate_size: MLP neurons per layer to keep (gpt2: n_inner).
    num_heads: query heads per layer to keep; with grouped-query attention a multiple of the teacher's
      query heads per key/value head (groups are kept or cut whole).
    num_key_value_heads: key/value heads (groups) to keep, instead of or with num_heads.
    hidden_size: embedding channels to keep.
    calibration_tokens: int [B, T], the batch whose activations rank neurons, heads and channels
      (needed when any width is below the teacher's).
    calibration_mask: bool [B, T], its real tokens (default: all).
    where: how errors name the call.

  Returns:
    (student model config, student variables {"params": ...}) as numpy arrays.
  """
  config = _full_config(teacher_config)
  name = config["name"]
  teacher = sizes(config)
  sources = resolve_layer_map(teacher["num_layers"], num_layers, layer_map, where)
  if name == "transformer_lm" and any(v is not None for v in (intermediate_size, num_heads, num_key_value_heads,
                                                               hidden_size)):
    raise ConfigError(f"{where}: transformer_lm students are cut in depth only (its MLP is mlp_ratio x width); "
                      "leave the widths at the teacher's")
  if name == "gpt2" and any(v is not None and v != teacher[k] for k, v in (
      ("num_heads", num_heads), ("num_key_value_heads", num_key_value_heads), ("hidden_size", hidden_size))):
    raise ConfigError(f"{where}: gpt2 students keep the teacher's heads and hidden size (its attention width is "
                      "its hidden size); prune intermediate_size (n_inner) and layers")
  new_hidden = _positive(hidden_size, "hidden_size", teacher["hidden_size"], where)
  new_inner = _positive(intermediate_size, "intermediate_size", teacher["intermediate_size"], where)
  group = teacher["num_heads"] // teacher["num_key_value_heads"]
  kv_given = _positive(num_key_value_heads, "num_key_value_heads", teacher["num_key_value_heads"], where)
  if num_heads is not None:
    heads = _positive(num_heads, "num_heads", teacher["num_heads"], where)
    if heads % group:
      raise ConfigError(f"{where}: num_heads={heads} does not divide into the teacher's key/value groups of {group} "
                        f"query heads ({teacher['num_heads']} heads, {teacher['num_key_value_heads']} key/value "
                        f"heads): use a multiple of {group}")
    if num_key_value_heads is not None and kv_given * group != heads:
      raise ConfigError(f"{where}: num_heads={heads} and num_key_value_heads={kv_given} break the teacher's "
                        f"{group} query heads per key/value head; give one of them")
    new_kv = heads // group
  else:
    new_kv = kv_given
  new_heads = new_kv * group

  prunes = (new_hidden < teacher["hidden_size"], new_inner < teacher["intermediate_size"],
            new_kv < teacher["num_key_value_heads"])
  scores: dict[str, np.ndarray] = {}
  if any(prunes):
    if calibration_tokens is None:
      raise ConfigError(f"{where}: pruning widths ranks neurons, heads and channels by their activations: give "
                        "calibration_tokens (CLI: --calibration=<dataset name>)")
    scores = importance(config, teacher_variables, calibration_tokens, calibration_mask)

  params = jax.tree.map(np.asarray, dict(teacher_variables["params"]))
  hidden_dim = teacher["hidden_size"]
  channels = np.arange(hidden_dim)
  if prunes[0]:
    channel_scores = scores["final_norm"].copy()
    for source in sorted(set(sources)):
      for norm in ("input_layernorm", "post_attention_layernorm"):
        channel_scores += scores[f"layers_{source}/{norm}"]
    channels = top(channel_scores, new_hidden)

  new_params: dict[str, Any] = {}
  for key, value in params.items():
    if not key.startswith("layers_"):
      new_params[key] = value
  for index, source in enumerate(sources):
    layer = params[f"layers_{source}"]
    neurons = (top(scores[f"layers_{source}/neurons"], new_inner) if prunes[1]
               else np.arange(teacher["intermediate_size"]))
    if name == "gpt2":
      layer = jax.tree.map(lambda x: x, layer)  # A copy of the nesting.
      layer["c_fc"] = {"kernel": _take(layer["c_fc"]["kernel"], 1, neurons), "bias": _take(layer["c_fc"]["bias"], 0, neurons)}
      layer["c_proj"] = {**layer["c_proj"], "kernel": _take(layer["c_proj"]["kernel"], 0, neurons)}
      new_params[f"layers_{index}"] = layer
      continue
    if name == "transformer_lm":
      new_params[f"layers_{index}"] = layer
      continue
    groups = (top(scores[f"layers_{source}/heads"].reshape(-1, group).sum(axis=1), new_kv) if prunes[2]
              else np.arange(teacher["num_key_value_heads"]))
    query_heads = (groups[:, None] * group + np.arange(group)[None, :]).reshape(-1)
    head_dim = teacher["head_dim"]
    q_columns, kv_columns = _head_columns(query_heads, head_dim), _head_columns(groups, head_dim)
    attention = layer["self_attn"]
    new_attention = {projection: _sliced(attention[projection], channels, columns)
                     for projection, columns in (("q_proj", q_columns), ("k_proj", kv_columns),
                                                 ("v_proj", kv_columns))}
    new_attention["o_proj"] = _sliced(attention["o_proj"], q_columns, channels)
    for norm in ("q_norm", "k_norm"):  # Qwen3: over one head's channels, which head pruning keeps whole.
      if norm in attention:
        new_attention[norm] = attention[norm]
    new_layer = {"self_attn": new_attention,
                 "input_layernorm": {"scale": _take(layer["input_layernorm"]["scale"], 0, channels)},
                 "post_attention_layernorm": {"scale": _take(layer["post_attention_layernorm"]["scale"], 0, channels)}}
    for projection in ("gate_proj", "up_proj"):
      new_layer[projection] = _sliced(layer[projection], channels, neurons)
    new_layer["down_proj"] = _sliced(layer["down_proj"], neurons, channels)
    new_params[f"layers_{index}"] = new_layer

  if name in ROTARY:
    new_params["embed_tokens"] = {"embedding": _take(params["embed_tokens"]["embedding"], 1, channels)}
    new_params["final_norm"] = {"scale": _take(params["final_norm"]["scale"], 0, channels)}
    if "lm_head" in params:
      new_params["lm_head"] = {"kernel": _take(params["lm_head"]["kernel"], 0, channels)}

  student = dict(teacher_config)
  student = {k: tuple(v) if isinstance(v, list) else v for k, v in student.items()}
  if name == "gpt2":
    student.update(n_layer=len(sources), n_inner=new_inner)
  elif name == "transformer_lm":
    student.update(num_layers=len(sources))
  else:
    student.update(num_hidden_layers=len(sources), hidden_size=new_hidden, intermediate_size=new_inner,
                   num_attention_heads=new_heads, num_key_value_heads=new_kv, head_dim=teacher["head_dim"])
  models.check_model_config({k: v for k, v in student.items() if k != "tokenizer"}, where)
  variables = {**{k: v for k, v in teacher_variables.items() if k != "params"}, "params": new_params}
  return student, variables


# --- The command line --------------------------------------------------------------------------------------


def calibration_batch(dataset_name: str, num_examples: int, data_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
  """The first `num_examples` train examples of a token dataset (e.g. `text_files/...`): tokens, mask."""
  from kd import data  # pylint: disable=g-import-not-at-top

  available = data.load_spec(dataset_name, data_dir).split_sizes.get("train", 0)
  arrays = data.load_arrays(dataset_name, f"train[:{max(1, min(num_examples, available))}]", data_dir)
  if "tokens" not in arrays:
    raise ConfigError(f"--calibration={dataset_name!r} is not a token dataset (it has {sorted(arrays)})")
  mask = arrays.get("mask", np.ones(arrays["tokens"].shape, bool))
  return np.asarray(arrays["tokens"], np.int32), np.asarray(mask, bool)


def _tokenizer_of(loaded, given: str) -> str:
  """The tokenizer.json to ship with the student: --tokenizer, the teacher's, or its text_files dataset's."""
  from kd.lm import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  if given:
    return tokenizer_lib.tokenizer_file(given)
  if loaded.model_config.get("tokenizer"):
    return loaded.model_config["tokenizer"]
  name = getattr(loaded.spec, "name", "")
  if name.startswith("text_files/"):
    from kd.data import text_files  # pylint: disable=g-import-not-at-top
    try:
      return text_files.parse(name[len("text_files/"):]).tokenizer
    except UserError:
      return ""
  return ""


def main(argv: Sequence[str] | None = None) -> None:
  """`python -m kd.lm.students <teacher> <out> --num_layers=N ...`: a student as a Hugging Face folder."""
  from kd import checkpoint  # pylint: disable=g-import-not-at-top
  from kd.convert import hf  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m kd.lm.students", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("teacher", help="a Hugging Face checkpoint folder or a kd export of a llama/qwen2/qwen3/gpt2")
  parser.add_argument("out", help="the folder for the student's config.json, model.safetensors and tokenizer")
  parser.add_argument("--num_layers", type=int, default=None, help="student layers (default: the teacher's)")
  parser.add_argument("--layer_map", default="", help="teacher layer of each student layer, e.g. 0,3,5")
  for key in ("intermediate_size", "num_heads", "num_key_value_heads", "hidden_size"):
    parser.add_argument(f"--{key}", type=int, default=None, help=f"{key} to keep (default: the teacher's)")
  parser.add_argument("--calibration", default="", help="a token dataset name whose train examples rank "
                      "neurons, heads and channels, e.g. text_files/train=data.txt,tokenizer=<teacher>")
  parser.add_argument("--calibration_examples", type=int, default=64, help="examples of the calibration batch")
  parser.add_argument("--data_dir", default="", help="the TFDS data folder the calibration dataset is prepared in")
  parser.add_argument("--tokenizer", default="", help="the tokenizer to copy along (default: the teacher's)")
  args = parser.parse_args(argv)
  try:
    if not os.path.isdir(args.teacher):
      raise ConfigError(f"{args.teacher}: no such folder (give a Hugging Face checkpoint folder or a kd export)")
    loaded = hf.load_model(args.teacher) if hf.is_hf_folder(args.teacher) else checkpoint.load_model(args.teacher)
    layer_map = None
    if args.layer_map:
      try:
        layer_map = tuple(int(part) for part in args.layer_map.split(","))
      except ValueError:
        raise ConfigError(f"--layer_map={args.layer_map!r} must be comma-separated layer indices") from None
    tokens = mask = None
    if args.calibration:
      tokens, mask = calibration_batch(args.calibration, args.calibration_examples, args.data_dir)
    student_config, student_variables = derive_student(
        loaded.model_config, loaded.variables, num_layers=args.num_layers, layer_map=layer_map,
        intermediate_size=args.intermediate_size, num_heads=args.num_heads,
        num_key_value_heads=args.num_key_value_heads, hidden_size=args.hidden_size,
        calibration_tokens=tokens, calibration_mask=mask, where="python -m kd.lm.students")
    tokenizer = _tokenizer_of(loaded, args.tokenizer)
    student_config = {k: v for k, v in student_config.items() if k != "tokenizer"}
    if tokenizer:
      student_config["tokenizer"] = tokenizer
    hf.to_hf(student_config, student_variables, args.out)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  teacher_sizes, student_sizes = sizes(loaded.model_config), sizes(student_config)
  changed = ", ".join(f"{key} {teacher_sizes[key]} -> {student_sizes[key]}" for key in teacher_sizes
                      if teacher_sizes[key] != student_sizes[key]) or "the teacher's sizes"
  print(f"wrote {args.out}: {student_config['name']} student ({changed}; "
        f"{models.count_params(student_variables['params']):,} of the teacher's "
        f"{models.count_params(loaded.variables['params']):,} parameters)"
        f"{'' if tokenizer else '; no tokenizer found to copy (give --tokenizer)'}")


if __name__ == "__main__":
  main()
