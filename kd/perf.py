"""Measuring a compiled step: compile counts, XLA's cost and memory analysis, the machine's matmul peak.

Used by `benchmarks/performance.py`; small enough to use around any jitted function.
"""

import math
import os
import platform
import re
import time
from typing import Any

import jax
import numpy as np

# The batch entry that holds precomputed teacher logits (what a teacher-output cache supplies).
TEACHER_LOGITS = "teacher_logits"

# XLA reports each backend compilation as this duration event.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
  """Counts XLA compilations (and their seconds) from the moment it is made, through jax.monitoring.

  A jitted function that compiles again after its first call (a changed shape, dtype, sharding or
  static argument) shows up as a count that grows inside a loop.
  """

  def __init__(self):
    self.count = 0
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration_secs: float, **kwargs) -> None:
    del kwargs
    if event == COMPILE_EVENT:
      self.count += 1
      self.seconds += duration_secs


def cached_teacher_apply(variables, batch, *, train: bool, rngs=None) -> dict[str, Any]:
  """A teacher apply function that reads the teacher's logits from `batch[TEACHER_LOGITS]`.

  With it, `kd.train.train_step` runs a KD step on precomputed teacher outputs: the teacher does not
  run, and its variables are `{}`.
  """
  del variables, train, rngs
  return {"logits": batch[TEACHER_LOGITS], "features": {}}


def compiled_cost(jitted, *args) -> dict[str, Any]:
  """XLA's view of `jitted(*args)`: FLOPs per call and the compiled program's bytes.

  Lowering and compiling again after a call with the same arguments hits JAX's cache (no second
  compilation). `program_bytes` is arguments + outputs + temporaries - donated (aliased) buffers,
  or None where the backend does not report it.
  """
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # One entry per program in some versions.
    cost = cost[0] if cost else {}
  memory = compiled.memory_analysis()
  program_bytes = None
  if memory is not None:
    program_bytes = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                        + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return {"flops": float((cost or {}).get("flops", 0.0)), "program_bytes": program_bytes}


def device_peak_bytes() -> int | None:
  """The first local device's peak memory in use so far (GPU, TPU), or None where not reported (CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def matmul_flops_per_second(dtype: str, size: int, repeats: int = 5) -> float:
  """This machine's dense matmul FLOP/s: [size, size] @ [size, size] in `dtype`, median of `repeats`."""
  keys = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(keys[0], (size, size), dtype)
  b = jax.random.normal(keys[1], (size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, b))
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    times.append(time.perf_counter() - tic)
  return 2.0 * size ** 3 / float(np.median(times))


def host_description() -> dict[str, Any]:
  """The host's CPU model (from /proc/cpuinfo where there is one) and its number of cores."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu_model": model, "cpu_count": os.cpu_count()}


# HLO instructions that move data between host and device inside a program.
_HOST_TRANSFER_OPS = ("infeed", "outfeed", "send", "recv", "send-done", "recv-done")
_OP = re.compile(r"=\s*(\S+)\s+([a-z][a-z0-9\-]*)\(")
_SHAPE = re.compile(r"^[a-z0-9]+\[([0-9,]*)\]")


def hlo_summary(jitted, *args, large_constant_elements: int = 1024) -> dict[str, int]:
  """What the optimized program of `jitted(*args)` contains, to check how a step was compiled.

  Returns counts of: `convolutions` and `dots` (the teacher's forward pass inside a KD step shows up as
  the student step's count plus the teacher's, once); `large_constants`, arrays of at least
  `large_constant_elements` baked into the program (a teacher's parameters closed over instead of
  passed as an argument show up here); `host_transfers`, infeed/outfeed/send/recv and host callbacks.
  """
  text = jitted.lower(*args).compile().as_text()
  counts = {"convolutions": 0, "dots": 0, "large_constants": 0, "host_transfers": 0}
  for line in text.splitlines():
    match = _OP.search(line)
    if not match:
      continue
    shape, op = match.groups()
    if op == "convolution" or (op == "custom-call" and "convolution" in line):
      counts["convolutions"] += 1
    elif op == "dot" or (op == "custom-call" and "matmul" in line):
      counts["dots"] += 1
    elif op == "constant":
      dims = _SHAPE.match(shape)
      if dims and dims.group(1) and math.prod(int(d) for d in dims.group(1).split(",")) >= large_constant_elements:
        counts["large_constants"] += 1
    if op in _HOST_TRANSFER_OPS or (op == "custom-call" and "callback" in line):
      counts["host_transfers"] += 1
  return counts
