"""Hand-computed guards on semantics that a plausible one-line change would silently break.

ECE with its default 15 bins, the direction of the report's KL and of the optional KD term, a fresh
dropout key every step, the "skip" policy for non-finite steps, and, for every method that reads a
teacher, that its loss sends no gradient into the teacher's outputs.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import method_harness
from kd import config as config_lib
from kd import evaluation
from kd import losses
from kd import methods
from kd import models
from kd import report
from kd import train
from kd.methods import fitnets

# Two 3-class distributions whose KL differs by direction:
#   KL(P || Q) = 0.7 ln 7 + 0.2 ln(2/3) + 0.1 ln(1/6) = 1.10187
#   KL(Q || P) = 0.1 ln(1/7) + 0.3 ln(3/2) + 0.6 ln 6 = 1.00211
P = np.array([0.7, 0.2, 0.1])
Q = np.array([0.1, 0.3, 0.6])
KL_P_Q = 0.7 * np.log(7) + 0.2 * np.log(2 / 3) + 0.1 * np.log(1 / 6)
KL_Q_P = 0.1 * np.log(1 / 7) + 0.3 * np.log(3 / 2) + 0.6 * np.log(6)


def test_the_two_kl_directions_of_the_fixture_differ():
  np.testing.assert_allclose(KL_P_Q, 1.101868, atol=1e-6)
  np.testing.assert_allclose(KL_Q_P, 1.002105, atol=1e-6)


# Calibration.


def test_expected_calibration_error_uses_fifteen_equal_width_bins():
  # Two classes with logits (log c, log(1 - c)): confidence c on class 0, the prediction.
  confidence = np.array([0.55, 0.58, 0.70, 0.72, 0.90, 0.92, 0.98, 0.99])
  correct = np.array([1, 0, 1, 1, 1, 0, 1, 1], bool)
  logits = np.stack([np.log(confidence), np.log(1 - confidence)], -1)
  labels = np.where(correct, 0, 1)
  # 15 bins of width 1/15: {0.55, 0.58} in bin 8, {0.70, 0.72} in 10, {0.90, 0.92} in 13,
  # {0.98, 0.99} in 14; each holds 2/8 of the examples.
  expected = (2 / 8 * abs(0.5 - 0.565) + 2 / 8 * abs(1.0 - 0.71) + 2 / 8 * abs(0.5 - 0.91)
              + 2 / 8 * abs(1.0 - 0.985))
  np.testing.assert_allclose(expected, 0.195, atol=1e-12)
  np.testing.assert_allclose(evaluation.expected_calibration_error(logits, labels), 0.195, rtol=1e-9)
  # One bin would give |6/8 - 6.34/8| = 0.0425; each extra bin can only separate the gaps further.
  np.testing.assert_allclose(evaluation.expected_calibration_error(logits, labels, num_bins=1), 0.0425,
                             rtol=1e-9)


# The report's KL.


def test_mean_kl_is_kl_teacher_to_student():
  student_logits, teacher_logits = np.log(Q)[None], np.log(P)[None]
  np.testing.assert_allclose(evaluation.mean_kl(student_logits, teacher_logits), KL_P_Q, rtol=1e-9)
  # A batch: the mean over examples, the second one at KL 0.
  both = evaluation.mean_kl(np.log(np.stack([Q, P])), np.log(np.stack([P, P])))
  np.testing.assert_allclose(both, KL_P_Q / 2, rtol=1e-9)


def test_report_card_kl_is_kl_teacher_to_student(monkeypatch):
  role_logits = {"teacher": np.log(P)[None], "baseline": np.log(P)[None], "student": np.log(Q)[None]}
  measured = {"accuracy": 1.0, "params": 10, "bytes": 40, "latency_ms_b1": 1.0, "latency_ms_b256": 2.0,
              "ece": 0.0}
  monkeypatch.setattr(report, "role_model", lambda config, role, run_dir: role)
  monkeypatch.setattr(report, "_measure_model",
                      lambda role, arrays, mesh, batch_size: (dict(measured), role_logits[role]))
  config = types.SimpleNamespace(data=types.SimpleNamespace(eval_batch_size=8),
                                 report={role: role for role in role_logits}, stages={})
  card = report.build_run(config, "unused", {}, None)
  np.testing.assert_allclose(card["kl"], KL_P_Q, rtol=1e-9)


# The optional KD term of CRD, FitNets and ReviewKD.


def test_fitnets_kd_term_is_t_squared_kl_teacher_to_student():
  temperature = 2.0
  # Logits T * log p: softmax(logits / T) = p. Row 2 has equal distributions (KL 0).
  student_logits = jnp.asarray(temperature * np.log(np.stack([Q, P])), jnp.float32)
  teacher_logits = jnp.asarray(temperature * np.log(np.stack([P, P])), jnp.float32)
  feature = jnp.zeros((2, 3))
  params = {**fitnets.DEFAULTS, "regressor": False, "hint_weight": 0.0, "ce_weight": 0.0, "kd_weight": 1.0,
            "temperature": temperature}

  @jax.jit
  def run(student_logits, teacher_logits):
    student_out = {"logits": student_logits, "features": {"a": feature}}
    teacher_out = {"logits": teacher_logits, "features": {"a": feature}}
    return fitnets.loss(student_out, teacher_out, {"label": jnp.zeros(2, jnp.int32)}, **params)

  total, terms = run(student_logits, teacher_logits)
  expected = temperature**2 * KL_P_Q / 2  # 2.20374; the other direction would be 2.00421.
  np.testing.assert_allclose(terms["kd"], expected, rtol=1e-5)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  # kd_weight scales the term into the total.
  total, _ = jax.jit(lambda s, t: fitnets.loss(
      {"logits": s, "features": {"a": feature}}, {"logits": t, "features": {"a": feature}},
      {"label": jnp.zeros(2, jnp.int32)}, **{**params, "kd_weight": 0.5}))(student_logits, teacher_logits)
  np.testing.assert_allclose(total, expected / 2, rtol=1e-5)


# The train step.


def _supervised_step(model, **step_options):
  student = models.build_model(model, 10)
  optimizer, schedule = train.make_optimizer(
      config_lib.optimizer_config(learning_rate=1e-2, schedule="constant"), 100)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 255, (8, 8, 8, 1), dtype=np.uint8),
           "label": rng.integers(0, 10, (8,)).astype(np.int32)}
  state = train.init_train_state(jax.random.PRNGKey(0), batch, module=student, optimizer=optimizer)
  step = jax.jit(functools.partial(
      train.train_step, student_apply=models.make_apply(student), teacher_apply=None,
      loss_fn=methods.build_loss(methods.method_config("supervised")), optimizer=optimizer,
      learning_rate=schedule, **step_options))
  return state, batch, step


def test_each_step_draws_a_new_dropout_mask():
  state, batch, step = _supervised_step(models.model_config("mlp", hidden=(16,), dropout=0.5))
  # Same parameters, same batch, same optimizer state; only the step counter differs. The loss and
  # gradient are computed before the update, so they differ only through the dropout mask.
  _, at_step_0 = step(state, {}, batch)
  _, at_step_0_again = step(state, {}, batch)
  _, at_step_1 = step(state.replace(step=jnp.ones((), jnp.int32)), {}, batch)
  assert float(at_step_0["loss"]) == float(at_step_0_again["loss"])  # Deterministic given the step.
  assert float(at_step_0["loss"]) != float(at_step_1["loss"])
  assert float(at_step_0["grad_norm"]) != float(at_step_1["grad_norm"])
  # Two consecutive steps of a run also use different masks: replaying step 2 with step 1's
  # counter gives a different loss.
  state_1, _ = step(state, {}, batch)
  _, second = step(state_1, {}, batch)
  _, second_with_old_counter = step(state_1.replace(step=jnp.zeros((), jnp.int32)), {}, batch)
  assert float(second["loss"]) != float(second_with_old_counter["loss"])


def test_without_dropout_the_step_counter_does_not_change_the_loss():
  state, batch, step = _supervised_step(models.model_config("mlp", hidden=(16,), dropout=0.0))
  _, at_step_0 = step(state, {}, batch)
  _, at_step_1 = step(state.replace(step=jnp.ones((), jnp.int32)), {}, batch)
  assert float(at_step_0["loss"]) == float(at_step_1["loss"])


def _params_after_each_step(policy, num_steps=4):
  state, batch, step = _supervised_step(method_harness.STUDENT, nonfinite_policy=policy,
                                        inject_nonfinite_at_step=2)
  params, metrics = [jax.tree.map(np.asarray, state.params)], []
  for _ in range(num_steps):
    state, step_metrics = step(state, {}, batch)
    params.append(jax.tree.map(np.asarray, state.params))
    metrics.append({key: float(value) for key, value in step_metrics.items()})
  return params, metrics


def _changed(before, after):
  return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_skip_policy_applies_the_finite_updates_after_a_nonfinite_step():
  params, metrics = _params_after_each_step("skip")
  assert [m["nonfinite"] for m in metrics] == [0.0, 1.0, 0.0, 0.0]
  assert [m["skipped_updates"] for m in metrics] == [0.0, 1.0, 1.0, 1.0]
  assert _changed(params[0], params[1])  # Step 1 updates.
  assert not _changed(params[1], params[2])  # Step 2 (NaN) is skipped.
  assert _changed(params[2], params[3]) and _changed(params[3], params[4])  # Steps 3 and 4 update.
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params[-1]))


# No method's loss sends a gradient into the teacher's outputs.

# Feature patterns for the harness's small CNNs where a method's defaults name a zoo model's taps.
CNN_FEATURES = {
    "sp": {"student_features": ("hidden",), "teacher_features": ("hidden",)},
    "cc": {"student_features": ("hidden",), "teacher_features": ("hidden",)},
    "rkd": {"student_features": ("hidden",), "teacher_features": ("hidden",)},
    "pkt": {"student_features": ("hidden",), "teacher_features": ("hidden",)},
    "ft": {"student_features": ("conv0",), "teacher_features": ("conv1",)},
    # An ensemble's members are its `member_<i>` logits; a CNN's own logits (its head) stand in for one.
    "multi_teacher_kd": {"teacher_features": ("head",)},
}
# FSP compares C x C matrices of consecutive maps, so its student needs the teacher's conv0 width.
CNN_STUDENTS = {"fsp": {**method_harness.STUDENT, "channels": (8,)}}
# Variants that read more of the teacher than the defaults do (the KD term is `common.kd_term`, shared
# with CRD and ReviewKD).
VARIANTS = {
    "fitnets": [{"kd_weight": 1.0}],
    "cc": [{"variant": "repdistiller"}],
}
# Methods whose outputs the harness's CNNs cannot produce (a distillation head, tokens): hand-built.
HAND_BUILT = ("deit", "lm_kd", "lm_seqkd", "lm_gkd", "lm_distilbert", "lm_hidden", "lm_minilm", "lm_tinybert",
              "lm_uld", "lm_alm")
TEACHER_METHODS = sorted(name for name, module in methods.METHODS.items() if module.NEEDS_TEACHER)
CNN_CASES = [(name, {**CNN_FEATURES.get(name, {}), **variant})
             for name in TEACHER_METHODS if name not in HAND_BUILT
             for variant in [{}] + VARIANTS.get(name, [])]


def test_every_method_that_reads_a_teacher_is_covered():
  assert set(TEACHER_METHODS) == {name for name, _ in CNN_CASES} | set(HAND_BUILT)


def _assert_all_zero(grads, name):
  leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert leaves, name
  for path, leaf in leaves:
    assert np.all(np.asarray(leaf) == 0), (name, jax.tree_util.keystr(path), float(np.abs(leaf).max()))


def _gradient_is_nonzero(grads):
  return sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0


@functools.lru_cache(maxsize=None)
def _cnn_variables(model_items, seed):
  """Variables of a harness CNN: normal parameters, unit BatchNorm statistics.

  Drawn with NumPy into the shapes `init` would give: the values only need to be generic, and
  this skips compiling the initialisers.
  """
  module = method_harness.module(dict(model_items))
  shapes = jax.eval_shape(functools.partial(models.init_variables, module), jax.random.PRNGKey(seed),
                          jnp.zeros((1, 8, 8, 1)))
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      return jnp.full(shape.shape, 1.0 if "var" in name else 0.0, shape.dtype)
    return jnp.asarray(0.5 * rng.normal(size=shape.shape), shape.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _cnn_outputs(model, paths, seed, batch):
  """The outputs (eval mode) of a harness CNN initialised from `seed`, with the features at `paths`."""
  variables = _cnn_variables(tuple(sorted(model.items())), seed)
  return models.make_apply(method_harness.module(model), "image", list(paths))(variables, batch, train=False)


@pytest.mark.parametrize("name,params", CNN_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items() if 'features' not in k)}"
                              for n, p in CNN_CASES])
def test_method_loss_sends_no_gradient_to_the_teacher_outputs(name, params):
  method = methods.method_config(name, **params)
  batch_size = 16
  student_model = CNN_STUDENTS.get(name, method_harness.STUDENT)
  s_paths, t_paths, connector = method_harness.resolve_features(
      method, method_harness.module(student_model), method_harness.module(method_harness.TEACHER), batch_size)
  batch = {"image": np.random.default_rng(0).integers(0, 255, (batch_size, 8, 8, 1), dtype=np.uint8),
           "label": np.arange(batch_size, dtype=np.int32) % 10,
           "index": np.arange(batch_size, dtype=np.int32)}
  student_out = _cnn_outputs(student_model, tuple(s_paths), 0, batch)
  teacher_out = _cnn_outputs(method_harness.TEACHER, tuple(t_paths), 1, batch)
  connector_variables = {}
  if connector is not None:
    connector_variables = dict(connector.init({"params": jax.random.PRNGKey(2), "dropout": jax.random.PRNGKey(2)},
                                              student_out, teacher_out, batch, train=False))
  loss_fn = methods.build_loss(method)

  def objective(trainable, teacher_out):
    # As in kd.train.train_step: the connector (in training mode, its state updated) then the loss.
    student_out = trainable["student_out"]
    if connector is not None:
      variables = {**connector_variables, "params": trainable["connector"]}
      mutable = [key for key in connector_variables if key != "params"]
      outputs = connector.apply(variables, student_out, teacher_out, batch, train=True,
                                rngs={"dropout": jax.random.PRNGKey(3)}, mutable=mutable or False)
      student_out = {**student_out, "connector": outputs[0] if mutable else outputs}
    return loss_fn(student_out, teacher_out, batch)[0]

  trainable = {"student_out": student_out, "connector": connector_variables.get("params", {})}
  value, (trainable_grads, teacher_grads) = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))(
      trainable, teacher_out)
  assert np.isfinite(float(value))
  _assert_all_zero(teacher_grads, name)
  # The loss does train something: the student (FT's paraphraser stage: only its connector).
  assert _gradient_is_nonzero(trainable_grads), name


def _hand_built_outputs(name, rng):
  """(student_out, teacher_out, batch) of the shapes `name`'s loss reads."""
  if name == "deit":
    student_out = {"logits": rng.normal(size=(4, 5)), "features": {"head_dist": rng.normal(size=(4, 5))}}
    teacher_out = {"logits": rng.normal(size=(4, 5))}
    batch = {"label": np.array([0, 1, 2, 3], np.int32)}
  else:  # Language models: logits [B, L, V] and hidden states [B, L, D] over tokens with padding.
    student_out = {"logits": rng.normal(size=(2, 5, 7)), "features": {"final_norm": rng.normal(size=(2, 5, 3))}}
    teacher_out = {"logits": rng.normal(size=(2, 5, 7)), "features": {"final_norm": rng.normal(size=(2, 5, 3))}}
    if name == "lm_tinybert":  # An embedding, a hidden state and kd's fused q/k/v [B, L, 3, H, D] per side.
      for out in (student_out, teacher_out):
        out["features"] = {"embed": rng.normal(size=(2, 5, 3)), "layers_0": rng.normal(size=(2, 5, 3)),
                           "layers_0/attention/qkv": rng.normal(size=(2, 5, 3, 1, 2))}
    batch = {"tokens": np.array([[1, 4, 2, 6, 3], [5, 0, 2, 0, 0]], np.int32),
             "mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)}
    if name in ("lm_uld", "lm_alm"):  # The teacher reads its own tokenization: another length and vocabulary.
      teacher_out = {"logits": rng.normal(size=(2, 6, 9))}
      batch = {**batch, "teacher_tokens": np.zeros((2, 6), np.int32),
               "teacher_mask": np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)}
    if name == "lm_alm":  # Aligned chunks: each token's chunk (-1: none), as text_files stores them.
      batch = {**batch, "chunk_ids": np.array([[-1, 0, 1, 1, 2], [-1, 0, 1, -1, -1]], np.int32),
               "teacher_chunk_ids": np.array([[-1, 0, 0, 1, 2, 2], [-1, 0, 1, 1, -1, -1]], np.int32)}
  as_f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  return as_f32(student_out), as_f32(teacher_out), batch


