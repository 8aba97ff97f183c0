"""Chunked divergences (kd.lm.chunked): the unchunked loss and gradient, from hidden states and heads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import config as config_lib
from kd import features
from kd import losses
from kd import methods
from kd import models
from kd import train
from kd.errors import ConfigError
from kd.lm import chunked
from kd.methods import lm_common
from kd.methods import lm_gkd
from kd.methods import lm_kd

DIVERGENCES = sorted(losses.TOKEN_DIVERGENCES)
B, L, D, E, V = 2, 8, 6, 5, 11  # N = B (L - 1) = 14 predicting positions.


def _inputs(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  arrays = {"student_hidden": rng.normal(size=(B, L, D)), "student_kernel": rng.normal(size=(D, V)),
            "student_bias": rng.normal(size=(V,)), "teacher_hidden": 2 * rng.normal(size=(B, L, E)),
            "teacher_embedding": rng.normal(size=(V, E))}  # The teacher's head is tied: [V, E].
  mask = np.ones((B, L), bool)
  mask[1, 5:] = False  # Padding: 4 + 7 = 11 real targets.
  batch = {"tokens": rng.integers(0, V, (B, L)).astype(np.int32), "mask": mask}
  return {k: jnp.asarray(v, dtype) for k, v in arrays.items()}, batch


def _params(**overrides):
  return {**lm_common.DIVERGENCE_DEFAULTS, "beta": 0.3, "alpha": 0.2, "temperature": 2.0, "ce_weight": 0.5,
          **overrides}


def _unchunked_loss(arrays, batch, **params):
  student_logits = arrays["student_hidden"] @ arrays["student_kernel"] + arrays["student_bias"]
  teacher_logits = arrays["teacher_hidden"] @ arrays["teacher_embedding"].T
  return lm_common.distillation_loss({"logits": student_logits}, {"logits": teacher_logits}, batch, **params)


def _outputs(arrays):
  """(student_out, teacher_out) as the apply functions return them with the chunked loss's features."""
  student_out = {"features": {"final_norm": arrays["student_hidden"], "head_kernel": arrays["student_kernel"],
                              "head_bias": arrays["student_bias"]}}
  teacher_out = {"features": {"final_norm": arrays["teacher_hidden"],
                              "head_embedding": arrays["teacher_embedding"]}}
  return student_out, teacher_out


def _chunked_loss(arrays, batch, **params):
  return lm_common.distillation_loss(*_outputs(arrays), batch, **params)


