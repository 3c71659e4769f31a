"""Read one CT image file fast: the header fields the ingest needs, and pooled HU pixels.

The ingest reads every file twice, cheaply:

1. :func:`read_headers` parses the header with pydicom (``specific_tags`` and a
   ``defer_size`` so the pixel data is *skipped*, not read) and decodes the raw
   bytes of the few tags it needs itself (pydicom's value conversion is the
   slow part of a header read). The common file (preamble, explicit VR little
   endian file meta, an implicit / explicit VR little endian data set of
   defined-length elements without sequences, native pixel data last: every
   RSNA file) is parsed from its first 16 KiB directly instead, about 4x
   cheaper than ``dcmread``, into the same raw bytes; any other file goes
   through pydicom (tests/test_ingest_planning.py pins that both agree, on
   truncated and altered files too). For a native (uncompressed) transfer syntax it
   records where the pixel data starts in the file and checks its length
   against ``Rows x Columns x 2 (x frames)`` and the file size, so corrupt
   pixel data is found before any volume is planned. An Enhanced (multi-frame)
   CT file gives one header per frame, from its per-frame functional groups.
2. :func:`read_pixels` turns a header into the stored pixel integers:
   native syntaxes seek to the recorded offset and read exactly the pixel bytes
   into a numpy view (no pydicom pixel handler: the fast path); every other
   syntax pydicom 3 can decode (Deflate, RLE, JPEG Lossless .57/.70, JPEG-LS,
   JPEG 2000, HTJ2K, lossy JPEG) goes through ``pydicom.pixels.pixel_array``
   and its decoder plugins (:data:`DECODER_PACKAGES`). :func:`pooled_hu` turns
   the stored integers into a 2x2 max-pooled HU image.

Per-file rules (each a :class:`SkipSlice` reason):

* a file pydicom cannot read as DICOM, even with ``force=True`` (files without
  the 128-byte preamble / file meta are read, and need a Modality or
  SOPClassUID to count as DICOM), is *not DICOM*; a DICOMDIR is *DICOMDIR*;
* ``ImageType`` containing ``LOCALIZER`` is a *localizer (scout) image*;
* a compressed syntax with no decoder installed is *no decoder for transfer
  syntax*, and the detail names the syntax and the package to install;
* text tags are decoded with the file's ``SpecificCharacterSet`` (default
  ISO 646 / Latin-1 superset, as pydicom does);
* without a PatientID the StudyInstanceUID stands in for the patient
  (``patient_id = "study:<StudyInstanceUID>"``, ``patient_from_study``), so
  patient-level splits stay leak-free where PatientIDs exist.

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

import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ich3d.data.schema import HU_MAX, HU_MIN, PATIENT_FROM_STUDY_PREFIX

__all__ = [
    "SliceHeader",
    "SkipSlice",
    "read_header",
    "read_headers",
    "read_pixels",
    "decode_frames",
    "pooled_hu",
    "pool_max_2x2",
    "needs_12bit_correction",
    "read_slice",
    "slice_normal",
    "superior_normal",
    "image_id_of",
    "is_lossy",
    "NATIVE_TRANSFER_SYNTAXES",
    "DECODER_PACKAGES",
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

#: Uncompressed transfer syntaxes whose pixel bytes are read directly.
NATIVE_TRANSFER_SYNTAXES: dict[str, bool] = {  # UID -> little endian
    "1.2.840.10008.1.2": True,  # implicit VR little endian
    "1.2.840.10008.1.2.1": True,  # explicit VR little endian
    "1.2.840.10008.1.2.2": False,  # explicit VR big endian (retired)
}

#: Transfer syntaxes decoded by pydicom's pixel handlers -> (name, the package(s) that decode it).
DECODER_PACKAGES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.1.99": ("Deflated Explicit VR Little Endian", "built into pydicom"),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "built into pydicom (pylibjpeg-rle is faster)"),
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline (lossy)", "python-gdcm or pillow"),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended (lossy)", "python-gdcm or pillow"),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", "python-gdcm (or pylibjpeg-libjpeg, GPLv3)"),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless SV1", "python-gdcm (or pylibjpeg-libjpeg, GPLv3)"),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", "pyjpegls or python-gdcm"),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near-Lossless", "pyjpegls or python-gdcm"),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", "pylibjpeg-openjpeg or python-gdcm"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", "pylibjpeg-openjpeg or python-gdcm"),
    "1.2.840.10008.1.2.4.201": ("HTJ2K Lossless", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.202": ("HTJ2K Lossless RPCL", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", "pylibjpeg-openjpeg"),
}

#: Syntaxes that are always lossy (JPEG 2000 .91 and HTJ2K .203 may be either: the
#: ``LossyImageCompression`` tag decides, "01" = lossy, absent = lossy).
_LOSSY_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81"}
)
_MAYBE_LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})
_DEFLATED = "1.2.840.10008.1.2.1.99"
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

# (group, element) tags read from the header.
_T_CHARSET = 0x00080005
_T_IMAGE_TYPE = 0x00080008
_T_SOP_CLASS = 0x00080016
_T_SOP = 0x00080018
_T_ACCESSION = 0x00080050
_T_MODALITY = 0x00080060
_T_PATIENT = 0x00100020
_T_THICKNESS = 0x00180050
_T_KERNEL = 0x00181210
_T_STUDY = 0x0020000D
_T_SERIES = 0x0020000E
_T_POSITION = 0x00200032
_T_ORIENTATION = 0x00200037
_T_SAMPLES = 0x00280002
_T_FRAMES = 0x00280008
_T_ROWS = 0x00280010
_T_COLUMNS = 0x00280011
_T_SPACING = 0x00280030
_T_BITS_ALLOCATED = 0x00280100
_T_BITS_STORED = 0x00280101
_T_PIXEL_REPR = 0x00280103
_T_INTERCEPT = 0x00281052
_T_SLOPE = 0x00281053
_T_LOSSY = 0x00282110
_T_SHARED_GROUPS = 0x52009229
_T_FRAME_GROUPS = 0x52009230
_T_PIXEL_DATA = 0x7FE00010
_TAGS = [
    _T_CHARSET,
    _T_IMAGE_TYPE,
    _T_SOP_CLASS,
    _T_SOP,
    _T_ACCESSION,
    _T_MODALITY,
    _T_PATIENT,
    _T_THICKNESS,
    _T_KERNEL,
    _T_STUDY,
    _T_SERIES,
    _T_POSITION,
    _T_ORIENTATION,
    _T_SAMPLES,
    _T_FRAMES,
    _T_ROWS,
    _T_COLUMNS,
    _T_SPACING,
    _T_BITS_ALLOCATED,
    _T_BITS_STORED,
    _T_PIXEL_REPR,
    _T_INTERCEPT,
    _T_SLOPE,
    _T_LOSSY,
    _T_SHARED_GROUPS,
    _T_FRAME_GROUPS,
    _T_PIXEL_DATA,
]


_SHARED: dict[tuple[float, ...], tuple[float, ...]] = {}
_DECODER_OK: dict[str, bool] = {}
_TAG_OBJECTS: list[Any] | None = None


class SkipSlice(Exception):
    """A file that cannot become a slice; ``reason`` is the skipped.csv reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
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


