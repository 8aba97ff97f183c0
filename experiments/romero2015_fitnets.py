r"""FitNets: hints from the teacher's middle layer, as the CRD benchmark runs them on CIFAR-100.

A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio, "FitNets: Hints for Thin Deep
Nets", ICLR 2015, arXiv:1412.6550 (https://arxiv.org/abs/1412.6550).

The paper distils maxout-network teachers into thin, deep maxout students in two stages (a regressor
from the student's guided layer to the teacher's hint layer, then KD). kd has no maxout networks, so
PAPER_REPORTED keeps the paper's numbers as data only, and the runnable table is FitNets as the CRD
benchmark reimplements it (Tian et al., ICLR 2020, arXiv:1910.10699, Tables 1 and 2, RepDistiller):
one stage of CE + 100 * the hint loss, the student's second-stage output (RepDistiller's feat[2],
after the ReLU) regressed (RepDistiller's ConvReg) onto the teacher's, on the teacher/student pairs of `tian2020_crd.py`, with its recipe
(240 epochs of SGD at 0.05, decayed by 0.1 at epochs 150, 180, 210, batch 64, weight decay 5e-4,
crop and flip, CIFAR-100 mean/std normalisation; see RECIPE; the teacher trained first as stage `teacher` of the same workdir).

    python -m kd.main --config=experiments/romero2015_fitnets.py:pair=resnet32x4_resnet8x4 \
        --workdir=runs/tian2020_crd/resnet32x4_resnet8x4

(the same workdir as tian2020_crd.py's runs of the pair reuses their teacher and baseline).
Arguments: `pair=<teacher>_<student>` (tian2020_crd.PAIRS), `smoke=1` or the bare word `smoke`.
Runtime (an estimate, not measured here): hours per run on one GPU (187,500 steps).
"""

import importlib.util
import os

import ml_collections


def _crd_benchmark():
  """experiments/tian2020_crd.py, which holds the benchmark's pairs, taps and recipe."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tian2020_crd.py")
  spec = importlib.util.spec_from_file_location("tian2020_crd", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_CRD = _crd_benchmark()

# The paper's Table 1 (CIFAR-10) and Table 2 (CIFAR-100), test accuracy (%), maxout networks.
PAPER_REPORTED = {
    "cifar10": {"teacher (5 layers, 9M)": 90.18, "FitNet 1 (11 layers, 250K)": 89.01,
                "FitNet 2 (11 layers, 862K)": 91.06, "FitNet 3 (13 layers, 1.6M)": 91.10,
                "FitNet 4 (19 layers, 2.5M)": 91.61},
    "cifar100": {"teacher": 63.54, "FitNet": 64.96},
}
PAIRS = _CRD.PAIRS
DEFAULT_PAIR = _CRD.DEFAULT_PAIR
REFERENCE_FEATURES = _CRD.REFERENCE_FEATURES
# The CRD benchmark's rows for its stages teacher, baseline and fitnet (RepDistiller's code, with
# sources; tests/test_recipes.py checks every sweep point against them).
RECIPE = [row for row in _CRD.RECIPE
          if row["stages"] in (None, "*") or set(row["stages"]) & {"teacher", "baseline", "fitnet"}]
# The CRD benchmark's FitNet row, by pair (with the teacher and the student alone).
REPORTED = {pair: {key: numbers[key] for key in ("teacher", "baseline", "fitnet")}
            for pair, numbers in _CRD.REPORTED.items()}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = _CRD.parse_arg(arg)
  unknown = set(args) - {"pair", "smoke"}
  if unknown:
    raise ValueError(f"unknown keys {sorted(unknown)} in {arg!r}: use pair=, smoke=1")
  return _CRD.get_config(",".join([f"{key}={value}" for key, value in args.items()] + ["method=fitnet"]))


def sweep(add) -> None:
  """The FitNet run of every pair of the CRD benchmark that kd can run."""
  for pair in _CRD.PAIRS:
    add(f"pair={pair}")
