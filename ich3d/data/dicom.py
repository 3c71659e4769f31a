"""Read one CT slice fast: the header fields the ingest needs, and pooled HU pixels.

The ingest reads every file twice, cheaply:

1. :func:`read_header` parses the header with pydicom (``specific_tags`` and a
   ``defer_size`` so the pixel data is *skipped*, not read) and decodes the raw
   bytes of the few tags it needs itself (pydicom's value conversion is the
   slow part of a header read). It records where the pixel data starts in the
   file and checks its length against ``Rows x Columns x 2`` and the file size,
   so corrupt pixel data is found before any volume is planned.
2. :func:`read_pixels` seeks to that offset and reads exactly the pixel bytes
   into a numpy view (no pydicom pixel handler), and :func:`pooled_hu` turns
   them into a 2x2 max-pooled HU image.

Pixel rule (:func:`pooled_hu`), in this order:

* values are masked to ``BitsStored`` bits (unsigned) or sign-extended
  (signed), as pydicom's ``pixel_array`` does;
* the RSNA 12-bit correction (:func:`needs_12bit_correction`): when
  ``BitsStored == 12``, ``PixelRepresentation == 0`` and
  ``RescaleIntercept > -100``, add 1000, subtract 4096 from values >= 4096 and
  use intercept -1000. It wraps values, so it is applied at full resolution;
* 2x2 in-plane **max** pooling of the stored integers. A max filter commutes
  with a positive-slope rescale, with rounding and with clipping, so pooling
  first converts only a quarter of the pixels (a negative slope pools with
  min instead). Odd sizes: the last row / column is cropped;
* ``HU = round(pixel * RescaleSlope + RescaleIntercept)`` (exact integer
  arithmetic when the slope is 1 and the intercept an integer), clipped to
  ``[HU_MIN, HU_MAX]`` = [-1024, 3071] (so -2000 / -3000 outside the field of
  view becomes air), returned as int16.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ich3d.data.schema import HU_MAX, HU_MIN

__all__ = [
    "SliceHeader",
    "SkipSlice",
    "read_header",
    "read_pixels",
    "pooled_hu",
    "pool_max_2x2",
    "needs_12bit_correction",
    "read_slice",
    "slice_normal",
    "NATIVE_TRANSFER_SYNTAXES",
    "REASON_NOT_DICOM",
    "REASON_UNREADABLE_FILE",
    "REASON_NOT_CT",
    "REASON_MISSING_TAG",
    "REASON_MISSING_POSITION",
    "REASON_UNREADABLE_PIXELS",
    "REASON_UNSUPPORTED_PIXELS",
]

#: Skip reasons decided from one file alone.
REASON_NOT_DICOM = "not DICOM"
REASON_UNREADABLE_FILE = "unreadable file"
REASON_NOT_CT = "not CT"
REASON_MISSING_TAG = "missing series, patient or size tag"
REASON_MISSING_POSITION = "missing position or orientation"
REASON_UNREADABLE_PIXELS = "unreadable pixel data"
REASON_UNSUPPORTED_PIXELS = "unsupported pixel format"

#: Uncompressed transfer syntaxes whose pixel bytes are read directly.
NATIVE_TRANSFER_SYNTAXES: dict[str, bool] = {  # UID -> little endian
    "1.2.840.10008.1.2": True,  # implicit VR little endian
    "1.2.840.10008.1.2.1": True,  # explicit VR little endian
    "1.2.840.10008.1.2.2": False,  # explicit VR big endian (retired)
}

# (group, element) tags read from the header.
_T_SOP = 0x00080018
_T_MODALITY = 0x00080060
_T_PATIENT = 0x00100020
_T_STUDY = 0x0020000D
_T_SERIES = 0x0020000E
_T_POSITION = 0x00200032
_T_ORIENTATION = 0x00200037
_T_SAMPLES = 0x00280002
_T_ROWS = 0x00280010
_T_COLUMNS = 0x00280011
_T_SPACING = 0x00280030
_T_BITS_ALLOCATED = 0x00280100
_T_BITS_STORED = 0x00280101
_T_PIXEL_REPR = 0x00280103
_T_INTERCEPT = 0x00281052
_T_SLOPE = 0x00281053
_T_PIXEL_DATA = 0x7FE00010
_TAGS = [
    _T_SOP,
    _T_MODALITY,
    _T_PATIENT,
    _T_STUDY,
    _T_SERIES,
    _T_POSITION,
    _T_ORIENTATION,
    _T_SAMPLES,
    _T_ROWS,
    _T_COLUMNS,
    _T_SPACING,
    _T_BITS_ALLOCATED,
    _T_BITS_STORED,
    _T_PIXEL_REPR,
    _T_INTERCEPT,
    _T_SLOPE,
    _T_PIXEL_DATA,
]


_SHARED: dict[tuple[float, ...], tuple[float, ...]] = {}


class SkipSlice(Exception):
    """A file that cannot become a slice; ``reason`` is the skipped.csv reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SliceHeader:
    """What the ingest needs from one slice file (the per-slice record).

    Attributes:
        path: file path as given to :func:`read_header`.
        image_id: RSNA image id: the file name without the ``.dcm`` suffix
            (the name the labels CSV uses).
        patient_id: PatientID.
        study_uid: StudyInstanceUID.
        series_uid: SeriesInstanceUID.
        position: ImagePositionPatient (x, y, z) in mm.
        orientation: ImageOrientationPatient (row cosines, column cosines).
        rows: Rows (pixels).
        columns: Columns (pixels).
        pixel_spacing: PixelSpacing of the rows (first value), mm, before pooling.
        bits_stored: BitsStored.
        signed: PixelRepresentation == 1.
        slope: RescaleSlope (1.0 when absent).
        intercept: RescaleIntercept (0.0 when absent).
        pixel_offset: byte offset of the pixel data in the file.
        little_endian: byte order of the pixel data.
    """

    path: str
    image_id: str
    patient_id: str
    study_uid: str
    series_uid: str
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

    @property
    def pixel_bytes(self) -> int:
        """Number of pixel data bytes (16 bits per pixel)."""
        return self.rows * self.columns * 2

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the stored pixels."""
        return np.dtype(("<" if self.little_endian else ">") + ("i2" if self.signed else "u2"))


def image_id_of(path: str | os.PathLike[str]) -> str:
    """RSNA image id of a file: its name without a trailing ``.dcm``."""
    name = os.path.basename(os.fspath(path))
    return name[:-4] if name.lower().endswith(".dcm") else name


def _raw_value(ds: object, tag: int) -> object:
    """The undecoded value of ``tag`` (bytes), its decoded value, or None."""
    elem = ds.get_item(tag, keep_deferred=True)  # type: ignore[attr-defined]
    if elem is None:
        return None
    return elem.value


def _text(ds: object, tag: int) -> str | None:
    value = _raw_value(ds, tag)
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("latin-1").strip(" \x00")
    else:
        text = str(value).strip()
    return text or None


def _floats(ds: object, tag: int) -> list[float] | None:
    value = _raw_value(ds, tag)
    if value is None:
        return None
    if isinstance(value, bytes):
        parts = value.decode("latin-1").strip(" \x00").split("\\")
    elif isinstance(value, (str, int, float)):
        parts = [value]
    else:
        parts = list(value)  # type: ignore[call-overload]
    try:
        out = [float(p) for p in parts if str(p).strip() != ""]
    except ValueError:
        return None
    return out or None


def _ushort(ds: object, tag: int) -> int | None:
    elem = ds.get_item(tag, keep_deferred=True)  # type: ignore[attr-defined]
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if len(value) < 2:
            return None
        return int.from_bytes(value[:2], "little" if elem.is_little_endian else "big")
    return int(value)


def read_header(path: str | os.PathLike[str], file_size: int | None = None) -> SliceHeader:
    """Read the header of one slice file without reading its pixel data.

    Args:
        path: the DICOM file.
        file_size: its size in bytes if already known (saves a ``stat``).

    Returns:
        The slice record.

    Raises:
        SkipSlice: the file cannot become a slice; ``reason`` says why (not
            DICOM, unreadable, not CT, missing tags, missing position or
            orientation, pixel data missing / of the wrong length / truncated,
            unsupported pixel format).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = os.fspath(path)
    try:
        ds = pydicom.dcmread(path, defer_size=256, specific_tags=_TAGS)
        meta = getattr(ds, "file_meta", None)
        syntax = (_text(meta, 0x00020010) or "") if meta is not None else ""
    except InvalidDicomError as exc:
        raise SkipSlice(REASON_NOT_DICOM, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is an unreadable file
        raise SkipSlice(REASON_UNREADABLE_FILE, f"{type(exc).__name__}: {exc}") from None

    try:
        modality = _text(ds, _T_MODALITY)
        if modality is None or modality.upper() != "CT":
            raise SkipSlice(REASON_NOT_CT, f"Modality {modality!r}")
        series_uid = _text(ds, _T_SERIES)
        patient_id = _text(ds, _T_PATIENT)
        rows = _ushort(ds, _T_ROWS)
        columns = _ushort(ds, _T_COLUMNS)
        if not series_uid or not patient_id or not rows or not columns:
            raise SkipSlice(REASON_MISSING_TAG)
        position = _floats(ds, _T_POSITION)
        orientation = _floats(ds, _T_ORIENTATION)
        if position is None or len(position) != 3 or orientation is None or len(orientation) != 6:
            raise SkipSlice(REASON_MISSING_POSITION)
        normal = np.cross(orientation[:3], orientation[3:])
        if not np.all(np.isfinite(position)) or not np.linalg.norm(normal) > 1e-6:
            raise SkipSlice(REASON_MISSING_POSITION, "degenerate orientation")

        samples = _ushort(ds, _T_SAMPLES) or 1
        bits_allocated = _ushort(ds, _T_BITS_ALLOCATED)
        bits_stored = _ushort(ds, _T_BITS_STORED) or bits_allocated
        pixel_repr = _ushort(ds, _T_PIXEL_REPR) or 0
        if syntax not in NATIVE_TRANSFER_SYNTAXES:
            raise SkipSlice(REASON_UNSUPPORTED_PIXELS, f"transfer syntax {syntax or '?'}")
        if samples != 1 or bits_allocated != 16 or not bits_stored or not 1 <= bits_stored <= 16:
            raise SkipSlice(
                REASON_UNSUPPORTED_PIXELS,
                f"SamplesPerPixel {samples}, BitsAllocated {bits_allocated}, BitsStored {bits_stored}",
            )
        pixel = ds.get_item(_T_PIXEL_DATA, keep_deferred=True)
        if pixel is None:
            raise SkipSlice(REASON_UNREADABLE_PIXELS, "no PixelData")
        expected = rows * columns * 2
        length = int(pixel.length)
        if length == 0xFFFFFFFF:
            raise SkipSlice(REASON_UNSUPPORTED_PIXELS, "encapsulated pixel data")
        if length not in (expected, expected + 1):
            raise SkipSlice(REASON_UNREADABLE_PIXELS, f"{length} bytes, expected {expected}")
        offset = int(pixel.value_tell)
        if file_size is None:
            file_size = os.path.getsize(path)
        if offset + expected > file_size:
            raise SkipSlice(REASON_UNREADABLE_PIXELS, "file truncated")

        spacing = _floats(ds, _T_SPACING)
        slope = _floats(ds, _T_SLOPE)
        intercept = _floats(ds, _T_INTERCEPT)
        # shared objects for what a series has in common: a pickled chunk of headers
        # from a worker then carries them once, and 750k records stay small in RAM
        orient = tuple(orientation)
        orient = _SHARED.setdefault(orient, orient)
        return SliceHeader(
            path=path,
            image_id=image_id_of(path),
            patient_id=sys.intern(patient_id),
            study_uid=sys.intern(_text(ds, _T_STUDY) or ""),
            series_uid=sys.intern(series_uid),
            position=(position[0], position[1], position[2]),
            orientation=orient,  # type: ignore[arg-type]
            rows=rows,
            columns=columns,
            pixel_spacing=spacing[0] if spacing else float("nan"),
            bits_stored=int(bits_stored),
            signed=pixel_repr == 1,
            slope=slope[0] if slope else 1.0,
            intercept=intercept[0] if intercept else 0.0,
            pixel_offset=offset,
            little_endian=NATIVE_TRANSFER_SYNTAXES[syntax],
        )
    except SkipSlice:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed tag value
        raise SkipSlice(REASON_UNREADABLE_FILE, f"{type(exc).__name__}: {exc}") from None


def read_pixels(header: SliceHeader, path: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Read the stored pixel integers of a slice (read-only view, shape (rows, columns)).

    Args:
        header: from :func:`read_header`.
        path: where the file is now (default ``header.path``).

    Raises:
        SkipSlice: fewer bytes than expected (``unreadable pixel data``).
    """
    n = header.pixel_bytes
    with open(path if path is not None else header.path, "rb") as fh:
        fh.seek(header.pixel_offset)
        buf = fh.read(n)
    if len(buf) != n:
        raise SkipSlice(REASON_UNREADABLE_PIXELS, "file truncated")
    return np.frombuffer(buf, dtype=header.dtype).reshape(header.rows, header.columns)


def needs_12bit_correction(bits_stored: int, signed: bool, intercept: float) -> bool:
    """Whether the RSNA 12-bit intercept defect correction applies to a slice."""
    return bits_stored == 12 and not signed and intercept > -100


def pool_max_2x2(a: np.ndarray) -> np.ndarray:
    """2x2 max pooling with stride 2 over the last two axes (odd last row/column cropped)."""
    h, w = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    rows = np.maximum(a[..., 0:h:2, :w], a[..., 1:h:2, :w])
    return np.maximum(rows[..., 0::2], rows[..., 1::2])


def _pool_min_2x2(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    rows = np.minimum(a[..., 0:h:2, :w], a[..., 1:h:2, :w])
    return np.minimum(rows[..., 0::2], rows[..., 1::2])


def pooled_hu(
    stored: np.ndarray,
    *,
    bits_stored: int = 16,
    signed: bool = True,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> np.ndarray:
    """Stored pixel integers of one slice -> 2x2 max-pooled, clipped HU (int16).

    See the module docstring for the rule and its order.

    Args:
        stored: (rows, columns) stored integers (int16 or uint16).
        bits_stored: BitsStored.
        signed: PixelRepresentation == 1.
        slope: RescaleSlope.
        intercept: RescaleIntercept (HU).

    Returns:
        (rows // 2, columns // 2) int16 HU in [HU_MIN, HU_MAX].
    """
    a = stored
    if bits_stored < 16:
        if signed:
            shift = 16 - bits_stored
            a = np.left_shift(a.astype(np.int16, copy=False), shift) >> shift
        else:
            a = a.astype(np.uint16, copy=False) & np.uint16((1 << bits_stored) - 1)
    if needs_12bit_correction(bits_stored, signed, intercept):
        a = a.astype(np.int32) + 1000
        a[a >= 4096] -= 4096
        intercept = -1000.0
    if slope > 0:
        p = pool_max_2x2(a)
    elif slope < 0:
        p = _pool_min_2x2(a)
    else:
        p = np.zeros((a.shape[0] // 2, a.shape[1] // 2), dtype=np.int32)
    if slope == 1.0 and float(intercept).is_integer():
        hu = p.astype(np.int32) + int(intercept)
    else:
        hu = np.rint(p * float(slope) + float(intercept))
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return hu.astype(np.int16)


def read_slice(path: str | os.PathLike[str] | Path) -> tuple[SliceHeader, np.ndarray]:
    """Read one slice file: its header and its pooled HU image (see :func:`pooled_hu`).

    Raises:
        SkipSlice: the file cannot become a slice.
    """
    header = read_header(path)
    return header, pooled_hu(
        read_pixels(header),
        bits_stored=header.bits_stored,
        signed=header.signed,
        slope=header.slope,
        intercept=header.intercept,
    )


def slice_normal(orientation: tuple[float, ...] | list[float]) -> np.ndarray:
    """Unit normal of a slice: cross product of the row and column direction cosines."""
    n = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float))
    return n / np.linalg.norm(n)
