"""Online and self-distillation: mutual learning keeps each network's gradient to itself, and a
moving-average teacher follows the student without ever being trained by gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import config as config_lib
from kd import methods
from kd import models
from kd import train
from kd.errors import ConfigError

import method_harness


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_mutual_learning_loss_by_hand_for_a_cohort_of_two():
  student = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
  peer = np.array([[0.0, 1.0, 0.0], [1.0, 1.0, -1.0]])
  labels = np.array([0, 1])
  total, terms = methods.dml.loss({"logits": student, "connector": {"peer_logits": (peer,)}}, None,
                                  {"label": labels}, **{**methods.dml.DEFAULTS})
  p, q = _softmax(student), _softmax(peer)
  ce_s = -np.mean(np.log(p[np.arange(2), labels]))
  ce_p = -np.mean(np.log(q[np.arange(2), labels]))
  kl_s = np.mean(np.sum(q * np.log(q / p), -1))  # KL(p_peer || p_student): the student's mimicry term.
  kl_p = np.mean(np.sum(p * np.log(p / q), -1))
  np.testing.assert_allclose(terms["ce"], ce_s, rtol=1e-6)
  np.testing.assert_allclose(terms["kl"], kl_s, rtol=1e-6)
  np.testing.assert_allclose(terms["peer_kl"], kl_p, rtol=1e-6)
  np.testing.assert_allclose(total, ce_s + ce_p + kl_s + kl_p, rtol=1e-6)


def test_each_network_of_the_cohort_gets_the_gradient_of_its_own_loss_only():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)))
  labels = jnp.array([0, 1, 2, 1])
  params = {"student": jnp.asarray(np.random.default_rng(1).normal(size=(5, 3))),
            "peers": [jnp.asarray(np.random.default_rng(2 + i).normal(size=(5, 3))) for i in range(2)]}

  def total(params):
    out = {"logits": x @ params["student"], "connector": {"peer_logits": tuple(x @ w for w in params["peers"])}}
    return methods.dml.loss(out, None, {"label": labels}, **{**methods.dml.DEFAULTS, "peers": 2})[0]

  def own_loss(params, k):  # Network k's L_k of the paper, the others' predictions as constants.
    logits = [x @ params["student"]] + [x @ w for w in params["peers"]]
    logp = jax.nn.log_softmax(logits[k])
    ce = -jnp.mean(logp[jnp.arange(4), labels])
    others = [jax.nn.softmax(jax.lax.stop_gradient(z)) for i, z in enumerate(logits) if i != k]
    kl = sum(jnp.mean(jnp.sum(q * (jnp.log(q) - logp), -1)) for q in others) / len(others)
    return ce + kl

  grads = jax.grad(total)(params)
  np.testing.assert_allclose(grads["student"], jax.grad(own_loss)(params, 0)["student"], rtol=1e-5, atol=1e-7)
  for k in (1, 2):
    np.testing.assert_allclose(grads["peers"][k - 1], jax.grad(own_loss)(params, k)["peers"][k - 1],
                               rtol=1e-5, atol=1e-7)


def test_mutual_learning_trains_its_peers_in_the_framework_step():
  state, teacher_variables, batch, step = method_harness.build_method_step(methods.method_config("dml", peers=2))  # A cohort of three.
  assert set(state.params["connector"]) == {"peer_0", "peer_1"}
  before = jax.tree.map(np.asarray, state.params)
  state, metrics = step(state, teacher_variables, batch)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, state.params)
  assert all(jax.tree.leaves(changed["connector"])) and all(jax.tree.leaves(changed["student"]))
  assert np.isfinite(metrics["peer_kl"]) and 0.0 <= metrics["peer_accuracy"] <= 1.0


def test_the_moving_average_teacher_follows_the_student_and_gets_no_gradient():
  student = method_harness.module(method_harness.STUDENT)
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(learning_rate=1e-2), 100)
  apply = models.make_apply(student, "image")
  batch = {"image": np.random.default_rng(0).integers(0, 255, (8, 8, 8, 1), dtype=np.uint8),
           "label": np.arange(8, dtype=np.int32) % 10, "index": np.arange(8, dtype=np.int32)}
  state = train.init_train_state(jax.random.PRNGKey(0), batch, {}, module=student, optimizer=optimizer,
                                 ema_teacher=True)
  np.testing.assert_array_equal(state.model_state["ema_teacher"]["params"]["head"]["kernel"],
                                state.params["student"]["head"]["kernel"])  # Starts as the student.
  decay = 0.75
  step = jax.jit(functools.partial(train.train_step, student_apply=apply, teacher_apply=apply,
                                   loss_fn=methods.build_loss(methods.method_config("hinton_kd")),
                                   optimizer=optimizer, learning_rate=schedule, ema_decay=decay))
  ema = jax.tree.map(np.asarray, state.model_state["ema_teacher"])
  for _ in range(3):
    state, metrics = step(state, {}, batch)
    student_now = jax.tree.map(np.asarray, train.student_variables(state))
    ema = jax.tree.map(lambda e, s: decay * e + (1 - decay) * s, ema, student_now)
    jax.tree.map(lambda want, got: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7),
                 ema, jax.tree.map(np.asarray, state.model_state["ema_teacher"]))
  assert "ema_teacher" not in state.params  # Never an optimizer's parameter: no gradient reaches it.
  assert float(metrics["kd"]) > 0.0  # The student and its average differ once training moves it.


@pytest.mark.parametrize("teacher, message", [("ema:1.5", r"decay in \(0, 1\)"), ("ema:x", "decay in")])
def test_a_bad_moving_average_teacher_is_one_line(teacher, message):
  import kd  # pylint: disable=g-import-not-at-top
  config = kd.load_config("experiments/quickstart.py", "smoke")
  config.stages.student.teacher = teacher
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config, num_devices=1)


def test_a_stage_with_a_moving_average_teacher_exports_it(tmp_path):
  import kd  # pylint: disable=g-import-not-at-top
  config = kd.load_config("experiments/quickstart.py", "smoke")
  config.stages.student.teacher = "ema:0.9"
  config.stages.student.num_steps = 4
  run_dir = str(tmp_path)
  train.train_stage(config, "student", run_dir, seed=0)
  student = kd.load_model(f"{run_dir}/student")
  average = kd.load_model(f"{run_dir}/student/ema_teacher")
  assert average.model_config == student.model_config
  differs = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), student.variables["params"],
                         average.variables["params"])
  assert any(jax.tree.leaves(differs))  # Four steps at decay 0.9: the average lags the student.
