"""The top-k teacher cache for language models: divergences on k + 1 buckets, ULD's sorted tail in closed
form, the cached loss of each cacheable LM method against the live teacher, and a stage trained from it."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd import checkpoint
from kd import config as config_lib
from kd import fingerprint
from kd import losses
from kd import methods
from kd import models
from kd import teacher_cache
from kd import train
from kd.data import text_files
from kd.errors import ConfigError
from kd.methods import lm_common
from kd.methods import lm_distilbert
from kd.methods import lm_kd
from kd.methods import lm_uld

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "text")
DIVERGENCES = sorted(losses.TOKEN_DIVERGENCES)
EXTRA = {"beta": 0.3, "alpha": 0.2}


def _dense(student_logits, teacher_logits, temperature):
  """Every token divergence on the full vocabulary, {name: [...]}."""
  values = {}
  for name, (divergence_fn, extra) in losses.TOKEN_DIVERGENCES.items():
    values[name] = divergence_fn(student_logits, teacher_logits, temperature=temperature,
                                 **({extra: EXTRA[extra]} if extra else {}))
  return values


def _sparse(student_logits, top, temperature):
  return {name: lm_common.sparse_token_divergence(student_logits, top, divergence=name, temperature=temperature,
                                                  **EXTRA) for name in DIVERGENCES}


# Compiled once per shape (eager ops compile one by one); the values checked do not depend on XLA's passes.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnames=("ks",), compiler_options=FAST_COMPILE)
def _both(student_logits, teacher_logits, temperature, *, ks):
  """{k: (sparse on the top-k cache, dense on its rebuild)} and dense on the teacher's own logits."""
  by_k = {}
  for k in ks:
    top = teacher_cache.top_k_log_probs(teacher_logits, k)
    rebuilt = teacher_cache.dense_log_probs(top, teacher_logits.shape[-1])
    by_k[k] = (_sparse(student_logits, top, temperature), _dense(student_logits, rebuilt, temperature))
  return by_k, _dense(student_logits, teacher_logits, temperature)


def _kl(p, q):
  return float(np.sum(p * np.log(p / q)))


def test_the_bucketed_divergences_by_hand():
  # Teacher [.5, .3, .1, .1], k = 2: buckets {0: .5, 1: .3, rest: .2}. Student [.4, .2, .3, .1]: {.4, .2, .4}.
  teacher, student = np.array([0.5, 0.3, 0.1, 0.1]), np.array([0.4, 0.2, 0.3, 0.1])
  sparse = _both(jnp.log(student)[None], jnp.log(teacher)[None], 1.0, ks=(2,))[0][2][0]
  p, q = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.2, 0.4])
  np.testing.assert_allclose(sparse["forward_kl"], [_kl(p, q)], rtol=1e-5)
  np.testing.assert_allclose(sparse["reverse_kl"], [_kl(q, p)], rtol=1e-5)
  np.testing.assert_allclose(sparse["tv"], [0.5 * (0.1 + 0.1 + 0.2)], rtol=1e-5)
  m = 0.3 * p + 0.7 * q  # JSD(beta = 0.3): beta is the teacher's weight.
  np.testing.assert_allclose(sparse["jsd"], [0.3 * _kl(p, m) + 0.7 * _kl(q, m)], rtol=1e-5)
  np.testing.assert_allclose(sparse["skew_forward_kl"], [_kl(p, 0.2 * p + 0.8 * q)], rtol=1e-5)
  np.testing.assert_allclose(sparse["skew_reverse_kl"], [_kl(q, 0.8 * p + 0.2 * q)], rtol=1e-5)
  # T = 2: the teacher's tail is the even spread's, each of its 2 classes at .1, so (.1)^(1/2) each; the
  # student's tail is its own two classes, sqrt(.3) + sqrt(.1).
  sparse = _both(jnp.log(student)[None], jnp.log(teacher)[None], 2.0, ks=(2,))[0][2][0]
  p = np.array([np.sqrt(0.5), np.sqrt(0.3), 2 * np.sqrt(0.1)])
  q = np.array([np.sqrt(0.4), np.sqrt(0.2), np.sqrt(0.3) + np.sqrt(0.1)])
  np.testing.assert_allclose(sparse["forward_kl"], [_kl(p / p.sum(), q / q.sum())], rtol=1e-5)
  # A student whose tail is ~1e-26 of its mass: summed, not subtracted from 1, so the KL stays exact.
  student_logits = np.array([30.0, 28.0, 0.0, 0.0])
  sparse = _both(jnp.asarray(student_logits, jnp.float32)[None], jnp.log(teacher)[None], 1.0, ks=(2,))[0][2][0]
  q = np.exp(student_logits - np.logaddexp.reduce(student_logits))
  p, q = np.array([0.5, 0.3, 0.2]), np.array([q[0], q[1], q[2] + q[3]])
  np.testing.assert_allclose(sparse["forward_kl"], [_kl(p, q)], rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_equal_to_the_dense_divergence_at_k_equal_v_and_at_most_the_rebuilds_below(temperature):
  rng = np.random.default_rng(0)
  student = jnp.asarray(rng.normal(size=(3, 5, 9)) * 2, jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(3, 5, 9)) * 2, jnp.float32)
  by_k, live = _both(student, teacher, temperature, ks=(9, 1, 4))
  sparse, rebuilt = by_k[9]
  for name in DIVERGENCES:
    np.testing.assert_allclose(sparse[name], live[name], atol=2e-6, err_msg=name)
    np.testing.assert_allclose(rebuilt[name], live[name], atol=2e-6, err_msg=name)
  for k in (1, 4):
    sparse, rebuilt = by_k[k]
    for name in DIVERGENCES:  # Data processing: merging the tail never increases an f-divergence.
      assert np.all(np.asarray(sparse[name]) >= 0), name
      assert np.all(np.asarray(sparse[name]) <= np.asarray(rebuilt[name]) + 1e-6), name
      assert np.any(np.asarray(sparse[name]) < np.asarray(rebuilt[name]) - 1e-4), name  # The tails differ.
  # The student equal to the teacher: zero at k = V.
  same = _both(teacher, teacher, temperature, ks=(9, 1, 4))[0][9][0]
  for name in DIVERGENCES:
    np.testing.assert_allclose(same[name], 0.0, atol=2e-6, err_msg=name)


