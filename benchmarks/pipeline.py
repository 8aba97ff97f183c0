r"""Does the input pipeline keep up with the train step, and what does the teacher-output cache save?

    python benchmarks/pipeline.py [--pairs=quickstart,cifar_resnet] [--steps=30] [--batch_size=64] \
        [--workers=0] [--json=out.json]

For each teacher/student pair, at one batch size, prints:
  - the pipeline alone: examples/s of the Grain iterator (`kd.data.train_iterator`, gather + shuffle),
    and with the host-to-device copy;
  - the train step's consumption: examples/s of the online KD step, of a student-only step, and of
    a step that reads the teacher's outputs from the cache (`kd.teacher_cache`);
  - the fraction of the KD loop's time the device waits for data (goal < 5%): 1 - (the loop on one batch
    already on the device) / (the loop taking real batches), with `kd.data.DevicePrefetch` as the
    trainer runs it, and without (each batch gathered and copied in the loop);
  - the cached-teacher step time over the student-only step time (goal <= 1.05).

Pairs:
  quickstart    experiments/quickstart.py's ConvNets on digits (8x8x1);
  cifar_resnet  resnet32x4 -> resnet8x4 (the CRD benchmark's CIFAR-100 pair) on synthetic 32x32x3
                data with 100 classes (512 training examples: the cache is built over them).
  tiny          small MLPs on synthetic 4x6x3 data (to test the script).
The teacher is freshly initialised (timing does not depend on its weights). Everything is measured in
one process after compiling; the same script runs unchanged on a GPU or TPU.
"""

import functools
import json
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from kd import checkpoint
from kd import config as config_lib
from kd import data
from kd import experiment
from kd import methods
from kd import models
from kd import teacher_cache
from kd import train

_PAIRS = flags.DEFINE_list("pairs", ["quickstart", "cifar_resnet"], "Pairs to measure (see the docstring).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per measurement.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Grain worker processes (data.workers).")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this file.")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pair(name: str):
  """(dataset, teacher model config, student model config, KD method config)."""
  if name == "quickstart":
    config = experiment.load_config(os.path.join(_REPO, "experiments", "quickstart.py"))
    return (config.data.name, config.stages.teacher.model.to_dict(), config.stages.student.model.to_dict(),
            config.stages.student.method.to_dict())
  if name == "cifar_resnet":
    return ("synthetic/32x32x3_100_512", models.zoo_model_config("resnet32x4"),
            models.zoo_model_config("resnet8x4"), methods.method_config("hinton_kd"))
  if name == "tiny":  # For the test that this script runs.
    return ("synthetic/4x6x3_7_70", models.model_config("mlp", hidden=(16,)), models.model_config("mlp", hidden=(8,)),
            methods.method_config("hinton_kd"))
  raise app.UsageError(f"unknown pair {name!r}: choose from quickstart, cifar_resnet, tiny")


def _interleaved_medians(functions: dict, steps: int) -> dict[str, float]:
  """Median seconds per call of each function, timed one after the other in each of `steps` rounds
  (after compiling and warming up)."""
  for fn in functions.values():
    for _ in range(3):
      jax.block_until_ready(fn())
  times = {name: [] for name in functions}
  for _ in range(steps):
    for name, fn in functions.items():
      tic = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - tic)
  return {name: float(np.median(values)) for name, values in times.items()}