HAND_BUILT_CASES = (
    [("deit", {"distillation": "hard"}), ("deit", {"distillation": "soft"})]
    + [("lm_kd", {"divergence": d}) for d in sorted(losses.TOKEN_DIVERGENCES)]
    + [("lm_seqkd", {"kd_weight": 1.0}), ("lm_gkd", {}), ("lm_distilbert", {}), ("lm_uld", {}), ("lm_alm", {})]
    # final_norm [2, 5, 3] read as hidden states, and by MiniLM as a fused q | k | v of width 1 each.
    + [("lm_hidden", {"student_features": ("final_norm",), "teacher_features": ("final_norm",)}),
       ("lm_minilm", {"student_features": ("final_norm",), "teacher_features": ("final_norm",),
                      "relation_heads": 1}),
       ("lm_tinybert", {"student_features": ("embed", "layers_0", "layers_0/attention/qkv"),
                        "teacher_features": ("embed", "layers_0", "layers_0/attention/qkv"),
                        "student_rope_theta": 0.0, "teacher_rope_theta": 0.0})])


def test_hand_built_cases_cover_the_hand_built_methods():
  assert {name for name, _ in HAND_BUILT_CASES} == set(HAND_BUILT)


@pytest.mark.parametrize("name,params", HAND_BUILT_CASES,
                         ids=[f"{n}-{'-'.join(str(v) for k, v in p.items() if 'features' not in k)}"
                              for n, p in HAND_BUILT_CASES])
def test_hand_built_method_loss_sends_no_gradient_to_the_teacher_outputs(name, params):
  # The in-step batch preparation of lm_seqkd and lm_gkd (generation) runs before the loss, on
  # stopped variables; this checks the loss on the batch it is given.
  student_out, teacher_out, batch = _hand_built_outputs(name, np.random.default_rng(0))
  loss_fn = methods.build_loss(methods.method_config(name, **params))
  objective = lambda s, t: loss_fn(s, t, batch)[0]
  student_grads, teacher_grads = jax.jit(jax.grad(objective, argnums=(0, 1)))(student_out, teacher_out)
  _assert_all_zero(teacher_grads, name)
  assert _gradient_is_nonzero(student_grads), name
