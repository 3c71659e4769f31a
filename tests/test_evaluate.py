"""``ich3d evaluate`` on a tiny run directory, and the inference passes it is built on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import copy_tiny_run

from ich3d.errors import UserError
from ich3d.evaluation.methods import all_methods
from ich3d.stats.delong import delong_roc


def _finite_json(d):
    """metrics.json writes non-finite numbers (z of a perfect separation) as null."""
    if isinstance(d, dict):
        return {k: _finite_json(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_finite_json(v) for v in d]
    if isinstance(d, float) and not np.isfinite(d):
        return None
    return d


#: the stages of this module's run (no direct ablation)
TINY_STAGES = ("slice", "sequence", "finetune")


@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    return copy_tiny_run(tiny_run, tmp_path_factory.mktemp("eval"), stages=TINY_STAGES)


@pytest.fixture(scope="module")
def evaluated(tiny):
    from ich3d.evaluation.evaluate import evaluate_run

    return evaluate_run(tiny.run_dir, progress=False, device="cpu")


def _split_keys(tiny, split: str) -> list[str]:
    """The split's volume keys as the DataModule (the trainer's data) defines them."""
    from ich3d.evaluation.inference.passes import build_eval_datamodule
    from ich3d.runs.run_dir import open_run_dir

    dm = build_eval_datamodule(open_run_dir(tiny.run_dir).load_config(), stage="test")
    keys = list(dm.split_table(split)["key"])
    assert keys == sorted(keys) and len(keys) >= 4
    return keys


def test_evaluate_writes_every_file_with_expected_columns(tiny, evaluated):
    out = tiny.run_dir / "evaluation"
    assert evaluated.out_dir == out
    methods = [m.name for m in all_methods() if m.default and m.needs in TINY_STAGES]
    test = pd.read_csv(out / "predictions.csv", dtype={"key": str})
    val = pd.read_csv(out / "val_predictions.csv", dtype={"key": str})
    assert list(test.columns) == ["key", "label", *methods]
    assert list(val.columns) == ["key", "label", *methods]
    assert list(test["key"]) == _split_keys(tiny, "test")
    assert list(val["key"]) == _split_keys(tiny, "val")
    vols = pd.read_csv(tiny.cache / "volumes.csv", dtype={"key": str}).set_index("key")
    np.testing.assert_array_equal(test["label"], vols.loc[test["key"], "any"])
    assert test[["sequence", "finetune", "max", "p95"]].apply(lambda c: c.between(0, 1).all()).all()

    m = json.loads((out / "metrics.json").read_text())
    assert m["methods"] == methods
    assert set(m["missing"]) == {"direct"}
    assert set(m["timing"]) == set(methods) and all(v > 0 for v in m["timing"].values())
    assert m["hardware"]["device"] == "cpu" and m["hardware"]["torch"] == torch.__version__
    assert m["svm"]["length"] == max(vols.loc[_split_keys(tiny, "train"), "n_slices"])
    assert m["svm"]["n_cropped_test"] == int((vols.loc[test["key"], "n_slices"] > m["svm"]["length"]).sum())
    assert set(m["operating_points"]) == set(methods)
    ref = delong_roc(test["label"], test[methods].to_numpy(), names=methods)
    assert m["delong"] == _finite_json(ref.to_dict())

    md = (out / "report.md").read_text()
    assert "![ROC curves of all methods](roc.png)" in md and (out / "roc.png").is_file()
    assert "`direct`: no direct/best.ckpt" in md
    assert "## Slice level (stage-1 CNN)" in md and "## Inference time" in md


def test_baseline_columns_follow_from_slice_probabilities(tiny, evaluated):
    out = evaluated.out_dir
    test = pd.read_csv(out / "predictions.csv", dtype={"key": str}).set_index("key")
    sl = pd.read_csv(out / "slice_predictions.csv", dtype={"key": str})
    assert list(sl.columns) == ["key", "slice_index", "label", "probability"]
    vols = pd.read_csv(tiny.cache / "volumes.csv", dtype={"key": str}).set_index("key")
    for key, g in sl.groupby("key"):
        p = g.sort_values("slice_index")["probability"].to_numpy()
        assert len(p) == vols.loc[key, "n_slices"]  # every cached slice
        assert test.loc[key, "max"] == p.max()
        assert test.loc[key, "p95"] == pytest.approx(np.percentile(p, 95), abs=1e-15)
    m = evaluated.report.metrics
    ref = delong_roc(sl["label"], sl["probability"], strict=False)
    assert m["slice_level"]["all"]["auc"] == ref.models[0].auc
    assert m["slice_level"]["all"]["n_slices"] == len(sl)
    assert m["slice_level"]["cavity"]["n_slices"] < len(sl)


def test_volume_scores_equal_a_plain_forward(tiny, evaluated):
    """The finetune column is sigmoid(model(volume)) of the depth-pooled, windowed volume."""
    from ich3d.data.cache import IngestCache
    from ich3d.data.datasets import VolumeDataset
    from ich3d.runs.checkpoints import load_volume_model

    model, config = load_volume_model(tiny.run_dir, "finetune")
    test = pd.read_csv(evaluated.out_dir / "predictions.csv", dtype={"key": str})
    ds = VolumeDataset(IngestCache(tiny.cache), test, config.data.windows, depth_pool=config.data.depth_pool)
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            assert item["volume"].shape[0] == -(-len(np.load(tiny.cache / "volumes" / f"{item['key']}.npy")) // 2)
            p = torch.sigmoid(model(item["volume"][None], item["length"][None])).item()
            assert test["finetune"][i] == pytest.approx(p, abs=1e-6)


def test_padded_batches_and_slice_pass_match_single_calls(tiny):
    from ich3d.evaluation.inference.passes import (
        build_eval_datamodule,
        predict_slices,
        predict_volumes,
    )
    from ich3d.runs.checkpoints import load_slice_model, load_volume_model

    model, config = load_volume_model(tiny.run_dir, "sequence")
    one = build_eval_datamodule(config, batch_size=1, stage="test")
    three = build_eval_datamodule(config, batch_size=3, stage="test")
    a = predict_volumes(model, one.eval_dataloader("val"), "cpu", progress=False)
    b = predict_volumes(model, three.eval_dataloader("val"), "cpu", progress=False)
    assert a.keys == b.keys
    np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)
    assert a.probs.std() > 0  # the check is not vacuous

    smodel = load_slice_model(tiny.run_dir)
    dm1 = build_eval_datamodule(config, depth_pool=1, batch_size=2, stage="test")
    outs = predict_slices(smodel, dm1.eval_dataloader("val"), "cpu", chunk=5, progress=False)
    ds = dm1.eval_dataloader("val").dataset
    with torch.no_grad():
        for i, key in enumerate(outs.keys):
            x = ds[i]["volume"]
            assert ds[i]["key"] == key and len(outs.probs[i]) == x.shape[0]
            np.testing.assert_allclose(outs.probs[i], torch.sigmoid(smodel(x)).numpy(), atol=1e-6)
            np.testing.assert_allclose(outs.features[i], smodel.encoder(x).numpy(), atol=1e-5)
            assert outs.features[i].shape == (x.shape[0], 16)


def test_stage_subset_cli_and_errors(tiny, tmp_path, capsys):
    from ich3d.cli.main import main
    from ich3d.evaluation.evaluate import evaluate_run

    assert main(["evaluate", str(tiny.run_dir), "--stages", "sequence", "--out", str(tmp_path / "e"),
                 "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| sequence |" in printed and "report:" in printed
    assert list(pd.read_csv(tmp_path / "e" / "predictions.csv").columns) == ["key", "label", "sequence"]

    with pytest.raises(UserError, match="none of the requested checkpoints"):
        evaluate_run(tiny.run_dir, stages=["direct"], out=tmp_path / "d", progress=False)
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    with pytest.raises(UserError, match="--device"):
        evaluate_run(tiny.run_dir, device="tpu", out=tmp_path / "x", progress=False)


@pytest.mark.slow
def test_tracking_offline_logs_an_evaluate_run(tiny_run, tmp_path, monkeypatch):
    from ich3d.evaluation.evaluate import evaluate_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    tiny = copy_tiny_run(tiny_run, tmp_path, stages=("sequence",), tracking="offline")
    res = evaluate_run(tiny.run_dir, progress=False, device="cpu")
    assert res.wandb_dir is not None
    runs = list((tiny.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].rglob("methods_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    auc = res.report.metrics["per_method"]["sequence"]["auc"]
    assert table["columns"][:2] == ["method", "auc"] and table["data"][0][:2] == ["sequence", auc]
    preds = json.loads(next(runs[0].rglob("predictions_*.table.json")).read_text())
    assert preds["columns"] == ["volume", "label", "sequence"] and len(preds["data"]) == res.report.metrics["n_volumes"]
    from ich3d.evaluation.report.wandb import hashed_key

    frame = pd.read_csv(res.out_dir / "predictions.csv", dtype={"key": str})
    assert sorted(r[0] for r in preds["data"]) == sorted(hashed_key(k) for k in frame["key"])
    blob = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    keys = pd.read_csv(res.out_dir / "predictions.csv", dtype={"key": str})["key"]
    assert not any(k.encode() in blob for k in keys)  # no per-volume row reaches W&B


def test_device_and_hardware_description():
    from ich3d.evaluation.inference.passes import (
        autocast_context,
        cpu_model_name,
        hardware_info,
        resolve_device,
    )

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="expected auto, cpu or cuda"):
        resolve_device("gpu0")
    info = hardware_info(torch.device("cpu"))
    assert info["name"] == cpu_model_name() and info["precision"] == "fp32"
    assert cpu_model_name() in info["summary"] and torch.__version__ in info["summary"]
    with autocast_context(torch.device("cpu")):  # fp32 on CPU: no autocast
        assert not torch.is_autocast_enabled("cpu")


def test_report_says_where_it_came_from(tiny, evaluated):
    """Provenance, the published figures, the synthetic-data line and the small-split caution (issue 17)."""
    import hashlib

    import ich3d
    from ich3d.evaluation.report.reference import PATEL2019
    from ich3d.runs.inputs import input_signature
    from ich3d.runs.run_dir import open_run_dir

    m = evaluated.report.metrics
    md = evaluated.report.markdown
    run = open_run_dir(tiny.run_dir)
    prov = m["provenance"]
    assert prov["seed"] == 0 and prov["ich3d_version"] == ich3d.__version__
    assert prov["config_sha256"] == hashlib.sha256(run.config_path.read_bytes()).hexdigest()
    sig = input_signature(run.load_config().data)
    assert prov["data_fingerprint"] == sig["cache"] and len(prov["data_fingerprint"]) == 16
    assert prov["split_hash"] == (sig["splits"] or "unknown")
    assert prov["torch_threads"] == torch.get_num_threads() and prov["device"].startswith("CPU")
    assert prov["git_commit"] == "unknown"  # pytest's temporary folder is no git work tree
    assert "## Provenance" in md and f"`{prov['config_sha256']}`" in md and "| git commit | `unknown` |" in md
    # the tiny cache was ingested from `ich3d synth` output: said so
    assert m["data_origin"]["synthetic"] is True and "**Synthetic data**" in md
    # the paper's figures beside the run's, for the methods that have one
    ref = m["reference"]
    assert set(ref["auc"]) == set(PATEL2019) & set(m["methods"])
    for name, (label, auc) in PATEL2019.items():
        if name in m["methods"]:
            assert ref["auc"][name] == auc and f"| {name} | {label} | {auc:.2f} |" in md
    # 4 volumes: the small-split caution, with its rule
    assert any("fewer than 100 of a class" in c for c in m["cautions"])
    assert "**Caution**: small split: 2 positive and 2 negative volumes" in md
    # raw and Holm-adjusted p in the paired tests, with the multiplicity sentence
    from ich3d.stats import holm_adjust

    raw = [t["p"] for t in m["paired_tests"]]
    np.testing.assert_allclose([t["p_holm"] for t in m["paired_tests"]], holm_adjust(raw))
    assert "| p (Holm) |" in md and f"{len(raw)} paired tests on the same cases" in md


def test_training_curves_and_git_commit(tiny, tmp_path):
    """Each stage's metrics.csv becomes training_curves.png, linked from report.md; a run in a
    git work tree records the commit."""
    import subprocess

    from ich3d.evaluation.evaluate import evaluate_run

    run = copy_tiny_run(tiny, tmp_path / "copy", stages=("slice", "sequence"))
    rows = {
        "slice": [(0, 10, 0.69, None, None), (0, 10, None, 0.70, 0.55), (1, 20, 0.60, None, None),
                  (1, 20, None, 0.65, 0.62)],
        "sequence": [(0, 5, 0.68, 0.69, 0.5)],
    }
    for stage, data in rows.items():
        frame = pd.DataFrame(data, columns=["epoch", "step", "train/loss_epoch", "val/loss", "val/auc"])
        frame.to_csv(run.run_dir / stage / "metrics.csv", index=False)
    git = ["git", "-C", str(run.root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "run"], check=True)
    head = subprocess.run([*git[:3], "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    res = evaluate_run(run.run_dir, stages=["slice"], progress=False, device="cpu", tracking=False)
    m = res.report.metrics
    assert m["training_curves"] == {"file": "training_curves.png", "stages": ["slice", "sequence"]}
    png = res.out_dir / "training_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Training curves](training_curves.png)" in res.report.markdown
    # the evaluation folder is new, untracked: the work tree is not dirty in tracked files
    assert m["provenance"]["git_commit"] == head
    from ich3d.evaluation.report.curves import read_stage_curves

    curves = read_stage_curves(run.run_dir / "slice" / "metrics.csv")
    assert curves["epoch"].tolist() == [0, 1]
    assert curves["val/auc"].tolist() == [0.55, 0.62] and curves["train/loss_epoch"].tolist() == [0.69, 0.60]


def test_default_evaluate_is_quiet_about_an_untrained_default_stage(tiny, tmp_path, capsys, caplog):
    """The run has no direct/best.ckpt: the report lists it once; no warning, no console line,
    unless direct is asked for."""
    from ich3d.cli.main import main

    run = copy_tiny_run(tiny, tmp_path / "copy", stages=("slice", "sequence"))
    with caplog.at_level("WARNING"):
        assert main(["evaluate", str(run.run_dir), "--stages", "slice", "sequence", "--device", "cpu",
                     "--no-progress", "--no-wandb"]) == 0
    out = capsys.readouterr().out
    assert "not evaluated" not in out and "direct" not in caplog.text and "finetune" not in caplog.text
    metrics = json.loads((run.run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["missing"] == {}
    assert main(["evaluate", str(run.run_dir), "--device", "cpu", "--no-progress", "--no-wandb"]) == 0
    out = capsys.readouterr().out
    assert "not evaluated" not in out
    metrics = json.loads((run.run_dir / "evaluation" / "metrics.json").read_text())
    assert set(metrics["missing"]) == {"finetune", "direct"}  # listed in the report, once
    report = (run.run_dir / "evaluation" / "report.md").read_text()
    assert report.count("no direct/best.ckpt") == 1
    # asked for by name: it matters, so it is said
    assert main(["evaluate", str(run.run_dir), "--methods", "max", "direct", "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--no-progress", "--no-wandb"]) == 0
    assert "not evaluated: direct" in capsys.readouterr().out


def test_wandb_tables_hash_the_keys(evaluated):
    """The per-volume predictions table and the paired-test table sent to W&B."""
    from ich3d.evaluation.report.wandb import hashed_key, paired_test_table, predictions_table

    m = evaluated.report.metrics
    frame = pd.read_csv(evaluated.report.files["predictions"], dtype={"key": str})
    cols, rows = predictions_table(frame, m["methods"])
    assert cols == ["volume", "label", *m["methods"]] and len(rows) == len(frame)
    keys = set(frame["key"])
    for row, (_, r) in zip(rows, frame.iterrows(), strict=True):
        assert row[0] == hashed_key(r["key"]) and row[0] not in keys and len(row[0]) == 16
        assert row[1] == r["label"] and row[2:] == [r[c] for c in m["methods"]]
    cols, rows = paired_test_table(m)
    assert cols[-2:] == ["p", "p_holm"] and len(rows) == len(m["paired_tests"])
    a, b = rows[0][:2]
    assert rows[0][2] == pytest.approx(m["per_method"][a]["auc"] - m["per_method"][b]["auc"])
