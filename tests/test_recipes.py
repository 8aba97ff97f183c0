"""Every paper file's configs match its RECIPE, the table of the reference's hyperparameters.

Each paper file holds `RECIPE`, rows built with `kd.cifar100_benchmark.recipe_row`: a setting of the
released code or the paper, the config key it becomes, kd's value and its source, and where kd
departs, why. Here every sweep point of every paper file is built (configs only, nothing trains) and
  - every row is checked against each stage it names (a later row for the same stage and key
    overrides an earlier one), so a config cannot drift from the table silently;
  - every method parameter, optimizer setting, step count and preprocessing of every stage is named by
    some row, so a new parameter cannot slip in without a source.
"""

import functools
import importlib.util
import math
import os

import pytest

from conftest import REPO
from kd import optimizer as optimizer_lib

PAPER_FILES = ("tian2020_crd.py", "romero2015_fitnets.py", "zagoruyko2017_at.py", "huang2022_dist.py",
               "sun2024_logit_std.py", "zhao2022_dkd.py", "hinton2015.py")
ROW_KEYS = {"setting", "key", "value", "source", "stages", "by", "departs", "reference"}
# Stage keys every row set must cover, beyond the method's parameters and the optimizer's settings.
STAGE_KEYS = ("num_steps", "model.preprocess", "method.name")


@functools.lru_cache(maxsize=None)
def _module(name):
  path = os.path.join(REPO, "experiments", name)
  spec = importlib.util.spec_from_file_location(f"recipe_{name[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _sweep_args(module) -> list[str | None]:
  args = []
  module.sweep(lambda arg=None, **unused: args.append(arg))
  return args


def _parse(arg: str | None) -> dict[str, str]:
  return dict(item.partition("=")[::2] for item in (arg or "").split(",") if item)


def _lookup(tree, key: str):
  for part in key.split("."):
    if part not in tree:
      raise KeyError(part)
    tree = tree[part]
  return tree


def _plain(value):
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _same(actual, expected) -> bool:
  actual, expected = _plain(actual), _plain(expected)
  if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
    return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=0.0)
  return type(actual) is type(expected) and actual == expected if isinstance(expected, bool) else actual == expected


def _expected(module, row, stage: str, context: dict[str, str]):
  value = row["value"]
  if row["by"] is not None:
    selector = context["teacher"] if row["by"] == "model" and stage == "teacher" else context[
        "student" if row["by"] == "model" else row["by"]]
    assert selector in value or "*" in value, (
        f"{row['setting']!r} ({row['key']}) has no value for {row['by']}={selector!r} nor a '*' entry")
    value = value.get(selector, value.get("*"))
  if isinstance(value, dict) and "features" in value:
    taps = module.REFERENCE_FEATURES[context[value["of"]]][value["features"]]
    value = tuple(taps[value["from"]:value["to"]])
  return value


def _context(module, arg) -> dict[str, str]:
  args = _parse(arg)
  if not hasattr(module, "PAIRS"):
    return {}
  pair = args.get("pair", module.DEFAULT_PAIR)
  teacher, student = module.PAIRS[pair]
  return {"pair": pair, "teacher": teacher, "student": student}


def _points():
  return [(name, arg) for name in PAPER_FILES for arg in _sweep_args(_module(name))]


@pytest.mark.parametrize("name", PAPER_FILES)
def test_every_row_is_well_formed(name):
  module = _module(name)
  assert module.RECIPE, f"{name} has no RECIPE"
  for row in module.RECIPE:
    assert set(row) == ROW_KEYS, row
    assert row["setting"] and row["source"], f"{row['key']}: every row names its setting and its source"
    assert row["stages"] is None or row["stages"] == "*" or isinstance(row["stages"], tuple), row
    if row["by"] is not None:
      assert row["by"] in ("pair", "teacher", "student", "model") and isinstance(row["value"], dict), row
    if row["reference"] is not None:
      assert row["departs"], f"{row['key']}: a reference value different from kd's needs the reason"


@pytest.mark.parametrize("name", PAPER_FILES)
def test_every_sweep_point_matches_its_recipe(name):
  module = _module(name)
  failures = []
  for arg in _sweep_args(module):
    config = module.get_config(arg) if arg is not None else module.get_config()
    context = _context(module, arg)
    expected, covered = {}, set()
    for row in module.RECIPE:
      if row["stages"] is None:
        expected[(None, row["key"])] = row
        continue
      stages = config.stage_order if row["stages"] == "*" else [s for s in row["stages"] if s in config.stage_order]
      for stage in stages:
        expected[(stage, row["key"])] = row
    for (stage, key), row in expected.items():
      tree = config if stage is None else config.stages[stage]
      try:
        actual = _lookup(tree, key)
      except KeyError:
        option = key.removeprefix("optimizer.")
        if stage is None or option not in optimizer_lib.DEFAULTS:
          failures.append(f"{arg}: {stage}.{key} is not in the config ({row['setting']})")
          continue
        actual = optimizer_lib.DEFAULTS[option]  # What kd.optimizer reads where a block does not say.
      want = _expected(module, row, stage, context)
      if not _same(actual, want):
        failures.append(f"{arg}: {stage or 'config'}.{key} = {actual!r}, the recipe says {want!r} "
                        f"({row['setting']}, {row['source']})")
      covered.add((stage, key))
    for stage in config.stage_order:
      block = config.stages[stage]
      keys = list(STAGE_KEYS) + [f"method.{k}" for k in block.method if k != "name"] + [
          f"optimizer.{k}" for k in block.optimizer]
      for key in keys:
        try:
          value = _lookup(block, key)
        except KeyError:
          continue  # Not set in this config (a model without a stated preprocess).
        if (stage, key) not in covered:
          failures.append(f"{arg}: {stage}.{key} = {value!r} has no row in the recipe")
  assert not failures, "\n".join(failures[:40]) + (f"\n... {len(failures) - 40} more" if len(failures) > 40 else "")


def test_recipes_name_each_departure():
  """The rows where kd does not do what the reference does say so (the README lists them)."""
  departures = {name: [row["key"] for row in _module(name).RECIPE if row["departs"]] for name in PAPER_FILES}
  # The AT file restarts the momentum at each decay and initialises its WRN as the released code does.
  assert not departures["zagoruyko2017_at.py"], departures["zagoruyko2017_at.py"]
  # AB and FSP run RepDistiller's two stages (an init stage on the feature loss, then labels only).
  assert not {"method.ab_weight", "method.fsp_weight"} & set(departures["tian2020_crd.py"])
