"""CRD (contrastive, with a memory bank) and ReviewKD (attention-based fusion, HCL)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import config as config_lib
from kd import features
from kd import models
from kd import train
from kd.errors import ConfigError
from kd.methods import crd
from kd.methods import reviewkd

TEACHER = {"name": "cnn", "channels": (8, 16), "hidden": 32}
STUDENT = {"name": "cnn", "channels": (4,), "hidden": 16}
NUM_EXAMPLES = 16


def _key(seed):
  # XLA compiles threefry (the default) for seconds per shape on CPU; the counter-based "rbg"
  # generator compiles in a fraction of that, and nothing here depends on which generator it is.
  return jax.random.key(seed, impl="rbg")


def _module(model):
  return models.build_model(models.model_config(**model), 10)


def _step_setup(method_module, *, num_examples=NUM_EXAMPLES, optimizer=None, **overrides):
  """A student, a teacher, the method's connector and a jitted train step on one synthetic batch.

  Returns (state, teacher_variables, batch, step, teacher_gradient), where `teacher_gradient(state)`
  is the gradient of the method's loss (connector included) with respect to the teacher's variables
  when the teacher's outputs reach the method without the train step's stop_gradient.
  """
  params = {**method_module.DEFAULTS, **overrides}
  method_module.check(params, "method")
  example = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  student, teacher = _module(STUDENT), _module(TEACHER)
  s_taps, t_taps = features.tap_points(student, example), features.tap_points(teacher, example)
  s_paths = features.select(params["student_features"], list(s_taps), "s")
  t_paths = features.select(params["teacher_features"], list(t_taps), "t")
  s_shapes, t_shapes = {p: s_taps[p] for p in s_paths}, {p: t_taps[p] for p in t_paths}
  method_module.check_features(params, s_shapes, t_shapes, "method")
  connector = method_module.make_connector(params, s_shapes, t_shapes, num_examples)
  teacher_variables = models.init_variables(teacher, _key(1), jnp.zeros((1, 8, 8, 1)))
  optimizer_config = optimizer or config_lib.optimizer_config(learning_rate=3e-3)
  optimizer, schedule = train.make_optimizer(optimizer_config, 100)
  student_apply = models.make_apply(student, "image", s_paths)
  teacher_apply = models.make_apply(teacher, "image", t_paths)
  batch = {"image": np.random.default_rng(0).integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
           "label": np.arange(16, dtype=np.int32) % 10, "index": np.arange(16, dtype=np.int32)}
  state = train.init_train_state(_key(0), batch, teacher_variables, module=student,
                                 optimizer=optimizer, connector=connector, student_apply=student_apply,
                                 teacher_apply=teacher_apply)
  loss_fn = functools.partial(method_module.loss, **{**params, "kd_weight": 1.0})  # KD too, for the gradient.
  step = jax.jit(functools.partial(train.train_step, student_apply=student_apply,
                                   teacher_apply=teacher_apply,
                                   loss_fn=functools.partial(method_module.loss, **params),
                                   optimizer=optimizer, learning_rate=schedule, connector=connector))

  @jax.jit
  def teacher_gradient(state):
    def objective(teacher_variables):
      teacher_out = teacher_apply(teacher_variables, batch, train=False)  # No stop_gradient here.
      student_out = student_apply(train.student_variables(state), batch, train=False)
      variables = {"params": state.params["connector"], **state.model_state["connector"]}
      connector_out, _ = connector.apply(variables, student_out, teacher_out, batch, train=True,
                                         rngs={"dropout": _key(5)},
                                         mutable=list(state.model_state["connector"]))
      return loss_fn({**student_out, "connector": connector_out}, teacher_out, batch)[0]
    return jax.grad(objective)(teacher_variables)

  return state, teacher_variables, batch, step, teacher_gradient


def _assert_no_teacher_gradient(teacher_gradient, state):
  leaves = jax.tree.leaves(teacher_gradient(state))
  assert leaves and all(np.all(np.asarray(g) == 0) for g in leaves)


# CRD.


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy_crd(v_s, v_t, memory_s, memory_t, idx, temperature, n_data, z=(None, None)):
  """RepDistiller's ContrastMemory + ContrastLoss, written out in numpy (float64)."""
  out_v1 = np.exp(np.einsum("bkd,bd->bk", memory_t[idx], v_s) / temperature)  # Student anchor.
  out_v2 = np.exp(np.einsum("bkd,bd->bk", memory_s[idx], v_t) / temperature)  # Teacher anchor.
  z_v1 = out_v1.mean() * n_data if z[0] is None else z[0]
  z_v2 = out_v2.mean() * n_data if z[1] is None else z[1]

  def contrast_loss(x):
    bsz, m = x.shape[0], x.shape[1] - 1
    pn = 1 / n_data
    log_d1 = np.log(x[:, 0] / (x[:, 0] + m * pn + 1e-7))
    log_d0 = np.log(m * pn / (x[:, 1:] + m * pn + 1e-7))
    return -(log_d1.sum() + log_d0.sum()) / bsz

  return contrast_loss(out_v1 / z_v1) + contrast_loss(out_v2 / z_v2), (z_v1, z_v2)


