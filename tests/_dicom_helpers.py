"""Synthetic DICOM with real DICOM UIDs, for the tests of DICOM results (``--dicom-out``) and PACS round trips.

``ich3d synth`` writes RSNA's anonymised identifiers (``ID_<hex>``), which are not DICOM
UIDs: objects that join such a study cannot pass ``dciodvfy``. :func:`with_dicom_uids`
copies some series of a synthetic folder with every Study, Series and SOP Instance UID
replaced by a UID under pydicom's root derived from the old value (the same old value, the
same new UID), the way a hospital's export looks.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

__all__ = ["with_dicom_uids"]


def with_dicom_uids(src: Path, dst: Path, *, series: int | None = None) -> Path:
    """Copy the DICOM files of ``src`` into ``dst`` with DICOM UIDs; returns ``dst``.

    Args:
        src: a folder of synthetic DICOM files (``*.dcm``, searched recursively).
        dst: the folder to write (flat, the same file names).
        series: keep the files of only this many series (the first by SeriesInstanceUID); None: all.
    """
    files = sorted(Path(src).rglob("*.dcm"))
    with warnings.catch_warnings():  # the ``ID_...`` values pydicom warns about are what is replaced
        warnings.simplefilter("ignore", UserWarning)
        return _copy(files, Path(dst), series)


def _copy(files: list[Path], dst: Path, series: int | None) -> Path:
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
    keep = sorted({str(h.SeriesInstanceUID) for h in headers.values()})
    if series is not None:
        keep = keep[:series]
    dst.mkdir(parents=True, exist_ok=True)
    for f, header in headers.items():
        if str(header.SeriesInstanceUID) not in keep:
            continue
        ds = pydicom.dcmread(f)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, kw, generate_uid(entropy_srcs=[str(ds.get(kw))]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f.name, enforce_file_format=True)
    return dst