def _decoder_available(syntax: str) -> bool:
    ok = _DECODER_OK.get(syntax)
    if ok is None:
        from pydicom.pixels import get_decoder

        try:
            ok = bool(get_decoder(syntax).is_available)
        except NotImplementedError:
            ok = False
        _DECODER_OK[syntax] = ok
    return ok


def _raw_value(ds: Any, tag: int) -> object:
    """The undecoded value of ``tag`` (bytes), its decoded value, or None."""
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return None
    return elem.value


def _text(ds: Any, tag: int, encodings: list[str] | None = None) -> str | None:
    value = _raw_value(ds, tag)
    if value is None:
        return None
    if isinstance(value, bytes):
        if encodings:
            from pydicom.charset import decode_bytes

            text = decode_bytes(value, encodings, set()).strip(" \x00")
        else:
            text = value.decode("latin-1").strip(" \x00")
    else:
        text = str(value).strip()
    return text or None


def _strings(ds: Any, tag: int) -> list[str]:
    text = _text(ds, tag)
    return [p.strip() for p in text.split("\\")] if text else []


def _floats(ds: Any, tag: int) -> list[float] | None:
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


def _ushort(ds: Any, tag: int) -> int | None:
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if len(value) < 2:
            return None
        return int.from_bytes(value[:2], "little" if elem.is_little_endian else "big")
    return int(value)


