"""Subword tokenizers (kd.lm.tokenizer) and tokenized text datasets (kd.data.text_files).

The word-level fixture tokenizer (tests/fixtures/text/wordlevel, made by make_wordlevel_tokenizer.py)
gives one id per word, so expected ids and masks are written out by hand: <pad>=0 <s>=1 </s>=2 <unk>=3,
then user=4 assistant=5 system=6 :=7 hi=8 hello=9 thanks=10 bye=11 what=12 is=13 two=14 plus=15 four=16
the=17 cat=18 sat=19 on=20 mat=21 a=22 dog=23 ran=24 be=25 brief=26. Its post-processor prepends <s>.
The renderings, ids and assistant masks written here also equal transformers 5.24's
`apply_chat_template(..., return_assistant_tokens_mask=True)` on the same files.
"""

import dataclasses
import json
import logging
import os
import shutil

import numpy as np
import pytest

from kd import data
from kd.data import stdlib_text
from kd.data import text_files
from kd.errors import ConfigError
from kd.errors import DataError
from kd.lm import tokenizer as tokenizer_lib

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "text")
WORDS = os.path.join(FIXTURES, "wordlevel")
PAD, BOS, EOS = 0, 1, 2


def _fixture(name: str) -> str:
  return os.path.join(FIXTURES, name)


def _rows(arrays) -> set[tuple]:
  """The examples of a split as hashable rows (TFDS stores them in its own order)."""
  return {(tuple(t.tolist()), tuple(m.astype(int).tolist()), int(p))
          for t, m, p in zip(arrays["tokens"], arrays["mask"], arrays["prompt_length"])}


def _row(ids, masked, length):
  """A hand-written example: ids, then padding to `length`; `masked` lists the loss positions."""
  tokens = list(ids) + [PAD] * (length - len(ids))
  mask = [int(i in masked) for i in range(length)]
  return tuple(tokens), tuple(mask), min(masked)


@pytest.fixture(scope="module")
def stdlib_bpe(tmp_path_factory):
  """A 512-id byte-level BPE over six of the stdlib corpus's train files (under a second)."""
  files = tokenizer_lib.stdlib_train_files()[:6]
  return tokenizer_lib.train_bpe(files, str(tmp_path_factory.mktemp("bpe")), vocab_size=512), files


def test_a_bpe_trained_on_stdlib_train_files_round_trips_unseen_text(stdlib_bpe, tmp_path):
  tokenizer, files = stdlib_bpe
  assert all(stdlib_text.split_of(os.path.basename(path)) == "train" for path in tokenizer_lib.stdlib_train_files())
  assert tokenizer.vocab_size == 512
  assert (tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id) == (0, 1, 0)
  assert [tokenizer.backend.token_to_id(t) for t in tokenizer_lib.TRAINED_SPECIAL_TOKENS] == [0, 1, 2, 3]
  unseen = next(path for path in stdlib_text.source_files() if stdlib_text.split_of(os.path.basename(path)) == "validation")
  with open(unseen, encoding="utf-8") as f:
    text = f.read()
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert len(ids) < 0.6 * len(text.encode())  # Merges learnt on other files still compress.
  exotic = "naïve — 日本語 🐍\ttabs\r\n"  # Bytes never seen in training still encode: byte-level.
  assert tokenizer.decode(tokenizer.encode(exotic)) == exotic
  # Deterministic: the same files give the same tokenizer.
  again = tokenizer_lib.train_bpe(files, str(tmp_path), vocab_size=512)
  assert again.digest == tokenizer.digest
  # Its folder loads back with its special tokens (tokenizer_config.json).
  assert tokenizer_lib.load(os.path.dirname(tokenizer.path)).special_tokens == tokenizer.special_tokens


def test_special_tokens_come_from_the_config_or_their_usual_names(tmp_path):
  words = tokenizer_lib.load(WORDS)
  assert words.special_tokens == {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
  assert (words.bos_id, words.eos_id, words.pad_id, words.vocab_size) == (BOS, EOS, PAD, 27)
  assert words.chat_template.startswith("{{ bos_token }}")
  # A bare tokenizer.json: the same roles by name; no template.
  shutil.copy(os.path.join(WORDS, "tokenizer.json"), tmp_path / "tokenizer.json")
  bare = tokenizer_lib.load(str(tmp_path / "tokenizer.json"))
  assert bare.special_tokens == words.special_tokens and bare.chat_template is None
  # chat_template.jinja beside it wins (newer checkpoints keep the template there).
  (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
  assert tokenizer_lib.load(str(tmp_path)).apply_chat_template([{"role": "user", "content": "hi"}]) == "hi"
  # A config that declares no pad token: windows are padded with eos.
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "pad_token": None}))
  no_pad = tokenizer_lib.load(str(tmp_path))
  assert no_pad.pad_id is None and no_pad.padding_id == EOS


CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "bye"}]


def test_chat_templates_render_as_transformers_renders_them():
  words = tokenizer_lib.load(WORDS)
  assert words.apply_chat_template(CHAT) == "<s>user: hi assistant: hello</s> user: thanks assistant: bye</s> "
  assert (words.apply_chat_template(CHAT[:1], add_generation_prompt=True) == "<s>user: hi assistant:")
  # trim_blocks and lstrip_blocks: the newline after a block tag and the indentation before it vanish.
  template = ("{% for message in messages %}\n"
              "    {% if message['role'] == 'user' %}\n"
              "Q: {{ message['content'] }}\n"
              "    {% else %}\n"
              "A: {{ message['content'] }}{{ eos_token }}\n"
              "    {% endif %}\n"
              "{% endfor %}\n")
  text, spans = tokenizer_lib.render_chat(template, CHAT[:2], eos_token="</s>")
  assert text == "Q: hi\nA: hello</s>\n" and spans == []
  # tojson does not escape HTML; loop controls work.
  text, _ = tokenizer_lib.render_chat("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
                                      "{{ m | tojson }}{% endfor %}", [{"role": "user", "content": "<b>&"}] * 2)
  assert text == '{"role": "user", "content": "<b>&"}'
  # tools and documents are None, as transformers passes them without tools.
  assert tokenizer_lib.render_chat("{% if tools is not none %}tools {% endif %}ok", CHAT)[0] == "ok"
  # {% generation %} blocks render their body and report where it lies.
  text, spans = tokenizer_lib.render_chat(tokenizer_lib.FALLBACK_CHAT_TEMPLATE, CHAT[:2], add_generation_prompt=False)
  assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
  assert [text[start:end] for start, end in spans] == ["hello<|im_end|>"]
  with pytest.raises(DataError, match="the chat template cannot render this conversation: roles must alternate"):
    tokenizer_lib.render_chat("{{ raise_exception('roles must alternate') }}", CHAT)


def test_a_tokenizer_without_a_template_renders_chatml(stdlib_bpe):
  tokenizer, _ = stdlib_bpe
  assert tokenizer.chat_template is None
  text = tokenizer.apply_chat_template(CHAT[:1], add_generation_prompt=True)
  assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
  ids = tokenizer.encode(text)
  assert ids[0] == tokenizer.backend.token_to_id("<|im_start|>") and tokenizer.decode(ids) == text


def _name(**kwargs) -> str:
  return text_files.dataset_name(tokenizer=WORDS, **kwargs)


def test_tfds_custom_config_warning_is_not_printed_for_text_sources(caplog):
  # Every text source is a config of its own: TFDS would warn with the whole name at each builder.
  name = _name(train=_fixture("prompt_completion.jsonl"), max_length=10)
  with caplog.at_level(logging.WARNING):
    data.load_spec(name)
    data.load_arrays(name, "train")
  assert not [r for r in caplog.records if "Using custom data configuration" in r.getMessage()]


def test_prompt_completion_masks_exactly_the_completion_tokens():
  name = _name(train=_fixture("prompt_completion.jsonl"), max_length=10)
  arrays = data.load_arrays(name, "train")
  assert arrays["tokens"].dtype == np.int32 and arrays["prompt_length"].dtype == np.int32
  assert _rows(arrays) == {
      # <s> what is two plus two | four </s>
      _row([BOS, 12, 13, 14, 15, 14, 16, EOS], {6, 7}, 10),
      # <s> the cat | sat on the mat </s>
      _row([BOS, 17, 18, 19, 20, 17, 21, EOS], {3, 4, 5, 6, 7}, 10),
      # <s> a dog | ran </s>
      _row([BOS, 22, 23, 24, EOS], {3, 4}, 10),
  }


