"""The synthetic RSNA-format generator: format, HU, labels, defects, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ich3d.cli.main import main as cli_main
from ich3d.data.schema import SUBTYPES
from ich3d.errors import UserError
from ich3d.synth import (
    DEFECT_NAMES,
    NO_DEFECTS,
    DefectRates,
    generate,
    load_truth,
    series_hu,
    series_phantom,
)
from ich3d.synth import phantom as ph

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom: "ID_..." is no UID

TINY = {"size": 64, "slices": (6, 10), "studies": (1, 2), "progress": False}


@pytest.fixture(autouse=True)
def _quiet_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """RSNA-style ``ID_...`` identifiers are not valid UIDs; pydicom would warn on each."""
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)


def _corrected_hu(ds: pydicom.Dataset) -> np.ndarray:
    """The widely used RSNA reading: 12-bit correction where its condition holds."""
    x = ds.pixel_array.astype(np.int32)
    intercept = int(ds.RescaleIntercept)
    if int(ds.BitsStored) == 12 and int(ds.PixelRepresentation) == 0 and intercept > -100:
        x = x + 1000
        x[x >= 4096] -= 4096
        intercept = -1000
    return x * int(ds.RescaleSlope) + intercept


def _rows(out: Path) -> list[list[str]]:
    with open(out / "stage_2_train.csv", newline="") as f:
        return list(csv.reader(f))


def _digest(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 patients, no defects, half the series positive."""
    out = tmp_path_factory.mktemp("clean")
    generate(out, patients=4, seed=3, defects=NO_DEFECTS, **TINY)
    return out


def test_layout_and_csv_format(clean: Path) -> None:
    truth = load_truth(clean)
    files = sorted((clean / "stage_2_train").iterdir())
    ids = [iid for s in truth["series"] for iid in s["image_ids"]]
    assert len(ids) == len(set(ids)) == truth["counts"]["images"]
    assert sorted(f.name for f in files) == sorted(f"{i}.dcm" for i in ids)
    for f in files:
        assert len(f.stem) == 12 and f.stem.startswith("ID_")
        int(f.stem[3:], 16)
        assert f.stem[3:] == f.stem[3:].lower()
    rows = _rows(clean)
    assert rows[0] == ["ID", "Label"]
    body = rows[1:]
    assert len(body) == 6 * len(ids)
    labels: dict[str, dict[str, int]] = {}
    for i in range(0, len(body), 6):  # blocks of 6 rows per image, subtype order
        block = body[i : i + 6]
        image = block[0][0].rsplit("_", 1)[0]
        assert [r[0] for r in block] == [f"{image}_{s}" for s in SUBTYPES]
        assert all(r[1] in ("0", "1") for r in block)
        labels[image] = {s: int(r[1]) for s, r in zip(SUBTYPES, block, strict=True)}
    for s in truth["series"]:
        for iid, lab in zip(s["image_ids"], s["labels"], strict=True):
            assert [labels[iid][k] for k in SUBTYPES] == lab
            assert lab[-1] == max(lab[:-1])


