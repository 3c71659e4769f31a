"""Operating points: thresholds chosen on validation scores, applied to test scores.

Decision rule everywhere: a case is called positive when ``score >= threshold``.

Two ways to choose the threshold on the *validation* split:

* :func:`threshold_for_sensitivity`: the largest threshold whose validation
  sensitivity reaches a target (default 0.98, the operating point of the
  method paper: "maximise sensitivity");
* :func:`youden_threshold`: the threshold maximising Youden's
  ``J = sensitivity + specificity - 1``.

:func:`apply_threshold` then measures sensitivity, specificity and accuracy on
the *test* split, each with a Wilson score interval (:func:`wilson_interval`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ich3d.errors import UserError
from ich3d.stats.delong import normal_quantile

__all__ = [
    "Proportion",
    "OperatingPoint",
    "wilson_interval",
    "proportion",
    "threshold_for_sensitivity",
    "youden_threshold",
    "apply_threshold",
    "operating_points",
    "operating_point_entries",
]


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (no continuity correction).

    ``(p + z^2/(2n) -+ z sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)`` with
    ``p = successes / n``; the same as statsmodels'
    ``proportion_confint(method="wilson")`` and scipy's
    ``binomtest(...).proportion_ci(method="wilson")``.

    Args:
        successes: number of successes, ``0 <= successes <= n``.
        n: number of trials; 0 gives ``(nan, nan)``.
        level: confidence level; default 0.95.

    Returns:
        ``(lower, upper)`` within [0, 1]; exactly 0 when ``successes == 0`` and
        exactly 1 when ``successes == n``.

    Raises:
        UserError: negative counts, ``successes > n``, or a level outside (0, 1).
    """
    z = normal_quantile(level)
    k, n = int(successes), int(n)
    if n < 0 or k < 0 or k > n:
        raise UserError(f"Wilson interval needs 0 <= successes <= n, got {k} of {n}")
    if n == 0:
        return math.nan, math.nan
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class Proportion:
    """A proportion ``k / n`` with its Wilson interval.

    Attributes:
        k: successes.
        n: trials.
        value: ``k / n`` (NaN when ``n == 0``).
        ci_lower: lower end of the Wilson interval.
        ci_upper: upper end of the Wilson interval.
    """

    k: int
    n: int
    value: float
    ci_lower: float
    ci_upper: float

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "value": self.value, "ci_lower": self.ci_lower, "ci_upper": self.ci_upper}


def proportion(k: int, n: int, level: float = 0.95) -> Proportion:
    """``k / n`` with its Wilson interval at ``level`` (default 0.95)."""
    lo, hi = wilson_interval(k, n, level)
    return Proportion(int(k), int(n), k / n if n else math.nan, lo, hi)


@dataclass(frozen=True)
class OperatingPoint:
    """Test-set performance at one threshold (positive when ``score >= threshold``).

    Attributes:
        threshold: decision threshold, in score units.
        sensitivity: true positives / positives.
        specificity: true negatives / negatives.
        accuracy: correct calls / cases.
        level: confidence level of the Wilson intervals.
    """

    threshold: float
    sensitivity: Proportion
    specificity: Proportion
    accuracy: Proportion
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "sensitivity": self.sensitivity.to_dict(),
            "specificity": self.specificity.to_dict(),
            "accuracy": self.accuracy.to_dict(),
            "level": self.level,
        }


