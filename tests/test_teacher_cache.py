"""Teacher-output cache: top-k log-probabilities, the key, rebuild when stale, reads by example index."""

import functools
import json
import os

from array_record.python import array_record_module
import flax.serialization
import jax
import numpy as np
import pytest

from kd import checkpoint
from kd import config as config_lib
from kd import data
from kd import methods
from kd import models
from kd import teacher_cache
from kd import train
from kd.errors import ConfigError
from kd.errors import UserError

MLP = models.model_config("mlp", hidden=(8,))


def test_top_k_keeps_the_head_and_spreads_the_remaining_mass():
  probs = np.array([0.1, 0.5, 0.1, 0.3])
  top = teacher_cache.top_k_log_probs(np.log(probs) + 2.0, 2)  # Shifted logits: same softmax.
  np.testing.assert_allclose(np.exp(top["top_log_probs"]), [0.5, 0.3], rtol=1e-6)
  np.testing.assert_array_equal(top["top_indices"], [1, 3])
  np.testing.assert_allclose(np.exp(top["rest_log_mass"]), 0.2, rtol=1e-5)
  dense = np.exp(teacher_cache.dense_log_probs(top, 4))
  np.testing.assert_allclose(dense, [0.1, 0.5, 0.1, 0.3], rtol=1e-5)  # Here the rest was uniform.


def test_top_k_works_for_logits_of_any_rank():
  logits_BxLxV = np.random.default_rng(0).normal(size=(2, 3, 11)).astype(np.float32) * 3
  exact = jax.nn.log_softmax(logits_BxLxV)
  full = teacher_cache.top_k_log_probs(logits_BxLxV, 11)
  np.testing.assert_allclose(teacher_cache.dense_log_probs(full, 11), exact, atol=1e-5)
  top = teacher_cache.top_k_log_probs(logits_BxLxV, 4)
  assert top["top_log_probs"].shape == (2, 3, 4) and top["rest_log_mass"].shape == (2, 3)
  dense = np.asarray(teacher_cache.dense_log_probs(top, 11))
  np.testing.assert_allclose(np.exp(dense).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.argsort(-dense, -1)[..., :4], np.argsort(-np.asarray(exact), -1)[..., :4])
  np.testing.assert_allclose(np.take_along_axis(dense, np.asarray(top["top_indices"]), -1), top["top_log_probs"])


def _export_teacher(stage_dir, seed, spec):
  module = models.build_model(MLP, spec.num_classes)
  variables = models.init_variables(module, jax.random.PRNGKey(seed), np.zeros((1,) + spec.input_shape, np.uint8))
  checkpoint.export_model(str(stage_dir), MLP, spec, jax.device_get(variables))
  return checkpoint.load_model(str(stage_dir))


def _build(root, teacher, arrays, top_k=0):
  return teacher_cache.load_or_build(
      str(root), "teacher", str(root.parent / "teacher"), dataset="synthetic/4x6x3_7_70", split="train",
      image_size=0, arrays=arrays, teacher_apply=teacher.apply, teacher_variables=teacher.variables,
      feature_paths=(), top_k=top_k, batch_size=16)


def test_the_cache_is_built_once_read_by_index_and_rebuilt_when_stale(tmp_path):
  spec = data.load_spec("synthetic/4x6x3_7_70")
  arrays = data.load_arrays("synthetic/4x6x3_7_70", "train")
  teacher = _export_teacher(tmp_path / "teacher", 0, spec)
  root = tmp_path / "cache"
  cached = _build(root, teacher, arrays)
  folder = teacher_cache.cache_folder(str(root), "teacher", "train")
  records = os.path.join(folder, teacher_cache.RECORDS)
  with open(os.path.join(folder, teacher_cache.CACHE_JSON)) as f:
    meta = json.load(f)
  assert meta["num_examples"] == 70 and cached["logits"].shape == (70, 7)
  expected = np.asarray(teacher.apply(teacher.variables, arrays, train=False)["logits"])
  np.testing.assert_allclose(cached["logits"], expected, atol=1e-5)

  # The trainer's teacher: rows gathered by the batch's "index".
  batch = {"index": np.array([5, 0, 69], np.int32)}
  read = teacher_cache.make_cached_apply(7, 0)(cached, batch)
  np.testing.assert_allclose(read["logits"], expected[[5, 0, 69]], atol=1e-5)

  # Same teacher, same data: read, not rebuilt.
  stamp = os.stat(records).st_mtime_ns
  _build(root, teacher, arrays)
  assert os.stat(records).st_mtime_ns == stamp
  # Another teacher in the same stage folder: the key differs, the cache is rebuilt with its outputs.
  other = _export_teacher(tmp_path / "teacher", 1, spec)
  rebuilt = _build(root, other, arrays)
  np.testing.assert_allclose(rebuilt["logits"], other.apply(other.variables, arrays, train=False)["logits"],
                             atol=1e-5)
  with open(os.path.join(folder, teacher_cache.CACHE_JSON)) as f:
    assert json.load(f)["key"] != meta["key"]
  # Other data (one example changed): rebuilt too.
  changed = {**arrays, "image": arrays["image"].copy()}
  changed["image"][3] = 255 - changed["image"][3]
  rebuilt = _build(root, other, changed)
  np.testing.assert_allclose(rebuilt["logits"][3], other.apply(other.variables, {"image": changed["image"][3:4]},
                                                               train=False)["logits"][0], atol=1e-5)
  # Top-k: a different key and representation.
  top = _build(root, other, changed, top_k=3)
  assert top["top_log_probs"].shape == (70, 3) and "logits" not in top


