"""What one slice is (:class:`SliceHeader`), why a file is skipped, and the syntax tables."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SliceHeader",
    "SkipSlice",
    "image_id_of",
    "is_lossy",
    "NATIVE_TRANSFER_SYNTAXES",
    "DEFLATED",
    "DICOMDIR_CLASS",
    "REASON_NOT_DICOM",
    "REASON_DICOMDIR",
    "REASON_UNREADABLE_FILE",
    "REASON_NOT_CT",
    "REASON_LOCALIZER",
    "REASON_MISSING_TAG",
    "REASON_MISSING_POSITION",
    "REASON_MULTIFRAME",
    "REASON_UNREADABLE_PIXELS",
    "REASON_UNSUPPORTED_PIXELS",
    "REASON_NO_DECODER",
    "REASON_BAD_RESCALE",
    "REASON_BAD_GEOMETRY",
]

#: Skip reasons decided from one file alone.
REASON_NOT_DICOM = "not DICOM"
REASON_DICOMDIR = "DICOMDIR (media directory, no image)"
REASON_UNREADABLE_FILE = "unreadable file"
REASON_NOT_CT = "not CT"
REASON_LOCALIZER = "localizer (scout) image"
REASON_MISSING_TAG = "missing series or size tag"
REASON_MISSING_POSITION = "missing position or orientation"
REASON_MULTIFRAME = "multi-frame file without usable per-frame geometry"
REASON_UNREADABLE_PIXELS = "unreadable pixel data"
REASON_UNSUPPORTED_PIXELS = "unsupported pixel format"
REASON_NO_DECODER = "no decoder for transfer syntax"
REASON_BAD_RESCALE = "unusable rescale slope or intercept"
REASON_BAD_GEOMETRY = "unusable geometry"

#: Uncompressed transfer syntaxes whose pixel bytes are read directly.
NATIVE_TRANSFER_SYNTAXES: dict[str, bool] = {  # UID -> little endian
    "1.2.840.10008.1.2": True,  # implicit VR little endian
    "1.2.840.10008.1.2.1": True,  # explicit VR little endian
    "1.2.840.10008.1.2.2": False,  # explicit VR big endian (retired)
}

#: Syntaxes that are always lossy (JPEG 2000 .91 and HTJ2K .203 may be either: the
#: ``LossyImageCompression`` tag decides, "01" = lossy, absent = lossy).
_LOSSY_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81"}
)
_MAYBE_LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})
DEFLATED = "1.2.840.10008.1.2.1.99"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


class SkipSlice(Exception):
    """A file that cannot become a slice; ``reason`` is the skipped.csv reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        detail = " ".join(str(detail).split())  # one line in skipped.csv, whatever was said
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SliceHeader:
    """What the ingest needs from one slice (one file, or one frame of a multi-frame file).

    Attributes:
        path: file path as given to :func:`read_headers`.
        image_id: the file name without a ``.dcm`` suffix (RSNA's image id, the name its
            labels CSV uses); ``<name>#<frame>`` for a frame of a multi-frame file. The
            ingest replaces it where names repeat in the input (see ``ich3d.data.ingest``).
        patient_id: PatientID, or ``study:<StudyInstanceUID>`` without one.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        sop_uid: SOPInstanceUID ("" when absent).
        accession: AccessionNumber ("" when absent).
        position: ImagePositionPatient (x, y, z) in mm.
        orientation: ImageOrientationPatient (row cosines, column cosines).
        rows: Rows (pixels).
        columns: Columns (pixels).
        pixel_spacing: PixelSpacing of the rows (first value), mm, before pooling.
        bits_stored: BitsStored.
        signed: PixelRepresentation == 1.
        slope: RescaleSlope (1.0 when absent).
        intercept: RescaleIntercept (0.0 when absent).
        pixel_offset: byte offset of the pixel data in the file (of frame 1 in a
            multi-frame file); -1 when pydicom decodes it (compressed or deflated).
        little_endian: byte order of native pixel data.
        transfer_syntax: TransferSyntaxUID ("" for a file without file meta).
        lossy: lossy compression (syntax or ``LossyImageCompression == "01"``).
        frame: 1-based frame number in a multi-frame file; 0 for a single-frame file.
        n_frames: frames in the file (1 for a single-frame file).
        thickness: SliceThickness in mm (NaN when absent).
        kernel: ConvolutionKernel ("" when absent).
        patient_from_study: True when the file has no PatientID.
    """

    path: str
    image_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    accession: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    rows: int
    columns: int
    pixel_spacing: float
    bits_stored: int
    signed: bool
    slope: float
    intercept: float
    pixel_offset: int
    little_endian: bool
    transfer_syntax: str = ""
    lossy: bool = False
    frame: int = 0
    n_frames: int = 1
    thickness: float = float("nan")
    kernel: str = ""
    patient_from_study: bool = False

    @property
    def pixel_bytes(self) -> int:
        """Number of pixel data bytes of one frame (16 bits per pixel)."""
        return self.rows * self.columns * 2

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the stored pixels."""
        return np.dtype(("<" if self.little_endian else ">") + ("i2" if self.signed else "u2"))

    @property
    def native(self) -> bool:
        """True when the pixel bytes are read directly (no decoder)."""
        return self.pixel_offset >= 0


def image_id_of(path: str | os.PathLike[str]) -> str:
    """RSNA image id of a file: its name without a trailing ``.dcm``."""
    name = os.path.basename(os.fspath(path))
    return name[:-4] if name.lower().endswith(".dcm") else name


def is_lossy(transfer_syntax: str, lossy_tag: str | None) -> bool:
    """Whether pixel data in ``transfer_syntax`` with ``LossyImageCompression`` is lossy."""
    if lossy_tag is not None and lossy_tag.strip() == "01":
        return True
    if transfer_syntax in _LOSSY_SYNTAXES:
        return True
    if transfer_syntax in _MAYBE_LOSSY_SYNTAXES:
        return (lossy_tag or "").strip() != "00"
    return False
