"""Subword tokenizers for language models: a Hugging Face `tokenizer.json`, or a byte-level BPE trained here.

    tok = tokenizer.load("path/to/checkpoint")          # a folder holding tokenizer.json, or the file
    ids = tok.encode("def f(x):")                         # list[int]; tok.decode(ids) gives the text back
    tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id    # ids are None where the tokenizer has none
    text = tok.apply_chat_template(messages, add_generation_prompt=True)

Special tokens and the chat template come from the files a Hugging Face checkpoint ships next to
`tokenizer.json`: `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`, `unk_token`,
`chat_template`), `special_tokens_map.json`, and `chat_template.jinja` (which newer checkpoints use
instead of the config's `chat_template`). Without them, special tokens are recognised by their usual
names among the tokenizer's special added tokens (`<|endoftext|>`, `</s>`, `<pad>`, ...).

Chat templates render as `transformers`' `apply_chat_template` renders them: Jinja2's immutable sandbox
with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that does not
escape HTML, `raise_exception` and `strftime_now`, and the variables `messages`,
`add_generation_prompt`, `tools` and `documents` (None unless given) and the special-token strings
(`bos_token`, `eos_token`, `pad_token`, `unk_token`). `{% generation %}...{% endgeneration %}` blocks (transformers' marker of assistant text)
render their body; `render_chat` reports where they lie. A tokenizer without a template gets
`FALLBACK_CHAT_TEMPLATE` (ChatML: `<|im_start|>role\\ncontent<|im_end|>\\n`).

`train_bpe` trains a byte-level BPE (GPT-2's scheme: every byte is a symbol, so any text encodes and
decodes exactly) over text files in seconds; `train_stdlib_bpe` trains one over the `stdlib_text`
corpus's train files only (the same file split as `kd.data.stdlib_text`), so its validation and test
files stay unseen. Both save `tokenizer.json` and `tokenizer_config.json` (readable by
`transformers.AutoTokenizer` too).
"""

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

from kd.errors import ConfigError
from kd.errors import DataError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# The special tokens of a BPE trained here: one end-of-text (also the beginning of a document, as in
# GPT-2), a padding token, and ChatML's turn markers so that the fallback template encodes compactly.
END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TRAINED_SPECIAL_TOKENS = (END_OF_TEXT, PAD, IM_START, IM_END)

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Special tokens by their usual names, for a tokenizer.json without a tokenizer_config.json.
_USUAL_NAMES = {
    "bos": ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"),
    "eos": ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>"),
    "pad": ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
}
ROLES = ("bos", "eos", "pad", "unk")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A loaded tokenizer: the `tokenizers` object, its special tokens and its chat template.

  Attributes:
    backend: the `tokenizers.Tokenizer`.
    special_tokens: role ("bos", "eos", "pad", "unk") -> token string, for the roles it has.
    chat_template: the checkpoint's Jinja template, or None (then `FALLBACK_CHAT_TEMPLATE` renders).
    path: the tokenizer.json it was read from.
    digest: SHA-256 of tokenizer.json and the special tokens and template read beside it (what
      determines every encoding), for dataset identities.
  """

  backend: Any
  special_tokens: dict[str, str]
  chat_template: str | None
  path: str
  digest: str

  @property
  def vocab_size(self) -> int:
    """The number of ids, added tokens included: a model needs at least this many logits."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_id(self, role: str) -> int | None:
    token = self.special_tokens.get(role)
    return None if token is None else self.backend.token_to_id(token)

  @property
  def bos_id(self) -> int | None:
    return self.token_id("bos")

  @property
  def eos_id(self) -> int | None:
    return self.token_id("eos")

  @property
  def pad_id(self) -> int | None:
    return self.token_id("pad")

  @property
  def padding_id(self) -> int:
    """What pads a window: the pad token, else the end-of-text token, else 0 (always masked out)."""
    for token_id in (self.pad_id, self.eos_id):
      if token_id is not None:
        return token_id
    return 0

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """The ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. Llama's bos)."""
    return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_with_offsets(self, text: str, add_special_tokens: bool = False):
    """(ids, [(start, end) character offsets into `text`]) of each token."""
    encoding = self.backend.encode(text, add_special_tokens=add_special_tokens)
    return encoding.ids, encoding.offsets

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def template_variables(self) -> dict[str, str]:
    """The special-token strings a chat template sees (`bos_token`, `eos_token`, ...)."""
    return {f"{role}_token": token for role, token in self.special_tokens.items()}

  def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                          **variables) -> str:
    """The conversation as text, rendered with the checkpoint's template (or the fallback)."""
    text, _ = render_chat(self.chat_template or FALLBACK_CHAT_TEMPLATE, messages,
                          add_generation_prompt=add_generation_prompt,
                          **{**self.template_variables(), **variables})
    return text