def test_no_gradient_reaches_the_cache_and_the_students_equals_the_dense_one_at_k_equal_v():
  rng = np.random.default_rng(1)
  student = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
  top = teacher_cache.top_k_log_probs(jnp.asarray(rng.normal(size=(2, 3, 6)) * 2, jnp.float32), 6)

  def sparse_loss(student, top_log_probs, rest_log_mass):
    cache = {**top, "top_log_probs": top_log_probs, "rest_log_mass": rest_log_mass}
    return jnp.sum(lm_common.sparse_token_divergence(student, cache, divergence="jsd", temperature=2.0, **EXTRA))

  grads = jax.jit(jax.grad(sparse_loss, argnums=(0, 1, 2)), compiler_options=FAST_COMPILE)(
      student, top["top_log_probs"], top["rest_log_mass"])
  assert not np.any(np.asarray(grads[1])) and not np.any(np.asarray(grads[2]))
  dense = jax.jit(jax.grad(lambda s: jnp.sum(losses.token_generalized_jsd(
      s, teacher_cache.dense_log_probs(top, 6), beta=0.3, temperature=2.0))), compiler_options=FAST_COMPILE)(student)
  np.testing.assert_allclose(grads[0], dense, atol=1e-6)
  assert np.abs(np.asarray(grads[0])).max() > 1e-3


@pytest.mark.parametrize("vocab_s,vocab_t,k", [(5, 8, 3), (8, 4, 2), (5, 8, 8), (3, 7, 5)])
def test_uld_against_a_top_k_teacher_equals_uld_against_its_sorted_rebuild(vocab_s, vocab_t, k):
  rng = np.random.default_rng(vocab_s * 10 + k)
  student = np.sort(rng.dirichlet(np.ones(vocab_s), size=(2, 3)), axis=-1)[..., ::-1]
  head = np.sort(rng.dirichlet(np.ones(k + 1), size=(2, 3)), axis=-1)[..., ::-1]
  mass = head[..., k:].sum(-1) if vocab_t > k else np.zeros((2, 3))  # The tail's mass, spread evenly.
  head = head[..., :k] / (1.0 if vocab_t > k else head[..., :k].sum(-1, keepdims=True))
  tail = mass / max(vocab_t - k, 1)
  head = np.maximum(head, tail[..., None])  # The tail entries are at most the smallest of the k.
  teacher = np.concatenate([head, np.repeat(tail[..., None], vocab_t - k, axis=-1)], axis=-1)
  expected = lm_uld.uld_distance(jnp.asarray(student), jnp.asarray(teacher))
  closed_form = jax.jit(lm_uld.uld_distance_top_k)(jnp.asarray(student), jnp.asarray(head), jnp.asarray(tail),
                                                  jnp.full((2, 3), vocab_t))
  np.testing.assert_allclose(closed_form, expected, rtol=1e-5, atol=1e-6)


