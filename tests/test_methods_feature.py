"""Feature-based methods (NST, FSP, VID, AB): values, minima, gradients, shape checks, training.

Values are checked against numpy computations written loop by loop from the papers' equations and
RepDistiller's code (pooling, normalisation, kernels, Gram matrices, hinge terms); then the minima
the papers state, finite gradients, no gradient into the teacher, the errors for features that
cannot work, and, for the methods with connectors, train steps through `kd.train.train_step`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_harness

from kd import methods
from kd import train
from kd.errors import ConfigError
from kd.methods import ab
from kd.methods import common
from kd.methods import fsp
from kd.methods import nst
from kd.methods import vid

MODULES = {"nst": nst, "fsp": fsp, "vid": vid, "ab": ab}
TERM = {"nst": "nst", "fsp": "fsp", "vid": "vid", "ab": "ab"}
ONLY_TERM = {
    "nst": {"nst_weight": 1.0, "ce_weight": 0.0},
    "fsp": {"fsp_weight": 1.0, "ce_weight": 0.0},
    "vid": {"vid_weight": 1.0, "ce_weight": 0.0},
    "ab": {"ab_weight": 1.0, "ce_weight": 0.0, "connector": False},
}


def _outputs(feature_list, logits=None, connector=None):
  feature_list = [jnp.asarray(f, jnp.float32) for f in feature_list]
  batch_size = feature_list[0].shape[0]
  out = {"logits": jnp.zeros((batch_size, 3)) if logits is None else jnp.asarray(logits, jnp.float32),
         "features": {f"tap{i}": f for i, f in enumerate(feature_list)}}
  if connector is not None:
    out["connector"] = connector
  return out


def _loss(name, student_features, teacher_features, *, connector_out=None, logits=None, labels=None,
          **params):
  module = MODULES[name]
  batch_size = np.shape(student_features[0])[0]
  labels = np.zeros(batch_size, np.int32) if labels is None else labels
  return module.loss(_outputs(student_features, logits, connector_out), _outputs(teacher_features),
                     {"label": jnp.asarray(labels)}, **{**module.DEFAULTS, **params})


# Numpy references, loop by loop.


def _np_adaptive_pool(x, height, width):
  """PyTorch's adaptive_avg_pool2d on NHWC: bin i covers floor(i*n/m) .. ceil((i+1)*n/m) - 1."""
  b, h, w, c = x.shape
  out = np.zeros((b, height, width, c))
  for i in range(height):
    h0, h1 = (i * h) // height, math.ceil((i + 1) * h / height)
    for j in range(width):
      w0, w1 = (j * w) // width, math.ceil((j + 1) * w / width)
      out[:, i, j, :] = x[:, h0:h1, w0:w1, :].mean(axis=(1, 2))
  return out


def _np_match(a, b):
  if a.shape[1] > b.shape[1]:
    return _np_adaptive_pool(a, b.shape[1], b.shape[2]), b
  if a.shape[1] < b.shape[1]:
    return a, _np_adaptive_pool(b, a.shape[1], a.shape[2])
  return a, b


def _np_nst(student, teacher):
  """RepDistiller's NSTLoss: normalised channel patterns, mean of (x.y)^2 kernels, full MMD."""
  student, teacher = _np_match(student, teacher)
  total = 0.0
  for b in range(student.shape[0]):
    s = [student[b, :, :, i].ravel() for i in range(student.shape[-1])]
    t = [teacher[b, :, :, j].ravel() for j in range(teacher.shape[-1])]
    s = [v / np.linalg.norm(v) for v in s]
    t = [v / np.linalg.norm(v) for v in t]
    k = lambda xs, ys: np.mean([np.dot(x, y) ** 2 for x in xs for y in ys])
    total += k(t, t) + k(s, s) - 2 * k(s, t)
  return total / student.shape[0]


def _np_fsp_matrix(bottom, top):
  bottom, top = _np_match(bottom, top)
  b, h, w, m = bottom.shape
  n = top.shape[-1]
  g = np.zeros((b, m, n))
  for e in range(b):
    for i in range(m):
      for j in range(n):
        g[e, i, j] = sum(bottom[e, y, x, i] * top[e, y, x, j] for y in range(h) for x in range(w)) / (h * w)
  return g


