"""JSON-safe numbers and the table formats shared by every report (evaluate, compare, seeds).

One version of each helper: ``finite`` (NaN/inf -> None), ``jsonable`` (numpy ->
plain Python, recursively), ``fmt_num``, ``fmt_auc``, ``fmt_prop`` and ``pct``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["finite", "jsonable", "fmt_num", "fmt_auc", "fmt_prop", "pct"]


def finite(x: Any) -> float | None:
    """A float, or None for None, NaN and infinities (JSON has no NaN)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars made Python and non-finite floats made None, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        return finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def fmt_num(x: Any, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals, ``n/a`` for None or non-finite."""
    v = finite(x)
    return "n/a" if v is None else f"{v:.{digits}f}"


def fmt_auc(d: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``auc [lo, hi]`` of a ``{"auc", "ci_lower", "ci_upper"}`` entry (``n/a``, ``(no CI)``)."""
    if not d or finite(d.get("auc")) is None:
        return "n/a"
    if finite(d.get("ci_lower")) is None or finite(d.get("ci_upper")) is None:
        return f"{d['auc']:.{digits}f} (no CI)"
    return f"{d['auc']:.{digits}f} [{d['ci_lower']:.{digits}f}, {d['ci_upper']:.{digits}f}]"


def fmt_prop(d: Mapping[str, Any] | Any, digits: int = 3, counts: bool = True) -> str:
    """``value [lo, hi] (k/n)`` of a proportion (a ``Proportion`` or its ``to_dict()``).

    Args:
        d: the proportion.
        digits: decimals.
        counts: append ``(k/n)`` (default True).
    """
    if not isinstance(d, Mapping):
        d = d.to_dict()
    v, lo, hi = finite(d.get("value")), finite(d.get("ci_lower")), finite(d.get("ci_upper"))
    if v is None:
        return "n/a"
    tail = f" ({d['k']}/{d['n']})" if counts else ""
    if lo is None or hi is None:
        return f"{v:.{digits}f}{tail}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]{tail}"


def pct(level: float) -> str:
    """A confidence level as a percentage (``0.95`` -> ``95%``)."""
    return f"{level * 100:g}%"