def test_crd_nce_loss_matches_repdistiller_formula():
  rng = np.random.default_rng(0)
  batch, dim, n_data, k = 3, 4, 9, 5
  v_s, v_t = _normalize(rng.normal(size=(batch, dim))), _normalize(rng.normal(size=(batch, dim)))
  memory_s, memory_t = _normalize(rng.normal(size=(n_data, dim))), _normalize(rng.normal(size=(n_data, dim)))
  index = np.array([0, 4, 7])
  idx = np.concatenate([index[:, None], rng.integers(0, n_data, (batch, k))], axis=1)
  expected, (z_s, z_t) = _numpy_crd(v_s, v_t, memory_s, memory_t, idx, 0.5, n_data)

  @jax.jit
  def crd_loss(v_s, v_t, memory_s, memory_t, idx, z_s=None, z_t=None):
    p_s, p_t, z_s, z_t = crd.crd_probabilities(v_s, v_t, memory_s, memory_t, idx, temperature=0.5,
                                               num_examples=n_data, z_student=z_s, z_teacher=z_t)
    return jnp.mean(crd.nce_loss(p_s, n_data)) + jnp.mean(crd.nce_loss(p_t, n_data)), z_s, z_t

  arrays = [np.float32(a) for a in (v_s, v_t, memory_s, memory_t)]
  value, got_z_s, got_z_t = crd_loss(*arrays, idx)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose([got_z_s, got_z_t], [z_s, z_t], rtol=1e-5)
  # A fixed Z (kept after the first step) is used as given; <= 0 means "not set yet".
  fixed, _ = _numpy_crd(v_s, v_t, memory_s, memory_t, idx, 0.5, n_data, z=(2.0, 3.0))
  np.testing.assert_allclose(crd_loss(*arrays, idx, 2.0, 3.0)[0], fixed, rtol=1e-5)
  np.testing.assert_allclose(crd_loss(*arrays, idx, -1.0, -1.0)[0], expected, rtol=1e-5)


def test_crd_scores_are_the_same_dense_or_gathered(monkeypatch):
  """The dense [B, N] matmul path and the row-gather path give the same scores and anchor gradients."""
  keys = jax.random.split(jax.random.key(0), 3)
  anchor_BxD = jax.random.normal(keys[0], (4, 8))
  memory_NxD = jax.random.normal(keys[1], (50, 8))
  indices_BxK1 = jax.random.randint(keys[2], (4, 11), 0, 50)

  def total(anchor):
    return jnp.sum(jnp.log(crd.contrast_scores(anchor, memory_NxD, indices_BxK1, 0.5)))

  dense = crd.contrast_scores(anchor_BxD, memory_NxD, indices_BxK1, 0.5), jax.grad(total)(anchor_BxD)
  monkeypatch.setattr(crd, "_DENSE_SCORES_MAX_ELEMENTS", 0)
  gathered = crd.contrast_scores(anchor_BxD, memory_NxD, indices_BxK1, 0.5), jax.grad(total)(anchor_BxD)
  expected = np.exp(np.einsum("bkd,bd->bk", np.asarray(memory_NxD)[np.asarray(indices_BxK1)],
                              np.asarray(anchor_BxD)) / 0.5)
  for got in (dense[0], gathered[0]):
    np.testing.assert_allclose(got, expected, rtol=1e-4)
  np.testing.assert_allclose(dense[1], gathered[1], rtol=1e-4, atol=1e-5)


