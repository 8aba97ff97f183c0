"""The byte-level corpus, the transformer LM, its KV-cache sampling, and the LM hooks of the train step."""

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import config as config_lib
from kd import data
from kd import features
from kd import methods
from kd import models
from kd import train
from kd.data import stdlib_text
from kd.lm import sampling
from kd.methods import lm_distilbert
from kd.models import transformer_lm


def _lm(**overrides):
  config = models.model_config("transformer_lm", **{"num_layers": 2, "width": 32, "num_heads": 4,
                                                     "max_len": 32, **overrides})
  return models.build_model(config, 256)


def _variables(module, seed=0):
  return models.init_variables(module, jax.random.key(seed), jnp.zeros((1, 8), jnp.uint8))


def test_windows_pad_the_last_one_and_mask_it():
  tokens, mask = stdlib_text.windows(b"abcdefg", length=3)
  np.testing.assert_array_equal(tokens, [[97, 98, 99], [100, 101, 102], [103, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 1], [1, 0, 0]])


def test_split_is_by_a_hash_of_the_file_name():
  bucket = int(hashlib.sha256(b"argparse.py").hexdigest()[:8], 16) % 100
  expected = "train" if bucket < 80 else "validation" if bucket < 90 else "test"
  assert stdlib_text.split_of("argparse.py") == expected
  splits = [stdlib_text.split_of(f"module_{i}.py") for i in range(1000)]
  assert 0.75 < splits.count("train") / 1000 < 0.85 and splits.count("test") > 60


def test_the_corpus_reads_through_tfds_and_grain():
  spec = data.load_spec("stdlib_text")
  assert spec.input_key == "tokens" and spec.num_classes == 256 and spec.input_shape == (128,)
  arrays = data.load_arrays("stdlib_text", "validation")
  assert arrays["tokens"].dtype == np.uint8 and arrays["mask"].shape == arrays["tokens"].shape
  # Real bytes first, padding after: the mask is a prefix of each window.
  assert np.all(np.diff(arrays["mask"].astype(int), axis=1) <= 0)
  text = b"".join(bytes(row[mask]) for row, mask in zip(arrays["tokens"][:50], arrays["mask"][:50]))
  assert b"def " in text or b"import " in text
  batch = next(data.train_iterator(arrays, batch_size=8, seed=0))
  assert set(batch) == {"tokens", "mask", "index"} and batch["tokens"].shape == (8, 128)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_cached_decoding_equals_full_prefix_recomputation(positions):
  module = _lm(positions=positions)
  variables = _variables(module)
  tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, 256)
  full = jax.jit(module.apply)(variables, tokens)
  decode = jax.jit(functools.partial(module.apply, method=module.decode))
  cache = transformer_lm.init_cache(module, 2, 20)
  prefix, cache = decode(variables, tokens[:, :7], cache, 0)
  steps = [prefix]
  for index in range(7, 20):
    logits, cache = decode(variables, tokens[:, index:index + 1], cache, jnp.int32(index))
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5)
  # Greedy generation with the cache inside jit equals recomputing the whole prefix each step.
  prompt = tokens[:, :5]
  kwargs = dict(num_new_tokens=15, rng=jax.random.key(2), temperature=0.0)
  cached = jax.jit(functools.partial(sampling.generate, module, **kwargs))(variables, prompt)
  recomputed = jax.jit(functools.partial(sampling.generate_recompute, module, **kwargs))(variables, prompt)
  np.testing.assert_array_equal(cached, recomputed)
  np.testing.assert_array_equal(cached[:, :5], prompt)


def test_sampler_temperature_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  rngs = jax.random.split(jax.random.key(0), 400)

  def draw(rngs, **kwargs):
    return jax.jit(jax.vmap(lambda rng: sampling.sample_logits(logits, rng, **kwargs)[0]))(rngs)

  assert set(np.asarray(draw(rngs, top_k=2, temperature=1.0, top_p=1.0)).tolist()) == {0, 1}
  # Nucleus 0.7: {0.5, 0.3} reach it, so the two most likely tokens only; 0.4 keeps the top one.
  assert set(np.asarray(draw(rngs, top_k=0, temperature=1.0, top_p=0.7)).tolist()) == {0, 1}
  assert set(np.asarray(draw(rngs, top_k=0, temperature=1.0, top_p=0.4)).tolist()) == {0}
  counts = np.bincount(np.asarray(draw(rngs, top_k=0, temperature=1.0, top_p=1.0)), minlength=4) / 400
  np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.07)
  assert int(sampling.sample_logits(logits, rngs[0], temperature=0.0)[0]) == 0


def test_hidden_states_are_tap_points():
  taps = features.tap_points(_lm(), jax.ShapeDtypeStruct((2, 16), jnp.int32))
  assert taps["layers_0"] == (2, 16, 32) and taps["layers_1"] == (2, 16, 32)
  assert taps["final_norm"] == (2, 16, 32) and taps["head"] == (2, 16, 256)


