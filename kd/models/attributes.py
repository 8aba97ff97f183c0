"""What values a model's attributes may take, declared by the model and checked before anything is built.

A model class declares `ATTRIBUTE_RANGES = {"dropout": Range(0, 1, high_open=True), "hidden": Range(1,
integer=True), "block": Choice("basic", "bottleneck"), ...}` (a ClassVar on Linen modules, a class
attribute on NNX ones); sequences are checked element by element. Whatever a model declares, every
numeric attribute must be finite. `check` raises ConfigError naming the key, the value and the range, so
`model.dropout=1.5` or `model.hidden=0` stops at validation instead of training to chance accuracy or
dividing by zero inside a trace.
"""

import dataclasses
import math
from typing import Any, Callable, Mapping

from kd.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
  """A number (or each number of a sequence) in [low, high], either end open or absent."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False

  def holds(self, value) -> bool:
    if self.integer and (isinstance(value, bool) or not isinstance(value, int)):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    if self.high is not None and (value >= self.high if self.high_open else value > self.high):
      return False
    return True

  def describe(self) -> str:
    kind = "an integer" if self.integer else "a number"
    if self.low is not None and self.high is not None:
      return (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
              f"{')' if self.high_open else ']'}")
    if self.low is not None:
      return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
    if self.high is not None:
      return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
    return kind


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of a few values."""

  values: tuple[Any, ...]

  def __init__(self, *values):
    object.__setattr__(self, "values", tuple(values))

  def holds(self, value) -> bool:
    return value in self.values

  def describe(self) -> str:
    return f"one of {list(self.values)}"


@dataclasses.dataclass(frozen=True)
class Rule:
  """A condition on the whole config (e.g. depth = 6n + 2), described in words."""

  holds_for: Callable[[Mapping[str, Any]], bool]
  text: str


POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
PROBABILITY = Range(0, 1, high_open=True)  # Dropout rates: 1 would drop everything.


def _numbers(value):
  if isinstance(value, (list, tuple)):
    for item in value:
      yield from _numbers(item)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    yield value


def check(module_class, attributes: Mapping[str, Any], where: str) -> None:
  """Raises ConfigError for an attribute outside what `module_class` declares (or not finite)."""
  for key, value in attributes.items():
    if any(not math.isfinite(number) for number in _numbers(value)):
      raise ConfigError(f"{where}.{key}={value!r} must be finite")
  ranges = getattr(module_class, "ATTRIBUTE_RANGES", {})
  for key, allowed in ranges.items():
    if key == "rules" or key not in attributes:
      continue
    value = attributes[key]
    items = list(value) if isinstance(value, (list, tuple)) and not isinstance(allowed, Choice) else [value]
    if not all(allowed.holds(item) for item in items):
      each = "each entry " if len(items) > 1 or isinstance(value, (list, tuple)) else ""
      raise ConfigError(f"{where}.{key}={value!r}: {each}must be {allowed.describe()}")
  for rule in ranges.get("rules", ()):
    if not rule.holds_for(attributes):
      raise ConfigError(f"{where}: {rule.text} (got {dict(attributes)})")
