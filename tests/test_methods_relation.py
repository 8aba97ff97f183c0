"""Relation-based methods (SP, CC, RKD, PKT) and their primitives.

Values, all computed under `jax.jit`, are checked against numpy computations written element by
element from the papers' equations; then the properties the papers claim (zero on a match,
invariances), finite gradients where a naive implementation has a sqrt or a normalisation at zero,
no gradient into the teacher, the config checks, and CC's trainable projections in the train step.
"""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import config as config_lib
from kd import losses
from kd import models
from kd import train
from kd.errors import ConfigError
from kd.methods import cc
from kd.methods import pkt
from kd.methods import rkd
from kd.methods import sp

METHODS = {"sp": sp, "cc": cc, "rkd": rkd, "pkt": pkt}
RELATION_METRICS = {"sp": ("sp",), "cc": ("cc",), "rkd": ("rkd_distance", "rkd_angle"), "pkt": ("pkt",)}
# Weights that leave only the relation term(s), at unit scale.
ONLY_RELATION = {
    "sp": {"sp_weight": 1.0, "ce_weight": 0.0},
    "cc": {"cc_weight": 1.0, "ce_weight": 0.0},
    "rkd": {"distance_weight": 1.0, "angle_weight": 1.0, "ce_weight": 0.0},
    "pkt": {"pkt_weight": 1.0, "ce_weight": 0.0},
}
# SP takes feature maps [B, H, W, C]; the others embeddings [B, D].
STUDENT_SHAPE = {"sp": (4, 2, 2, 3), "cc": (4, 3), "rkd": (4, 3), "pkt": (4, 3)}
TEACHER_SHAPE = {"sp": (4, 2, 2, 5), "cc": (4, 5), "rkd": (4, 5), "pkt": (4, 5)}


def _outputs(features, logits):
  return {"logits": jnp.asarray(logits, jnp.float32),
          "features": {f"tap{i}": jnp.asarray(f, jnp.float32) for i, f in enumerate(features)}}


def _loss(name, student_features, teacher_features, *, student_logits=None, labels=None, **params):
  """The method's (loss, metrics) under `jax.jit`, on lists of feature arrays (one per tap point)."""
  batch_size = student_features[0].shape[0] if student_features else 4
  student_logits = np.zeros((batch_size, 3)) if student_logits is None else student_logits
  labels = np.zeros(batch_size, np.int32) if labels is None else labels
  loss_fn = _jitted_loss(name, tuple(sorted(params.items())))
  return loss_fn(list(student_features), list(teacher_features), student_logits, labels)


@functools.cache
def _jitted_loss(name, params_items):
  """One compilation per method, parameters and shapes (eager mode would compile every op)."""
  module = METHODS[name]
  params = {**module.DEFAULTS, **dict(params_items)}

  def loss_fn(student_features, teacher_features, student_logits, labels):
    teacher_logits = jnp.zeros_like(student_logits)
    return module.loss(_outputs(student_features, student_logits), _outputs(teacher_features, teacher_logits),
                       {"label": labels}, **params)

  return jax.jit(loss_fn)


def _relation(name, student, teacher, **params):
  """The relation term alone (summed for RKD) as a float, for one feature pair."""
  value, _ = _loss(name, [student], [teacher], **{**ONLY_RELATION[name], **params})
  return float(value)


def _random_pair(name, seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=STUDENT_SHAPE[name]), rng.normal(size=TEACHER_SHAPE[name]) * 2.0 + 0.5


def _cross_entropy(logits, labels):
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(labels)), labels])


def _huber(x):
  x = abs(x)
  return 0.5 * x * x if x <= 1.0 else x - 0.5


# Numpy references, element by element from the papers.


def _np_sp(student_map, teacher_map):
  b = student_map.shape[0]

  def similarity(feature_map):
    q = feature_map.reshape(b, -1)
    gram = np.array([[np.dot(q[i], q[j]) for j in range(b)] for i in range(b)])
    return np.array([gram[i] / math.sqrt(sum(g * g for g in gram[i])) for i in range(b)])

  return sum((similarity(teacher_map) - similarity(student_map)).ravel()**2) / b**2


