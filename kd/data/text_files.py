"""Your own text files, tokenized with a given tokenizer, as a TFDS dataset prepared once (ArrayRecord).

The dataset name says everything, so it fits `data.name` like any other dataset:

    data.name = "text_files/train=data/train.jsonl,validation=data/val.jsonl,tokenizer=ckpt,max_length=256"
    data.name = text_files.dataset_name(files="corpus/*.txt", tokenizer="bpe", max_length=128)

Keys (comma-separated `key=value`; several files or globs in one value are joined with `+`; relative
paths are from the working directory):

    train, validation, test   the files of each split (give at least train), or
    files                     files split by a fixed hash: a JSONL line by the SHA-256 of its text (so
                              duplicate lines share a split), a text file by the SHA-256 of its name
                              (as kd.data.stdlib_text splits: split=80/10/10 over its files gives the
                              same split);
    split                     with `files`: train/validation/test percentages, default 90/5/5
    tokenizer                 a tokenizer.json, or a checkpoint folder holding one (required)
    max_length                tokens per example, default 128
    format                    auto (default), text, prompt_completion or chat: how JSONL lines are read
    vocab_size                the vocabulary of the models that read the data (their logits and
                              embedding rows), default the tokenizer's number of ids; larger for a
                              checkpoint whose embedding is padded beyond its tokenizer (Qwen3: 151,936
                              rows for 151,669 ids; `kd.convert.hf.read_config(folder)[1]` is its size),
                              so that a student has the teacher's vocabulary; never smaller
    teacher_tokenizer         a second tokenizer (a tokenizer.json or folder, or `bytes`: the UTF-8
                              bytes as ids 0-255, no specials) for a teacher with another vocabulary:
                              every example also holds the teacher's tokenization of the same text
                              (below), for cross-tokenizer methods (kd.methods.lm_uld)
    teacher_max_length        the teacher's tokens per example, default max_length (a byte-level
                              teacher of a BPE student needs about 3-4x as many)

Files:

    .txt     plain text (so is any file not named .jsonl, e.g. .py): each file's tokens (the
             tokenizer's own specials, e.g. a bos, then the text, then eos) are cut into windows of
             max_length; the last window is padded
    .jsonl   one example per line, by its keys: {"text"}, {"prompt", "completion"}, or chat
             {"messages": [{"role", "content"}, ...]}. With format=auto every line of a file must have
             the keys its first line has.

Examples (features):

    tokens         int32 [max_length]  the ids, padded at the end with the pad id (else eos, else 0)
    mask           bool  [max_length]  True where the loss counts: every real token of text; only the
                                       completion (and its eos) of prompt/completion; only the assistant
                                       turns of a chat
    prompt_length  int32 []            tokens before the first masked one (0 for text): where methods
                                       that generate continue from

With teacher_tokenizer, also (the train step feeds them to the teacher as its tokens / mask / loss_mask):

    teacher_tokens     int32 [teacher_max_length]  the teacher's ids of the same text, padded with its
                                                   padding id
    teacher_mask       bool  [teacher_max_length]  True for the teacher's real (non-padding) tokens
    teacher_loss_mask  bool  [teacher_max_length]  True where its loss counts, by the rule of `mask`
    chunk_ids          int32 [max_length]          the aligned chunk of each student token, -1 for none
    teacher_chunk_ids  int32 [teacher_max_length]  the aligned chunk of each teacher token, -1 for none

Aligned chunks (for likelihood-matching methods, kd.methods.lm_alm; Minixhofer et al. 2025, Sec. 3): the
shortest pieces of the example's text whose two ends are token boundaries of both tokenizations, found
from the tokens' character offsets when the dataset is prepared. Chunks are numbered 0, 1, ... per
example in text order, and `chunk_ids[k]` is the chunk that the token at position k belongs to, so it
shifts with `tokens`: `chunk_ids[:, 1:]` goes with `logits[:, :-1]` as the targets `tokens[:, 1:]` do (the
token at position k is predicted at position k-1). A chunk's likelihood under a model is then the
product of its tokens' next-token probabilities on that side. A chunk is kept (numbered) only when both
sides have tokens in it and every one of them is predicted: none at position 0 (never predicted), and
the chunk lies inside the text that both sides' (possibly truncated) tokens cover, so a window's or a
truncation's edge never leaves one side's part of a chunk behind. Special tokens (bos, eos, ...) stand
for no text and belong to no chunk, nor do tokens in a dropped chunk, nor text that a tokenizer leaves
out (a word-level tokenizer's spaces: a space alone is a chunk of the teacher's only, dropped). Which
tokens count in a loss (the masks) is left to the method. A chat is aligned only when both tokenizers
render it to the same text (the same chat template); otherwise its chunk ids are all -1, counted as
`unaligned`. The counts also record `aligned_chunks` per split.

The same text, tokenized twice: a JSONL example is tokenized by each tokenizer as a whole (a chat with
each one's own template); a window of a .txt file is the span of text its student tokens cover (from
the start of its first token to the start of the next window's first), and holds the teacher's tokens
of the whole file that start in that span, so that neither tokenization is cut mid-word by the other's
windows. The teacher's side is truncated at teacher_max_length (counted as `teacher_truncated`); a JSONL
example with nothing left to learn on either side is dropped. The metadata records `teacher_vocab_size`
(the teacher model's vocabulary must equal it) and `teacher_tokenizer`; `teacher_vocab_size_of(name)`
reads it from a dataset name. Offsets are taken as the tokenizer reports them: one that trims spaces
from its offsets (`trim_offsets`) leaves those spaces in no token, so they fall out of the chunks.

A prompt and its completion are tokenized apart and concatenated (the prompt with the tokenizer's
specials, the completion then eos), so the boundary is exact. A chat is rendered with the tokenizer's
chat template (`kd.lm.tokenizer`, as transformers renders it; ChatML when it has none) and tokenized
whole; assistant turns are the template's `{% generation %}` blocks when it has them, else what
rendering `messages[:i+1]` adds to `messages[:i]` with the generation prompt (the header of turn i
belongs to the prompt, its content and end-of-turn marker to the loss).

Longer examples are truncated at max_length, never dropped silently: preparing logs how many were
truncated, and drops (and counts) those left with no token to learn (a prompt that fills the window);
the counts are in the dataset's metadata (`builder.info.metadata`, also metadata.json in its folder).

Each source gets its own TFDS config, `<first file's stem>_<max_length>_<digest>`, where the digest covers
the files' names and contents, the tokenizer (its tokenizer.json, special tokens and chat template),
max_length, format and split (and the teacher's tokenizer and length, and the version of the alignment,
ALIGNMENT): editing a file or changing the tokenizer prepares a new dataset, and two sources never share
one; a dataset with a teacher tokenizer prepared before the chunk ids existed gets a new name, so it is
prepared again rather than read without them.
"""

