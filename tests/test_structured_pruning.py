"""kd.structured_pruning: exactness at keep=1, dead channels removed without a change, rankings, the CLI."""

import functools
import json
import os
import runpy
import sys
from unittest import mock
import warnings

import jax
import numpy as np
import pytest

from kd import checkpoint
from kd import external
from kd import models
from kd import structured_pruning
from kd.data import DatasetSpec
from kd.errors import ConfigError

IMAGE_SPEC = DatasetSpec(name="digits", input_key="image", input_shape=(8, 8, 1), input_dtype="uint8",
                         num_classes=5, split_sizes={"train": 10, "test": 10})


def _model(model_config, input_shape, num_classes=5, seed=0):
  """Random variables for a model: every array drawn, BatchNorm variances in [0.5, 2] (no compile: shapes by
  `jax.eval_shape`)."""
  module = models.build_model(model_config, num_classes)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1,) + input_shape, np.float32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if jax.tree_util.keystr(path).endswith("['var']"):
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.5, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@functools.lru_cache(maxsize=None)
def _compiled(frozen_config, num_classes):
  module = models.build_model(dict(frozen_config), num_classes)
  return jax.jit(lambda v, x: module.apply(v, x, train=False))


def _logits(model_config, variables, inputs, num_classes=5):
  # One compile per distinct model config: keep=1 rebuilds the original's for cnn, cnn1d and mlp.
  return np.asarray(_compiled(tuple(sorted(model_config.items())), num_classes)(variables, inputs))


def _inputs(input_shape, seed=1):
  return np.random.default_rng(seed).uniform(0, 1, (4,) + input_shape).astype(np.float32)


CASES = [
    ({"name": "cnn", "channels": (4, 6), "hidden": 7}, (8, 8, 1)),
    ({"name": "cnn", "channels": (4, 6), "hidden": 7, "batch_norm": False}, (8, 8, 1)),
    ({"name": "cnn1d", "channels": (5, 3), "kernel_size": 3, "hidden": 6}, (12, 1)),
    ({"name": "cnn1d", "channels": (5, 3), "kernel_size": 3}, (12, 1)),
    ({"name": "mlp", "hidden": (6, 4)}, (3, 3)),
    ({"name": "vgg", "depth": 8, "base_width": 4}, (16, 16, 3)),  # Widths 4, 8, 16, 32, 32.
    ({"name": "cifar_resnet", "depth": 8, "widths": (4, 4, 8, 8)}, (8, 8, 3)),
]
_IDS = [f"{c['name']}{i}" for i, (c, _) in enumerate(CASES)]


@pytest.mark.parametrize("model_config,input_shape", CASES, ids=_IDS)
def test_keep_one_is_the_model_array_for_array_and_bitwise(model_config, input_shape):
  variables = _model(model_config, input_shape)
  pruned_config, pruned_variables = structured_pruning.prune(model_config, variables, keep=1.0)
  if model_config["name"] in ("vgg", "cifar_resnet"):  # Its Pruned* class at the full widths.
    assert pruned_config["name"] == {"vgg": structured_pruning.PRUNED_VGG,
                                     "cifar_resnet": structured_pruning.PRUNED_RESNET}[model_config["name"]]
  else:
    assert {k: v for k, v in pruned_config.items() if k in model_config} == model_config
  jax.tree.map(np.testing.assert_array_equal, pruned_variables, variables)
  inputs = _inputs(input_shape)
  np.testing.assert_array_equal(_logits(pruned_config, pruned_variables, inputs),
                                _logits(model_config, variables, inputs))


def _dead(variables, layer, channels):
  """Makes `channels` of a layer output a constant ReLU(0) = 0: zero BatchNorm scale and bias, else zero
  weights and bias."""
  params = variables["params"]
  if layer.norm:
    norm = structured_pruning._at(params, layer.norm)  # pylint: disable=protected-access
    norm["scale"][channels] = 0.0
    norm["bias"][channels] = 0.0
  else:
    producer = structured_pruning._at(params, layer.name)  # pylint: disable=protected-access
    producer["kernel"][..., channels] = 0.0
    if "bias" in producer:
      producer["bias"][channels] = 0.0


