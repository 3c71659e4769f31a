"""Helpers for the ingest tests: write small RSNA-style slice files, compare caches."""

from __future__ import annotations

import filecmp
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ich3d.data.schema import HU_MAX, HU_MIN

__all__ = [
    "write_slice",
    "write_series",
    "write_labels",
    "reference_pool",
    "assert_same_cache",
    "compress_copy",
    "write_enhanced_ct",
    "assert_accounted",
]


def write_slice(
    path: Path,
    stored: np.ndarray,
    *,
    z: float = 0.0,
    position: Sequence[float] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    series: str = "ID_series0",
    patient: str = "ID_patient0",
    study: str = "ID_study0",
    modality: str = "CT",
    signed: bool = True,
    bits_stored: int = 16,
    slope: float = 1.0,
    intercept: float = -1024.0,
    window: Sequence[float] | float = 40.0,
    spacing: float = 0.5,
    omit: Sequence[str] = (),
    pixel_bytes: bytes | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    """Write one uncompressed CT slice (explicit VR little endian) the way RSNA files look."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    path = Path(path)
    sop = path.name[:-4] if path.name.endswith(".dcm") else path.name
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ID_... strings are not valid UIs, as in RSNA
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.Modality = modality
        ds.PatientID = patient
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = ""
        ds.ImagePositionPatient = list(position) if position is not None else [-16.0, -16.0, z]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.PixelSpacing = [spacing, spacing]
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = int(signed)
        ds.WindowCenter = window
        ds.WindowWidth = 80.0 if np.isscalar(window) else [80.0] * len(window)  # type: ignore[arg-type]
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.PixelData = (
            pixel_bytes
            if pixel_bytes is not None
            else stored.astype(np.int16 if signed else np.uint16).tobytes()
        )
        for name, value in (extra or {}).items():
            setattr(ds, name, value)
        for name in omit:
            delattr(ds, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    series: str,
    start: int,
    z0: float = 0.0,
    dz: float = 2.5,
    **kwargs: object,
) -> list[Path]:
    """Write a (slices, H, W) HU volume as one file per slice, ``ID_<start+i:09x>.dcm``."""
    return [
        write_slice(
            Path(folder) / f"ID_{start + i:09x}.dcm",
            hu[i] + 1024,
            z=z0 + dz * i,
            series=series,
            **kwargs,  # type: ignore[arg-type]
        )
        for i in range(hu.shape[0])
    ]


def write_labels(path: Path, rows: dict[str, Sequence[int]], extra: Sequence[str] = ()) -> Path:
    """Write an RSNA labels CSV: ``rows`` image id -> six labels; ``extra`` raw lines appended."""
    from ich3d.data.schema import SUBTYPES

    lines = ["ID,Label"]
    for image, labels in rows.items():
        lines += [f"{image}_{s},{v}" for s, v in zip(SUBTYPES, labels, strict=True)]
    lines += list(extra)
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def reference_pool(hu: np.ndarray) -> np.ndarray:
    """Clip to [HU_MIN, HU_MAX] then 2x2 max-pool (odd sizes cropped), int16."""
    a = np.clip(np.asarray(hu), HU_MIN, HU_MAX)
    h, w = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    a = a[..., :h, :w]
    a = a.reshape(*a.shape[:-2], h // 2, 2, w // 2, 2).max(axis=(-3, -1))
    return a.astype(np.int16)


def assert_same_cache(a: Path, b: Path) -> None:
    """Byte-identical tables, ingest.json (but the `images` path) and volume files."""
    import json

    for name in ("slices.csv", "volumes.csv", "skipped.csv"):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    ja, jb = (json.loads((d / "ingest.json").read_text()) for d in (a, b))
    assert ja == jb
    va = sorted(os.listdir(a / "volumes"))
    vb = sorted(os.listdir(b / "volumes"))
    assert va == vb
    for name in va:
        assert filecmp.cmp(a / "volumes" / name, b / "volumes" / name, shallow=False), name


def compress_copy(src: Path, dst: Path, syntax: str, **kwargs: object) -> Path:
    """Write ``src`` again in the transfer syntax ``syntax`` with the installed encoders.

    RLE, JPEG-LS and JPEG 2000 use pydicom's ``Dataset.compress`` (its RLE encoder,
    pyjpegls, pylibjpeg-openjpeg); JPEG Lossless (.57 / .70), which pydicom cannot
    encode, uses GDCM's ``ImageChangeTransferSyntax``; Deflate re-writes the dataset
    with the deflated syntax.
    """
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLossless, JPEGLosslessSV1

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if syntax in (JPEGLossless, JPEGLosslessSV1):
        import gdcm

        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        assert reader.Read(), src
        change = gdcm.ImageChangeTransferSyntax()
        ts = (
            gdcm.TransferSyntax.JPEGLosslessProcess14_1
            if syntax == JPEGLosslessSV1
            else gdcm.TransferSyntax.JPEGLosslessProcess14
        )
        change.SetTransferSyntax(gdcm.TransferSyntax(ts))
        change.SetInput(reader.GetImage())
        assert change.Change(), syntax
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write(), dst
        assert pydicom.dcmread(dst).file_meta.TransferSyntaxUID == syntax
        return dst
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax, **kwargs)  # type: ignore[arg-type]
        ds.save_as(dst, enforce_file_format=True)
    return dst


def write_enhanced_ct(
    path: Path,
    hu: np.ndarray,
    positions: Sequence[Sequence[float]],
    *,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    series: str = "ID_mf_series",
    patient: str = "ID_patient_mf",
    study: str = "ID_study_mf",
    spacing: float = 0.5,
    intercept: float = -1024.0,
    per_frame_positions: bool = True,
) -> Path:
    """Write an Enhanced CT (multi-frame) file: ``hu`` (frames, H, W) stored as HU + 1024."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian

    def item(**kw: object) -> Dataset:
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SOPClassUID = EnhancedCTImageStorage
        ds.SOPInstanceUID = "1.2.3.4"
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientID = patient
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.NumberOfFrames = hu.shape[0]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.SharedFunctionalGroupsSequence = Seq(
            [
                item(
                    PlaneOrientationSequence=Seq(
                        [item(ImageOrientationPatient=[float(v) for v in orientation])]
                    ),
                    PixelMeasuresSequence=Seq(
                        [item(PixelSpacing=[spacing, spacing], SliceThickness=2.5)]
                    ),
                    PixelValueTransformationSequence=Seq(
                        [item(RescaleIntercept=intercept, RescaleSlope=1.0)]
                    ),
                )
            ]
        )
        frames = []
        for p in positions:
            kw = {}
            if per_frame_positions:
                kw["PlanePositionSequence"] = Seq(
                    [item(ImagePositionPatient=[float(v) for v in p])]
                )
            frames.append(item(**kw))
        ds.PerFrameFunctionalGroupsSequence = Seq(frames)
        ds.PixelData = (np.asarray(hu) - int(intercept)).astype(np.int16).tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def assert_accounted(images: Path, out: Path) -> None:
    """Every file (every frame of a multi-frame file) is in slices.csv or skipped.csv, once."""
    import pandas as pd

    slices = pd.read_csv(out / "slices.csv", dtype=str, keep_default_na=False)
    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    assert len(skipped) == len(set(skipped.item)), "one skipped.csv row per item"
    assert len(slices) == len(set(slices.image_id)), "image ids are unique"
    units = set(zip(slices.file, slices.frame, strict=True))
    assert len(units) == len(slices)
    skipped_items = set(skipped.item)
    kept_files = {f for f, _ in units}
    for f in files:
        if f in skipped_items:
            assert f not in kept_files, f
            continue
        frames = [int(fr) for g, fr in units if g == f] + [
            int(i.rsplit("#", 1)[1]) for i in skipped_items if i.startswith(f + "#")
        ]
        assert frames, f"{f} is neither in slices.csv nor in skipped.csv"
        assert sorted(frames) == ([0] if frames == [0] else list(range(1, len(frames) + 1))), f
    assert kept_files <= set(files)