import dataclasses
import functools
import glob
import hashlib
import json
import logging as std_logging
import os
import re
from typing import Any, Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from kd.errors import DataError
from kd.lm import tokenizer as tokenizer_lib

VERSION = "1.0.0"
FAMILY = "text_files"
FORMATS = ("auto", "text", "prompt_completion", "chat")
SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT = (90, 5, 5)
DEFAULT_MAX_LENGTH = 128
RELEASE_NOTES = {VERSION: ".txt windows and JSONL text, prompt/completion and chat, with a tokenizer.json."}
KEYS = ("train", "validation", "test", "files", "split", "tokenizer", "max_length", "format", "vocab_size",
        "teacher_tokenizer", "teacher_max_length")
BYTES = "bytes"  # teacher_tokenizer=bytes: the UTF-8 bytes as ids.
# The version of the aligned chunks (chunk_ids / teacher_chunk_ids) in a dataset with a teacher tokenizer:
# part of its identity, so a change of the alignment (or a dataset prepared without it) is prepared anew.
ALIGNMENT = 1
# What each JSONL format needs in a line, in the order `auto` tries them.
FORMAT_KEYS = {"chat": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}


@dataclasses.dataclass(frozen=True)
class Source:
  """A parsed dataset name: which files, how they split, how they are tokenized."""

  splits: dict[str, tuple[str, ...]]  # Split -> absolute paths; with `fractions`, {"*": all files}.
  fractions: tuple[int, int, int] | None
  tokenizer: str  # The tokenizer.json.
  max_length: int
  format: str
  vocab_size: int = 0  # The models' vocabulary; 0: the tokenizer's number of ids.
  teacher_tokenizer: str = ""  # The teacher's tokenizer.json, or BYTES; "": the teacher shares `tokenizer`.
  teacher_max_length: int = 0  # 0: max_length.

  @property
  def teacher_length(self) -> int:
    return self.teacher_max_length or self.max_length


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as ids 0-255 (`teacher_tokenizer=bytes`), with the interface of kd.lm.tokenizer.Tokenizer.

  No special tokens (as stdlib_text's byte windows): a byte-level model trained there reads these ids.
  """

  path: str = BYTES
  digest: str = BYTES
  chat_template: str | None = None
  vocab_size: int = 256
  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int | None = None
  padding_id: int = 0

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    del add_special_tokens  # There are none.
    return list(text.encode("utf-8"))

  def encode_with_offsets(self, text: str, add_special_tokens: bool = False):
    del add_special_tokens
    ids, offsets = [], []
    for index, char in enumerate(text):
      encoded = char.encode("utf-8")
      ids.extend(encoded)
      offsets.extend([(index, index + 1)] * len(encoded))
    return ids, offsets

  def template_variables(self) -> dict[str, str]:
    return {}


def load_tokenizer(path: str):
  """A tokenizer by its `tokenizer=` / `teacher_tokenizer=` value: BYTES, or a tokenizer.json (kd.lm.tokenizer)."""
  return ByteTokenizer() if path == BYTES else tokenizer_lib.load(path)


def dataset_name(*, tokenizer: str, train: str = "", validation: str = "", test: str = "", files: str = "",
                 split: str = "", max_length: int = DEFAULT_MAX_LENGTH, format: str = "auto",  # pylint: disable=redefined-builtin
                 vocab_size: int = 0, teacher_tokenizer: str = "", teacher_max_length: int = 0) -> str:
  """The `data.name` of a text source: `text_files/key=value,...` (see the module docstring)."""
  values = {"train": train, "validation": validation, "test": test, "files": files, "split": split,
            "tokenizer": tokenizer, "max_length": str(max_length) if max_length != DEFAULT_MAX_LENGTH else "",
            "format": format if format != "auto" else "", "vocab_size": str(vocab_size) if vocab_size else "",
            "teacher_tokenizer": teacher_tokenizer,
            "teacher_max_length": str(teacher_max_length) if teacher_max_length else ""}
  return f"{FAMILY}/" + ",".join(f"{key}={value}" for key, value in values.items() if value)


def _expand(value: str, key: str) -> tuple[str, ...]:
  paths = []
  for pattern in filter(None, value.split("+")):
    pattern = os.path.expanduser(pattern)
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not matches:
      raise DataError(f"{FAMILY}: {key}={pattern} matches no file")
    for path in matches:
      if not os.path.isfile(path):
        raise DataError(f"{FAMILY}: {key}={path}: no such file")
      paths.append(os.path.abspath(path))
  return tuple(paths)


def parse(config_name: str) -> Source:
  """Reads the part of a dataset name after `text_files/`; DataError naming the problem and the keys."""
  usage = (f"name a text dataset as {FAMILY}/train=<files>,tokenizer=<tokenizer.json or folder>[,validation=...]"
           f"[,test=...][,max_length=N][,format=...] or {FAMILY}/files=<files>,split=90/5/5,tokenizer=...")
  if not config_name:
    raise DataError(f"{FAMILY} needs its files and tokenizer: {usage}")
  values = {}
  for item in config_name.split(","):
    key, sep, value = item.partition("=")
    if not sep or key not in KEYS:
      raise DataError(f"{FAMILY}: {item!r} is not key=value with a key among {list(KEYS)} (paths cannot hold "
                      f"',' or '='): {usage}")
    if key in values:
      raise DataError(f"{FAMILY}: {key} is given twice")
    values[key] = value
  if "tokenizer" not in values:
    raise DataError(f"{FAMILY}: no tokenizer given: {usage}")
  tokenizer = tokenizer_lib.tokenizer_file(values["tokenizer"])
  try:
    max_length = int(values.get("max_length", DEFAULT_MAX_LENGTH))
  except ValueError:
    max_length = 0
  if max_length < 2:
    raise DataError(f"{FAMILY}: max_length={values.get('max_length')} must be an integer >= 2")
  data_format = values.get("format", "auto")
  if data_format not in FORMATS:
    raise DataError(f"{FAMILY}: format={data_format!r}: choose one of {list(FORMATS)}")
  try:
    vocab_size = int(values.get("vocab_size", 0))
  except ValueError:
    vocab_size = -1
  if vocab_size < 0 or ("vocab_size" in values and vocab_size == 0):
    raise DataError(f"{FAMILY}: vocab_size={values['vocab_size']} must be a positive integer (the models' "
                    "vocabulary, at least the tokenizer's number of ids)")
  teacher = _teacher_keys(values)
  given = [split for split in SPLITS if split in values]
  if "files" in values:
    if given:
      raise DataError(f"{FAMILY}: give either files= (split by hash) or train=/validation=/test=, not both")
    try:
      fractions = tuple(int(part) for part in values.get("split", "/".join(map(str, DEFAULT_SPLIT))).split("/"))
    except ValueError:
      fractions = ()
    if len(fractions) != 3 or sum(fractions) != 100 or min(fractions) < 0 or fractions[0] == 0:
      raise DataError(f"{FAMILY}: split={values.get('split')} must be train/validation/test percentages "
                      "summing to 100, train > 0 (e.g. 90/5/5)")
    return Source(splits={"*": _expand(values["files"], "files")}, fractions=fractions, tokenizer=tokenizer,
                  max_length=max_length, format=data_format, vocab_size=vocab_size, **teacher)
  if "split" in values:
    raise DataError(f"{FAMILY}: split= divides files= by hash; with train=/validation=/test= the files "
                    "are the splits")
  if "train" not in values:
    raise DataError(f"{FAMILY}: no train files given: {usage}")
  return Source(splits={split: _expand(values[split], split) for split in given}, fractions=None,
                tokenizer=tokenizer, max_length=max_length, format=data_format, vocab_size=vocab_size, **teacher)


def _teacher_keys(values: dict[str, str]) -> dict[str, Any]:
  """The Source fields of teacher_tokenizer / teacher_max_length; DataError for unusable values."""
  if "teacher_tokenizer" not in values:
    if "teacher_max_length" in values:
      raise DataError(f"{FAMILY}: teacher_max_length is the length of the teacher's tokenization: give "
                      "teacher_tokenizer=<tokenizer.json or folder, or bytes> with it")
    return {}
  path = values["teacher_tokenizer"]
  path = BYTES if path == BYTES else tokenizer_lib.tokenizer_file(path)
  try:
    length = int(values.get("teacher_max_length", 0))
  except ValueError:
    length = -1
  if length < 0 or ("teacher_max_length" in values and length < 2):
    raise DataError(f"{FAMILY}: teacher_max_length={values['teacher_max_length']} must be an integer >= 2")
  return {"teacher_tokenizer": path, "teacher_max_length": length}


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
  del mtime_ns, size  # Only the cache key.
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _content_digest(path: str) -> str:
  stat = os.stat(path)
  return _file_digest(path, stat.st_mtime_ns, stat.st_size)


def _check_disjoint(source: Source) -> None:
  seen = {}
  for split, paths in source.splits.items():
    for path in paths:
      other = seen.setdefault(_content_digest(path), (split, path))
      if other[0] != split:
        raise DataError(f"{FAMILY}: {other[1]} ({other[0]}) and {path} ({split}) have the same contents: a file "
                        "in two splits would evaluate on training data; give each split its own files")


def identity(source: Source, tokenizer: tokenizer_lib.Tokenizer) -> str:
  """A digest of everything that determines the prepared examples (not where the files lie)."""
  payload = {
      "version": VERSION, "max_length": source.max_length, "format": source.format,
      "fractions": source.fractions, "tokenizer": tokenizer.digest,
      "splits": {split: sorted([os.path.basename(path), _content_digest(path)] for path in paths)
                 for split, paths in source.splits.items()},
  }
  if source.vocab_size:  # Only when given: the datasets prepared before the key existed keep their names.
    payload["vocab_size"] = source.vocab_size
  if source.teacher_tokenizer:  # Likewise.
    payload["teacher"] = [load_tokenizer(source.teacher_tokenizer).digest, source.teacher_length]
    payload["alignment"] = ALIGNMENT
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class TextFilesConfig(tfds.core.BuilderConfig):
  """One text source (see the module docstring), named `<stem>_<max_length>_<digest>`."""

  def __init__(self, config_name: str):
    source = parse(config_name)
    _check_disjoint(source)
    tokenizer = tokenizer_lib.load(source.tokenizer)
    if source.vocab_size and source.vocab_size < tokenizer.vocab_size:
      raise DataError(f"{FAMILY}: vocab_size={source.vocab_size} is smaller than the tokenizer {source.tokenizer}'s "
                      f"{tokenizer.vocab_size} ids: a model must have a logit for every id; give at least "
                      f"{tokenizer.vocab_size}, or leave vocab_size out")
    first = next(iter(source.splits.values()))[0]
    stem = re.sub(r"[^a-z0-9]+", "_", os.path.splitext(os.path.basename(first))[0].lower()).strip("_")[:24]
    super().__init__(name=f"{stem or 'text'}_{source.max_length}_{identity(source, tokenizer)[:12]}",
                     version=tfds.core.Version(VERSION), description=config_name, release_notes=RELEASE_NOTES)
    self.source = source
    self.tokenizer = tokenizer
    self.teacher_tokenizer = load_tokenizer(source.teacher_tokenizer) if source.teacher_tokenizer else None
    if self.teacher_tokenizer is not None and self.teacher_tokenizer.digest == tokenizer.digest:
      raise DataError(f"{FAMILY}: teacher_tokenizer={source.teacher_tokenizer} is the same tokenizer as "
                      f"tokenizer={source.tokenizer}: leave teacher_tokenizer out (a same-tokenizer method "
                      "such as lm_kd reads the teacher on the student's tokens)")


class _QuietCustomConfigs(std_logging.Filter):
  """Drops TFDS's "Using custom data configuration" warning for a text_files config.

  Every text source is a config made from its dataset name (no fixed list can hold them), and TFDS
  warns, with the whole name, each time a builder is made from one: dozens of times per run.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not (str(record.msg).startswith("Using custom data configuration")
                and record.args and isinstance(record.args[0], TextFilesConfig))


std_logging.getLogger("absl").addFilter(_QuietCustomConfigs())


def builder_config(config_name: str) -> TextFilesConfig:
  return TextFilesConfig(config_name)


def prepared_name(name: str) -> str:
  """`text_files/<stem>_<max_length>_<digest>`, the TFDS name a `text_files/...` dataset is prepared under.

  Its identity by content: it changes with the files' contents, the tokenizer, max_length, format and
  split, not with where the files lie (e.g. for a stage's fingerprint, where `data.name` holds paths).
  """
  family, _, config_name = name.partition("/")
  if family != FAMILY:
    raise DataError(f"{name!r} is not a {FAMILY} dataset")
  return f"{FAMILY}/{builder_config(config_name).name}"


def vocab_size_of(source: Source, tokenizer: tokenizer_lib.Tokenizer) -> int:
  """The vocabulary of the models that read `source`: its `vocab_size`, else the tokenizer's number of ids."""
  return source.vocab_size or tokenizer.vocab_size


def tokenizer_for(name: str) -> tokenizer_lib.Tokenizer:
  """The tokenizer of a `text_files/...` dataset name (to decode its tokens, or check a model's vocabulary)."""
  family, _, config_name = name.partition("/")
  if family != FAMILY:
    raise DataError(f"{name!r} is not a {FAMILY} dataset")
  return tokenizer_lib.load(parse(config_name).tokenizer)


def teacher_vocab_size_of(name: str) -> int:
  """The teacher's vocabulary of a dataset with teacher_tokenizer (its number of ids); 0 for any other dataset.

  What a stage compares its teacher model's vocabulary with (and what tells a cross-tokenizer method
  that the batches carry `teacher_tokens`).
  """
  family, _, config_name = name.partition("/")
  if family != FAMILY:
    return 0
  source = parse(config_name)
  return load_tokenizer(source.teacher_tokenizer).vocab_size if source.teacher_tokenizer else 0


def _split_of_hash(text: bytes, fractions: tuple[int, int, int]) -> str:
  bucket = int(hashlib.sha256(text).hexdigest()[:8], 16) % 100
  low = 0
  for split, share in zip(SPLITS, fractions):
    if low <= bucket < low + share:
      return split
    low += share
  raise AssertionError(bucket)


@dataclasses.dataclass
class Counts:
  """What preparing a split did with its examples."""

  examples: int = 0
  truncated: int = 0  # Longer than max_length: cut at the end.
  dropped: int = 0  # Nothing left to learn after truncation (or a chat without an assistant turn).
  teacher_truncated: int = 0  # The teacher's tokens longer than teacher_max_length: cut at the end.
  aligned_chunks: int = 0  # Chunks of text aligned between the two tokenizations (module docstring).
  unaligned: int = 0  # Examples the two tokenizers render to different texts (a chat): no chunk.


def text_tokens(tokenizer: tokenizer_lib.Tokenizer, text: str) -> list[int]:
  """A document's ids: the tokenizer's own specials (e.g. bos), the text, then eos when it has one."""
  ids = tokenizer.encode(text, add_special_tokens=True)
  if tokenizer.eos_id is not None and (not ids or ids[-1] != tokenizer.eos_id):
    ids.append(tokenizer.eos_id)
  return ids


def prompt_completion_tokens(tokenizer: tokenizer_lib.Tokenizer, prompt: str,
                             completion: str) -> tuple[list[int], list[bool]]:
  """(ids, mask): the prompt (with the tokenizer's specials), then the completion and eos, masked."""
  prompt_ids = tokenizer.encode(prompt, add_special_tokens=True)
  completion_ids = tokenizer.encode(completion) + ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
  return prompt_ids + completion_ids, [False] * len(prompt_ids) + [True] * len(completion_ids)


def _has_generation_blocks(template: str) -> bool:
  return re.search(r"{%-?\s*generation\s*-?%}", template) is not None


def assistant_spans(tokenizer: tokenizer_lib.Tokenizer, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
  """(text, [start, end) character spans of the assistant turns) of a rendered conversation."""
  template = tokenizer.chat_template or tokenizer_lib.FALLBACK_CHAT_TEMPLATE
  variables = tokenizer.template_variables()
  text, spans = tokenizer_lib.render_chat(template, messages, add_generation_prompt=False, **variables)
  if _has_generation_blocks(template):
    return text, spans
  spans = []
  for index, message in enumerate(messages):
    if message["role"] != "assistant":
      continue
    before, _ = tokenizer_lib.render_chat(template, messages[:index], add_generation_prompt=True, **variables)
    through, _ = tokenizer_lib.render_chat(template, messages[:index + 1], add_generation_prompt=False, **variables)
    if not (through.startswith(before) and text.startswith(through)):
      raise DataError(
          "the chat template renders earlier turns differently once later ones follow, so assistant turns "
          f"cannot be found by prefix (turn {index}): add {{% generation %}}...{{% endgeneration %}} around "
          "the assistant content in the template (transformers' marker of assistant tokens)")
    spans.append((len(before), len(through)))
  return text, spans


def chat_tokens(tokenizer: tokenizer_lib.Tokenizer, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
  """(ids, mask): the rendered conversation tokenized whole; mask on the assistant turns' tokens."""
  ids, mask, _, _ = chat_tokens_with_spans(tokenizer, messages)
  return ids, mask


def chat_tokens_with_spans(tokenizer, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool], np.ndarray, str]:
  """`chat_tokens`, each token's [start, end) characters in the rendered text [n, 2], and that text."""
  text, spans = assistant_spans(tokenizer, messages)
  ids, offsets = tokenizer.encode_with_offsets(text)
  mask = []
  for start, end in offsets:
    mask.append(any((start < span_end and end > span_start) or (start == end and span_start <= start < span_end)
                    for span_start, span_end in spans))
  return list(ids), mask, _spans(offsets), text


def _check_messages(messages, where: str) -> list[dict[str, Any]]:
  if not isinstance(messages, list) or not messages:
    raise DataError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}}")
  for turn, message in enumerate(messages):
    if not (isinstance(message, dict) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)):
      found = sorted(message) if isinstance(message, dict) else type(message).__name__
      raise DataError(f"{where}: message {turn} must be {{\"role\": str, \"content\": str}}; it is {found}")
  return messages


