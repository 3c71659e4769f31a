"""The evaluation report on constructed predictions: numbers, files, operating points, W&B."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ich3d.errors import UserError
from ich3d.evaluation.report.build import (
    build_report,
    method_columns,
    slice_level_auc,
)
from ich3d.evaluation.report.wandb import summary_metrics
from ich3d.stats.delong import delong_roc
from ich3d.stats.operating_points import wilson_interval
from ich3d.stats.roc_table import read_predictions


def _frame(n: int, seed: int, prefix: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2, int), np.zeros(n - n // 2, int)]
    rng.shuffle(y)
    return pd.DataFrame(
        {
            "key": [f"{prefix}{i:04x}" for i in range(n)],
            "label": y,
            # deliberately not in the method registry's order: the report reorders them
            "finetune": y * 1.5 + rng.normal(size=n),
            "max": y * 0.3 + rng.normal(size=n),
            "sequence": y * 1.0 + rng.normal(size=n),
            "p95": y * 0.5 + rng.normal(size=n),
        }
    )


@pytest.fixture()
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _frame(120, 0, "t"), _frame(100, 1, "v")


def test_report_numbers_equal_delong_and_files(tmp_path, frames):
    test, val = frames
    build_report(
        test,
        tmp_path,
        val=val,
        timing={"max": 0.01, "finetune": 0.5},
        hardware={"summary": "cpu: test machine, torch x"},
        slice_level={"all": slice_level_auc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])},
        missing={"direct": "no direct/best.ckpt"},
        title="unit test",
    )
    methods = ["max", "p95", "sequence", "finetune"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["methods"] == methods
    ref = delong_roc(test["label"], test[methods].to_numpy(), names=methods)
    assert m["delong"] == json.loads(json.dumps(ref.to_dict()))
    for i, name in enumerate(methods):
        assert m["per_method"][name]["auc"] == pytest.approx(ref.models[i].auc, abs=1e-12)
        assert m["per_method"][name]["ci_lower"] == pytest.approx(ref.models[i].ci_lower, abs=1e-12)
    assert m["best"] == methods[ref.best] == "finetune"
    assert m["per_method"]["max"]["p_vs_best"] == pytest.approx(ref.pair("max", "finetune").p, abs=1e-12)
    assert m["per_method"]["finetune"]["p_vs_best"] is None
    assert m["per_method"]["finetune"]["seconds_per_volume"] == 0.5
    assert m["missing"] == {"direct": "no direct/best.ckpt"}

    # predictions.csv reads back with `ich3d roc`'s reader, same columns and order
    preds = read_predictions(tmp_path / "predictions.csv")
    assert preds.names == methods
    np.testing.assert_array_equal(preds.labels, test["label"].to_numpy())
    np.testing.assert_array_equal(preds.scores, test[methods].to_numpy())
    assert list(pd.read_csv(tmp_path / "predictions.csv").columns) == ["key", "label", *methods]
    assert list(pd.read_csv(tmp_path / "val_predictions.csv").columns) == ["key", "label", *methods]

    md = (tmp_path / "report.md").read_text()
    assert "![ROC curves of all methods](roc.png)" in md
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fin = ref.models[methods.index("finetune")]
    assert f"| finetune | {fin.auc:.3f} | {fin.ci_lower:.3f} - {fin.ci_upper:.3f} | best |" in md
    assert "| max | sequence |" in md  # the pairwise table
    assert "cpu: test machine" in md and "| finetune | 0.5000 |" in md
    assert "`direct`: no direct/best.ckpt" in md
    assert "| all slices | 6 | 3 | 3 |" in md


def test_operating_points_reach_target_on_validation(tmp_path, frames):
    test, val = frames
    rep = build_report(test, tmp_path, val=val, target_sensitivity=0.9)
    y_val, y_test = val["label"].to_numpy(), test["label"].to_numpy()
    for name in rep.metrics["methods"]:
        op = rep.metrics["operating_points"][name]["sensitivity"]
        thr = op["threshold"]
        s_val = val[name].to_numpy()
        sens_val = (s_val[y_val == 1] >= thr).mean()
        assert sens_val >= 0.9
        assert op["validation"]["sensitivity"]["value"] == pytest.approx(sens_val)
        # the largest such threshold: the next larger positive score misses the target
        larger = np.sort(s_val[y_val == 1][s_val[y_val == 1] > thr])
        if larger.size:
            assert (s_val[y_val == 1] >= larger[0]).mean() < 0.9
        # applied to test, with Wilson intervals
        s_test = test[name].to_numpy()
        tp = int((s_test[y_test == 1] >= thr).sum())
        tn = int((s_test[y_test == 0] < thr).sum())
        assert op["sensitivity"]["k"] == tp and op["sensitivity"]["n"] == (y_test == 1).sum()
        assert op["specificity"]["k"] == tn
        assert op["accuracy"]["value"] == pytest.approx((tp + tn) / len(y_test))
        lo, hi = wilson_interval(tp, int((y_test == 1).sum()))
        assert (op["sensitivity"]["ci_lower"], op["sensitivity"]["ci_upper"]) == pytest.approx((lo, hi))
        # Youden's threshold maximises J on validation
        yd = rep.metrics["operating_points"][name]["youden"]
        v = yd["validation"]
        j = v["sensitivity"]["value"] + v["specificity"]["value"] - 1
        for t in np.unique(s_val):
            jt = (s_val[y_val == 1] >= t).mean() + (s_val[y_val == 0] < t).mean() - 1
            assert jt <= j + 1e-12
    assert "| finetune | sens >= 0.9 |" in rep.markdown
    assert "| finetune | Youden |" in rep.markdown


def test_missing_validation_and_single_class_validation(tmp_path, frames):
    test, val = frames
    rep = build_report(test, tmp_path / "a")
    assert rep.metrics["operating_points"] == {}
    assert not (tmp_path / "a" / "val_predictions.csv").exists()
    assert any("operating points not computed" in n for n in rep.metrics["notes"])

    val_one = val.copy()
    val_one["label"] = 1
    rep = build_report(test, tmp_path / "b", val=val_one[["key", "label", "max"]])
    assert rep.metrics["operating_points"] == {}
    assert any("no validation scores for finetune" in n for n in rep.metrics["notes"])
    assert any("lacks a class" in n for n in rep.metrics["notes"])


def test_bad_inputs(tmp_path, frames):
    test, _ = frames
    with pytest.raises(UserError, match="'label'"):
        build_report(test.drop(columns="label"), tmp_path)
    bad = test.copy()
    bad.loc[3, "max"] = np.nan
    with pytest.raises(UserError, match="'max'.*NaN"):
        build_report(bad, tmp_path)
    dup = pd.concat([test, test.iloc[:1]])
    with pytest.raises(UserError, match="more than once"):
        build_report(dup, tmp_path)
    with pytest.raises(UserError, match="no column 'svm'"):
        method_columns(test, ["svm"])


def test_slice_level_auc_values():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.7, 0.3])
    d = slice_level_auc(y, p)
    ref = delong_roc(y, p)
    assert d["auc"] == ref.models[0].auc == pytest.approx(15 / 16)
    assert (d["ci_lower"], d["ci_upper"]) == (ref.models[0].ci_lower, ref.models[0].ci_upper)
    assert (d["n_slices"], d["n_pos"], d["n_neg"]) == (8, 4, 4)
    one = slice_level_auc([0, 0, 1], [0.1, 0.2, 0.9])  # one positive: AUC, no interval
    assert one["auc"] == 1.0 and math.isnan(one["ci_lower"])


def test_summary_metrics(tmp_path, frames):
    test, val = frames
    rep = build_report(test, tmp_path / "eval", val=val, timing={"finetune": 0.25})
    s = summary_metrics(rep.metrics)
    assert s["eval/finetune/auc"] == rep.metrics["per_method"]["finetune"]["auc"]
    assert s["eval/finetune/seconds_per_volume"] == 0.25
    assert s["eval/max/sensitivity/specificity_ci_lower"] == (
        rep.metrics["operating_points"]["max"]["sensitivity"]["specificity"]["ci_lower"]
    )
    assert all(isinstance(v, float) for v in s.values())


@pytest.mark.slow
def test_wandb_offline_log(tmp_path, frames, monkeypatch):
    from ich3d.config import config_from_dict
    from ich3d.evaluation.report.wandb import log_to_wandb

    test, val = frames
    rep = build_report(test, tmp_path / "eval", val=val, timing={"finetune": 0.25})

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = config_from_dict({"experiment": "unit", "tracking": {"mode": "offline", "group": "g1"}})
    run_dir = tmp_path / "runs" / "unit" / "rid"
    run_dir.mkdir(parents=True)
    out = log_to_wandb(rep, cfg, run_dir)
    assert out is not None
    wandb_dir = run_dir / "wandb"
    files = [p for p in wandb_dir.rglob("*") if p.is_file()]
    assert files, "no offline W&B run written"
    # no per-volume row: no volume key appears in any W&B file
    blob = b"".join(p.read_bytes() for p in files)
    assert b"t0001" not in blob and b"v0001" not in blob
    tables = list(wandb_dir.rglob("methods_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    rows = {r[0]: r for r in table["data"]}
    assert list(rows) == rep.metrics["methods"]
    assert rows["finetune"][1] == rep.metrics["per_method"]["finetune"]["auc"]
    assert len(list(wandb_dir.rglob("roc_table_*.table.json"))) == 1  # the ROC curve points
    assert log_to_wandb(rep, config_from_dict({"tracking": {"mode": "disabled"}}), run_dir) is None