def _np_rkd(student, teacher):
  b = len(student)

  def distance_potential(x):
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(b)] for i in range(b)])
    mu = np.mean([d[i, j] for i in range(b) for j in range(b) if i != j])
    return d / mu

  def angle_potential(x, i, j, k):
    if j == i or k == i:
      return 0.0
    e_ij = (x[j] - x[i]) / np.linalg.norm(x[j] - x[i])
    e_ik = (x[k] - x[i]) / np.linalg.norm(x[k] - x[i])
    return float(np.dot(e_ij, e_ik))

  distance_diffs = (distance_potential(student) - distance_potential(teacher)).ravel()
  distance = np.mean([_huber(x) for x in distance_diffs])
  angle = np.mean([_huber(angle_potential(student, i, j, k) - angle_potential(teacher, i, j, k))
                   for i in range(b) for j in range(b) for k in range(b)])
  return distance, angle, distance_diffs


def _np_pkt(student, teacher, eps=1e-7):
  b = len(student)

  def probabilities(x):
    norms = [np.linalg.norm(x[i]) for i in range(b)]
    kernel = np.array([[(np.dot(x[i], x[j]) / (norms[i] * norms[j]) + 1) / 2 for j in range(b)]
                       for i in range(b)])
    return kernel / kernel.sum(axis=1, keepdims=True)

  p, q = probabilities(teacher), probabilities(student)
  return np.mean(p * np.log((p + eps) / (q + eps)))


def _np_cc_correlation(x, gamma, order):
  u = x / np.linalg.norm(x, axis=1, keepdims=True)
  b = len(x)
  return np.array([[sum(math.exp(-2 * gamma) * (2 * gamma)**p / math.factorial(p) * np.dot(u[i], u[j])**p
                        for p in range(order + 1)) for j in range(b)] for i in range(b)])


def _np_cc(student, teacher, gamma=0.4, order=2):
  difference = _np_cc_correlation(teacher, gamma, order) - _np_cc_correlation(student, gamma, order)
  return np.sum(difference**2) / len(student)**2


def _np_cc_repdistiller(student, teacher):
  delta = np.abs(student - teacher)
  return np.mean([np.sum(delta[i] * delta[i + 1]) for i in range(len(student) - 1)])


# Values.


def test_sp_matches_hand_computation():
  rng = np.random.default_rng(0)
  # Two layer pairs of different widths and resolutions: eq. 4 sums over them.
  student = [rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 5))]
  teacher = [rng.normal(size=(3, 1, 1, 4)), rng.normal(size=(3, 2, 2, 3))]
  logits, labels = rng.normal(size=(3, 4)), np.array([0, 3, 1])
  expected_sp = sum(_np_sp(s, t) for s, t in zip(student, teacher))
  loss, metrics = _loss("sp", student, teacher, student_logits=logits, labels=labels,
                        sp_weight=7.0, ce_weight=0.5)
  np.testing.assert_allclose(metrics["sp"], expected_sp, rtol=1e-5)
  np.testing.assert_allclose(metrics["ce"], _cross_entropy(logits, labels), rtol=1e-5)
  np.testing.assert_allclose(loss, 7.0 * expected_sp + 0.5 * _cross_entropy(logits, labels), rtol=1e-5)


def test_rkd_matches_hand_computation():
  rng = np.random.default_rng(1)
  # One teacher point far away so that some distance potentials differ by more than the Huber delta.
  teacher = np.array([[0.0, 0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.0, 1.0],
                      [9.0, 8.0, 0.0, 0.0, 7.0]])
  student = rng.normal(size=(4, 3))
  logits, labels = rng.normal(size=(4, 3)), np.array([2, 0, 1, 1])
  distance, angle, distance_diffs = _np_rkd(student, teacher)
  assert np.any(np.abs(distance_diffs) > 1) and np.any((np.abs(distance_diffs) < 1) & (distance_diffs != 0))
  loss, metrics = _loss("rkd", [student], [teacher], student_logits=logits, labels=labels,
                        distance_weight=25.0, angle_weight=50.0, ce_weight=2.0)
  np.testing.assert_allclose(metrics["rkd_distance"], distance, rtol=1e-5)
  np.testing.assert_allclose(metrics["rkd_angle"], angle, rtol=1e-5)
  np.testing.assert_allclose(loss, 25 * distance + 50 * angle + 2 * _cross_entropy(logits, labels), rtol=1e-5)


