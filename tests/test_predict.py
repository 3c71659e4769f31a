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


def test_default_output_folders_never_collide(tiny, tmp_path, capsys):
    """Two inputs of the same name get two folders (name + hash of the resolved path), printed."""
    import shutil

    from ich3d.evaluation.prediction.predict import default_out_dir

    a, b = tmp_path / "a" / "cache", tmp_path / "b" / "cache"
    for d in (a, b):
        shutil.copytree(tiny.cache, d)
    outs = []
    for d in (a, b):
        assert main(["predict", str(tiny.run_dir), str(d), "--stage", "sequence", "--device", "cpu",
                     "--no-progress"]) == 0
        printed = capsys.readouterr().out
        out = default_out_dir(open_run(tiny), d)
        assert f"output folder: {out}" in printed and (out / "volumes.csv").is_file()
        outs.append(out)
    assert outs[0] != outs[1] and outs[0].parent == outs[1].parent == tiny.run_dir / "predict"
    assert all(o.name.startswith("cache-") and len(o.name) == len("cache-") + 8 for o in outs)


def open_run(tiny):
    from ich3d.runs.run_dir import open_run_dir

    return open_run_dir(tiny.run_dir)


def test_predict_then_roc_on_a_cache_with_splits(tiny, tmp_path, capsys):
    """predict writes label and split when the cache has them; roc then scores the declared
    score columns only (never n_slices), and refuses to plot infinite scores."""
    import shutil

    from ich3d.data.cache import open_cache
    from ich3d.data.splits import load_or_create_splits

    cache = tmp_path / "cache"
    shutil.copytree(tiny.cache, cache)
    load_or_create_splits(cache, open_cache(cache).volumes, fractions=(0.4, 0.3, 0.3), seed=0)
    splits = json.loads((cache / "splits.json").read_text())["keys"]
    out = tmp_path / "pred"
    assert main(["predict", str(tiny.run_dir), str(cache), "--out", str(out), "--methods", "max",
                 "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    vol = pd.read_csv(out / "volumes.csv", dtype={"key": str})
    assert list(vol.columns) == ["key", "n_slices", "probability", "label", "split", "max"]
    want = {k: s for s, keys in splits.items() for k in keys}
    assert vol["split"].tolist() == [want[k] for k in vol["key"]]
    assert json.loads((out / "predict.json").read_text())["score_columns"] == ["probability", "max"]
    assert main(["roc", str(out / "volumes.csv")]) == 0
    printed = capsys.readouterr().out
    assert "| probability |" in printed and "| max |" in printed and "n_slices" not in printed
    # without the sidecar, n_slices is still no score (a known non-score column)
    plain = tmp_path / "plain.csv"
    vol.to_csv(plain, index=False)
    assert main(["roc", str(plain)]) == 0
    assert "n_slices" not in capsys.readouterr().out
    # --scores declares them explicitly; an unknown one is an error
    assert main(["roc", str(plain), "--scores", "max"]) == 0
    printed = capsys.readouterr().out
    assert "| max |" in printed and "| probability |" not in printed
    assert main(["roc", str(plain), "--scores", "nope"]) == 2
    assert "no score column 'nope'" in capsys.readouterr().err
    # --plot on infinite scores: one error line, exit 2, no picture
    vol.loc[0, "max"] = np.inf
    vol.to_csv(plain, index=False)
    assert main(["roc", str(plain), "--plot", str(tmp_path / "roc.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ich3d: error:") and "infinite" in err and not (tmp_path / "roc.png").exists()


def test_rsna_rows_only_for_dicom_images_and_the_sample_ids():
    from ich3d.data.dicom import REASON_NOT_DICOM, REASON_UNREADABLE_PIXELS
    from ich3d.evaluation.prediction.submission import (
        restrict_to_sample,
        rsna_submission,
        skipped_images,
    )

    skipped = pd.DataFrame(
        {
            "item": ["notes_8ce5c1.txt", "ID_0000broken.dcm", "sub/ID_00bad.dcm", "ID_aaa.dcm"],
            "reason": [REASON_NOT_DICOM, REASON_NOT_DICOM, REASON_UNREADABLE_PIXELS, REASON_UNREADABLE_PIXELS],
        }
    )
    fb = skipped_images(skipped, ingested={"ID_aaa"})
    assert fb["image_id"].tolist() == ["ID_0000broken", "ID_00bad"]  # no row for the text file
    from ich3d.data.targets import RSNA_TARGETS

    images = pd.DataFrame({"image_id": ["ID_aaa", "ID_bbb"], **{t: [0.2, 0.4] for t in RSNA_TARGETS}})
    sub, fallback = rsna_submission(images, list(RSNA_TARGETS), fb)
    assert len(sub) == 6 * 4 and not sub["ID"].str.contains("notes").any()
    assert fallback["any"] == pytest.approx(0.3)
    sample = pd.DataFrame({"ID": ["ID_bbb_any", "ID_zzz_epidural", "ID_aaa_subdural"], "Label": 0.5})
    rows, filled = restrict_to_sample(sub, sample, fallback)
    assert rows["ID"].tolist() == sample["ID"].tolist() and filled == 1
    np.testing.assert_allclose(rows["Label"], [0.4, fallback["epidural"], 0.2])
    from ich3d.errors import UserError

    with pytest.raises(UserError, match="ID column"):
        restrict_to_sample(sub, pd.DataFrame({"x": [1]}), fallback)
    with pytest.raises(UserError, match="RSNA label"):
        restrict_to_sample(sub, pd.DataFrame({"ID": ["ID_q_bogus"]}), fallback)


def test_six_label_predict_has_a_column_per_target(tmp_path):
    """A run of the six RSNA labels: probability_<target> in volumes.csv and slices.csv, the
    unnamed `probability` being data.label's (`any`)."""
    from _eval_helpers import make_tiny_run

    from ich3d.data.targets import RSNA_TARGETS
    from ich3d.evaluation.prediction.predict import predict_run

    tiny6 = make_tiny_run(tmp_path, stages=("slice", "sequence"), patients=6, data={"targets": "all"})
    res = predict_run(tiny6.run_dir, tiny6.cache, tmp_path / "p", device="cpu", progress=False)
    vol = pd.read_csv(res["files"]["volumes"], dtype={"key": str})
    per = [f"probability_{t}" for t in RSNA_TARGETS]
    assert list(vol.columns) == ["key", "n_slices", "probability", *per, "label"]
    np.testing.assert_array_equal(vol["probability"], vol["probability_any"])
    assert res["score_columns"] == ["probability", *per]
    sl = pd.read_csv(res["files"]["slices"], dtype={"key": str})
    assert list(sl.columns) == ["key", "slice_index", "probability", *per, "label"]
    np.testing.assert_array_equal(sl["probability"], sl["probability_any"])
    assert ((sl[per] >= 0) & (sl[per] <= 1)).all().all()
