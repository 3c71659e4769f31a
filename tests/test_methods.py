"""Declared scoring methods: the registry, a user's method end to end, pinned inputs,
unfinished stages, evaluation on another cache, and the tiny run's AUCs pinned."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _eval_helpers import copy_tiny_run, make_tiny_cache

from ich3d.cli.main import main
from ich3d.evaluation.methods import (
    ScoringMethod,
    SliceAggregation,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from ich3d.stats.delong import delong_roc

#: the default methods (every method evaluated without --methods), from the registry
ALL = [n for n in method_names() if get_method(n).default]

#: a user's method added from this file only: a name no real method will take
USER = "test_only_mean_x"


@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    return copy_tiny_run(tiny_run, tmp_path_factory.mktemp("methods"))


@pytest.fixture(scope="module")
def evaluated(tiny):
    from ich3d.evaluation.evaluate import evaluate_run

    return evaluate_run(tiny.run_dir, progress=False, device="cpu")


def _copy_run(tiny, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(tiny.run_dir, dst, ignore=shutil.ignore_patterns("evaluation*", "predict"))
    return dst


class MeanSlice(SliceAggregation):
    """A user's slice aggregation: a name and a function (the mean slice probability); records its roles."""

    calls: list[str] = []

    def score(self, ctx, role):
        MeanSlice.calls.append(role)
        return super().score(ctx, role)


@pytest.fixture()
def mean_method():
    method = register_method(MeanSlice(USER, "stage-1 slice CNN, mean slice probability", np.mean, order=25))
    MeanSlice.calls = []
    try:
        yield method
    finally:
        unregister_method(USER)


def test_registry_order_and_volume_stages():
    from ich3d.stages import Stage, register_stage, unregister_stage, volume_stages

    before = method_names()
    assert [m for m in before if get_method(m).default] == ALL  # slice_svm, ae_svm: opt-in
    assert [get_method(m).order for m in before] == sorted(get_method(m).order for m in before)
    vol = {s.name for s in volume_stages()}
    assert {get_method(n).needs for n in ALL if n not in vol} == {"slice"}
    assert all(get_method(s).needs == s for s in vol)
    # a new volume stage is a new method (column), placed by the stage's order
    register_stage(Stage(name="probe", kind="volume", order=35, description="a linear probe",
                         starts_from="slice", loads="encoder", freeze_encoder=True))
    try:
        after = method_names()
        assert [n for n in after if n != "probe"] == before
        at = after.index("probe")
        assert get_method("probe").order == 135
        assert all(get_method(n).order <= 135 for n in after[:at])
        assert all(get_method(n).order > 135 for n in after[at + 1 :])
        assert get_method("probe").description == "a linear probe"
    finally:
        unregister_stage("probe")
    assert "probe" not in method_names()
    with pytest.raises(ValueError, match="already registered"):
        register_method(ScoringMethod("max", "again", needs="slice"))
    with pytest.raises(ValueError, match="identifier"):
        ScoringMethod("label", "no", needs="slice")


def test_registry_pin_builtin_methods():
    """The one explicit pin of the method registry: the built-in methods, in report order."""
    assert method_names() == ["max", "p95", "svm", "slice_svm", "ae_svm", "sequence", "finetune", "direct"]


def test_tiny_run_aucs_pinned(evaluated):
    """The numbers of the tiny run, pinned: the evaluation before declared methods computed
    these on the phantom of that time; re-pinned (this code) when the phantom gained its CT
    artefacts (ich3d/synth/artefacts.py), which change the tiny run's images."""
    m = evaluated.report.metrics
    assert m["methods"] == ALL
    assert (m["n_volumes"], m["n_pos"]) == (4, 2)
    pinned = {"max": 1.0, "p95": 1.0, "svm": 1.0, "sequence": 0.25, "finetune": 1.0, "direct": 1.0}
    aucs = {k: m["per_method"][k]["auc"] for k in pinned}
    assert aucs == pinned
    assert m["per_method"]["sequence"]["ci_upper"] == pytest.approx(0.942951912174839, abs=1e-12)
    assert m["per_method"]["finetune"]["ci_lower"] == pytest.approx(1.0, abs=1e-12)
    sens = {"max": 0.6749432276378287, "p95": 0.6643127347661711, "svm": 0.011157168483123849,
            "sequence": 0.48787286809335995, "finetune": 0.5369202435521248, "direct": 0.4550864776229494}
    youden = {"max": 0.6999543959237658, "p95": 0.6952911674014629, "svm": 0.09235051117108191,
              "sequence": 0.4881796792361912, "finetune": 0.5375946669199368, "direct": 0.4590374151594063}
    for k in sens:
        assert m["operating_points"][k]["sensitivity"]["threshold"] == pytest.approx(sens[k], rel=1e-5)
        assert m["operating_points"][k]["youden"]["threshold"] == pytest.approx(youden[k], rel=1e-5)
    assert m["svm"]["C"] == 0.01
    assert m["slice_level"]["all"]["auc"] == pytest.approx(0.7647058823529411, abs=1e-12)
    assert m["unfinished"] == {} and m["missing"] == {}
    assert m["descriptions"]["p95"].endswith("(95th)")
    assert m["descriptions"]["finetune"] == get_method("finetune").description


