"""The learning rate scaled with the global batch size (optimizer.lr_scaling), as more devices or hosts allow."""

import pytest

from kd import config as config_lib
from kd import distributed
from kd import train
from kd.errors import ConfigError


@pytest.mark.parametrize("rule, expected", [("none", 1e-3), ("linear", 4e-3), ("sqrt", 2e-3)])
def test_peak_learning_rate_follows_the_rule(rule, expected):
  assert distributed.scaled_learning_rate(1e-3, rule, 256, 64) == pytest.approx(expected)
  optimizer = config_lib.optimizer_config(learning_rate=1e-3, schedule="constant", lr_scaling=rule,
                                          base_batch_size=64)
  _, schedule = train.make_optimizer(optimizer, 10, batch_size=256)
  assert float(schedule(0)) == pytest.approx(expected)
  _, unscaled = train.make_optimizer(optimizer, 10)  # No batch size given: the rate as written.
  assert float(unscaled(0)) == pytest.approx(1e-3)


def test_bad_rule_is_a_config_error():
  config = config_lib.base_config()
  config.stages.a = config_lib.stage_config({"name": "cnn"}, {"name": "supervised"}, lr_scaling="cubic")
  config.stage_order = ("a",)
  config.report.teacher = config.report.baseline = config.report.student = "a"
  with pytest.raises(ConfigError, match=r"stages.a.optimizer.lr_scaling='cubic': choose one of"):
    config_lib.validate(config)
