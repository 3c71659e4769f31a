"""``ich3d predict --dicom-out``: SR, KOS and secondary captures checked by dciodvfy, dsrdump and pydicom.

The input is the tiny run's synthetic DICOM with real DICOM UIDs (``_dicom_helpers``);
``dciodvfy`` (Debian ``dicom3tools``) and ``dsrdump`` (Debian ``dcmtk``) are installed
when missing (``_debian.require_tool``): these tests never skip.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from _debian import require_tool
from _dicom_helpers import with_dicom_uids
from _eval_helpers import copy_tiny_run

from ich3d.cli.main import main
from ich3d.data.cache import open_cache
from ich3d.data.schema import SUBTYPES
from ich3d.evaluation.evaluate import evaluate_run
from ich3d.evaluation.prediction.dicom_capture import overlay_rgb, patient_orientation
from ich3d.evaluation.prediction.dicom_objects import NOT_FOR_DIAGNOSIS, TARGET_CODES
from ich3d.evaluation.prediction.dicom_out import (
    DEFAULT_KEY_SLICES,
    DicomResultsWriter,
    ResultModel,
    write_dicom_results,
)
from ich3d.evaluation.prediction.explain import VolumeExplanation

N_KEY = 3


@pytest.fixture(scope="module")
def dicom_run(tiny_run, tmp_path_factory):
    """The tiny run (evaluated: operating points), 3 series with DICOM UIDs, ``predict --dicom-out`` on them."""
    root = tmp_path_factory.mktemp("dicom_out")
    run = copy_tiny_run(tiny_run, root, stages=("slice", "sequence"))
    evaluate_run(run.run_dir, device="cpu", progress=False, tracking=False)
    images = with_dicom_uids(run.images, root / "ct", series=3)
    out, dout = root / "out", root / "dicom"
    assert main(["predict", str(run.run_dir), str(images), "--out", str(out), "--dicom-out", str(dout),
                 "--explain", str(N_KEY), "--device", "cpu", "--no-progress"]) == 0
    return run, images, out, dout


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = require_tool("dciodvfy", "dicom3tools")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _objects(summary: dict) -> list[Path]:
    return [Path(p) for p in summary["files"]]


def _num_strings(sr: pydicom.Dataset) -> dict[str, str]:
    """Concept code -> the stored (DS) value of every NUM item of the SR's content tree."""
    found: dict[str, str] = {}

    def walk(items):
        for item in items:
            if item.ValueType == "NUM":
                value = item.MeasuredValueSequence[0]["NumericValue"].value
                found[item.ConceptNameCodeSequence[0].CodeValue] = str(value.original_string or value)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def _nums(sr: pydicom.Dataset) -> dict[str, float]:
    """Concept code -> value of every NUM item of the SR's content tree."""
    return {k: float(v) for k, v in _num_strings(sr).items()}