@pytest.mark.parametrize("model_config,input_shape", CASES, ids=_IDS)
def test_removing_channels_that_output_zero_leaves_the_logits(model_config, input_shape):
  variables = _model(model_config, input_shape)
  plan = structured_pruning.layers(model_config)
  full = structured_pruning.widths_of(model_config, variables)
  dead = {name: [i for i in range(width) if i % 3 == 1] for name, width in full.items()}
  for layer in plan:
    _dead(variables, layer, dead[layer.name])
  survivors = {name: [i for i in range(width) if i not in dead[name]] for name, width in full.items()}
  widths = {name: len(kept) for name, kept in survivors.items()}
  pruned_config, pruned_variables = structured_pruning.prune(model_config, variables, widths=widths)
  assert structured_pruning.widths_of(pruned_config, pruned_variables) == widths
  # The survivors, in their order, on both axes: each layer's kept filters read the previous one's kept
  # channels (a residual block's second convolution keeps all its outputs).
  for layer in plan:
    if layer.reader_flattens:
      continue  # Rows by position and channel: test_flatten_reader_keeps_every_position_of_the_kept_channels.
    reader = structured_pruning._at(variables["params"], layer.reader)["kernel"]  # pylint: disable=protected-access
    expected = np.take(reader, survivors[layer.name], axis=reader.ndim - 2)
    if layer.reader in survivors:  # The reader is pruned too: its kept outputs.
      expected = expected[..., survivors[layer.reader]]
    np.testing.assert_array_equal(structured_pruning._at(pruned_variables["params"], layer.reader)["kernel"],  # pylint: disable=protected-access
                                  expected)
  inputs = _inputs(input_shape)
  np.testing.assert_allclose(_logits(pruned_config, pruned_variables, inputs),
                             _logits(model_config, variables, inputs), atol=1e-6, rtol=1e-6)


def test_flatten_reader_keeps_every_position_of_the_kept_channels():
  model_config = {"name": "cnn", "channels": (3,), "hidden": 2}
  variables = _model(model_config, (4, 4, 1))
  variables["params"]["norm0"]["scale"][:] = [0.1, -3.0, 2.0]  # |gamma| keeps channels 1 and 2.
  rows = variables["params"]["hidden"]["kernel"]  # [2 x 2 positions x 3 channels, 2]: row = p * 3 + c.
  _, pruned = structured_pruning.prune(model_config, variables, widths={"conv0": 2})
  expected = rows[[p * 3 + c for p in range(4) for c in (1, 2)]]
  np.testing.assert_array_equal(pruned["params"]["hidden"]["kernel"], expected)
  np.testing.assert_array_equal(pruned["batch_stats"]["norm0"]["var"], variables["batch_stats"]["norm0"]["var"][1:])


def test_l1_ranking_is_greedy_over_the_kept_inputs():
  """Li et al. 2017, Sec. 3.2: dense1's column 0 reads only the unit dense0 removes, so it then ranks last."""
  model_config = {"name": "mlp", "hidden": (3, 2)}
  variables = _model(model_config, (2,))
  params = variables["params"]
  params["dense0"]["kernel"][:] = [[0.1, 1.0, 2.0], [0.1, -1.0, 2.0]]  # L1 0.2, 2, 4: unit 0 goes.
  params["dense1"]["kernel"][:] = [[5.0, 0.0], [0.0, 1.0], [0.0, -1.0]]  # L1 5, 2; over units 1, 2: 0, 2.
  assert structured_pruning.importance(model_config, variables)["dense1"].tolist() == [5.0, 2.0]
  pruned_config, pruned = structured_pruning.prune(model_config, variables, widths={"dense0": 2, "dense1": 1})
  assert pruned_config["hidden"] == (2, 1)
  np.testing.assert_array_equal(pruned["params"]["dense1"]["kernel"], [[1.0], [-1.0]])
  np.testing.assert_array_equal(pruned["params"]["head"]["kernel"], params["head"]["kernel"][[1]])


def test_counts_round_up_and_params_target_is_the_largest_keep_that_fits():
  assert [structured_pruning.kept_count(k, w) for k, w in ((0.3, 10), (0.5, 25), (1e-6, 64), (1.0, 7))] == [3, 13, 1, 7]
  model_config = {"name": "cnn", "channels": (8, 16), "hidden": 32}
  variables = _model(model_config, (8, 8, 1))

  def count(keep):
    return models.count_params(structured_pruning.prune(model_config, variables, keep=keep)[1]["params"])

  keep = structured_pruning.keep_for_params(model_config, variables, 2000)
  assert count(keep) <= 2000 < count(keep + 2e-4)
  assert structured_pruning.keep_for_params(model_config, variables, 10**9) == 1.0
  with pytest.raises(ConfigError, match="one channel per layer"):
    structured_pruning.keep_for_params(model_config, variables, 10)


def test_bad_arguments_are_one_config_error():
  model_config = {"name": "cnn", "channels": (2,), "hidden": 2}
  variables = _model(model_config, (4, 4, 1))
  for keep in (0.0, 1.5, True, "half"):
    with pytest.raises(ConfigError, match=r"keep=.* must be a fraction in \(0, 1\]"):
      structured_pruning.prune(model_config, variables, keep=keep)
  with pytest.raises(ConfigError, match=r"lacks; its prunable layers are \['conv0', 'hidden'\]"):
    structured_pruning.prune(model_config, variables, widths={"conv1": 1})
  with pytest.raises(ConfigError, match=r"widths\['hidden'\]=3 must be an integer in \[1, 2\]"):
    structured_pruning.prune(model_config, variables, widths={"hidden": 3})
  with pytest.raises(ConfigError, match=r"model 'wrn' is not supported; .*\['cnn', 'cnn1d', 'mlp', 'vgg', "):
    structured_pruning.prune({"name": "wrn"}, variables, keep=0.5)