def test_crd_negatives_are_uniform_over_the_other_examples():
  index = jnp.arange(5, dtype=jnp.int32)
  negatives = np.asarray(crd.sample_negatives(_key(0), index, 4000, 5))
  assert negatives.shape == (5, 4000) and negatives.min() >= 0 and negatives.max() <= 4
  for row in range(5):
    assert not np.any(negatives[row] == row)
    counts = np.bincount(negatives[row], minlength=5) / 4000
    np.testing.assert_allclose(np.delete(counts, row), 0.25, atol=0.03)


def _crd_connector_inputs(batch_size=4, num_examples=10):
  rng = np.random.default_rng(1)
  student_out = {"features": {"pool": jnp.asarray(rng.normal(size=(batch_size, 6)), jnp.float32)},
                 "logits": jnp.zeros((batch_size, 3))}
  teacher_out = {"features": {"pool": jnp.asarray(rng.normal(size=(batch_size, 2, 2, 3)), jnp.float32)},
                 "logits": jnp.zeros((batch_size, 3))}
  batch = {"index": jnp.array([7, 2, 9, 0][:batch_size], jnp.int32),
           "label": jnp.zeros(batch_size, jnp.int32)}
  connector = crd.make_connector({**crd.DEFAULTS, "feat_dim": 5, "nce_k": 100}, {}, {}, num_examples)
  variables = connector.init({"params": _key(0)}, student_out, teacher_out, batch, train=False)
  return connector, variables, student_out, teacher_out, batch


def test_crd_memory_starts_uniform_and_moves_with_momentum_at_the_batch_indices():
  connector, variables, student_out, teacher_out, batch = _crd_connector_inputs()
  memory = variables["memory"]
  stdv = 1 / np.sqrt(5 / 3)
  assert memory["student"].shape == (10, 5) and memory["teacher"].shape == (10, 5)
  assert np.abs(memory["student"]).max() <= stdv and np.abs(memory["student"]).max() > 0.5 * stdv
  assert float(memory["z_student"]) == -1.0
  out, updated = connector.apply(variables, student_out, teacher_out, batch, train=True,
                                 rngs={"dropout": _key(3)}, mutable=["memory"])
  assert out["student_anchor_probs"].shape == (4, 10)  # nce_k=100 is clipped to N - 1 = 9.
  params = variables["params"]

  def embed(name, feature):
    feature = np.asarray(feature, np.float64).reshape(feature.shape[0], -1)
    return _normalize(feature @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"]))

  index = np.asarray(batch["index"])
  for side, feature in (("student", student_out["features"]["pool"]),
                        ("teacher", teacher_out["features"]["pool"])):
    old, new = np.asarray(memory[side]), np.asarray(updated["memory"][side])
    expected = old.copy()
    expected[index] = _normalize(0.5 * old[index] + 0.5 * embed(f"embed_{side}", feature))
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(new[index], axis=1), 1.0, rtol=1e-5)
    others = np.setdiff1d(np.arange(10), index)
    np.testing.assert_array_equal(new[others], old[others])
  # Z is set on the first training step, then kept.
  z_student = float(updated["memory"]["z_student"])
  assert z_student > 0
  _, again = connector.apply({**variables, **updated}, student_out, teacher_out, batch, train=True,
                             rngs={"dropout": _key(4)}, mutable=["memory"])
  assert float(again["memory"]["z_student"]) == z_student


def test_crd_eval_mode_leaves_the_memory_unchanged():
  connector, variables, student_out, teacher_out, batch = _crd_connector_inputs()
  # Without a "dropout" rng (as an evaluation loop calls it), the negatives come from a fixed key.
  out, after = connector.apply(variables, student_out, teacher_out, batch, train=False, mutable=["memory"])
  for name in ("student", "teacher", "z_student", "z_teacher"):
    np.testing.assert_array_equal(after["memory"][name], variables["memory"][name])
  assert np.all(np.isfinite(out["student_anchor_nce"]))


