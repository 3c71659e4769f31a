"""ROC AUC with DeLong variance, confidence intervals and paired tests.

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of the AUCs of
k scores measured on the same cases from the *placement values* (structural
components) of each case. This module computes them with the fast mid-rank
formulation of Sun & Xu (2014): three mid-rankings per score column (positives,
negatives, all cases) give every placement value in O(n log n) instead of the
O(m n) pairwise comparisons of the definition. Ties count 1/2, everything is
float64.

The reported numbers follow the conventions of R's pROC (1.18), the reference
that medical-imaging papers cite:

* AUC interval: ``AUC +- z * sd`` (Wald), clipped to ``[0, 1]``;
* variance: ``var(V10) / m + var(V01) / n`` with sample variances (``ddof=1``);
* paired test of columns a and b: ``z = (AUC_a - AUC_b) / sd(AUC_a - AUC_b)``,
  two-sided ``p = 2 Phi(-|z|)``, interval of the difference ``diff +- z * sd``
  *not* clipped; ``z = 0`` and ``p = 1`` when the difference and its sd are
  both 0 (e.g. two identical score columns).

Labels are 1 for a positive case (hemorrhage) and 0 for a negative one; a
higher score means "more likely positive" (pROC's ``direction = "<"``).

Example:
    >>> res = delong_roc(labels, np.column_stack([p_lstm, p_max]), names=["lstm", "max"])
    >>> res.models[0].auc, res.pairs[0].p
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata

from ich3d.errors import UserError

__all__ = [
    "ModelAUC",
    "PairTest",
    "DeLongResult",
    "delong_roc",
    "delong_roc_by_definition",
    "normal_quantile",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelAUC:
    """AUC of one score column with its DeLong variance and Wald interval.

    Attributes:
        name: column name.
        auc: area under the ROC curve, in [0, 1].
        ci_lower: lower end of the interval, clipped to [0, 1].
        ci_upper: upper end of the interval, clipped to [0, 1].
        var: DeLong variance of the AUC.
    """

    name: str
    auc: float
    ci_lower: float
    ci_upper: float
    var: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "auc": self.auc,
            "ci_lower": self.ci_lower,
            "ci_upper": self.ci_upper,
            "var": self.var,
        }


@dataclass(frozen=True)
class PairTest:
    """Paired DeLong test of two score columns on the same cases.

    Attributes:
        a: name of the first column.
        b: name of the second column.
        z: ``(AUC_a - AUC_b) / sd(AUC_a - AUC_b)``.
        p: two-sided p-value ``2 Phi(-|z|)``.
        diff_ci_lower: lower end of the interval of ``AUC_a - AUC_b`` (not clipped).
        diff_ci_upper: upper end of the interval of ``AUC_a - AUC_b`` (not clipped).
        diff: ``AUC_a - AUC_b``.
        sd: DeLong standard deviation of the difference.
    """

    a: str
    b: str
    z: float
    p: float
    diff_ci_lower: float
    diff_ci_upper: float
    diff: float = 0.0
    sd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields of issue 4 (``diff`` and ``sd`` are left out)."""
        return {
            "a": self.a,
            "b": self.b,
            "z": self.z,
            "p": self.p,
            "diff_ci_lower": self.diff_ci_lower,
            "diff_ci_upper": self.diff_ci_upper,
        }


