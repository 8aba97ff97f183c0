"""Hidden-state and attention distillation of language models: lm_hidden, lm_minilm, lm_tinybert.

Each loss against values worked out by hand on tiny arrays, zero when the student is the teacher,
blind to padding, without gradient into the teacher; the attention scores rebuilt from q/k taps are
the models' own; bad layer maps and relation heads are one ConfigError before any compile; and a tiny
LM stage trains with each method and its connector.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import config as config_lib
from kd import data
from kd import experiment
from kd import features
from kd import methods
from kd import models
from kd import train
from kd.errors import ConfigError
from kd.methods import lm_hidden
from kd.methods import lm_layers
from kd.methods import lm_minilm
from kd.methods import lm_tinybert

LENGTH = 6
BATCH = {"tokens": np.array([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 0, 0]], np.int32),
         "mask": np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)}


def _lm(name="transformer_lm", **overrides):
  # The student by default; the teacher is _lm(num_layers=2, width=16). Few distinct models: each costs
  # a compile of its init and apply.
  defaults = {"transformer_lm": {"num_layers": 1, "width": 8, "num_heads": 2, "max_len": 16},
              "llama": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "max_position_embeddings": 16}}[name]
  return models.build_model(models.model_config(name, **{**defaults, **overrides}), 32)


def _resolve(method, student, teacher):
  """(student paths, teacher paths, connector) as kd.train resolves them (eval_shape only)."""
  s_patterns, t_patterns = methods.feature_patterns(method)
  s_taps, t_taps = _taps(student), _taps(teacher)
  s_paths, t_paths = features.select(s_patterns, list(s_taps), "s"), features.select(t_patterns, list(t_taps), "t")
  s_shapes, t_shapes = {p: s_taps[p] for p in s_paths}, {p: t_taps[p] for p in t_paths}
  methods.check_feature_shapes(method, s_shapes, t_shapes, "method")
  return s_paths, t_paths, methods.build_connector(method, s_shapes, t_shapes, 8)


def _outputs(module, paths, seed):
  """(outputs with the features at `paths`, in order; variables) of `module` initialised from `seed`.

  Every test's taps of a module come from one compiled apply (and one compiled init), which is much
  faster here than compiling an apply per set of paths or running the model op by op.
  """
  variables = _init(module)(jax.random.key(seed))
  out = _apply(module)(variables, BATCH)
  return {"logits": out["logits"], "features": {path: out["features"][path] for path in paths}}, variables


@functools.lru_cache(maxsize=None)
def _taps(module):
  return features.tap_points(module, jax.ShapeDtypeStruct((2, LENGTH), jnp.int32))


@functools.lru_cache(maxsize=None)
def _init(module):
  return jax.jit(lambda rng: models.init_variables(module, rng, jnp.zeros((1, LENGTH), jnp.int32)))


@functools.lru_cache(maxsize=None)
def _apply(module):
  return jax.jit(functools.partial(models.make_apply(module, "tokens", list(_taps(module))), train=False))


# --- Values by hand -------------------------------------------------------------------------------------


def test_hidden_state_mse_and_cosine_by_hand_skip_padding():
  student = jnp.array([[[1.0, 0.0], [0.0, 2.0], [9.0, -9.0]]])
  teacher = jnp.array([[[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
  weights = jnp.array([[1.0, 1.0, 0.0]])  # The third position is padding.
  # Squared errors 1 and 1 + 1 over 2 real positions x 2 channels.
  assert float(lm_hidden.hidden_state_loss(student, teacher, weights)) == pytest.approx(3 / 4)
  # cos([1, 0], [1, 1]) = cos([0, 2], [1, 1]) = 1 / sqrt(2).
  assert float(lm_hidden.hidden_state_loss(student, teacher, weights, loss_type="cosine")) == pytest.approx(
      1 - 1 / math.sqrt(2))


def test_hidden_loss_follows_the_layer_map_and_averages_the_pairs():
  rng = np.random.default_rng(0)
  student = {f"layers_{i}": jnp.asarray(rng.normal(size=(2, LENGTH, 3)), jnp.float32) for i in range(2)}
  teacher = {f"layers_{i}": jnp.asarray(rng.normal(size=(2, LENGTH, 3)), jnp.float32) for i in range(4)}
  logits = jnp.zeros((2, LENGTH, 10))  # Token ids below 10.
  params = {**lm_hidden.DEFAULTS, "kd_weight": 0.0, "student_layers": (0, -1), "teacher_layers": (1, 3)}
  total, metrics = jax.jit(methods.build_loss({"name": "lm_hidden", **params}))(
      {"logits": logits, "features": student}, {"logits": logits, "features": teacher}, BATCH)
  mask = BATCH["mask"].astype(float)

  def mse(s, t):
    return float(np.sum(np.sum((np.asarray(s) - np.asarray(t)) ** 2, -1) * mask) / (mask.sum() * 3))

  expected = (mse(student["layers_0"], teacher["layers_1"]) + mse(student["layers_1"], teacher["layers_3"])) / 2
  assert float(metrics["hidden"]) == pytest.approx(expected, rel=1e-5) and float(total) == pytest.approx(expected, rel=1e-5)
  # The uniform map g(m) = m N / M: 12 -> 4 is the paper's (3, 6, 9, 12), 0-based; equal depths: identity.
  assert lm_layers.uniform_layer_map(4, 12) == ((0, 1, 2, 3), (2, 5, 8, 11))
  assert lm_layers.uniform_layer_map(3, 3) == ((0, 1, 2), (0, 1, 2))


def test_minilm_relation_kl_by_hand_is_causal_and_skips_padding():
  # One relation head of width 1: row 0 sees only itself (KL 0); row 1 compares softmax([2, 4]) with
  # softmax([1, 1]); position 2 is padding, as row and as column.
  teacher_q = jnp.array([[[1.0], [2.0], [7.0]]])
  student_q = jnp.array([[[1.0], [1.0], [-3.0]]])
  batch = {"tokens": np.zeros((1, 3), np.int32), "mask": np.array([[1, 1, 0]], bool)}
  valid = lm_layers.causal_valid(lm_layers.key_mask(batch))
  value = lm_minilm.relation_kl(lm_minilm.relation_logits(student_q, student_q, 1),
                                lm_minilm.relation_logits(teacher_q, teacher_q, 1), valid,
                                lm_layers.token_weights(batch))
  p = np.exp([2.0, 4.0]) / np.exp([2.0, 4.0]).sum()
  assert float(value) == pytest.approx(np.sum(p * np.log(p / 0.5)) / 2, rel=1e-5)


def test_minilm_relations_split_heads_of_their_own_width():
  # Width 4 in 2 relation heads of 2 channels: each head's Q Q^T / sqrt(2) uses its own channels.
  q = jnp.array([[[1.0, 0.0, 0.0, 2.0], [1.0, 1.0, 3.0, 0.0]]])
  logits = lm_minilm.relation_logits(q, q, 2)
  np.testing.assert_allclose(logits[0, 0], np.array([[1, 1], [1, 2]]) / math.sqrt(2), rtol=1e-6)
  np.testing.assert_allclose(logits[0, 1], np.array([[4, 0], [0, 9]]) / math.sqrt(2), rtol=1e-6)


def test_tinybert_attention_scores_and_mse_by_hand():
  q = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
  k = jnp.array([[[1.0, 1.0], [2.0, 0.0]]])
  scores = lm_tinybert.attention_scores(q, k, heads=1, rope_theta=0.0)
  np.testing.assert_allclose(scores[0, 0], np.array([[1, 2], [1, 0]]) / math.sqrt(2), rtol=1e-6)
  batch = {"tokens": np.zeros((1, 2), np.int32), "mask": np.ones((1, 2), bool)}
  valid = lm_layers.causal_valid(lm_layers.key_mask(batch))
  # Entries (0, 0), (1, 0), (1, 1) count (the causal ones): squares 1/2, 1/2, 0 against zeros.
  mse = lm_tinybert.attention_mse(jnp.zeros_like(scores), scores, valid, lm_layers.token_weights(batch))
  assert float(mse) == pytest.approx(1 / 3)
  assert float(lm_tinybert.token_mse(jnp.ones((1, 2, 2)), jnp.zeros((1, 2, 2)), jnp.array([[1.0, 0.0]]))) == 1.0


@pytest.mark.parametrize("name,overrides", [
    ("transformer_lm", {}),  # Rotary positions, theta 10000.
    ("llama", {}),  # Rotary, and grouped-query attention: 4 query heads read 2 key/value heads.
])
def test_tinybert_attention_scores_are_the_models_own(name, overrides):
  """Scores rebuilt from the q/k taps, softmaxed over the causal columns and applied to v, give the
  attention's output: they are the scores the model computed (rotation and key sharing included)."""
  module = _lm(name, **overrides)
  if name == "llama":
    paths = [f"layers_0/self_attn/{p}_proj" for p in "qkvo"]
    heads, theta = 4, 10000.0
  else:
    paths = ["layers_0/attention/qkv", "layers_0/attention/out"]
    heads, theta = 2, 10000.0
  out, variables = _outputs(module, paths, 0)
  taps = [out["features"][p] for p in paths]

  @jax.jit
  def attention_output(taps, params):
    q, k, v = lm_layers.projections(taps[:-1], 3)
    scores = lm_tinybert.attention_scores(q, k, heads, theta)
    causal = jnp.tril(jnp.ones((LENGTH, LENGTH), bool))
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    v_heads = v.reshape(2, LENGTH, -1, q.shape[-1] // heads)
    v_heads = jnp.repeat(v_heads, heads // v_heads.shape[2], axis=2)
    attended = jnp.einsum("bhij,bjhd->bihd", weights, v_heads)
    if name == "llama":
      return attended.reshape(2, LENGTH, -1) @ params["layers_0"]["self_attn"]["o_proj"]["kernel"]
    out_params = params["layers_0"]["attention"]["out"]
    return jnp.einsum("bihd,hde->bie", attended, out_params["kernel"]) + out_params["bias"]

  output = attention_output(taps, variables["params"])
  np.testing.assert_allclose(output, taps[-1], atol=1e-5)


# --- Properties of the three losses on real models ------------------------------------------------------

METHOD_CASES = {
    "lm_hidden": {"kd_weight": 0.0},
    "lm_hidden-cosine": {"kd_weight": 0.0, "loss_type": "cosine"},
    "lm_minilm": {},
    "lm_minilm-v1": {"relations": ("qk", "vv"), "relation_heads": 2},
    "lm_tinybert": {},
}


def _case(case):
  name = case.split("-")[0]
  return methods.method_config(name, **METHOD_CASES[case])


@pytest.mark.parametrize("case", sorted(METHOD_CASES))
def test_loss_is_zero_when_the_student_is_the_teacher(case):
  method = _case(case)
  module = _lm()
  s_paths, t_paths, connector = _resolve(method, module, module)
  assert connector is None  # Equal widths and no force_projection: nothing to learn.
  out, _ = _outputs(module, s_paths, 0)
  total, metrics = jax.jit(methods.build_loss(method))(out, out, BATCH)
  # Every term vanishes but TinyBERT's prediction term, a cross-entropy: the teacher's entropy.
  prediction = float(metrics.get("prediction", 0.0))
  assert abs(float(total) - prediction) < 1e-6, metrics
  if case == "lm_tinybert":
    logits = np.asarray(out["logits"][:, :-1], np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy, weights = -np.sum(p * np.log(p), -1), BATCH["mask"][:, 1:]
    assert prediction == pytest.approx(float(np.sum(entropy * weights) / weights.sum()), rel=1e-5)


def _student_teacher(method):
  student, teacher = _lm(), _lm(num_layers=2, width=16)
  s_paths, t_paths, connector = _resolve(method, student, teacher)
  return student, teacher, s_paths, t_paths, connector


def _loss_with_connector(method, connector, student_out, teacher_out, batch):
  loss_fn = methods.build_loss(method)
  if connector is None:
    return lambda s, t, c: loss_fn(s, t, batch), {}
  variables = connector.init(jax.random.key(2), student_out, teacher_out, batch, False)

  def objective(s, t, c):
    return loss_fn({**s, "connector": connector.apply({"params": c}, s, t, batch, True)}, t, batch)

  return objective, variables["params"]


@pytest.mark.parametrize("case", ["lm_hidden", "lm_minilm", "lm_tinybert"])
def test_no_gradient_into_the_teacher_and_padding_changes_nothing(case):
  """Student 1 layer x 8 wide, teacher 2 x 16: the relations and scores span widths; the projections learn."""
  method = _case(case)
  student, teacher, s_paths, t_paths, connector = _student_teacher(method)
  assert (connector is not None) == (case.startswith("lm_hidden") or case == "lm_tinybert")  # Widths 8 -> 16.
  student_out, _ = _outputs(student, s_paths, 0)
  teacher_out, _ = _outputs(teacher, t_paths, 1)
  objective, connector_params = _loss_with_connector(method, connector, student_out, teacher_out, BATCH)
  value_and_grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True))
  (value, metrics), (s_grads, t_grads, c_grads) = value_and_grads(student_out, teacher_out, connector_params)
  assert np.isfinite(float(value)) and float(value) > 0
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(t_grads))
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(s_grads)) > 0
  assert connector is None or sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(c_grads)) > 0
  assert "relation_qq" not in metrics or min(float(metrics[f"relation_{r}"]) for r in ("qq", "kk", "vv")) > 0
  # Any values at the padding positions (row 1, positions 4 and 5) leave the loss as it is.
  def scramble(out, seed):
    noise = np.random.default_rng(seed)
    def change(x):
      x = np.array(x)
      x[1, 4:] = 100 * noise.normal(size=x[1, 4:].shape)
      return jnp.asarray(x)
    return {"logits": change(out["logits"]), "features": {p: change(x) for p, x in out["features"].items()}}
  (scrambled, _), _ = value_and_grads(scramble(student_out, 3), scramble(teacher_out, 4), connector_params)
  assert float(scrambled) == pytest.approx(float(value), rel=1e-5)


