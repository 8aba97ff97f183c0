"""The report card: what distillation bought, measured on the test split.

For each of teacher, baseline (the student architecture trained on labels only) and the distilled
student: accuracy, parameter count, size in bytes, inference latency at batch 1 and 256, ECE. For the
student against the teacher: retention, compression, speedup, top-1 agreement, KL(teacher || student).
Written to `<workdir>/report.json` and `<workdir>/report.md`. When the run's config file holds the
paper's numbers (`REPORTED`, see kd.sweep_report), one more line gives them as the paper defines them
(its last or best epoch) next to kd's last step and step of best validation accuracy.
"""

import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np

from kd import checkpoint
from kd import data
from kd import evaluation
from kd import external
from kd import lm
from kd import models
from kd import pruning
from kd import selection
from kd import train
from kd.lm import report as lm_report

ROLES = ("teacher", "baseline", "student")


def _measure_model(loaded: checkpoint.LoadedModel, arrays, mesh, eval_batch_size: int) -> tuple[dict, np.ndarray]:
  logits = evaluation.make_predict(loaded.apply, mesh)(loaded.variables, arrays, eval_batch_size)
  key = loaded.spec.input_key
  example = {key: arrays[key][:1]}
  large = {key: np.resize(arrays[key], (256,) + arrays[key].shape[1:])}
  metrics = {
      "accuracy": evaluation.accuracy(logits, arrays["label"]),
      "params": models.count_params(loaded.variables["params"]),
      "nonzero_params": pruning.count_nonzero(loaded.variables["params"]),
      "bytes": models.count_bytes(loaded.variables),
      "latency_ms_b1": evaluation.latency_ms(loaded.apply, loaded.variables, example),
      "latency_ms_b256": evaluation.latency_ms(loaded.apply, loaded.variables, large),
      "ece": evaluation.expected_calibration_error(logits, arrays["label"]),
  }
  return metrics, logits


def _params_cell(measured: dict[str, Any]) -> str:
  """The parameter count, and how many are non-zero where a pruned model has many zeros (kd.pruning)."""
  params, nonzero = measured["params"], measured.get("nonzero_params", measured["params"])
  return f"{params:,.0f} ({nonzero:,.0f} non-zero)" if nonzero < 0.9 * params else f"{params:,.0f}"


def role_model(config: ml_collections.ConfigDict, role: str, run_dir: str) -> checkpoint.LoadedModel:
  """The model of a report role: a stage's export, or the student's external teacher when the
  report's teacher is not a stage (a teacher from a checkpoint, an export or memory)."""
  if config.report[role] in config.stages:
    return checkpoint.load_model(os.path.join(run_dir, config.report[role]))
  spec = data.load_spec(config.data.name, config.data.data_dir, config.data.image_size)
  teacher = external.load_teacher(config, config.report.student, run_dir, spec)
  return checkpoint.LoadedModel(teacher.model_config, spec, teacher.module,
                                teacher.make_apply(spec.input_key), teacher.variables)


