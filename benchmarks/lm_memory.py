r"""Memory and time of a language-model distillation step: chunked divergences against full logits.

    python benchmarks/lm_memory.py [--vocab_sizes=32768,131072,262144] [--length=2048] [--width=1024]
        [--chunk_size=64] [--divergence=forward_kl] [--repeats=3] [--json=out.json]

The step is the loss of `kd.methods.lm_kd` (here forward KL, `--divergence` for another) and its
gradient with respect to the student's final hidden states and head, the part of a distillation
step that grows with the vocabulary V, at batch 1 and L = 2048 tokens, both models of width
`--width` with an untied head [D, V] (as Llama's):

    unchunked   logits [1, L, V] of both models (h @ W), then `lm_common.distillation_loss` on them
                (chunk_size = 0, as kd computes it without chunking);
    chunked     `kd.lm.chunked` from the hidden states and heads, `--chunk_size` tokens at a time.

For each V the script prints the compiled step's memory from XLA's memory analysis
(`jax.jit(f).lower(...).compile().memory_analysis()`: temp + argument + output bytes; on an
accelerator this is the program's device footprint, on a CPU what XLA allocates for it), the step
time (the fastest of `--repeats` runs after one warm-up, the arrays on the device), and the ratios
unchunked / chunked. The weights [D, V] of both heads (arguments) and the gradient of the student's
(an output) are in both figures: a floor that chunking does not change.

The two steps' runs alternate, so that a change in the machine's load reaches both alike. Steps whose
memory together exceeds `--max_timed_fraction` of the host's available memory, or whose V is not in
`--timed_vocab_sizes`, are compiled and measured but not run (their time is null, with the reason).
About 10 minutes at the default sizes on 2 idle CPU cores; `--timed_vocab_sizes=` (no value)
measures the memory alone, in about a minute; `--length=256 --width=256` is the same comparison,
smaller.

Measured here (2 CPU cores shared with other jobs, load average about 10, L = 2048, D = 1024,
chunk_size = 64): memory 4.11x less at V = 32k, 4.36x at 128k, 4.40x at 256k; step time 0.74x at
32k, and 1.28x then 1.03x at 128k in two runs (2 and 3 repeats); 256k not run (18 GiB for both).
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
from kd.methods import lm_common

_VOCAB_SIZES = flags.DEFINE_list("vocab_sizes", ["32768", "131072", "262144"], "Vocabulary sizes V.")
_LENGTH = flags.DEFINE_integer("length", 2048, "Tokens per sequence L (batch 1).")
_WIDTH = flags.DEFINE_integer("width", 1024, "Hidden width D of both models.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 64, "Tokens per chunk of the chunked loss.")
_DIVERGENCE = flags.DEFINE_enum("divergence", "forward_kl", sorted(losses.TOKEN_DIVERGENCES), "The divergence.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per step (the fastest is reported).")
_MAX_TIMED_FRACTION = flags.DEFINE_float("max_timed_fraction", 0.6, "Run a step only if its memory is at most "
                                         "this fraction of the host's available memory.")
_TIMED_VOCAB_SIZES = flags.DEFINE_list("timed_vocab_sizes", None, "Time only these V (default: all); the "
                                       "others are compiled and their memory reported.")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this file.")

MEMORY_TARGET = 4.0  # At least 4x less memory at V = 128k.
TIME_TARGET = 1.1  # Chunked step time at most 1.1x the unchunked one.
TARGET_VOCAB = 131072


def _loss_params(chunk_size: int) -> dict:
  return {**lm_common.DIVERGENCE_DEFAULTS, "divergence": _DIVERGENCE.value, "chunk_size": chunk_size}


def make_steps(chunk_size: int):
  """{"unchunked", "chunked"}: (student hidden, student kernel, teacher hidden, teacher kernel, tokens)
  -> (loss, (d loss / d student hidden, d loss / d student kernel))."""

  def unchunked(student_hidden, student_kernel, teacher_hidden, teacher_kernel, tokens):
    batch = {"tokens": tokens}
    teacher_out = {"logits": jax.lax.stop_gradient(teacher_hidden @ teacher_kernel)}

    def loss(student_hidden, student_kernel):
      return lm_common.distillation_loss({"logits": student_hidden @ student_kernel}, teacher_out, batch,
                                         **_loss_params(0))[0]

    return jax.value_and_grad(loss, argnums=(0, 1))(student_hidden, student_kernel)

  def chunked(student_hidden, student_kernel, teacher_hidden, teacher_kernel, tokens):
    batch = {"tokens": tokens}
    teacher_out = {"features": {"final_norm": teacher_hidden, "head_kernel": teacher_kernel}}

    def loss(student_hidden, student_kernel):
      student_out = {"features": {"final_norm": student_hidden, "head_kernel": student_kernel}}
      return lm_common.distillation_loss(student_out, teacher_out, batch, **_loss_params(chunk_size))[0]

    return jax.value_and_grad(loss, argnums=(0, 1))(student_hidden, student_kernel)

  return {"unchunked": unchunked, "chunked": chunked}


def _shapes(vocab_size: int, length: int, width: int):
  f32 = jnp.float32
  return (jax.ShapeDtypeStruct((1, length, width), f32), jax.ShapeDtypeStruct((width, vocab_size), f32),
          jax.ShapeDtypeStruct((1, length, width), f32), jax.ShapeDtypeStruct((width, vocab_size), f32),
          jax.ShapeDtypeStruct((1, length), jnp.int32))


def _arrays(shapes, vocab_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  hidden = lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype)
  kernel = lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), s.dtype)
  tokens = jnp.asarray(rng.integers(0, vocab_size, shapes[4].shape), jnp.int32)
  return hidden(shapes[0]), kernel(shapes[1]), hidden(shapes[2]), kernel(shapes[3]), tokens


def _available_bytes() -> int:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def compile_and_analyse(step, shapes):
  """The compiled step and XLA's memory analysis of it."""
  tic = time.perf_counter()
  compiled = jax.jit(step).lower(*shapes).compile()
  compile_seconds = time.perf_counter() - tic
  analysis = compiled.memory_analysis()
  figures = {"temp_bytes": int(analysis.temp_size_in_bytes), "argument_bytes": int(analysis.argument_size_in_bytes),
             "output_bytes": int(analysis.output_size_in_bytes), "alias_bytes": int(analysis.alias_size_in_bytes)}
  figures["total_bytes"] = figures["temp_bytes"] + figures["argument_bytes"] + figures["output_bytes"]
  figures["compile_s"] = compile_seconds
  return compiled, figures