def _int_text(ds: Any, tag: int) -> int | None:
    value = _floats(ds, tag)
    return int(value[0]) if value else None


def _encodings(ds: Any) -> list[str] | None:
    names = _strings(ds, _T_CHARSET)
    if not names:
        return None
    from pydicom.charset import convert_encodings

    return convert_encodings(names)


def _tag_list() -> list[Any]:
    """``_TAGS`` as pydicom ``BaseTag`` objects, made once (pydicom converts ints per read)."""
    global _TAG_OBJECTS
    if _TAG_OBJECTS is None:
        from pydicom.tag import BaseTag

        _TAG_OBJECTS = [BaseTag(t) for t in _TAGS]
    return _TAG_OBJECTS


class _RawElement:
    """A header element as the fast path reads it: what ``RawDataElement`` offers here."""

    __slots__ = ("value", "length", "value_tell")
    is_little_endian = True

    def __init__(self, value: bytes | None, length: int, value_tell: int) -> None:
        self.value = value
        self.length = length
        self.value_tell = value_tell


class _RawHeader(dict):
    """tag -> :class:`_RawElement`; the ``get_item`` of a pydicom dataset, for the fast path."""

    def get_item(self, tag: int, keep_deferred: bool = False) -> _RawElement | None:
        return self.get(tag)


_FAST_SYNTAXES = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # -> implicit VR
_FAST_BYTES = 16384  # a header longer than this (before the pixel data) goes to pydicom
_EXPLICIT_VRS: frozenset[bytes] | None = None
_LONG_VRS: frozenset[bytes] = frozenset()
_STRUCT_TAG = struct.Struct("<HHI")  # implicit: group, element, 32-bit length
_STRUCT_EXPLICIT = struct.Struct("<HH2sH")  # explicit: group, element, VR, 16-bit length
_STRUCT_U32 = struct.Struct("<I")
_WANTED = frozenset(_TAGS) | {_T_CHARSET}
#: tags that send a file to pydicom (multi-frame: its functional groups are sequences)
_FAST_DECLINE = frozenset({_T_FRAMES, _T_SHARED_GROUPS, _T_FRAME_GROUPS})


def _vr_sets() -> tuple[frozenset[bytes], frozenset[bytes]]:
    global _EXPLICIT_VRS, _LONG_VRS
    if _EXPLICIT_VRS is None:
        from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

        _EXPLICIT_VRS = frozenset(v.encode() for v in VR)
        _LONG_VRS = frozenset(v.encode() for v in EXPLICIT_VR_LENGTH_32)
    return _EXPLICIT_VRS, _LONG_VRS