def _np_fsp(student_list, teacher_list):
  total = 0.0
  for k in range(len(student_list) - 1):
    gs = _np_fsp_matrix(student_list[k], student_list[k + 1])
    gt = _np_fsp_matrix(teacher_list[k], teacher_list[k + 1])
    total += np.mean((gs - gt) ** 2)
  return total


def _np_ab(student_list, teacher_list, margin=1.0):
  """RepDistiller's ABLoss: criterion_alternative_l2 per pair, weights 2^(i-n+1), / bsz, * 3/1000."""
  n, bsz = len(student_list), student_list[0].shape[0]
  total = 0.0
  for i, (s, t) in enumerate(zip(student_list, teacher_list)):
    per_pair = 0.0
    for source, target in zip(s.ravel(), t.ravel()):
      per_pair += ((source + margin) ** 2 * float(source > -margin and target <= 0)
                   + (source - margin) ** 2 * float(source <= margin and target > 0))
    total += 2 ** (i - n + 1) * per_pair / bsz / 1000 * 3
  return total


def _cross_entropy(logits, labels):
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(labels)), labels])


# Values.


def test_adaptive_pool_follows_pytorch_bins():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3))
  for height, width in ((3, 3), (5, 7), (1, 2), (4, 6)):
    np.testing.assert_allclose(common.adaptive_average_pool(jnp.asarray(x), height, width),
                               _np_adaptive_pool(x, height, width), rtol=1e-5, atol=1e-6)
  even = np.random.default_rng(1).normal(size=(1, 4, 4, 2))  # A multiple: plain 2x2 average pooling.
  np.testing.assert_allclose(common.adaptive_average_pool(jnp.asarray(even), 2, 2),
                             even.reshape(1, 2, 2, 2, 2, 2).mean(axis=(2, 4)), rtol=1e-5)


def test_nst_matches_numpy():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 2, 2, 5)) + 0.3
  value, terms = _loss("nst", [student], [teacher], **ONLY_TERM["nst"])
  np.testing.assert_allclose(terms["nst"], _np_nst(student, teacher), rtol=1e-5)
  np.testing.assert_allclose(value, _np_nst(student, teacher), rtol=1e-5)
  # Both directions of pooling, and two pairs add up.
  value, _ = _loss("nst", [teacher, student], [student, teacher], **ONLY_TERM["nst"])
  np.testing.assert_allclose(value, _np_nst(teacher, student) + _np_nst(student, teacher), rtol=1e-5)


def test_nst_is_an_mmd_of_position_grams_and_zero_for_equal_maps():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 6))
  s = student.reshape(2, 9, 4) / np.linalg.norm(student.reshape(2, 9, 4), axis=1, keepdims=True)
  t = teacher.reshape(2, 9, 6) / np.linalg.norm(teacher.reshape(2, 9, 6), axis=1, keepdims=True)
  grams = [np.sum((s[b] @ s[b].T / 4 - t[b] @ t[b].T / 6) ** 2) for b in range(2)]
  np.testing.assert_allclose(nst.nst_mmd(jnp.asarray(student), jnp.asarray(teacher)), grams, rtol=1e-4)
  assert np.all(np.asarray(nst.nst_mmd(jnp.asarray(student), jnp.asarray(teacher))) > 0)
  np.testing.assert_allclose(nst.nst_mmd(jnp.asarray(student), jnp.asarray(student)), 0.0, atol=1e-6)
  # The channels are a set: their order does not matter.
  np.testing.assert_allclose(nst.nst_mmd(jnp.asarray(student[..., ::-1]), jnp.asarray(student)), 0.0,
                             atol=1e-6)