def test_tags_and_hu_pydicom(clean: Path) -> None:
    truth = load_truth(clean)
    for s in truth["series"]:
        hu = series_hu(s)
        assert hu.shape == (s["n_slices"], 64, 64)
        for k, iid in enumerate(s["image_ids"]):
            ds = _read(clean / "stage_2_train" / f"{iid}.dcm")
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
            assert ds.SOPInstanceUID == iid
            assert ds.Modality == "CT"
            assert (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == (
                s["patient_id"],
                s["study_uid"],
                s["series_uid"],
            )
            assert ds.StudyID == ""
            assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (64, 64, 1)
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1
            assert float(ds.RescaleSlope) == 1.0
            assert [float(v) for v in ds.PixelSpacing] == pytest.approx([s["pixel_spacing"]] * 2)
            assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(s["positions"][k])
            assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(s["orientation"])
            assert ds.pixel_array.dtype == (np.int16 if ds.PixelRepresentation else np.uint16)
            np.testing.assert_array_equal(_hu(ds), hu[k])
        # brain, bone and air are where a head CT has them
        mid = hu[len(hu) // 2]
        assert mid.min() >= -1024 and mid.max() > 700
        assert -1024 <= np.median(mid[:4, :4]) < -900
        # the true order is ascending along the slice normal
        o = np.asarray(s["orientation"])
        normal = np.cross(o[:3], o[3:])
        proj = np.asarray(s["positions"]) @ normal
        assert np.all(np.diff(proj) > 0)
        assert np.diff(proj).mean() == pytest.approx(s["slice_spacing"], rel=1e-4)


def test_simpleitk_reads_files_and_series(clean: Path, tmp_path: Path) -> None:
    truth = load_truth(clean)
    assert any(abs(s["tilt_deg"]) > 1 for s in truth["series"])  # gantry tilt is covered
    for s in truth["series"]:
        hu = series_hu(s)
        one = sitk.ReadImage(str(clean / "stage_2_train" / f"{s['image_ids'][0]}.dcm"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(one)[0].astype(np.int32), hu[0])
        folder = tmp_path / s["series_uid"]
        folder.mkdir()
        for iid in s["image_ids"]:
            shutil.copy(clean / "stage_2_train" / f"{iid}.dcm", folder)
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
        assert [Path(n).stem for n in names] == s["image_ids"]  # GDCM's position sort
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        vol = sitk.GetArrayFromImage(reader.Execute()).astype(np.int32)
        np.testing.assert_array_equal(vol, hu)


def test_labels_follow_the_painted_bleeds(clean: Path) -> None:
    truth = load_truth(clean)
    n_pos = sum(s["positive"] for s in truth["series"])
    assert n_pos == round(0.5 * len(truth["series"]))
    for s in truth["series"]:
        phantom = series_phantom(s)
        labels = np.asarray(s["labels"])
        np.testing.assert_array_equal(labels, phantom.labels)
        hu = series_hu(s)
        for k in range(s["n_slices"]):
            codes = phantom.bleed[k]
            for j in range(5):
                painted = codes == j + 1
                assert bool(painted.any()) == bool(labels[k, j])
            if labels[k, -1]:
                blood = hu[k][codes > 0]
                assert blood.size >= ph.min_bleed_pixels(s["pixel_spacing"])
                assert 45 <= np.median(blood) <= 95
        anyk = np.nonzero(labels[:, -1])[0]
        if s["positive"]:
            assert anyk.size and anyk[-1] - anyk[0] + 1 == anyk.size  # one contiguous range
            assert anyk.size < s["n_slices"] or s["n_slices"] <= 6
        else:
            assert anyk.size == 0 and not phantom.bleed.any()


@pytest.mark.parametrize("name", DEFECT_NAMES)
def test_each_defect_appears_at_rate_one(name: str, tmp_path: Path) -> None:
    out = tmp_path / name
    generate(
        out,
        patients=1,
        studies=(1, 1),
        size=48,
        slices=(6, 6),
        seed=11,
        defects=NO_DEFECTS.with_rates(**{name: 1.0}),
        progress=False,
    )
    truth = load_truth(out)
    (s,) = truth["series"]
    ids = s["image_ids"]
    img = out / "stage_2_train"
    present = [i for i in ids if (img / f"{i}.dcm").exists()]
    rows = _rows(out)[1:]
    others = {k: v for k, v in truth["defects"].items() if k != name}
    assert not any(others.values()), others
    if name == "twelve_bit":
        assert truth["defects"][name] == [s["series_uid"]]
        hu = series_hu(s)
        for k, iid in enumerate(ids):
            ds = _read(img / f"{iid}.dcm")
            assert (ds.BitsStored, ds.PixelRepresentation) == (12, 0)
            assert float(ds.RescaleIntercept) > -100
            assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() < 4096
            np.testing.assert_array_equal(_corrected_hu(ds), hu[k])
            assert not np.array_equal(_hu(ds), hu[k])  # the naive reading is wrong
    elif name == "multi_window":
        assert sorted(truth["defects"][name]) == sorted(ids)
        for iid in ids:
            ds = _read(img / f"{iid}.dcm")
            assert len(ds.WindowCenter) == 2 and len(ds.WindowWidth) == 2
    elif name == "fov_minus2000":
        for iid in ids:
            hu = _hu(_read(img / f"{iid}.dcm"))
            assert hu[0, 0] == hu[-1, -1] == hu[0, -1] == -2000
            assert (hu == -2000).mean() == pytest.approx(1 - np.pi / 4, abs=0.03)
            assert hu[24, 24] > -1100
    elif name == "descending":
        normal = np.cross(s["orientation"][:3], s["orientation"][3:])
        assert normal[2] < 0
        z = [_read(img / f"{i}.dcm").ImagePositionPatient[2] for i in ids]
        assert np.all(np.diff(np.asarray(z, dtype=float)) < 0)  # top slice first
        hu = series_hu(s)
        for k, iid in enumerate(ids):
            np.testing.assert_array_equal(_hu(_read(img / f"{iid}.dcm")), hu[k])
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(img))
        assert [Path(n).stem for n in names] == ids  # GDCM sorts along the normal too
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(reader.Execute()), hu)
    elif name == "corrupt":
        assert sorted(truth["defects"][name]) == sorted(ids) == sorted(present)
        ds = _read(img / f"{ids[0]}.dcm")
        assert ds.SOPInstanceUID == ids[0]
        with pytest.raises(Exception):  # noqa: B017 - pydicom raises ValueError
            _ = ds.pixel_array
    elif name == "blank":
        for iid in ids:
            assert _read(img / f"{iid}.dcm").pixel_array.std() == 0
        assert all(r[1] == "0" for r in rows)
    elif name == "duplicate_rows":
        assert len(rows) == 12 * len(ids)
        assert len({tuple(r) for r in rows}) == 6 * len(ids)
    elif name == "missing_label":
        assert rows == [] and sorted(present) == sorted(ids)
    elif name == "orphan_label":
        assert present == [] and len(rows) == 6 * len(ids)
    elif name == "not_dicom":
        (stray,) = truth["defects"][name]
        path = out / stray
        assert path.exists() and path.parent == img
        with pytest.raises(Exception):  # noqa: B017 - InvalidDicomError or similar
            pydicom.dcmread(path)


def test_no_defect_at_rate_zero(clean: Path) -> None:
    truth = load_truth(clean)
    assert all(v == [] for v in truth["defects"].values())
    img = clean / "stage_2_train"
    assert all(p.suffix == ".dcm" for p in img.iterdir())
    rows = _rows(clean)[1:]
    assert len({tuple(r) for r in rows}) == len(rows)
    for s in truth["series"]:
        assert np.cross(s["orientation"][:3], s["orientation"][3:])[2] > 0
        for iid in s["image_ids"][:2]:
            ds = _read(img / f"{iid}.dcm")
            assert not (
                ds.BitsStored == 12 and ds.PixelRepresentation == 0 and ds.RescaleIntercept > -100
            )
            hu = _hu(ds)
            assert hu.min() >= -1024 and hu.std() > 0
            assert not isinstance(ds.WindowCenter, pydicom.multival.MultiValue)


@pytest.mark.parametrize("storage", ["int16_m1024", "uint12_m1024", "int16_m1000", "int16_0"])
def test_storage_variants_read_right(
    storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ich3d.synth import series
    from ich3d.synth import storage as st

    names = list(st.STORAGES)
    monkeypatch.setattr(series, "STORAGE_P", tuple(float(n == storage) for n in names))
    out = tmp_path / storage
    generate(
        out, patients=1, studies=(1, 1), size=40, slices=(4, 4), defects=NO_DEFECTS, progress=False
    )
    (s,) = load_truth(out)["series"]
    assert s["storage"]["name"] == storage
    hu = series_hu(s)
    for k, iid in enumerate(s["image_ids"]):
        path = out / "stage_2_train" / f"{iid}.dcm"
        ds = _read(path)
        np.testing.assert_array_equal(_hu(ds), hu[k])
        np.testing.assert_array_equal(_corrected_hu(ds), hu[k])  # the correction stays off
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0]
        np.testing.assert_array_equal(arr.astype(np.int32), hu[k])
    expect = st.STORAGES[storage]
    assert (ds.BitsStored, ds.PixelRepresentation, float(ds.RescaleIntercept)) == (
        expect.bits_stored,
        expect.pixel_representation,
        expect.intercept,
    )


def test_a_patients_studies_share_the_anatomy(tmp_path: Path) -> None:
    generate(
        tmp_path / "p", patients=3, studies=(3, 3), size=32, slices=(6, 6), seed=4, progress=False
    )
    truth = load_truth(tmp_path / "p")
    by_patient: dict[str, list[dict]] = {}
    for s in truth["series"]:
        by_patient.setdefault(s["patient_id"], []).append(s)
    assert len(by_patient) == 3 and all(len(v) == 3 for v in by_patient.values())
    for v in by_patient.values():
        assert v[0]["anatomy"] == v[1]["anatomy"] == v[2]["anatomy"]
        assert v[0]["calcifications"] == v[1]["calcifications"] == v[2]["calcifications"]
        assert len({s["pixel_spacing"] for s in v}) == 3  # but scanned differently
    assert len({json.dumps(v[0]["anatomy"]) for v in by_patient.values()}) == 3
    assert len({s["study_uid"] for s in truth["series"]}) == 9


@pytest.mark.parametrize("tilt", [0.0, -12.5, 18.0])
def test_geometry_positions_match_voxel_coordinates(tilt: float) -> None:
    g = ph.Geometry(
        size=40,
        n_slices=7,
        pixel_spacing=0.9,
        table_feed=5.0,
        tilt_deg=tilt,
        center_y=7.0,
        z0=-30.0,
    )
    x, y, z = g.plane_coords()
    pos = g.positions()
    row, col = g.row_cosine, g.col_cosine
    for k, i, j in [(0, 0, 0), (3, 11, 29), (6, 39, 39)]:
        expect = pos[k] + j * g.pixel_spacing * row + i * g.pixel_spacing * col
        assert [x[0, 0, j], y[0, i, 0], z[k, i, 0]] == pytest.approx(expect.tolist())
    np.testing.assert_allclose(np.diff(pos[:, 2]), 5.0)  # the table moves along z
    np.testing.assert_allclose(np.diff(pos @ g.normal), g.slice_spacing)
    assert g.slice_spacing == pytest.approx(5.0 * np.cos(np.radians(tilt)))
    # the image centre is on the reconstruction axis
    centre = pos[0] + (g.fov / 2) * (row + col)
    assert centre[:2] == pytest.approx([0.0, 7.0])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    kw = {"patients": 2, "size": 32, "slices": (4, 6), "studies": (1, 2)}
    generate(tmp_path / "a", seed=5, progress=False, **kw)
    generate(tmp_path / "b", seed=5, progress=True, **kw)
    generate(tmp_path / "c", seed=6, progress=False, **kw)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() != c.keys()
    assert (tmp_path / "a" / "stage_2_train.csv").read_bytes() != (
        tmp_path / "c" / "stage_2_train.csv"
    ).read_bytes()


#: sha256 over (relative path, NUL, bytes) of every file of the dataset below, computed
#: with the generator as it was in ich3d/data/synth.py + phantom.py (commit 4e86f58),
#: before it moved to ich3d/synth/: the move and any refactoring must keep these bytes.
#: That generator had no CT artefacts (ich3d/synth/artefacts.py); with them switched off
#: the bytes are still these, so the artefacts change nothing else.
PINNED_DATASET_SHA256 = "3a9b3a10f12214092695a4cb46b461fbdbea29a3c13cefa6406d1e82a966a4d0"
#: The same dataset with the artefacts (partial volume of the vault, skull-base streaks).
PINNED_WITH_ARTEFACTS_SHA256 = "7073afae07927dd249dfb1c0cda791c160581429529089274d8ea7906cf00081"


def _dataset_sha256(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(out)).encode())
            h.update(b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("artefacts", [True, False], ids=["artefacts", "no-artefacts"])
def test_pinned_bytes_every_defect_planted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artefacts: bool
) -> None:
    """A tiny dataset with every defect planted is byte-identical to the pinned one."""
    if not artefacts:
        monkeypatch.setattr(ph, "paint_artefacts", lambda *a, **k: None)
    rates = DefectRates(**{name: 0.3 for name in DEFECT_NAMES})
    summary = generate(
        tmp_path / "pin",
        patients=3,
        size=40,
        slices=(4, 6),
        studies=(1, 2),
        seed=1,
        defects=rates,
        progress=False,
    )
    assert all(summary.defects[name] > 0 for name in DEFECT_NAMES)  # every code path ran
    assert (summary.series, summary.images, summary.files, summary.positive_series) == (
        4,
        18,
        10,
        2,
    )
    pinned = PINNED_WITH_ARTEFACTS_SHA256 if artefacts else PINNED_DATASET_SHA256
    assert _dataset_sha256(tmp_path / "pin") == pinned