def _line_format(record: dict[str, Any]) -> str | None:
  for data_format, keys in FORMAT_KEYS.items():
    if all(key in record for key in keys):
      return data_format
  return None


def _jsonl_records(path: str, data_format: str) -> Iterator[tuple[int, bytes, str, dict[str, Any]]]:
  """(line number, raw line, format, record) of each non-empty line; DataError for a line that does not fit."""
  file_format = None if data_format == "auto" else data_format
  first_line = 0
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      raw = raw.strip()
      if not raw:
        continue
      where = f"{path}:{number}"
      try:
        record = json.loads(raw)
      except ValueError as e:
        raise DataError(f"{where}: not a JSON line ({e})") from e
      if not isinstance(record, dict):
        raise DataError(f"{where}: a JSONL line must be an object, not {type(record).__name__}")
      line_format = _line_format(record)
      if file_format is None:
        if line_format is None:
          raise DataError(f"{where}: a JSONL line needs 'text', or 'prompt' and 'completion', or 'messages'; "
                          f"it has keys {sorted(record)}")
        file_format, first_line = line_format, number
      if not all(key in record for key in FORMAT_KEYS[file_format]):
        needed = " and ".join(repr(key) for key in FORMAT_KEYS[file_format])
        because = f"its line {first_line} is {file_format}" if first_line else f"format={file_format}"
        kind = "a list of {role, content}" if file_format == "chat" else "strings"
        raise DataError(f"{where}: {file_format} data needs {needed} ({kind}) in every line ({because}); this "
                        f"line has keys {sorted(record)}")
      for key in FORMAT_KEYS[file_format]:
        if key != "messages" and not isinstance(record[key], str):
          raise DataError(f"{where}: {key!r} must be a string, not {type(record[key]).__name__}")
      if file_format == "chat":
        _check_messages(record["messages"], where)
      yield number, raw, file_format, record