def test_fsp_matches_numpy_and_is_zero_for_equal_features():
  rng = np.random.default_rng(2)
  # Consecutive maps at different resolutions in both networks; the teacher's at twice the
  # student's; channel counts equal position by position.
  student = [rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 2, 2, 2)), rng.normal(size=(2, 2, 2, 3))]
  teacher = [rng.normal(size=(2, 8, 8, 3)), rng.normal(size=(2, 8, 8, 2)), rng.normal(size=(2, 4, 4, 3))]
  value, terms = _loss("fsp", student, teacher, **ONLY_TERM["fsp"])
  np.testing.assert_allclose(terms["fsp"], _np_fsp(student, teacher), rtol=1e-5)
  np.testing.assert_allclose(value, _np_fsp(student, teacher), rtol=1e-5)
  np.testing.assert_allclose(fsp.fsp_matrix(jnp.asarray(student[0]), jnp.asarray(student[1])),
                             _np_fsp_matrix(student[0], student[1]), rtol=1e-5, atol=1e-7)
  _, terms = _loss("fsp", student, student, **ONLY_TERM["fsp"])
  assert float(terms["fsp"]) == 0.0


def test_vid_matches_numpy_and_its_minimum():
  rng = np.random.default_rng(3)
  mean, teacher = rng.normal(size=(2, 2, 2, 3)), rng.normal(size=(2, 4, 4, 3))  # Teacher pooled.
  variance = np.array([0.5, 2.0, 5.0])
  pooled = _np_adaptive_pool(teacher, 2, 2)
  expected = np.mean([0.5 * (np.log(variance[c]) + (mean[b, h, w, c] - pooled[b, h, w, c]) ** 2 / variance[c])
                      for b in range(2) for h in range(2) for w in range(2) for c in range(3)])
  connector = {"means": [jnp.asarray(mean, jnp.float32)], "variances": [jnp.asarray(variance, jnp.float32)]}
  value, terms = _loss("vid", [np.zeros((2, 4, 4, 1))], [teacher], connector_out=connector, **ONLY_TERM["vid"])
  np.testing.assert_allclose(terms["vid"], expected, rtol=1e-5)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  # A perfect mean leaves 1/2 log sigma^2; for a residual r, sigma^2 = r^2 is the best variance,
  # where the loss is 1/2 (log r^2 + 1).
  target = rng.normal(size=(2, 5))
  np.testing.assert_allclose(vid.gaussian_nll(target, np.full(5, 3.0), target), 0.5 * np.log(3.0), rtol=1e-6)
  residual = 0.7
  variances = np.linspace(0.1, 2.0, 400)
  values = [float(vid.gaussian_nll(target + residual, np.full(5, v), target)[0]) for v in variances]
  best = variances[int(np.argmin(values))]
  assert abs(best - residual**2) < 0.01
  np.testing.assert_allclose(min(values), 0.5 * (np.log(residual**2) + 1), atol=1e-4)


def test_ab_matches_repdistiller_and_is_zero_beyond_the_margin():
  rng = np.random.default_rng(4)
  # Values near the margin and near 0 exercise every branch of the hinge.
  student = [rng.normal(size=(2, 3, 3, 2)), rng.normal(size=(2, 2, 2, 3))]
  teacher = [rng.normal(size=(2, 3, 3, 2)), rng.normal(size=(2, 2, 2, 3))]
  student[0][0, 0, 0] = [1.0, -1.0]
  teacher[0][0, 0, 0] = [0.0, 0.5]
  for margin in (1.0, 0.5):
    value, terms = _loss("ab", student, teacher, connector=False, margin=margin, ce_weight=0.0)
    np.testing.assert_allclose(value, _np_ab(student, teacher, margin), rtol=1e-5)
    np.testing.assert_allclose(terms["ab"] * ab.DEFAULTS["ab_weight"], _np_ab(student, teacher, margin),
                               rtol=1e-5)
  # Zero once the student is on the teacher's side of 0 by at least the margin.
  beyond = [np.where(t > 0, 1.0, -1.0) * (1.0 + np.abs(s)) for s, t in zip(student, teacher)]
  _, terms = _loss("ab", beyond, teacher, **ONLY_TERM["ab"])
  assert float(terms["ab"]) == 0.0
  # With margin 0, equal features (same activations) give 0; with margin 1 they do not.
  _, terms = _loss("ab", teacher, teacher, **{**ONLY_TERM["ab"], "margin": 0.0})
  assert float(terms["ab"]) == 0.0
  _, terms = _loss("ab", teacher, teacher, **ONLY_TERM["ab"])
  assert float(terms["ab"]) > 0.0