# --- Each cacheable method: its loss from the cache (k = V) equals its loss from the live teacher -----------


def _cache_of(teacher_logits_NxLxV, k, features=None):
  cache = {name: np.asarray(value) for name, value in teacher_cache.top_k_log_probs(teacher_logits_NxLxV, k).items()}
  cache["vocab_size"] = np.full(len(teacher_logits_NxLxV), teacher_logits_NxLxV.shape[-1], np.int32)
  cache.update({f"features/{path}": value for path, value in (features or {}).items()})
  return cache


@functools.partial(jax.jit, static_argnames=("name", "runs"), compiler_options=FAST_COMPILE)
def _method_losses(student_out, batch, live_out, caches, *, name, runs):
  """[(loss, terms)] of the method for each run (teacher, params); one compile for them all.

  A run's teacher is "live" (live_out), ("cache", i, num_classes, k) (caches[i] read by the trainer's
  cached apply) or ("rebuilt", i, vocab_size) (caches[i] rebuilt to dense log-probabilities).
  """
  results = []
  for teacher, params in runs:
    if teacher == "live":
      teacher_out = live_out
    elif teacher[0] == "cache":
      teacher_out = teacher_cache.make_cached_apply(teacher[2], teacher[3])(caches[teacher[1]], batch)
    else:
      rows = {key: jnp.take(caches[teacher[1]][key], batch["index"], axis=0) for key in teacher_cache.TOP_K_KEYS}
      teacher_out = {"logits": teacher_cache.dense_log_probs(rows, teacher[2])}
    results.append(methods.build_loss(methods.method_config(name, **dict(params)))(student_out, teacher_out, batch))
  return results


def _same_vocabulary_case(rng, vocab=7):
  batch = {"tokens": jnp.asarray(rng.integers(0, vocab, (2, 5)), jnp.int32),
           "mask": jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool), "index": jnp.asarray([2, 0], jnp.int32)}
  student = {"logits": jnp.asarray(rng.normal(size=(2, 5, vocab)), jnp.float32),
             "features": {"final_norm": jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32)}}
  teacher_logits = rng.normal(size=(3, 5, vocab)).astype(np.float32) * 2  # Three examples; the batch reads 2, 0.
  teacher_features = rng.normal(size=(3, 5, 4)).astype(np.float32)
  live = {"logits": jnp.asarray(teacher_logits[[2, 0]]),
          "features": {"final_norm": jnp.asarray(teacher_features[[2, 0]])}}
  return batch, student, teacher_logits, teacher_features, live


@pytest.mark.parametrize("name,params", [
    ("lm_kd", (("divergence", "skew_forward_kl"), ("temperature", 2.0), ("ce_weight", 0.5))),
    ("lm_distilbert", (("init_from_teacher", False),)),  # KL at T = 2 and the cosine of the cached hidden states.
])
def test_each_same_vocabulary_method_reads_the_cache_as_the_live_teacher(name, params):
  batch, student, teacher_logits, teacher_features, live = _same_vocabulary_case(np.random.default_rng(2))
  caches = (_cache_of(teacher_logits, 7, {"final_norm": teacher_features}),
            _cache_of(teacher_logits, 3, {"final_norm": teacher_features}))
  runs = (("live", params),
          (("cache", 0, 7, 7), params + (("top_k_cache", "dense"),)),
          (("cache", 0, 7, 7), params + (("top_k_cache", "sparse"),)),
          (("cache", 1, 7, 3), params + (("top_k_cache", "sparse"),)),
          (("cache", 1, 7, 3), params + (("top_k_cache", "dense"),)))
  (expected, expected_terms), *from_cache, (sparse, sparse_terms), (dense, dense_terms) = _method_losses(
      student, batch, live, caches, name=name, runs=runs)
  for loss, terms in from_cache:  # k = V: the live teacher's loss, whether rebuilt or bucketed.
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(terms["teacher_agreement"], expected_terms["teacher_agreement"])
  # k < V: the sparse KD term is at most the dense rebuild's; the other terms are the same.
  assert 0 < float(sparse_terms["kd"]) < float(dense_terms["kd"])
  kd_weight = methods.method_config(name, **dict(params))["kd_weight"]
  np.testing.assert_allclose(sparse - dense, kd_weight * (sparse_terms["kd"] - dense_terms["kd"]), rtol=1e-4)