def test_user_method_end_to_end(tiny, mean_method, tmp_path, capsys):
    from ich3d.evaluation.evaluate import evaluate_run

    res = evaluate_run(tiny.run_dir, out=tmp_path / "e", stages=["slice"], progress=False, device="cpu")
    test = pd.read_csv(tmp_path / "e" / "predictions.csv", dtype={"key": str})
    slice_methods = [n for n in method_names() if get_method(n).needs == "slice" and get_method(n).default]
    assert list(test.columns) == ["key", "label", *slice_methods]
    assert slice_methods.index(USER) == slice_methods.index("p95") + 1  # order 25: after p95 (20)
    # its column is what it says: the mean of the stage-1 slice probabilities
    sl = pd.read_csv(tmp_path / "e" / "slice_predictions.csv", dtype={"key": str})
    mean = sl.groupby("key")["probability"].mean()
    np.testing.assert_allclose(test[USER], mean.loc[test["key"]].to_numpy(), rtol=0, atol=1e-15)
    # its AUC is DeLong's on the same scores
    ref = delong_roc(test["label"], test[USER])
    d = res.report.metrics["per_method"][USER]
    assert (d["auc"], d["ci_lower"], d["ci_upper"]) == (ref.models[0].auc, ref.models[0].ci_lower, ref.models[0].ci_upper)
    assert USER in res.report.metrics["operating_points"]
    assert f"- `{USER}`: stage-1 slice CNN, mean slice probability" in res.report.markdown
    assert sorted(MeanSlice.calls) == ["evaluated", "val"]
    # the CLI lists and runs it too
    assert main(["evaluate", str(tiny.run_dir), "--methods", USER, "--out", str(tmp_path / "c"),
                 "--device", "cpu", "--no-progress"]) == 0
    assert f"| {USER} |" in capsys.readouterr().out
    assert list(pd.read_csv(tmp_path / "c" / "predictions.csv").columns) == ["key", "label", USER]


def test_predict_with_methods(tiny, mean_method, tmp_path):
    from ich3d.evaluation.prediction.predict import predict_run

    res = predict_run(tiny.run_dir, tiny.cache, tmp_path / "p", methods=["max", USER], device="cpu", progress=False)
    vol = pd.read_csv(res["files"]["volumes"], dtype={"key": str})
    assert list(vol.columns) == ["key", "n_slices", "probability", "label", "max", USER]  # no splits.json
    assert res["score_columns"] == ["probability", "max", USER]
    sl = pd.read_csv(res["files"]["slices"], dtype={"key": str}).groupby("key")["probability"]
    np.testing.assert_array_equal(vol["max"], sl.max().loc[vol["key"]].to_numpy())
    np.testing.assert_allclose(vol[USER], sl.mean().loc[vol["key"]].to_numpy(), atol=1e-15)