@pytest.mark.parametrize("name", ["nst", "fsp", "vid", "ab"])
def test_cross_entropy_is_added_with_its_weight(name):
  rng = np.random.default_rng(5)
  features_list = [rng.normal(size=(2, 2, 2, 3)), rng.normal(size=(2, 2, 2, 3))]
  connector = {"means": features_list, "variances": [jnp.ones(3)] * 2} if name == "vid" else None
  logits, labels = rng.normal(size=(2, 4)), np.array([1, 3])
  params = {**ONLY_TERM[name], "ce_weight": 0.25}
  value, terms = _loss(name, features_list, features_list[::-1], connector_out=connector, logits=logits,
                       labels=labels, **params)
  np.testing.assert_allclose(terms["ce"], _cross_entropy(logits, labels), rtol=1e-5)
  np.testing.assert_allclose(value, terms[TERM[name]] + 0.25 * _cross_entropy(logits, labels), rtol=1e-5)


# Gradients.


def _features_for(name, rng):
  if name == "fsp":
    return ([rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 2, 2, 2))],
            [rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 2))])
  return [rng.normal(size=(2, 4, 4, 3))], [rng.normal(size=(2, 2, 2, 5))]


def _term_fn(name, teacher_features):
  """The method's term as a function of the student's features (through VID's mean for VID)."""

  def term(student_features, teacher_features=teacher_features):
    connector = None
    if name == "vid":
      pooled = [common.adaptive_average_pool(s, 2, 2) for s in student_features]
      connector = {"means": [jnp.tile(p[..., :1], (1, 1, 1, 5)) for p in pooled],
                   "variances": [jnp.full(5, 2.0)]}
    if name == "ab":
      teacher_features = [t[:, ::2, ::2, :3] for t in teacher_features]  # Equal shapes, no connector.
      student_features = [s[:, ::2, ::2, :] for s in student_features]
    return _loss(name, student_features, teacher_features, connector_out=connector,
                 **ONLY_TERM[name])[0]

  return term


@pytest.mark.parametrize("name", ["nst", "fsp", "vid", "ab"])
def test_gradients_are_finite_even_for_dead_channels_and_never_reach_the_teacher(name):
  rng = np.random.default_rng(6)
  student, teacher = _features_for(name, rng)
  student = [jnp.asarray(s, jnp.float32).at[..., 0].set(0.0) for s in student]  # A dead ReLU channel.
  teacher = [jnp.asarray(t, jnp.float32).at[..., 0].set(0.0) for t in teacher]
  term = _term_fn(name, teacher)
  grads = jax.jit(jax.grad(term))(student)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert any(np.any(np.asarray(g) != 0) for g in grads)
  teacher_grads = jax.grad(lambda t: term(student, t))(teacher)
  assert all(np.all(np.asarray(g) == 0) for g in teacher_grads)


def test_nst_gradient_matches_finite_differences():
  rng = np.random.default_rng(7)
  student = jnp.asarray(rng.normal(size=(1, 2, 2, 2)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(1, 2, 2, 3)), jnp.float32)
  fn = jax.jit(lambda s: jnp.sum(nst.nst_mmd(s, teacher)))
  grad = np.asarray(jax.grad(fn)(student)).ravel()
  step = 1e-3
  for index in range(student.size):
    delta = np.zeros(student.size, np.float32)
    delta[index] = step
    delta = jnp.asarray(delta.reshape(student.shape))
    numeric = (float(fn(student + delta)) - float(fn(student - delta))) / (2 * step)
    np.testing.assert_allclose(grad[index], numeric, atol=2e-3)


# Shape checks.

