"""``ich3d predict --dicom-out``: SR, KOS and secondary captures checked by dciodvfy, dsrdump and pydicom.

The input is the tiny run's synthetic DICOM with real DICOM UIDs (``_dicom_helpers``);
``dciodvfy`` (Debian ``dicom3tools``) and ``dsrdump`` (Debian ``dcmtk``) are installed
when missing (``_debian.require_tool``): these tests never skip.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from _debian import require_tool
from _dicom_helpers import with_dicom_uids
from _eval_helpers import copy_tiny_run

from ich3d.cli.main import main
from ich3d.data.cache import open_cache
from ich3d.evaluation.evaluate import evaluate_run
from ich3d.evaluation.prediction.dicom_objects import NOT_FOR_DIAGNOSIS, TARGET_CODES

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
    for name in ("sr.dcm", "kos.dcm"):
        assert sorted(p.parent.name for p in _objects(summary) if p.name == name) == sorted(volumes["key"])
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