@dataclass(frozen=True)
class DeLongResult:
    """AUCs, their DeLong covariance, intervals and all paired tests.

    Attributes:
        n_pos: number of positive cases (label 1).
        n_neg: number of negative cases (label 0).
        level: confidence level of the intervals (e.g. 0.95).
        names: score column names, in input order.
        aucs: AUC per column, shape ``(k,)``.
        cov: DeLong covariance matrix of the AUCs, shape ``(k, k)``.
        models: one :class:`ModelAUC` per column, in input order.
        pairs: one :class:`PairTest` per unordered pair of columns, in column
            order (``(0, 1), (0, 2), ..., (1, 2), ...``), ``a`` before ``b``.
    """

    n_pos: int
    n_neg: int
    level: float
    names: list[str]
    aucs: np.ndarray
    cov: np.ndarray
    models: list[ModelAUC]
    pairs: list[PairTest] = field(default_factory=list)

    @property
    def best(self) -> int:
        """Index of the column with the highest AUC (the first one on ties)."""
        if np.all(np.isnan(self.aucs)):
            return 0
        return int(np.nanargmax(self.aucs))

    def pair(self, a: str, b: str) -> PairTest:
        """The paired test of ``a`` against ``b`` (z and the interval oriented ``a - b``).

        Args:
            a: name of the first column.
            b: name of the second column.

        Raises:
            KeyError: when the pair is not in the result.
        """
        for t in self.pairs:
            if (t.a, t.b) == (a, b):
                return t
            if (t.a, t.b) == (b, a):
                return PairTest(
                    a=a,
                    b=b,
                    z=-t.z if t.z != 0 else 0.0,
                    p=t.p,
                    diff_ci_lower=-t.diff_ci_upper,
                    diff_ci_upper=-t.diff_ci_lower,
                    diff=-t.diff,
                    sd=t.sd,
                )
        raise KeyError(f"no paired test between {a!r} and {b!r}")

    def to_dict(self) -> dict[str, Any]:
        """Exactly the JSON schema of issue 4 section 2.

        ``{"n_pos", "n_neg", "models": [{"name", "auc", "ci_lower", "ci_upper",
        "var"}], "pairs": [{"a", "b", "z", "p", "diff_ci_lower", "diff_ci_upper"}]}``
        """
        return {
            "n_pos": int(self.n_pos),
            "n_neg": int(self.n_neg),
            "models": [m.to_dict() for m in self.models],
            "pairs": [t.to_dict() for t in self.pairs],
        }


def normal_quantile(level: float) -> float:
    """Two-sided standard-normal quantile of a confidence level (1.959964 for 0.95).

    Args:
        level: confidence level, strictly between 0 and 1.

    Raises:
        UserError: when ``level`` is not in (0, 1).
    """
    level = float(level)
    if not 0.0 < level < 1.0:
        raise UserError(f"confidence level must be between 0 and 1 (exclusive), got {level}")
    return float(norm.ppf(0.5 + level / 2.0))


# --------------------------------------------------------------------------- inputs