def measure(pair: str, batch_size: int, steps: int, workers: int) -> dict:
  dataset, teacher_config, student_config, method_config = _pair(pair)
  spec = data.load_spec(dataset)
  arrays = data.load_arrays(dataset, "train")
  example = np.zeros((1,) + spec.input_shape, spec.input_dtype)
  teacher_module = models.build_model(teacher_config, spec.num_classes)
  student_module = models.build_model(student_config, spec.num_classes)
  teacher_apply = models.make_apply(teacher_module, spec.input_key)
  student_apply = models.make_apply(student_module, spec.input_key)
  teacher_variables = models.init_variables(teacher_module, jax.random.PRNGKey(1), example)
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(), 1000)
  state = train.init_train_state(jax.random.PRNGKey(0), {spec.input_key: example}, module=student_module,
                                 optimizer=optimizer, input_key=spec.input_key)

  # The teacher's outputs over the split, through the real cache (files in a temporary folder).
  with tempfile.TemporaryDirectory() as folder:
    checkpoint.export_model(os.path.join(folder, "teacher"), teacher_config, spec,
                            jax.device_get(teacher_variables))
    tic = time.perf_counter()
    cached = teacher_cache.load_or_build(
        os.path.join(folder, "cache"), "teacher", os.path.join(folder, "teacher"), dataset=dataset,
        split="train", image_size=0, arrays=arrays, teacher_apply=teacher_apply,
        teacher_variables=teacher_variables, feature_paths=(), top_k=0, batch_size=256)
    cache_build_seconds = time.perf_counter() - tic
  cached = jax.device_put(cached)

  def step_fn(method, apply_teacher):
    return jax.jit(functools.partial(
        train.train_step, student_apply=student_apply, teacher_apply=apply_teacher,
        loss_fn=methods.build_loss(method), optimizer=optimizer, learning_rate=schedule))

  kd_step = step_fn(method_config, teacher_apply)
  student_step = step_fn(methods.method_config("supervised"), None)
  cached_step = step_fn(method_config, teacher_cache.make_cached_apply(spec.num_classes, 0))

  iterator = data.train_iterator(arrays, batch_size=batch_size, seed=0, workers=workers)
  device_batch = jax.device_put(next(iterator))

  # Then the steps on a batch already on the device, timed in turn within each round so that load from
  # other processes on the machine affects them alike; medians over the rounds.
  # The pipeline first, on its own: Grain's prefetch thread keeps working after each call.
  seconds = {"pipeline": _interleaved_medians({"pipeline": lambda: next(iterator)}, steps)["pipeline"],
             "pipeline_and_copy": _interleaved_medians({"copy": lambda: jax.device_put(next(iterator))},
                                                       steps)["copy"]}
  time.sleep(0.5)  # Let the prefetch thread fill its buffer and go idle.
  seconds |= _interleaved_medians({
      "student_only_step": lambda: student_step(state, {}, device_batch),
      "kd_step": lambda: kd_step(state, teacher_variables, device_batch),
      "cached_teacher_step": lambda: cached_step(state, cached, device_batch),
  }, steps)

  # The KD loop as kd.train runs it (next batch, dispatch the step asynchronously, repeat) against the
  # same loop on one batch already on the device: the extra time is time the device waited for data.
  def loop(next_batch) -> float:
    tic = time.perf_counter()
    metrics = None
    for _ in range(steps):
      _, metrics = kd_step(state, teacher_variables, next_batch())
    jax.block_until_ready(metrics)
    return time.perf_counter() - tic

  batches = data.DevicePrefetch(iterator, jax.device_put)
  next(batches)  # Starts the thread.
  compute, prefetched, in_loop = [], [], []
  for _ in range(3):
    compute.append(loop(lambda: device_batch))
    prefetched.append(loop(lambda: next(batches)))
    in_loop.append(loop(lambda: jax.device_put(next(batches._iterator))))  # pylint: disable=protected-access
  batches.close()
  compute_seconds = float(np.median(compute))

  def wait(loop_seconds):
    return max(0.0, 1.0 - compute_seconds / float(np.median(loop_seconds)))

  def per_second(seconds):
    return batch_size / seconds

  return {
      "pair": pair, "dataset": dataset, "batch_size": batch_size, "workers": workers,
      "examples_per_second": {name: per_second(value) for name, value in seconds.items()},
      "step_ms": {name: seconds[name] * 1e3 for name in ("kd_step", "student_only_step", "cached_teacher_step")},
      "data_wait_fraction": wait(prefetched),
      "data_wait_fraction_without_device_prefetch": wait(in_loop),
      "cached_over_student_only": seconds["cached_teacher_step"] / seconds["student_only_step"],
      "cache_build_seconds": cache_build_seconds,
  }


def main(argv):
  del argv
  results = [measure(pair, _BATCH_SIZE.value, _STEPS.value, _WORKERS.value) for pair in _PAIRS.value]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {_BATCH_SIZE.value}, "
        f"workers {_WORKERS.value}, median of {_STEPS.value} steps")
  header = ("pair", "pipeline ex/s", "+copy ex/s", "KD step ex/s", "student-only ex/s", "cached-teacher ex/s",
            "data wait", "(without device prefetch)", "cached / student-only")
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for r in results:
    rate = r["examples_per_second"]
    print(f"| {r['pair']} | {rate['pipeline']:,.0f} | {rate['pipeline_and_copy']:,.0f} | {rate['kd_step']:,.0f} | "
          f"{rate['student_only_step']:,.0f} | {rate['cached_teacher_step']:,.0f} | "
          f"{r['data_wait_fraction']:.1%} | {r['data_wait_fraction_without_device_prefetch']:.1%} | "
          f"{r['cached_over_student_only']:.3f} |")
  print("goals: data wait < 5%; cached-teacher step / student-only step <= 1.05")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
