"""``ich3d predict`` on synthetic DICOM: outputs, no identifiers by default, same numbers as evaluate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _eval_helpers import copy_tiny_run

from ich3d.cli.main import main


@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    # every stage, so "best" = finetune must be picked over sequence and direct
    return copy_tiny_run(tiny_run, tmp_path_factory.mktemp("pred"))


@pytest.fixture(scope="module")
def predicted(tiny):
    out = tiny.root / "pred_dicom"
    assert main(["predict", str(tiny.run_dir), str(tiny.images), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    return out


def _identifiers(tiny) -> set[str]:
    vols = pd.read_csv(tiny.cache / "volumes.csv", dtype=str)
    sl = pd.read_csv(tiny.cache / "slices.csv", dtype=str)
    ids = set(vols["series_uid"]) | set(vols["study_uid"]) | set(vols["patient_id"]) | set(sl["image_id"])
    assert len(ids) > 3 * len(vols)
    return ids


def test_predict_outputs_and_no_identifiers(tiny, predicted):
    vol = pd.read_csv(predicted / "volumes.csv", dtype={"key": str})
    sl = pd.read_csv(predicted / "slices.csv", dtype={"key": str})
    assert list(vol.columns) == ["key", "n_slices", "probability"]  # unlabeled input: no label
    assert list(sl.columns) == ["key", "slice_index", "probability"]
    cache = pd.read_csv(tiny.cache / "volumes.csv", dtype={"key": str}).set_index("key")
    assert sorted(vol["key"]) == sorted(cache.index)  # same series -> same hashed keys
    np.testing.assert_array_equal(vol["n_slices"], cache.loc[vol["key"], "n_slices"])
    assert vol["probability"].between(0, 1).all() and vol["probability"].std() > 0
    for key, g in sl.groupby("key"):
        assert list(g["slice_index"]) == list(range(cache.loc[key, "n_slices"]))
    info = json.loads((predicted / "predict.json").read_text())
    assert info["stage"] == "finetune" and info["n_volumes"] == len(vol) and info["uids"] is False

    ids = _identifiers(tiny)
    for name in ("volumes.csv", "slices.csv", "predict.json"):
        text = (predicted / name).read_text()
        assert not any(i in text for i in ids), f"an identifier leaked into {name}"


def test_predict_equals_evaluate(tiny, predicted):
    from ich3d.evaluation.evaluate import evaluate_run

    res = evaluate_run(tiny.run_dir, stages=["slice", "finetune"], progress=False, device="cpu")
    ev = pd.read_csv(res.out_dir / "predictions.csv", dtype={"key": str}).set_index("key")
    vol = pd.read_csv(predicted / "volumes.csv", dtype={"key": str}).set_index("key")
    assert len(ev) >= 4
    np.testing.assert_array_equal(vol.loc[ev.index, "probability"].to_numpy(), ev["finetune"].to_numpy())
    # the stage-1 slice probabilities too: evaluate's max baseline is their maximum
    sl = pd.read_csv(predicted / "slices.csv", dtype={"key": str})
    mx = sl.groupby("key")["probability"].max()
    np.testing.assert_array_equal(mx.loc[ev.index].to_numpy(), ev["max"].to_numpy())
    ev_sl = pd.read_csv(res.out_dir / "slice_predictions.csv", dtype={"key": str})
    merged = ev_sl.merge(sl, on=["key", "slice_index"], suffixes=("_ev", "_pred"))
    assert len(merged) == len(ev_sl)
    np.testing.assert_array_equal(merged["probability_ev"], merged["probability_pred"])


def test_predict_on_labeled_cache_with_uids(tiny, predicted, tmp_path):
    out = tmp_path / "p"
    assert main(["predict", str(tiny.run_dir), str(tiny.cache), "--out", str(out), "--uids", "--stage", "sequence",
                 "--no-progress"]) == 0
    vol = pd.read_csv(out / "volumes.csv", dtype=str)
    assert list(vol.columns) == ["key", "n_slices", "probability", "label", "series_uid", "study_uid", "patient_id"]
    cache = pd.read_csv(tiny.cache / "volumes.csv", dtype=str).set_index("key")
    for c in ("series_uid", "study_uid", "patient_id"):
        assert list(vol[c]) == list(cache.loc[vol["key"], c])
    assert list(vol["label"]) == list(cache.loc[vol["key"], "any"])
    assert not (out / "cache").exists()  # an ingest cache is used in place
    assert json.loads((out / "predict.json").read_text())["stage"] == "sequence"
    # another model than the DICOM prediction's finetune
    fin = pd.read_csv(predicted / "volumes.csv", dtype={"key": str}).set_index("key")["probability"]
    seq = vol.set_index("key")["probability"].astype(float)
    assert not np.allclose(seq.to_numpy(), fin.loc[seq.index].to_numpy())
    sl = pd.read_csv(out / "slices.csv")
    assert list(sl.columns) == ["key", "slice_index", "probability", "label"]


def test_predict_errors(tiny, tmp_path, capsys):
    assert main(["predict", str(tiny.run_dir), str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tiny.run_dir), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no files" in capsys.readouterr().err
    assert main(["predict", str(tiny.run_dir), str(tiny.cache), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["predict", str(tiny.run_dir), str(tiny.images), "--out", str(tiny.images / "o")]) == 2
    assert "inside INPUT" in capsys.readouterr().err
    assert not (tiny.images / "o").exists()