def test_config_edited_after_training_is_refused(tiny, tmp_path, capsys):
    run = _copy_run(tiny, tmp_path, "edited")
    raw = yaml.safe_load((run / "config.yaml").read_text())
    assert raw["data"]["windows"] == ["brain", "subdural", "bone"]
    raw["data"]["windows"] = ["brain", "subdural", "bone_wide"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["evaluate", str(run), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "windows: trained on ['brain', 'subdural', 'bone'], now ['brain', 'subdural', 'bone_wide']" in err
    assert not (run / "evaluation").exists()  # refused before anything is written
    # predict checks what the network sees as well
    assert main(["predict", str(run), str(tiny.cache), "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    assert "windows: trained on" in capsys.readouterr().err
    # a checkpoint without recorded inputs (older than the pinning) passes
    for stage in ("slice", "sequence", "finetune", "direct"):
        path = run / stage / "best.ckpt"
        ckpt = torch.load(path, weights_only=True)
        del ckpt["ich3d"]["inputs"]
        torch.save(ckpt, path)
    raw["data"]["windows"] = ["brain", "subdural", "bone"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["evaluate", str(run), "--stages", "sequence", "--device", "cpu", "--no-progress"]) == 0


def test_unfinished_stage_refused_or_marked(tiny, tmp_path, capsys):
    run = _copy_run(tiny, tmp_path, "crashed")
    (run / "finetune" / "result.json").unlink()  # best.ckpt left by a crash, no result.json
    assert main(["evaluate", str(run), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stage finetune" in err and f"ich3d train --resume {run}" in err and "--include-unfinished" in err
    assert not (run / "evaluation").exists()
    # the finished stages alone are fine
    assert main(["evaluate", str(run), "--stages", "sequence", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--include-unfinished", "--device", "cpu", "--no-progress"]) == 0
    assert "unfinished: finetune" in capsys.readouterr().out
    m = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert m["unfinished"] == {"finetune": "finetune"}
    assert m["per_method"]["finetune"]["unfinished"] is True
    assert all("unfinished" not in m["per_method"][k] for k in ALL if k != "finetune")
    md = (run / "evaluation" / "report.md").read_text()
    assert "**Unfinished**: `finetune`" in md and "`finetune`: stage 3" in md and "(**unfinished**" in md
    # predict's default model is the preferred finished one: sequence, not the crashed finetune
    from ich3d.evaluation.prediction.predict import predict_run

    assert predict_run(run, tiny.cache, tmp_path / "p", device="cpu", progress=False)["stage"] == "sequence"
    assert predict_run(tiny.run_dir, tiny.cache, tmp_path / "q", device="cpu", progress=False)["stage"] == "finetune"


def test_evaluate_on_another_cache(tiny, evaluated, tmp_path, capsys):
    from ich3d.evaluation.evaluate import evaluate_run
    from ich3d.evaluation.prediction.predict import predict_run

    assert main(["evaluate", str(tiny.run_dir), "--data", str(tmp_path / "nope")]) == 2
    assert "not a complete ingest cache" in capsys.readouterr().err
    # another hospital: other patients, larger slices (cropped to the training size)
    other = make_tiny_cache(tmp_path / "hospital", patients=8, seed=5, size=80)
    assert pd.read_csv(other / "volumes.csv")["height"].iloc[0] == 40
    res = evaluate_run(tiny.run_dir, data=other, progress=False, device="cpu")
    assert res.out_dir == tiny.run_dir / "evaluation-cache"
    test = pd.read_csv(res.out_dir / "predictions.csv", dtype={"key": str})
    vols = pd.read_csv(other / "volumes.csv", dtype={"key": str})
    labelled = vols[vols["any"].isin([0, 1])]
    assert sorted(test["key"]) == sorted(labelled["key"]) and len(test) == 8
    assert not set(test["key"]) & set(pd.read_csv(tiny.cache / "volumes.csv", dtype={"key": str})["key"])
    np.testing.assert_array_equal(test["label"], labelled.set_index("key").loc[test["key"], "any"])
    m = res.report.metrics
    assert m["methods"] == ALL and m["split"] == "external"
    ref = delong_roc(test["label"], test[ALL].to_numpy(), names=ALL)
    for i, k in enumerate(ALL):
        assert m["per_method"][k]["auc"] == ref.models[i].auc
    # thresholds chosen on the run's own validation split: the same as the run's own evaluation
    own = evaluated.report.metrics
    for k in ALL:
        for rule in ("sensitivity", "youden"):
            assert m["operating_points"][k][rule]["threshold"] == own["operating_points"][k][rule]["threshold"]
            assert m["operating_points"][k][rule]["sensitivity"]["n"] == int(test["label"].sum())
    assert m["svm"]["C"] == own["svm"]["C"] and m["svm"]["length"] == own["svm"]["length"]
    val_own = pd.read_csv(evaluated.out_dir / "val_predictions.csv")
    pd.testing.assert_frame_equal(pd.read_csv(res.out_dir / "val_predictions.csv"), val_own)
    assert m["data"]["n_labelled"] == 8 and m["slice_level"]["all"]["n_slices"] > 0
    assert m["data"]["image_size"] == [32, 32]  # the training cache's in-plane size
    # the volume models' scores are predict's on that cache
    pred = predict_run(tiny.run_dir, other, tmp_path / "pred", device="cpu", progress=False)
    pv = pd.read_csv(pred["files"]["volumes"], dtype={"key": str}).set_index("key")
    np.testing.assert_array_equal(pv.loc[test["key"], "probability"].to_numpy(), test["finetune"].to_numpy())
    assert "another cache" in res.report.markdown


def test_evaluation_never_imports_training():
    """One path per concern: evaluation reads runs (ich3d.runs), never ich3d.training."""
    import ast
    from pathlib import Path

    import ich3d

    root = Path(ich3d.__file__).parent
    files = [*(root / "evaluation").rglob("*.py"), root / "cli" / "evaluate.py", root / "cli" / "predict.py"]
    assert len(files) > 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "ich3d.training" or n.startswith("ich3d.training.") for n in names), path