def _token_content(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string, {"content": ...}, or null."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"cannot read {path} ({e}): it must be a JSON file as Hugging Face checkpoints ship it") from e


def _chat_template_of(folder: str, config: dict[str, Any]) -> str | None:
  jinja_path = os.path.join(folder, CHAT_TEMPLATE_FILE)
  if os.path.exists(jinja_path):
    with open(jinja_path, encoding="utf-8") as f:
      return f.read()
  template = config.get("chat_template")
  if isinstance(template, list):  # Older checkpoints: named templates; "default" is the chat one.
    named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
    template = named.get("default") or next(iter(named.values()), None)
  return template if isinstance(template, str) else None


def tokenizer_file(path: str) -> str:
  """The tokenizer.json that `path` (the file or a folder holding it) names; DataError if none."""
  path = os.path.expanduser(path)
  candidate = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(candidate):
    where = f"the folder {path} has no {TOKENIZER_FILE}" if os.path.isdir(path) else f"{path} does not exist"
    raise DataError(f"tokenizer not found: {where}; give a Hugging Face checkpoint's {TOKENIZER_FILE} (or its "
                    "folder), or train one with kd.lm.tokenizer.train_bpe / train_stdlib_bpe")
  return os.path.abspath(candidate)


def load(path: str) -> Tokenizer:
  """Reads a tokenizer.json (or the folder holding one) and the special tokens and template beside it."""
  path = tokenizer_file(path)
  return _load(path, *_stat(path))


def _stat(path: str) -> tuple[int, int]:
  folder = os.path.dirname(path)
  stats = [os.stat(p) for p in (path, *(os.path.join(folder, name) for name in
                                       (CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, CHAT_TEMPLATE_FILE)))
           if os.path.exists(p)]
  return max(s.st_mtime_ns for s in stats), sum(s.st_size for s in stats)


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int, size: int) -> Tokenizer:
  del mtime_ns, size  # Only the cache key: a rewritten file is read again.
  import tokenizers  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    raw = f.read()
  try:
    backend = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
  except Exception as e:  # pylint: disable=broad-except  # tokenizers raises a bare Exception.
    raise DataError(f"cannot read the tokenizer {path} ({e}): it must be a `tokenizers` tokenizer.json") from e
  folder = os.path.dirname(path)
  config = _read_json(os.path.join(folder, CONFIG_FILE)) if os.path.exists(os.path.join(folder, CONFIG_FILE)) else {}
  special_map = (_read_json(os.path.join(folder, SPECIAL_TOKENS_MAP_FILE))
                 if os.path.exists(os.path.join(folder, SPECIAL_TOKENS_MAP_FILE)) else {})
  special_added = {token.content for token in backend.get_added_tokens_decoder().values() if token.special}
  special_tokens = {}
  for role in ROLES:
    key = f"{role}_token"
    if key in config or key in special_map:  # Declared (null: the checkpoint has none).
      token = _token_content(config[key] if key in config else special_map[key])
    else:
      token = next((name for name in _USUAL_NAMES[role] if name in special_added), None)
    if token is not None and backend.token_to_id(token) is not None:
      special_tokens[role] = token
  chat_template = _chat_template_of(folder, config)
  digest = hashlib.sha256(raw)
  digest.update(json.dumps([special_tokens, chat_template], sort_keys=True).encode())
  return Tokenizer(backend=backend, special_tokens=special_tokens, chat_template=chat_template, path=path,
                   digest=digest.hexdigest())


