"""DeLong statistics against R's pROC and against the O(mn) pairwise definition."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ich3d.errors import UserError
from ich3d.stats.delong import delong_roc, delong_roc_by_definition, normal_quantile

#: R pROC 1.18.0 reference cases (copied from the project's shared/reference/delong/; README there)
REF_DIR = Path(__file__).resolve().parent / "data" / "delong_proc"
ATOL = 1e-6


EXPECTED = json.loads((REF_DIR / "proc_expected.json").read_text())


def _read_case(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import pandas as pd

    df = pd.read_csv(REF_DIR / name)
    names = [c for c in df.columns if c != "label"]
    return df["label"].to_numpy(), df[names].to_numpy(dtype=np.float64), names


def test_reference_has_the_documented_cases() -> None:
    assert set(EXPECTED) == {
        "continuous_60.csv",
        "identical_models.csv",
        "perfect_vs_noisy.csv",
        "ties_200.csv",
        "tiny_3v4.csv",
    }


@pytest.mark.parametrize("impl", [delong_roc, delong_roc_by_definition], ids=["fast", "definition"])
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_agrees_with_proc(case: str, impl) -> None:
    exp = EXPECTED[case]
    labels, scores, names = _read_case(case)
    res = impl(labels, scores, names=names)
    assert res.n_pos == exp["n_pos"] and res.n_neg == exp["n_neg"]
    assert [m.name for m in res.models] == [s["model"] for s in exp["single"]]
    for got, want in zip(res.models, exp["single"], strict=True):
        for key in ("auc", "ci_lower", "ci_upper", "var"):
            assert getattr(got, key) == pytest.approx(want[key], abs=ATOL), (case, got.name, key)
    assert len(res.pairs) == len(exp["paired"])
    for got, want in zip(res.pairs, exp["paired"], strict=True):
        assert (got.a, got.b) == (want["a"], want["b"])
        for key in ("z", "p", "diff_ci_lower", "diff_ci_upper"):
            assert getattr(got, key) == pytest.approx(want[key], abs=ATOL), (case, key)
    # the JSON view carries the same numbers
    d = res.to_dict()
    assert d["models"][0]["auc"] == pytest.approx(exp["single"][0]["auc"], abs=ATOL)


def test_edge_cases_exact() -> None:
    labels, scores, names = _read_case("perfect_vs_noisy.csv")
    res = delong_roc(labels, scores, names)
    assert res.models[0].auc == 1.0 and res.models[0].var == 0.0
    assert (res.models[0].ci_lower, res.models[0].ci_upper) == (1.0, 1.0)
    labels, scores, names = _read_case("identical_models.csv")
    t = delong_roc(labels, scores, names).pairs[0]
    assert (t.z, t.p, t.diff_ci_lower, t.diff_ci_upper) == (0.0, 1.0, 0.0, 0.0)


def _random_case(rng: np.random.Generator, n: int, k: int, levels: int | None) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 1, 0
    s = rng.normal(size=(n, k)) + y[:, None] * rng.uniform(0, 2, k)
    if levels is not None:  # heavy ties
        s = np.round(s * levels) / levels
    return y, s


@pytest.mark.parametrize("seed,n,k,levels", [(0, 50, 3, 2), (1, 301, 4, None), (2, 777, 5, 4), (3, 12, 2, 1)])
def test_fast_equals_definition(seed: int, n: int, k: int, levels: int | None) -> None:
    rng = np.random.default_rng(seed)
    y, s = _random_case(rng, n, k, levels)
    if levels is not None:
        assert all(len(np.unique(s[:, c])) < n / 2 for c in range(k))  # really tied
    fast = delong_roc(y, s, level=0.9)
    ref = delong_roc_by_definition(y, s, level=0.9)
    np.testing.assert_allclose(fast.aucs, ref.aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.cov, ref.cov, rtol=0, atol=1e-12)
    for a, b in zip(fast.pairs, ref.pairs, strict=True):
        assert (a.a, a.b) == (b.a, b.b)
        assert a.z == pytest.approx(b.z, abs=1e-9)
        assert a.p == pytest.approx(b.p, abs=1e-12)


def test_auc_matches_sklearn_and_covariance_is_symmetric() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    y, s = _random_case(rng, 400, 3, 3)
    res = delong_roc(y, s)
    for c in range(3):
        assert res.aucs[c] == pytest.approx(roc_auc_score(y, s[:, c]), abs=1e-12)
    np.testing.assert_array_equal(res.cov, res.cov.T)
    assert np.all(np.linalg.eigvalsh(res.cov) > -1e-15)
    # paired variance = var_a + var_b - 2 cov_ab
    t = res.pairs[1]  # m1 vs m3
    assert t.sd**2 == pytest.approx(res.cov[0, 0] + res.cov[2, 2] - 2 * res.cov[0, 2], rel=1e-9)


def test_level_changes_interval_width() -> None:
    rng = np.random.default_rng(7)
    y, s = _random_case(rng, 200, 1, None)
    r95 = delong_roc(y, s, level=0.95).models[0]
    r90 = delong_roc(y, s, level=0.90).models[0]
    sd = math.sqrt(r95.var)
    assert r95.ci_upper - r95.auc == pytest.approx(1.959963984540054 * sd, abs=1e-12)
    assert r90.ci_upper - r90.auc == pytest.approx(1.6448536269514722 * sd, abs=1e-12)
    assert normal_quantile(0.99) == pytest.approx(2.5758293035489004, abs=1e-12)
    with pytest.raises(UserError, match="confidence level"):
        delong_roc(y, s, level=95)


def test_orientation_and_pair_lookup() -> None:
    rng = np.random.default_rng(11)
    y, s = _random_case(rng, 120, 3, None)
    res = delong_roc(y, s, names=["a", "b", "c"])
    assert [(t.a, t.b) for t in res.pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    ab, ba = res.pair("a", "b"), res.pair("b", "a")
    assert ab.z == -ba.z and ab.p == ba.p
    assert (ba.diff_ci_lower, ba.diff_ci_upper) == (-ab.diff_ci_upper, -ab.diff_ci_lower)
    assert ab.z == pytest.approx((res.aucs[0] - res.aucs[1]) / ab.sd)
    assert res.best == int(np.argmax(res.aucs))
    # reversing a score reverses its AUC
    flipped = delong_roc(y, -s[:, 0])
    assert flipped.aucs[0] == pytest.approx(1 - res.aucs[0], abs=1e-12)
    assert set(res.to_dict()) == {"n_pos", "n_neg", "models", "pairs"}


@pytest.mark.parametrize(
    "labels",
    [[1, 0, 0, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]],
    ids=["1pos", "1neg", "no_neg", "no_pos"],
)
def test_too_few_cases_raise_or_nan(labels: list[int]) -> None:
    s = np.arange(5, dtype=float)
    with pytest.raises(UserError, match="at least 2 positive and 2 negative"):
        delong_roc(labels, s)
    with pytest.warns(RuntimeWarning, match="returning NaN"):
        res = delong_roc(labels, np.column_stack([s, -s]), strict=False)
    assert math.isnan(res.models[0].var) and math.isnan(res.models[0].ci_lower)
    assert math.isnan(res.pairs[0].p) and math.isnan(res.pairs[0].z)
    has_both = 0 < sum(labels) < len(labels)
    assert math.isnan(res.models[0].auc) != has_both
    if has_both:
        assert res.models[0].auc == pytest.approx(1.0 if labels[0] == 0 else 0.0)


@pytest.mark.parametrize(
    "labels,scores,match",
    [
        ([0, 1, 2, 0, 1], np.arange(5.0), "labels must be 0 or 1"),
        ([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4], "NaN"),
        ([0, 1, 0, 1], [0.1, 0.2, 0.3], "4 labels but 3 rows"),
    ],
)
def test_bad_inputs(labels, scores, match: str) -> None:
    with pytest.raises(UserError, match=match):
        delong_roc(labels, scores)


def test_opposite_perfect_models() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.arange(6.0)
    t = delong_roc(y, np.column_stack([s, -s])).pairs[0]
    assert t.diff == 1.0 and t.sd == 0.0 and t.z == math.inf and t.p == 0.0
