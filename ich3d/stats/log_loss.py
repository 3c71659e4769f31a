"""The RSNA 2019 challenge metric: a weighted multi-label log loss.

For ``N`` samples (slices, in the challenge) and ``K`` targets with weights ``w_k``
(the challenge: ``any`` 2, each subtype 1)::

    L = sum_i sum_k w_k * -(y_ik log p_ik + (1 - y_ik) log(1 - p_ik)) / (N * sum_k w_k)

Probabilities are clipped to ``[eps, 1 - eps]`` with ``eps`` the machine epsilon
of their dtype, as :func:`sklearn.metrics.log_loss` does; ``L`` is exactly
``log_loss(y.ravel(), p.ravel(), sample_weight=tile(w, N))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["weighted_log_loss", "per_target_log_loss"]


def _prepare(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in shape")
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    eps = np.finfo(p.dtype).eps
    return y, np.clip(p, eps, 1 - eps).astype(np.float64)


def per_target_log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Mean log loss of each target (column), ``(K,)``; NaN for no sample."""
    y, p = _prepare(y_true, y_prob)
    if y.shape[0] == 0:
        return np.full(y.shape[1], np.nan)
    ll = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    return ll.mean(axis=0)


def weighted_log_loss(
    y_true: np.ndarray, y_prob: np.ndarray, weights: Sequence[float] | None = None
) -> float:
    """The challenge's weighted log loss (module docstring).

    Args:
        y_true: ``(N, K)`` 0/1 labels (or ``(N,)`` for one target).
        y_prob: ``(N, K)`` probabilities, same shape.
        weights: ``(K,)`` target weights; default all 1.

    Returns:
        The loss (NaN when ``N == 0``).
    """
    y, p = _prepare(y_true, y_prob)
    w = np.ones(y.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (y.shape[1],):
        raise ValueError(f"{w.size} weights for {y.shape[1]} targets")
    if y.shape[0] == 0:
        return float("nan")
    ll = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    return float((ll * w).sum() / (y.shape[0] * w.sum()))