def test_chat_data_masks_the_assistant_turns():
  name = _name(train=_fixture("chat.jsonl"), max_length=16)
  assert _rows(data.load_arrays(name, "train")) == {
      # <s> user : hi assistant : | hello </s> | user : thanks assistant : | bye </s> |
      _row([BOS, 4, 7, 8, 5, 7, 9, EOS, 4, 7, 10, 5, 7, 11, EOS], {6, 7, 13, 14}, 16),
      # <s> system : be brief user : what is two plus two assistant : | four </s> |
      _row([BOS, 6, 7, 25, 26, 4, 7, 12, 13, 14, 15, 14, 5, 7, 16, EOS], {14, 15}, 16),
  }
  # A template marking assistant text with {% generation %} gives the same masks by its marks.
  words = tokenizer_lib.load(WORDS)
  marked = dataclasses.replace(words, chat_template=words.chat_template.replace(
      "{{ message['role'] + ': ' + message['content'] }}{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}",
      "{% if message['role'] == 'assistant' %}{{ 'assistant:' }}{% generation %}{{ ' ' + message['content'] + eos_token }}"
      "{% endgeneration %}{% else %}{{ message['role'] + ': ' + message['content'] }}{% endif %}"))
  assert marked.chat_template != words.chat_template
  assert text_files.chat_tokens(marked, CHAT) == text_files.chat_tokens(words, CHAT)
  # A template that renders a turn differently once others follow cannot be split by prefix.
  unstable = dataclasses.replace(words, chat_template=(
      "{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]{% else %}{{ m['content'] }} {% endif %}{% endfor %}"))
  with pytest.raises(DataError, match=r"renders earlier turns differently .* \{% generation %\}"):
    text_files.chat_tokens(unstable, CHAT)


def test_text_files_read_through_load_spec_and_the_pipeline_like_other_datasets():
  name = _name(train=_fixture("text.jsonl"), test=_fixture("story.txt"), max_length=6)
  spec = data.load_spec(name)
  assert (spec.input_key, spec.input_shape, spec.input_dtype) == ("tokens", (6,), "int32")
  assert spec.num_classes == tokenizer_lib.load(WORDS).vocab_size == 27
  # JSONL text: one example per line, truncated at max_length (counted); every real token counts.
  train = data.load_arrays(name, "train")
  assert _rows(train) == {((BOS, 17, 18, 19, 20, 17), (1,) * 6, 0), ((BOS, 22, 23, 24, EOS, PAD), (1,) * 5 + (0,), 0)}
  # Plain text: the file's tokens (then eos) in windows; the last one padded.
  test = data.load_arrays(name, "test")
  assert _rows(test) == {((BOS, 17, 18, 19, 20, 17), (1,) * 6, 0), ((21, 17, 23, 24, EOS, PAD), (1,) * 5 + (0,), 0)}
  assert spec.split_sizes == {"train": 2, "test": 2}
  metadata = data.pipeline._builder(name, "").info.metadata
  assert metadata["counts"]["train"] == {"examples": 2, "truncated": 1, "dropped": 0}
  assert (metadata["vocab_size"], metadata["eos_id"], metadata["padding_id"]) == (27, EOS, PAD)
  batch = next(data.train_iterator(train, batch_size=2, seed=0))
  assert set(batch) == {"tokens", "mask", "prompt_length", "index"} and batch["tokens"].shape == (2, 6)
  evaluation = next(data.eval_batches(test, batch_size=4))
  assert evaluation["token_mask"].shape == (4, 6) and evaluation["mask"].tolist() == [True, True, False, False]


def test_each_source_is_its_own_config_named_by_its_contents(tmp_path):
  first = text_files.builder_config(_name(train=_fixture("text.jsonl")).partition("/")[2])
  same = text_files.builder_config(_name(train=_fixture("text.jsonl")).partition("/")[2])
  longer = text_files.builder_config(_name(train=_fixture("text.jsonl"), max_length=64).partition("/")[2])
  assert first.name == same.name and first.name.startswith("text_128_") and longer.name.startswith("text_64_")
  copy = tmp_path / "text.jsonl"
  shutil.copy(_fixture("text.jsonl"), copy)
  assert text_files.prepared_name(_name(train=str(copy))) == f"text_files/{first.name}"  # Contents, not place.
  copy.write_text('{"text": "the dog sat"}\n')
  assert text_files.prepared_name(_name(train=str(copy))) != f"text_files/{first.name}"
  assert text_files.tokenizer_for(_name(train=str(copy))).vocab_size == 27