def test_pkt_matches_hand_computation():
  rng = np.random.default_rng(2)
  student, teacher = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
  logits, labels = rng.normal(size=(4, 3)), np.array([2, 0, 1, 1])
  loss, metrics = _loss("pkt", [student], [teacher], student_logits=logits, labels=labels)
  expected = _np_pkt(student, teacher)
  np.testing.assert_allclose(metrics["pkt"], expected, rtol=1e-4)
  np.testing.assert_allclose(loss, 30000 * expected + _cross_entropy(logits, labels), rtol=1e-4)


def test_cc_matches_hand_computation():
  rng = np.random.default_rng(3)
  student, teacher = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
  logits, labels = rng.normal(size=(4, 3)), np.array([2, 0, 1, 1])
  loss, metrics = _loss("cc", [student], [teacher], student_logits=logits, labels=labels,
                        gamma=0.7, taylor_order=3)
  expected = _np_cc(student, teacher, gamma=0.7, order=3)
  np.testing.assert_allclose(metrics["cc"], expected, rtol=1e-5)
  np.testing.assert_allclose(loss, 100 * expected + _cross_entropy(logits, labels), rtol=1e-5)


def test_cc_taylor_expansion_converges_to_the_gaussian_rbf_kernel():
  # Peng et al.: for unit vectors exp(-gamma ||a - b||^2) = exp(-2 gamma) exp(2 gamma a.b), whose
  # Taylor series the correlation truncates at order P.
  x = np.random.default_rng(4).normal(size=(5, 4))
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  rbf = np.exp(-0.4 * np.sum((unit[:, None] - unit[None]) ** 2, axis=-1))
  correlation = jax.jit(cc.correlation_matrix, static_argnames=("gamma", "taylor_order"))
  np.testing.assert_allclose(correlation(jnp.asarray(x), gamma=0.4, taylor_order=12), rbf, rtol=1e-5)
  error_order_2 = np.abs(correlation(jnp.asarray(x), gamma=0.4, taylor_order=2) - rbf).max()
  assert 1e-4 < error_order_2 < 0.1  # P = 2 is an approximation, and a close one.


def test_cc_repdistiller_variant_without_projections_matches_hand_computation():
  rng = np.random.default_rng(5)
  student, teacher = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  _, metrics = _loss("cc", [student], [teacher], variant="repdistiller", embed_dim=0, cc_weight=0.02)
  np.testing.assert_allclose(metrics["cc"], _np_cc_repdistiller(student, teacher), rtol=1e-5)
  _, metrics = _loss("cc", [student], [student], variant="repdistiller", embed_dim=0)
  assert float(metrics["cc"]) == 0.0
  # Without projections the features must have the same size.
  params = {**cc.DEFAULTS, "variant": "repdistiller", "embed_dim": 0}
  with pytest.raises(ConfigError, match="embed_dim > 0"):
    cc.check_features(params, {"pool": (2, 3)}, {"pool": (2, 5)}, "stages.student.method")
  with pytest.raises(ConfigError, match="embed_dim > 0"):
    _loss("cc", [student], [rng.normal(size=(4, 5))], variant="repdistiller", embed_dim=0)


