"""Allowed values of options, declared once beside their definition and checked in one place.

A config field declares its range or its set of values with :func:`opt`::

    epochs: int = opt(3, at_least=0)
    dropout: float = opt(0.1, at_least=0, below=1)
    device: str = opt("auto", matches=DEVICE)

:func:`check_dataclass` checks every field of a config section against its type
annotation and its declaration and returns one line per bad value
(``train.epochs must be an integer >= 0, got -2``).  A command-line flag
declares the same with the argparse types of :mod:`common.cli`.  The tests
walk every declaration with a value it refuses (:meth:`Allowed.bad_value`), so
no option can skip the check.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field

DEVICE = (r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")
"""Devices a command accepts: a pattern and how it reads in a message."""


@dataclass(frozen=True)
class Allowed:
    """The values an option may take beyond its type: a range, a set of values, or a pattern."""

    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None
    below: float | None = None
    or_zero: bool = False
    """0 is allowed too (it means off), besides the range."""
    choices: tuple | None = None
    ignore_case: bool = False
    matches: tuple[str, str] | None = None
    """(regular expression the whole value matches, how it reads in a message)."""
    nonempty: bool = False

    def describe(self, typ=None) -> str:
        """What is allowed, in words: ``an integer >= 0``, ``one of bert, bilstm``."""
        if self.choices is not None:
            shown = ", ".join(repr(c) if c == "" else str(c) for c in self.choices)
            return f"one of {shown}" + (" (any case)" if self.ignore_case else "")
        if self.matches is not None:
            return self.matches[1]
        kind = {int: "an integer", float: "a number", str: "a string"}.get(typ, "a value")
        bounds = [f"{op} {_num(v)}" for op, v in ((">=", self.at_least), (">", self.above), ("<=", self.at_most),
                                                  ("<", self.below)) if v is not None]
        text = f"{kind} {' and '.join(bounds)}".strip() if bounds else kind
        if self.nonempty:
            text = f"a non-empty {text.split(' ', 1)[1]}" if text.startswith("a ") else text
        return f"0 (off) or {text}" if self.or_zero else text

    def accepts(self, value) -> bool:
        if self.choices is not None:
            if self.ignore_case and isinstance(value, str):
                return value.lower() in {str(c).lower() for c in self.choices}
            return value in self.choices
        if self.matches is not None:
            return isinstance(value, str) and re.fullmatch(self.matches[0], value) is not None
        if self.nonempty and not value:
            return False
        if self.or_zero and value == 0:
            return True
        return not ((self.at_least is not None and value < self.at_least)
                    or (self.at_most is not None and value > self.at_most)
                    or (self.above is not None and value <= self.above)
                    or (self.below is not None and value >= self.below))

    def bad_value(self, typ=None):
        """A value of the right type that this declaration refuses (for the tests); None if there is none."""
        if self.choices is not None or self.matches is not None:
            return "no-such-value"
        if self.nonempty:
            return ""
        candidates = [b - 1 for b in (self.at_least,) if b is not None] + \
                     [b for b in (self.above, self.below) if b is not None] + \
                     [b + 1 for b in (self.at_most,) if b is not None]
        for value in candidates:
            value = int(value) if typ is int and float(value).is_integer() else value
            if not self.accepts(value):
                return value
        return None


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def opt(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, **allowed):
    """A dataclass field with its allowed values (keywords of :class:`Allowed`) in its metadata."""
    meta = {"allowed": Allowed(**allowed)} if allowed else {}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def allowed_of(f: dataclasses.Field) -> Allowed | None:
    return f.metadata.get("allowed")


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def type_error(value, typ) -> str | None:
    """What is wrong with ``value`` for the annotation ``typ`` (None: it fits)."""
    if typing.get_origin(typ) is list:
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            return f"a list of {_TYPE_WORDS.get(inner, inner)}s"
        bad = [v for v in value if type_error(v, inner)]
        return f"a list of {_TYPE_WORDS.get(inner, inner).split(' ', 1)[-1]}s" if bad else None
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif typ is str:
        ok = isinstance(value, str)
    else:
        return None
    return None if ok else _TYPE_WORDS[typ]


def check_value(name: str, value, typ, allowed: Allowed | None) -> str | None:
    """One line naming the option, what is allowed and the value, or None when the value is allowed."""
    wrong_type = type_error(value, typ)
    if wrong_type:
        return f"{name} must be {wrong_type}, got {value!r}"
    if allowed is not None and not allowed.accepts(value):
        return f"{name} must be {allowed.describe(typ)}, got {value!r}"
    return None


def check_dataclass(section: str, obj) -> list[str]:
    """One line per field of the dataclass ``obj`` whose value its type or declaration refuses."""
    hints = typing.get_type_hints(type(obj))
    problems = []
    for f in dataclasses.fields(obj):
        problem = check_value(f"{section}.{f.name}", getattr(obj, f.name), hints[f.name], allowed_of(f))
        if problem:
            problems.append(problem)
    return problems