def test_crd_trains_embeddings_keeps_memory_in_the_state_and_spares_the_teacher():
  # N = 64 > B = 16, so most negatives are rows the batch does not move, as in real training.
  state, teacher_variables, batch, step, teacher_gradient = _step_setup(
      crd, num_examples=64, optimizer=config_lib.optimizer_config(learning_rate=1e-3, schedule="constant"))
  assert set(state.params["connector"]) == {"embed_student", "embed_teacher"}
  assert state.params["connector"]["embed_student"]["kernel"].shape == (16, 128)
  assert state.model_state["connector"]["memory"]["student"].shape == (64, 128)
  memory_before = state.model_state["connector"]["memory"]["teacher"]
  values = []
  for _ in range(40):
    state, metrics = step(state, teacher_variables, batch)
    values.append(float(metrics["crd"]))
  assert np.all(np.isfinite(values)) and np.isfinite(float(metrics["loss"]))
  # Step 1 scores against the random initial memory, a different objective; the negatives are
  # random at every step, so compare averages.
  assert np.mean(values[-10:]) < 0.85 * np.mean(values[1:11]), values
  assert not np.array_equal(memory_before, state.model_state["connector"]["memory"]["teacher"])
  assert float(state.model_state["connector"]["memory"]["z_teacher"]) > 0
  assert set(train.student_variables(state)) == {"params", "batch_stats"}
  _assert_no_teacher_gradient(teacher_gradient, state)


def test_crd_config_errors():
  with pytest.raises(ConfigError, match="one embedding of each network"):
    crd.check({**crd.DEFAULTS, "student_features": ("conv0", "hidden")}, "m")
  with pytest.raises(ConfigError, match="nce_momentum"):
    crd.check({**crd.DEFAULTS, "nce_momentum": 1.0}, "m")
  with pytest.raises(ConfigError, match="use exact paths"):
    crd.check_features(crd.DEFAULTS, {"a": (2, 3), "b": (2, 3)}, {"c": (2, 3)}, "m")


# ReviewKD.


def _numpy_adaptive_pool(x, size):
  """PyTorch's adaptive_avg_pool2d on NHWC, bin by bin."""
  _, height, width, _ = x.shape
  out = np.zeros((x.shape[0], size, size, x.shape[3]))
  for i in range(size):
    for j in range(size):
      h0, h1 = int(np.floor(i * height / size)), int(np.ceil((i + 1) * height / size))
      w0, w1 = int(np.floor(j * width / size)), int(np.ceil((j + 1) * width / size))
      out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


def _numpy_hcl(fstudent, fteacher):
  """The authors' `hcl`, in numpy."""
  loss_all = 0.0
  for fs, ft in zip(fstudent, fteacher):
    h = fs.shape[1]
    loss, cnt, tot = np.mean((fs - ft) ** 2), 1.0, 1.0
    for level in (4, 2, 1):
      if level >= h:
        continue
      cnt /= 2.0
      loss += np.mean((_numpy_adaptive_pool(fs, level) - _numpy_adaptive_pool(ft, level)) ** 2) * cnt
      tot += cnt
    loss_all += loss / tot
  return loss_all


def test_hcl_matches_the_authors_formula():
  rng = np.random.default_rng(0)
  shapes = [(2, 8, 8, 3), (2, 6, 6, 2), (2, 3, 3, 4), (2, 1, 1, 5)]  # 6 -> 4 has overlapping bins.
  fs = [rng.normal(size=s) for s in shapes]
  ft = [rng.normal(size=s) for s in shapes]
  hcl = jax.jit(reviewkd.hcl)
  fs32, ft32 = [np.float32(a) for a in fs], [np.float32(a) for a in ft]
  np.testing.assert_allclose(hcl(fs32, ft32), _numpy_hcl(fs, ft), rtol=1e-5)
  np.testing.assert_allclose(hcl(fs32, fs32), 0.0, atol=1e-12)
  # The pooled levels alone: the 6x6 pair with equal means everywhere but one 2x2 block.
  f = np.zeros((1, 6, 6, 1))
  t = f.copy()
  t[0, :3, :3] = 1.0
  np.testing.assert_allclose(reviewkd.hcl([np.float32(f)], [np.float32(t)]), _numpy_hcl([f], [t]), rtol=1e-5)