def _fast_dataset(path: str, file_size: int | None) -> tuple[_RawHeader, _RawHeader, str] | None:
    """The header of a plain native file read straight from its bytes, or None.

    Reads what ``pydicom.dcmread(path, defer_size=256, specific_tags=_TAGS)`` would
    (the same raw bytes, lengths and value offsets) for the common case only: a
    128-byte preamble and ``DICM``, explicit VR little endian file meta, an implicit
    or explicit VR little endian dataset of defined-length elements (no sequence, no
    group 0000, no multi-frame tag) ending with native pixel data that ends the file.
    Everything else returns None and goes through pydicom, so both give the same
    headers (pinned by tests/test_ingest_planning.py).

    Returns:
        (file meta, dataset, transfer syntax) or None.
    """
    explicit_vrs, long_vrs = _vr_sets()
    try:
        with open(path, "rb") as fh:
            buf = fh.read(_FAST_BYTES)
    except OSError:
        return None
    n = len(buf)
    if n < 144 or buf[128:132] != b"DICM":
        return None
    explicit = _STRUCT_EXPLICIT.unpack_from
    u32 = _STRUCT_U32.unpack_from
    # file meta: explicit VR little endian, group 0002 (the syntax and the SOP class kept)
    meta = _RawHeader()
    pos = 132
    while pos + 8 <= n:
        group, elem, vr, length = explicit(buf, pos)
        if group != 2:
            break
        if vr not in explicit_vrs:
            return None
        pos += 8
        if vr in long_vrs:
            if pos + 4 > n:
                return None
            length = u32(buf, pos)[0]
            pos += 4
        if length == 0xFFFFFFFF or pos + length > n:
            return None
        if elem == 0x0010 or elem == 0x0002:
            meta[0x00020000 | elem] = _RawElement(buf[pos : pos + length], length, pos)
        pos += length
    else:
        return None
    syntax_elem = meta.get(0x00020010)
    if syntax_elem is None or syntax_elem.value is None:
        return None
    syntax = syntax_elem.value.decode("latin-1").strip(" \x00")
    implicit = _FAST_SYNTAXES.get(syntax)
    if implicit is None or pos + 6 > n:
        return None
    b0, b1 = buf[pos + 4], buf[pos + 5]
    if (not (0x40 < b0 < 0x5B and 0x40 < b1 < 0x5B)) != implicit:
        return None  # the dataset's encoding is not the syntax's: pydicom's switch rules
    ds = _RawHeader()
    implicit_tag = _STRUCT_TAG.unpack_from
    wanted, decline = _WANTED, _FAST_DECLINE
    while True:
        if pos + 8 > n:
            return None
        if implicit:
            group, elem, length = implicit_tag(buf, pos)
            pos += 8
        else:
            group, elem, vr, length = explicit(buf, pos)
            pos += 8
            if vr not in explicit_vrs or vr == b"SQ":
                return None
            if vr in long_vrs:
                if pos + 4 > n:
                    return None
                length = u32(buf, pos)[0]
                pos += 4
        tag = group << 16 | elem
        if length == 0xFFFFFFFF or group == 0 or tag in decline:
            return None
        if tag == _T_PIXEL_DATA:
            size = file_size if file_size is not None else os.path.getsize(path)
            if pos + length < size:
                return None  # something after the pixel data: pydicom reads it
            ds[tag] = _RawElement(None, length, pos)
            return meta, ds, syntax
        if tag in wanted:
            if length > 256 and tag != _T_CHARSET:
                ds[tag] = _RawElement(None, length, pos)  # deferred, as pydicom's defer_size
            else:
                if pos + length > n:
                    return None
                ds[tag] = _RawElement(buf[pos : pos + length], length, pos)
        pos += length


def _read_dataset(path: str, file_size: int | None = None) -> tuple[Any, str]:
    """Parse the header (pixel data deferred): (dataset, transfer syntax or "")."""
    fast = _fast_dataset(path, file_size)
    if fast is not None:
        meta, ds, syntax = fast
        sop_class = _text(meta, 0x00020002) or ""
        if sop_class == _DICOMDIR_CLASS or os.path.basename(path).upper() == "DICOMDIR":
            raise SkipSlice(REASON_DICOMDIR)
        return ds, syntax
    return _pydicom_dataset(path)


