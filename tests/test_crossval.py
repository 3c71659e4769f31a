"""Out-of-fold evaluation of a cross-validation run: OOF table, OOF DeLong, fold ensemble on test."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config
from scipy.stats import rankdata

from ich3d.errors import UserError
from ich3d.evaluation.crossval import ensemble_scores, ensemble_table, oof_table
from ich3d.stats.delong import delong_roc
from ich3d.stats.operating_points import threshold_for_sensitivity

METHODS = ["max", "p95", "svm", "sequence", "finetune"]


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    cache = make_cache(root, patients=16)
    raw = tiny_raw_config(cache, root)
    raw["data"].update({"folds": 2, "split_fractions": [0.5, 0.25, 0.25]})
    cfg = write_config(root / "cv.yaml", raw)
    assert run_cli("train", str(cfg), "--folds", "all", "--run-id", "cv") == 0
    run = root / "runs" / "tiny" / "cv"
    assert run_cli("evaluate", str(run), "--no-progress") == 0
    return run, cache


def test_every_non_test_volume_has_one_oof_prediction_from_its_fold(cv_run) -> None:
    run, cache = cv_run
    splits = json.loads((cache / "splits.json").read_text())
    oof = pd.read_csv(run / "evaluation" / "oof_predictions.csv", dtype={"key": str})
    assert list(oof.columns) == ["key", "label", "fold", *METHODS]
    assert sorted(oof["key"]) == sorted(splits["keys"]["train"] + splits["keys"]["val"])
    for k, keys in enumerate(splits["keys"]["folds"]):
        part = oof[oof["fold"] == k].set_index("key")
        assert sorted(part.index) == keys
        own = pd.read_csv(run / f"fold{k}" / "evaluation" / "val_predictions.csv", dtype={"key": str})
        own = own.set_index("key").loc[part.index]
        assert np.array_equal(part[METHODS].to_numpy(), own[METHODS].to_numpy())  # the fold's own model


def test_oof_auc_is_delong_on_the_concatenated_table(cv_run) -> None:
    run, _ = cv_run
    oof = pd.read_csv(run / "evaluation" / "oof_predictions.csv", dtype={"key": str})
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["cross_validation"]
    expect = delong_roc(oof["label"], oof[METHODS].to_numpy(), METHODS)
    for got, want in zip(metrics["oof"]["models"], expect.models, strict=True):
        assert got["name"] == want.name
        assert got["auc"] == pytest.approx(want.auc, abs=1e-12)
        assert (got["ci_lower"], got["ci_upper"]) == pytest.approx((want.ci_lower, want.ci_upper), abs=1e-12)
    for m in METHODS:
        per_fold = [
            delong_roc(oof.loc[oof["fold"] == k, "label"], oof.loc[oof["fold"] == k, m], strict=False).aucs[0]
            for k in (0, 1)
        ]
        entry = metrics["methods"][m]
        assert entry["fold_val_auc"] == pytest.approx(per_fold, nan_ok=True)
        assert entry["fold_val_auc_mean"] == pytest.approx(np.nanmean(per_fold))
    report = (run / "evaluation" / "report.md").read_text()
    assert "## Cross-validation" in report and "fold0/evaluation/report.md" in report


def test_ensemble_is_the_mean_of_its_members_with_paired_tests(cv_run) -> None:
    run, _ = cv_run
    test = pd.read_csv(run / "evaluation" / "test_predictions.csv", dtype={"key": str})
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["cross_validation"]
    n = len(test)
    for m in METHODS:
        members = test[[f"{m}@fold0", f"{m}@fold1"]].to_numpy()
        own = pd.read_csv(run / "fold1" / "evaluation" / "predictions.csv", dtype={"key": str})
        assert np.array_equal(test[f"{m}@fold1"].to_numpy(), own[m].to_numpy())
        if m == "svm":  # decision values: the mean of per-fold rank-normalised scores
            want = np.mean([rankdata(members[:, j]) / n for j in (0, 1)], axis=0)
            assert metrics["methods"][m]["ensemble_rule"] == "mean rank"
            assert "operating_points" not in metrics["methods"][m]
        else:
            want = members.mean(axis=1)
            assert metrics["methods"][m]["ensemble_rule"] == "mean probability"
        assert np.allclose(test[f"{m}@ensemble"].to_numpy(), want, rtol=0, atol=1e-12)
        names = [f"{m}@fold0", f"{m}@fold1", f"{m}@ensemble"]
        res = delong_roc(test["label"], test[names].to_numpy(), names)
        pairs = metrics["methods"][m]["ensemble_vs_folds"]
        assert [(p["a"], p["b"]) for p in pairs] == [(names[2], names[0]), (names[2], names[1])]
        for p, other in zip(pairs, names[:2], strict=True):
            assert p["p"] == pytest.approx(res.pair(names[2], other).p, nan_ok=True)
        assert metrics["methods"][m]["test"][names[2]]["auc"] == pytest.approx(res.aucs[2])
    # operating points are chosen on the OOF predictions
    oof = pd.read_csv(run / "evaluation" / "oof_predictions.csv", dtype={"key": str})
    op = metrics["methods"]["finetune"]["operating_points"]["sensitivity"]
    assert op["threshold"] == pytest.approx(threshold_for_sensitivity(oof["label"], oof["finetune"], 0.98))


def test_ensemble_rule_and_table_checks() -> None:
    probs = np.array([[0.2, 0.4], [0.9, 0.7], [0.5, 0.5]])
    scores, rule = ensemble_scores(probs)
    assert rule == "mean probability" and np.allclose(scores, [0.3, 0.8, 0.5])
    scores, rule = ensemble_scores(np.array([[-3.0, 10.0], [2.0, 30.0], [0.0, 20.0]]))
    assert rule == "mean rank" and np.allclose(scores, [1 / 3, 1.0, 2 / 3])
    a = pd.DataFrame({"key": ["a", "b"], "label": [0, 1], "max": [0.1, 0.9]})
    with pytest.raises(UserError, match="two folds"):
        oof_table([a, a])
    with pytest.raises(UserError, match="different volumes"):
        ensemble_table([a, a.assign(key=["a", "c"])])


def test_ci_widths_put_the_oof_interval_beside_each_fold_models_test_interval(cv_run) -> None:
    run, _ = cv_run
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["cross_validation"]
    oof = {d["name"]: d for d in metrics["oof"]["models"]}
    for m in METHODS:
        w, tests = metrics["ci_widths"][m], metrics["methods"][m]["test"]
        assert w["oof"] == pytest.approx(oof[m]["ci_upper"] - oof[m]["ci_lower"])
        per_fold = [tests[f"{m}@fold{k}"]["ci_upper"] - tests[f"{m}@fold{k}"]["ci_lower"] for k in (0, 1)]
        assert w["test_per_fold"] == pytest.approx(per_fold)
        assert w["test_ensemble"] == pytest.approx(tests[f"{m}@ensemble"]["ci_upper"] - tests[f"{m}@ensemble"]["ci_lower"])
        assert w["narrower"] is (w["oof"] < min(per_fold))
    report = (run / "evaluation" / "report.md").read_text()
    assert "| method | OOF CI width | single-split test CI width" in report
    verdict = "yes" if metrics["ci_widths"]["finetune"]["narrower"] else "no"
    row = [ln for ln in report.splitlines() if ln.startswith("| finetune | ") and ln.endswith(f"| {verdict} |")]
    assert len(row) == 1


def test_cv_wandb_run_logs_the_oof_and_ensemble_tables_with_hashed_keys(cv_run, tmp_path, monkeypatch) -> None:
    from ich3d.config import config_from_dict
    from ich3d.evaluation.crossval import ENSEMBLE
    from ich3d.evaluation.crossval_wandb import log_cv_to_wandb
    from ich3d.evaluation.report.wandb import hashed_key
    from ich3d.tracking.offline import read_offline_run

    run, _ = cv_run
    monkeypatch.setenv("WANDB_MODE", "offline")
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["cross_validation"]
    oof = pd.read_csv(run / "evaluation" / "oof_predictions.csv", dtype={"key": str})
    test = pd.read_csv(run / "evaluation" / "test_predictions.csv", dtype={"key": str})
    config = config_from_dict({"experiment": "tiny", "data": {"folds": 2}, "tracking": {"mode": "offline", "project": "p"}})
    out = tmp_path / "tiny" / "cv"
    out.mkdir(parents=True)
    assert log_cv_to_wandb(metrics, oof, test, config, out, ENSEMBLE) is not None
    (folder,) = (out / "wandb").glob("offline-run-*")
    deadline = time.monotonic() + 30  # wandb-core may still be writing when finish() returns
    while "cv/finetune/oof_auc" not in (logged := read_offline_run(folder))["summary"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logged["run"]["group"] == "cv" and logged["run"]["name"] == "tiny/cv/evaluate"
    assert logged["run"]["job_type"] == "evaluate" and logged["config"]["folds"] == 2
    oof_auc = {d["name"]: d["auc"] for d in metrics["oof"]["models"]}
    assert logged["summary"]["cv/finetune/oof_auc"] == pytest.approx(oof_auc["finetune"])

    def table(name: str) -> dict:
        return json.loads(next(folder.rglob(f"{name}_*.table.json")).read_text())

    methods = table("methods")
    assert methods["columns"][:2] == ["method", "oof_auc"]
    assert {r[0]: r[1] for r in methods["data"]} == pytest.approx(oof_auc)
    tests = table("test")
    ens = [r for r in tests["data"] if r[0] == "max" and r[1] == ENSEMBLE]
    assert ens[0][2] == pytest.approx(metrics["methods"]["max"]["test"][f"max@{ENSEMBLE}"]["auc"])
    rows = table("oof_predictions")
    assert rows["columns"] == ["volume", "label", "fold", *METHODS]
    assert sorted(r[0] for r in rows["data"]) == sorted(hashed_key(k) for k in oof["key"])
    assert len(table("test_predictions")["data"]) == len(test)
    blob = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert not any(k.encode() in blob for k in [*oof["key"], *test["key"]])  # hashed keys only