def test_hugging_face_taps_serve_the_methods():
  # Llama's separate projections (grouped-query keys): MiniLM's relations and TinyBERT's scores.
  projections = tuple(f"re:layers_[0-9]+/self_attn/{p}_proj" for p in "qkv")
  minilm = methods.method_config("lm_minilm", student_features=projections, teacher_features=projections,
                                 relations=("qq", "kk", "vv"), relation_heads=2)
  tinybert = methods.method_config("lm_tinybert", student_features=("embed_tokens", "re:layers_[0-9]+") + projections[:2],
                                   teacher_features=("embed_tokens", "re:layers_[0-9]+") + projections[:2],
                                   attention_heads=4)
  llama = _lm("llama")
  for method in (minilm, tinybert):
    paths, _, _ = _resolve(method, llama, llama)
    out, _ = _outputs(llama, paths, 0)
    total, metrics = jax.jit(methods.build_loss(method))(out, out, BATCH)
    # Zero but for TinyBERT's prediction term (the teacher's entropy, see above).
    assert abs(float(total) - float(metrics.get("prediction", 0.0))) < 1e-6, metrics
  with pytest.raises(ConfigError, match="'qk' pairs the student's q \\(16 wide\\) with its k \\(8 wide"):
    _resolve({**minilm, "relations": ("qk",)}, llama, llama)
  with pytest.raises(ConfigError, match="attention_heads=0 but the student's queries are flat"):
    _resolve({**tinybert, "attention_heads": 0}, llama, llama)