def test_files_split_by_a_fixed_hash(tmp_path):
  lines = [json.dumps({"prompt": "a dog", "completion": " ".join(["ran"] * (i % 5 + 1)) + f" {i}"}) for i in range(60)]
  (tmp_path / "many.jsonl").write_text("\n".join(lines) + "\n")
  name = _name(files=str(tmp_path / "many.jsonl"), split="60/20/20", max_length=12)
  sizes = data.load_spec(name).split_sizes
  expected = {split: 0 for split in ("train", "validation", "test")}
  for line in lines:
    expected[text_files._split_of_hash(line.encode(), (60, 20, 20))] += 1
  assert sizes == expected and sum(sizes.values()) == 60 and min(sizes.values()) > 0
  # Text files split by name exactly as the stdlib corpus splits its files.
  for index in range(300):
    file_name = f"module_{index}.py"
    assert text_files._split_of_hash(file_name.encode(), (80, 10, 10)) == stdlib_text.split_of(file_name)


@pytest.mark.parametrize("source, message", [
    ({"train": _fixture("bad_keys.jsonl")},
     r"bad_keys.jsonl:2: prompt_completion data needs 'prompt' and 'completion' .* this line has keys \['answer', 'question'\]"),
    ({"train": _fixture("chat_without_messages.jsonl")},
     r"chat_without_messages.jsonl:2: chat data needs 'messages' .* this line has keys \['conversation'\]"),
    ({"train": _fixture("chat_without_messages.jsonl"), "format": "chat"},
     r"chat_without_messages.jsonl:2: chat data needs 'messages' .*\(format=chat\)"),
    ({"train": _fixture("text.jsonl"), "tokenizer": _fixture("missing_folder")},
     r"tokenizer not found: .*missing_folder does not exist"),
    ({"train": _fixture("text.jsonl"), "tokenizer": FIXTURES}, r"tokenizer not found: the folder .* has no tokenizer.json"),
    ({"train": _fixture("nothing.jsonl")}, r"train=.*nothing.jsonl: no such file"),
    ({"files": _fixture("text.jsonl"), "split": "50/50"}, r"split=50/50 must be train/validation/test percentages"),
    ({"train": _fixture("text.jsonl"), "test": _fixture("story.txt") + "+" + _fixture("text.jsonl")},
     r"text.jsonl \(train\) and .*text.jsonl \(test\) have the same contents"),
])
def test_unusable_sources_are_one_line_errors(source, message):
  name = text_files.dataset_name(**{"tokenizer": WORDS, **source})
  with pytest.raises(DataError, match=message) as raised:
    data.load_spec(name)
  assert "\n" not in str(raised.value)


def test_a_line_without_any_known_keys_names_its_number_and_keys(tmp_path):
  (tmp_path / "odd.jsonl").write_text('\n{"question": "q", "answer": "a"}\n')
  with pytest.raises(DataError, match=r"odd.jsonl:2: a JSONL line needs 'text', or 'prompt' and 'completion', or "
                                      r"'messages'; it has keys \['answer', 'question'\]"):
    data.load_spec(_name(train=str(tmp_path / "odd.jsonl")))
  with pytest.raises(DataError, match=r"'tran=.*' is not key=value with a key among \['train'"):
    data.load_spec(f"text_files/tran={_fixture('text.jsonl')},tokenizer={WORDS}")


def test_check_vocabulary_names_both_sizes():
  words = tokenizer_lib.load(WORDS)
  tokenizer_lib.check_vocabulary(words, 27)
  tokenizer_lib.check_vocabulary(words, 32)  # Padded embeddings, as many checkpoints have.
  with pytest.raises(ConfigError, match=r"stages.student.model has 26 output classes but the tokenizer .* has 27 ids"):
    tokenizer_lib.check_vocabulary(words, 26, where="stages.student.model")
  with pytest.raises(ConfigError, match="32 output classes .* 27 ids \\(more logits than ids\\)"):
    tokenizer_lib.check_vocabulary(words, 32, exact=True)