SHAPE_ERRORS = [
    ("nst", {"a": (2, 8, 8, 4)}, {"b": (2, 16)}, "NST compares channel activation patterns"),
    ("nst", {"a": (2, 8, 4, 4)}, {"b": (2, 4, 8, 4)}, "both >= \\(or both <=\\)"),
    ("nst", {"a": (2, 8, 8, 4), "c": (2, 4, 4, 4)}, {"b": (2, 8, 8, 4)}, "same number of tap points"),
    ("fsp", {"a": (2, 8, 8, 4)}, {"b": (2, 8, 8, 4)}, "at least two"),
    ("fsp", {"a": (2, 8, 8, 4), "c": (2, 4, 4, 8)}, {"b": (2, 8, 8, 4), "d": (2, 4, 4, 16)},
     "student feature c has 8 channels and teacher feature d 16"),
    ("fsp", {"a": (2, 8, 4, 4), "c": (2, 4, 8, 8)}, {"b": (2, 8, 8, 4), "d": (2, 4, 4, 8)},
     "student features a \\(8, 4, 4\\) and c \\(4, 8, 8\\) cannot be pooled"),
    ("fsp", {"a": (2, 8, 8, 4), "c": (2, 8)}, {"b": (2, 8, 8, 4), "d": (2, 8)}, "needs feature maps"),
    ("vid", {"a": (2, 8, 8, 4)}, {"b": (2, 16)}, "VID regresses teacher feature b"),
    ("ab", {"a": (2, 8, 8, 4)}, {"b": (2, 4, 4, 8)}, "keeps the resolution"),
]


@pytest.mark.parametrize("name,student_shapes,teacher_shapes,words", SHAPE_ERRORS)
def test_check_features_names_the_features_and_the_fix(name, student_shapes, teacher_shapes, words):
  module = MODULES[name]
  with pytest.raises(ConfigError, match=words):
    module.check_features(module.DEFAULTS, student_shapes, teacher_shapes, "method")


def test_check_features_accepts_what_works():
  nst.check_features(nst.DEFAULTS, {"a": (2, 8, 8, 4)}, {"b": (2, 4, 4, 16)}, "m")  # Pooled, any width.
  fsp.check_features(fsp.DEFAULTS, {"a": (2, 8, 8, 4), "c": (2, 4, 4, 8)},
                     {"b": (2, 16, 16, 4), "d": (2, 16, 16, 8)}, "m")
  vid.check_features(vid.DEFAULTS, {"a": (2, 8, 8, 4)}, {"b": (2, 4, 4, 16)}, "m")
  vid.check_features(vid.DEFAULTS, {"a": (2, 32)}, {"b": (2, 64)}, "m")
  ab.check_features(ab.DEFAULTS, {"a": (2, 8, 8, 4)}, {"b": (2, 8, 8, 16)}, "m")
  with pytest.raises(ConfigError, match="connector=False"):
    ab.check_features({**ab.DEFAULTS, "connector": False}, {"a": (2, 8, 8, 4)}, {"b": (2, 8, 8, 16)}, "m")


@pytest.mark.parametrize("name,key,value,words", [
    ("nst", "nst_weight", -1.0, "must be a number >= 0"),
    ("fsp", "student_features", (), "non-empty tuple"),
    ("vid", "init_variance", 0.0, "must be a number >"),
    ("ab", "margin", -0.5, "margin=-0.5 must be a number >= 0"),
    ("ab", "teacher_features", ("a", "b"), "pair up one to one"),
])
def test_check_rejects_impossible_parameters(name, key, value, words):
  module = MODULES[name]
  with pytest.raises(ConfigError, match=words):
    module.check({**module.DEFAULTS, key: value}, "method")


# Training with connectors.

def _step_setup(monkeypatch, name, learning_rate=3e-3, **params):
  """A jitted train step through the framework's method table, as `kd.train` builds it."""
  monkeypatch.setitem(methods.METHODS, name, MODULES[name])
  return method_harness.build_method_step(methods.method_config(name, **params),
                                          learning_rate=learning_rate)


def _train(state, teacher_variables, batch, step, term, num_steps=25):
  values = []
  for _ in range(num_steps):
    state, metrics = step(state, teacher_variables, batch)
    values.append(float(metrics[term]))
  assert all(np.isfinite(values)), values
  return state, values