def time_steps(compiled: dict, arrays, repeats: int) -> dict[str, float]:
  """The fastest of `repeats` runs of each step after a warm-up, in ms; the steps alternate, so that a
  change in the machine's load reaches both alike."""
  for step in compiled.values():
    jax.block_until_ready(step(*arrays))
  times = {name: [] for name in compiled}
  for _ in range(repeats):
    for name, step in compiled.items():
      tic = time.perf_counter()
      jax.block_until_ready(step(*arrays))
      times[name].append(time.perf_counter() - tic)
  return {name: 1e3 * min(values) for name, values in times.items()}


def run(vocab_sizes, length: int, width: int, chunk_size: int, repeats: int, max_timed_fraction: float,
        timed_vocab_sizes=None) -> dict:
  steps = make_steps(chunk_size)
  results = []
  for vocab_size in vocab_sizes:
    shapes = _shapes(vocab_size, length, width)
    row = {"vocab_size": vocab_size}
    compiled = {}
    for name in ("unchunked", "chunked"):
      compiled[name], row[name] = compile_and_analyse(steps[name], shapes)
    needed = row["unchunked"]["total_bytes"] + row["chunked"]["total_bytes"]
    limit = max_timed_fraction * _available_bytes()
    reason = None
    if timed_vocab_sizes is not None and vocab_size not in timed_vocab_sizes:
      reason = "not in --timed_vocab_sizes"
    elif needed > limit:
      reason = (f"needs {needed / 2**30:.1f} GiB, more than {limit / 2**30:.1f} GiB (--max_timed_fraction of the "
                "available memory)")
    if reason is None:
      step_ms = time_steps(compiled, _arrays(shapes, vocab_size), repeats)
    else:
      step_ms = {"unchunked": None, "chunked": None}
      row["not_timed"] = reason
    for name in compiled:
      row[name]["step_ms"] = step_ms[name]
    del compiled
    row["memory_ratio"] = row["unchunked"]["total_bytes"] / row["chunked"]["total_bytes"]
    row["time_ratio"] = (row["chunked"]["step_ms"] / row["unchunked"]["step_ms"] if reason is None else None)
    results.append(row)
  figures = {"length": length, "batch": 1, "width": width, "chunk_size": chunk_size,
             "divergence": _DIVERGENCE.value, "backend": jax.default_backend(),
             "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
             "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None, "results": results}
  target_rows = [row for row in results if row["vocab_size"] == TARGET_VOCAB]
  if target_rows:
    row = target_rows[0]
    figures["targets"] = {
        "memory_ratio_at_128k": {"value": row["memory_ratio"], "target": f">= {MEMORY_TARGET}",
                                 "pass": row["memory_ratio"] >= MEMORY_TARGET},
        "time_ratio_at_128k": {"value": row["time_ratio"], "target": f"<= {TIME_TARGET}",
                               "pass": None if row["time_ratio"] is None else row["time_ratio"] <= TIME_TARGET}}
  return figures


def _mib(n: int) -> str:
  return f"{n / 2**20:8.0f}"


def _ms(value) -> str:
  return f"{'-':>9}" if value is None else f"{value:9.0f}"


def print_table(figures: dict) -> None:
  print(f"LM distillation step (loss + gradient w.r.t. the student's hidden states and head): batch 1, "
        f"L={figures['length']}, D={figures['width']}, {figures['divergence']}, chunk_size={figures['chunk_size']}; "
        f"{figures['backend']} ({figures['device']}, {figures['cpu_count']} CPUs)")
  print("memory = XLA memory analysis, temp + argument + output, MiB; time = fastest step, ms")
  print(f"{'V':>8} | {'unchunked: temp':>15} {'args':>8} {'out':>8} {'total':>8} {'ms':>9} | "
        f"{'chunked: temp':>13} {'args':>8} {'out':>8} {'total':>8} {'ms':>9} | {'memory x':>8} {'time x':>7}")
  for row in figures["results"]:
    full, chunked = row["unchunked"], row["chunked"]
    time_ratio = "      -" if row["time_ratio"] is None else f"{row['time_ratio']:7.2f}"
    print(f"{row['vocab_size']:>8} | {_mib(full['temp_bytes']):>15} {_mib(full['argument_bytes'])} "
          f"{_mib(full['output_bytes'])} {_mib(full['total_bytes'])} {_ms(full['step_ms'])} | "
          f"{_mib(chunked['temp_bytes']):>13} {_mib(chunked['argument_bytes'])} {_mib(chunked['output_bytes'])} "
          f"{_mib(chunked['total_bytes'])} {_ms(chunked['step_ms'])} | {row['memory_ratio']:8.2f} {time_ratio}")
    if "not_timed" in row:
      print(f"         V={row['vocab_size']} not timed: {row['not_timed']}")
  print("memory x = unchunked / chunked memory; time x = chunked / unchunked step time (load average "
        f"{figures['load_average']} when it ended)")
  for name, target in figures.get("targets", {}).items():
    print(f"target {name}: {target['value']} (target {target['target']}): "
          f"{ {True: 'pass', False: 'FAIL', None: 'not measured'}[target['pass']] }")


def main(argv):
  del argv
  timed = None if _TIMED_VOCAB_SIZES.value is None else [int(v) for v in _TIMED_VOCAB_SIZES.value]
  figures = run([int(v) for v in _VOCAB_SIZES.value], _LENGTH.value, _WIDTH.value, _CHUNK_SIZE.value,
                _REPEATS.value, _MAX_TIMED_FRACTION.value, timed)
  print_table(figures)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  app.run(main)
