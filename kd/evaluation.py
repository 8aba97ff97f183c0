"""Evaluation of a model's predictions: accuracy, agreement, KL, calibration, latency."""

import time
from typing import Callable

import jax
import numpy as np

from kd import data


def make_predict(apply, mesh: jax.sharding.Mesh) -> Callable[..., np.ndarray]:
  """`predict(variables, arrays, batch_size) -> logits [N, C]` over a whole split, on the mesh."""
  batch_sharding = jax.NamedSharding(mesh, jax.P("data"))
  logits_fn = jax.jit(lambda variables, batch: apply(variables, batch, train=False)["logits"],
                      out_shardings=jax.NamedSharding(mesh, jax.P()))

  def predict(variables, arrays, batch_size: int) -> np.ndarray:
    outputs = []
    for batch in data.eval_batches(arrays, batch_size):
      mask = batch.pop("mask")
      batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
      outputs.append(np.asarray(logits_fn(variables, batch))[mask])
    return np.concatenate(outputs)

  return predict


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, -1) == labels))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(-np.mean(np.take_along_axis(_log_softmax(logits), labels[:, None], -1)))


def agreement(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
  """Fraction of examples on which student and teacher predict the same class (top-1)."""
  return float(np.mean(np.argmax(student_logits, -1) == np.argmax(teacher_logits, -1)))


def mean_kl(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
  """Mean over examples of KL(teacher || student) at temperature 1, in nats."""
  teacher_log_probs = _log_softmax(teacher_logits.astype(np.float64))
  student_log_probs = _log_softmax(student_logits.astype(np.float64))
  return float(np.mean(np.sum(np.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), -1)))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
  """ECE with equal-width confidence bins (Guo et al., "On Calibration of Modern Neural Networks",
  ICML 2017, eq. 3): sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|."""
  probs = np.exp(_log_softmax(logits.astype(np.float64)))
  confidence = probs.max(-1)
  correct = np.argmax(probs, -1) == labels
  bins = np.minimum((confidence * num_bins).astype(int), num_bins - 1)
  error = 0.0
  for b in range(num_bins):
    in_bin = bins == b
    if in_bin.any():
      error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return float(error)


def latency_ms(apply, variables, example_batch: dict[str, np.ndarray], *, repeats: int = 30,
               min_seconds: float = 0.2) -> float:
  """Median wall time of one jitted inference call on one device, after compiling and warming up."""
  logits_fn = jax.jit(lambda v, b: apply(v, b, train=False)["logits"])
  device = jax.devices()[0]
  variables = jax.device_put(variables, device)
  batch = jax.device_put(example_batch, device)
  jax.block_until_ready(logits_fn(variables, batch))  # Compile.
  for _ in range(3):
    jax.block_until_ready(logits_fn(variables, batch))
  times = []
  started = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - started < min_seconds:
    tic = time.perf_counter()
    jax.block_until_ready(logits_fn(variables, batch))
    times.append(time.perf_counter() - tic)
    if len(times) >= 10 * repeats:
      break
  return float(np.median(times) * 1e3)
