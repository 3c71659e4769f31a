"""One checker for values read from YAML against type annotations.

Used by the config loader (:mod:`ich3d.config`, every schema field) and by the
model registry (:mod:`ich3d.models.registry`, the keyword arguments of an
encoder or head), so a value is accepted or refused by the same rules in both:
``bool`` is not an ``int``, an ``int`` is a ``float``, a string such as
``"1e-4"`` (PyYAML reads exponents without a dot as strings) is a ``float``,
a YAML list is a ``tuple`` or ``list`` (a fixed-length tuple needs that length),
``null`` is ``None``.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["Mismatch", "convert", "matches", "plain"]


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