def test_cc_repdistiller_variant_trains_linear_projections_of_both_networks():
  # RepDistiller's LinearEmbed on each side, both trainable; the teacher's features stay constant.
  rng = np.random.default_rng(6)
  student, teacher = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
  params = {**cc.DEFAULTS, "variant": "repdistiller", "embed_dim": 2, "cc_weight": 0.02}
  assert cc.make_connector(cc.DEFAULTS, {}, {}, 100) is None  # The kernel variant trains nothing.
  connector = cc.make_connector(params, {"pool": (2, 3)}, {"pool": (2, 5)}, 100)
  student_out, teacher_out = _outputs([student], np.zeros((4, 3))), _outputs([teacher], np.zeros((4, 3)))
  variables = connector.init(jax.random.key(0), student_out, teacher_out, {}, train=False)
  weights = jax.tree.map(np.asarray, variables["params"])
  assert weights["student_embed0"]["kernel"].shape == (3, 2)
  assert weights["teacher_embed0"]["kernel"].shape == (5, 2)

  def objective(connector_params, student_features, teacher_features):
    s_out = _outputs([student_features], np.zeros((4, 3)))
    t_out = _outputs([teacher_features], np.zeros((4, 3)))
    s_out["connector"] = connector.apply({"params": connector_params}, s_out, t_out, {}, train=True)
    return cc.loss(s_out, t_out, {"label": jnp.zeros(4, jnp.int32)}, **params)

  (_, metrics), grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True))(
      variables["params"], jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32))
  embed = lambda x, layer: x @ layer["kernel"] + layer["bias"]
  expected = _np_cc_repdistiller(embed(student, weights["student_embed0"]),
                                 embed(teacher, weights["teacher_embed0"]))
  np.testing.assert_allclose(metrics["cc"], expected, rtol=1e-5)
  connector_grads, student_grad, teacher_grad = grads
  assert np.abs(np.asarray(connector_grads["teacher_embed0"]["kernel"])).sum() > 0
  assert np.abs(np.asarray(connector_grads["student_embed0"]["kernel"])).sum() > 0
  assert np.abs(np.asarray(student_grad)).sum() > 0
  np.testing.assert_array_equal(teacher_grad, np.zeros_like(teacher))
  with pytest.raises(ConfigError, match="connector"):
    cc.loss(student_out, teacher_out, {"label": jnp.zeros(4, jnp.int32)}, **params)


# Properties the papers claim.


@pytest.mark.parametrize("name", sorted(METHODS))
def test_zero_when_student_features_equal_teacher_features(name):
  teacher = _random_pair(name, 7)[1]
  _, metrics = _loss(name, [teacher], [teacher])
  for key in RELATION_METRICS[name]:
    np.testing.assert_allclose(metrics[key], 0.0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_non_negative(name):
  for seed in range(5):
    student, teacher = _random_pair(name, seed)
    _, metrics = _loss(name, [student], [teacher])
    for key in RELATION_METRICS[name]:
      # PKT's eps inside the log can take it below zero, by less than eps (see pkt.py).
      assert float(metrics[key]) >= -pkt.EPS, (key, float(metrics[key]))
    assert sum(float(metrics[key]) for key in RELATION_METRICS[name]) > 0


def test_rkd_distance_is_invariant_to_scaling_translating_and_rotating_the_embedding():
  student, teacher = _random_pair("rkd", 8)
  rotation, _ = np.linalg.qr(np.random.default_rng(8).normal(size=(3, 3)))
  moved = 3.7 * student @ rotation + np.array([1.0, -2.0, 0.5])
  _, metrics = _loss("rkd", [student], [teacher])
  _, moved_metrics = _loss("rkd", [moved], [teacher])
  np.testing.assert_allclose(moved_metrics["rkd_distance"], metrics["rkd_distance"], rtol=1e-5)
  # Not invariant to stretching one axis: the relations change.
  _, stretched = _loss("rkd", [student * np.array([1.0, 1.0, 5.0])], [teacher])
  assert abs(float(stretched["rkd_distance"]) - float(metrics["rkd_distance"])) > 1e-3


def test_rkd_angle_is_invariant_to_translation_scaling_and_rotation():
  student, teacher = _random_pair("rkd", 9)
  rotation, _ = np.linalg.qr(np.random.default_rng(9).normal(size=(3, 3)))
  _, metrics = _loss("rkd", [student], [teacher])
  for moved in (student + 4.0, 0.2 * student, student @ rotation, 2.5 * student @ rotation - 1.0):
    _, moved_metrics = _loss("rkd", [moved], [teacher])
    np.testing.assert_allclose(moved_metrics["rkd_angle"], metrics["rkd_angle"], rtol=1e-5)


def test_sp_is_invariant_to_a_global_scale_and_channel_rotations_not_to_per_example_scales():
  student, teacher = _random_pair("sp", 10)
  reference = _relation("sp", student, teacher)
  np.testing.assert_allclose(_relation("sp", 6.0 * student, teacher), reference, rtol=1e-5)
  rotation, _ = np.linalg.qr(np.random.default_rng(10).normal(size=(3, 3)))
  np.testing.assert_allclose(_relation("sp", student @ rotation, teacher), reference, rtol=1e-5)
  # Row i of G keeps the scales of the other examples: rescaling examples changes the loss.
  per_example = student * np.array([1.0, 3.0, 0.5, 2.0])[:, None, None, None]
  assert abs(_relation("sp", per_example, teacher) - reference) > 1e-4


@pytest.mark.parametrize("name", ["pkt", "cc"])
def test_cosine_based_methods_are_invariant_to_per_example_scales(name):
  student, teacher = _random_pair(name, 11)
  per_example = student * np.array([1.0, 3.0, 0.5, 20.0])[:, None]
  np.testing.assert_allclose(_relation(name, per_example, teacher), _relation(name, student, teacher),
                             rtol=1e-4)


# Gradients.


def _degenerate_batches(name):
  """(description, student, teacher) where a naive sqrt or normalisation meets a zero."""
  student, teacher = _random_pair(name, 12)
  duplicate_student = student.copy()
  duplicate_student[1] = duplicate_student[0]
  duplicate_teacher = teacher.copy()
  duplicate_teacher[1] = duplicate_teacher[0]
  zero_row = student.copy()
  zero_row[2] = 0.0
  return [
      ("student duplicates only", duplicate_student, teacher),
      ("the same duplicates in both", duplicate_student, duplicate_teacher),
      ("an all-zero example", zero_row, teacher),
      ("all examples equal", np.repeat(student[:1], 4, axis=0), teacher),
      ("one example", student[:1], teacher[:1]),
  ]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_finite_values_and_gradients_at_duplicates_and_zeros(name):
  grad_fn = jax.jit(jax.value_and_grad(lambda s, t: _loss(name, [s], [t])[0]))
  for description, student, teacher in _degenerate_batches(name):
    value, grad = grad_fn(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32))
    assert np.isfinite(float(value)), description
    assert np.all(np.isfinite(np.asarray(grad))), description
    # Gradients stay at the scale of the data and weights, far below a 1/eps blow-up.
    assert np.abs(np.asarray(grad)).max() < 1e6, description


