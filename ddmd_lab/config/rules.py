"""What each config key accepts, declared once beside its default (``key(default, Number(lo=0))``) and
checked when its section is built, before any network or data loads.

A rule parses the value as it was read (YAML, ``--set``, code) into the key's value (``4`` -> ``4.0``,
YAML 1.1's string ``"1e-4"`` -> ``1e-4``) or rejects it; the rejection is one sentence that names the key,
the value, what the key accepts and where the value came from (``where``: the file, ``--set``, or
``config`` for values set in code).  Numbers are finite unless a rule says otherwise: a NaN or infinite
setting never trains.
"""
from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ddmd_lab.errors import UserError

RULE = "rule"  # the dataclass field metadata entry that holds a key's rule


class ConfigError(UserError):
    """A config value its key does not accept, or keys that do not fit together; ``sentence`` is the
    message without its source, so a caller that knows the source better can name it."""

    def __init__(self, sentence: str, where: str = "config"):
        super().__init__(f"{where}: {sentence}")
        self.sentence, self.where = sentence, where


def key(default: Any = MISSING, rule: Any = None, *, factory: Any = MISSING):
    """A section field with its rule: ``alpha: float = key(3.0, Number(lo=0))``."""
    return field(default=default, default_factory=factory, metadata={RULE: rule})


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _shown(value: Any) -> str:
    return "nothing (an empty value)" if value is None else repr(value)


@dataclass(frozen=True)
class Number:
    """A finite number (``integer``: an int, never a bool) in a range; ``note`` says what special values mean."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    note: str = ""

    def text(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            span = f" in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            span = f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif self.hi is not None:
            span = f" {'<' if self.hi_open else '<='} {_num(self.hi)}"
        else:
            span = ""
        return kind + span + (f" ({self.note})" if self.note else "")

    def parse(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError
        if self.integer:
            if not isinstance(value, int):
                raise ValueError
        else:
            if isinstance(value, str):
                value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
            if not isinstance(value, (int, float)):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise ValueError
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise ValueError
        return value


@dataclass(frozen=True)
class OneOf:
    """One of a set of names; ``numbers_as_names``: an int is read as its name (YAML reads precision=32 as 32)."""
    choices: tuple
    numbers_as_names: bool = False
    described: str = ""  # the choices in words, where listing them all would not help

    def text(self) -> str:
        if self.described:
            return self.described
        names = [str(c) for c in self.choices]
        return " or ".join(names) if len(names) <= 2 else "one of " + ", ".join(names)

    def parse(self, value: Any) -> Any:
        if self.numbers_as_names and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or value not in self.choices:
            raise ValueError
        return value


@dataclass(frozen=True)
class Text:
    """A non-empty string (a name or a folder)."""
    what: str = "a non-empty string"

    def text(self) -> str:
        return self.what

    def parse(self, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError
        return value


@dataclass(frozen=True)
class Flag:
    def text(self) -> str:
        return "true or false"

    def parse(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError
        return value


@dataclass(frozen=True)
class Numbers:
    """A list of numbers, each by ``item``; ``length``: exactly that many."""
    item: Number
    length: int | None = None
    what: str = ""  # e.g. "[beta1, beta2]"

    def text(self) -> str:
        count = f"{self.length} numbers" if self.length is not None else "a list of numbers"
        each = self.item.text().replace("a finite number", "each finite", 1)
        return f"{self.what + ': ' if self.what else ''}{count}, {each}"

    def parse(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length):
            raise ValueError
        return [self.item.parse(v) for v in value]


DEVICE_STRING = re.compile(r"auto|-1|\d+|\d+(\s*,\s*\d+)*\s*,?")


@dataclass(frozen=True)
class Devices:
    """Lightning's ``devices``: a count >= 1, -1 (all), auto, or device indices ([0, 1] or "0,1")."""

    def text(self) -> str:
        return 'a number of devices >= 1, -1 (all of them), auto, or a list of device indices such as [0, 1] or "0,1"'

    def parse(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            if value < 1 and value != -1:
                raise ValueError
            return value
        if isinstance(value, str):
            s = value.strip()
            if not DEVICE_STRING.fullmatch(s) or (s.isdigit() and int(s) < 1):
                raise ValueError
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                               for i in value) and len(set(value)) == len(value):
            return list(value)
        raise ValueError


LORA_RANK = Number(lo=0, integer=True)
LORA_ALPHA = Number(lo=0, lo_open=True)


@dataclass(frozen=True)
class Lora:
    """LoRA's settings: rank (0 = off), alpha (its scale; default: the rank) and targets (module names)."""

    def text(self) -> str:
        return ("a mapping of rank (an integer >= 0, 0 = off), alpha (a finite number > 0) and targets (module "
                "names), e.g. lora={rank: 16, alpha: 16}")

    def parse(self, value: Any) -> Any:
        if not isinstance(value, dict) or not set(value) <= {"rank", "alpha", "targets"}:
            raise ValueError
        out = dict(value)
        out["rank"] = LORA_RANK.parse(out.get("rank", 0))
        if "alpha" in out:
            out["alpha"] = LORA_ALPHA.parse(out["alpha"])
        if "targets" in out:
            targets = out["targets"]
            if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError
            out["targets"] = list(targets)
        return out


def parse_value(name: str, value: Any, rule: Any, where: str = "config") -> Any:
    """``value`` as key ``name`` holds it, or one sentence (ConfigError) saying what the key accepts."""
    try:
        return rule.parse(value)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(f"{name} must be {rule.text()}, got {_shown(value)}.", where) from None


def rule_of(section_cls: type, name: str) -> Any:
    """The rule a section class declares for its key ``name`` (None: none declared)."""
    return next(f.metadata.get(RULE) for f in fields(section_cls) if f.name == name)


def check_fields(section: Any) -> None:
    """Every field of a (frozen) section against its rule, in its __post_init__: each value is replaced by
    its parsed form, so ``alpha=4`` and ``alpha=4.0`` make equal configs."""
    for f in fields(section):
        rule = f.metadata.get(RULE)
        if rule is not None:
            object.__setattr__(section, f.name, parse_value(f.name, getattr(section, f.name), rule))
