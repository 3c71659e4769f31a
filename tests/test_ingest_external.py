"""Hospital / PACS DICOM through the ingest: compressed syntaxes, localizers, folder layouts,
multi-frame CT, identifiers, one anatomical direction, spacing, series choice, study labels.

Every case is DICOM the test writes itself; compressed copies are made with the installed
encoders and must give exactly the HU volume of their uncompressed twin (lossless syntaxes).
The accounting invariant (every file / frame in slices.csv or skipped.csv) holds on every case.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _ingest_helpers import (
    assert_accounted,
    compress_copy,
    reference_pool,
    write_enhanced_ct,
    write_series,
    write_slice,
)
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.uid import JPEGLossless as JPEGLossless57

from ich3d.data import dicom
from ich3d.data import ingest as ing
from ich3d.data.dicom import decoders
from ich3d.data.ingest import most_common_size, run_ingest
from ich3d.data.schema import SKIPPED_COLUMNS, UNLABELED, series_key
from ich3d.errors import UserError


def _hu(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1100, 1500, size=(n, size, size)).astype(np.int32)


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    read = lambda n: pd.read_csv(out / n, dtype={"item": str, "detail": str}, keep_default_na=False)  # noqa: E731
    return read("slices.csv"), read("volumes.csv"), read("skipped.csv")


def _ingest(images: Path, out: Path, **kw: object) -> ing.IngestSummary:
    s = run_ingest(images, None, out, progress=False, **kw)  # type: ignore[arg-type]
    assert_accounted(images, out)
    return s


# --------------------------------------------------------------------------- compressed


LOSSLESS = [
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless57,
    DeflatedExplicitVRLittleEndian,
]


@pytest.fixture()
def twin(tmp_path):
    """A native series (signed, 16 bits) and a 12-bit RSNA-defect series."""
    native = tmp_path / "native"
    hu = _hu(5, size=32)
    write_series(native, hu, series="ID_s16", start=0x10)
    hu12 = _hu(5, size=32, seed=1).clip(-1000, 3000)
    for i in range(5):  # RSNA 12-bit defect: unsigned 12 bits holding HU mod 4096, intercept 0
        write_slice(
            native / f"ID_{0x20 + i:09x}.dcm",
            (hu12[i] % 4096).astype(np.uint16),
            z=2.5 * i,
            series="ID_s12",
            signed=False,
            bits_stored=12,
            intercept=0.0,
            window=[40.0, 400.0],
        )
    return native, hu, hu12


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda u: u.name)
def test_lossless_syntax_gives_the_uncompressed_volume(twin, tmp_path, syntax):
    native, hu, hu12 = twin
    packed = tmp_path / "packed"
    for f in sorted(native.iterdir()):
        compress_copy(f, packed / f.name, syntax)
    ref = tmp_path / "ref_cache"
    _ingest(native, ref)
    out = tmp_path / "cache"
    s = _ingest(packed, out)
    assert s.volumes == 2 and s.skipped_total == 0
    for uid, truth in (("ID_s16", hu), ("ID_s12", hu12)):
        key = series_key(uid)
        ours = np.load(out / "volumes" / f"{key}.npy")
        np.testing.assert_array_equal(ours, np.load(ref / "volumes" / f"{key}.npy"))
        np.testing.assert_array_equal(ours, reference_pool(truth))
    sl, vol, _ = _tables(out)
    sl_ref, _, _ = _tables(ref)
    assert sl.image_id.tolist() == sl_ref.image_id.tolist()
    assert set(vol.transfer_syntax) == {str(syntax)} and (vol.lossy == 0).all()


@pytest.mark.parametrize(
    "syntax,kwargs", [(JPEG2000, {"j2k_cr": [40]}), (JPEGLSNearLossless, {"jls_error": 3})]
)
def test_lossy_syntax_decodes_and_is_flagged(twin, tmp_path, syntax, kwargs):
    import pydicom

    native, _, _ = twin
    packed = tmp_path / "lossy"
    files = [compress_copy(f, packed / f.name, syntax, **kwargs) for f in sorted(native.iterdir())]
    out = tmp_path / "cache"
    s = _ingest(packed, out)
    assert s.volumes == 2 and s.volumes_lossy == 2
    _, vol, _ = _tables(out)
    assert (vol.lossy == 1).all()
    # the volume is what pydicom decodes, through the same HU rule
    key = series_key("ID_s16")
    decoded = []
    for f in files[:5]:
        ds = pydicom.dcmread(f)
        decoded.append(dicom.pooled_hu(ds.pixel_array, intercept=float(ds.RescaleIntercept)))
    np.testing.assert_array_equal(np.load(out / "volumes" / f"{key}.npy"), np.stack(decoded))


def test_no_decoder_names_the_syntax_and_package(twin, tmp_path, monkeypatch):
    native, _, _ = twin
    packed = tmp_path / "jls"
    for f in sorted(native.iterdir()):
        compress_copy(f, packed / f.name, JPEGLSLossless)
    monkeypatch.setitem(decoders._DECODER_OK, str(JPEGLSLossless), False)  # as if none installed
    out = tmp_path / "cache"
    s = _ingest(packed, out)
    assert s.volumes == 0
    _, _, skipped = _tables(out)
    assert tuple(skipped.columns) == SKIPPED_COLUMNS
    assert set(skipped.reason) == {dicom.REASON_NO_DECODER}
    detail = skipped.detail.iloc[0]
    assert "JPEG-LS Lossless" in detail and str(JPEGLSLossless) in detail
    assert "pyjpegls" in detail


def test_corrupt_compressed_slice_is_skipped_alone(twin, tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate

    native, hu, _ = twin
    packed = tmp_path / "jls"
    files = [compress_copy(f, packed / f.name, JPEGLSLossless) for f in sorted(native.iterdir())]
    victim = files[2]
    ds = pydicom.dcmread(victim)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x13" * 40])  # not a JPEG-LS stream
    ds.save_as(victim)
    out = tmp_path / "cache"
    s = _ingest(packed, out)
    _, vol, skipped = _tables(out)
    row = skipped.set_index("item").loc[victim.name]
    assert row.reason == dicom.REASON_UNREADABLE_PIXELS and row.detail
    v = vol.set_index("key").loc[series_key("ID_s16")]
    assert v.n_slices == 4 and v.gap == 1
    np.testing.assert_array_equal(
        np.load(out / "volumes" / f"{series_key('ID_s16')}.npy"), reference_pool(hu[[0, 1, 3, 4]])
    )
    assert s.volumes == 2
    again = run_ingest(packed, None, out, progress=False)  # complete: nothing to redo
    assert again.cached and again.skipped == s.skipped


# --------------------------------------------------------------------------- per-slice rules


def test_localizer_and_odd_slices_are_skipped_alone(tmp_path):
    img = tmp_path / "img"
    hu = _hu(6)
    write_series(img, hu, series="ID_ax", start=0x100)
    # a scout in the same series: LOCALIZER, sagittal, another size
    write_slice(
        img / "ID_000000900.dcm",
        np.zeros((20, 24)),
        orientation=(0, 1, 0, 0, 0, -1),
        series="ID_ax",
        extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},
    )
    # no LOCALIZER tag, but an orientation / a size the rest of the series does not have
    write_slice(
        img / "ID_000000901.dcm",
        np.zeros((16, 16)),
        orientation=(1, 0, 0, 0, 0, -1),
        series="ID_ax",
    )
    write_slice(img / "ID_000000902.dcm", np.zeros((12, 12)), z=40.0, series="ID_ax")
    out = tmp_path / "cache"
    s = _ingest(img, out)
    _, vol, skipped = _tables(out)
    assert s.volumes == 1 and vol.n_slices.item() == 6
    reasons = dict(zip(skipped.item, skipped.reason, strict=True))
    assert reasons == {
        "ID_000000900.dcm": dicom.REASON_LOCALIZER,
        "ID_000000901.dcm": ing.REASON_ORIENTATION_MISMATCH,
        "ID_000000902.dcm": ing.REASON_SIZE_MISMATCH,
    }
    np.testing.assert_array_equal(
        np.load(out / "volumes" / f"{series_key('ID_ax')}.npy"), reference_pool(hu)
    )


def test_most_common_size_rule():
    assert most_common_size([(512, 512), (256, 256), (512, 512)]) == (512, 512)
    assert most_common_size([(16, 16), (12, 12), (16, 16), (12, 12)]) == (12, 12)  # tie: smaller
    with pytest.raises(ValueError):
        most_common_size([])


# --------------------------------------------------------------------------- folder layouts


def _write_dicomdir(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.9"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "EXPORT"
    ds.DirectoryRecordSequence = []
    ds.save_as(path, enforce_file_format=True)


def test_pacs_export_layout(tmp_path):
    import pydicom

    img = tmp_path / "export"
    hu1, hu2 = _hu(5, seed=3), _hu(5, seed=4)
    for folder, uid, hu in (("PAT1/ST1/SE1", "ID_se1", hu1), ("PAT1/ST1/SE2", "ID_se2", hu2)):
        for i in range(5):  # the same names in both series folders, no extension
            write_slice(img / folder / f"IM{i + 1:06d}", hu[i] + 1024, z=2.5 * i, series=uid)
    _write_dicomdir(img / "DICOMDIR")
    (img / "PAT1" / "export.log").write_text("exported by PACS\n")
    # a dataset without the 128-byte preamble and file meta (raw implicit VR little endian)
    bare = img / "PAT1" / "ST1" / "SE1" / "IM000001"
    ds = pydicom.dcmread(bare)
    raw = img / "RAW" / "slice_no_preamble"
    raw.parent.mkdir(parents=True)
    del ds.file_meta
    ds.preamble = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(raw, ds, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[128:132] != b"DICM"
    ds.SeriesInstanceUID = "ID_raw"
    for i in range(1, 4):  # make it a series of 4: positions 2.5 mm apart
        ds.ImagePositionPatient = [-16.0, -16.0, 2.5 * i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmwrite(raw.with_name(f"raw{i}"), ds, implicit_vr=True, little_endian=True)
    ds.ImagePositionPatient = [-16.0, -16.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(raw, ds, implicit_vr=True, little_endian=True)

    out = tmp_path / "cache"
    s = _ingest(img, out)
    slices, vol, skipped = _tables(out)
    assert s.volumes == 3
    reasons = dict(zip(skipped.item, skipped.reason, strict=True))
    assert reasons == {"DICOMDIR": dicom.REASON_DICOMDIR, "PAT1/export.log": dicom.REASON_NOT_DICOM}
    # repeated names: the path relative to the input is the image id
    s1 = slices[slices.key == series_key("ID_se1")]
    assert s1.image_id.tolist() == [f"PAT1/ST1/SE1/IM{i + 1:06d}" for i in range(5)]
    assert s1.file.tolist() == s1.image_id.tolist()
    for uid, hu in (("ID_se1", hu1), ("ID_se2", hu2)):
        np.testing.assert_array_equal(
            np.load(out / "volumes" / f"{series_key(uid)}.npy"), reference_pool(hu)
        )
    # unique names keep their file name as id (RSNA's rule)
    assert set(slices[slices.key == series_key("ID_raw")].image_id) == {
        "slice_no_preamble",
        "raw1",
        "raw2",
        "raw3",
    }
    np.testing.assert_array_equal(
        np.load(out / "volumes" / f"{series_key('ID_raw')}.npy")[0], reference_pool(hu1[0])
    )


# --------------------------------------------------------------------------- multi-frame


def test_enhanced_multiframe_ct_is_one_volume(tmp_path):
    hu = _hu(6, size=16, seed=7)
    img = tmp_path / "img"
    order = [2, 0, 5, 1, 4, 3]  # frames stored out of anatomical order
    positions = [[-4.0, -4.0, 3.0 * k] for k in order]
    f = write_enhanced_ct(img / "enhanced.dcm", hu[order], positions)
    compress_copy(f, img / "enhanced_rle.dcm", RLELossless)
    write_enhanced_ct(
        img / "no_positions.dcm", hu, positions, series="ID_mf2", per_frame_positions=False
    )
    out = tmp_path / "cache"
    s = _ingest(img, out)
    slices, vol, skipped = _tables(out)
    assert s.volumes == 2 and (vol.multiframe == 1).all() and (vol.n_slices == 6).all()
    for path in vol.path:
        np.testing.assert_array_equal(np.load(out / path), reference_pool(hu))
    native = slices[slices.file == "enhanced.dcm"].sort_values("slice_index")
    assert native.frame.astype(int).tolist() == [order.index(k) + 1 for k in range(6)]
    assert native.image_id.iloc[0] == f"enhanced#{order.index(0) + 1}"
    assert native.position.astype(float).tolist() == [3.0 * k for k in range(6)]
    reasons = dict(zip(skipped.item, skipped.reason, strict=True))
    assert reasons == {"no_positions.dcm": dicom.REASON_MULTIFRAME}
    assert "frame 1" in skipped.detail.iloc[0]
    assert vol.slice_thickness.astype(float).tolist() == [2.5, 2.5]


# --------------------------------------------------------------------------- identifiers


def test_charset_and_study_as_patient(tmp_path):
    from ich3d.data.splits import make_splits

    img = tmp_path / "img"
    write_series(
        img,
        _hu(4),
        series="ID_utf",
        start=0x10,
        patient="Müller^Jörg-株式会社",
        extra={"SpecificCharacterSet": "ISO_IR 192"},
    )
    write_series(img, _hu(4), series="ID_anon1", start=0x20, study="1.2.9.1", omit=["PatientID"])
    write_series(img, _hu(4), series="ID_anon2", start=0x30, study="1.2.9.1", omit=["PatientID"])
    write_series(img, _hu(4), series="ID_anon3", start=0x40, study="1.2.9.2", omit=["PatientID"])
    out = tmp_path / "cache"
    s = _ingest(img, out)
    slices, vol, _ = _tables(out)
    v = vol.set_index("series_uid")
    assert v.loc["ID_utf"].patient_id == "Müller^Jörg-株式会社"
    assert v.loc["ID_anon1"].patient_id == "study:1.2.9.1" == v.loc["ID_anon2"].patient_id
    assert v.loc["ID_anon3"].patient_id == "study:1.2.9.2"
    assert v.loc[["ID_utf", "ID_anon1", "ID_anon2", "ID_anon3"], "patient_from_study"].tolist() == [
        0,
        1,
        1,
        1,
    ]
    assert s.patients_from_study == 3
    vol["any"] = [0, 1, 0, 1]
    splits = make_splits(vol, fractions=(0.34, 0.33, 0.33), seed=0)
    where = {k: name for name, keys in splits.keys.items() for k in keys}
    assert where[v.loc["ID_anon1"].key] == where[v.loc["ID_anon2"].key]  # one study, one split


# --------------------------------------------------------------------------- direction, spacing


def test_inferior_normal_is_cached_foot_to_head(tmp_path):
    import SimpleITK as sitk

    hu = _hu(6, seed=9)  # hu[k] is at z = 2.5 k
    img = tmp_path / "img"
    # IOP 1\0\0\0\-1\0: the cross product points to the feet; GDCM sorts head first
    write_series(img / "inf", hu, series="ID_inf", start=0x10, orientation=(1, 0, 0, 0, -1, 0))
    write_series(img / "sup", hu, series="ID_sup", start=0x20, z0=12.5, dz=-2.5)  # files head first
    out = tmp_path / "cache"
    _ingest(img, out)
    slices, _, _ = _tables(out)
    for uid, truth in (("ID_inf", hu), ("ID_sup", hu[::-1])):
        key = series_key(uid)
        ours = np.load(out / "volumes" / f"{key}.npy")
        np.testing.assert_array_equal(ours, reference_pool(truth))
        pos = slices[slices.key == key].sort_values("slice_index").position.astype(float)
        assert np.all(np.diff(pos) > 0)
    assert slices[slices.key == series_key("ID_inf")].sort_values("slice_index").position.astype(
        float
    ).tolist() == [2.5 * k for k in range(6)]
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(img / "inf"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(names))
    order = slices[slices.key == series_key("ID_inf")].sort_values("slice_index").image_id
    assert order.tolist() == [Path(n).name[:-4] for n in names][::-1]  # GDCM's order, flipped
    np.testing.assert_array_equal(
        np.load(out / "volumes" / f"{series_key('ID_inf')}.npy"), reference_pool(np.rint(ref))[::-1]
    )


def test_non_uniform_spacing_is_flagged(tmp_path):
    img = tmp_path / "img"
    for i, z in enumerate([0.0, 2.5, 5.0, 8.0, 10.5]):
        write_slice(img / f"ID_{i:09x}.dcm", np.zeros((16, 16)), z=z, series="ID_nu")
    write_series(img, _hu(5), series="ID_u", start=0x100)
    out = tmp_path / "cache"
    s = _ingest(img, out)
    _, vol, _ = _tables(out)
    v = vol.set_index("series_uid")
    nu, u = v.loc["ID_nu"], v.loc["ID_u"]
    assert (nu.uniform_spacing, nu.slice_spacing_min, nu.slice_spacing_max, nu.gap) == (
        0,
        2.5,
        3.0,
        0,
    )
    assert (u.uniform_spacing, u.slice_spacing_min, u.slice_spacing_max) == (1, 2.5, 2.5)
    assert s.volumes_nonuniform == 1


# --------------------------------------------------------------------------- series, study labels


@pytest.fixture()
def study_set(tmp_path):
    img = tmp_path / "img"
    kw = {"study": "1.2.5.1", "patient": "P1"}
    write_series(
        img,
        _hu(20),
        series="ID_thin",
        start=0x100,
        dz=1.0,
        extra={"SliceThickness": 1.0, "ConvolutionKernel": "H30s", "AccessionNumber": "A1"},
        **kw,
    )
    write_series(
        img,
        _hu(5),
        series="ID_thick",
        start=0x200,
        dz=5.0,
        extra={"SliceThickness": 5.0, "ConvolutionKernel": "H30s", "AccessionNumber": "A1"},
        **kw,
    )
    write_series(
        img,
        _hu(5),
        series="ID_bone",
        start=0x300,
        dz=5.0,
        extra={"SliceThickness": 5.0, "ConvolutionKernel": "H70h", "AccessionNumber": "A1"},
        **kw,
    )
    write_series(
        img,
        _hu(5),
        series="ID_other",
        start=0x400,
        study="1.2.5.2",
        patient="P2",
        extra={"AccessionNumber": "A2"},
    )
    write_series(
        img,
        _hu(5),
        series="ID_nolabel",
        start=0x500,
        study="1.2.5.3",
        patient="P3",
        extra={"AccessionNumber": "A3"},
    )
    return img


def test_series_per_study(study_set, tmp_path):
    all_ = _ingest(study_set, tmp_path / "all")
    assert all_.volumes == 5
    one = _ingest(study_set, tmp_path / "one", series_per_study="one")
    _, vol, skipped = _tables(tmp_path / "one")
    assert set(vol.series_uid) == {"ID_thick", "ID_other", "ID_nolabel"}
    dropped = skipped[skipped.reason == ing.REASON_SERIES_NOT_SELECTED]
    assert len(dropped) == 25 and one.slices_kept == 15
    assert set(vol.kernel) == {"H30s", ""}
    thin = _ingest(study_set, tmp_path / "thin", series_per_study="one", target_thickness=1.0)
    _, vol, _ = _tables(tmp_path / "thin")
    assert "ID_thin" in set(vol.series_uid) and thin.volumes == 3
    assert ing.is_soft_kernel("STANDARD") and not ing.is_soft_kernel("BONEPLUS")
    assert not ing.is_soft_kernel("Br64") and ing.is_soft_kernel("Hr38")
    with pytest.raises(UserError, match="series_per_study"):
        run_ingest(study_set, None, tmp_path / "x", series_per_study="two", progress=False)


@pytest.mark.parametrize("key", ["StudyInstanceUID", "AccessionNumber", "PatientID"])
def test_study_labels(study_set, tmp_path, key):
    from ich3d.cli.main import main

    value = {
        "StudyInstanceUID": ("1.2.5.1", "1.2.5.2", "1.2.5.9"),
        "AccessionNumber": ("A1", "A2", "A9"),
        "PatientID": ("P1", "P2", "P9"),
    }[key]
    csv = tmp_path / "reads.csv"
    csv.write_text(
        f"{key},any,subdural\n{value[0]},1,1\n{value[1]},0,0\n{value[2]},1,0\n{value[0]},1,1\n,1,0\n"
    )
    out = tmp_path / "cache"
    args = ["ingest", "--images", str(study_set), "--out", str(out), "--no-progress"]
    assert main([*args, "--study-labels", str(csv), "--series-per-study", "one"]) == 0
    assert_accounted(study_set, out)
    slices, vol, skipped = _tables(out)
    v = vol.set_index("series_uid")
    assert set(v.index) == {"ID_thick", "ID_other"}
    assert v.loc["ID_thick", ["any", "subdural", "epidural"]].tolist() == [1, 1, UNLABELED]
    assert v.loc["ID_other", ["any", "subdural"]].tolist() == [0, 0]
    assert (slices["any"] == UNLABELED).all()
    reasons = dict(zip(skipped.item, skipped.reason, strict=True))
    assert reasons[value[2]] == ing.REASON_ORPHAN_STUDY_LABEL
    assert reasons["row 6"] == ing.REASON_MALFORMED_STUDY_LABEL
    assert (skipped.reason == ing.REASON_NO_STUDY_LABEL).sum() == 5  # ID_nolabel's slices
    record = json.loads((out / "ingest.json").read_text())
    assert record["counts"]["label_rows_duplicate"] == 1
    with pytest.raises(UserError, match="not both"):
        run_ingest(study_set, csv, tmp_path / "y", study_labels=csv, progress=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("study,label\n1,1\n")
    with pytest.raises(UserError, match="StudyInstanceUID"):
        run_ingest(study_set, None, tmp_path / "z", study_labels=bad, progress=False)


# --------------------------------------------------------------------------- versions


def test_cache_of_an_older_ingest_format_is_refused(tmp_path):
    img = tmp_path / "img"
    write_series(img, _hu(4), series="ID_a", start=0x10)
    out = tmp_path / "cache"
    _ingest(img, out)
    record = json.loads((out / "ingest.json").read_text())
    record["parameters"]["format"] = 1
    (out / "ingest.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="older ingest .format 1"):
        run_ingest(img, None, out, progress=False)
    s = run_ingest(img, None, out, overwrite=True, progress=False)
    assert s.volumes_written == 1
    assert (
        json.loads((out / "ingest.json").read_text())["parameters"]["format"] == ing.INGEST_FORMAT
    )


def test_copied_file_in_two_folders_is_a_duplicate_position(tmp_path):
    img = tmp_path / "img"
    files = write_series(img / "a", _hu(4), series="ID_a", start=0x10)
    (img / "b").mkdir()
    shutil.copy(files[0], img / "b" / files[0].name)
    out = tmp_path / "cache"
    _ingest(img, out)
    slices, _, skipped = _tables(out)
    assert skipped.reason.tolist() == [ing.REASON_DUPLICATE_POSITION]
    assert skipped.item.tolist() == [f"b/{files[0].name}"]
    assert f"a/{files[0].name[:-4]}" in set(slices.image_id)


def test_compressed_and_multiframe_with_two_workers_give_identical_outputs(twin, tmp_path):
    from _ingest_helpers import assert_same_cache

    native, _, _ = twin
    img = tmp_path / "mixed"
    for i, f in enumerate(sorted(native.iterdir())):
        compress_copy(f, img / f.name, (JPEGLSLossless, RLELossless, JPEG2000Lossless)[i % 3])
    hu = _hu(5, seed=11)
    write_enhanced_ct(img / "mf" / "enhanced", hu, [[0.0, 0.0, 4.0 * k] for k in range(5)])
    s1 = run_ingest(img, None, tmp_path / "w1", workers=1, progress=False)
    s2 = run_ingest(img, None, tmp_path / "w2", workers=2, progress=False)
    assert s1.volumes == s2.volumes == 3
    assert_same_cache(tmp_path / "w1", tmp_path / "w2")
    assert_accounted(img, tmp_path / "w2")
    _, vol, _ = _tables(tmp_path / "w1")
    assert set(vol[vol.multiframe == 0].transfer_syntax) == {"mixed"}