def fixed_length(ids: list[int], mask: list[bool], max_length: int,
                 padding_id: int) -> tuple[np.ndarray, np.ndarray, int, bool] | None:
  """(tokens, mask, prompt_length, truncated) of one example cut or padded to max_length; None if no
  token is left to learn."""
  truncated = len(ids) > max_length
  ids, mask = ids[:max_length], mask[:max_length]
  if not any(mask):
    return None
  tokens = np.full(max_length, padding_id, np.int32)
  tokens[:len(ids)] = ids
  full_mask = np.zeros(max_length, bool)
  full_mask[:len(mask)] = mask
  return tokens, full_mask, int(np.argmax(full_mask)), truncated


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """Tokenized local text files; see the module docstring."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = RELEASE_NOTES

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    tokenizer = config.tokenizer
    length = config.source.max_length
    features = {
        "tokens": tfds.features.Tensor(shape=(length,), dtype=np.int32),
        "mask": tfds.features.Tensor(shape=(length,), dtype=np.bool_),
        "prompt_length": tfds.features.Scalar(dtype=np.int32),
    }
    teacher_metadata = {}
    if config.teacher_tokenizer is not None:
      teacher_length = config.source.teacher_length
      features.update({
          "teacher_tokens": tfds.features.Tensor(shape=(teacher_length,), dtype=np.int32),
          "teacher_mask": tfds.features.Tensor(shape=(teacher_length,), dtype=np.bool_),
          "teacher_loss_mask": tfds.features.Tensor(shape=(teacher_length,), dtype=np.bool_),
          "chunk_ids": tfds.features.Tensor(shape=(length,), dtype=np.int32),
          "teacher_chunk_ids": tfds.features.Tensor(shape=(teacher_length,), dtype=np.int32),
      })
      teacher_metadata = {"teacher_vocab_size": config.teacher_tokenizer.vocab_size,
                          "teacher_tokenizer": config.teacher_tokenizer.path,
                          "teacher_padding_id": config.teacher_tokenizer.padding_id,
                          "teacher_max_length": teacher_length}
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{__doc__}\nSource: {config.description}",
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(
            vocab_size=vocab_size_of(config.source, tokenizer), tokenizer_vocab_size=tokenizer.vocab_size,
            bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id, padding_id=tokenizer.padding_id, tokenizer=tokenizer.path,
            max_length=length, counts={}, **teacher_metadata),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    source = self.builder_config.source
    if source.fractions is None:
      return {split: self._generate_examples(split, paths, None) for split, paths in source.splits.items()}
    return {split: self._generate_examples(split, source.splits["*"], split) for split in SPLITS
            if source.fractions[SPLITS.index(split)]}

  def _generate_examples(self, split: str, paths: tuple[str, ...], only_split: str | None):
    source, tokenizer = self.builder_config.source, self.builder_config.tokenizer
    teacher_tokenizer = self.builder_config.teacher_tokenizer
    counts = Counts()
    for file_index, path in enumerate(paths):
      if not path.endswith(".jsonl"):
        if only_split and _split_of_hash(os.path.basename(path).encode(), source.fractions) != only_split:
          continue
        for window, example in enumerate(self._windows(path, tokenizer, source.max_length, counts)):
          counts.examples += 1
          yield f"{file_index}:{window}", example
        continue
      for number, raw, line_format, record in _jsonl_records(path, source.format):
        if only_split and _split_of_hash(raw, source.fractions) != only_split:
          continue
        try:
          if teacher_tokenizer is None:
            ids, mask = example_tokens(tokenizer, line_format, record)
            teacher = None
          else:
            ids, mask, spans, text = example_tokens_with_spans(tokenizer, line_format, record)
            *teacher, teacher_spans, teacher_text = example_tokens_with_spans(teacher_tokenizer, line_format, record)
        except DataError as e:
          raise DataError(f"{path}:{number}: {e}") from e
        example = fixed_length(ids, mask, source.max_length, tokenizer.padding_id)
        teacher_example = None if teacher is None else fixed_length(*teacher, source.teacher_length,
                                                                     teacher_tokenizer.padding_id)
        if example is None or (teacher is not None and teacher_example is None):
          counts.dropped += 1
          continue
        tokens, full_mask, prompt_length, truncated = example
        counts.examples += 1
        counts.truncated += truncated
        features = {"tokens": tokens, "mask": full_mask, "prompt_length": prompt_length}
        if teacher is not None:
          teacher_tokens, teacher_loss_mask, _, teacher_truncated = teacher_example
          counts.teacher_truncated += teacher_truncated
          real = np.zeros(source.teacher_length, bool)
          real[:min(len(teacher[0]), source.teacher_length)] = True
          features.update({"teacher_tokens": teacher_tokens, "teacher_mask": real,
                           "teacher_loss_mask": teacher_loss_mask})
          if text == teacher_text:
            chunk_ids, teacher_chunk_ids = align_chunks(spans[:source.max_length],
                                                        teacher_spans[:source.teacher_length])
          else:  # Two chat templates: offsets into two texts cannot be compared.
            chunk_ids, teacher_chunk_ids = np.zeros(0, np.int32), np.zeros(0, np.int32)
            counts.unaligned += 1
          counts.aligned_chunks += int(chunk_ids.max(initial=-1)) + 1
          features.update({"chunk_ids": _padded_ids(chunk_ids, source.max_length),
                           "teacher_chunk_ids": _padded_ids(teacher_chunk_ids, source.teacher_length)})
        yield f"{file_index}:{number}", features
    counted = dataclasses.asdict(counts)
    if teacher_tokenizer is None:  # As datasets without a teacher's tokenization always recorded them.
      for key in ("teacher_truncated", "aligned_chunks", "unaligned"):
        del counted[key]
    self.info.metadata["counts"][split] = counted
    if counts.truncated or counts.dropped:
      logging.warning("%s split %s: of %d examples, %d were longer than max_length=%d and were truncated, and "
                      "%d more were dropped (nothing left to learn once truncated)", FAMILY, split,
                      counts.examples + counts.dropped, counts.truncated, source.max_length, counts.dropped)
    if counts.unaligned:
      logging.warning("%s split %s: the two tokenizers render %d examples (chats) to different texts, which "
                      "have no aligned chunks", FAMILY, split, counts.unaligned)
    if counts.teacher_truncated:
      logging.warning("%s split %s: the teacher's tokens of %d examples were longer than teacher_max_length=%d "
                      "and were truncated", FAMILY, split, counts.teacher_truncated, source.teacher_length)

  def _windows(self, path: str, tokenizer: tokenizer_lib.Tokenizer, length: int, counts: Counts):
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except UnicodeDecodeError as e:
      raise DataError(f"{path}: not UTF-8 text ({e})") from e
    teacher_tokenizer = self.builder_config.teacher_tokenizer
    if teacher_tokenizer is None:
      ids = text_tokens(tokenizer, text)
      teacher_windows = None
    else:
      ids, spans = text_tokens_with_spans(tokenizer, text)
      teacher_ids, teacher_spans = text_tokens_with_spans(teacher_tokenizer, text)
      teacher_bounds = window_teacher_bounds(_starts(spans), _starts(teacher_spans), length)
      teacher_windows = [teacher_ids[low:high] for low, high in zip(teacher_bounds[:-1], teacher_bounds[1:])]
      teacher_length = self.builder_config.source.teacher_length
    for window_index, start in enumerate(range(0, len(ids), length)):
      window = ids[start:start + length]
      tokens = np.full(length, tokenizer.padding_id, np.int32)
      tokens[:len(window)] = window
      mask = np.zeros(length, bool)
      mask[:len(window)] = True
      example = {"tokens": tokens, "mask": mask, "prompt_length": np.int32(0)}
      if teacher_windows is not None:
        own = teacher_windows[window_index][:teacher_length]
        counts.teacher_truncated += len(teacher_windows[window_index]) > teacher_length
        teacher_tokens = np.full(teacher_length, teacher_tokenizer.padding_id, np.int32)
        teacher_tokens[:len(own)] = own
        teacher_mask = np.zeros(teacher_length, bool)
        teacher_mask[:len(own)] = True
        first_teacher = teacher_bounds[window_index]
        chunk_ids, teacher_chunk_ids = align_chunks(spans[start:start + length],
                                                    teacher_spans[first_teacher:first_teacher + len(own)])
        counts.aligned_chunks += int(chunk_ids.max(initial=-1)) + 1
        example.update({"teacher_tokens": teacher_tokens, "teacher_mask": teacher_mask,
                        "teacher_loss_mask": teacher_mask.copy(), "chunk_ids": _padded_ids(chunk_ids, length),
                        "teacher_chunk_ids": _padded_ids(teacher_chunk_ids, teacher_length)})
      yield example


def example_tokens_with_spans(tokenizer, line_format: str,
                              record: dict[str, Any]) -> tuple[list[int], list[bool], np.ndarray, str]:
  """`example_tokens`, each token's [start, end) characters [n, 2] (empty for special tokens) and the text
  they index: the text, the prompt then the completion, or the rendered chat."""
  if line_format == "text":
    ids, spans = text_tokens_with_spans(tokenizer, record["text"])
    return ids, [True] * len(ids), spans, record["text"]
  if line_format == "prompt_completion":
    prompt, completion = record["prompt"], record["completion"]
    prompt_ids, prompt_offsets = tokenizer.encode_with_offsets(prompt, add_special_tokens=True)
    completion_ids, completion_offsets = tokenizer.encode_with_offsets(completion)
    spans = [tuple(o) for o in prompt_offsets] + [(start + len(prompt), end + len(prompt))
                                                  for start, end in completion_offsets]
    ids = list(prompt_ids) + list(completion_ids)
    if tokenizer.eos_id is not None:
      ids.append(tokenizer.eos_id)
      spans.append((len(prompt) + len(completion),) * 2)
    return ids, [False] * len(prompt_ids) + [True] * (len(ids) - len(prompt_ids)), _spans(spans), prompt + completion
  ids, mask, spans, text = chat_tokens_with_spans(tokenizer, record["messages"])
  return ids, mask, spans, text


def _spans(offsets) -> np.ndarray:
  """[n, 2] int64 character spans; a zero-width one (a special token) kept as it is."""
  return np.asarray(offsets, np.int64).reshape(-1, 2)


def _starts(spans: np.ndarray) -> np.ndarray:
  """Where each token starts, non-decreasing: a special token the post-processor adds (offsets 0, 0) after
  text starts where the token before it does."""
  return np.maximum.accumulate(spans[:, 0]) if len(spans) else np.zeros(0, np.int64)


def _padded_ids(chunk_ids: np.ndarray, length: int) -> np.ndarray:
  padded = np.full(length, -1, np.int32)
  padded[:len(chunk_ids)] = chunk_ids[:length]
  return padded


def align_chunks(student_spans, teacher_spans) -> tuple[np.ndarray, np.ndarray]:
  """The aligned chunk of each token of two tokenizations of one text (-1: none), numbered in text order.

  Minixhofer et al. 2025, Sec. 3: a chunk is a piece of text whose both ends are token boundaries of both
  tokenizations (tokenkit's `align.get_unconstrained_alignments`: the shortest such pieces). Here a cut
  is a character position that no token of either side has strictly inside it, among the tokens' own
  starts and ends, within the text both sides cover; chunks are the pieces between consecutive cuts.
  A chunk is kept when both sides have tokens in it and none of them sits at position 0 (the first token
  is never predicted, so its chunk's likelihood is unknown). Tokens with an empty span (special tokens)
  are in no chunk; tokens that overlap (two pieces of one character) share their chunk.

  Args:
    student_spans: [n, 2] [start, end) character offsets of the student's tokens, in position order.
    teacher_spans: [m, 2] the teacher's, into the same text.

  Returns:
    int32 [n] and [m]: each token's chunk, 0 .. chunks-1, or -1.
  """
  sides = (_spans(student_spans), _spans(teacher_spans))
  chunk_ids = [np.full(len(spans), -1, np.int32) for spans in sides]
  real = [spans[:, 1] > spans[:, 0] for spans in sides]
  if not all(r.any() for r in real):
    return chunk_ids[0], chunk_ids[1]
  origin = min(int(spans[r, 0].min()) for spans, r in zip(sides, real))
  sides = tuple(spans - origin for spans in sides)  # Offsets into a whole file can be large.
  low = max(int(spans[r, 0].min()) for spans, r in zip(sides, real))
  high = min(int(spans[r, 1].max()) for spans, r in zip(sides, real))
  size = max(int(spans[r, 1].max()) for spans, r in zip(sides, real)) + 2
  inside = np.zeros(size, np.int64)  # How many tokens have each position strictly inside them.
  for spans, r in zip(sides, real):
    np.add.at(inside, spans[r, 0] + 1, 1)
    np.add.at(inside, spans[r, 1], -1)
  inside = np.cumsum(inside)
  candidates = np.unique(np.concatenate([spans[r].reshape(-1) for spans, r in zip(sides, real)]))
  candidates = candidates[(candidates >= low) & (candidates <= high)]
  cuts = candidates[inside[candidates] == 0]
  if len(cuts) < 2:
    return chunk_ids[0], chunk_ids[1]
  chunk_of, has_tokens, first_token = [], [], []
  for spans, r in zip(sides, real):
    within = r & (spans[:, 0] >= cuts[0]) & (spans[:, 1] <= cuts[-1])
    chunk = np.where(within, np.searchsorted(cuts, spans[:, 0], side="right") - 1, -1)
    chunk_of.append(chunk)
    has_tokens.append(np.bincount(chunk[within], minlength=len(cuts) - 1) > 0)
    first_token.append(chunk[0] if within[0] else -1)
  kept = has_tokens[0] & has_tokens[1]
  for first in first_token:  # The chunk of a real token at position 0 on either side.
    if first >= 0:
      kept[first] = False
  number = np.cumsum(kept) - 1
  for side, chunk in enumerate(chunk_of):
    good = chunk >= 0
    good[good] = kept[chunk[good]]
    chunk_ids[side][good] = number[chunk[good]]
  return chunk_ids[0], chunk_ids[1]


def example_tokens(tokenizer, line_format: str, record: dict[str, Any]) -> tuple[list[int], list[bool]]:
  """(ids, loss mask) of one JSONL record in its format, before the window's truncation and padding."""
  if line_format == "text":
    ids = text_tokens(tokenizer, record["text"])
    return ids, [True] * len(ids)
  if line_format == "prompt_completion":
    return prompt_completion_tokens(tokenizer, record["prompt"], record["completion"])
  return chat_tokens(tokenizer, record["messages"])


def text_tokens_with_spans(tokenizer, text: str) -> tuple[list[int], np.ndarray]:
  """`text_tokens(tokenizer, text)` and each token's [start, end) characters in `text` [n, 2] (int64).

  Special tokens stand for no text: their spans are empty (the appended eos at len(text)).
  """
  ids, offsets = tokenizer.encode_with_offsets(text, add_special_tokens=True)
  ids = list(ids)
  spans = [tuple(offset) for offset in offsets]
  if tokenizer.eos_id is not None and (not ids or ids[-1] != tokenizer.eos_id):
    ids.append(tokenizer.eos_id)
    spans.append((len(text), len(text)))
  if ids != text_tokens(tokenizer, text):
    raise AssertionError("encode_with_offsets and encode disagree")  # The windows would not be the student's.
  return ids, _spans(spans)


def text_tokens_with_starts(tokenizer, text: str) -> tuple[list[int], np.ndarray]:
  """`text_tokens(tokenizer, text)` and where each token starts in `text` (characters, non-decreasing).

  Special tokens stand for no text: a leading one (bos) starts at 0, one the post-processor adds later
  starts where the token before it does, and the appended eos at len(text).
  """
  ids, spans = text_tokens_with_spans(tokenizer, text)
  return ids, _starts(spans)


def window_teacher_tokens(starts: np.ndarray, teacher_ids: list[int], teacher_starts: np.ndarray,
                          length: int) -> list[list[int]]:
  """The teacher's ids of each student window of `length` tokens: those starting in the window's text.

  Window w covers the text from the start of its first token to the start of window w+1's first (the
  first from 0, the last to the end), so the windows partition the text and each teacher token, by
  where it starts, falls in exactly one.
  """
  bounds = window_teacher_bounds(starts, teacher_starts, length)
  return [[int(token_id) for token_id in teacher_ids[low:high]] for low, high in zip(bounds[:-1], bounds[1:])]


def window_teacher_bounds(starts: np.ndarray, teacher_starts: np.ndarray, length: int) -> np.ndarray:
  """[windows + 1]: window w's teacher tokens (`window_teacher_tokens`) are those from bounds[w] to bounds[w+1].

  The teacher's starts do not decrease, so each window's tokens are consecutive.
  """
  boundaries = starts[length::length]  # Where windows 1, 2, ... begin.
  window_of = np.searchsorted(boundaries, teacher_starts, side="right")
  return np.concatenate([[0], np.cumsum(np.bincount(window_of, minlength=len(boundaries) + 1))]).astype(np.int64)