def _codes(sr: pydicom.Dataset) -> dict[str, str]:
    """Concept code -> code value of every CODE item of the SR's content tree."""
    found: dict[str, str] = {}

    def walk(items):
        for item in items:
            if item.ValueType == "CODE":
                found[item.ConceptNameCodeSequence[0].CodeValue] = str(item.ConceptCodeSequence[0].CodeValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def _images(sr: pydicom.Dataset) -> list[str]:
    """The SOP Instance UIDs of every IMAGE item of the SR's content tree."""
    found: list[str] = []

    def walk(items):
        for item in items:
            if item.ValueType == "IMAGE":
                found.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def _source_uids(run_images: Path, out: Path, key: str, slice_indices: list[int]) -> list[str]:
    """The SOP Instance UIDs of a volume's slices, read from their source files."""
    slices = open_cache(out / "cache").slices.set_index(["key", "slice_index"])
    return [str(pydicom.dcmread(run_images / slices.loc[(key, i), "file"], stop_before_pixels=True).SOPInstanceUID)
            for i in slice_indices]


def test_every_object_passes_dciodvfy(dicom_run):
    _, _, out, dout = dicom_run
    summary = json.loads((out / "predict.json").read_text())["dicom_out"]
    volumes = pd.read_csv(out / "volumes.csv", dtype={"key": str})
    assert summary["n_series"] == len(volumes) == 3 and summary["skipped"] == []
    for name in ("sr.dcm", "kos.dcm", *(f"sc_{r}.dcm" for r in range(1, N_KEY + 1))):
        assert sorted(p.parent.name for p in _objects(summary) if p.name == name) == sorted(volumes["key"])
    assert len(summary["files"]) == 3 * (2 + N_KEY)
    for path in _objects(summary):
        assert path.is_file() and path.parent.parent == dout.resolve()
        assert _dciodvfy_errors(path) == [], path


def test_sr_values_uids_and_study(dicom_run):
    run, images, out, dout = dicom_run
    volumes = pd.read_csv(out / "volumes.csv", dtype={"key": str})
    metrics = json.loads((run.run_dir / "evaluation" / "metrics.json").read_text())
    ops = metrics["operating_points"]["sequence"]
    cache = open_cache(out / "cache").volumes.set_index("key")
    for v in volumes.itertuples():
        sr = pydicom.dcmread(dout / v.key / "sr.dcm")
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert sr.StudyInstanceUID == cache.loc[v.key, "study_uid"] and sr.PatientID == cache.loc[v.key, "patient_id"]
        assert sr.SeriesInstanceUID != cache.loc[v.key, "series_uid"]
        assert NOT_FOR_DIAGNOSIS in sr.SeriesDescription and sr.PreliminaryFlag == "PRELIMINARY"
        assert _nums(sr) == {TARGET_CODES["any"][0]: pytest.approx(v.probability, abs=1e-12)}
        ks = pd.read_csv(out / "explain" / v.key / "key_slices.csv")
        assert len(ks) == N_KEY
        assert _images(sr) == _source_uids(images, out, v.key, list(ks["slice_index"]))
        calls = _codes(sr)
        assert ops and len([c for c in calls if c.startswith("CALL-")]) == len(ops)
        for rule, op in ops.items():  # SCT Present / Absent at each validation threshold
            assert calls[f"CALL-{rule.upper()}"[:16]] == ("52101004" if v.probability >= op["threshold"] else "272519000")
        text = json.dumps(sr.to_json_dict())
        assert "ich3d-tiny-sequence" in text and NOT_FOR_DIAGNOSIS in text


def test_dsrdump_parses_the_sr(dicom_run):
    _, _, out, dout = dicom_run
    tool = require_tool("dsrdump", "dcmtk")
    volumes = pd.read_csv(out / "volumes.csv", dtype={"key": str})
    for v in volumes.itertuples():
        run = subprocess.run([tool, str(dout / v.key / "sr.dcm")], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        stored = _num_strings(pydicom.dcmread(dout / v.key / "sr.dcm"))[TARGET_CODES["any"][0]]
        assert float(stored) == pytest.approx(v.probability, abs=1e-12)
        line = next(x for x in run.stdout.splitlines() if "Probability of intracranial hemorrhage (any)" in x)
        assert f'="{stored}"' in line and '(1,UCUM,"no units")' in line
        assert NOT_FOR_DIAGNOSIS in run.stdout and "Intracranial hemorrhage" in run.stdout


def test_kos_references_the_key_slices(dicom_run):
    _, images, out, dout = dicom_run
    volumes = pd.read_csv(out / "volumes.csv", dtype={"key": str})
    for v in volumes.itertuples():
        kos = pydicom.dcmread(dout / v.key / "kos.dcm")
        sr = pydicom.dcmread(dout / v.key / "sr.dcm")
        assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59" and kos.Modality == "KO"
        assert kos.StudyInstanceUID == sr.StudyInstanceUID and kos.SeriesInstanceUID != sr.SeriesInstanceUID
        assert kos.ConceptNameCodeSequence[0].CodeValue == "113009"  # "For Research"
        ks = pd.read_csv(out / "explain" / v.key / "key_slices.csv")
        refs = [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in kos.ContentSequence
                if i.ValueType == "IMAGE"]
        assert refs == _source_uids(images, out, v.key, list(ks["slice_index"]))
        texts = [i.TextValue for i in kos.ContentSequence
                 if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"]  # Key Object Description
        assert len(texts) == 1 and texts[0].startswith(NOT_FOR_DIAGNOSIS) and v.key in texts[0]
        evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert {str(i.ReferencedSOPInstanceUID) for i in evidence.ReferencedSOPSequence} == set(refs)


def test_secondary_captures_of_the_heat_maps(dicom_run):
    _, images, out, dout = dicom_run
    volumes = pd.read_csv(out / "volumes.csv", dtype={"key": str})
    for v in volumes.itertuples():
        ks = pd.read_csv(out / "explain" / v.key / "key_slices.csv")
        scs = [pydicom.dcmread(dout / v.key / f"sc_{r}.dcm") for r in ks["rank"]]
        sources = _source_uids(images, out, v.key, list(ks["slice_index"]))
        source_study = pydicom.dcmread(dout / v.key / "sr.dcm").StudyInstanceUID
        assert len({sc.SeriesInstanceUID for sc in scs}) == 1
        for sc, source, rank in zip(scs, sources, ks["rank"], strict=True):
            assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.StudyInstanceUID == source_study
            assert sc.InstanceNumber == rank and sc.BurnedInAnnotation == "YES"
            assert sc.ImageComments.startswith(NOT_FOR_DIAGNOSIS) and NOT_FOR_DIAGNOSIS in sc.SeriesDescription
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source
            assert sc.PatientOrientation == ["L", "P"]  # the synthetic slices' rows run left, columns posterior
            rgb = sc.pixel_array
            assert sc.PhotometricInterpretation == "RGB" and rgb.ndim == 3 and rgb.shape[1] >= 512
            banner = rgb[:20]
            assert (banner[..., 0] > 200).any() and (banner[..., 2] < 50).all()  # the notice, in yellow, burned in
            image = rgb[-rgb.shape[1]:]
            colour = np.abs(image[..., 0].astype(int) - image[..., 2].astype(int)) > 30
            assert colour.any() or pd.isna(ks.loc[ks["rank"] == rank, "cam_row"]).all()  # the map, unless flat


def test_overlay_draws_the_map_in_colour_and_the_notice():
    brain = np.full((32, 32), 0.5)
    yy, xx = np.mgrid[:32, :32]
    cam = np.exp(-((yy - 8) ** 2 + (xx - 24) ** 2) / 20.0)  # a blob at row 8, column 24
    rgb = overlay_rgb(brain, cam, [NOT_FOR_DIAGNOSIS, "line two"])
    k = 512 // 32
    image = rgb[-32 * k:]
    assert rgb.dtype == np.uint8 and image.shape == (512, 512, 3) and rgb.shape[0] > 512
    colour = np.abs(image[..., 0].astype(int) - image[..., 2].astype(int)) > 30
    rows, cols = np.nonzero(colour)
    assert abs(rows.mean() / k - 8) < 1.5 and abs(cols.mean() / k - 24) < 1.5  # where the map is
    assert (image[-k:, :k] == 128).all()  # far from the map: the grey window, untouched
    banner = rgb[: rgb.shape[0] - 512]
    assert ((banner[..., 0] > 200) & (banner[..., 2] < 50)).any() and ((banner == 255).all(axis=2)).any()


def test_patient_orientation_letters():
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    assert patient_orientation(ds) == ("L", "P")
    ds.ImageOrientationPatient = [-1, 0, 0, 0, 0.94, -0.34]  # tilted gantry
    assert patient_orientation(ds) == ("R", "PF")
    assert patient_orientation(pydicom.Dataset()) is None


def _explanation(key: str, indices: list[int], size: int = 32) -> VolumeExplanation:
    rows = [{"rank": r, "slice_index": i} for r, i in enumerate(indices, start=1)]
    maps = np.zeros((len(indices), size, size))
    maps[:, 4:9, 20:26] = 1.0
    return VolumeExplanation(key, rows, np.full((len(indices), size, size), 0.4), maps)


def test_write_dicom_results_six_targets(dicom_run, tmp_path, caplog):
    """The public writer: every target's probability in the SR, calls at each threshold, files listed;
    no source UID in the log even at DEBUG (highdicom names them at INFO)."""
    caplog.set_level(logging.DEBUG)
    _, images, out, _ = dicom_run
    key = pd.read_csv(out / "volumes.csv", dtype={"key": str})["key"].iloc[0]
    probs = dict(zip(SUBTYPES, [0.01, 0.2, 0.0301, 0.4, 0.123456789012345, 0.61], strict=True))
    volumes = pd.DataFrame([{"key": key, "probability": probs["any"], **{f"probability_{t}": p for t, p in probs.items()}}])
    model = ResultModel(name="six", version="v1", targets=tuple(SUBTYPES), operating_points={"youden": 0.5, "sensitivity": 0.7})
    files = write_dicom_results(tmp_path / "d", out / "cache", volumes, [_explanation(key, [2, 0])], model)
    assert [p.name for p in files] == ["sr.dcm", "kos.dcm", "sc_1.dcm", "sc_2.dcm"]
    assert all(p.parent == tmp_path / "d" / key for p in files)
    sr = pydicom.dcmread(files[0])
    assert _nums(sr) == {TARGET_CODES[t][0]: pytest.approx(p, abs=1e-13) for t, p in probs.items()}
    assert _codes(sr)["CALL-YOUDEN"] == "52101004" and _codes(sr)["CALL-SENSITIVITY"] == "272519000"  # 0.61
    assert _images(sr) == _source_uids(images, out, key, [2, 0])
    for path in files:
        assert _dciodvfy_errors(path) == [], path
    for uid in [*_images(sr), str(sr.StudyInstanceUID)]:
        assert uid not in caplog.text


def test_series_without_dicom_uids_or_sources_are_skipped(dicom_run, tiny_run, tmp_path, caplog):
    _, images, out, _ = dicom_run
    model = ResultModel(name="m", version="v", targets=("any",))
    rsna = open_cache(tiny_run.cache).volumes["key"].iloc[0]  # synthetic RSNA: ID_... identifiers
    writer = DicomResultsWriter(tmp_path / "a", tiny_run.cache, pd.DataFrame({"key": [rsna], "probability": [0.5]}), model)
    assert writer.add(_explanation(rsna, [0])) == [] and writer.files == []
    assert "not DICOM UIDs" in writer.skipped[0]["reason"] and "skipped" in caplog.text
    key = pd.read_csv(out / "volumes.csv", dtype={"key": str})["key"].iloc[0]
    moved = DicomResultsWriter(tmp_path / "b", out / "cache", pd.DataFrame({"key": [key], "probability": [0.5]}),
                               model, images=tmp_path)
    assert moved.add(_explanation(key, [1])) == []
    assert moved.skipped == [{"key": key, "reason": f"the source file of slice 1 is missing under {tmp_path}"}]
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    # a header highdicom cannot reference (no SOP Class UID): skipped with the reason, nothing half-written
    slices = open_cache(out / "cache").slices.set_index(["key", "slice_index"])
    bare = tmp_path / "bare"
    bare.mkdir()
    for i in (0, 1):
        ds = pydicom.dcmread(images / slices.loc[(key, i), "file"])
        del ds.SOPClassUID
        ds.save_as(bare / slices.loc[(key, i), "file"])
    broken = DicomResultsWriter(tmp_path / "c", out / "cache", pd.DataFrame({"key": [key], "probability": [0.5]}),
                                model, images=bare)
    assert broken.add(_explanation(key, [0, 1])) == [] and not (tmp_path / "c").exists()
    assert broken.skipped[0]["reason"].startswith("highdicom could not build the objects")


def test_dicom_out_from_a_package(dicom_run, tmp_path):
    run, images, out, _ = dicom_run
    pkg = tmp_path / "pkg"
    assert main(["export", str(run.run_dir), "--out", str(pkg)]) == 0
    pkg_out, dout = tmp_path / "pkg_out", tmp_path / "dicom"
    assert main(["predict", str(pkg), str(images), "--out", str(pkg_out), "--dicom-out", str(dout),
                 "--device", "cpu", "--no-progress"]) == 0
    summary = json.loads((pkg_out / "predict.json").read_text())["dicom_out"]
    volumes = pd.read_csv(pkg_out / "volumes.csv", dtype={"key": str})
    ref = pd.read_csv(out / "volumes.csv", dtype={"key": str})
    np.testing.assert_allclose(volumes["probability"], ref["probability"], atol=1e-5)
    assert summary["n_series"] == 3 and len(summary["files"]) == 3 * (2 + DEFAULT_KEY_SLICES)  # --explain 5 implied
    for v in volumes.itertuples():
        sr = pydicom.dcmread(dout / v.key / "sr.dcm")
        assert _nums(sr) == {TARGET_CODES["any"][0]: pytest.approx(v.probability, abs=1e-12)}
        ks = pd.read_csv(pkg_out / "explain" / v.key / "key_slices.csv")
        assert len(ks) == DEFAULT_KEY_SLICES
        assert _images(sr) == _source_uids(images, pkg_out, v.key, list(ks["slice_index"]))
        assert "ich3d-tiny-sequence" in json.dumps(sr.to_json_dict()) and "exported" in json.dumps(sr.to_json_dict())
    for path in _objects(summary):
        assert _dciodvfy_errors(path) == [], path
    assert main(["predict", str(pkg), str(images), "--out", str(tmp_path / "o"), "--runtime", "onnx",
                 "--dicom-out", str(tmp_path / "d2")]) == 2


def test_dicom_out_errors(dicom_run, tiny_run, tmp_path, capsys):
    run, images, _, _ = dicom_run
    common = ["--device", "cpu", "--no-progress"]
    assert main(["predict", str(run.run_dir), str(images), "--out", str(tmp_path / "o"),
                 "--dicom-out", str(images / "results"), *common]) == 2
    assert "ich3d: error: --dicom-out" in capsys.readouterr().err and not (images / "results").exists()
    slice_only = copy_tiny_run(tiny_run, tmp_path / "s", stages=("slice",))
    assert main(["predict", str(slice_only.run_dir), str(images), "--out", str(tmp_path / "o2"),
                 "--dicom-out", str(tmp_path / "d"), *common]) == 2
    assert "--dicom-out needs a volume model" in capsys.readouterr().err