def test_cli_writes_a_loadable_export_that_init_from_accepts(tmp_path, capsys):
  model_config = models.model_config("cnn", channels=(4, 6), hidden=8)
  variables = _model(model_config, (8, 8, 1))
  source, destination = str(tmp_path / "teacher"), str(tmp_path / "pruned")
  checkpoint.export_model(source, model_config, IMAGE_SPEC, variables)
  structured_pruning.main([source, destination, "--keep=0.5"])  # As `python -m kd.structured_pruning` runs it.
  printed = capsys.readouterr().out
  assert "channels=(4, 6), hidden=8 -> channels=(2, 3), hidden=4" in printed
  assert f"--config.stages.<stage>.init_from=export:{destination}" in printed
  loaded = checkpoint.load_model(destination)
  expected_config, expected_variables = structured_pruning.prune(model_config, variables, keep=0.5)
  assert loaded.model_config == expected_config and loaded.spec == IMAGE_SPEC
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.variables), expected_variables)
  module = models.build_model(expected_config, IMAGE_SPEC.num_classes)
  started = external.read_checkpoint(destination, expected_config, module, IMAGE_SPEC.input_shape, "init_from")
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, started), expected_variables)

  # Bad input: one `error:` line and status 2, nothing written.
  unsupported = tmp_path / "wrn"
  unsupported.mkdir()
  (unsupported / "model.json").write_text(json.dumps({"model": {"name": "wrn", "depth": 16},
                                                      "dataset": {"name": "cifar10"}}))
  for argv, message in (([source, destination, "--keep=0.5"], "exists and is not an empty folder"),
                        ([source, str(tmp_path / "new"), "--keep=1.5"], "keep=1.5 must be a fraction in (0, 1]"),
                        ([source, str(tmp_path / "new"), "--keep=0"], "keep=0.0 must be a fraction in (0, 1]"),
                        ([source, str(tmp_path / "new")], "say how much to keep"),
                        ([str(unsupported), str(tmp_path / "new"), "--keep=0.5"], "model 'wrn' is not supported")):
    with pytest.raises(SystemExit) as exited:
      structured_pruning.main(argv)
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.startswith("error: ") and message in error, error
    assert error.count("\n") == 1
  assert not os.path.exists(tmp_path / "new")


def test_pruned_resnet_through_python_m_loads_and_prunes_again(tmp_path):
  model_config = models.model_config("cifar_resnet", depth=8, widths=(4, 4, 8, 8), preprocess="cifar10")
  spec = DatasetSpec(name="cifar10", input_key="image", input_shape=(8, 8, 3), input_dtype="uint8",
                     num_classes=5, split_sizes={"train": 10, "test": 10})
  variables = _model(model_config, spec.input_shape)
  source, destination = str(tmp_path / "teacher"), str(tmp_path / "pruned")
  checkpoint.export_model(source, model_config, spec, variables)
  # As `python -m` runs it (the module as `__main__`, here without a second interpreter): the config it
  # writes must name the class by a path that a later process imports.
  with mock.patch.object(sys, "argv", ["kd.structured_pruning", source, destination, "--keep=0.5"]), \
      warnings.catch_warnings():
    warnings.filterwarnings("ignore", "'kd.structured_pruning' found in sys.modules", RuntimeWarning)
    runpy.run_module("kd.structured_pruning", run_name="__main__", alter_sys=True)
  pruned_config, pruned_variables = structured_pruning.prune(model_config, variables, keep=0.5)
  assert structured_pruning.PRUNED_RESNET == models.import_path(structured_pruning.PrunedCifarResNet)
  assert structured_pruning.PRUNED_VGG == models.import_path(structured_pruning.PrunedVGG)
  assert pruned_config["name"] == structured_pruning.PRUNED_RESNET and pruned_config["preprocess"] == "cifar10"
  assert pruned_config["inner_widths"] == (2, 4, 4) and pruned_config["widths"] == (4, 4, 8, 8)
  # The residual path is whole: the second convolutions and shortcuts keep the stage widths.
  assert pruned_variables["params"]["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 4, 8)
  assert pruned_variables["params"]["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 4, 8)
  loaded = checkpoint.load_model(destination)
  assert loaded.model_config == pruned_config
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.variables), pruned_variables)
  again_config, again = structured_pruning.prune(loaded.model_config, loaded.variables, widths={"layer3_0/conv1": 1})
  assert again_config["inner_widths"] == (2, 4, 1)
  assert again["params"]["layer3_0"]["conv2"]["kernel"].shape == (3, 3, 1, 8)
