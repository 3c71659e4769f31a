"""Baselines without a sequence model: max, percentile, padded features + linear SVM."""

from __future__ import annotations

import numpy as np
import pytest

from ich3d.errors import UserError
from ich3d.evaluation.inference.baselines import (
    fit_linear_svm,
    max_score,
    pad_and_flatten,
    pad_features,
    percentile_score,
)


def test_max_score_exact() -> None:
    vols = [[0.1, 0.7, 0.2], np.array([0.05]), [0.3, 0.3, 0.9, 0.0]]
    np.testing.assert_array_equal(max_score(vols), [0.7, 0.05, 0.9])


def test_percentile_exact() -> None:
    # 11 probabilities 0.0, 0.1, ..., 1.0 -> h = 10 * 0.95 = 9.5 -> (0.9 + 1.0) / 2
    v1 = np.linspace(0.0, 1.0, 11)[::-1]  # order must not matter
    # 5 values: h = 4 * 0.95 = 3.8 -> 0.4 + 0.8 * (0.8 - 0.4) = 0.72
    v2 = [0.8, 0.1, 0.4, 0.2, 0.3]
    got = percentile_score([v1, v2, [0.42]])
    np.testing.assert_allclose(got, [0.95, 0.72, 0.42], rtol=0, atol=1e-15)
    # q configurable: the median of v2 is 0.3, q = 100 is the max
    np.testing.assert_allclose(percentile_score([v2], q=50), [0.3], atol=1e-15)
    np.testing.assert_array_equal(percentile_score([v2], q=100), max_score([v2]))


def test_score_errors() -> None:
    with pytest.raises(UserError, match="no slice"):
        max_score([[0.1], []])
    with pytest.raises(UserError, match="NaN"):
        percentile_score([[0.1, np.nan]])
    with pytest.raises(UserError, match="percentile"):
        percentile_score([[0.1]], q=101)


def test_pad_both_ends() -> None:
    feats = np.arange(1, 7, dtype=float).reshape(3, 2)  # rows [1,2],[3,4],[5,6]
    out, cropped = pad_features(feats, 7)  # 4 zero rows: 2 before, 2 after
    assert not cropped
    np.testing.assert_array_equal(
        out, [[0, 0], [0, 0], [1, 2], [3, 4], [5, 6], [0, 0], [0, 0]]
    )
    out, _ = pad_features(feats, 6)  # 3 zero rows: 1 before, 2 after (odd one at the end)
    np.testing.assert_array_equal(out, [[0, 0], [1, 2], [3, 4], [5, 6], [0, 0], [0, 0]])
    out, cropped = pad_features(feats, 3)
    assert not cropped and out.dtype == np.float64
    np.testing.assert_array_equal(out, feats)


def test_centre_crop() -> None:
    feats = np.arange(7, dtype=float)[:, None]  # rows 0..6
    out, cropped = pad_features(feats, 3)
    assert cropped
    np.testing.assert_array_equal(out[:, 0], [2, 3, 4])
    out, _ = pad_features(feats, 4)  # 3 rows removed: 1 at the start, 2 at the end
    np.testing.assert_array_equal(out[:, 0], [1, 2, 3, 4])