# --- Bad inputs: one ConfigError before anything compiles -----------------------------------------------


def _stage_config(name, **params):
  config = experiment.load_config("experiments/lm_stdlib.py", "smoke")  # Teacher 2 x 32, student 1 x 16.
  config.stages.student.method = methods.method_config(name, **params)
  return config


@pytest.mark.parametrize("name,params,message", [
    ("lm_hidden", {"student_layers": (3,), "teacher_layers": (1,)},
     r"student_layers=\(3,\) names layer 3, which does not exist: the student has 1 selected layers \(0: layers_0\)"),
    ("lm_tinybert", {"student_layers": (0,), "teacher_layers": (2,)}, r"teacher_layers=\(2,\) names layer 2"),
    ("lm_minilm", {"teacher_layer": 5}, "teacher_layer=5 names layer 5, which does not exist: the teacher has 2 selected layers"),
    ("lm_minilm", {"relation_heads": 3}, r"relation_heads=3 does not divide the student's width 16 .* choose one of \[1, 2, 4, 8, 16\]"),
    ("lm_tinybert", {"student_features": ("embed", "re:layers_[0-9]+", "layers_9/attention/qkv")},
     "feature path 'layers_9/attention/qkv' matches no tap point"),
])
def test_bad_layer_maps_and_heads_are_config_errors_before_compile(name, params, message):
  config = _stage_config(name, **params)
  spec = data.DatasetSpec("stdlib_text", "tokens", (LENGTH,), "uint8", 256, {})
  methods.check_method_config(config.stages.student.method, "stages.student.method")
  with pytest.raises(ConfigError, match=message) as error:
    train.resolve_stage_features(config, "student", spec)  # Shapes by jax.eval_shape: nothing compiles.
  assert "\n" not in str(error.value) and str(error.value).startswith("stages.student.method")