def test_a_prompt_that_fills_the_window_is_dropped_and_counted(tmp_path):
  (tmp_path / "long.jsonl").write_text('{"prompt": "the cat sat on the mat", "completion": "ran"}\n'
                                       '{"prompt": "a dog", "completion": "sat on the mat"}\n')
  name = _name(train=str(tmp_path / "long.jsonl"), max_length=5)
  assert _rows(data.load_arrays(name, "train")) == {_row([BOS, 22, 23, 19, 20], {3, 4}, 5)}
  assert data.pipeline._builder(name, "").info.metadata["counts"]["train"] == {
      "examples": 1, "truncated": 1, "dropped": 1}


def test_a_teacher_tokenizer_stores_the_teachers_tokens_of_the_same_text():
  # Plain text: window w holds the teacher's tokens that start in its text (here bytes, no specials).
  name = _name(test=_fixture("story.txt"), train=_fixture("text.jsonl"), max_length=6, teacher_tokenizer="bytes",
               teacher_max_length=20)
  spec = data.load_spec(name)
  assert spec.num_classes == 27 and spec.input_shape == (6,)  # Still the student's vocabulary and length.
  assert text_files.teacher_vocab_size_of(name) == 256 and text_files.teacher_vocab_size_of(_name(train=_fixture("text.jsonl"))) == 0
  test = data.load_arrays(name, "test")
  windows = {}
  for tokens, teacher, teacher_mask, teacher_loss_mask in zip(test["tokens"], test["teacher_tokens"],
                                                              test["teacher_mask"], test["teacher_loss_mask"]):
    assert teacher.shape == (20,) and (teacher_mask == teacher_loss_mask).all()
    windows[tuple(tokens.tolist())] = bytes(teacher[teacher_mask].tolist()).decode()
    assert (teacher[~teacher_mask] == 0).all()  # Padded with the byte teacher's padding id.
  # <s> the cat sat on the | mat the dog ran </s>: the first window's text ends where "mat" starts.
  assert windows == {(BOS, 17, 18, 19, 20, 17): "the cat sat on the ", (21, 17, 23, 24, EOS, PAD): "mat\nthe dog ran\n"}
  # Aligned chunks, by hand: the words (the word-level tokenizer leaves spaces out, so a space is the
  # teacher's alone); the first word of each window is dropped (its first byte or token, at position 0, is
  # never predicted), as are <s>, </s> and padding. Token k's chunk is chunk_ids[k].
  chunks = {tuple(t.tolist()): (c.tolist(), tc.tolist())
            for t, c, tc in zip(test["tokens"], test["chunk_ids"], test["teacher_chunk_ids"])}
  no = -1
  assert chunks == {
      # <s> the cat sat on the || t h e _ c a t _ s a t _ o n _ t h e _ (pad)
      (BOS, 17, 18, 19, 20, 17): ([no, no, 0, 1, 2, 3],
                                  [no, no, no, no, 0, 0, 0, no, 1, 1, 1, no, 2, 2, no, 3, 3, 3, no, no]),
      # mat the dog ran </s> (pad) || m a t \n t h e _ d o g _ r a n \n (pad x 4)
      (21, 17, 23, 24, EOS, PAD): ([no, 0, 1, 2, no, no],
                                   [no, no, no, no, 0, 0, 0, no, 1, 1, 1, no, 2, 2, 2, no, no, no, no, no]),
  }
  assert test["chunk_ids"].dtype == np.int32 and test["teacher_chunk_ids"].shape == (2, 20)
  metadata = data.pipeline._builder(name, "").info.metadata
  assert (metadata["teacher_vocab_size"], metadata["teacher_max_length"]) == (256, 20)
  # JSONL: each tokenizer reads the whole example; the teacher's loss mask by the same rule (the completion).
  name = _name(train=_fixture("prompt_completion.jsonl"), max_length=10, teacher_tokenizer="bytes",
               teacher_max_length=10)
  train = data.load_arrays(name, "train")
  rows = {tuple(t.tolist()): (bytes(tt[m].tolist()), tuple(np.flatnonzero(lm).tolist()))
          for t, tt, m, lm in zip(train["tokens"], train["teacher_tokens"], train["teacher_mask"],
                                  train["teacher_loss_mask"])}
  assert rows == {
      (BOS, 17, 18, 19, 20, 17, 21, EOS, PAD, PAD): (b"the catsat", (7, 8, 9)),  # Truncated at 10 bytes.
      (BOS, 22, 23, 24, EOS) + (PAD,) * 5: (b"a dogran", (5, 6, 7)),
  }  # "what is two plus two" fills the teacher's 10 bytes: nothing left to learn, dropped.
  # The text is the prompt then the completion ("the catsat ..."): chunks cat | sat, and dog | ran.
  assert {tuple(t.tolist()): (c[:5].tolist(), tc.tolist()) for t, c, tc in
          zip(train["tokens"], train["chunk_ids"], train["teacher_chunk_ids"])} == {
      (BOS, 17, 18, 19, 20, 17, 21, EOS, PAD, PAD): ([-1, -1, 0, 1, -1], [-1, -1, -1, -1, 0, 0, 0, 1, 1, 1]),
      (BOS, 22, 23, 24, EOS) + (PAD,) * 5: ([-1, -1, 0, 1, -1], [-1, -1, 0, 0, 0, 1, 1, 1, -1, -1])}
  assert data.pipeline._builder(name, "").info.metadata["counts"]["train"] == {
      "examples": 2, "truncated": 0, "dropped": 1, "teacher_truncated": 1, "aligned_chunks": 4, "unaligned": 0}
  batch = next(data.train_iterator(train, batch_size=2, seed=0))
  assert {"teacher_tokens", "teacher_mask", "teacher_loss_mask", "chunk_ids", "teacher_chunk_ids"} <= set(batch)


