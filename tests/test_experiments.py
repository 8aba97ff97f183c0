"""Every experiment file builds and validates, in every variant, so none can rot."""

import glob
import os

import pytest

from conftest import REPO
from kd import experiment

EXPERIMENTS = sorted(glob.glob(os.path.join(REPO, "experiments", "*.py")))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_experiment_config_is_valid(path, variant):
  config = experiment.load_config(path, variant)
  assert config.stage_order
  for name in config.stage_order:  # 0 steps only for a stage that starts from weights (an ensemble's).
    assert config.stages[name].num_steps > 0 or config.stages[name].init_from


def test_the_smoke_variant_is_small():
  config = experiment.load_config(os.path.join(REPO, "experiments", "quickstart.py"), "smoke")
  assert all(stage.num_steps <= 50 for stage in config.stages.values())
  assert config.seeds == (0,)
