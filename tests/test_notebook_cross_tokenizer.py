"""notebooks/cross_tokenizer.ipynb, executed headless on the smoke variant of experiments/boizard2024_uld.py.

The notebook runs both runs of the experiment (the bytes run, then the BPE run distilled from the bytes
run's export), shows their report cards, decodes one window's aligned chunks on both sides, and measures the
chunk likelihoods that ALM matches. Its figures are checked against the data and the files the run wrote:
the byte teacher, read from its export, is scored on its own tokens (its bits per byte against a sum
computed here), and an export of another vocabulary than the teacher tokenizer's is one error line.
"""

import json
import math
import os
import re

import jax
import numpy as np
import pytest

from conftest import REPO
from kd import checkpoint
from kd import data
from kd import experiment
from kd import external
from kd.errors import UserError


def test_the_cross_tokenizer_notebook_runs_the_experiment_and_its_figures_hold(tmp_path):
  from test_end_to_end import _run_notebook  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "boizard2024_uld")
  outputs = _run_notebook("cross_tokenizer.ipynb", root)
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.get("name") == "stdout")

  # Both runs finished, and the BPE run's card scores the byte teacher on its own windows.
  with open(os.path.join(root, "report_card.md")) as f:
    summary = f.read()
  for stage in ("bytes_kd", "bpe_baseline", "bpe_uld", "bpe_alm"):
    assert f"| {stage} |" in summary
  with open(os.path.join(root, "bpe", "report.md")) as f:
    card = f.read()
  assert "| teacher | byte_teacher |" in card and "teacher bits/byte / student bits/byte" in card

  # The chunks decode to the same text on both sides.
  assert "the same text on both sides: True" in text
  # Every aligned chunk of the first 64 test windows is counted on both sides (the data drops the others).
  config = experiment.load_config(os.path.join(REPO, "experiments", "boizard2024_uld.py"), f"run=bpe,root={root},smoke",
                                  validate=False)
  arrays = data.load_arrays(config.data.name, config.data.test_split, config.data.data_dir)
  expected = int(np.sum(arrays["chunk_ids"][:64].max(axis=1) + 1))
  for stage in ("bpe_baseline", "bpe_alm"):
    match = re.search(rf"{stage}: (\d+) chunks, mean \|log p_teacher - log p_student\| = (\S+) nats", text)
    assert match, text[-2000:]
    assert int(match[1]) == expected > 0
    assert 0 < float(match[2]) < 50

  # The teacher's row: the NLL of every real next byte of its own windows, in bits, over those bytes.
  with open(os.path.join(root, "bpe", "report.json")) as f:
    report = json.load(f)
  teacher = checkpoint.load_model(os.path.join(root, "bytes", "seed_0", "teacher"))
  apply = jax.jit(lambda variables, tokens, mask: teacher.apply(variables, {"tokens": tokens, "mask": mask},
                                                               train=False)["logits"])
  logits = np.asarray(apply(teacher.variables, arrays["teacher_tokens"], arrays["teacher_mask"]), np.float64)
  log_probs = logits[:, :-1] - np.log(np.sum(np.exp(logits[:, :-1]), -1, keepdims=True))
  nll = -np.take_along_axis(log_probs, arrays["teacher_tokens"][:, 1:, None].astype(np.int64), -1)[..., 0]
  real = arrays["teacher_mask"][:, 1:]
  assert report["teacher_tokenization"] and report["retention_basis"] == "bits_per_byte"
  np.testing.assert_allclose(report["teacher"]["bits_per_byte"], np.sum(nll * real) / math.log(2) / np.sum(real),
                             rtol=1e-5)
  assert report["retention"] == pytest.approx(report["teacher"]["bits_per_byte"] / report["student"]["bits_per_byte"])
  assert report["kl"] is None and report["agreement"] is None

  # A BPE student's export has the student's vocabulary, not the teacher tokenizer's 256 bytes.
  spec = data.load_spec(config.data.name, config.data.data_dir)
  config.stages.bpe_alm.teacher = "export:" + os.path.join(root, "bpe", "seed_0", "bpe_baseline")
  with pytest.raises(UserError, match=r"gives it the teacher's tokenization of .* \(256 classes, inputs \(128,\)\)"
                     ) as raised:
    external.load_teacher(config, "bpe_alm", str(tmp_path), spec)
  assert "\n" not in str(raised.value)