def check_vocabulary(tokenizer: Tokenizer, num_classes: int, where: str = "the model", exact: bool = False) -> None:
  """Raises ConfigError unless a model with `num_classes` logits can predict every id of `tokenizer`.

  A model with more logits than the tokenizer has ids is accepted (checkpoints often pad their
  embedding to a round size, e.g. Qwen2's 151936 rows for 151665 tokens) unless `exact`.
  """
  size = tokenizer.vocab_size
  if num_classes < size or (exact and num_classes != size):
    relation = "fewer" if num_classes < size else "more"
    raise ConfigError(
        f"{where} has {num_classes} output classes but the tokenizer {tokenizer.path} has {size} ids "
        f"({relation} logits than ids): use the tokenizer the model was trained with, or a model whose "
        f"vocabulary size is {size}")


_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _is_byte_level(backend) -> bool:
  """Whether the tokenizer.json decodes with GPT-2's byte-level alphabet (one symbol per byte)."""
  def types(node):
    if isinstance(node, dict):
      yield node.get("type")
      for child in node.get("decoders", None) or node.get("pretokenizers", None) or ():
        yield from types(child)
  spec = json.loads(backend.to_str())
  return "ByteLevel" in {*types(spec.get("decoder")), *types(spec.get("pre_tokenizer"))}


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
  """UTF-8 bytes of text each id stands for, int64 [vocab_size]: what bits per byte divides by.

  Special tokens (bos, eos, pad, chat markers) stand for no text: 0. In a byte-level BPE (GPT-2,
  Llama 3, Qwen, kd's `train_bpe`) every symbol of a token's string is one byte (GPT-2's byte-to-unicode
  alphabet), so a text's ids add up to exactly `len(text.encode("utf-8"))`. Otherwise a token's string
  is measured as text, with SentencePiece's "▁" as a space and a byte-fallback token `<0xNN>` as one
  byte; for a word-level tokenizer, whose ids leave out the spaces between words, this undercounts.
  """
  byte_level = _is_byte_level(tokenizer.backend)
  special = {token_id for token_id, token in tokenizer.backend.get_added_tokens_decoder().items() if token.special}
  lengths = np.zeros(tokenizer.vocab_size, np.int64)
  for token_id in range(tokenizer.vocab_size):
    token = tokenizer.backend.id_to_token(token_id)
    if token is None or token_id in special:
      continue
    if byte_level:
      lengths[token_id] = len(token)
    elif _BYTE_FALLBACK.fullmatch(token):
      lengths[token_id] = 1
    else:
      lengths[token_id] = len(token.replace("\u2581", " ").encode("utf-8"))
  return lengths


# Private-use characters that mark where `{% generation %}` blocks begin and end in a rendering.
_GENERATION_START, _GENERATION_END = "\ue000", "\ue001"