def _assert_connector_left_out_of_export(state, word):
  exported = train.student_variables(state)
  assert not any(word in "/".join(map(str, path))
                 for path, _ in jax.tree_util.tree_flatten_with_path(exported)[0])


def test_vid_regressor_and_variances_train_with_the_student(monkeypatch):
  # Student conv0 [8, 8, 4] against teacher conv1 [4, 4, 16]: the student's map is pooled to 4x4.
  state, teacher_variables, batch, step = _step_setup(
      monkeypatch, "vid", learning_rate=3e-2, student_features=("conv0",), teacher_features=("conv1",))
  connector = state.params["connector"]
  assert connector["regressor0_conv0"]["kernel"].shape == (4, 16)
  assert connector["regressor0_conv2"]["kernel"].shape == (16, 16)
  np.testing.assert_allclose(jax.nn.softplus(connector["alpha0"]) + 1e-5, np.full(16, 5.0), rtol=1e-6)
  before = connector["alpha0"]
  state, values = _train(state, teacher_variables, batch, step, "vid")
  assert values[-1] < values[0] - 0.05, values
  assert not np.array_equal(before, state.params["connector"]["alpha0"])
  _assert_connector_left_out_of_export(state, "regressor")


def test_ab_connector_trains_with_the_student(monkeypatch):
  # Pre-ReLU norm0 of both: [8, 8, 4] -> the teacher's [8, 8, 8] through a 1x1 conv and BatchNorm.
  state, teacher_variables, batch, step = _step_setup(monkeypatch, "ab", ab_weight=0.05)
  assert state.params["connector"]["connector0"]["kernel"].shape == (4, 8)
  assert "connector0_norm" in state.model_state["connector"]["batch_stats"]
  before = state.params["connector"]["connector0"]["kernel"]
  state, values = _train(state, teacher_variables, batch, step, "ab")
  assert values[-1] < 0.8 * values[0], values
  assert not np.array_equal(before, state.params["connector"]["connector0"]["kernel"])
  _assert_connector_left_out_of_export(state, "connector")


# Token features [B, N, C]: FitNets, AT and NST compare them token by token; the others refuse them.

from kd.methods import attention_transfer  # pylint: disable=g-import-not-at-top,g-bad-import-order
from kd.methods import fitnets  # pylint: disable=g-import-not-at-top,g-bad-import-order
from kd.methods import ft  # pylint: disable=g-import-not-at-top,g-bad-import-order
from kd.methods import reviewkd  # pylint: disable=g-import-not-at-top,g-bad-import-order


def _regressed(params, student, teacher):
  """FitNets' connector on one (student, teacher) pair: (its variables, the hints)."""
  s_shapes, t_shapes = {"block1": student.shape}, {"mlp1_out": teacher.shape}
  fitnets.check_features(params, s_shapes, t_shapes, "method")
  connector = fitnets.make_connector(params, s_shapes, t_shapes, 0)
  student_out, teacher_out = _outputs([student]), _outputs([teacher])
  variables = connector.init(jax.random.key(0), student_out, teacher_out, {}, False)
  return variables, connector.apply(variables, student_out, teacher_out, {}, False)["hints"]


def test_fitnets_regresses_each_token_with_one_shared_linear_map():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 16, 32)), rng.normal(size=(2, 16, 64))
  params = {**fitnets.DEFAULTS, "ce_weight": 0.0, "hint_weight": 1.0}
  variables, (hint,) = _regressed(params, student, teacher)
  kernel, bias = variables["params"]["regressor0"]["kernel"], variables["params"]["regressor0"]["bias"]
  assert kernel.shape == (32, 64)  # C_s -> C_t, shared over the 16 tokens; no BatchNorm, no ReLU.
  np.testing.assert_allclose(hint, np.einsum("bnc,cd->bnd", student, kernel) + bias, rtol=1e-5, atol=1e-5)
  total, terms = _loss_fitnets(student, teacher, {"hints": [hint]}, **params)
  np.testing.assert_allclose(terms["hint"], np.mean((np.asarray(hint) - teacher) ** 2), rtol=1e-5)
  np.testing.assert_allclose(total, terms["hint"], rtol=1e-6)


