"""The slice classifiers of issue 12: the linear slice SVM, the feature autoencoder, the
``slice_svm`` / ``ae_svm`` methods and the slice-level table of every slice classifier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import copy_tiny_run
from sklearn.metrics import roc_auc_score

from ich3d.errors import UserError
from ich3d.evaluation.inference.slice_svm import bounded_subset, fit_slice_svm
from ich3d.models.autoencoder import fit_autoencoder


def _separable(n: int, seed: int, f: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Two classes 6 units apart along feature 0 (others noise), 1 in 5 positive."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int64)
    y[:2] = [0, 1]
    x = rng.normal(size=(n, f))
    x[:, 0] += 6.0 * y
    return x, y


def test_slice_svm_separable_features_auc_one():
    xtr, ytr = _separable(300, 0)
    xva, yva = _separable(100, 1)
    xte, yte = _separable(200, 2)
    svm = fit_slice_svm(xtr, ytr, xva, yva, Cs=[1e-3, 1.0])
    assert set(svm.val_auc) == {1e-3, 1.0} and max(svm.val_auc.values()) == 1.0
    assert roc_auc_score(yte, svm.decision_function(xte)) == 1.0
    assert svm.n_train == (int(ytr.sum()), int((ytr == 0).sum()))
    # an uninformative feature set ranks at chance, not at 1
    rng = np.random.default_rng(3)
    noise = fit_slice_svm(rng.normal(size=(300, 12)), ytr, rng.normal(size=(100, 12)), yva, Cs=[1.0])
    assert 0.3 < roc_auc_score(yte, noise.decision_function(rng.normal(size=(200, 12)))) < 0.7
    with pytest.raises(UserError, match="both positive and negative"):
        fit_slice_svm(xtr, np.zeros(300), xva, yva)
    with pytest.raises(UserError, match="fitted on 12"):
        svm.decision_function(np.zeros((2, 5)))


def test_bounded_subset_is_seeded_and_stratified():
    y = np.r_[np.ones(100), np.zeros(900)]
    a = bounded_subset(y, 200, seed=0)
    assert len(a) == 200 and int(y[a].sum()) == 20  # each class its share
    assert np.array_equal(a, bounded_subset(y, 200, seed=0))
    assert not np.array_equal(a, bounded_subset(y, 200, seed=1))
    assert np.array_equal(bounded_subset(y, 5000, seed=0), np.arange(1000))
    assert np.all(np.diff(a) > 0)


def test_autoencoder_reconstructs_low_rank_data_and_its_code_separates_classes():
    rng = np.random.default_rng(0)
    n, f, rank = 600, 24, 3
    z = rng.normal(size=(n, rank))
    y = (z[:, 0] > 0.8).astype(np.int64)  # a class the input separates (a linear function of it)
    x = z @ rng.normal(size=(rank, f)) * 5.0 + 10.0
    fit = fit_autoencoder(x[:400], code_dim=rank, hidden=64, epochs=150, lr=3e-3, batch_size=64, seed=0)
    assert fit.losses[-1] < 0.1 * fit.losses[0]
    assert fit.model.reconstruction_error(x[400:]) < 0.02  # standardised units: each feature has variance 1
    full = rng.normal(size=(600, f))  # full-rank data does not fit through a 3-wide code
    assert fit_autoencoder(full[:400], code_dim=rank, hidden=64, epochs=150, lr=3e-3, seed=0).model \
        .reconstruction_error(full[400:]) > 0.5
    codes = fit.model.encode(x)
    assert codes.shape == (n, rank) and codes.dtype == np.float32
    svm = fit_slice_svm(codes[:300], y[:300], codes[300:400], y[300:400], Cs=[0.1, 1.0, 10.0])
    assert roc_auc_score(y[400:], svm.decision_function(codes[400:])) > 0.99
    # deterministic from its seed
    again = fit_autoencoder(x[:400], code_dim=rank, hidden=64, epochs=150, lr=3e-3, batch_size=64, seed=0)
    assert again.losses == fit.losses


@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    return copy_tiny_run(
        tiny_run,
        tmp_path_factory.mktemp("slice_svm"),
        stages=("slice",),
        evaluation={"methods": ["slice_svm", "ae_svm"], "ae_epochs": 5, "ae_hidden": 16, "ae_code_dim": 4,
                    "slice_svm_cs": [0.01, 1.0]},
    )


@pytest.fixture(scope="module")
def evaluated(tiny):
    from ich3d.evaluation.evaluate import evaluate_run

    return evaluate_run(tiny.run_dir, progress=False, device="cpu", tracking=False)


def test_config_methods_opt_in(evaluated):
    m = evaluated.report.metrics
    from ich3d.evaluation.methods import get_method, method_names

    opted = {"slice_svm", "ae_svm"}  # the config's evaluation.methods
    assert m["methods"] == [n for n in method_names() if get_method(n).needs == "slice" and (get_method(n).default or n in opted)]
    assert set(m["slice_level_systems"]) == {"slice", "slice_svm", "ae_svm"}
    assert set(m["slice_classifiers"]) == {"slice_svm", "ae_svm"}
    assert m["slice_classifiers"]["ae_svm"]["ae_code_dim"] == 4
    assert m["slice_classifiers"]["slice_svm"]["C"] in (0.01, 1.0)
    assert "## Slice level (every slice classifier)" in evaluated.report.markdown
    from ich3d.config import config_from_dict

    with pytest.raises(UserError, match="unknown scoring method"):
        from ich3d.evaluation.evaluate import select_methods

        select_methods(extra=config_from_dict({"evaluation": {"methods": ["nope"]}}).evaluation.methods)


def test_stage1_slice_row_matches_slice_predictions(tiny, evaluated):
    """The stage-1 row recomputed from slice_predictions.csv with scikit-learn and by hand."""
    from ich3d.data.cache import open_cache
    from ich3d.data.cavity import CavityRule, load_slice_stats

    row = evaluated.report.metrics["slice_level_systems"]["slice"]
    sp = pd.read_csv(evaluated.out_dir / "slice_predictions.csv", dtype={"key": str})
    stats = load_slice_stats(open_cache(tiny.cache), CavityRule())
    t = sp.merge(stats, on=["key", "slice_index"])
    t = t[(t["cavity_fraction"] >= 0.02) & t["label"].isin([0, 1])]
    assert row["n_slices"] == len(t) and row["n_pos"] == int(t["label"].sum())
    assert row["auc"] == pytest.approx(roc_auc_score(t["label"], t["probability"]), abs=1e-12)
    assert row["auc"] == pytest.approx(evaluated.report.metrics["slice_level"]["cavity"]["auc"], abs=1e-12)
    op = row["operating_points"]["youden"]
    y, p = t["label"].to_numpy(), t["probability"].to_numpy()
    tp, tn = int(((p >= op["threshold"]) & (y == 1)).sum()), int(((p < op["threshold"]) & (y == 0)).sum())
    assert (op["sensitivity"]["k"], op["specificity"]["k"], op["accuracy"]["k"]) == (tp, tn, tp + tn)
    assert op["accuracy"]["ci_lower"] < op["accuracy"]["value"] < op["accuracy"]["ci_upper"]


def test_slice_svm_method_scores_are_max_of_slice_scores(tiny, evaluated):
    from ich3d.evaluation.inference.context import EvaluationContext
    from ich3d.evaluation.inference.slice_level import slice_frame, slice_systems, training_rows
    from ich3d.evaluation.methods import get_method
    from ich3d.runs.run_dir import open_run_dir

    run = open_run_dir(tiny.run_dir)
    ctx = EvaluationContext(run, run.load_config(), device=torch.device("cpu"), progress=False)
    method = get_method("slice_svm")
    got, val = method.score(ctx, "evaluated"), method.score(ctx, "val")
    assert np.array_equal(got.scores, [s.max() for s in got.stage1_slice_scores])
    assert [len(s) for s in got.stage1_slice_scores] == [len(p) for p in ctx.slice_outputs("evaluated").probs]
    pred = pd.read_csv(evaluated.out_dir / "predictions.csv", dtype={"key": str}).set_index("key")
    assert np.allclose(pred.loc[got.keys, "slice_svm"], got.scores, rtol=0, atol=1e-9)  # refit: same seed
    # training slices: cranial cavity, labelled, no negative slice of a positive volume
    frame = slice_frame(ctx, "train")
    rows = training_rows(frame, train=True, max_n=10_000, seed=0)
    sel = frame.iloc[rows]
    assert sel["cavity"].all() and not ((sel["label"] == 0) & (sel["volume_label"] == 1)).any()
    assert len(training_rows(frame, train=True, max_n=7, seed=0)) == 7
    table = slice_systems(ctx, {"slice_svm": (got, val)}, level=0.95)
    ev = slice_frame(ctx, "evaluated")
    mask = ev["cavity"].to_numpy() & ev["label"].isin([0, 1]).to_numpy()
    flat = np.concatenate(got.stage1_slice_scores)[mask]
    assert table["slice_svm"]["auc"] == pytest.approx(roc_auc_score(ev["label"][mask], flat), abs=1e-12)
    assert table["slice_svm"]["auc"] == pytest.approx(
        evaluated.report.metrics["slice_level_systems"]["slice_svm"]["auc"], abs=1e-12
    )
    # thresholds come from the validation cranial-cavity slices
    from ich3d.stats.operating_points import threshold_for_sensitivity, youden_threshold

    vf = slice_frame(ctx, "val")
    vm = vf["cavity"].to_numpy() & vf["label"].isin([0, 1]).to_numpy()
    vy, vp = vf["label"].to_numpy()[vm], np.concatenate(ctx.slice_outputs("val").probs)[vm]
    ops = table["slice"]["operating_points"]
    assert ops["youden"]["threshold"] == youden_threshold(vy, vp)
    assert ops["sensitivity"]["threshold"] == threshold_for_sensitivity(vy, vp, 0.98)
    assert ops["sensitivity"]["validation_sensitivity"] >= 0.98
