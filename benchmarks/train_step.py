r"""Times the pieces of a distillation step for an experiment's teacher/student pair.

    python benchmarks/train_step.py --config=experiments/quickstart.py [--steps=200] [--json=out.json]

Prints a table and JSON: step time and examples/s of (a) a student-only step, (b) the teacher's forward
pass, (c) the online KD step, and the ratio (c) / ((a) + (b)), which a well-built KD step keeps near 1.
Everything is measured in one run, on the same machine, after compiling; the same script runs
unchanged on a GPU or TPU.
"""

import functools
import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from kd import data
from kd import methods
from kd import models
from kd import train

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/quickstart.py", "Experiment file.")
_STUDENT = flags.DEFINE_string("student", "student", "Stage whose model and method are the student's.")
_STEPS = flags.DEFINE_integer("steps", 200, "Timed steps per measurement.")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this file.")


def _time(fn, args, steps: int) -> float:
  """Median seconds per call over `steps` calls (after one compiling call and a warm-up)."""
  out = fn(*args)
  jax.block_until_ready(out)
  for _ in range(5):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    tic = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - tic)
  return float(np.median(times))


def main(argv):
  del argv
  config = _CONFIG.value
  stage = config.stages[_STUDENT.value]
  teacher_stage = config.stages[stage.teacher]
  spec = data.load_spec(config.data.name, config.data.data_dir)
  arrays = data.load_arrays(config.data.name, config.data.train_split, config.data.data_dir)
  batch = next(data.train_iterator(arrays, batch_size=config.data.batch_size, seed=0))
  batch = jax.device_put(batch)
  example = jnp.zeros((1,) + spec.input_shape, spec.input_dtype)

  student = models.build_model(stage.model, spec.num_classes)
  teacher = models.build_model(teacher_stage.model, spec.num_classes)
  teacher_variables = models.init_variables(teacher, jax.random.PRNGKey(1), example)
  teacher_apply = models.make_apply(teacher, spec.input_key)
  optimizer, schedule = train.make_optimizer(stage.optimizer, stage.num_steps)
  state = train.init_train_state(jax.random.PRNGKey(0), {spec.input_key: example}, module=student,
                                 optimizer=optimizer, input_key=spec.input_key)

  def step_fn(method_config, with_teacher):
    return jax.jit(functools.partial(
        train.train_step, student_apply=models.make_apply(student, spec.input_key),
        teacher_apply=teacher_apply if with_teacher else None,
        loss_fn=methods.build_loss(method_config), optimizer=optimizer, learning_rate=schedule))

  student_only = step_fn(methods.method_config("supervised"), False)
  kd_step = step_fn(stage.method, True)
  teacher_forward = jax.jit(lambda v, b: teacher_apply(v, b, train=False)["logits"])

  # Compile times, then steady-state times.
  compile_seconds = {}
  for name, fn, args in [("student_only", student_only, (state, {}, batch)),
                         ("teacher_forward", teacher_forward, (teacher_variables, batch)),
                         ("kd_step", kd_step, (state, teacher_variables, batch))]:
    tic = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_seconds[name] = time.perf_counter() - tic
  seconds = {
      "student_only": _time(student_only, (state, {}, batch), _STEPS.value),
      "teacher_forward": _time(teacher_forward, (teacher_variables, batch), _STEPS.value),
      "kd_step": _time(kd_step, (state, teacher_variables, batch), _STEPS.value),
  }
  batch_size = config.data.batch_size
  results = {
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "batch_size": batch_size, "student": dict(stage.model), "teacher": dict(teacher_stage.model),
      "step_ms": {k: v * 1e3 for k, v in seconds.items()},
      "examples_per_second": {k: batch_size / v for k, v in seconds.items()},
      "first_call_seconds": compile_seconds,
      "kd_over_student_plus_teacher": seconds["kd_step"] / (seconds["student_only"] + seconds["teacher_forward"]),
  }
  print(f"{'measurement':<18}{'step (ms)':>12}{'examples/s':>14}{'first call (s)':>16}")
  for name in seconds:
    print(f"{name:<18}{results['step_ms'][name]:>12.3f}{results['examples_per_second'][name]:>14.0f}"
          f"{compile_seconds[name]:>16.2f}")
  print(f"online KD step / (student-only step + teacher forward) = "
        f"{results['kd_over_student_plus_teacher']:.3f}  (batch {batch_size}, {results['device']})")
  print(json.dumps(results))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
