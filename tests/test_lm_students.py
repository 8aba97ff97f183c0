"""kd.lm.students: layer maps, Minitron pruning, the CLI; experiments/qwen3_stdlib.py and hf_distill.py end to end."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from kd import experiment
from kd import models
from kd.convert import hf
from kd.errors import ConfigError
from kd.lm import students

FIXTURES = os.path.join(REPO, "tests", "fixtures", "hf")
WORDLEVEL = os.path.join(REPO, "tests", "fixtures", "text", "wordlevel")


def _teacher(name):
  model_config, variables = hf.load(os.path.join(FIXTURES, name))
  return model_config, variables, hf.vocab_size_of(variables)


def _logits(model_config, variables, vocab, tokens):
  return np.asarray(jax.jit(models.build_model(model_config, vocab).apply)(variables, tokens))


def _tokens(vocab, shape=(4, 12), seed=0):
  return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def test_default_layer_map_keeps_first_and_last_evenly_spaced():
  assert students.default_layer_map(12, 6) == (0, 2, 4, 7, 9, 11)  # HF's DistilBERT extraction.
  assert students.default_layer_map(4, 2) == (0, 3)
  assert students.default_layer_map(6, 1) == (0,)
  assert students.default_layer_map(5, 5) == (0, 1, 2, 3, 4)
  assert students.resolve_layer_map(4, layer_map=(1, 1, 3)) == (1, 1, 3)


@pytest.mark.parametrize("name", ["qwen3", "qwen2", "gpt2", "llama_tied"])
def test_every_layer_at_full_width_is_the_teacher_exactly(name):
  model_config, variables, vocab = _teacher(name)
  tokens = _tokens(vocab)
  student_config, student_variables = students.derive_student(model_config, variables)
  np.testing.assert_array_equal(_logits(student_config, student_variables, vocab, tokens),
                                _logits(model_config, variables, vocab, tokens))
  # Full widths given explicitly (with calibration) keep every index, so they change nothing either.
  sizes = students.sizes(model_config)
  if name != "gpt2":
    same = students.derive_student(model_config, variables, hidden_size=sizes["hidden_size"],
                                   intermediate_size=sizes["intermediate_size"], num_heads=sizes["num_heads"],
                                   calibration_tokens=tokens)
    np.testing.assert_array_equal(_logits(*same, vocab, tokens), _logits(model_config, variables, vocab, tokens))


def test_pruned_widths_have_the_configured_shapes_and_run(tmp_path):
  model_config, variables, vocab = _teacher("qwen3")  # 2 layers, hidden 32, MLP 64, 4 heads in 2 groups, head_dim 16.
  tokens = _tokens(vocab)
  student_config, student_variables = students.derive_student(
      model_config, variables, num_layers=1, hidden_size=16, intermediate_size=24, num_heads=2,
      calibration_tokens=tokens)
  assert students.sizes(student_config) == {"num_layers": 1, "hidden_size": 16, "intermediate_size": 24,
                                            "num_heads": 2, "num_key_value_heads": 1, "head_dim": 16}
  shapes = jax.tree.map(np.shape, student_variables["params"])
  assert shapes["embed_tokens"]["embedding"] == (vocab, 16) and shapes["lm_head"]["kernel"] == (16, vocab)
  layer = shapes["layers_0"]
  assert layer["self_attn"]["q_proj"]["kernel"] == (16, 32) and layer["self_attn"]["k_proj"]["kernel"] == (16, 16)
  assert layer["self_attn"]["o_proj"]["kernel"] == (32, 16) and layer["self_attn"]["q_norm"]["scale"] == (16,)
  assert layer["gate_proj"]["kernel"] == (16, 24) and layer["down_proj"]["kernel"] == (24, 16)
  logits = _logits(student_config, student_variables, vocab, tokens)
  assert logits.shape == (4, 12, vocab) and np.isfinite(logits).all()
  # Written as a HF folder, it reads back as the same model (what init_from needs).
  hf.to_hf(student_config, student_variables, str(tmp_path / "student"))
  read_config, read_variables = hf.load(str(tmp_path / "student"))
  assert read_config == models.model_config(**student_config)
  np.testing.assert_array_equal(_logits(read_config, read_variables, vocab, tokens), logits)
  # Grouped-query Llama by key/value groups; Qwen2's q/k/v biases are sliced with their heads.
  for name, kwargs in (("llama3_gqa", {"num_key_value_heads": 1, "hidden_size": 48}),
                       ("qwen2", {"num_heads": 3, "intermediate_size": 40})):
    teacher_config, teacher_variables, teacher_vocab = _teacher(name)
    derived = students.derive_student(teacher_config, teacher_variables, calibration_tokens=_tokens(teacher_vocab),
                                      **kwargs)
    assert np.isfinite(_logits(*derived, teacher_vocab, _tokens(teacher_vocab))).all()
  gpt2_config, gpt2_variables, gpt2_vocab = _teacher("gpt2")
  derived = students.derive_student(gpt2_config, gpt2_variables, num_layers=1, intermediate_size=32,
                                    calibration_tokens=_tokens(gpt2_vocab))
  assert derived[0]["n_layer"] == 1 and derived[0]["n_inner"] == 32
  assert np.isfinite(_logits(*derived, gpt2_vocab, _tokens(gpt2_vocab))).all()


def test_importance_prunes_dead_neurons_heads_and_channels_first():
  model_config, variables, vocab = _teacher("qwen3")
  params = jax.tree.map(lambda x: np.array(x), variables["params"])
  layer = params["layers_0"]
  layer["up_proj"]["kernel"][:, 5] = 0.0  # Neuron 5's activation is 0 on every token.
  layer["self_attn"]["v_proj"]["kernel"][:, 16:32] = 0.0  # Key/value group 1 (query heads 2, 3) outputs 0.
  for norm in ("input_layernorm", "post_attention_layernorm"):
    for name in ("layers_0", "layers_1"):
      params[name][norm]["scale"][7] = 0.0
  params["final_norm"]["scale"][7] = 0.0  # Channel 7 is 0 after every norm.
  tokens = _tokens(vocab, (8, 16))
  scores = students.importance(model_config, {"params": params}, tokens)
  assert scores["layers_0/neurons"][5] == 0 and np.argmin(scores["layers_0/neurons"]) == 5
  np.testing.assert_array_equal(scores["layers_0/heads"][2:], 0.0)
  assert (scores["layers_0/heads"][:2] > 0).all()
  assert scores["final_norm"][7] == 0 and scores["layers_1/input_layernorm"][7] == 0
  student_config, student_variables = students.derive_student(
      model_config, {"params": params}, intermediate_size=63, num_heads=2, hidden_size=31, calibration_tokens=tokens)
  new = student_variables["params"]["layers_0"]
  kept_neurons = [i for i in range(64) if i != 5]
  kept_channels = [i for i in range(32) if i != 7]
  np.testing.assert_array_equal(new["up_proj"]["kernel"], layer["up_proj"]["kernel"][kept_channels][:, kept_neurons])
  np.testing.assert_array_equal(new["self_attn"]["q_proj"]["kernel"],
                                layer["self_attn"]["q_proj"]["kernel"][kept_channels][:, :32])  # Heads 0, 1.
  np.testing.assert_array_equal(new["self_attn"]["v_proj"]["kernel"],
                                layer["self_attn"]["v_proj"]["kernel"][kept_channels][:, :16])  # Group 0.
  np.testing.assert_array_equal(student_variables["params"]["embed_tokens"]["embedding"],
                                params["embed_tokens"]["embedding"][:, kept_channels])
  assert student_config["num_key_value_heads"] == 1
  # A padding mask keeps padded positions out of the scores.
  mask = np.ones(tokens.shape, bool)
  mask[:, 8:] = False
  masked = students.importance(model_config, {"params": params}, tokens, mask)
  np.testing.assert_allclose(masked["final_norm"],
                             students.importance(model_config, {"params": params}, tokens[:, :8])["final_norm"],
                             rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"layer_map": (0, 2)}, r"layer_map=\(0, 2\) names layer\(s\) \[2\] the teacher lacks \(it has 2: 0\.\.1\)"),
    ({"num_layers": 3}, "num_layers=3 is larger than the teacher's 2"),
    ({"hidden_size": 64}, "hidden_size=64 is larger than the teacher's 32"),
    ({"num_heads": 3}, "num_heads=3 does not divide into the teacher's key/value groups of 2"),
    ({"intermediate_size": 8}, "give calibration_tokens"),
    ({"num_layers": 2, "layer_map": (0,)}, "layer_map has 1 entries but num_layers=2"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
  model_config, variables, _ = _teacher("qwen3")
  with pytest.raises(ConfigError, match=message):
    students.derive_student(model_config, variables, **kwargs)
  with pytest.raises(ConfigError, match="students are derived from"):
    students.derive_student({"name": "cnn"}, variables)
  gpt2_config, gpt2_variables, _ = _teacher("gpt2")
  with pytest.raises(ConfigError, match="gpt2 students keep the teacher's heads and hidden size"):
    students.derive_student(gpt2_config, gpt2_variables, hidden_size=16)


def _main(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    students.main(argv)
  return exit_info.value.code, capsys.readouterr()


def test_cli_writes_a_hf_folder_a_stage_can_init_from(tmp_path, capsys):
  out = str(tmp_path / "student")
  calibration = f"text_files/train={os.path.join(REPO, 'tests', 'fixtures', 'text', 'story.txt')},tokenizer={WORDLEVEL},max_length=8"
  students.main([os.path.join(FIXTURES, "qwen3"), out, "--num_layers=1", "--hidden_size=16", "--num_heads=2",
                 f"--calibration={calibration}", f"--tokenizer={WORDLEVEL}"])
  assert "num_layers 2 -> 1, hidden_size 32 -> 16" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
  with open(os.path.join(out, "config.json")) as f:
    written = json.load(f)
  assert (written["num_hidden_layers"], written["hidden_size"], written["num_attention_heads"],
          written["num_key_value_heads"], written["head_dim"]) == (1, 16, 2, 1, 16)
  code, captured = _main([os.path.join(FIXTURES, "qwen3"), str(tmp_path / "b"), "--hidden_size=48"], capsys)
  assert code == 2 and captured.err.startswith("error: ") and captured.err.count("\n") == 1
  assert "hidden_size=48 is larger than the teacher's 32" in captured.err
  code, captured = _main([os.path.join(FIXTURES, "qwen3"), str(tmp_path / "c"), "--layer_map=0,5"], capsys)
  assert code == 2 and "names layer(s) [5] the teacher lacks" in captured.err
  code, captured = _main([str(tmp_path / "nothing"), str(tmp_path / "d"), "--num_layers=1"], capsys)
  assert code == 2 and "no such folder" in captured.err
  assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "c")


def test_qwen3_stdlib_and_hf_distill_smoke_runs_end_to_end(tmp_path):
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  try:
    import qwen3_stdlib  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(os.path.join(REPO, "experiments"))
  root = str(tmp_path / "qwen3")
  report = qwen3_stdlib.run_all(root, smoke=True)
  assert report["kind"] == "language_model" and report["student"]["stage"] == "derived_kl"
  assert [row["stage"] for row in report["comparison"]] == ["derived_kl", "random_kl"]
  assert report["teacher"]["params"] > 2.5 * report["student"]["params"]
  assert 1 < report["student"]["perplexity"] < float("inf") and 0 <= report["agreement"] <= 1
  paths = qwen3_stdlib.paths(root, smoke=True)
  assert os.path.isfile(os.path.join(paths["teacher_hf"], "tokenizer.json"))
  assert hf.read_config(paths["student_hf"])[0]["hidden_size"] == 16
  # The students' config names exactly the model the derived folder holds.
  config = experiment.load_config(os.path.join(REPO, "experiments", "qwen3_stdlib.py"), f"stage=students,root={root},smoke")
  assert config.stages.derived_kl.init_from == paths["student_hf"]

  config = experiment.load_config(os.path.join(REPO, "experiments", "hf_distill.py"), "smoke")
  report = experiment.run(config, str(tmp_path / "hf_distill"))
  assert report["teacher"]["params"] > report["student"]["params"] and report["kl"] >= 0
  # A teacher with more embedding rows (120) than the data's tokenizer has ids (27) gives the data its
  # vocabulary, so the student's logits line up with its own (tests/test_lm_vocab_padding.py runs one).
  data_name = f"text_files/train={os.path.join(REPO, 'tests', 'fixtures', 'text', 'story.txt')},tokenizer={WORDLEVEL}"
  config = experiment.load_config(os.path.join(REPO, "experiments", "hf_distill.py"),
                                  f"teacher={os.path.join(FIXTURES, 'qwen3')},data={data_name}")
  assert config.data.name == data_name + ",vocab_size=120"