def _loss_fitnets(student, teacher, connector_out=None, **params):
  return fitnets.loss(_outputs([student], connector=connector_out), _outputs([teacher]),
                      {"label": jnp.zeros(student.shape[0], jnp.int32)}, **{**fitnets.DEFAULTS, **params})


def test_fitnets_token_counts_must_agree_and_special_tokens_are_dropped():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(2, 17, 32)), rng.normal(size=(2, 16, 64))  # A class token.
  with pytest.raises(ConfigError, match=r"block1 \(17, 32\) and teacher feature mlp1_out \(16, 64\).*"
                                        r"student_special_tokens"):
    fitnets.check_features(fitnets.DEFAULTS, {"block1": student.shape}, {"mlp1_out": teacher.shape}, "method")
  params = {**fitnets.DEFAULTS, "student_special_tokens": 1}
  variables, (hint,) = _regressed(params, student, teacher)
  kernel = variables["params"]["regressor0"]["kernel"]
  np.testing.assert_allclose(hint, np.einsum("bnc,cd->bnd", student[:, 1:], kernel), rtol=1e-5, atol=1e-5)
  with pytest.raises(ConfigError, match="drops every token"):
    fitnets.check_features({**fitnets.DEFAULTS, "teacher_special_tokens": 16}, {"a": (2, 16, 8)},
                           {"b": (2, 16, 8)}, "method")
  with pytest.raises(ConfigError, match="no teacher feature is tokens"):
    fitnets.check_features({**fitnets.DEFAULTS, "teacher_special_tokens": 1}, {"a": (2, 16, 8)},
                           {"b": (2, 4, 4, 8)}, "method")
  with pytest.raises(ConfigError, match="integer >= 0"):
    fitnets.check({**fitnets.DEFAULTS, "student_special_tokens": -1}, "method")


def test_fitnets_reads_a_map_as_row_major_tokens_when_the_counts_agree():
  rng = np.random.default_rng(2)
  student_tokens, teacher_map = rng.normal(size=(2, 16, 8)), rng.normal(size=(2, 4, 4, 8))
  params = {"regressor": False, "ce_weight": 0.0, "hint_weight": 1.0}
  fitnets.check_features({**fitnets.DEFAULTS, **params}, {"a": (2, 16, 8)}, {"b": (2, 4, 4, 8)}, "m")
  _, terms = _loss_fitnets(student_tokens, teacher_map, **params)
  np.testing.assert_allclose(terms["hint"], np.mean((student_tokens - teacher_map.reshape(2, 16, 8)) ** 2),
                             rtol=1e-5)
  # A ViT student under a CNN teacher, with a regressor from the student's width to the map's channels.
  fitnets.check_features({**fitnets.DEFAULTS, "student_special_tokens": 1}, {"a": (2, 17, 8)},
                         {"b": (2, 4, 4, 32)}, "m")
  with pytest.raises(ConfigError, match=r"student feature a \(16, 8\) and teacher feature b \(5, 4, 8\)"):
    fitnets.check_features(fitnets.DEFAULTS, {"a": (2, 16, 8)}, {"b": (2, 5, 4, 8)}, "method")
  with pytest.raises(ConfigError, match=r"no regressor maps student feature a \(16, 8\) to teacher feature b"):
    fitnets.check_features(fitnets.DEFAULTS, {"a": (2, 16, 8)}, {"b": (2, 64)}, "method")