def test_pad_and_flatten() -> None:
    vols = [np.ones((2, 3)), np.full((5, 3), 2.0), np.full((4, 3), 3.0)]
    x, n_cropped = pad_and_flatten(vols, 4)
    assert x.shape == (3, 12) and n_cropped == 1
    np.testing.assert_array_equal(x[0], [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    with pytest.raises(UserError, match="features per slice"):
        pad_and_flatten([np.ones((2, 3)), np.ones((2, 4))], 4)


def _toy(rng: np.random.Generator, n: int, f: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    """Positive volumes have a bright feature 0 on one slice near their middle."""
    vols, y = [], []
    for i in range(n):
        length = int(rng.integers(3, 8))
        feats = rng.normal(0.0, 0.1, size=(length, f))
        label = i % 2
        if label:
            feats[length // 2, 0] += 3.0
        vols.append(feats)
        y.append(label)
    return vols, np.array(y)


def test_svm_separable_toy_and_c_selection() -> None:
    rng = np.random.default_rng(0)
    tr, ytr = _toy(rng, 40)
    va, yva = _toy(rng, 20)
    te, yte = _toy(rng, 20)
    cs = (1e-6, 1e-2, 1.0)
    svm = fit_linear_svm(tr, ytr, va, yva, Cs=cs)
    assert list(svm.val_auc) == sorted(cs)
    assert svm.C == max(svm.val_auc, key=lambda c: (svm.val_auc[c], -c))
    assert svm.val_auc[svm.C] == 1.0
    assert svm.length == max(v.shape[0] for v in tr) and svm.n_features == 4
    scores, n_cropped = svm.decision_function(te)
    assert n_cropped == 0
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(yte, scores) == 1.0
    # the chosen model is the one fitted with the chosen C
    assert svm.model.C == svm.C
    assert set(svm.to_dict()) >= {"C", "length", "val_auc", "n_cropped_train"}


def test_svm_ties_pick_smallest_c_and_crop_count() -> None:
    rng = np.random.default_rng(1)
    tr, ytr = _toy(rng, 30)
    va, yva = _toy(rng, 10)
    long_val = [np.zeros((20, 4))] + va[1:]
    svm = fit_linear_svm(tr, ytr, long_val, yva, Cs=(10.0, 1.0, 0.1), length=5)
    assert svm.n_cropped_val == 1 + sum(v.shape[0] > 5 for v in va[1:])
    assert svm.n_cropped_train == sum(v.shape[0] > 5 for v in tr)
    best = max(svm.val_auc.values())
    assert svm.C == min(c for c, a in svm.val_auc.items() if a == best)


def test_svm_errors() -> None:
    rng = np.random.default_rng(2)
    tr, ytr = _toy(rng, 10)
    with pytest.raises(UserError, match="both positive and negative"):
        fit_linear_svm(tr, np.zeros(10, int), tr, ytr)
    with pytest.raises(UserError, match="Cs must be positive"):
        fit_linear_svm(tr, ytr, tr, ytr, Cs=())
    with pytest.raises(UserError, match="9 labels for 10"):
        fit_linear_svm(tr, ytr[:9], tr, ytr)


def test_lbfgs_svm_solves_linearsvcs_problem():
    """The float32 primal solver minimises LinearSVC's objective: same decisions, same AUCs."""
    from sklearn.metrics import roc_auc_score
    from sklearn.svm import LinearSVC

    from ich3d.evaluation.inference.baselines import PrimalLinearSVM

    rng = np.random.default_rng(0)
    n, d = 300, 40
    w_true = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    y = (x @ w_true + rng.normal(scale=2.0, size=n) > 0).astype(int)
    for c in (1e-3, 1e-1, 1.0):
        ref = LinearSVC(C=c, max_iter=100_000, tol=1e-8, random_state=0).fit(x, y)
        ours = PrimalLinearSVM(C=c, tol=1e-6).fit(x, y)
        assert ours.converged
        a, b = ref.decision_function(x), ours.decision_function(x)
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-3 * np.abs(a).max())
        assert roc_auc_score(y, b) == pytest.approx(roc_auc_score(y, a), abs=1e-3)


def test_fit_linear_svm_lbfgs_matches_liblinear_choice():
    rng = np.random.default_rng(1)
    vols = [rng.normal(size=(int(rng.integers(3, 7)), 8)) + (i % 2) * 0.8 for i in range(60)]
    y = np.array([i % 2 for i in range(60)])
    a = fit_linear_svm(vols[:40], y[:40], vols[40:], y[40:], Cs=(1e-3, 1e-1), solver="liblinear")
    b = fit_linear_svm(vols[:40], y[:40], vols[40:], y[40:], Cs=(1e-3, 1e-1), solver="lbfgs")
    assert (a.solver, b.solver) == ("liblinear", "lbfgs") and a.C == b.C and a.length == b.length
    sa, _ = a.decision_function(vols[40:])
    sb, _ = b.decision_function(vols[40:])
    assert np.corrcoef(sa, sb)[0, 1] > 0.999
    assert fit_linear_svm(vols[:40], y[:40], vols[40:], y[40:], Cs=(1e-3,)).solver == "liblinear"  # auto, small
    with pytest.raises(UserError, match="solver must be"):
        fit_linear_svm(vols[:40], y[:40], vols[40:], y[40:], solver="sgd")
