"""``ich3d select``: the pick is made on out-of-fold / validation predictions only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _train_helpers import offline_table, read_finished_offline_run, run_cli

from ich3d.errors import UserError
from ich3d.evaluation.comparison.ensemble import ensemble_runs
from ich3d.evaluation.comparison.selection import select_best
from ich3d.evaluation.report.build import build_report
from ich3d.stats.delong import delong_roc


def _scores(labels: np.ndarray, rng: np.random.Generator, strength: dict[str, float]) -> dict[str, np.ndarray]:
    return {m: 1 / (1 + np.exp(-(a * labels + rng.normal(size=len(labels))))) for m, a in strength.items()}


def make_evaluated(root: Path, experiment: str, seed: int, strength: dict[str, float], n: int = 60) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], n // 2)
    test = pd.DataFrame({"key": [f"t{i:03d}" for i in range(n)], "label": labels, **_scores(labels, rng, strength)})
    val = pd.DataFrame({"key": [f"v{i:03d}" for i in range(n)], "label": labels, **_scores(labels, rng, strength)})
    out = root / experiment / "r1" / "evaluation"
    build_report(test, out, val=val, title=experiment, extra={"experiment": experiment, "run_id": "r1"})
    return out.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("sel")
    return [
        make_evaluated(root, "sysa", 0, {"max": 0.5, "finetune": 2.5}),
        make_evaluated(root, "sysb", 1, {"max": 1.0, "finetune": 0.2}),
    ]


def _shuffle_test_labels(runs: list[Path], dest: Path, seed: int) -> list[Path]:
    """Copies of the runs whose test labels are one permutation of the originals (the same in every run)."""
    out = []
    perm = None
    for r in runs:
        copy = dest / r.parent.name / r.name
        shutil.copytree(r, copy)
        pred_path = copy / "evaluation" / "predictions.csv"
        pred = pd.read_csv(pred_path, dtype={"key": str})
        if perm is None:
            perm = np.random.default_rng(seed).permutation(len(pred))
        pred["label"] = pred["label"].to_numpy()[perm]
        pred.to_csv(pred_path, index=False)
        out.append(copy)
    return out


def test_ranking_is_the_validation_auc_and_the_pick_is_tested_once(runs, tmp_path):
    s = select_best(runs, tmp_path / "s")
    assert json.loads((tmp_path / "s" / "selection.json").read_text())["pick"] == s["pick"]
    assert s["on"] == "validation" and [r["rank"] for r in s["ranking"]] == [1, 2, 3, 4]
    values = [r["value"] for r in s["ranking"]]
    assert values == sorted(values, reverse=True)
    for r in s["ranking"]:
        val = pd.read_csv(_eval(runs, r["run"]) / "val_predictions.csv")
        assert r["value"] == pytest.approx(delong_roc(val["label"], val[r["method"]]).aucs[0])
    assert s["pick"] == s["ranking"][0]["candidate"] == "sysa:finetune"
    test = pd.read_csv(_eval(runs, "sysa") / "predictions.csv")
    assert s["test"]["auc"] == pytest.approx(delong_roc(test["label"], test["finetune"]).aucs[0])
    assert set(s["test"]) == {"auc", "ci_lower", "ci_upper", "level", "n_volumes"}  # one test figure, the pick's


def _eval(runs: list[Path], label: str) -> Path:
    return next(r for r in runs if r.parent.name == label) / "evaluation"


def test_pick_does_not_change_when_the_test_labels_are_shuffled(runs, tmp_path):
    first = select_best(runs, tmp_path / "a")
    for seed in (1, 2, 3):
        shuffled = select_best(_shuffle_test_labels(runs, tmp_path / f"shuf{seed}", seed), tmp_path / f"b{seed}")
        assert shuffled["pick"] == first["pick"]
        assert shuffled["ranking"] == first["ranking"]
        assert shuffled["test"]["auc"] != pytest.approx(first["test"]["auc"])  # the test labels did change


def test_an_ensemble_is_a_candidate_and_log_loss_ranks_lowest_first(runs, tmp_path):
    ensemble_runs(runs, ["finetune", "max"], tmp_path / "ens")
    s = select_best([*runs, tmp_path / "ens"], tmp_path / "s", criterion="log_loss")
    assert "ensemble:ensemble" in [r["candidate"] for r in s["ranking"]]
    values = [r["value"] for r in s["ranking"]]
    assert values == sorted(values) and s["higher_is_better"] is False


def test_cross_validation_run_is_ranked_out_of_fold_and_tested_by_its_fold_ensemble(tmp_path):
    rng = np.random.default_rng(5)
    ev = tmp_path / "cv" / "r1" / "evaluation"
    ev.mkdir(parents=True)
    y = np.tile([0, 1], 30)
    oof = pd.DataFrame({"key": [f"v{i}" for i in range(60)], "label": y, "fold": np.arange(60) % 3,
                        **_scores(y, rng, {"max": 0.3, "finetune": 2.0})})
    oof.to_csv(ev / "oof_predictions.csv", index=False)
    test = pd.DataFrame({"key": [f"t{i}" for i in range(60)], "label": y})
    for m, a in {"max": 0.3, "finetune": 2.0}.items():
        for k in range(3):
            test[f"{m}@fold{k}"] = _scores(y, rng, {m: a})[m]
        test[f"{m}@ensemble"] = test[[f"{m}@fold{k}" for k in range(3)]].mean(axis=1)
    test.to_csv(ev / "test_predictions.csv", index=False)
    s = select_best([ev.parent], tmp_path / "s")
    assert s["on"] == "out-of-fold" and s["n_volumes"] == 60
    assert [r["candidate"] for r in s["ranking"]] == ["cv:finetune", "cv:max"]
    assert s["test"]["auc"] == pytest.approx(delong_roc(y, test["finetune@ensemble"]).aucs[0])


def test_inputs_on_other_volumes_or_without_validation_are_refused(runs, tmp_path, capsys):
    other = make_evaluated(tmp_path, "sysc", 3, {"finetune": 1.0}, n=40)
    with pytest.raises(UserError, match="validation volumes or labels differ"):
        select_best([runs[0], other], tmp_path / "s")
    no_val = tmp_path / "noval"
    shutil.copytree(runs[0], no_val)
    (no_val / "evaluation" / "val_predictions.csv").unlink()
    assert run_cli("select", str(no_val), "--out", str(tmp_path / "s")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ich3d: error:") and "val_predictions.csv" in err
    assert not (tmp_path / "s" / "selection.json").exists()


def test_cli_prints_the_ranking_and_the_pick(runs, tmp_path, capsys):
    assert run_cli("select", *map(str, runs), "--criterion", "auc", "--out", str(tmp_path / "s")) == 0
    out = capsys.readouterr().out
    assert "pick: sysa:finetune; test AUC" in out and out.count("test AUC") == 1


def test_cli_wandb_logs_the_ranking_and_the_one_test_auc(runs, tmp_path, capsys):
    out = tmp_path / "sel-w"
    assert run_cli("select", *map(str, runs), "--out", str(out), "--wandb") == 0
    assert "W&B run:" in capsys.readouterr().out
    (folder,) = (out / "wandb").glob("offline-run-*")
    logged = read_finished_offline_run(folder, "select/test_auc")
    assert logged["run"]["job_type"] == "select" and logged["run"]["group"] == "sel-w"
    s = json.loads((out / "selection.json").read_text())
    assert logged["summary"]["select/pick"] == s["pick"] == "sysa:finetune"
    assert logged["summary"]["select/test_auc"] == pytest.approx(s["test"]["auc"])
    assert logged["config"]["criterion"] == "auc" and logged["config"]["on"] == "validation"
    table = offline_table(folder, "ranking")
    assert table["columns"] == ["rank", "candidate", "run", "method", "auc"]
    assert [(r[0], r[1]) for r in table["data"]] == [(r["rank"], r["candidate"]) for r in s["ranking"]]
    assert [r[4] for r in table["data"]] == pytest.approx([r["value"] for r in s["ranking"]])
    blob = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert str(runs[0]).encode() not in blob  # no input path
