"""``ich3d compare``: two evaluated tiny runs in one report, paired by volume; refusals."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import copy_tiny_run, plain
from _train_helpers import run_cli

from ich3d.errors import UserError
from ich3d.evaluation.comparison.compare import (
    compare_runs,
    load_evaluated_run,
    run_labels,
    split_hash,
)
from ich3d.evaluation.methods import all_methods
from ich3d.stats.delong import delong_roc

STAGES = ("slice", "sequence", "finetune")
#: the default methods of those stages, from the registry
METHODS = [m.name for m in all_methods() if m.default and m.needs in STAGES]


def _second_run(tiny, run_id: str, seed: int):  # noqa: ANN001, ANN202
    """Another run of the same config and cache: the same checkpoints from other seeds."""
    from ich3d.config import dump_config
    from ich3d.runs.inputs import input_signature
    from ich3d.runs.run_dir import RunDir, open_run_dir
    from ich3d.training.runner import build_module

    config = open_run_dir(tiny.run_dir).load_config()
    run = RunDir(tiny.run_dir.parent / run_id)
    run.path.mkdir(parents=True)
    dump_config(config, run.config_path)
    for i, stage in enumerate(STAGES):
        torch.manual_seed(seed + i)
        module = build_module(config, stage)
        path = run.best_ckpt(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt = {"state_dict": module.state_dict(), "hyper_parameters": plain(module.hparams)}
        info = {"val_auc": 0.5, "epoch": 0, "inputs": input_signature(config.data)}
        torch.save({**ckpt, "ich3d": info, "global_step": 0, "epoch": 0}, path)
        run.write_result(stage, {"stage": stage, "best_val_auc": 0.5, "global_step": 0})
    return run.path


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    from ich3d.evaluation.evaluate import evaluate_run

    tiny = copy_tiny_run(tiny_run, tmp_path_factory.mktemp("compare"), stages=STAGES)
    second = _second_run(tiny, "r2", seed=900)
    for path in (tiny.run_dir, second):
        evaluate_run(path, progress=False, device="cpu", tracking=False)
    return tiny.run_dir, second


@pytest.fixture(scope="module")
def compared(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "cmp"
    assert run_cli("compare", str(runs[0]), str(runs[1]), "--out", str(out)) == 0
    return out


def _metrics(run) -> dict:  # noqa: ANN001
    return json.loads((run / "evaluation" / "metrics.json").read_text())


def test_every_method_of_every_run_with_its_own_auc(runs, compared) -> None:  # noqa: ANN001
    summary = json.loads((compared / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["r1", "r2"]  # same experiment: run ids
    methods = METHODS
    assert list(summary["columns"]) == [f"{r}:{m}" for r in ("r1", "r2") for m in methods]
    for label, run in zip(("r1", "r2"), runs, strict=True):
        per_method = _metrics(run)["per_method"]
        for m in methods:
            got, ref = summary["columns"][f"{label}:{m}"], per_method[m]
            for k in ("auc", "ci_lower", "ci_upper", "var"):
                assert got[k] == pytest.approx(ref[k], abs=1e-12), (label, m, k)
            op = ref["operating_points"]["sensitivity"]
            assert got["at_target_sensitivity"]["sensitivity"] == op["sensitivity"]["value"]
    # the two runs' models differ (other seeds), the baselines' inputs too
    assert summary["columns"]["r1:finetune"]["auc"] != summary["columns"]["r2:finetune"]["auc"] or (
        summary["columns"]["r1:sequence"]["auc"] != summary["columns"]["r2:sequence"]["auc"]
    )
    n = _metrics(runs[0])["n_volumes"]
    assert summary["n_volumes"] == n and summary["n_pos"] + summary["n_neg"] == n
    md = (compared / "compare.md").read_text()
    assert "| r2:finetune |" in md and "same method across runs" in md
    assert (compared / "roc.png").stat().st_size > 1000 and (compared / "slice_roc.png").is_file()


def test_paired_p_values_equal_delong_on_the_merged_table(runs, compared) -> None:  # noqa: ANN001
    summary = json.loads((compared / "compare.json").read_text())
    a = pd.read_csv(runs[0] / "evaluation" / "predictions.csv", dtype={"key": str})
    b = pd.read_csv(runs[1] / "evaluation" / "predictions.csv", dtype={"key": str})
    b = b.sample(frac=1.0, random_state=0)  # the merge is by key, not by row order
    merged = a.merge(b, on="key", suffixes=("_1", "_2"), validate="one_to_one")
    assert (merged["label_1"] == merged["label_2"]).all()
    pairs = {(t["a"], t["b"]): t for t in summary["across_runs"]}
    # Holm over the whole family of tests across runs, beside the raw p in compare.md
    from ich3d.stats import holm_adjust

    raw = [np.nan if t["p"] is None else t["p"] for t in summary["across_runs"]]
    np.testing.assert_allclose([t["p_holm"] for t in summary["across_runs"]], holm_adjust(raw))
    assert "| p (Holm) |" in (compared / "compare.md").read_text()
    assert len(pairs) == len(METHODS) ** 2  # every column of r1 against every column of r2
    methods = METHODS
    n_informative = 0
    for m1, m2 in ((m1, m2) for m1 in methods for m2 in methods):
        ref = delong_roc(merged["label_1"], merged[[f"{m1}_1", f"{m2}_2"]].to_numpy(), names=["a", "b"])
        t = pairs[(f"r1:{m1}", f"r2:{m2}")]
        assert t["p"] == pytest.approx(ref.pairs[0].p, rel=1e-9, abs=1e-15)
        assert t["diff"] == pytest.approx(ref.aucs[0] - ref.aucs[1], abs=1e-12)
        z = ref.pairs[0].z  # JSON holds a non-finite z (a perfect separation) as null
        assert t["z"] == (pytest.approx(z, rel=1e-9) if np.isfinite(z) else None)
        n_informative += bool(0.001 < ref.pairs[0].p < 0.999)
    assert n_informative >= 5
    # slice level: the same slices of both runs, paired; AUC = each run's reported one
    sl = summary["slice"]
    for label, run in zip(("r1", "r2"), runs, strict=True):
        assert sl["columns"][f"{label}:slice"]["auc"] == pytest.approx(
            _metrics(run)["slice_level"]["all"]["auc"], abs=1e-12
        )
    sa = pd.read_csv(runs[0] / "evaluation" / "slice_predictions.csv", dtype={"key": str})
    sb = pd.read_csv(runs[1] / "evaluation" / "slice_predictions.csv", dtype={"key": str})
    s = sa.merge(sb, on=["key", "slice_index", "label"], validate="one_to_one")
    s = s[s["label"].isin([0, 1])]
    ref = delong_roc(s["label"], s[["probability_x", "probability_y"]].to_numpy())
    assert sl["pairs"][0]["p"] == pytest.approx(ref.pairs[0].p, rel=1e-9, abs=1e-15)
    assert sl["n_slices"] == len(s)


def _copy_eval(run, dest):  # noqa: ANN001, ANN202
    shutil.copytree(run / "evaluation", dest / "evaluation")
    return dest


def test_refuses_other_volumes_or_labels_with_exit_2(runs, tmp_path, capsys) -> None:  # noqa: ANN001
    other = _copy_eval(runs[1], tmp_path / "other")
    pred = pd.read_csv(other / "evaluation" / "predictions.csv", dtype={"key": str})
    pred.loc[0, "key"] = "f" * 16  # same count, one volume swapped
    pred.to_csv(other / "evaluation" / "predictions.csv", index=False)
    assert run_cli("compare", str(runs[0]), str(other), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "volumes differ" in err and "1 volume(s) only in" in err
    assert not (tmp_path / "o" / "compare.json").exists()

    flipped = _copy_eval(runs[1], tmp_path / "flipped")
    pred = pd.read_csv(flipped / "evaluation" / "predictions.csv", dtype={"key": str})
    pred.loc[0, "label"] = 1 - pred.loc[0, "label"]
    pred.to_csv(flipped / "evaluation" / "predictions.csv", index=False)
    assert run_cli("compare", str(runs[0]), str(flipped), "--out", str(tmp_path / "o")) == 2
    assert "different labels" in capsys.readouterr().err
    assert split_hash(pred) != split_hash(pd.read_csv(runs[0] / "evaluation" / "predictions.csv", dtype={"key": str}))

    assert run_cli("compare", str(tmp_path), "--out", str(tmp_path / "o")) == 2
    assert "ich3d evaluate" in capsys.readouterr().err
    with pytest.raises(UserError, match="no run has method 'lstm'"):
        compare_runs([runs[0], runs[1]], tmp_path / "o", methods=["lstm"])


def test_labels_methods_filter_and_evaluation_folder(runs, tmp_path) -> None:  # noqa: ANN001
    result = compare_runs(
        [runs[0] / "evaluation", runs[1]], tmp_path / "o", names=["a", "b"], methods=["finetune", "svm"]
    )
    assert list(result.summary["columns"]) == ["a:svm", "a:finetune", "b:svm", "b:finetune"]
    r1, r2 = (load_evaluated_run(r) for r in runs)
    assert run_labels([r1, r2]) == ["r1", "r2"]
    r2.experiment = "other"
    assert run_labels([r1, r2]) == ["tiny", "other"]
    assert run_labels([r1, r1]) == ["tiny/r1#1", "tiny/r1#2"]
    with pytest.raises(UserError, match="--names"):
        run_labels([r1, r2], ["a"])


def test_wandb_offline_logs_the_tables_without_keys(runs, tmp_path, capsys) -> None:  # noqa: ANN001
    from ich3d.tracking.loggers import read_offline_run

    out = tmp_path / "w"
    assert run_cli("compare", str(runs[0]), str(runs[1]), "--out", str(out), "--wandb") == 0
    assert "W&B run:" in capsys.readouterr().out
    offline = sorted((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    # wandb-core may still be writing the run file when finish() returns (seen with a
    # second run in one process): wait for its summary, up to 30 s
    deadline = time.monotonic() + 30
    while "compare/best" not in (logged := read_offline_run(offline[0]))["summary"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logged["run"]["job_type"] == "compare"
    summary = json.loads((out / "compare.json").read_text())
    assert logged["summary"]["compare/r1:finetune/auc"] == pytest.approx(summary["columns"]["r1:finetune"]["auc"])
    keys = pd.read_csv(runs[0] / "evaluation" / "predictions.csv", dtype={"key": str})["key"]
    blob = b"".join(p.read_bytes() for p in offline[0].rglob("*") if p.is_file())
    assert not any(k.encode() in blob for k in keys)
    assert str(runs[0]).encode() not in blob  # no file-system path either