# One compiled program per test (their compilation, not their arithmetic, is what takes time here).
_JIT = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def test_every_divergence_equals_the_unchunked_loss_metrics_and_gradient():
  arrays, batch = _inputs()

  @_JIT
  def every(arrays):
    grad = lambda fn, **p: jax.value_and_grad(lambda a: fn(a, batch, **_params(**p)), has_aux=True)(arrays)
    return {divergence: (grad(_unchunked_loss, divergence=divergence),
                         grad(_chunked_loss, divergence=divergence, chunk_size=4))  # 4 does not divide 14.
            for divergence in DIVERGENCES}

  for divergence, (((full, full_metrics), full_grads), ((loss, metrics), grads)) in every(arrays).items():
    np.testing.assert_allclose(loss, full, rtol=1e-5, err_msg=divergence)
    assert set(metrics) == set(full_metrics) == {"ce", "kd", "tokens", "token_accuracy", "teacher_agreement"}
    for key in full_metrics:
      np.testing.assert_allclose(metrics[key], full_metrics[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert float(metrics["tokens"]) == 11 and float(metrics["kd"]) > 0
    for key in ("student_hidden", "student_kernel", "student_bias"):
      assert float(jnp.max(jnp.abs(full_grads[key]))) > 1e-3
      np.testing.assert_allclose(grads[key], full_grads[key], rtol=1e-5, atol=1e-6, err_msg=f"{divergence} {key}")
    for key in ("teacher_hidden", "teacher_embedding"):  # No gradient reaches the teacher.
      np.testing.assert_array_equal(grads[key], np.zeros_like(grads[key]))
    # The last position predicts nothing: its hidden state gets no gradient.
    np.testing.assert_array_equal(grads["student_hidden"][:, -1], np.zeros((B, D)))


def test_any_chunk_size_gives_the_same_loss_and_padding_positions_count_for_nothing():
  arrays, batch = _inputs(seed=1)
  changed = dict(arrays, student_hidden=arrays["student_hidden"].at[1, 5:].set(100.0),
                 teacher_hidden=arrays["teacher_hidden"].at[1, 5:].set(-50.0))
  changed_batch = {**batch, "tokens": batch["tokens"].copy()}
  changed_batch["tokens"][1, 6:] = 0
  loss = lambda a, b, chunk_size: _chunked_loss(a, b, **_params(chunk_size=chunk_size))[0]

  @_JIT
  def figures(arrays, changed):
    return {"full": _unchunked_loss(arrays, batch, **_params())[0],
            # 3 does not divide the 14 positions, 7 does, 100 is one chunk.
            "chunked": [loss(arrays, batch, chunk_size) for chunk_size in (3, 7, 100)],
            "changed": loss(changed, changed_batch, 3),
            "gkd": lm_gkd.loss(*_outputs(arrays), batch, **{**lm_gkd.DEFAULTS, **_params(chunk_size=3)})[0],
            "grad": jax.grad(loss)(arrays, batch, 3)["student_kernel"],
            "changed_grad": jax.grad(loss)(changed, changed_batch, 3)["student_kernel"]}

  out = figures(arrays, changed)
  np.testing.assert_allclose(out["chunked"], [out["full"]] * 3, rtol=1e-5)
  # Positions without a real target: their hidden states and tokens change nothing.
  np.testing.assert_allclose(out["changed"], out["full"], rtol=1e-5)
  np.testing.assert_allclose(out["gkd"], out["full"], rtol=1e-5)  # lm_gkd's loss is lm_kd's on its batch.
  np.testing.assert_allclose(out["changed_grad"], out["grad"], rtol=1e-5, atol=1e-7)


def _per_token(arrays, divergence, dtype, **params):
  """The chunked divergence at each of the N positions alone (one-hot weights), [N]."""
  hidden = arrays["student_hidden"][:, :-1].reshape(-1, D).astype(dtype)
  teacher = arrays["teacher_hidden"][:, :-1].reshape(-1, E).astype(dtype)
  targets = jnp.zeros((hidden.shape[0],), jnp.int32)
  student_head = chunked.Head(arrays["student_kernel"].astype(dtype), arrays["student_bias"].astype(dtype), False)
  teacher_head = chunked.Head(arrays["teacher_embedding"].astype(dtype), None, True)

  def one(weights):
    return chunked.fused_distillation(hidden, student_head, teacher, teacher_head, targets, weights, chunk_size=4,
                                      divergence=divergence, ce_weight=0.0, **params)[1]["kd"]

  return jax.vmap(one)(jnp.eye(hidden.shape[0]))


def test_non_negative_in_bfloat16():
  arrays, _ = _inputs(seed=2)
  every = _JIT(lambda a: {d: _per_token(a, d, jnp.bfloat16) for d in DIVERGENCES})(arrays)
  for divergence, values in every.items():
    values = np.asarray(values, np.float32)
    assert np.all(np.isfinite(values)) and np.all(values >= 0), (divergence, values)
    assert np.all(values > 0), divergence  # The distributions differ at every position.


def test_jsd_is_continuous_at_both_ends_of_beta():
  arrays, _ = _inputs(seed=3)
  arrays = {key: 0.3 * value for key, value in arrays.items()}  # Moderate logits: the limit is reached early.
  small = (1e-2, 1e-3)

  @_JIT
  def figures(arrays):
    return {"forward": _per_token(arrays, "forward_kl", jnp.float32),
            "reverse": _per_token(arrays, "reverse_kl", jnp.float32),
            "near_0": [_per_token(arrays, "jsd", jnp.float32, beta=b) for b in small],
            "near_1": [_per_token(arrays, "jsd", jnp.float32, beta=1 - b) for b in small]}

  out = figures(arrays)
  # JSD(beta) / beta -> KL(p || q) as beta -> 0; JSD(beta) / (1 - beta) -> KL(q || p) as beta -> 1,
  # the gap shrinking with beta (or 1 - beta).
  for end, kl in (("near_0", out["forward"]), ("near_1", out["reverse"])):
    gaps = [np.max(np.abs(values / b - kl) / kl) for values, b in zip(out[end], small)]
    assert gaps[1] < 0.05 and gaps[1] < gaps[0] / 3, (end, gaps)


def _feature_patterns_with_method_hook(method_config):
  """kd.methods.feature_patterns, asking a method's `feature_patterns(params)` when it has one."""
  module = methods.METHODS[method_config["name"]]
  if hasattr(module, "feature_patterns"):
    return module.feature_patterns({**module.DEFAULTS, **methods.method_params(method_config)})
  return _ORIGINAL_FEATURE_PATTERNS(method_config)


_ORIGINAL_FEATURE_PATTERNS = methods.feature_patterns


@pytest.fixture
def method_features(monkeypatch):
  """kd.methods.feature_patterns as it reads a chunked method's features (the method's own hook)."""
  if methods.feature_patterns(methods.method_config("lm_kd", chunk_size=8)) == ((), ()):
    monkeypatch.setattr(methods, "feature_patterns", _feature_patterns_with_method_hook)


def _resolve(module, patterns, length):
  """The tap points the patterns select, as kd.train.resolve_stage_features does."""
  if not patterns:
    return ()
  taps = features.tap_points(module, jax.ShapeDtypeStruct((2, length), jnp.int32))
  return tuple(features.select(patterns, list(taps), "method"))


def _tiny(name, **attributes):
  return models.build_model(models.model_config(name, **attributes), 64)


def _resolved_patterns(method, student, teacher, length):
  """The (student, teacher) tap points a method's features select, as kd.train.resolve_stage_features does."""
  student_patterns, teacher_patterns = methods.feature_patterns(method)
  return _resolve(student, student_patterns, length), _resolve(teacher, teacher_patterns, length)


def test_a_training_step_with_chunks_matches_full_logits_and_never_computes_them(method_features):
  del method_features
  # The student's head is untied with a bias (transformer_lm), the teacher's tied to its embedding (gpt2).
  student = _tiny("transformer_lm", num_layers=1, width=16, num_heads=2, max_len=32)
  teacher = _tiny("gpt2", n_layer=1, n_embd=8, n_head=2, n_positions=32)
  tokens = np.random.default_rng(0).integers(0, 64, (4, 32)).astype(np.uint8)
  batch = {"tokens": tokens, "mask": np.ones_like(tokens, bool), "index": np.arange(4, dtype=np.int32)}
  batch["mask"][1, 20:] = False
  # SGD: the update is the gradient times the rate, so the parameters after one step compare the gradients.
  optimizer, schedule = train.make_optimizer(
      config_lib.optimizer_config(name="sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.0,
                                  schedule="constant"), 10)

  @_JIT
  def initial(tokens):
    teacher_variables = models.init_variables(teacher, jax.random.key(1), tokens)
    return teacher_variables, train.init_train_state(jax.random.key(0), {**batch, "tokens": tokens},
                                                     teacher_variables, module=student, optimizer=optimizer,
                                                     input_key="tokens")

  teacher_variables, state = initial(tokens)
  results = {}
  for chunk_size in (0, 16):
    method = methods.method_config("lm_kd", chunk_size=chunk_size, ce_weight=0.5)
    methods.check_method_config(method, "stages.student.method")
    student_paths, teacher_paths = _resolved_patterns(method, student, teacher, 32)
    assert (student_paths, teacher_paths) == ((("final_norm", "head_kernel", "head_bias"),
                                              ("final_norm", "head_embedding")) if chunk_size else ((), ()))
    step = _JIT(functools.partial(
        train.train_step, student_apply=models.make_apply(student, "tokens", student_paths),
        teacher_apply=models.make_apply(teacher, "tokens", teacher_paths), loss_fn=methods.build_loss(method),
        optimizer=optimizer, learning_rate=schedule))
    compiled = step.lower(state, teacher_variables, batch).compile()
    new_state, metrics = compiled(state, teacher_variables, batch)
    results[chunk_size] = (new_state, metrics, compiled.memory_analysis().temp_size_in_bytes)
  (full_state, full_metrics, full_temp), (chunk_state, chunk_metrics, chunk_temp) = results[0], results[16]
  assert float(full_metrics["tokens"]) == 3 * 31 + 19
  for key in ("loss", "kd", "ce", "grad_norm", "token_accuracy", "teacher_agreement"):
    np.testing.assert_allclose(chunk_metrics[key], full_metrics[key], rtol=1e-5, err_msg=key)
  # The same update: the gradients agree, through the hidden states into every layer and into the head.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), chunk_state.params,
               full_state.params)
  assert not np.allclose(chunk_state.params["student"]["head"]["kernel"], state.params["student"]["head"]["kernel"])
  # Neither model's logits [4, 32, 64] exist in the chunked step: it needs less than their float32 bytes.
  assert full_temp - chunk_temp > 2 * 4 * 32 * 64 * 4, (full_temp, chunk_temp)


def test_bad_chunk_sizes_and_heads_are_one_config_error():
  for bad in (-1, True, 2.5, "8"):
    with pytest.raises(ConfigError, match=r"stages.s.method.chunk_size=.* must be an integer >= 0"):
      methods.check_method_config(methods.method_config("lm_kd", chunk_size=bad), "stages.s.method")
  methods.check_method_config(methods.method_config("lm_gkd", chunk_size=7), "stages.s.method")
  shapes = lambda vocab: {"final_norm": (2, 8, 16), "head_kernel": (16, vocab)}
  params = {**lm_kd.DEFAULTS, "chunk_size": 8}
  lm_kd.check_features(params, shapes(64), {"final_norm": (2, 8, 4), "head_embedding": (64, 4)}, "m")
  with pytest.raises(ConfigError, match="student's vocabulary has 64 tokens and the teacher's 50"):
    lm_kd.check_features(params, shapes(64), shapes(50), "m")
  with pytest.raises(ConfigError, match="reads the teacher's head"):
    lm_kd.check_features(params, shapes(64), {"final_norm": (2, 8, 16)}, "m")
  assert lm_kd.feature_patterns(lm_kd.DEFAULTS) == ((), ())  # Unchunked: no features.
  arrays, batch = _inputs()
  with pytest.raises(ConfigError, match="reads the teacher's head .* not the teacher cache"):
    lm_common.distillation_loss({"features": {"final_norm": arrays["student_hidden"],
                                              "head_kernel": arrays["student_kernel"]}},
                                {"logits": jnp.zeros((B, L, V))}, batch, **_params(chunk_size=4))