def test_uld_reads_a_cross_tokenizer_cache_as_the_live_teacher():
  rng = np.random.default_rng(3)
  vocab_s, vocab_t = 6, 9
  batch = {"tokens": jnp.asarray(rng.integers(0, vocab_s, (2, 5)), jnp.int32), "mask": jnp.ones((2, 5), bool),
           "teacher_tokens": jnp.asarray(rng.integers(0, vocab_t, (2, 7)), jnp.int32),
           "teacher_mask": jnp.asarray([[0, 1, 1, 1, 1, 1, 0], [1] * 7], bool), "index": jnp.asarray([1, 0], jnp.int32)}
  student = {"logits": jnp.asarray(rng.normal(size=(2, 5, vocab_s)), jnp.float32)}
  teacher_logits = rng.normal(size=(2, 7, vocab_t)).astype(np.float32) * 2
  params = (("temperature", 1.5),)
  # The cached apply gets the student's num_classes (what the trainer passes); ULD reads the teacher's vocab_size.
  runs = (("live", params), (("cache", 0, vocab_s, vocab_t), params),
          (("rebuilt", 1, vocab_t), params), (("cache", 1, vocab_s, 4), params))
  (live, _), (cached, _), (rebuilt, _), (top_4, _) = _method_losses(
      student, batch, {"logits": jnp.asarray(teacher_logits[[1, 0]])},
      (_cache_of(teacher_logits, vocab_t), _cache_of(teacher_logits, 4)), name="lm_uld", runs=runs)
  np.testing.assert_allclose(cached, live, rtol=1e-5)  # k = V_t: the live teacher's.
  np.testing.assert_allclose(top_4, rebuilt, rtol=1e-5)  # k < V_t: ULD against the dense rebuild.
  assert abs(float(top_4) - float(live)) > 1e-4


def test_the_cache_builder_feeds_a_cross_tokenizer_teacher_its_own_tokens(tmp_path):
  table = np.random.default_rng(4).normal(size=(9, 9)).astype(np.float32)
  teacher_apply = lambda variables, batch, train=False: {"logits": variables["table"][batch["tokens"]]}
  arrays = {"tokens": np.arange(10, dtype=np.int32).reshape(2, 5) % 6,
            "teacher_tokens": (np.arange(14, dtype=np.int32).reshape(2, 7) * 5) % 9}
  cached = teacher_cache.load_or_build(str(tmp_path), "teacher", "a-teacher-fingerprint", dataset="words",
                                       split="train", image_size=0, arrays=arrays, teacher_apply=teacher_apply,
                                       teacher_variables={"table": table}, feature_paths=(), top_k=3, batch_size=4)
  expected = teacher_cache.top_k_log_probs(table[arrays["teacher_tokens"]], 3)
  np.testing.assert_array_equal(cached["top_indices"], expected["top_indices"])
  np.testing.assert_allclose(cached["top_log_probs"], expected["top_log_probs"], rtol=1e-6)
  np.testing.assert_array_equal(cached["vocab_size"], [9, 9])


# --- Config: how it is selected, and what cannot work --------------------------------------------------------


def _lm_config(**method):
  config = config_lib.base_config()
  config.data.name = "stdlib_text"
  config.stages.teacher = config_lib.stage_config({"name": "transformer_lm"}, {"name": "lm_supervised"}, num_steps=1)
  config.stages.student = config_lib.stage_config({"name": "transformer_lm"}, {"name": "lm_kd", **method},
                                                  teacher="teacher", num_steps=1)
  config.stage_order = ("teacher", "student")
  config.report.update(teacher="teacher", baseline="teacher", student="student")
  return config


