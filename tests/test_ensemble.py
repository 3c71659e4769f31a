"""``ich3d ensemble``: methods of several evaluated runs averaged on the same volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _train_helpers import offline_table, read_finished_offline_run, run_cli

from ich3d.errors import UserError
from ich3d.evaluation.comparison.compare import compare_runs
from ich3d.evaluation.comparison.ensemble import ensemble_runs
from ich3d.evaluation.report.build import build_report
from ich3d.stats.delong import delong_roc


def _frame(keys: list[str], labels: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    noise = rng.normal(size=(len(keys), 2))
    return pd.DataFrame({
        "key": keys,
        "label": labels,
        "max": 1 / (1 + np.exp(-(labels + noise[:, 0]))),
        "finetune": 1 / (1 + np.exp(-(1.5 * labels + noise[:, 1]))),
    })


def make_evaluated(root: Path, experiment: str, seed: int, *, n: int = 40, drop: int = 0) -> Path:
    """An evaluation folder of ``n`` test / ``n`` validation volumes (sigmoid of label + noise)."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], n // 2)
    test = _frame([f"t{i:03d}" for i in range(drop, n)], labels[drop:], rng)
    val = _frame([f"v{i:03d}" for i in range(n)], labels, rng)
    out = root / experiment / "r1" / "evaluation"
    build_report(test, out, val=val, title=experiment, extra={"experiment": experiment, "run_id": "r1"})
    return out.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("ens")
    return [make_evaluated(root, name, seed) for seed, name in enumerate(("sysa", "sysb", "sysc"))]


def test_ensemble_column_is_the_mean_of_its_members_with_a_test_against_each(runs, tmp_path):
    report = ensemble_runs(runs, ["finetune"], tmp_path / "ens1")
    test = pd.read_csv(tmp_path / "ens1" / "predictions.csv", dtype={"key": str})
    members = ["sysa:finetune", "sysb:finetune", "sysc:finetune"]
    assert list(test.columns) == ["key", "label", *members, "ensemble"]
    for r, m in zip(runs, members, strict=True):
        own = pd.read_csv(r / "evaluation" / "predictions.csv", dtype={"key": str}).set_index("key")["finetune"]
        np.testing.assert_allclose(test[m], own.loc[test["key"]].to_numpy())
    np.testing.assert_allclose(test["ensemble"], test[members].mean(axis=1), rtol=0, atol=1e-12)
    val = pd.read_csv(tmp_path / "ens1" / "val_predictions.csv", dtype={"key": str})
    np.testing.assert_allclose(val["ensemble"], val[members].mean(axis=1), rtol=0, atol=1e-12)
    metrics = json.loads((tmp_path / "ens1" / "metrics.json").read_text())
    ens = metrics["ensemble"]
    assert ens["members"] == members and ens["rule"] == "mean probability"
    ref = delong_roc(test["label"], test[[*members, "ensemble"]].to_numpy(), names=[*members, "ensemble"])
    assert [t["member"] for t in ens["tests"]] == members
    for t in ens["tests"]:
        pair = ref.pair("ensemble", t["member"])
        assert t["diff"] == pytest.approx(pair.diff) and t["p"] == pytest.approx(pair.p)
    assert metrics["per_method"]["ensemble"]["operating_points"]  # thresholds chosen on the val ensemble
    assert "## Ensemble" in report.markdown and "sysa:finetune" in report.markdown


def test_ensemble_folder_is_a_run_for_compare(runs, tmp_path):
    ensemble_runs(runs[:2], ["finetune", "max"], tmp_path / "ens2")
    result = compare_runs([tmp_path / "ens2", runs[2]], tmp_path / "cmp")
    assert "ensemble:ensemble" in result.summary["columns"]
    assert "sysc:finetune" in result.summary["columns"]


def test_mismatched_splits_are_refused_with_one_error_line(runs, tmp_path, capsys):
    other = make_evaluated(tmp_path, "sysd", 7, drop=2)
    with pytest.raises(UserError, match="volumes differ"):
        ensemble_runs([runs[0], other], ["finetune"], tmp_path / "bad")
    code = run_cli("ensemble", str(runs[0]), str(other), "--methods", "finetune", "--out", str(tmp_path / "bad"))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ich3d: error:") and "split hash" in err
    assert not (tmp_path / "bad").exists()


def test_unknown_method_or_one_member_is_refused(runs, tmp_path):
    with pytest.raises(UserError, match="--methods lstm: no run has it"):
        ensemble_runs(runs, ["lstm"], tmp_path / "x")
    with pytest.raises(UserError, match="two members or more"):
        ensemble_runs(runs[:1], ["finetune"], tmp_path / "x")


def test_cli_prints_the_table(runs, tmp_path, capsys):
    assert run_cli("ensemble", *map(str, runs), "--methods", "finetune", "--out", str(tmp_path / "e")) == 0
    out = capsys.readouterr().out
    assert "3 members, mean probability" in out and "| ensemble |" in out


def test_cli_wandb_logs_the_ensemble_table_grouped_by_its_name_with_hashed_keys(runs, tmp_path, capsys):
    from ich3d.evaluation.report.wandb import hashed_key

    out = tmp_path / "ens-w"
    assert run_cli("ensemble", *map(str, runs), "--methods", "finetune", "--out", str(out), "--wandb") == 0
    assert "W&B run:" in capsys.readouterr().out
    (folder,) = (out / "wandb").glob("offline-run-*")
    logged = read_finished_offline_run(folder, "ensemble/ensemble/auc")
    assert logged["run"]["job_type"] == "ensemble" and logged["run"]["group"] == "ens-w"
    metrics = json.loads((out / "metrics.json").read_text())
    aucs = {d["name"]: d["auc"] for d in metrics["delong"]["models"]}
    assert logged["summary"]["ensemble/ensemble/auc"] == pytest.approx(aucs["ensemble"])
    table = offline_table(folder, "columns")
    assert {r[0]: r[1] for r in table["data"]} == pytest.approx(aucs)
    diffs = {t["member"]: t["diff"] for t in metrics["ensemble"]["tests"]}
    assert {r[0]: r[4] for r in table["data"] if r[0] != "ensemble"} == pytest.approx(diffs)
    preds = offline_table(folder, "predictions")
    keys = pd.read_csv(out / "predictions.csv", dtype={"key": str})["key"]
    assert preds["columns"][:2] == ["volume", "label"] and preds["columns"][-1] == "ensemble"
    assert sorted(r[0] for r in preds["data"]) == sorted(hashed_key(k) for k in keys)
    blob = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert not any(k.encode() in blob for k in keys) and str(runs[0]).encode() not in blob  # nor an input path