def test_aligned_chunks_by_hand_and_at_the_edges():
  # "ab cd": the student reads "ab" " cd" (a BPE), the teacher "a" "b c" "d" (another). The only cut
  # both share inside the text is none: 2 is inside "b c", 3 inside " cd". So one chunk, [0, 5), which
  # holds the first tokens: dropped. With a bos in front of the student and a teacher token "" for it:
  student, teacher = [(0, 0), (0, 2), (2, 5)], [(0, 1), (1, 4), (4, 5)]
  assert [c.tolist() for c in text_files.align_chunks(student, teacher)] == [[-1, -1, -1], [-1, -1, -1]]
  # Bytes against "ab" " cd" after a first token "x" (0, 1): cuts at 1, 3 and 6; chunks "ab", " cd".
  student = [(0, 1), (1, 3), (3, 6)]
  teacher = [(i, i + 1) for i in range(6)]
  assert [c.tolist() for c in text_files.align_chunks(student, teacher)] == [[-1, 0, 1], [-1, 0, 0, 1, 1, 1]]
  # The teacher's tokens cut off inside " cd" (truncation, or a window's edge): " cd" is not whole on its
  # side, so it is no chunk; nor is a teacher token beyond the student's last (the next window's).
  assert [c.tolist() for c in text_files.align_chunks(student, teacher[:5])] == [[-1, 0, -1], [-1, 0, 0, -1, -1]]
  assert [c.tolist() for c in text_files.align_chunks(student[:2], teacher)] == [[-1, 0], [-1, 0, 0, -1, -1, -1]]
  # Two pieces of one character (a byte-level BPE can split "é"; offsets give both the character) stay
  # in one chunk, and zero-width special tokens (an eos) in none.
  student = [(0, 1), (1, 2), (1, 2), (2, 3), (3, 3)]
  teacher = [(0, 1), (1, 2), (2, 3)]
  assert [c.tolist() for c in text_files.align_chunks(student, teacher)] == [[-1, 0, 0, 1, -1], [-1, 0, 1]]
  # Nothing in common (a side without tokens): no chunk.
  assert [c.tolist() for c in text_files.align_chunks([(0, 0)], teacher)] == [[-1], [-1, -1, -1]]