def _as_inputs(
    labels: ArrayLike, scores: ArrayLike, names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate and return ``(labels bool (n,), scores float64 (n, k), names)``."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise UserError(f"labels must be one-dimensional, got shape {y.shape}")
    if y.dtype == bool:
        pos = y
    else:
        try:
            yf = y.astype(np.float64)
        except (TypeError, ValueError):
            raise UserError(f"labels must be 0 or 1, got values of type {y.dtype}") from None
        bad = ~np.isin(yf, (0.0, 1.0))
        if bad.any():
            shown = ", ".join(str(v) for v in np.unique(y[bad])[:5])
            raise UserError(f"labels must be 0 or 1, found {int(bad.sum())} other value(s): {shown}")
        pos = yf == 1.0

    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise UserError(f"scores must have shape (n,) or (n, k), got {s.shape}")
    if s.shape[0] != y.shape[0]:
        raise UserError(f"{y.shape[0]} labels but {s.shape[0]} rows of scores")
    if s.shape[1] == 0:
        raise UserError("no score column given")
    if np.isnan(s).any():
        col = int(np.nonzero(np.isnan(s).any(axis=0))[0][0])
        raise UserError(f"scores of column {col} contain NaN")

    k = s.shape[1]
    if names is None:
        names_l = [f"m{i + 1}" for i in range(k)]
    else:
        names_l = [str(n) for n in names]
        if len(names_l) != k:
            raise UserError(f"{len(names_l)} names for {k} score columns")
        if len(set(names_l)) != k:
            raise UserError(f"score column names must be unique, got {names_l}")
    return pos, s, names_l


# ----------------------------------------------------------------------- placements


def _placements_fast(pos_s: np.ndarray, neg_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu (2014) mid-rank placements.

    Args:
        pos_s: scores of the positives, shape ``(m, k)``.
        neg_s: scores of the negatives, shape ``(n, k)``.

    Returns:
        ``(aucs (k,), v10 (m, k), v01 (n, k))`` where ``v10[i]`` is the fraction
        of negatives a positive beats (ties 1/2) and ``v01[j]`` the fraction of
        positives that beat a negative.
    """
    m, n = pos_s.shape[0], neg_s.shape[0]
    tx = rankdata(pos_s, method="average", axis=0)
    ty = rankdata(neg_s, method="average", axis=0)
    tz = rankdata(np.concatenate([pos_s, neg_s], axis=0), method="average", axis=0)
    tz_pos = tz[:m]
    # Sum of the placements of the positives = Mann-Whitney U.
    aucs = (tz_pos.sum(axis=0) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz_pos - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return aucs, v10, v01


def _placements_by_definition(
    pos_s: np.ndarray, neg_s: np.ndarray, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Placements from the O(m n) Mann-Whitney kernel ``psi = [x > y] + [x == y] / 2``."""
    m, n = pos_s.shape[0], neg_s.shape[0]
    k = pos_s.shape[1]
    v10 = np.empty((m, k))
    v01_sum = np.zeros((n, k))
    for c in range(k):
        y = neg_s[:, c]
        for start in range(0, m, block):
            x = pos_s[start : start + block, c][:, None]
            psi = (x > y).astype(np.float64) + 0.5 * (x == y)
            v10[start : start + block, c] = psi.sum(axis=1) / n
            v01_sum[:, c] += psi.sum(axis=0)
    v01 = v01_sum / m
    aucs = v10.mean(axis=0)
    return aucs, v10, v01


def _summarise(
    aucs: np.ndarray,
    v10: np.ndarray,
    v01: np.ndarray,
    names: list[str],
    level: float,
) -> DeLongResult:
    m, n = v10.shape[0], v01.shape[0]
    k = aucs.shape[0]
    z_crit = normal_quantile(level)
    cov = np.atleast_2d(np.cov(v10, rowvar=False)) / m + np.atleast_2d(np.cov(v01, rowvar=False)) / n

    models = []
    for i in range(k):
        var = float(cov[i, i])
        sd = math.sqrt(max(var, 0.0))
        auc = float(aucs[i])
        models.append(
            ModelAUC(
                name=names[i],
                auc=auc,
                ci_lower=min(max(auc - z_crit * sd, 0.0), 1.0),
                ci_upper=min(max(auc + z_crit * sd, 0.0), 1.0),
                var=var,
            )
        )

    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            diff = float(aucs[i] - aucs[j])
            # Variance of the difference from the placement differences rather
            # than cov[i,i] + cov[j,j] - 2 cov[i,j]: exactly 0 for identical
            # (or rank-identical) columns instead of a rounding residue.
            dv = np.var(v10[:, i] - v10[:, j], ddof=1) / m + np.var(v01[:, i] - v01[:, j], ddof=1) / n
            sd = math.sqrt(max(float(dv), 0.0))
            if sd == 0.0:
                if diff == 0.0:
                    z, p = 0.0, 1.0
                else:  # both columns separate perfectly in opposite ways
                    z, p = math.copysign(math.inf, diff), 0.0
            else:
                z = diff / sd
                p = float(2.0 * norm.sf(abs(z)))
            pairs.append(
                PairTest(
                    a=names[i],
                    b=names[j],
                    z=float(z),
                    p=p,
                    diff_ci_lower=diff - z_crit * sd,
                    diff_ci_upper=diff + z_crit * sd,
                    diff=diff,
                    sd=sd,
                )
            )
    return DeLongResult(
        n_pos=m,
        n_neg=n,
        level=float(level),
        names=names,
        aucs=np.asarray(aucs, dtype=np.float64),
        cov=cov,
        models=models,
        pairs=pairs,
    )


def _nan_result(
    pos_s: np.ndarray, neg_s: np.ndarray, names: list[str], level: float, placements: Any
) -> DeLongResult:
    """Result for fewer than 2 cases of a class: AUC if both classes exist, else NaN."""
    m, n = pos_s.shape[0], neg_s.shape[0]
    k = len(names)
    aucs = placements(pos_s, neg_s)[0] if (m > 0 and n > 0) else np.full(k, np.nan)
    nan = math.nan
    models = [ModelAUC(names[i], float(aucs[i]), nan, nan, nan) for i in range(k)]
    pairs = [
        PairTest(names[i], names[j], nan, nan, nan, nan, float(aucs[i] - aucs[j]), nan)
        for i in range(k)
        for j in range(i + 1, k)
    ]
    return DeLongResult(m, n, float(level), names, np.asarray(aucs, float), np.full((k, k), nan), models, pairs)


def _run(
    labels: ArrayLike,
    scores: ArrayLike,
    names: Sequence[str] | None,
    level: float,
    strict: bool,
    placements: Any,
) -> DeLongResult:
    normal_quantile(level)  # validate early
    pos, s, names_l = _as_inputs(labels, scores, names)
    pos_s, neg_s = s[pos], s[~pos]
    m, n = pos_s.shape[0], neg_s.shape[0]
    if m < 2 or n < 2:
        msg = (
            f"DeLong statistics need at least 2 positive and 2 negative cases, "
            f"got {m} positive and {n} negative"
        )
        if strict:
            raise UserError(msg)
        warnings.warn(msg + "; returning NaN", RuntimeWarning, stacklevel=3)
        log.warning("%s; returning NaN", msg)
        return _nan_result(pos_s, neg_s, names_l, level, placements)
    aucs, v10, v01 = placements(pos_s, neg_s)
    return _summarise(aucs, v10, v01, names_l, level)


# ------------------------------------------------------------------------ public API


def delong_roc(
    labels: ArrayLike,
    scores: ArrayLike,
    names: Sequence[str] | None = None,
    level: float = 0.95,
    *,
    strict: bool = True,
) -> DeLongResult:
    """AUCs, DeLong intervals and all paired DeLong tests of k score columns.

    Fast path: Sun & Xu (2014) mid-ranks, O(k n log n) time and O(k n) memory.

    Args:
        labels: case labels, shape ``(n,)``, values 0/1 (or bool); 1 = positive.
        scores: one score column ``(n,)`` or k columns ``(n, k)``; higher means
            more likely positive. ``inf`` is allowed, NaN is not.
        names: one name per column; default ``m1, m2, ...``.
        level: confidence level of every interval; default 0.95.
        strict: when True (default), fewer than 2 positives or 2 negatives raise
            :class:`UserError`. When False they give a :class:`RuntimeWarning`
            and a result whose variances, intervals, z and p are NaN (the AUCs
            are still computed when both classes are present).

    Returns:
        The :class:`DeLongResult`.

    Raises:
        UserError: labels other than 0/1, NaN scores, mismatched shapes or names,
            a level outside (0, 1), or (when strict) too few cases of a class.
    """
    return _run(labels, scores, names, level, strict, _placements_fast)


def delong_roc_by_definition(
    labels: ArrayLike,
    scores: ArrayLike,
    names: Sequence[str] | None = None,
    level: float = 0.95,
    *,
    strict: bool = True,
) -> DeLongResult:
    """Same as :func:`delong_roc` from the O(m n) pairwise definition.

    The placement values are computed by comparing every positive with every
    negative (the Mann-Whitney kernel, ties 1/2) as DeLong et al. (1988) define
    them. Slow and memory-hungry: a reference for tests and benchmarks only.
    Same arguments, result and errors as :func:`delong_roc`.
    """
    return _run(labels, scores, names, level, strict, _placements_by_definition)
