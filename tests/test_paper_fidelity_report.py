"""The paper's numbers as the paper defines them, next to kd's, in the sweep table and the report card."""

import csv
import io
import json
import os

import pytest

from conftest import REPO
from kd import config as config_lib
from kd import report as report_lib
from kd import sweep as sweep_lib
from kd import sweep_report

PAPER_FILES = ("tian2020_crd.py", "romero2015_fitnets.py", "zagoruyko2017_at.py", "huang2022_dist.py",
               "sun2024_logit_std.py", "zhao2022_dkd.py", "hinton2015.py")


@pytest.mark.parametrize("name", PAPER_FILES)
def test_every_sweep_point_has_the_papers_number_and_its_definition(name):
  module = sweep_lib.load_module(os.path.join(REPO, "experiments", name))
  definition = sweep_report.reported_definition(module)
  # sun2024's README numbers are each log's best test epoch; every other file's paper reads its last.
  assert definition == ("best" if name == "sun2024_logit_std.py" else "last")
  args = []
  module.sweep(lambda arg=None, **unused: args.append(arg))
  for arg in args:
    stage = (module.get_config(arg) if arg else module.get_config()).stage_order[-1]
    number = sweep_report.paper_number(module.REPORTED, stage, (arg,), arg)
    assert number is not None and 0 < number <= 100, (arg, stage)


def test_paper_number_lookups():
  # By variant (a number, {"accuracy": n} or {stage: n}), by a value of the argument, by stage.
  assert sweep_report.paper_number({"a": 71.2}, "student", ("a",)) == 71.2
  assert sweep_report.paper_number({"a": {"accuracy": 70.5}}, "student", ("x", "a")) == 70.5
  assert sweep_report.paper_number({"a": {"kd": 1.0, "crd": 2.0}}, "crd", ("a",)) == 2.0
  reported = {"vgg13_vgg8": {"teacher": 74.64, "crd": 73.94}}
  assert sweep_report.paper_number(reported, "crd", ("pair=vgg13_vgg8,method=crd",),
                                   "pair=vgg13_vgg8,method=crd") == 73.94
  assert sweep_report.paper_number(reported, "kd", (), "pair=vgg13_vgg8,method=kd") is None
  assert sweep_report.paper_number({"kd": 99.26}, "kd", ("hidden=800",), "hidden=800") == 99.26


def _row(**values):
  row = {column: None for column in sweep_report.COLUMNS}
  row.update({"variant": "pair=vgg13_vgg8,method=crd", "stage": "crd", "seeds": [0], "runs": 1,
              "last_accuracy": 0.7344, "last_accuracy_std": 0.0, "headline": "last", **values})
  return row


def test_sweep_table_shows_how_the_paper_defines_its_number():
  rows = [_row(reported=73.94, reported_as="last", difference=73.44 - 73.94),
          _row(variant="v2", reported=76.62, reported_as="best", difference=-3.18), _row(variant="v3")]
  markdown = sweep_report.to_markdown(rows, "runs/x")
  assert "| reported | reported as | difference |" in markdown
  assert "| pair=vgg13_vgg8,method=crd | crd | 1/1 [0] | 73.44 | - | 73.94 | last epoch | -0.50 |" in markdown
  assert "| 76.62 | best epoch | -3.18 |" in markdown and "| v3 | crd | 1/1 [0] | 73.44 | - | - | - | - |" in markdown
  table = list(csv.DictReader(io.StringIO(sweep_report.to_csv(rows))))
  assert [row["reported_as"] for row in table] == ["last", "best", ""]
  assert list(table[0])[:10] == list(sweep_report.COLUMNS[:10])  # The earlier columns keep their places.


def _card(paper=None):
  def role(stage, accuracy, best=None):
    entry = {"stage": stage, "accuracy": accuracy, "params": 1000, "bytes": 4000, "latency_ms_b1": 1.0,
             "latency_ms_b256": 2.0, "ece": 0.05}
    if best is not None:
      entry["at_best_validation"] = {"test_accuracy": best, "step": 100}
    return entry
  card = {"teacher": role("teacher", 0.7450), "baseline": role("baseline", 0.7012), "student": role("crd", 0.7344),
          "retention": 0.98, "compression": 5.0, "speedup": 2.0, "speedup_b1": 1.5, "agreement": 0.8, "kl": 0.3,
          "ece": 0.05, "gain_over_baseline": 0.0332, "seeds": [0], "dataset": "cifar100", "split": "test",
          "examples": 10000, "device": "cpu", "comparison": []}
  card["std"] = {key: (dict.fromkeys(value, 0.0) if isinstance(value, dict) else 0.0) for key, value in card.items()
                 if key in ("teacher", "baseline", "student", "retention", "agreement", "kl", "ece",
                            "gain_over_baseline")}
  if paper:
    card["paper"] = paper
  return card


def test_report_card_adds_one_line_with_the_papers_numbers(tmp_path):
  plain = report_lib.to_markdown(_card())
  assert "paper (" not in plain
  paper = {"source": "experiments/tian2020_crd.py", "arg": "pair=vgg13_vgg8,method=crd", "as": "last",
           "accuracy": {"teacher": 74.64, "baseline": 70.36, "crd": 73.94}}
  with_paper = report_lib.to_markdown(_card(paper))
  added = [line for line in with_paper.splitlines() if line not in plain.splitlines()]
  assert added == ["paper (tian2020_crd.py:pair=vgg13_vgg8,method=crd, its last epoch): teacher 74.64% (kd: 74.50% "
                   "last, - at best validation), baseline 70.36% (kd: 70.12% last, - at best validation), crd 73.94% "
                   "(kd: 73.44% last, - at best validation)"]


def test_report_card_finds_the_papers_numbers_from_the_command_that_trained_the_student(tmp_path):
  config = config_lib.base_config()
  config.seeds = (0,)
  config.report.update(teacher="teacher", baseline="baseline", student="crd", compare=("baseline", "crd"))
  stage_dir = tmp_path / "seed_0" / "crd"
  stage_dir.mkdir(parents=True)
  path = os.path.join(REPO, "experiments", "tian2020_crd.py")
  (stage_dir / "provenance.json").write_text(json.dumps(
      {"command": ["kd/main.py", f"--config={path}:pair=vgg13_vgg8,method=crd", "--workdir=x"]}))
  assert report_lib.paper_numbers(config, str(tmp_path)) == {
      "source": path, "arg": "pair=vgg13_vgg8,method=crd", "as": "last",
      "accuracy": {"teacher": 74.64, "baseline": 70.36, "crd": 73.94}}
  (stage_dir / "provenance.json").write_text(json.dumps({"command": ["python", "-c", "kd.run(config)"]}))
  assert report_lib.paper_numbers(config, str(tmp_path)) is None  # A config built in Python: no line.
