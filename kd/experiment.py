"""Runs an experiment: its stages in order (each skipped when finished), then the report card."""

import os
from typing import Any, Sequence

from absl import logging
import jax
import ml_collections

from kd import config as config_lib
from kd import data
from kd import report as report_lib
from kd import train
from kd.errors import ConfigError


def check(config: ml_collections.ConfigDict, workdir: str, stages: Sequence[str]) -> None:
  """Everything that can be checked before compiling: the config, the dataset, the teachers."""
  config_lib.validate(config, num_devices=jax.device_count())
  for name in stages:
    if name not in config.stages:
      raise ConfigError(f"--stages names {name!r}, which is not a stage; stages: {list(config.stage_order)}")
  spec = data.load_spec(config.data.name, config.data.data_dir)
  for split in (config.data.train_split, config.data.eval_split, config.data.test_split):
    data.check_split(config.data.name, split, config.data.data_dir, spec)
  for name in stages:
    teacher = config.stages[name].teacher
    if teacher and teacher not in stages and not train.is_finished(os.path.join(workdir, teacher)):
      raise ConfigError(f"stage {name!r} needs teacher stage {teacher!r}, which has no finished run in "
                        f"{workdir}: run it too (leave out --stages) or point --workdir at its run")


def run(config: ml_collections.ConfigDict, workdir: str,
        stages: Sequence[str] | None = None) -> dict[str, Any] | None:
  """Runs `stages` (default: `config.stage_order`) into `workdir`, then the report card.

  Returns:
    The report (also in `<workdir>/report.json`), or None when a stage the report needs is not
    finished (e.g. when only some stages were asked for).
  """
  stages = list(stages or config.stage_order)
  check(config, workdir, stages)
  os.makedirs(workdir, exist_ok=True)
  for name in config.stage_order:
    if name in stages:
      train.train_stage(config, name, workdir)
  if not all(train.is_finished(os.path.join(workdir, config.report[role])) for role in report_lib.ROLES):
    logging.info("Not every stage of the report card is finished; no report.")
    return None
  report = report_lib.build(config, workdir)
  print(report_lib.write(report, workdir), flush=True)
  return report
