"""``ich3d.stats``: Holm-Bonferroni adjustment against hand-computed values, the shared formats,
and the small-split caution of the report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ich3d.errors import UserError
from ich3d.evaluation.report.build import MIN_CASES_PER_CLASS, interval_cautions, paired_tests
from ich3d.stats import delong_roc, holm_adjust
from ich3d.stats.formatting import finite, fmt_auc, fmt_num, fmt_prop, jsonable


def test_holm_by_hand() -> None:
    # m = 4, sorted 0.005 0.01 0.03 0.04 -> 4x, 3x, 2x, 1x = 0.02 0.03 0.06 0.04 -> running max 0.02 0.03 0.06 0.06
    got = holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=0, atol=1e-15)
    # capped at 1; ties keep one value; NaN neither counts nor changes
    np.testing.assert_allclose(holm_adjust([0.5, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(holm_adjust([0.01, 0.01]), [0.02, 0.02])
    got = holm_adjust([math.nan, 0.02, 0.01])
    assert math.isnan(got[0])
    np.testing.assert_allclose(got[1:], [0.02, 0.02])
    assert holm_adjust([]).shape == (0,)
    assert holm_adjust([0.3]).tolist() == [0.3]  # one test: nothing to adjust
    with pytest.raises(UserError, match="p-values"):
        holm_adjust([0.1, 1.5])


def test_holm_is_never_below_raw_nor_bonferroni_above() -> None:
    p = np.random.default_rng(0).random(12) ** 3
    q = holm_adjust(p)
    assert (q >= p).all() and (q <= np.minimum(1.0, p * 12) + 1e-15).all()
    # monotone in the order of the raw p-values
    order = np.argsort(p)
    assert (np.diff(q[order]) >= 0).all()


def test_paired_tests_carry_holm() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(30), np.zeros(40)].astype(int)
    s = np.column_stack([y + rng.normal(0, s, y.size) for s in (0.5, 1.0, 2.0)])
    res = delong_roc(y, s, names=["a", "b", "c"])
    rows = paired_tests(res)
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    np.testing.assert_allclose([r["p_holm"] for r in rows], holm_adjust([r["p"] for r in rows]))


def test_interval_cautions_rule() -> None:
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(20), np.zeros(20)].astype(int)
    close = np.column_stack([y + rng.normal(0, 3, y.size) for _ in range(2)])
    cautions = interval_cautions(delong_roc(y, close, names=["a", "b"]))
    assert any(f"fewer than {MIN_CASES_PER_CLASS}" in c for c in cautions)
    assert any("every pair of AUC intervals overlaps" in c for c in cautions)
    # large split, one perfect and one chance method: no caution
    y = np.r_[np.ones(150), np.zeros(150)].astype(int)
    far = np.column_stack([y + rng.normal(0, 0.01, y.size), rng.random(y.size)])
    assert interval_cautions(delong_roc(y, far, names=["good", "chance"])) == []


def test_formatting_helpers() -> None:
    assert finite(float("nan")) is None and finite(np.float32(2.5)) == 2.5 and finite(None) is None
    assert jsonable({"a": (np.int64(3), np.float64("inf"), np.bool_(True))}) == {"a": [3, None, True]}
    assert fmt_num(None) == "n/a" and fmt_num(0.12345) == "0.123"
    assert fmt_auc({"auc": 0.8, "ci_lower": None, "ci_upper": None}) == "0.800 (no CI)"
    assert fmt_auc({"auc": 0.8, "ci_lower": 0.7, "ci_upper": 0.9}) == "0.800 [0.700, 0.900]"
    d = {"k": 3, "n": 4, "value": 0.75, "ci_lower": 0.3, "ci_upper": 0.95}
    assert fmt_prop(d) == "0.750 [0.300, 0.950] (3/4)"
    assert fmt_prop(d, counts=False) == "0.750 [0.300, 0.950]"
    assert fmt_prop({"k": 0, "n": 0, "value": None}) == "n/a"