def _step(method, student, teacher, batch_size=4, length=24):
  student_apply = models.make_apply(student, "tokens", methods.feature_patterns(method)[0])
  teacher_apply = models.make_apply(teacher, "tokens", methods.feature_patterns(method)[1])
  teacher_variables = _variables(teacher, seed=1)
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(), 10)
  tokens = np.random.default_rng(0).integers(32, 127, (batch_size, length)).astype(np.uint8)
  batch = {"tokens": tokens, "mask": np.ones_like(tokens, bool), "index": np.arange(batch_size, dtype=np.int32)}
  init_from_teacher = methods.build_init_from_teacher(method, "method")
  state = train.init_train_state(jax.random.key(0), batch, teacher_variables, module=student,
                                 optimizer=optimizer, input_key="tokens", init_from_teacher=init_from_teacher)
  prepare = methods.build_prepare_batch(method, student, teacher)
  # One step per test, whose metrics are checked, not its speed: compiled without LLVM's optimisations,
  # which take most of the compile time of a step that decodes inside it.
  step = jax.jit(functools.partial(train.train_step, student_apply=student_apply, teacher_apply=teacher_apply,
                                   loss_fn=methods.build_loss(method), optimizer=optimizer,
                                   learning_rate=schedule, prepare_batch=prepare),
                 compiler_options={"xla_backend_optimization_level": 0})
  return state, teacher_variables, batch, step, prepare


def test_on_policy_gkd_trains_on_the_students_own_samples():
  method = methods.method_config("lm_gkd", student_data_fraction=1.0, prompt_length=4, sample_temperature=0.0)
  student, teacher = _lm(num_layers=1, width=16), _lm(num_layers=1, width=16)
  state, teacher_variables, batch, step, prepare = _step(method, student, teacher)
  prepared = jax.jit(prepare)(train.student_variables(state), teacher_variables, batch, jax.random.key(0))
  greedy = sampling.generate(student, train.student_variables(state), jnp.asarray(batch["tokens"][:, :4]),
                             num_new_tokens=20, rng=jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(prepared["tokens"], greedy)
  assert not np.asarray(prepared["loss_mask"])[:, :4].any() and np.asarray(prepared["loss_mask"])[:, 4:].all()
  before = jax.tree.map(np.asarray, teacher_variables)
  new_state, metrics = step(state, teacher_variables, batch)
  assert float(metrics["on_policy"]) == 1.0 and np.isfinite(float(metrics["loss"])) and float(metrics["kd"]) > 0
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, teacher_variables))
  assert int(new_state.step) == 1


def test_sequence_level_kd_trains_on_the_teachers_continuations():
  method = methods.method_config("lm_seqkd", prompt_length=6, decoding="greedy")
  student, teacher = _lm(num_layers=1, width=16), _lm(num_layers=1, width=16)
  state, teacher_variables, batch, step, prepare = _step(method, student, teacher)
  prepared = prepare(train.student_variables(state), teacher_variables, batch, jax.random.key(0))
  greedy = sampling.generate(teacher, teacher_variables, jnp.asarray(batch["tokens"][:, :6]),
                             num_new_tokens=18, rng=jax.random.key(0), temperature=0.0)
  np.testing.assert_array_equal(prepared["tokens"], greedy)
  _, metrics = step(state, teacher_variables, batch)
  assert float(metrics["tokens"]) == 4 * 18  # Only the continuations count.


def test_distilbert_student_starts_from_the_first_and_last_teacher_layers():
  method = methods.method_config("lm_distilbert")
  teacher, student = _lm(num_layers=4, width=16), _lm(num_layers=2, width=16)
  state, teacher_variables, batch, step, _ = _step(method, student, teacher)
  student_params, teacher_params = state.params["student"], teacher_variables["params"]
  for student_layer, teacher_layer in (("layers_0", "layers_0"), ("layers_1", "layers_3"), ("head", "head")):
    jax.tree.map(np.testing.assert_array_equal, student_params[student_layer], teacher_params[teacher_layer])
  _, metrics = step(state, teacher_variables, batch)
  assert np.isfinite(float(metrics["cosine"])) and float(metrics["cosine"]) >= 0
  with pytest.raises(Exception, match="init_from_teacher"):
    lm_distilbert.init_from_teacher(lm_distilbert.DEFAULTS, _variables(_lm(num_layers=2, width=32))["params"],
                                    teacher_params, "method")


def test_a_classifier_method_on_token_data_is_a_config_error(tmp_path):
  from kd import experiment  # pylint: disable=g-import-not-at-top
  from kd.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = experiment.load_config("experiments/lm_stdlib.py", "smoke")
  config.stages.student.method = methods.method_config("hinton_kd")
  with pytest.raises(ConfigError, match="stages.student.method.name='hinton_kd' is a classifier method"):
    experiment.check(config, str(tmp_path), list(config.stage_order))
  config = experiment.load_config("experiments/quickstart.py", "smoke")
  config.stages.student.method = methods.method_config("lm_kd")
  with pytest.raises(ConfigError, match="is for language models"):
    experiment.check(config, str(tmp_path), list(config.stage_order))


def test_only_methods_that_read_teacher_logits_take_the_teacher_cache(tmp_path):
  from kd import experiment  # pylint: disable=g-import-not-at-top
  from kd.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = experiment.load_config("experiments/lm_stdlib.py", "smoke")
  config.teacher_cache.enabled = True
  experiment.check(config, str(tmp_path), list(config.stage_order))  # lm_kd reads cached logits.
  config.stages.student.method = methods.method_config("lm_gkd")
  with pytest.raises(ConfigError, match="stages.student.method.name='lm_gkd' runs the teacher model itself"):
    experiment.check(config, str(tmp_path), list(config.stage_order))