@functools.lru_cache(maxsize=16)
def _compile_template(template: str):
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext  # pylint: disable=g-import-not-at-top
  from jinja2 import nodes  # pylint: disable=g-import-not-at-top
  from jinja2 import sandbox  # pylint: disable=g-import-not-at-top

  class GenerationMarks(ext.Extension):
    """`{% generation %}body{% endgeneration %}`: the body, between marks that render_chat removes."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller):
      return _GENERATION_START + caller() + _GENERATION_END

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  environment = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                      extensions=[GenerationMarks, ext.loopcontrols])
  environment.filters["tojson"] = tojson
  environment.globals["raise_exception"] = raise_exception
  environment.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return environment.from_string(template)


def render_chat(template: str, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False,
                **variables) -> tuple[str, list[tuple[int, int]]]:
  """Renders `messages` with a chat template, as transformers' `apply_chat_template(tokenize=False)`.

  Args:
    template: the Jinja source.
    messages: [{"role": ..., "content": ...}, ...].
    add_generation_prompt: end with the header of an assistant turn, for generation.
    **variables: more template variables, e.g. `bos_token="<s>"`.

  Returns:
    (text, spans): the rendering and the [start, end) character spans of its `{% generation %}` blocks.

  Raises:
    DataError: the template fails (its own raise_exception included), or a message holds the
      private-use characters U+E000/U+E001 that mark generation blocks.
  """
  import jinja2  # pylint: disable=g-import-not-at-top

  for message in messages:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str) and (_GENERATION_START in content or _GENERATION_END in content):
      raise DataError("a chat message holds U+E000 or U+E001, which mark generation blocks here: remove them")
  try:
    # transformers passes tools and documents as None when there are none (templates test `is not none`).
    marked = _compile_template(template).render(**{"tools": None, "documents": None, **variables},
                                                messages=list(messages), add_generation_prompt=add_generation_prompt)
  except jinja2.exceptions.TemplateError as e:
    raise DataError(f"the chat template cannot render this conversation: {e}") from e
  text, spans, start = [], [], None
  length = 0
  for piece in re.split(f"([{_GENERATION_START}{_GENERATION_END}])", marked):
    if piece == _GENERATION_START:
      start = length
    elif piece == _GENERATION_END:
      spans.append((start, length))
    else:
      text.append(piece)
      length += len(piece)
  return "".join(text), spans


def _save(backend, output_dir: str) -> Tokenizer:
  os.makedirs(output_dir, exist_ok=True)
  backend.save(os.path.join(output_dir, TOKENIZER_FILE))
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "pad_token": PAD, "unk_token": None,
      "model_max_length": 1_000_000,
  }
  with open(os.path.join(output_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  return load(output_dir)


def train_bpe(files: Sequence[str], output_dir: str, vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
  """Trains a byte-level BPE over text files and saves it in `output_dir` (tokenizer.json + config).

  Ids 0-3 are `TRAINED_SPECIAL_TOKENS` (<|endoftext|> is bos and eos, <|pad|> pads), then the 256
  byte symbols, then the merges; the vocabulary has `vocab_size` ids unless the corpus runs out of
  pairs seen `min_frequency` times. The result depends only on the files' contents and the arguments.
  """
  from tokenizers import decoders  # pylint: disable=g-import-not-at-top
  from tokenizers import models as tokenizer_models  # pylint: disable=g-import-not-at-top
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import processors  # pylint: disable=g-import-not-at-top
  from tokenizers import trainers  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top

  if vocab_size < len(TRAINED_SPECIAL_TOKENS) + 256:
    raise ConfigError(f"vocab_size={vocab_size} must be at least {len(TRAINED_SPECIAL_TOKENS) + 256} "
                      "(the special tokens and the 256 bytes)")
  missing = [path for path in files if not os.path.isfile(path)]
  if missing or not files:
    raise DataError(f"cannot train a tokenizer: {'no files given' if not files else f'{missing[0]} does not exist'}")
  backend = tokenizers.Tokenizer(tokenizer_models.BPE())
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  backend.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                special_tokens=list(TRAINED_SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  backend.train([os.fspath(path) for path in files], trainer)
  return _save(backend, output_dir)


def stdlib_train_files() -> list[str]:
  """The `stdlib_text` corpus's train files (`kd.data.stdlib_text`'s split by file name)."""
  from kd.data import stdlib_text  # pylint: disable=g-import-not-at-top

  return [path for path in stdlib_text.source_files() if stdlib_text.split_of(os.path.basename(path)) == "train"]


def train_stdlib_bpe(output_dir: str, vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
  """A byte-level BPE over the stdlib corpus's train files only; see `train_bpe`."""
  return train_bpe(stdlib_train_files(), output_dir, vocab_size=vocab_size, min_frequency=min_frequency)
