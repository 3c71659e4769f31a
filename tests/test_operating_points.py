"""Operating points (validation-chosen thresholds) and Wilson intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ich3d.errors import UserError
from ich3d.stats.operating_points import (
    apply_threshold,
    operating_points,
    proportion,
    threshold_for_sensitivity,
    wilson_interval,
    youden_threshold,
)


@pytest.mark.parametrize(
    "k,n,level,lo,hi",
    [
        # published values: R ci_p_wilson examples (stests package)
        (15, 50, 0.95, 0.1910355, 0.4375035),
        (0, 50, 0.95, 0.0, 0.0713476),
        (50, 50, 0.95, 0.9286524, 1.0),
        # R pubs worked example: 6 of 32
        (6, 32, 0.95, 0.08889545, 0.35309155),
        # textbook 8 of 10 and 0 of 10
        (8, 10, 0.95, 0.4901625, 0.9433178),
        (0, 10, 0.95, 0.0, 0.2775328),
        # Newcombe (1998), Table I, example 81/263
        (81, 263, 0.95, 0.2553, 0.3662),
    ],
)
def test_wilson_known_values(k: int, n: int, level: float, lo: float, hi: float) -> None:
    got = wilson_interval(k, n, level)
    tol = 5e-5 if n == 263 else 5e-7
    assert got[0] == pytest.approx(lo, abs=tol)
    assert got[1] == pytest.approx(hi, abs=tol)


@pytest.mark.parametrize("k,n", [(1, 1), (3, 7), (49, 50), (980, 1000), (0, 3)])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k: int, n: int, level: float) -> None:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    lo, hi = wilson_interval(k, n, level)
    assert lo == pytest.approx(ci.low, abs=1e-12)
    assert hi == pytest.approx(ci.high, abs=1e-12)


def test_wilson_edges() -> None:
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(UserError):
        wilson_interval(5, 4)
    p = proportion(3, 4)
    assert (p.k, p.n, p.value) == (3, 4, 0.75) and p.ci_lower < 0.75 < p.ci_upper


def test_threshold_hits_target_sensitivity() -> None:
    # 50 positives with scores 0.01 .. 0.50, 50 negatives 0.00 .. 0.245
    pos = np.arange(1, 51) / 100.0
    neg = np.arange(50) / 200.0
    y = np.r_[np.ones(50, int), np.zeros(50, int)]
    s = np.r_[pos, neg]
    t = threshold_for_sensitivity(y, s, 0.98)
    # 49 of 50 positives are needed: the 49th largest positive score, 0.02
    assert t == pytest.approx(0.02)
    assert (pos >= t).mean() >= 0.98
    assert (pos >= np.nextafter(t, 1.0)).mean() < 0.98  # the largest such threshold
    assert threshold_for_sensitivity(y, s, 1.0) == pytest.approx(0.01)
    assert threshold_for_sensitivity(y, s, 0.5) == pytest.approx(0.26)  # 25th largest
    op = apply_threshold(y, s, t)
    assert op.sensitivity.k == 49 and op.sensitivity.n == 50
    assert op.specificity.k == int((neg < t).sum()) == 4
    assert op.accuracy.k == 53 and op.accuracy.n == 100


def test_threshold_with_ties() -> None:
    y = np.array([1, 1, 1, 1, 0, 0])
    s = np.array([0.9, 0.5, 0.5, 0.5, 0.4, 0.6])
    # sensitivity 0.75 needs 3 positives; the three tied 0.5 scores give 4 at t = 0.5
    assert threshold_for_sensitivity(y, s, 0.75) == 0.5
    assert threshold_for_sensitivity(y, s, 0.25) == 0.9


def test_youden_threshold() -> None:
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9])
    # t=0.45: sens 1, spec 4/5 -> J = 0.8; t=0.6: sens 0.8, spec 1 -> J = 0.8; tie -> larger
    assert youden_threshold(y, s) == pytest.approx(0.6)
    y2 = np.array([0, 0, 1, 0, 1, 1])
    s2 = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # t=3: sens 1, spec 2/3 (J .667); t=5: sens 2/3, spec 1 (J .667); t=... ; tie -> 5
    assert youden_threshold(y2, s2) == 5.0


def test_operating_points_on_val_then_test() -> None:
    rng = np.random.default_rng(0)
    yv = np.r_[np.ones(100, int), np.zeros(100, int)]
    sv = yv * 2.0 + rng.normal(size=200)
    yt = np.r_[np.ones(60, int), np.zeros(90, int)]
    st = yt * 2.0 + rng.normal(size=150)
    ops = operating_points(yv, sv, yt, st, target_sensitivity=0.98)
    assert list(ops) == ["sensitivity", "youden"]
    t = ops["sensitivity"].threshold
    assert (sv[yv == 1] >= t).mean() >= 0.98
    assert ops["sensitivity"].sensitivity.value == pytest.approx((st[yt == 1] >= t).mean())
    assert ops["youden"].threshold > t
    d = ops["youden"].to_dict()
    assert set(d) == {"threshold", "sensitivity", "specificity", "accuracy", "level"}
    assert d["accuracy"]["n"] == 150


def test_errors() -> None:
    with pytest.raises(UserError, match="no positive"):
        threshold_for_sensitivity([0, 0], [0.1, 0.2])
    with pytest.raises(UserError, match="target"):
        threshold_for_sensitivity([0, 1], [0.1, 0.2], target=1.5)
    with pytest.raises(UserError, match="both"):
        youden_threshold([1, 1], [0.1, 0.2])
    with pytest.raises(UserError, match="0 or 1"):
        apply_threshold([0, 2], [0.1, 0.2], 0.1)