def build_run(config: ml_collections.ConfigDict, run_dir: str, arrays, mesh) -> dict[str, Any]:
  """The report card of one seed's run (`<workdir>/seed_<n>`)."""
  report: dict[str, Any] = {}
  logits = {}
  for role in ROLES:
    loaded = role_model(config, role, run_dir)
    report[role], logits[role] = _measure_model(loaded, arrays, mesh, config.data.eval_batch_size)
    selected = (selection.best_on_validation(os.path.join(run_dir, config.report[role]))
                if config.report[role] in config.stages else None)
    if selected is not None:  # The model a validation-based early stop would keep, scored on test.
      report[role]["at_best_validation"] = selected
  teacher, student = report["teacher"], report["student"]
  report.update({
      # A teacher at 0% (a smoke run on random data) has no retention to report.
      "retention": student["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else float("nan"),
      "compression": teacher["params"] / student["params"],
      "speedup": teacher["latency_ms_b256"] / student["latency_ms_b256"],
      "speedup_b1": teacher["latency_ms_b1"] / student["latency_ms_b1"],
      "agreement": evaluation.agreement(logits["student"], logits["teacher"]),
      "kl": evaluation.mean_kl(logits["student"], logits["teacher"]),
      "ece": student["ece"],
      "gain_over_baseline": student["accuracy"] - report["baseline"]["accuracy"],
  })
  return report


def _mean_and_std(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Averages the numeric leaves of several runs' reports (same structure) over the runs."""
  mean, std = {}, {}
  for key, value in runs[0].items():
    if isinstance(value, dict):
      mean[key], std[key] = _mean_and_std([run[key] for run in runs])
    else:
      values = np.array([run[key] for run in runs], dtype=np.float64)
      mean[key], std[key] = float(values.mean()), float(values.std(ddof=1) if len(runs) > 1 else 0.0)
      if all(run[key] == value for run in runs):  # Identical (e.g. parameter counts): keep the type.
        mean[key] = value
  return mean, std


def build(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Measures the exported models of the report's stages on `data.test_split`, for every seed.

  The top-level numbers are means over `config.seeds`; `std` holds their standard deviations
  (0 for one seed) and `per_seed` each seed's report.
  """
  if lm.is_language_model(data.load_spec(config.data.name, config.data.data_dir)):
    return lm_report.build(config, workdir)  # Perplexity and decode speed instead of accuracy.
  arrays = data.load_arrays(config.data.name, config.data.test_split, config.data.data_dir,
                            config.data.image_size)
  mesh = train.make_mesh(config.mesh)
  runs = [build_run(config, train.seed_dir(workdir, seed), arrays, mesh) for seed in config.seeds]
  mean, std = _mean_and_std(runs)
  for role in ROLES:
    mean[role]["stage"] = (config.report[role] if config.report[role] in config.stages
                           else external.describe(config, config.report.student))
  paper = paper_numbers(config, workdir)
  return {
      **mean,
      **({"paper": paper} if paper else {}),
      "comparison": compare(config, workdir, arrays, mesh),
      "std": std,
      "per_seed": {str(seed): run for seed, run in zip(config.seeds, runs)},
      "seeds": list(config.seeds),
      "dataset": config.data.name,
      "split": config.data.test_split,
      "examples": int(len(arrays["label"])),
      "splits": _splits(config, train.seed_dir(workdir, config.seeds[0])),
      "device": jax.devices()[0].device_kind,
  }


def config_file_of(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str | None] | None:
  """(experiment file, its argument) that trained the report's student: the `--config=<file>[:arg]`
  of the command in its provenance.json (kd.main's), or None (a config built in Python)."""
  stage_dir = os.path.join(train.seed_dir(workdir, config.seeds[0]), config.report.student)
  try:
    with open(os.path.join(stage_dir, "provenance.json")) as f:
      command = json.load(f).get("command") or []
  except (OSError, ValueError):
    return None
  for index, item in enumerate(command):
    value = item[len("--config="):] if item.startswith("--config=") else (
        command[index + 1] if item == "--config" and index + 1 < len(command) else None)
    match = re.fullmatch(r"(.+?\.py)(?::(.*))?", value or "")
    if match and os.path.isfile(match.group(1)):
      return match.group(1), match.group(2)
  return None


def paper_numbers(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """The paper's accuracy (%) for each stage of the report card that its config file's REPORTED
  holds, and how the paper defines it ("last" or "best" epoch); None without any."""
  from kd import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  from kd import sweep_report  # pylint: disable=g-import-not-at-top

  found = config_file_of(config, workdir)
  if found is None:
    return None
  path, arg = found
  try:
    module = sweep_lib.load_module(path)
  except Exception:  # pylint: disable=broad-except  # The report card never fails on the paper's numbers.
    return None
  reported = getattr(module, "REPORTED", None)
  if not isinstance(reported, dict):
    return None
  stages = [config.report[role] for role in ROLES] + [s for s in config.report.compare if s not in
                                                       [config.report[role] for role in ROLES]]
  numbers = {stage: number for stage in stages
             if (number := sweep_report.paper_number(reported, stage, (arg,), arg)) is not None}
  if not numbers:
    return None
  return {"source": path, "arg": arg, "as": sweep_report.reported_definition(module), "accuracy": numbers}


def _splits(config: ml_collections.ConfigDict, run_dir: str) -> dict[str, Any]:
  """Where the student's train, validation and test examples came from, and how many there were."""
  try:
    with open(os.path.join(run_dir, config.report.student, "result.json")) as f:
      counts = json.load(f).get("examples", {})
  except OSError:
    counts = {}
  return {role: {"split": data.splits.describe(config.data, role), "examples": counts.get(role)}
          for role in data.splits.ROLES}


def compare(config: ml_collections.ConfigDict, workdir: str, arrays, mesh) -> list[dict[str, Any]]:
  """Test accuracy (mean and std over seeds) of each stage in `config.report.compare`.

  Each row also has the difference to the baseline stage's mean and the method's name.
  """
  if not config.report.compare:
    return []

  def accuracies(stage_name):
    values = []
    for seed in config.seeds:
      loaded = checkpoint.load_model(os.path.join(train.seed_dir(workdir, seed), stage_name))
      logits = evaluation.make_predict(loaded.apply, mesh)(loaded.variables, arrays,
                                                           config.data.eval_batch_size)
      values.append(evaluation.accuracy(logits, arrays["label"]))
    return np.array(values)

  baseline = accuracies(config.report.baseline)
  rows = []
  for stage_name in config.report.compare:
    values = baseline if stage_name == config.report.baseline else accuracies(stage_name)
    rows.append({
        "stage": stage_name,
        "method": config.stages[stage_name].method.name,
        "accuracy": float(values.mean()),
        "accuracy_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "per_seed": [float(v) for v in values],
        "gain_over_baseline": float(values.mean() - baseline.mean()),
    })
  return rows


def _comparison_markdown(report: dict[str, Any]) -> list[str]:
  if not report.get("comparison"):
    return []
  lines = ["", f"Test accuracy by stage (mean ± std over seeds {report['seeds']}):", "",
           "| stage | method | accuracy | vs baseline |", "|---|---|---:|---:|"]
  for row in report["comparison"]:
    lines.append(f"| {row['stage']} | {row['method']} | {row['accuracy']:.2%} ± {row['accuracy_std']:.2%} | "
                 f"{row['gain_over_baseline']:+.2%} |")
  return lines


def _pm(report, path: tuple[str, ...], fmt: str) -> str:
  """`mean ± std` of a report entry, or just the mean for a single seed."""
  mean, std = report, report["std"]
  for key in path:
    mean, std = mean[key], std[key]
  if len(report["seeds"]) == 1:
    return format(mean, fmt)
  return f"{format(mean, fmt)} ± {format(std, fmt.replace('+', ''))}"


def _splits_line(report: dict[str, Any]) -> list[str]:
  splits = report.get("splits")
  if not splits:
    return []

  def part(role):
    count = splits[role]["examples"]
    return f"{role}: {splits[role]['split']}" + (f" ({count:,} examples)" if count else "")

  validation = (f"{part('validation')}, which selects the step 'at best validation'"
                if splits["validation"]["examples"] else "validation: none (nothing is selected)")
  return ["", f"Splits: {part('train')}; {validation}; {part('test')}, every number below."]


def _paper_line(report: dict[str, Any]) -> list[str]:
  """The paper's numbers (as it defines them) next to kd's last step and step of best validation."""
  paper = report.get("paper")
  if not paper:
    return []
  kd_numbers = {}
  for role in ROLES:
    m = report[role]
    best = (_pm(report, (role, "at_best_validation", "test_accuracy"), ".2%") if "at_best_validation" in m
            else "-")
    kd_numbers.setdefault(m["stage"], (_pm(report, (role, "accuracy"), ".2%"), best))
  for row in report.get("comparison", []):
    kd_numbers.setdefault(row["stage"], (f"{row['accuracy']:.2%}", "-"))
  definition = {"last": "its last epoch", "best": "its best epoch"}.get(paper.get("as"), "as it reports it")
  parts = [f"{stage} {number:.2f}% (kd: {kd_numbers.get(stage, ('-', '-'))[0]} last, "
           f"{kd_numbers.get(stage, ('-', '-'))[1]} at best validation)"
           for stage, number in paper["accuracy"].items()]
  source = os.path.basename(paper["source"]) + (f":{paper['arg']}" if paper.get("arg") else "")
  return [f"paper ({source}, {definition}): " + ", ".join(parts)]


def to_markdown(report: dict[str, Any]) -> str:
  """The report card as a Markdown table and summary lines."""
  if report.get("kind") == "language_model":
    return lm_report.to_markdown(report)
  seeds = report["seeds"]
  averaged = f"mean ± std over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}"
  lines = [
      f"Report card: {report['dataset']} {report['split']} ({report['examples']} examples), "
      f"{averaged}; latency on {report['device']}",
      *_splits_line(report),
      "",
      "| model | stage | accuracy | at best validation (step) | params | bytes | latency b1 (ms) | "
      "latency b256 (ms) | ECE |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for role in ROLES:
    m = report[role]
    selected = "-"
    if "at_best_validation" in m:
      selected = (f"{_pm(report, (role, 'at_best_validation', 'test_accuracy'), '.2%')} "
                  f"({m['at_best_validation']['step']:.0f})")
    lines.append(f"| {role} | {m['stage']} | {_pm(report, (role, 'accuracy'), '.2%')} | {selected} | "
                 f"{_params_cell(m)} | {m['bytes']:,.0f} | {m['latency_ms_b1']:.3f} | "
                 f"{m['latency_ms_b256']:.3f} | {_pm(report, (role, 'ece'), '.4f')} |")
  lines += [
      "",
      f"student vs teacher: retention {_pm(report, ('retention',), '.2%')}, "
      f"compression {report['compression']:.1f}x, "
      f"speedup {report['speedup']:.2f}x (b256) / {report['speedup_b1']:.2f}x (b1), "
      f"agreement {_pm(report, ('agreement',), '.2%')}, "
      f"KL(teacher||student) {_pm(report, ('kl',), '.4f')} nats, ECE {_pm(report, ('ece',), '.4f')}",
      f"student vs baseline: {_pm(report, ('gain_over_baseline',), '+.2%')} accuracy",
      *_paper_line(report),
  ] + _comparison_markdown(report)
  return "\n".join(lines) + "\n"


def write(report: dict[str, Any], workdir: str) -> str:
  """Writes report.json and report.md; returns the Markdown."""
  markdown = to_markdown(report)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(markdown)
  return markdown


def main(argv: list[str] | None = None) -> int:
  """`python -m kd.report <workdir>`: the table of a sweep (see kd.sweep_report), or a run's report card."""
  import sys  # pylint: disable=g-import-not-at-top
  from kd import sweep_report  # pylint: disable=g-import-not-at-top  # Imports kd.sweep only when asked.

  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print("usage: python -m kd.report <sweep workdir>", file=sys.stderr)
    return 2
  workdir = argv[0]
  if os.path.exists(os.path.join(workdir, "sweep.json")):
    print(sweep_report.write(workdir), end="")
    print(f"(also in {os.path.join(workdir, sweep_report.MARKDOWN)} and {sweep_report.CSV})")
    return 0
  if os.path.exists(os.path.join(workdir, "report.md")):
    with open(os.path.join(workdir, "report.md")) as f:
      print(f.read(), end="")
    return 0
  print(f"error: {workdir} holds neither a sweep (sweep.json) nor a report card (report.md): give the "
        "--workdir of python -m kd.sweep or kd.main", file=sys.stderr)
  return 2


if __name__ == "__main__":
  raise SystemExit(main())