def _split(labels: ArrayLike, scores: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise UserError(f"{what}: labels and scores must be 1-D of the same length, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise UserError(f"{what}: labels must be 0 or 1")
    if np.isnan(s).any():
        raise UserError(f"{what}: scores contain NaN")
    return s[y == 1], s[y == 0]


def threshold_for_sensitivity(labels: ArrayLike, scores: ArrayLike, target: float = 0.98) -> float:
    """Largest threshold whose sensitivity on these (validation) cases is ``>= target``.

    Sensitivity at threshold t is ``mean(score_pos >= t)``; it only changes at
    the positives' scores, so the answer is the j-th largest positive score
    where j is the smallest count with ``j / n_pos >= target``. Any larger
    threshold misses the target; ties at the threshold can only add positives.

    Args:
        labels: 0/1 labels of the validation cases.
        scores: their scores (higher = more likely positive).
        target: sensitivity to reach, in (0, 1]; default 0.98.

    Returns:
        The threshold (a validation positive's score).

    Raises:
        UserError: no positive case, target outside (0, 1], bad labels or NaN.
    """
    if not 0.0 < float(target) <= 1.0:
        raise UserError(f"target sensitivity must be in (0, 1], got {target}")
    pos, _ = _split(labels, scores, "threshold_for_sensitivity")
    m = pos.size
    if m == 0:
        raise UserError("threshold_for_sensitivity: the validation cases have no positive")
    desc = np.sort(pos)[::-1]
    counts = np.arange(1, m + 1)
    j = int(np.argmax(counts / m >= target))  # first (smallest) count reaching the target
    return float(desc[j])


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on these cases.

    Candidates are the distinct scores. J is compared exactly, in integer
    counts (``tp * n_neg - fp * n_pos``), so that equal J values are recognised
    as ties; on ties the largest threshold wins.

    Args:
        labels: 0/1 labels of the validation cases (both classes needed).
        scores: their scores.

    Raises:
        UserError: a single class, bad labels or NaN.
    """
    pos, neg = _split(labels, scores, "youden_threshold")
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise UserError("youden_threshold: the validation cases need both positives and negatives")
    thr = np.unique(np.r_[pos, neg])[::-1]  # distinct scores, decreasing
    tp = m - np.searchsorted(np.sort(pos), thr, side="left")  # positives with score >= t
    fp = n - np.searchsorted(np.sort(neg), thr, side="left")
    j_scaled = tp.astype(np.int64) * n - fp.astype(np.int64) * m  # = J * m * n
    return float(thr[int(np.argmax(j_scaled))])  # first max = largest threshold


def apply_threshold(labels: ArrayLike, scores: ArrayLike, threshold: float, level: float = 0.95) -> OperatingPoint:
    """Sensitivity, specificity and accuracy at ``threshold`` with Wilson intervals.

    Args:
        labels: 0/1 labels of the (test) cases.
        scores: their scores.
        threshold: a case is positive when ``score >= threshold``.
        level: confidence level of the intervals; default 0.95.
    """
    pos, neg = _split(labels, scores, "apply_threshold")
    tp = int((pos >= threshold).sum())
    tn = int((neg < threshold).sum())
    return OperatingPoint(
        threshold=float(threshold),
        sensitivity=proportion(tp, pos.size, level),
        specificity=proportion(tn, neg.size, level),
        accuracy=proportion(tp + tn, pos.size + neg.size, level),
        level=float(level),
    )


def operating_points(
    val_labels: ArrayLike,
    val_scores: ArrayLike,
    test_labels: ArrayLike,
    test_scores: ArrayLike,
    target_sensitivity: float = 0.98,
    level: float = 0.95,
) -> dict[str, OperatingPoint]:
    """Both operating points of one method, chosen on validation, measured on test.

    Args:
        val_labels: validation labels (0/1).
        val_scores: validation scores.
        test_labels: test labels (0/1).
        test_scores: test scores.
        target_sensitivity: validation sensitivity to reach; default 0.98.
        level: confidence level of the Wilson intervals; default 0.95.

    Returns:
        ``{"sensitivity": ..., "youden": ...}`` (in that order); the first is
        the largest threshold reaching ``target_sensitivity`` on validation.
    """
    t_sens = threshold_for_sensitivity(val_labels, val_scores, target_sensitivity)
    t_youden = youden_threshold(val_labels, val_scores)
    return {
        "sensitivity": apply_threshold(test_labels, test_scores, t_sens, level),
        "youden": apply_threshold(test_labels, test_scores, t_youden, level),
    }


def operating_point_entries(
    val_labels: ArrayLike,
    val_scores: ArrayLike,
    test_labels: ArrayLike,
    test_scores: ArrayLike,
    target_sensitivity: float,
    level: float,
) -> dict[str, dict[str, Any]]:
    """:func:`operating_points` as ``metrics.json`` entries.

    Each rule's :meth:`OperatingPoint.to_dict` on test plus ``"validation"``: the
    sensitivity, specificity and accuracy at the same threshold on the validation
    cases, and, for ``sensitivity``, ``"target"``.
    """
    out: dict[str, dict[str, Any]] = {}
    ops = operating_points(val_labels, val_scores, test_labels, test_scores, target_sensitivity, level)
    for rule, op in ops.items():
        val_op = apply_threshold(val_labels, val_scores, op.threshold, level)
        d = op.to_dict()
        d["validation"] = {
            "sensitivity": val_op.sensitivity.to_dict(),
            "specificity": val_op.specificity.to_dict(),
            "accuracy": val_op.accuracy.to_dict(),
        }
        if rule == "sensitivity":
            d["target"] = float(target_sensitivity)
        out[rule] = d
    return out
