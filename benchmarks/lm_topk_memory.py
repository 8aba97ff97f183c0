r"""Memory of a language-model distillation step that reads a top-k teacher cache: dense rebuild against buckets.

    python benchmarks/lm_topk_memory.py [--vocab_sizes=32768,131072] [--length=2048] [--width=1024]
        [--top_k=64] [--divergence=forward_kl] [--repeats=0] [--json=out.json]

The step is `kd.methods.lm_kd`'s loss (forward KL at T = 1, `--divergence` for another) and its gradient with
respect to the student's final hidden states and head [D, V], at batch 1 and L tokens, the teacher read from the
cache by example index as the trainer does (`kd.teacher_cache.make_cached_apply`):

    full logits   a cache of the teacher's logits (teacher_cache.top_k = 0): [1, L, V] float32 per example;
    dense         a top-k cache (top_k = k) rebuilt to [1, L, V] log-probabilities (top_k_cache="dense", the
                  default, what kd did before the sparse path);
    sparse        the same cache, the divergence on its k + 1 buckets (top_k_cache="sparse"): no [1, L, V]
                  teacher array.

For each V it prints XLA's memory analysis of the compiled step (`jax.jit(f).lower(...).compile()
.memory_analysis()`: temp + argument + output bytes, MiB) and, next to it, the size of one [1, L, V] float32
array. The student's logits [1, L, V], their gradient and the head's weights and gradient [D, V] are in all
three figures: the floor the teacher's representation does not change. `--repeats=N` also times each step
(the fastest of N runs after a warm-up); 0 (the default) compiles only, in about a minute at the defaults.
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from kd import losses
from kd import teacher_cache
from kd.methods import lm_common

_VOCAB_SIZES = flags.DEFINE_list("vocab_sizes", ["32768", "131072"], "Vocabulary sizes V.")
_LENGTH = flags.DEFINE_integer("length", 2048, "Tokens per sequence L (batch 1).")
_WIDTH = flags.DEFINE_integer("width", 1024, "Hidden width D of the student.")
_TOP_K = flags.DEFINE_integer("top_k", 64, "Cached log-probabilities per token k.")
_DIVERGENCE = flags.DEFINE_enum("divergence", "forward_kl", sorted(losses.TOKEN_DIVERGENCES), "The divergence.")
_REPEATS = flags.DEFINE_integer("repeats", 0, "Timed runs per step (the fastest is reported); 0: memory only.")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this file.")

STEPS = ("full_logits", "dense", "sparse")


def make_step(name: str, vocab_size: int, top_k: int, divergence: str):
  """(student hidden [1, L, D], student kernel [D, V], cache, tokens [1, L]) -> (loss, gradients)."""
  params = {**lm_common.DIVERGENCE_DEFAULTS, "divergence": divergence,
            "top_k_cache": "sparse" if name == "sparse" else "dense"}
  teacher_apply = teacher_cache.make_cached_apply(vocab_size, 0 if name == "full_logits" else top_k)

  def step(student_hidden, student_kernel, cache, tokens):
    batch = {"tokens": tokens, "index": jnp.zeros((1,), jnp.int32)}
    teacher_out = jax.lax.stop_gradient(teacher_apply(cache, batch))

    def loss(student_hidden, student_kernel):
      return lm_common.distillation_loss({"logits": student_hidden @ student_kernel}, teacher_out, batch,
                                         **params)[0]

    return jax.value_and_grad(loss, argnums=(0, 1))(student_hidden, student_kernel)

  return step


def _shapes(name: str, vocab_size: int, length: int, width: int, top_k: int):
  f32 = jnp.float32
  if name == "full_logits":
    cache = {"logits": jax.ShapeDtypeStruct((1, length, vocab_size), f32)}
  else:
    cache = {"top_log_probs": jax.ShapeDtypeStruct((1, length, top_k), f32),
             "top_indices": jax.ShapeDtypeStruct((1, length, top_k), jnp.int32),
             "rest_log_mass": jax.ShapeDtypeStruct((1, length), f32),
             "vocab_size": jax.ShapeDtypeStruct((1,), jnp.int32)}
  return (jax.ShapeDtypeStruct((1, length, width), f32), jax.ShapeDtypeStruct((width, vocab_size), f32), cache,
          jax.ShapeDtypeStruct((1, length), jnp.int32))


def _arrays(name: str, shapes, vocab_size: int, top_k: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=shapes[0].shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=shapes[1].shape) / np.sqrt(shapes[1].shape[0]), jnp.float32)
  teacher_logits = jnp.asarray(rng.normal(size=(1, shapes[0].shape[1], vocab_size)) * 2, jnp.float32)
  if name == "full_logits":
    cache = {"logits": teacher_logits}
  else:
    cache = {**teacher_cache.top_k_log_probs(teacher_logits, top_k),
             "vocab_size": jnp.full((1,), vocab_size, jnp.int32)}
  tokens = jnp.asarray(rng.integers(0, vocab_size, shapes[3].shape), jnp.int32)
  return hidden, kernel, cache, tokens


def compile_and_analyse(step, shapes):
  """The compiled step and XLA's memory analysis of it."""
  tic = time.perf_counter()
  compiled = jax.jit(step).lower(*shapes).compile()
  analysis = compiled.memory_analysis()
  figures = {"temp_bytes": int(analysis.temp_size_in_bytes), "argument_bytes": int(analysis.argument_size_in_bytes),
             "output_bytes": int(analysis.output_size_in_bytes), "compile_s": time.perf_counter() - tic}
  figures["total_bytes"] = figures["temp_bytes"] + figures["argument_bytes"] + figures["output_bytes"]
  return compiled, figures


