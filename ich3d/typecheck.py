"""One checker for values read from YAML against type annotations.

Used by the config loader (:mod:`ich3d.config`, every schema field) and by the
model registry (:mod:`ich3d.models.registry`, the keyword arguments of an
encoder or head), so a value is accepted or refused by the same rules in both:
``bool`` is not an ``int``, an ``int`` is a ``float``, a string such as
``"1e-4"`` (PyYAML reads exponents without a dot as strings) is a ``float``,
a YAML list is a ``tuple`` or ``list`` (a fixed-length tuple needs that length),
``null`` is ``None``.

Numeric settings also declare their allowed range once, as dataclass field
metadata (:func:`in_range`); :func:`range_problem` says what is wrong with a
value (not finite, or outside its range) in words for an error message.
"""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Mismatch", "Range", "convert", "in_range", "matches", "plain", "range_problem"]


class Mismatch(Exception):
    """A value does not fit an annotation."""


def plain(value: Any) -> Any:
    """``value`` as plain dicts (string keys) and lists, recursively (YAML-safe)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


_SEQUENCES = (tuple, list, collections.abc.Sequence)


def convert(value: Any, hint: Any) -> Any:
    """``value`` converted to the annotation ``hint``, or :class:`Mismatch`.

    Handles ``Any``, ``None``, unions, ``Literal``, ``bool``, ``int``, ``float``,
    ``str``, ``tuple[...]`` / ``list[...]`` / ``Sequence[...]``, ``dict[...]``
    (string keys, values made :func:`plain`) and classes (``isinstance``);
    other annotations (callables, type variables) accept any value.
    """
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise Mismatch
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return convert(value, arg)
            except Mismatch:
                continue
        raise Mismatch
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads ``1e-4`` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise Mismatch from None
        raise Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise Mismatch
    if origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            raise Mismatch
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise Mismatch
            items = [convert(v, a) for v, a in zip(value, args, strict=True)]
        else:
            inner = args[0] if args else Any
            items = [convert(v, inner) for v in value]
        if origin is tuple:
            return tuple(items)
        if origin is list:
            return list(items)
        return type(value)(items)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise Mismatch
        return {k: plain(v) for k, v in value.items()}
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise Mismatch
    return value


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (see :func:`convert`)."""
    try:
        convert(value, hint)
    except Mismatch:
        return False
    return True


@dataclass(frozen=True)
class Range:
    """An allowed interval of a numeric setting; a bound left ``None`` is open-ended.

    Args:
        ge: the value must be >= this.
        gt: the value must be > this.
        le: the value must be <= this.
        lt: the value must be < this.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def __str__(self) -> str:
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            left = "[" if self.ge is not None else "("
            right = "]" if self.le is not None else ")"
            return f"in {left}{_num(low)}, {_num(high)}{right}"
        if low is not None:
            return f"{'>=' if self.ge is not None else '>'} {_num(low)}"
        if high is not None:
            return f"{'<=' if self.le is not None else '<'} {_num(high)}"
        return "a finite number"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def in_range(
    *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> dict[str, Range]:
    """Field metadata declaring a numeric setting's range: ``field(default=1e-4, metadata=in_range(gt=0))``.

    A sequence value (e.g. a list of regularisation values) has the range checked
    for every item; ``None`` is always allowed where the type allows it.
    """
    return {"range": Range(ge=ge, gt=gt, le=le, lt=lt)}


def range_problem(value: Any, allowed: Range | None) -> str | None:
    """What is wrong with ``value`` for ``allowed``, or ``None`` when it fits.

    Non-numeric values (``None``, strings, booleans) are not judged here (the type
    check does that); every float must be finite, range or not.

    Returns:
        e.g. ``"must be > 0, got -1"`` or ``"must be a finite number in [0, 1), got nan"``.
    """
    if isinstance(value, (list, tuple)):
        for item in value:
            problem = range_problem(item, allowed)
            if problem is not None:
                return problem
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        bounds = f" {allowed}" if allowed is not None and allowed != Range() else ""
        return f"must be a finite number{bounds}, got {value}"
    if allowed is not None and value not in allowed:
        return f"must be {allowed}, got {value}"
    return None