def test_resize_nearest_follows_pytorch():
  x = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1)
  np.testing.assert_array_equal(reviewkd.resize_nearest(x, (6, 6)), x.repeat(2, axis=1).repeat(2, axis=2))
  # Downsampling 3 -> 2 reads rows and columns floor(o * 3 / 2) = 0, 1.
  np.testing.assert_array_equal(reviewkd.resize_nearest(x, (2, 2)), x[:, [0, 1]][:, :, [0, 1]])


def test_review_fusion_shapes_and_zero_loss_on_equal_features():
  rng = np.random.default_rng(0)
  student_features = {"a": rng.normal(size=(2, 8, 8, 4)), "b": rng.normal(size=(2, 4, 4, 8)),
                      "pool": rng.normal(size=(2, 8))}
  teacher_shapes = {"a": (2, 16, 16, 6), "b": (2, 4, 4, 12), "pool": (2, 10)}
  reviewkd.check_features(reviewkd.DEFAULTS, {k: v.shape for k, v in student_features.items()},
                          teacher_shapes, "m")
  connector = reviewkd.make_connector(reviewkd.DEFAULTS, {}, teacher_shapes, 16)
  student_out = {"features": {k: np.float32(v) for k, v in student_features.items()},
                 "logits": np.zeros((2, 10))}
  variables = jax.jit(functools.partial(connector.init, train=False))(_key(0), student_out, None, {})
  out, _ = jax.jit(functools.partial(connector.apply, train=True, mutable=["batch_stats"]))(
      variables, student_out, None, {})
  assert [f.shape for f in out["fused"]] == [(2, 16, 16, 6), (2, 4, 4, 12), (2, 1, 1, 10)]
  params = variables["params"]
  assert "att_conv" not in params["abf2"] and params["abf1"]["att_conv"]["kernel"].shape == (1, 1, 16, 2)
  assert params["abf0"]["conv1"]["kernel"].shape == (1, 1, 4, 8)  # mid = min(512, deepest channels = 8).
  assert params["abf0"]["conv2"]["kernel"].shape == (3, 3, 8, 6)
  # When the fused features equal the teacher's, HCL is zero and the loss is the CE alone.
  fused = out["fused"]
  teacher_out = {"features": {"a": fused[0], "b": fused[1], "pool": fused[2].reshape(2, 10)},
                 "logits": np.zeros((2, 10))}
  labels = {"label": np.zeros(2, np.int32)}
  total, terms = jax.jit(functools.partial(reviewkd.loss, **reviewkd.DEFAULTS))(
      {**student_out, "connector": out}, teacher_out, labels)
  np.testing.assert_allclose(terms["hcl"], 0.0, atol=1e-12)
  np.testing.assert_allclose(total, terms["ce"], rtol=1e-6)


@pytest.mark.parametrize("overrides", [{}, {"student_features": ("conv0", "hidden"),
                                            "teacher_features": ("conv0", "conv1")}],
                         ids=["one-stage", "two-stages"])
def test_reviewkd_trains_and_spares_the_teacher(overrides):
  state, teacher_variables, batch, step, teacher_gradient = _step_setup(reviewkd, **overrides)
  assert "batch_stats" in state.model_state["connector"]
  values = []
  for _ in range(30):
    state, metrics = step(state, teacher_variables, batch)
    values.append(float(metrics["hcl"]))
  assert values[-1] < 0.7 * values[0], values
  _assert_no_teacher_gradient(teacher_gradient, state)


def test_reviewkd_config_errors():
  with pytest.raises(ConfigError, match="pair up one to one"):
    reviewkd.check({**reviewkd.DEFAULTS, "teacher_features": ("conv0", "conv1")}, "m")
  with pytest.raises(ConfigError, match="pick convolutional stage outputs"):
    reviewkd.check_features(reviewkd.DEFAULTS, {"a": (2, 3, 4, 5, 6)}, {"b": (2, 3, 4, 5, 6)}, "m")
  with pytest.raises(ConfigError, match=r"ReviewKD needs .*tokens \[B,N,C\]"):
    reviewkd.check_features(reviewkd.DEFAULTS, {"a": (2, 3, 4)}, {"b": (2, 3, 4)}, "m")