def _fastest_ms(compiled, arrays, repeats: int) -> float:
  jax.block_until_ready(compiled(*arrays))
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    jax.block_until_ready(compiled(*arrays))
    times.append(time.perf_counter() - tic)
  return 1e3 * min(times)


def run(vocab_sizes, length: int, width: int, top_k: int, divergence: str, repeats: int) -> dict:
  results = []
  for vocab_size in vocab_sizes:
    row = {"vocab_size": vocab_size, "teacher_array_bytes": 4 * length * vocab_size}
    for name in STEPS:
      shapes = _shapes(name, vocab_size, length, width, top_k)
      compiled, row[name] = compile_and_analyse(make_step(name, vocab_size, top_k, divergence), shapes)
      row[name]["step_ms"] = (_fastest_ms(compiled, _arrays(name, shapes, vocab_size, top_k), repeats)
                              if repeats else None)
      del compiled
    row["dense_over_sparse"] = row["dense"]["total_bytes"] / row["sparse"]["total_bytes"]
    row["dense_minus_sparse_temp_in_teacher_arrays"] = (
        (row["dense"]["temp_bytes"] - row["sparse"]["temp_bytes"]) / row["teacher_array_bytes"])
    results.append(row)
  return {"length": length, "batch": 1, "width": width, "top_k": top_k, "divergence": divergence,
          "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
          "results": results}


def print_table(figures: dict) -> None:
  mib = lambda n: f"{n / 2**20:8.0f}"
  print(f"LM distillation step from a teacher cache (loss + gradient w.r.t. the student's hidden states and head): "
        f"batch 1, L={figures['length']}, D={figures['width']}, k={figures['top_k']}, {figures['divergence']}; "
        f"{figures['backend']} ({figures['device']}, {figures['cpu_count']} CPUs)")
  print("memory = XLA memory analysis, MiB (temp / argument / output / total); [1, L, V] = one teacher array")
  header = " | ".join(f"{name + ': temp':>17} {'args':>8} {'out':>8} {'total':>8} {'ms':>7}" for name in STEPS)
  print(f"{'V':>7} {'[1,L,V]':>8} | {header} | {'dense/sparse':>12}")
  for row in figures["results"]:
    cells = []
    for name in STEPS:
      step = row[name]
      ms = f"{step['step_ms']:7.0f}" if step["step_ms"] is not None else f"{'-':>7}"
      cells.append(f"{mib(step['temp_bytes']):>17} {mib(step['argument_bytes'])} {mib(step['output_bytes'])} "
                   f"{mib(step['total_bytes'])} {ms}")
    print(f"{row['vocab_size']:>7} {mib(row['teacher_array_bytes'])} | {' | '.join(cells)} | "
          f"{row['dense_over_sparse']:12.2f}")
  print("dense - sparse temp, in [1, L, V] arrays: " + ", ".join(
      f"V={row['vocab_size']}: {row['dense_minus_sparse_temp_in_teacher_arrays']:.2f}" for row in figures["results"]))


def main(argv):
  del argv
  figures = run([int(v) for v in _VOCAB_SIZES.value], _LENGTH.value, _WIDTH.value, _TOP_K.value, _DIVERGENCE.value,
                _REPEATS.value)
  print_table(figures)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  app.run(main)