def test_patients_do_not_depend_on_each_other(tmp_path: Path) -> None:
    kw = {"size": 32, "slices": (4, 5), "positive_fraction": 1.0, "seed": 2, "progress": False}
    generate(tmp_path / "two", patients=2, defects=NO_DEFECTS, **kw)
    generate(tmp_path / "three", patients=3, defects=NO_DEFECTS, **kw)
    two, three = _digest(tmp_path / "two"), _digest(tmp_path / "three")
    images = {k: v for k, v in two.items() if k.endswith(".dcm")}
    assert images and all(three[k] == v for k, v in images.items())


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="size"):
        generate(tmp_path / "x", size=16, progress=False)
    with pytest.raises(UserError, match="slices"):
        generate(tmp_path / "x", slices=(8, 4), progress=False)
    with pytest.raises(UserError, match="positive_fraction"):
        generate(tmp_path / "x", positive_fraction=1.5, progress=False)
    with pytest.raises(UserError, match="corrupt"):
        DefectRates(corrupt=-0.1)
    with pytest.raises(UserError, match="unknown defect"):
        NO_DEFECTS.with_rates(bogus=0.1)
    generate(tmp_path / "y", patients=1, studies=(1, 1), size=32, slices=(3, 3), progress=False)
    with pytest.raises(UserError, match="already holds"):
        generate(tmp_path / "y", patients=1, size=32, slices=(3, 3), progress=False)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["synth", str(out), "--patients", "2", "--size", "32", "--slices", "4", "5"]
    assert cli_main([*argv, "--no-defects", "--defect", "blank=1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "patients 2" in text and "blank" in text
    truth = load_truth(out)
    assert truth["params"]["defects"]["blank"] == 1.0 and truth["params"]["defects"]["corrupt"] == 0
    for bad in (
        ["--size", "16"],
        ["--slices", "9", "3"],
        ["--defect", "corrupt=1.5"],
        ["--defect", "nonsense=0.1"],
        ["--defect", "corrupt"],
        ["--positive-fraction", "-1"],
    ):
        assert cli_main(["synth", str(tmp_path / "bad"), *bad]) == 2
        assert "ich3d: error:" in capsys.readouterr().err


def test_cli_draws_no_progress_bar_into_a_log_file(tmp_path: Path) -> None:
    """Progress bars only on a terminal: a log file (a pipe here) gets no bar frames."""
    import subprocess
    import sys

    out = tmp_path / "logged"
    argv = ["synth", str(out), "--patients", "2", "--size", "32", "--slices", "4", "5"]
    done = subprocess.run([sys.executable, "-m", "ich3d", *argv], capture_output=True, text=True, check=True)
    assert (out / "stage_2_train.csv").is_file()
    assert "synth series" not in done.stderr and "\r" not in done.stderr, done.stderr[-300:]
