"""The jitted distillation step: it learns, it leaves the teacher alone, and it is pure."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kd import config as config_lib
from kd import methods
from kd import models
from kd import train


def _batch(size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 255, size=(size, 8, 8, 1), dtype=np.uint8),
          "label": rng.integers(0, 10, size=(size,)).astype(np.int32)}


def _setup(student_model, teacher_model=None, method=None, learning_rate=1e-2):
  student = models.build_model(student_model, 10)
  optimizer, schedule = train.make_optimizer(
      config_lib.optimizer_config(learning_rate=learning_rate, schedule="constant"), 100)
  example = jnp.zeros((1, 8, 8, 1), jnp.uint8)
  state = train.init_train_state(jax.random.PRNGKey(0), {"image": example}, module=student,
                                 optimizer=optimizer)
  teacher_apply, teacher_variables = None, {}
  if teacher_model is not None:
    teacher = models.build_model(teacher_model, 10)
    teacher_variables = models.init_variables(teacher, jax.random.PRNGKey(1), example)
    teacher_apply = models.make_apply(teacher)
  method = method or methods.method_config("hinton_kd")
  step = functools.partial(
      train.train_step, student_apply=models.make_apply(student), teacher_apply=teacher_apply,
      loss_fn=methods.build_loss(method), optimizer=optimizer, learning_rate=schedule)
  return state, teacher_variables, step


STUDENT = {"name": "cnn", "channels": (4, 8), "hidden": 16}
TEACHER = {"name": "cnn", "channels": (8, 16), "hidden": 32}


def test_kd_loss_decreases_on_a_fixed_batch():
  state, teacher_variables, step = _setup(STUDENT, TEACHER, learning_rate=3e-3)
  step = jax.jit(step, donate_argnums=0)
  batch = _batch()
  losses = []
  for _ in range(60):
    state, metrics = step(state, teacher_variables, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.75 * losses[0], losses
  assert np.mean(losses[-10:]) < np.mean(losses[10:20]) < np.mean(losses[:10]), losses
  assert int(state.step) == 60


def test_teacher_variables_are_unchanged_by_steps():
  state, teacher_variables, step = _setup(STUDENT, TEACHER)
  before = jax.tree.map(np.array, teacher_variables)
  step = jax.jit(step, donate_argnums=0)
  for seed in range(3):
    state, _ = step(state, teacher_variables, _batch(seed=seed))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, teacher_variables))
  # BatchNorm statistics move for the student (train mode) but not for the teacher (eval mode).
  assert "batch_stats" in teacher_variables


def test_no_gradient_reaches_the_teacher():
  state, teacher_variables, step = _setup(STUDENT, TEACHER)
  batch = _batch()
  # Each gradient compiled once, without LLVM's optimisations: op by op, differentiating a whole step
  # dispatches (and compiles) hundreds of small kernels, which takes far longer.
  jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
  grads = jit(jax.grad(lambda tv: step(state, tv, batch)[1]["loss"]))(teacher_variables)
  for leaf in jax.tree.leaves(grads):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
  # The student does receive a gradient from the same loss.
  student_grads = jit(jax.grad(lambda p: step(state.replace(params=p), teacher_variables, batch)[1]["loss"]))(
      state.params)
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(student_grads)) > 0


def test_kd_term_is_zero_when_student_logits_equal_teacher_logits():
  # Same architecture, same variables, no BatchNorm or dropout: identical logits.
  mlp = {"name": "mlp", "hidden": (16,)}
  state, _, step = _setup(mlp, mlp, methods.method_config("hinton_kd", kd_weight=1.0, ce_weight=0.0))
  teacher_variables = {"params": state.params["student"]}
  _, metrics = jax.jit(step)(state, teacher_variables, _batch())
  np.testing.assert_allclose(metrics["kd"], 0.0, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], 0.0, atol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], 0.0, atol=1e-5)


def test_supervised_step_needs_no_teacher_and_updates_batch_norm_statistics():
  state, _, step = _setup(STUDENT, None, methods.method_config("supervised"))
  before = jax.tree.map(np.array, state.model_state)
  new_state, metrics = jax.jit(step)(state, {}, _batch())
  assert set(metrics) >= {"loss", "ce", "accuracy", "grad_norm", "learning_rate"}
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, jax.device_get(new_state.model_state))
  assert all(jax.tree.leaves(changed))


def test_the_step_is_deterministic():
  state_a, teacher_variables, step = _setup(STUDENT, TEACHER)
  state_b, _, _ = _setup(STUDENT, TEACHER)
  step = jax.jit(step)
  out_a, _ = step(state_a, teacher_variables, _batch())
  out_b, _ = step(state_b, teacher_variables, _batch())
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out_a.params), jax.device_get(out_b.params))


def test_a_methods_loss_sees_the_number_of_updates_done_before_its_step():
  # DKD's warmup reads it: 0 at the first update, then 1, 2, ...
  state, teacher_variables, step = _setup(STUDENT, TEACHER, method=methods.method_config(
      "dkd", warmup_epochs=2, steps_per_epoch=2.0))
  step = jax.jit(step, donate_argnums=0)
  warmups = []
  for _ in range(5):
    state, metrics = step(state, teacher_variables, _batch())
    warmups.append(float(metrics["warmup"]))
  np.testing.assert_allclose(warmups, [0.5, 0.5, 1.0, 1.0, 1.0])  # Epochs 1, 1, 2, 2, 3 of 2 steps.