def test_the_sparse_path_is_a_method_parameter_that_needs_a_top_k_cache():
  config = _lm_config(top_k_cache="sparse")
  with pytest.raises(ConfigError, match=r"^stages.student.method.top_k_cache='sparse' reads the teacher cache's top "
                                        r"k, but teacher_cache.enabled=False and top_k=0: set .*, or "
                                        r"top_k_cache='dense'$"):
    config_lib.validate(config)
  config.teacher_cache.update(enabled=True, top_k=8)
  config_lib.validate(config)
  with pytest.raises(ConfigError, match=r"top_k_cache='buckets': choose one of \('dense', 'sparse'\)"):
    methods.check_method_config(methods.method_config("lm_kd", top_k_cache="buckets"), "method")
  with pytest.raises(ConfigError, match="top_k_cache='sparse' reads the teacher's cached top k but chunk_size=16"):
    methods.check_method_config(methods.method_config("lm_kd", top_k_cache="sparse", chunk_size=16), "method")
  config.stages.student.method = methods.method_config("lm_distilbert")
  with pytest.raises(ConfigError, match="^stages.student.method.init_from_teacher=True copies the teacher's weights"):
    config_lib.validate(config)
  # Every LM method that reads the teacher's distribution offline is cacheable; those that run it are not.
  assert lm_kd.CACHEABLE and lm_uld.CACHEABLE and lm_distilbert.CACHEABLE
  assert not any(getattr(methods.METHODS[name], "CACHEABLE", False) for name in ("lm_gkd", "lm_seqkd"))


def test_the_default_keeps_the_identity_of_stages_recorded_before_it():
  config = _lm_config()
  before = config.stages.student.method.to_dict()
  del before["top_k_cache"]  # The method block as kd wrote it before the parameter existed.
  recorded = _lm_config()
  recorded.stages.student.method = before
  assert fingerprint.identity(config, "student", 0) == fingerprint.identity(recorded, "student", 0)
  sparse = _lm_config(top_k_cache="sparse")
  assert fingerprint.identity(sparse, "student", 0) != fingerprint.identity(config, "student", 0)


# --- A stage trained from a sparse top-k cache -------------------------------------------------------------


def test_a_tiny_lm_stage_trains_from_a_sparse_top_k_cache(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("the cat sat on the mat the dog ran on a mat " * 12)
  name = text_files.dataset_name(train=str(corpus), test=os.path.join(FIXTURES, "story.txt"),
                                 tokenizer=os.path.join(FIXTURES, "wordlevel"), max_length=12)
  from kd import data  # pylint: disable=g-import-not-at-top
  spec = data.load_spec(name)
  tiny = models.model_config("transformer_lm", num_layers=1, width=16, num_heads=2, max_len=12)
  teacher_module = models.build_model(tiny, spec.num_classes)
  # A random teacher of the model's structure, traced (not compiled): what it knows does not matter here.
  shapes = jax.eval_shape(functools.partial(models.init_variables, teacher_module), jax.random.key(1),
                          np.zeros((1, 12), np.int32))
  rng = np.random.default_rng(5)
  variables = jax.tree.map(lambda shape: (rng.normal(size=shape.shape) * 0.3).astype(shape.dtype), shapes)
  checkpoint.export_model(str(tmp_path / "teacher"), tiny, spec, variables)
  config = config_lib.base_config()
  config.data.name = name
  config.data.validation_split, config.data.test_split = "", "test"
  config.data.batch_size, config.data.eval_batch_size = 4, 16
  config.teacher_cache.update(enabled=True, top_k=4)
  config.stages.student = config_lib.stage_config(tiny, {"name": "lm_kd", "top_k_cache": "sparse", "temperature": 2.0},
                                                  teacher=f"export:{tmp_path / 'teacher'}", num_steps=4,
                                                  learning_rate=1e-2, warmup_steps=1)
  config.stage_order = ("student",)
  config.report.update(teacher="student", baseline="student", student="student")
  config.log_every_steps = 1
  config_lib.validate(config)
  run_dir = str(tmp_path / "run")
  result = train.train_stage(config, "student", run_dir, seed=0)
  assert result["step"] == 4 and 1 < result["test/perplexity"] < float("inf")
  (folder,) = os.listdir(os.path.join(run_dir, "teacher_cache"))
  with open(os.path.join(run_dir, "teacher_cache", folder, teacher_cache.CACHE_JSON)) as f:
    meta = json.load(f)
  assert meta["format"] == teacher_cache.FORMAT_VERSION and meta["vocab_size"] == spec.num_classes == 27
  assert set(meta["shapes"]) == set(teacher_cache.TOP_K_KEYS) and meta["shapes"]["top_indices"] == [12, 4]
  with open(os.path.join(run_dir, "student", "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if '"train/kd"' in line]
  kd_values = [row["train/kd"] for row in rows]
  assert len(kd_values) == 4 and all(0 < value < float("inf") for value in kd_values)
  assert kd_values[-1] < kd_values[0], kd_values
