"""Multiplicity adjustment of a family of p-values (Holm-Bonferroni).

Holm's step-down procedure (Holm 1979) controls the family-wise error rate at
any ``alpha`` like Bonferroni, and is uniformly more powerful. With the ``m``
p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted values are::

    q_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))

returned in the input order (R's ``p.adjust(p, "holm")``; NaN entries are left
NaN and do not count in ``m``, as R does with ``na.rm``-style input).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ich3d.errors import UserError

__all__ = ["holm_adjust"]


def holm_adjust(p_values: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the order of ``p_values``.

    Args:
        p_values: raw p-values in [0, 1] (NaN allowed: left NaN, not counted).

    Returns:
        float64 array of the adjusted p-values (each >= its raw value, <= 1).

    Raises:
        UserError: a p-value outside [0, 1].
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise UserError("p-values must lie in [0, 1]")
    vals = p[ok]
    m = vals.size
    if m == 0:
        return out
    order = np.argsort(vals, kind="stable")
    scaled = (m - np.arange(m)) * vals[order]
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    back = np.empty(m)
    back[order] = adjusted
    out[ok] = back
    return out
