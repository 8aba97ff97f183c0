"""Hugging Face decoders (GPT-2, Llama, Qwen2, Qwen3): logit parity with transformers, the KV cache,
tap points, checkpoint folders and their errors, and the way back to a Hugging Face folder.

The fixtures (tests/fixtures/hf/make_hf_fixtures.py) are tiny transformers models with random weights,
saved with save_pretrained, and transformers' own logits and hidden states on fixed token ids. kd reads
the folders with kd.convert.hf (no torch) and must reproduce them.
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kd import checkpoint
from kd import external
from kd import models
from kd.convert import hf
from kd.data import DatasetSpec
from kd.errors import ConfigError
from kd.lm import sampling
from kd.models import hf_decoders

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
with open(os.path.join(FIXTURE_DIR, "fixtures.json")) as f:
  FIXTURES = json.load(f)["fixtures"]

# Each fixture, the kd model it reads as, and what it exercises.
FAMILIES = {
    "gpt2": ("gpt2", "learned positions, Conv1D, gelu_new, tied head"),
    "llama3_gqa": ("llama", "llama3 rope scaling, grouped-query attention, untied head"),
    "llama_tied": ("llama", "default rope, attention biases, tied head, sharded safetensors"),
    "qwen2": ("qwen2", "q/k/v biases, grouped-query attention"),
    "qwen3": ("qwen3", "q/k RMSNorm, head_dim unlike hidden / heads"),
}
TOLERANCE = 1e-4  # max abs logit difference in float32


def _folder(name):
  return os.path.join(FIXTURE_DIR, name)


@functools.lru_cache(maxsize=None)
def _loaded(name):
  model_config, variables = hf.load(_folder(name))
  module = hf.module_of(model_config, hf.vocab_size_of(variables))
  with np.load(_folder(name) + ".reference.npz") as reference:
    return model_config, variables, module, dict(reference)


@functools.lru_cache(maxsize=None)
def _kd_outputs(name):
  _, variables, module, reference = _loaded(name)
  apply = models.make_apply(module, "tokens", feature_paths=("layers_0", "final_norm"))
  return jax.device_get(jax.jit(functools.partial(apply, train=False))(variables, {"tokens": reference["tokens"]}))


def test_every_family_has_a_fixture():
  assert set(FIXTURES) == set(FAMILIES)
  assert {kd_name for kd_name, _ in FAMILIES.values()} == set(hf_decoders.FAMILIES) == {
      name for name, _, _ in hf.FAMILIES.values()}
  assert set(hf_decoders.FAMILIES) <= set(models.MODELS)
  assert any(FIXTURES[name]["sharded"] for name in FIXTURES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_logits_equal_transformers(name):
  model_config, _, _, reference = _loaded(name)
  assert model_config["name"] == FAMILIES[name][0]
  logits = _kd_outputs(name)["logits"]
  assert logits.shape == reference["logits"].shape and logits.dtype == np.float32
  difference = np.abs(logits - reference["logits"]).max()
  assert difference < TOLERANCE, f"{FAMILIES[name][1]}: max abs logit difference {difference}"
  assert reference["logits"].std() > 0.5  # The parity is not between two constants.


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tap_points_equal_transformers_hidden_states(name):
  out, reference = _kd_outputs(name), _loaded(name)[3]
  for tap in ("layers_0", "final_norm"):
    np.testing.assert_allclose(out["features"][tap], reference[tap], atol=1e-4, rtol=1e-4, err_msg=tap)


def test_config_json_fields_become_attributes():
  llama3, _ = hf.read_config(_folder("llama3_gqa"))
  assert (llama3["rope_type"], llama3["rope_factor"], llama3["rope_theta"]) == ("llama3", 8.0, 500000.0)
  assert llama3["rope_original_max_position_embeddings"] == 40
  assert (llama3["num_attention_heads"], llama3["num_key_value_heads"], llama3["tie_word_embeddings"]) == (4, 2, False)
  tied, vocab_size = hf.read_config(_folder("llama_tied"))
  assert tied["tie_word_embeddings"] and tied["attention_bias"] and vocab_size == 100
  assert "lm_head" not in _loaded("llama_tied")[1]["params"]
  qwen3, _ = hf.read_config(_folder("qwen3"))
  assert qwen3["head_dim"] == 16 and qwen3["hidden_size"] // qwen3["num_attention_heads"] == 8
  assert hf.read_config(_folder("qwen2"))[0]["rope_theta"] == 1e6


def test_llama3_rope_scaling_matters():
  # The fixture's frequencies fall in all three llama3 bands: reading it as default rope changes the logits.
  model_config, variables, _, reference = _loaded("llama3_gqa")
  unscaled = hf.module_of({**model_config, "rope_type": "default"}, 128)
  logits = unscaled.apply(variables, reference["tokens"])
  assert np.abs(np.asarray(logits) - reference["logits"]).max() > 1e-2
  frequencies = hf_decoders.rope_frequencies(16, 500000.0, "llama3", 8.0, 1.0, 4.0, 40)
  plain = hf_decoders.rope_frequencies(16, 500000.0)
  assert frequencies[0] == plain[0] and np.all(frequencies[2:] == plain[2:] / 8) and plain[1] / 8 < frequencies[1] < plain[1]


def test_transformers_4_rope_spelling_reads_the_same():
  with open(os.path.join(_folder("llama3_gqa"), "config.json")) as f:
    config = json.load(f)
  rope = config.pop("rope_parameters")
  legacy = {**config, "rope_theta": rope.pop("rope_theta"), "rope_scaling": {**rope, "type": rope.pop("rope_type")}}
  assert hf.model_config_from_hf(legacy, "legacy") == hf.model_config_from_hf({**config, "rope_parameters": {
      **rope, "rope_type": "llama3", "rope_theta": 500000.0}}, "new")


@pytest.mark.parametrize("name", ["gpt2", "llama3_gqa", "qwen2", "qwen3"])
def test_kv_cache_decode_equals_the_full_forward(name):
  _, variables, module, reference = _loaded(name)
  tokens = jnp.asarray(reference["tokens"])
  length = tokens.shape[1]
  cache = module.init_cache(tokens.shape[0], length)
  if name != "gpt2":  # Grouped-query attention caches the key/value heads only.
    assert cache[0][0].shape == (2, length, module.kv_heads, module.head_size)
  decode = jax.jit(functools.partial(module.apply, variables, method=module.decode))
  prefill, cache = decode(tokens[:, :5], cache, 0)
  steps = [prefill]
  for index in range(5, length):
    logits, cache = decode(tokens[:, index:index + 1], cache, index)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), reference["logits"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "qwen3"])
def test_generate_with_the_cache_equals_recomputing(name):
  # kd.lm.sampling builds the cache with the module's init_cache (kv heads only) and scans decode.
  _, variables, module, reference = _loaded(name)
  prompt = jnp.asarray(reference["tokens"][:, :4])
  settings = dict(num_new_tokens=6, rng=jax.random.key(0), temperature=0)
  cached = jax.jit(functools.partial(sampling.generate, module, **settings))(variables, prompt)
  recomputed = sampling.generate_recompute(module, variables, prompt, **settings)
  np.testing.assert_array_equal(cached, recomputed)
  assert cached.shape == (2, 10)
  if name == "qwen3":
    beams, _ = sampling.beam_search(module, variables, prompt, num_new_tokens=6, beam_size=1)
    np.testing.assert_array_equal(beams[:, 0], cached)  # One beam is greedy decoding.


# Parameter counts of the published models (sum of numel over transformers' parameters, the tied head
# counted once), from their config.json fields.
PUBLISHED = {
    "gpt2 (124M)": ({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
                     "n_head": 12}, 124_439_808),
    "Llama-2-7b": ({"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}, 6_738_415_616),
    "Meta-Llama-3-8B": ({"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
                         "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                         "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0},
                        8_030_261_248),
}


@pytest.mark.parametrize("published", sorted(PUBLISHED))
def test_full_size_parameter_counts_equal_transformers(published):
  hf_config, count = PUBLISHED[published]
  model_config, vocab_size = hf.model_config_from_hf(hf_config, published)
  module = hf.module_of(model_config, vocab_size)
  shapes = jax.eval_shape(lambda x: models.init_variables(module, jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 8), jnp.int32))
  assert models.count_params(shapes["params"]) == count
  # The layout names every array of the model, once.
  rows = hf.layout(model_config)
  assert len({path for path, _, _ in rows}) == len(rows) == len(jax.tree.leaves(shapes))


def test_round_trip_to_hf_gives_identical_variables(tmp_path):
  for name in sorted(FAMILIES):
    model_config, variables, _, _ = _loaded(name)
    out = hf.to_hf(model_config, variables, str(tmp_path / name))
    again_config, again = hf.load(out)
    assert again_config == model_config, name
    assert jax.tree.structure(again) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)):
      np.testing.assert_array_equal(a, b)
    # The fixture script loaded this output with transformers' from_pretrained: the same logits.
    assert FIXTURES[name]["round_trip_max_abs_logit_difference"] < 1e-5, name
  with pytest.raises(ConfigError, match="already holds config.json"):
    hf.to_hf(model_config, variables, str(tmp_path / name))


def test_cli_writes_a_kd_export_as_a_hf_folder(tmp_path):
  model_config, variables, _, _ = _loaded("qwen2")
  export_dir = str(tmp_path / "export")
  os.makedirs(export_dir)
  checkpoint.export_model(export_dir, model_config, hf.spec_of(model_config, 112, 16), variables)
  hf.main([export_dir, str(tmp_path / "hf"), "--to=hf"])
  again_config, again = hf.load(str(tmp_path / "hf"))
  assert again_config == model_config
  np.testing.assert_array_equal(again["params"]["lm_head"]["kernel"], variables["params"]["lm_head"]["kernel"])


def test_loading_places_each_array_in_the_given_sharding():
  mesh = jax.make_mesh((len(jax.devices()),), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  _, variables = hf.load(_folder("llama_tied"), shardings=replicated)
  leaves = jax.tree.leaves(variables)
  assert all(isinstance(leaf, jax.Array) and leaf.sharding == replicated for leaf in leaves)
  by_path = hf.load(_folder("llama_tied"), shardings=lambda path, shape: replicated)[1]
  np.testing.assert_array_equal(by_path["params"]["embed_tokens"]["embedding"],
                                _loaded("llama_tied")[1]["params"]["embed_tokens"]["embedding"])


def _write_bfloat16_copy(source_folder, destination):
  """The checkpoint with every array stored as bfloat16 (as most published Llama and Qwen weights are)."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  shutil.copytree(source_folder, destination)
  path = os.path.join(destination, "model.safetensors")
  arrays = hf._Safetensors([path], "test")  # pylint: disable=protected-access
  tensors = {name: arrays.get(name).astype(ml_dtypes.bfloat16) for name in arrays.entries}
  header, offset = {}, 0
  for name, array in tensors.items():
    header[name] = {"dtype": "BF16", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
  encoded = json.dumps(header).encode()
  encoded += b" " * (-len(encoded) % 8)
  with open(path, "wb") as f:
    f.write(len(encoded).to_bytes(8, "little") + encoded)
    for array in tensors.values():
      f.write(array.tobytes())
  return tensors


def test_bfloat16_weights_are_read(tmp_path):
  tensors = _write_bfloat16_copy(_folder("qwen3"), str(tmp_path / "bf16"))
  _, variables = hf.load(str(tmp_path / "bf16"))
  kernel = variables["params"]["layers_1"]["self_attn"]["q_proj"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel, tensors["model.layers.1.self_attn.q_proj.weight"].astype(np.float32).T)


BFLOAT16_TOLERANCE = 0.05  # of the largest |logit|: bfloat16 keeps 8 bits of mantissa (2**-8 = 0.4% a step)


@pytest.mark.parametrize("name", ["gpt2", "llama3_gqa"])  # Learned positions and Conv1D; RoPE and GQA.
def test_bfloat16_weights_load_as_stored_and_match_transformers_at_bfloat16_tolerance(tmp_path, name):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  tensors = _write_bfloat16_copy(_folder(name), str(tmp_path / "bf16"))
  loaded = hf.load_model(str(tmp_path / "bf16"), dtype=None)
  assert {leaf.dtype for leaf in jax.tree.leaves(loaded.variables)} == {np.dtype(ml_dtypes.bfloat16)}
  assert loaded.model_config["dtype"] == "bfloat16"  # Computed in the stored dtype, as dtype="auto" does.
  embedding = "wte" if name == "gpt2" else "embed_tokens"
  stored = tensors[f"{'transformer' if name == 'gpt2' else 'model'}.{embedding}.weight"]
  np.testing.assert_array_equal(loaded.variables["params"][embedding]["embedding"].view(np.uint16),
                                stored.view(np.uint16))  # Bit for bit: no round trip through float32.
  reference = _loaded(name)[3]
  apply = jax.jit(functools.partial(loaded.apply, train=False), compiler_options={"xla_backend_optimization_level": 0})
  logits = np.asarray(apply(loaded.variables, {"tokens": reference["tokens"]})["logits"], np.float32)
  scale = np.abs(reference["logits"]).max()
  assert np.abs(logits - reference["logits"]).max() < BFLOAT16_TOLERANCE * scale
  # Against float32 weights, the default still reads float32, at float32 tolerance.
  assert hf.load(str(tmp_path / "bf16"))[1]["params"][embedding]["embedding"].dtype == np.float32


# --- Errors: one line each, naming the problem and the fix. --------------------------------------------


def _copy(tmp_path, name="qwen2", edit=None):
  folder = str(tmp_path / name)
  shutil.copytree(_folder(name), folder)
  if edit:
    with open(os.path.join(folder, "config.json")) as f:
      config = json.load(f)
    edit(config)
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump(config, f)
  return folder


def _one_line_error(folder, match):
  with pytest.raises(ConfigError, match=match) as error:
    hf.load(folder)
  assert "\n" not in str(error.value)
  return str(error.value)


def test_a_folder_without_weights_is_named(tmp_path):
  folder = _copy(tmp_path)
  os.remove(os.path.join(folder, "model.safetensors"))
  _one_line_error(folder, r"no weights: expected model\.safetensors, or shards listed by model\.safetensors\.index")
  open(os.path.join(folder, "pytorch_model.bin"), "wb").close()
  _one_line_error(folder, r"it has pytorch_model\.bin: save it again .*safe_serialization=True")


def test_an_unsupported_model_type_names_the_supported_ones(tmp_path):
  folder = _copy(tmp_path, edit=lambda c: c.update(model_type="bert"))
  _one_line_error(folder, r"model_type 'bert' is not supported; kd reads \['gpt2', 'llama', 'qwen2', 'qwen3'\]")


def test_a_missing_field_is_named(tmp_path):
  folder = _copy(tmp_path, edit=lambda c: c.pop("hidden_size"))
  _one_line_error(folder, r"config\.json \(model_type 'qwen2'\) has no hidden_size")


def test_an_unsupported_rope_type_is_named(tmp_path):
  folder = _copy(tmp_path, edit=lambda c: c.update(rope_parameters={"rope_type": "yarn", "factor": 4.0}))
  _one_line_error(folder, r"rope_type 'yarn' is not supported; kd implements \['default', 'linear', 'llama3'\]")


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
  folder = _copy(tmp_path, edit=lambda c: c.update(num_key_value_heads=3))
  _one_line_error(folder, r"misfitting model\.layers\.0\.self_attn\.k_proj\.weight is \(16, 48\), expected \(24, 48\)")
  folder = _copy(tmp_path, "llama_tied", edit=lambda c: c.update(tie_word_embeddings=False))
  _one_line_error(folder, r"missing lm_head\.weight")


# --- As a teacher and as init_from. ---------------------------------------------------------------------


def _stage_config(**stage):
  defaults = {"teacher": "", "teacher_checkpoint": "", "teacher_model": {"name": ""}, "init_from": "",
              "model": {"name": ""}}
  return ml_collections.ConfigDict({"stages": {"distil": {**defaults, **stage}}})


def _token_spec(num_classes):
  return DatasetSpec(name="tokens", input_key="tokens", input_shape=(12,), input_dtype="int32",
                     num_classes=num_classes, split_sizes={})


def test_a_hf_folder_is_a_teacher_without_teacher_model(tmp_path):
  folder = _copy(tmp_path, "qwen3")
  with open(os.path.join(folder, "tokenizer.json"), "w") as f:
    f.write("{}")
  config = _stage_config(teacher_checkpoint=folder)
  teacher = external.load_teacher(config, "distil", "", _token_spec(120))
  assert teacher.model_config["name"] == "qwen3" and teacher.source["format"] == "huggingface"
  assert teacher.model_config["tokenizer"] == os.path.abspath(os.path.join(folder, "tokenizer.json"))
  reference = _loaded("qwen3")[3]
  out = teacher.make_apply("tokens", ("layers_0",))(teacher.variables, {"tokens": reference["tokens"]}, train=False)
  assert np.abs(np.asarray(out["logits"]) - reference["logits"]).max() < TOLERANCE
  assert isinstance(external.teacher_module(config, "distil", _token_spec(120)), hf_decoders.Qwen3)
  with pytest.raises(ConfigError, match="vocabulary of 120 tokens, but tokens has token ids up to 255"):
    external.load_teacher(config, "distil", "", _token_spec(256))


def test_a_teacher_model_must_agree_with_config_json():
  model_config = dict(_loaded("qwen3")[0])
  agreeing = _stage_config(teacher_checkpoint=_folder("qwen3"), teacher_model={**model_config, "dtype": "bfloat16"})
  assert external.load_teacher(agreeing, "distil", "", _token_spec(120)).module.dtype == "bfloat16"
  wrong = _stage_config(teacher_checkpoint=_folder("qwen3"), teacher_model={**model_config, "head_dim": 8})
  with pytest.raises(ConfigError, match=r"differs from the checkpoint's config\.json: head_dim=8 \(config\.json: 16\)"):
    external.load_teacher(wrong, "distil", "", _token_spec(120))


def test_init_from_a_hf_folder():
  model_config, variables, module, _ = _loaded("gpt2")
  config = _stage_config(init_from=_folder("gpt2"), model={**model_config, "dropout": 0.1})
  student = models.build_model(config.stages.distil.model, 96)
  initial = external.initial_variables(config, "distil", student, _token_spec(96))
  for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  other = _stage_config(init_from=_folder("gpt2"), model={"name": "llama"})
  with pytest.raises(ConfigError, match="is a Hugging Face 'gpt2' checkpoint, but the model is 'llama'"):
    external.initial_variables(other, "distil", module, _token_spec(96))


def test_kd_load_model_reads_a_hf_folder_and_a_config_takes_it_as_a_teacher_checkpoint():
  import kd  # pylint: disable=g-import-not-at-top
  from kd import config as config_lib  # pylint: disable=g-import-not-at-top

  loaded = kd.load_model(_folder("qwen3"))
  reference = _loaded("qwen3")[3]
  logits = loaded.apply(loaded.variables, {"tokens": reference["tokens"]}, train=False)["logits"]
  assert np.abs(np.asarray(logits) - reference["logits"]).max() < TOLERANCE
  config = config_lib.base_config()
  config.data.name = "stdlib_text"
  config.stages.student = config_lib.stage_config({"name": "transformer_lm"}, {"name": "lm_kd"},
                                                  teacher_checkpoint=_folder("qwen3"), num_steps=1)
  config.stage_order = ("student",)
  config.report.update(teacher="student", baseline="student", student="student")
  config_lib.validate(config)  # No teacher_model needed: config.json says which model reads it.