@pytest.mark.parametrize("name,params,message", [
    ("lm_hidden", {"student_layers": (0,), "teacher_layers": (0, 1)}, "has 1 entries but teacher_layers=\\(0, 1\\) has 2"),
    ("lm_tinybert", {"student_layers": (0, 1), "teacher_layers": ()}, "has 2 entries but teacher_layers=\\(\\) has 0"),
    ("lm_minilm", {"relation_heads": 0}, "relation_heads=0 must be an integer >= 1"),
    ("lm_minilm", {"relations": ("qq", "qx")}, "relations=\\('qq', 'qx'\\) must be distinct pairs"),
    ("lm_hidden", {"hidden_weight": 0.0, "kd_weight": 0.0}, "all 0, so nothing is learned"),
])
def test_bad_parameters_are_config_errors(name, params, message):
  with pytest.raises(ConfigError, match=message):
    methods.check_method_config(methods.method_config(name, **params), "stages.student.method")


# --- A tiny LM stage trains with each method and its connector ------------------------------------------


def test_a_tiny_lm_stage_trains_with_tinybert_and_its_projections():
  # One method, as a step of each costs seconds to compile here: TinyBERT has every kind of term
  # (embedding and hidden states through W_e and W_h, attention scores from the q/k taps, prediction).
  method = methods.method_config("lm_tinybert")
  student, teacher, s_paths, t_paths, connector = _student_teacher(method)
  student_apply = models.make_apply(student, "tokens", s_paths)
  teacher_apply = models.make_apply(teacher, "tokens", t_paths)
  teacher_variables = _outputs(teacher, t_paths, 1)[1]
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(learning_rate=1e-2), 10)
  batch = {**BATCH, "index": np.arange(2, dtype=np.int32)}
  fast_compile = {"xla_backend_optimization_level": 0}  # What is checked is the metrics, not the speed.
  state = jax.jit(functools.partial(train.init_train_state, module=student, optimizer=optimizer, input_key="tokens",
                                    connector=connector, student_apply=student_apply, teacher_apply=teacher_apply),
                  compiler_options=fast_compile)(jax.random.key(0), batch, teacher_variables)
  step = jax.jit(functools.partial(train.train_step, student_apply=student_apply, teacher_apply=teacher_apply,
                                   loss_fn=methods.build_loss(method), optimizer=optimizer, learning_rate=schedule,
                                   connector=connector), compiler_options=fast_compile)
  before = jax.tree.map(np.asarray, teacher_variables)
  first_connector = jax.tree.map(np.asarray, state.params.get("connector", {}))
  losses = []
  for _ in range(6):
    state, metrics = step(state, teacher_variables, batch)
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, teacher_variables))
  assert set(metrics) >= {"embedding", "hidden", "attention", "prediction"}
  # The projections (widths 8 -> 16) train with the student.
  assert set(state.params["connector"]) == {"W_e", "W_h"}
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params["connector"],
                       first_connector)
  assert min(jax.tree.leaves(moved)) > 0