def test_fitnets_token_hint_trains_with_finite_gradients_and_none_into_the_teacher():
  rng = np.random.default_rng(3)
  student, teacher = jnp.asarray(rng.normal(size=(2, 5, 4))), jnp.asarray(rng.normal(size=(2, 4, 6)))
  params = {**fitnets.DEFAULTS, "student_special_tokens": 1, "ce_weight": 0.0}
  s_shapes, t_shapes = {"a": student.shape}, {"b": teacher.shape}
  connector = fitnets.make_connector(params, s_shapes, t_shapes, 0)
  variables = connector.init(jax.random.key(0), _outputs([student]), _outputs([teacher]), {}, True)

  @jax.jit
  def total(variables, student, teacher):
    student_out, teacher_out = _outputs([student]), _outputs([teacher])
    student_out["connector"] = connector.apply(variables, student_out, teacher_out, {}, True)
    return fitnets.loss(student_out, teacher_out, {"label": jnp.zeros(2, jnp.int32)}, **params)[0]

  grads = jax.grad(total, argnums=(0, 1, 2))(variables, student, teacher)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads[:2]))
  assert np.any(np.asarray(grads[1][:, 1:]) != 0) and np.all(np.asarray(grads[1][:, 0]) == 0)
  assert np.all(np.asarray(grads[2]) == 0)


@pytest.mark.parametrize("name", ["at", "nst"])
def test_at_and_nst_on_tokens_equal_the_same_values_as_row_major_maps(name):
  module = {"at": attention_transfer, "nst": nst}[name]
  only = {"at": {"at_weight": 1.0, "ce_weight": 0.0}, "nst": {"nst_weight": 1.0, "ce_weight": 0.0}}[name]
  rng = np.random.default_rng(4)
  student_map, teacher_map = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 5))
  student_tokens = student_map.reshape(2, 16, 3)
  # With a class token in front of the student's tokens, dropped by student_special_tokens.
  with_class_token = np.concatenate([rng.normal(size=(2, 1, 3)), student_tokens], axis=1)
  params = {**module.DEFAULTS, **only}
  module.check_features({**params, "student_special_tokens": 1}, {"a": with_class_token.shape},
                        {"b": teacher_map.shape}, "m")
  expected, _ = module.loss(_outputs([student_map]), _outputs([teacher_map]), {"label": jnp.zeros(2, jnp.int32)},
                            **params)
  for student, teacher, special in ((student_tokens, teacher_map, 0), (with_class_token, teacher_map, 1),
                                    (with_class_token, teacher_map.reshape(2, 16, 5), 1)):
    value, _ = module.loss(_outputs([student]), _outputs([teacher]), {"label": jnp.zeros(2, jnp.int32)},
                           **{**params, "student_special_tokens": special})
    np.testing.assert_allclose(value, expected, rtol=1e-5)
  with pytest.raises(ConfigError, match=r"17 and 16 tokens"):
    module.check_features(params, {"a": with_class_token.shape}, {"b": teacher_map.shape}, "m")


@pytest.mark.parametrize("module,name", [(fsp, "FSP"), (vid, "VID"), (ft, "FT"), (reviewkd, "ReviewKD")])
def test_methods_without_token_math_name_those_that_have_it(module, name):
  student, teacher = {"a": (2, 16, 8), "c": (2, 16, 8)}, {"b": (2, 16, 8), "d": (2, 16, 8)}
  if module is ft:
    student, teacher = {"a": (2, 16, 8)}, {"b": (2, 16, 8)}
  with pytest.raises(ConfigError, match=f"{name} needs .*tokens \\[B,N,C\\] \\(16, 8\\).*fitnets, at, nst, "
                                        "sp, cc, rkd, pkt, crd, ab"):
    module.check_features(module.DEFAULTS, student, teacher, "method")
  with pytest.raises(ConfigError, match="accepts token features"):
    ft.PARAPHRASER.check_features(ft.PARAPHRASER_DEFAULTS, {}, {"b": (2, 16, 8)}, "method")


def test_ab_takes_one_dimensional_maps():
  """[B, L, C] maps (ConvNet1D on MNIST-1D) are AB's own setting: the connector works per position."""
  ab.check_features(ab.DEFAULTS, {"a": (2, 16, 8)}, {"b": (2, 16, 12)}, "method")
  with pytest.raises(ConfigError, match="same height and width"):
    ab.check_features(ab.DEFAULTS, {"a": (2, 16, 8)}, {"b": (2, 20, 12)}, "method")
