"""Ensembles of teachers (kd.models.ensemble, kd.config.ensemble_stage): combined as the paper says,
assembled from earlier stages without training, and distilled from like any teacher."""

import json
import os

import jax
import numpy as np
import pytest

import kd
from kd import config as config_lib
from kd.errors import ConfigError
from kd.models import ensemble


def test_mean_probs_is_the_weighted_arithmetic_mean_of_the_members_distributions():
  logits = np.array([[[2.0, 0.0, -1.0]], [[0.0, 3.0, 0.0]]])  # 2 members, 1 example, 3 classes.
  weights = ensemble.normalised_weights((1.0, 3.0), 2)
  np.testing.assert_allclose(weights, [0.25, 0.75])
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  expected = 0.25 * p[0] + 0.75 * p[1]
  combined = ensemble.combine_logits(logits, weights, "mean_probs")
  np.testing.assert_allclose(np.exp(combined), expected, rtol=1e-6)  # Log-probabilities: they sum to 1.


def test_mean_logits_is_the_normalised_weighted_geometric_mean():
  logits = np.array([[[2.0, 0.0, -1.0]], [[0.0, 3.0, 0.0]]])
  weights = ensemble.normalised_weights((), 2)
  combined = np.asarray(ensemble.combine_logits(logits, weights, "mean_logits"))
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  geometric = np.sqrt(p[0] * p[1])
  np.testing.assert_allclose(np.exp(combined) / np.exp(combined).sum(-1, keepdims=True),
                             geometric / geometric.sum(-1, keepdims=True), rtol=1e-6)


def _config():
  config = kd.load_config("experiments/quickstart.py", "smoke")
  config.stages.teacher_b = config_lib.stage_config(
      {"name": "cnn", "channels": (8,), "hidden": 16}, {"name": "supervised"}, num_steps=3)
  config.stages.ensemble = config_lib.ensemble_stage(config.stages, ("teacher", "teacher_b"), weights=(2, 1))
  config.stages.student.teacher = "ensemble"
  config.stage_order = ("teacher", "teacher_b", "ensemble", "student")
  config.report.teacher, config.report.baseline = "ensemble", "teacher_b"
  return config


def test_an_ensemble_stage_holds_its_members_weights_and_a_student_distils_from_it(tmp_path):
  workdir = str(tmp_path)
  config = _config()
  config.teacher_cache.enabled = True  # The student reads the ensemble's stored outputs.
  kd.run(config, workdir)
  run = os.path.join(workdir, "seed_0")
  loaded = kd.load_model(os.path.join(run, "ensemble"))
  members = [kd.load_model(os.path.join(run, name)) for name in ("teacher", "teacher_b")]
  batch = {"image": np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)}
  combined = loaded.apply(loaded.variables, batch, train=False)
  probs = [jax.nn.softmax(m.apply(m.variables, batch, train=False)["logits"]) for m in members]
  np.testing.assert_allclose(np.exp(combined["logits"]), (2 * probs[0] + probs[1]) / 3, rtol=1e-5, atol=1e-6)
  with open(os.path.join(run, "ensemble", "result.json")) as f:
    assert json.load(f)["step"] == 0  # Assembled, evaluated and exported; nothing trained.
  with open(os.path.join(run, "ensemble", "fingerprint.json")) as f:
    assert len(json.load(f)["identity"]["init_identity"]) == 2  # Identified by its members'.
  with open(os.path.join(run, "student", "provenance.json")) as f:
    assert "ensemble" in json.dumps(json.load(f))
  assert os.path.exists(os.path.join(run, "student", "result.json"))
  assert [name for name in os.listdir(os.path.join(run, "teacher_cache")) if name.startswith("ensemble")]


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.stages.ensemble, "init_from", "stage:teacher,student"),
     "'student', which must be a stage that runs before 'ensemble'"),
    (lambda c: setattr(c.stages.teacher_b.model, "hidden", 32), "a member's model was changed"),
    (lambda c: setattr(c.stages.student, "init_from", "stage:teacher,teacher_b"), "only an ensemble starts from several"),
    (lambda c: setattr(c.stages.ensemble.model, "combine", "vote"), "combine"),
])
def test_bad_ensembles_are_one_line_errors(change, message):
  config = _config()
  change(config)
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config, num_devices=1)


def test_per_teacher_kd_is_the_weighted_sum_of_each_teachers_kl_by_hand():
  from kd import methods  # pylint: disable=g-import-not-at-top
  student = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
  teachers = {"member_0": np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
              "member_1": np.array([[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])}
  params = {**methods.multi_teacher_kd.DEFAULTS, "temperature": 2.0, "teacher_weights": (3.0, 1.0)}
  total, terms = methods.multi_teacher_kd.loss({"logits": student}, {"logits": None, "features": teachers},
                                               {"label": np.array([0, 1])}, **params)

  def softmax(z):
    e = np.exp(z / 2.0)
    return e / e.sum(-1, keepdims=True)

  q = softmax(student)
  kl = [4.0 * np.mean(np.sum(softmax(t) * np.log(softmax(t) / q), -1)) for t in teachers.values()]
  np.testing.assert_allclose([terms["kd_member_0"], terms["kd_member_1"]], kl, rtol=1e-5)
  np.testing.assert_allclose(terms["kd"], 0.75 * kl[0] + 0.25 * kl[1], rtol=1e-5)
  ce = -np.mean(np.log(np.exp(student) / np.exp(student).sum(-1, keepdims=True))[[0, 1], [0, 1]])
  np.testing.assert_allclose(total, 0.9 * terms["kd"] + 0.1 * ce, rtol=1e-5)
  # Its gradient is the cross-entropy's to the weighted average of the softened targets.
  average = 0.75 * softmax(teachers["member_0"]) + 0.25 * softmax(teachers["member_1"])
  grad = jax.grad(lambda s: methods.multi_teacher_kd.loss(
      {"logits": s}, {"logits": None, "features": teachers}, {"label": np.array([0, 1])},
      **{**params, "ce_weight": 0.0, "kd_weight": 1.0})[0])(student)
  cross_entropy = jax.grad(lambda s: 4.0 * np.float32(1) * -jax.numpy.mean(
      jax.numpy.sum(average * jax.nn.log_softmax(s / 2.0), -1)))(student)
  np.testing.assert_allclose(grad, cross_entropy, rtol=1e-5, atol=1e-7)


def test_a_tuple_of_teachers_points_at_ensemble_stage():
  config = _config()
  config.stages.student.teacher = "teacher,teacher_b"
  with pytest.raises(ConfigError, match=r"names several teachers: .*ensemble_stage\(config.stages, \('teacher', 'teacher_b'\)\)"):
    config_lib.validate(config, num_devices=1)