def test_aligned_chunks_of_bpe_windows_and_their_bytes_partition_the_text(stdlib_bpe):
  # Every boundary of a byte-level BPE is a byte boundary, so against bytes each BPE token after the
  # first is a chunk of its own (the flagship case of Minixhofer et al. 2025), up to where the
  # teacher's bytes are cut; each chunk's text is the same on both sides, in order.
  tokenizer, files = stdlib_bpe
  with open(files[0], encoding="utf-8") as f:
    text = f.read()[:3000]
  ids, spans = text_files.text_tokens_with_spans(tokenizer, text)
  byte_ids, byte_spans = text_files.text_tokens_with_spans(text_files.ByteTokenizer(), text)
  assert tokenizer.decode(ids, skip_special_tokens=True) == text and bytes(byte_ids).decode() == text
  length, teacher_length = 32, 56
  bounds = text_files.window_teacher_bounds(text_files._starts(spans), text_files._starts(byte_spans), length)
  cut_windows = 0
  for window, start in enumerate(range(0, len(ids), length)):
    low = bounds[window]
    high = min(bounds[window + 1], low + teacher_length)
    chunk_ids, byte_chunk_ids = text_files.align_chunks(spans[start:start + length], byte_spans[low:high])
    window_ids, window_bytes = ids[start:start + length], byte_ids[low:high]
    kept = np.flatnonzero(chunk_ids >= 0)
    assert kept.tolist() == list(range(1, len(kept) + 1)) and chunk_ids[kept].tolist() == list(range(len(kept)))
    for chunk in range(len(kept)):
      assert tokenizer.decode([window_ids[kept[chunk]]]).encode() == bytes(
          [b for b, c in zip(window_bytes, byte_chunk_ids) if c == chunk])
    # Only the first token, and the tokens past the teacher's last byte, are in no chunk.
    covered = byte_spans[high - 1, 1]
    whole = [k for k in range(1, len(window_ids)) if spans[start + k, 0] < spans[start + k, 1] <= covered]
    assert kept.tolist() == whole
    cut_windows += bounds[window + 1] - low > teacher_length
  assert cut_windows > 0  # Some windows' bytes were cut: the edge was exercised.


def test_the_teacher_tokenizer_is_part_of_the_datasets_identity(stdlib_bpe, monkeypatch):
  tokenizer, files = stdlib_bpe
  plain = text_files.prepared_name(_name(train=_fixture("text.jsonl")))
  with_bytes = text_files.prepared_name(_name(train=_fixture("text.jsonl"), teacher_tokenizer="bytes"))
  with_bpe = text_files.prepared_name(_name(train=_fixture("text.jsonl"), teacher_tokenizer=tokenizer.path))
  longer = text_files.prepared_name(_name(train=_fixture("text.jsonl"), teacher_tokenizer="bytes",
                                          teacher_max_length=300))
  assert len({plain, with_bytes, with_bpe, longer}) == 4
  # The alignment's version is part of a teacher dataset's name (one prepared before chunk ids existed,
  # or with another alignment, is prepared again), not of other datasets' names.
  monkeypatch.setattr(text_files, "ALIGNMENT", text_files.ALIGNMENT + 1)
  assert text_files.prepared_name(_name(train=_fixture("text.jsonl"), teacher_tokenizer="bytes")) != with_bytes
  assert text_files.prepared_name(_name(train=_fixture("text.jsonl"))) == plain
  with pytest.raises(DataError, match="is the same tokenizer as tokenizer=.* leave teacher_tokenizer out"):
    text_files.builder_config(_name(train=_fixture("text.jsonl"), teacher_tokenizer=WORDS).partition("/")[2])
  with pytest.raises(DataError, match="teacher_max_length is the length of the teacher's tokenization"):
    text_files.parse(_name(train=_fixture("text.jsonl"), teacher_max_length=64).partition("/")[2])
  # A BPE teacher of a source file: its windows' tokens, in order, are its tokenization of the whole file.
  ids, starts = text_files.text_tokens_with_starts(text_files.ByteTokenizer(), "é and ß")
  assert ids == list("é and ß".encode()) and starts.tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 6]
  with open(files[0], encoding="utf-8") as f:
    text = f.read()
  student_ids, student_starts = text_files.text_tokens_with_starts(text_files.ByteTokenizer(), text)
  teacher_ids, teacher_starts = text_files.text_tokens_with_starts(tokenizer, text)
  windows = text_files.window_teacher_tokens(student_starts, teacher_ids, teacher_starts, 128)
  assert len(windows) == -(-len(student_ids) // 128) and sum(windows, []) == teacher_ids
  assert "".join(tokenizer.decode(window, skip_special_tokens=True) for window in windows) == text
  # Each teacher window begins in its student window's text (not empty, not late).
  for index, window in enumerate(windows[1:], start=1):
    boundary, first = student_starts[128 * index], teacher_starts[sum(map(len, windows[:index]))]
    assert boundary <= first < boundary + 16