def test_rkd_duplicates_sit_at_distance_zero():
  x = np.array([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]])
  distances = jax.jit(losses.pairwise_distances)(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(distances)[[0, 0, 1, 1, 2], [0, 1, 0, 1, 2]], 0.0)
  np.testing.assert_allclose(distances[0, 2], 5.0, rtol=1e-6)
  grad = jax.jit(jax.grad(lambda y: jnp.sum(losses.pairwise_distances(y))))(jnp.asarray(x))
  # d/dx_0 of the distances to x_2, twice (rows and columns): -2 (x_2 - x_0) / 5.
  np.testing.assert_allclose(grad[0], -2 * np.array([3.0, 4.0]) / 5.0, rtol=1e-6)


def test_angle_potentials_of_degenerate_triplets():
  x = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  angles = np.asarray(jax.jit(losses.angle_potentials)(x))
  np.testing.assert_allclose(angles[0, 1, 2], 0.0, atol=1e-7)  # A right angle at x_0.
  np.testing.assert_allclose(angles[1, 0, 2], 1 / math.sqrt(5), rtol=1e-6)
  assert angles[0, 0, 2] == 0.0 and angles[0, 1, 0] == 0.0 and angles[0, 1, 1] == 1.0


def test_l2_normalize_leaves_zero_vectors_at_zero_with_zero_gradient():
  x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(jax.jit(losses.l2_normalize)(x), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
  grad = jax.jit(jax.grad(lambda y: jnp.sum(losses.l2_normalize(y))))(x)
  assert np.all(np.isfinite(np.asarray(grad))) and np.all(np.asarray(grad)[1] == 0.0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradients_reach_the_student_only_and_match_finite_differences(name):
  student, teacher = (jnp.asarray(x, jnp.float32) for x in _random_pair(name, 13))
  relation = lambda s, t: _loss(name, [s], [t], **ONLY_RELATION[name])[0]
  student_grad, teacher_grad = jax.jit(jax.grad(relation, argnums=(0, 1)))(student, teacher)
  np.testing.assert_array_equal(teacher_grad, np.zeros_like(teacher))
  assert np.all(np.isfinite(np.asarray(student_grad))) and np.abs(np.asarray(student_grad)).sum() > 0
  # The derivative along a random direction, against a central difference.
  direction = jnp.asarray(np.random.default_rng(14).normal(size=student.shape), jnp.float32)
  step = 1e-2
  numeric = (relation(student + step * direction, teacher)
             - relation(student - step * direction, teacher)) / (2 * step)
  np.testing.assert_allclose(jnp.vdot(student_grad, direction), numeric, rtol=2e-2, atol=1e-5)


# Configs.


@pytest.mark.parametrize("name", sorted(METHODS))
def test_defaults_pass_check_and_name_every_loss_parameter(name):
  module = METHODS[name]
  module.check(dict(module.DEFAULTS), "method")
  keyword_only = [p.name for p in inspect.signature(module.loss).parameters.values()
                  if p.kind == inspect.Parameter.KEYWORD_ONLY]
  assert sorted(keyword_only) == sorted(module.DEFAULTS)
  assert module.NEEDS_TEACHER
  assert isinstance(module.DEFAULTS["student_features"], tuple)
  assert isinstance(module.DEFAULTS["teacher_features"], tuple)


BAD_PARAMS = [
    ("sp", {"sp_weight": -1.0}, "sp_weight"),
    ("sp", {"sp_weight": "3000"}, "sp_weight"),
    ("sp", {"sp_weight": 0.0, "ce_weight": 0.0}, "both 0"),
    ("sp", {"student_features": "layer3_0"}, "student_features"),
    ("sp", {"teacher_features": ()}, "teacher_features"),
    ("sp", {"student_features": ("layer2_0", "layer3_0")}, "same number"),
    ("rkd", {"angle_weight": float("nan")}, "angle_weight"),
    ("rkd", {"distance_weight": 0.0, "angle_weight": 0.0, "ce_weight": 0.0}, "all 0"),
    ("rkd", {"distance_weight": True}, "distance_weight"),
    ("pkt", {"pkt_weight": -3.0}, "pkt_weight"),
    ("pkt", {"student_features": ("",)}, "student_features"),
    ("cc", {"variant": "rbf"}, "variant"),
    ("cc", {"gamma": 0.0}, "gamma"),
    ("cc", {"taylor_order": -1}, "taylor_order"),
    ("cc", {"taylor_order": 2.5}, "taylor_order"),
    ("cc", {"ce_weight": -0.1}, "ce_weight"),
    ("cc", {"embed_dim": -1}, "embed_dim"),
]


@pytest.mark.parametrize("name,overrides,message", BAD_PARAMS)
def test_check_rejects_impossible_values(name, overrides, message):
  module = METHODS[name]
  with pytest.raises(ConfigError, match=message) as error:
    module.check({**module.DEFAULTS, **overrides}, "stages.student.method")
  assert str(error.value).startswith("stages.student.method")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_features_that_do_not_pair_up_are_a_config_error(name):
  module = METHODS[name]
  # Globs can resolve to different numbers of tap points: caught before anything is compiled.
  module.check_features(module.DEFAULTS, {"a": (2, 3)}, {"b": (2, 8, 8, 5)}, "m")
  with pytest.raises(ConfigError, match="same number"):
    module.check_features(module.DEFAULTS, {"a": (2, 3), "b": (2, 3)}, {"c": (2, 3)}, "m")
  # And by the loss itself, if it is called on such outputs.
  student, teacher = _random_pair(name, 16)
  with pytest.raises(ConfigError, match="same number"):
    _loss(name, [student, student], [teacher])
  with pytest.raises(ConfigError, match="same number"):
    _loss(name, [], [])


# Through the framework's train step.


def test_cc_projections_train_in_the_framework_train_step():
  # The one method with trainable parts; the others reach the step the same way, without a connector.
  params = {**cc.DEFAULTS, "student_features": ("dense0",), "teacher_features": ("dense1",),
            "variant": "repdistiller", "embed_dim": 8, "cc_weight": 1.0}
  cc.check(params, "method")
  student = models.build_model(models.model_config("mlp", hidden=(16,)), 10)
  teacher = models.build_model(models.model_config("mlp", hidden=(32, 24)), 10)
  student_apply = models.make_apply(student, "image", params["student_features"])
  teacher_apply = models.make_apply(teacher, "image", params["teacher_features"])
  batch = {"image": np.random.default_rng(0).integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
           "label": np.arange(16, dtype=np.int32) % 10}
  # Compiled: op-by-op initialisation costs more than compiling it.
  teacher_variables = jax.jit(lambda rng: models.init_variables(teacher, rng, batch["image"]))(
      jax.random.key(1))

  def shapes(model, apply):
    out = jax.eval_shape(lambda: apply(models.init_variables(model, jax.random.key(0), batch["image"]),
                                       batch, train=False))
    return {path: feature.shape for path, feature in out["features"].items()}

  student_shapes, teacher_shapes = shapes(student, student_apply), shapes(teacher, teacher_apply)
  cc.check_features(params, student_shapes, teacher_shapes, "method")
  connector = cc.make_connector(params, student_shapes, teacher_shapes, len(batch["label"]))
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(learning_rate=3e-3), 100)
  state = jax.jit(lambda rng, tv: train.init_train_state(
      rng, batch, tv, module=student, optimizer=optimizer, connector=connector,
      student_apply=student_apply, teacher_apply=teacher_apply))(jax.random.key(0), teacher_variables)
  assert set(state.params["connector"]) == {"student_embed0", "teacher_embed0"}
  step = jax.jit(functools.partial(train.train_step, student_apply=student_apply, teacher_apply=teacher_apply,
                                   loss_fn=functools.partial(cc.loss, **params), optimizer=optimizer,
                                   learning_rate=schedule, connector=connector))
  before = state.params["connector"]["teacher_embed0"]["kernel"]
  values = []
  for _ in range(10):
    state, metrics = step(state, teacher_variables, batch)
    values.append(float(metrics["cc"]))
  assert np.all(np.isfinite(values)) and values[-1] < values[0], values
  assert not np.array_equal(before, state.params["connector"]["teacher_embed0"]["kernel"])


# Token features [B, N, C]: each example's tokens are flattened into one vector.


@pytest.mark.parametrize("name", sorted(METHODS))
def test_token_features_are_flattened_per_example(name):
  rng = np.random.default_rng(20)
  student_tokens = rng.normal(size=(4, 5, 3))  # E.g. a ViT's class token and 4 patch tokens.
  teacher_map = rng.normal(size=(4, 2, 2, 6))  # A CNN's map: token counts and widths may differ.
  METHODS[name].check_features(METHODS[name].DEFAULTS, {"blocks_0": student_tokens.shape},
                               {"layer3": teacher_map.shape}, "m")
  flattened = _relation(name, student_tokens.reshape(4, 15), teacher_map.reshape(4, 24))
  np.testing.assert_allclose(_relation(name, student_tokens, teacher_map), flattened, rtol=1e-5)
  np.testing.assert_allclose(_relation(name, student_tokens, teacher_map.reshape(4, 4, 6)), flattened,
                             rtol=1e-5)


def test_sp_similarities_of_tokens_are_those_of_the_flattened_vectors():
  tokens = np.random.default_rng(21).normal(size=(3, 4, 2))
  np.testing.assert_allclose(sp.similarity_matrix(jnp.asarray(tokens)),
                             sp.similarity_matrix(jnp.asarray(tokens.reshape(3, 8))), rtol=1e-6)
  np.testing.assert_allclose(sp.similarity_matrix(jnp.asarray(tokens)), _np_sp_matrix(tokens.reshape(3, 8)),
                             rtol=1e-5)


def _np_sp_matrix(q):
  gram = q @ q.T
  return gram / np.linalg.norm(gram, axis=1, keepdims=True)


def test_crd_embeds_every_token_of_a_token_feature():
  from kd.methods import crd  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(22)
  tokens, teacher = rng.normal(size=(4, 3, 2)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
  crd.check_features(crd.DEFAULTS, {"blocks_1": tokens.shape}, {"pool": teacher.shape}, "m")
  connector = crd.make_connector({**crd.DEFAULTS, "feat_dim": 4, "nce_k": 2}, {}, {}, 6)
  batch = {"index": jnp.arange(4)}

  def out(feature):
    return {"logits": jnp.zeros((4, 3)), "features": {"tap": jnp.asarray(feature)}}

  variables = connector.init(jax.random.key(0), out(tokens.reshape(4, 6)), out(teacher), batch, False)
  assert variables["params"]["embed_student"]["kernel"].shape == (6, 4)  # N*C inputs.
  from_tokens = connector.apply(variables, out(tokens), out(teacher), batch, False)
  from_vectors = connector.apply(variables, out(tokens.reshape(4, 6)), out(teacher), batch, False)
  for key in from_tokens:
    np.testing.assert_allclose(from_tokens[key], from_vectors[key], rtol=1e-6)