def _pydicom_dataset(path: str) -> tuple[Any, str]:
    """:func:`_read_dataset` with pydicom (the reference; every file the fast path declines)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path, defer_size=256, specific_tags=_tag_list())
        except InvalidDicomError as exc:
            # no 128-byte preamble / file meta: pydicom reads it with force=True; it counts as
            # DICOM when it then holds a Modality or a SOPClassUID
            try:
                ds = pydicom.dcmread(path, defer_size=256, specific_tags=_tag_list(), force=True)
            except Exception:  # noqa: BLE001 - not parseable at all
                raise SkipSlice(REASON_NOT_DICOM, str(exc)) from None
            if ds.get_item(_T_MODALITY) is None and ds.get_item(_T_SOP_CLASS) is None:
                raise SkipSlice(REASON_NOT_DICOM, str(exc)) from None
        meta = getattr(ds, "file_meta", None)
        syntax = (_text(meta, 0x00020010) or "") if meta is not None else ""
        sop_class = (_text(meta, 0x00020002) or "") if meta is not None else ""
    except SkipSlice:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is an unreadable file
        raise SkipSlice(REASON_UNREADABLE_FILE, f"{type(exc).__name__}: {exc}") from None
    if sop_class == _DICOMDIR_CLASS or os.path.basename(path).upper() == "DICOMDIR":
        raise SkipSlice(REASON_DICOMDIR)
    return ds, syntax


def read_header(path: str | os.PathLike[str], file_size: int | None = None) -> SliceHeader:
    """Read the header of one single-frame slice file without reading its pixel data.

    Args:
        path: the DICOM file.
        file_size: its size in bytes if already known (saves a ``stat``).

    Returns:
        The slice record.

    Raises:
        SkipSlice: the file cannot become a slice (see :func:`read_headers`).
        ValueError: a multi-frame file (use :func:`read_headers`).
    """
    headers = read_headers(path, file_size)
    if len(headers) != 1:
        raise ValueError(f"{path} holds {len(headers)} frames; use read_headers()")
    return headers[0]


def read_headers(path: str | os.PathLike[str], file_size: int | None = None) -> list[SliceHeader]:
    """Read the header(s) of one image file without reading its pixel data.

    Args:
        path: the DICOM file.
        file_size: its size in bytes if already known (saves a ``stat``).

    Returns:
        One slice record for a single-frame file; one per frame (``frame`` 1..N, in
        file order) for a multi-frame file.

    Raises:
        SkipSlice: the file cannot become a slice; ``reason`` says why (not DICOM,
            DICOMDIR, unreadable, not CT, localizer, missing tags, missing position or
            orientation, multi-frame without per-frame geometry, pixel data missing /
            of the wrong length / truncated, unsupported pixel format, no decoder).
    """
    path = os.fspath(path)
    ds, syntax = _read_dataset(path, file_size)
    try:
        return _headers(ds, path, syntax, file_size)
    except SkipSlice:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed tag value
        raise SkipSlice(REASON_UNREADABLE_FILE, f"{type(exc).__name__}: {exc}") from None


def _headers(ds: Any, path: str, syntax: str, file_size: int | None) -> list[SliceHeader]:
    modality = _text(ds, _T_MODALITY)
    if modality is None or modality.upper() != "CT":
        raise SkipSlice(REASON_NOT_CT, f"Modality {modality!r}")
    if "LOCALIZER" in (s.upper() for s in _strings(ds, _T_IMAGE_TYPE)):
        raise SkipSlice(REASON_LOCALIZER, "ImageType " + "\\".join(_strings(ds, _T_IMAGE_TYPE)))
    encodings = _encodings(ds)
    series_uid = _text(ds, _T_SERIES)
    study_uid = _text(ds, _T_STUDY) or ""
    patient_id = _text(ds, _T_PATIENT, encodings)
    rows = _ushort(ds, _T_ROWS)
    columns = _ushort(ds, _T_COLUMNS)
    if not series_uid or not rows or not columns:
        raise SkipSlice(REASON_MISSING_TAG, "SeriesInstanceUID, Rows or Columns")
    from_study = not patient_id
    if from_study:
        if not study_uid:
            raise SkipSlice(REASON_MISSING_TAG, "neither PatientID nor StudyInstanceUID")
        patient_id = PATIENT_FROM_STUDY_PREFIX + study_uid

    # pixel format
    samples = _ushort(ds, _T_SAMPLES) or 1
    bits_allocated = _ushort(ds, _T_BITS_ALLOCATED)
    bits_stored = _ushort(ds, _T_BITS_STORED) or bits_allocated
    pixel_repr = _ushort(ds, _T_PIXEL_REPR) or 0
    if samples != 1 or bits_allocated != 16 or not bits_stored or not 1 <= bits_stored <= 16:
        raise SkipSlice(
            REASON_UNSUPPORTED_PIXELS,
            f"SamplesPerPixel {samples}, BitsAllocated {bits_allocated}, BitsStored {bits_stored}",
        )
    n_frames = max(1, _int_text(ds, _T_FRAMES) or 1)
    pixel = ds.get_item(_T_PIXEL_DATA, keep_deferred=True)
    if pixel is None:
        raise SkipSlice(REASON_UNREADABLE_PIXELS, "no PixelData")
    if not syntax:  # no file meta: the encoding pydicom found (implicit / explicit VR)
        little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
        syntax_native: bool | None = little
    else:
        syntax_native = NATIVE_TRANSFER_SYNTAXES.get(syntax)
    offset = -1
    length = int(pixel.length)
    if syntax_native is not None:
        expected = rows * columns * 2 * n_frames
        if length == 0xFFFFFFFF:
            raise SkipSlice(REASON_UNSUPPORTED_PIXELS, "encapsulated pixel data in a native syntax")
        if length not in (expected, expected + 1):
            raise SkipSlice(REASON_UNREADABLE_PIXELS, f"{length} bytes, expected {expected}")
        offset = int(pixel.value_tell)
        if file_size is None:
            file_size = os.path.getsize(path)
        if offset + expected > file_size:
            raise SkipSlice(REASON_UNREADABLE_PIXELS, "file truncated")
    elif syntax in DECODER_PACKAGES:
        if not _decoder_available(syntax):
            name, package = DECODER_PACKAGES[syntax]
            raise SkipSlice(REASON_NO_DECODER, f"{name} ({syntax}): install {package}")
        if syntax != _DEFLATED and length != 0xFFFFFFFF:
            raise SkipSlice(REASON_UNREADABLE_PIXELS, "compressed pixel data not encapsulated")
    else:
        raise SkipSlice(REASON_UNSUPPORTED_PIXELS, f"transfer syntax {syntax}")
    lossy = is_lossy(syntax, _text(ds, _T_LOSSY))

    common = dict(
        path=path,
        patient_id=sys.intern(patient_id),
        study_uid=sys.intern(study_uid),
        series_uid=sys.intern(series_uid),
        sop_uid=_text(ds, _T_SOP) or "",
        accession=_text(ds, _T_ACCESSION, encodings) or "",
        rows=rows,
        columns=columns,
        bits_stored=int(bits_stored),
        signed=pixel_repr == 1,
        pixel_offset=offset,
        little_endian=bool(syntax_native) if syntax_native is not None else True,
        transfer_syntax=syntax,
        lossy=lossy,
        n_frames=n_frames,
        kernel=sys.intern(" ".join(_strings(ds, _T_KERNEL))),
        patient_from_study=from_study,
    )
    base_id = image_id_of(path)
    if n_frames > 1 or ds.get_item(_T_FRAME_GROUPS) is not None:
        return _frame_headers(ds, base_id, n_frames, common)

    position = _floats(ds, _T_POSITION)
    orientation = _floats(ds, _T_ORIENTATION)
    _check_geometry(position, orientation, "")
    spacing = _floats(ds, _T_SPACING)
    slope = _floats(ds, _T_SLOPE)
    intercept = _floats(ds, _T_INTERCEPT)
    thickness = _floats(ds, _T_THICKNESS)
    # shared objects for what a series has in common: a pickled chunk of headers
    # from a worker then carries them once, and 750k records stay small in RAM
    orient = tuple(orientation)  # type: ignore[arg-type]
    orient = _SHARED.setdefault(orient, orient)
    return [
        SliceHeader(
            image_id=base_id,
            position=(position[0], position[1], position[2]),  # type: ignore[index]
            orientation=orient,  # type: ignore[arg-type]
            pixel_spacing=spacing[0] if spacing else float("nan"),
            slope=slope[0] if slope else 1.0,
            intercept=intercept[0] if intercept else 0.0,
            thickness=thickness[0] if thickness else float("nan"),
            **common,  # type: ignore[arg-type]
        )
    ]


def _check_geometry(
    position: list[float] | None, orientation: list[float] | None, where: str
) -> None:
    reason = REASON_MULTIFRAME if where else REASON_MISSING_POSITION
    if position is None or len(position) != 3 or orientation is None or len(orientation) != 6:
        raise SkipSlice(reason, f"{where}no ImagePositionPatient / ImageOrientationPatient")
    a, b = orientation[:3], orientation[3:]
    normal = (  # a plain cross product: np.cross costs more than the rest of this check
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    )
    norm = math.sqrt(sum(c * c for c in normal))
    if not all(math.isfinite(p) for p in position) or not norm > 1e-6:
        raise SkipSlice(reason, f"{where}degenerate orientation")


def _group_value(items: list[Any], sequence: str, keyword: str) -> Any:
    """The first ``keyword`` found in ``sequence[0]`` of the functional group items given."""
    for item in items:
        if item is None:
            continue
        seq = item.get(sequence)
        if seq is not None and len(seq) and keyword in seq[0]:
            value = seq[0].get(keyword)
            if value is not None and value != "":
                return value
    return None


def _frame_headers(
    ds: Any, base_id: str, n_frames: int, common: dict[str, Any]
) -> list[SliceHeader]:
    """Enhanced (multi-frame) CT: one header per frame from the functional groups."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq is not None and len(shared_seq) else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        got = 0 if per_frame is None else len(per_frame)
        raise SkipSlice(
            REASON_MULTIFRAME, f"{n_frames} frames, {got} PerFrameFunctionalGroupsSequence items"
        )
    top_slope = _floats(ds, _T_SLOPE)
    top_intercept = _floats(ds, _T_INTERCEPT)
    out: list[SliceHeader] = []
    for i, item in enumerate(per_frame):
        groups = [item, shared]
        pos = _group_value(groups, "PlanePositionSequence", "ImagePositionPatient")
        ori = _group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        position = [float(v) for v in pos] if pos is not None else None
        orientation = [float(v) for v in ori] if ori is not None else None
        _check_geometry(position, orientation, f"frame {i + 1}: ")
        spacing = _group_value(groups, "PixelMeasuresSequence", "PixelSpacing")
        thickness = _group_value(groups, "PixelMeasuresSequence", "SliceThickness")
        slope = _group_value(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _group_value(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is None:
            slope = top_slope[0] if top_slope else 1.0
        if intercept is None:
            intercept = top_intercept[0] if top_intercept else 0.0
        orient = tuple(orientation)  # type: ignore[arg-type]
        orient = _SHARED.setdefault(orient, orient)
        out.append(
            SliceHeader(
                image_id=f"{base_id}#{i + 1}",
                position=(position[0], position[1], position[2]),  # type: ignore[index]
                orientation=orient,  # type: ignore[arg-type]
                pixel_spacing=float(spacing[0]) if spacing is not None else float("nan"),
                slope=float(slope),
                intercept=float(intercept),
                thickness=float(thickness) if thickness is not None else float("nan"),
                frame=i + 1,
                **common,  # type: ignore[arg-type]
            )
        )
    return out


def decode_frames(path: str | os.PathLike[str], transfer_syntax: str | None = None) -> np.ndarray:
    """Decode the pixel data of a file with pydicom's pixel handlers (any installed plugin).

    Args:
        path: the file.
        transfer_syntax: its TransferSyntaxUID if known (else read from the file meta).

    Returns:
        (rows, columns) for a single-frame file, (frames, rows, columns) otherwise:
        the stored integers, as ``Dataset.pixel_array`` gives them.

    Raises:
        SkipSlice: the decoder failed (``unreadable pixel data``, with its message).
    """
    import pydicom
    from pydicom.pixels import pixel_array

    try:
        if transfer_syntax is None:
            meta = pydicom.dcmread(os.fspath(path), stop_before_pixels=True).file_meta
            transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
        if transfer_syntax == _DEFLATED:  # pixel_array(path) cannot inflate: read it all
            return pydicom.dcmread(os.fspath(path)).pixel_array
        return pixel_array(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - corrupt stream, decoder error
        raise SkipSlice(REASON_UNREADABLE_PIXELS, f"{type(exc).__name__}: {exc}") from None


def read_pixels(
    header: SliceHeader,
    path: str | os.PathLike[str] | None = None,
    decoded: np.ndarray | None = None,
) -> np.ndarray:
    """Read the stored pixel integers of a slice (shape (rows, columns)).

    Native syntaxes: seek + read of exactly the slice's bytes (a read-only view).
    Others: :func:`decode_frames` (pass ``decoded``, its result for this file, to
    reuse one decode for every frame of a multi-frame file).

    Args:
        header: from :func:`read_headers`.
        path: where the file is now (default ``header.path``).
        decoded: :func:`decode_frames` of the file, if already done.

    Raises:
        SkipSlice: fewer bytes than expected, a decoder failure or a decoded size that
            does not match the header (``unreadable pixel data``).
    """
    src = path if path is not None else header.path
    if header.native:
        n = header.pixel_bytes
        with open(src, "rb") as fh:
            fh.seek(header.pixel_offset + max(0, header.frame - 1) * n)
            buf = fh.read(n)
        if len(buf) != n:
            raise SkipSlice(REASON_UNREADABLE_PIXELS, "file truncated")
        return np.frombuffer(buf, dtype=header.dtype).reshape(header.rows, header.columns)
    arr = decoded if decoded is not None else decode_frames(src, header.transfer_syntax)
    if header.n_frames > 1:
        if arr.ndim != 3 or arr.shape[0] < header.frame:
            raise SkipSlice(REASON_UNREADABLE_PIXELS, f"decoded shape {arr.shape}")
        arr = arr[header.frame - 1]
    if arr.shape != (header.rows, header.columns):
        raise SkipSlice(REASON_UNREADABLE_PIXELS, f"decoded shape {arr.shape}")
    return arr


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
        ValueError: a multi-frame file.
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
    """Unit normal of a slice: cross product of the row and column direction cosines.

    The cross product in plain floats (the same IEEE operations as ``np.cross``,
    which costs ~10x more on one vector) divided by ``sqrt(n . n)``, as
    ``np.linalg.norm`` computes it: bit for bit the values of
    ``np.cross(a, b) / np.linalg.norm(np.cross(a, b))``.
    """
    a0, a1, a2, b0, b1, b2 = (float(v) for v in orientation[:6])
    n = np.array((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0))
    return n / math.sqrt(n.dot(n))


def superior_normal(orientation: tuple[float, ...] | list[float]) -> np.ndarray:
    """Unit slice normal with its sign chosen so the volume runs foot -> head.

    The sign is chosen so the superior (patient +z in DICOM LPS) component is
    positive; for a normal without a z component (a pure sagittal or coronal
    stack) its largest-magnitude component is made positive instead (left or
    posterior). Projections of ImagePositionPatient on it then ascend from the
    feet to the head whatever the stored row / column cosines.
    """
    n = slice_normal(orientation)
    if abs(n[2]) > 1e-6:
        return n if n[2] > 0 else -n
    k = int(np.argmax(np.abs(n)))
    return n if n[k] > 0 else -n