def test_a_folder_of_another_format_or_with_missing_arrays_is_rebuilt_and_a_newer_one_refused(tmp_path):
  spec = data.load_spec("synthetic/4x6x3_7_70")
  arrays = data.load_arrays("synthetic/4x6x3_7_70", "train")
  teacher = _export_teacher(tmp_path / "teacher", 0, spec)
  root = tmp_path / "cache"
  folder = teacher_cache.cache_folder(str(root), "teacher", "train")
  meta_path, records = os.path.join(folder, teacher_cache.CACHE_JSON), os.path.join(folder, teacher_cache.RECORDS)
  expected = _build(root, teacher, arrays, top_k=3)
  with open(meta_path) as f:
    meta = json.load(f)
  assert meta["format"] == teacher_cache.FORMAT_VERSION == 1 and meta["vocab_size"] == 7
  assert sorted(meta["shapes"]) == ["rest_log_mass", "top_indices", "top_log_probs"]

  def rewrite(**changes):
    with open(meta_path, "w") as f:
      json.dump({**meta, **changes}, f)
    return os.stat(records).st_mtime_ns

  # A cache.json of this format from before the vocabulary was recorded: read as it is, not rebuilt.
  stamp = rewrite(vocab_size=None)
  assert "vocab_size" not in _build(root, teacher, arrays, top_k=3) and os.stat(records).st_mtime_ns == stamp
  # Rebuilt, never misread: an older format, a cache.json without an array, records without one.
  for changes in ({"format": 0}, {"shapes": {"top_log_probs": [3], "top_indices": [3]}}):
    stamp = rewrite(**changes)
    rebuilt = _build(root, teacher, arrays, top_k=3)
    assert os.stat(records).st_mtime_ns != stamp, changes
    np.testing.assert_array_equal(rebuilt["top_indices"], expected["top_indices"])
  writer = array_record_module.ArrayRecordWriter(records, "group_size:1")
  for row in range(70):  # Records that lack rest_log_mass although cache.json lists it.
    writer.write(flax.serialization.msgpack_serialize({"top_log_probs": expected["top_log_probs"][row],
                                                       "top_indices": expected["top_indices"][row]}))
  writer.close()
  np.testing.assert_allclose(_build(root, teacher, arrays, top_k=3)["rest_log_mass"], expected["rest_log_mass"])
  # A newer format is refused with one line, and the folder is left as it is.
  stamp = rewrite(format=teacher_cache.FORMAT_VERSION + 1)
  with pytest.raises(UserError, match=r"^teacher cache .* was written in format 2 by a newer kd, and this kd reads "
                                      r"format 1: point teacher_cache.dir elsewhere, or remove that folder") as error:
    _build(root, teacher, arrays, top_k=3)
  assert "\n" not in str(error.value) and os.stat(records).st_mtime_ns == stamp


def test_a_cached_teacher_step_equals_a_live_teacher_step(tmp_path):
  spec = data.load_spec("synthetic/4x6x3_7_70")
  arrays = data.load_arrays("synthetic/4x6x3_7_70", "train")
  teacher = _export_teacher(tmp_path / "teacher", 0, spec)
  cached = _build(tmp_path / "cache", teacher, arrays)
  batch = next(data.train_iterator(arrays, batch_size=16, seed=0, prefetch=0))
  student = models.build_model(MLP, 7)
  optimizer, schedule = train.make_optimizer(config_lib.optimizer_config(), 10)
  state = train.init_train_state(jax.random.PRNGKey(3), batch, module=student, optimizer=optimizer)
  step = functools.partial(train.train_step, student_apply=models.make_apply(student), optimizer=optimizer,
                           learning_rate=schedule, loss_fn=methods.build_loss(methods.method_config("hinton_kd")))
  _, live = jax.jit(functools.partial(step, teacher_apply=teacher.apply))(state, teacher.variables, batch)
  _, read = jax.jit(functools.partial(step, teacher_apply=teacher_cache.make_cached_apply(7, 0)))(
      state, cached, batch)
  np.testing.assert_allclose(read["kd"], live["kd"], rtol=1e-5)
  np.testing.assert_allclose(read["loss"], live["loss"], rtol=1e-5)


def test_a_cache_with_augmentation_needs_an_explicit_opt_in():
  config = config_lib.base_config()
  config.stages.s = config_lib.stage_config({"name": "mlp"}, {"name": "supervised"}, num_steps=2)
  config.stage_order = ("s",)
  config.report.update(teacher="s", baseline="s", student="s")
  config.teacher_cache.enabled = True
  config_lib.validate(config)
  config.data.augment.mixup_alpha = 0.2
  with pytest.raises(ConfigError, match=r"^teacher_cache.enabled=True but data.augment changes the inputs.*"
                                        r"allow_augment=True"):
    config_lib.validate(config)
  config.teacher_cache.allow_augment = True
  config_lib.validate(config)
  config.teacher_cache.top_k = -1
  with pytest.raises(ConfigError, match="teacher_cache.top_k=-1 must be >= 0"):
    config_lib.validate(config)
