"""DICOM Part 10 files written by hand, byte for byte (explicit VR little endian).

Files follow the tag set of the RSNA files (SOPInstanceUID, Modality,
PatientID, StudyInstanceUID, SeriesInstanceUID, StudyID, ImagePositionPatient,
ImageOrientationPatient, SamplesPerPixel, PhotometricInterpretation, Rows,
Columns, PixelSpacing, BitsAllocated, BitsStored, HighBit,
PixelRepresentation, WindowCenter, WindowWidth, RescaleIntercept,
RescaleSlope, PixelData) plus SOPClassUID and a file meta header, so pydicom
and SimpleITK/GDCM read them.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = [
    "CT_IMAGE_STORAGE",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION",
    "encode_file",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: fixed implementation UID (pydicom's root) so bytes do not depend on the pydicom version
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.7167351"
IMPLEMENTATION_VERSION = "ICH3D_SYNTH_1"


def _ds(v: float) -> str:
    v = float(v) + 0.0  # no "-0.000000"
    s = f"{v:.6f}"
    if s == "-0.000000":
        s = "0.000000"
    if len(s) > 16:
        s = f"{v:.{max(0, 16 - len(str(int(v))) - 2)}f}"
    return s


_LONG_VRS = frozenset(
    {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UR", "UT", "UN", "SV", "UV"}
)


def _element(group: int, elem: int, vr: str, value: bytes | str | int | list[str]) -> bytes:
    """One data element in explicit VR little endian."""
    if vr == "US":
        data = struct.pack("<H", int(value))  # type: ignore[arg-type]
    elif vr == "UL":
        data = struct.pack("<I", int(value))  # type: ignore[arg-type]
    elif isinstance(value, bytes):
        data = value
    else:
        text = "\\".join(value) if isinstance(value, list) else str(value)
        data = text.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", group, elem) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(data)) + data
    return head + struct.pack("<H", len(data)) + data


def encode_file(tags: dict[str, Any], pixels: bytes) -> bytes:
    """A complete Part 10 file (preamble, file meta, data set), explicit VR LE.

    Written by hand rather than with ``pydicom.dcmwrite``: the ``ID_...``
    identifiers are not valid UIDs (as in RSNA), which pydicom would warn
    about on every file, and the bytes must not depend on the pydicom version.
    """
    meta = b"".join(
        (
            _element(0x0002, 0x0001, "OB", b"\x00\x01"),
            _element(0x0002, 0x0002, "UI", CT_IMAGE_STORAGE),
            _element(0x0002, 0x0003, "UI", tags["sop"]),
            _element(0x0002, 0x0010, "UI", EXPLICIT_VR_LITTLE_ENDIAN),
            _element(0x0002, 0x0012, "UI", IMPLEMENTATION_CLASS_UID),
            _element(0x0002, 0x0013, "SH", IMPLEMENTATION_VERSION),
        )
    )
    body = b"".join(
        (
            _element(0x0008, 0x0016, "UI", CT_IMAGE_STORAGE),
            _element(0x0008, 0x0018, "UI", tags["sop"]),
            _element(0x0008, 0x0060, "CS", "CT"),
            _element(0x0010, 0x0020, "LO", tags["patient"]),
            _element(0x0020, 0x000D, "UI", tags["study"]),
            _element(0x0020, 0x000E, "UI", tags["series"]),
            _element(0x0020, 0x0010, "SH", tags["study_id"]),
            _element(0x0020, 0x0032, "DS", [_ds(v) for v in tags["position"]]),
            _element(0x0020, 0x0037, "DS", [_ds(v) for v in tags["orientation"]]),
            _element(0x0028, 0x0002, "US", 1),
            _element(0x0028, 0x0004, "CS", "MONOCHROME2"),
            _element(0x0028, 0x0010, "US", tags["size"]),
            _element(0x0028, 0x0011, "US", tags["size"]),
            _element(0x0028, 0x0030, "DS", [_ds(tags["spacing"])] * 2),
            _element(0x0028, 0x0100, "US", 16),
            _element(0x0028, 0x0101, "US", tags["bits_stored"]),
            _element(0x0028, 0x0102, "US", tags["bits_stored"] - 1),
            _element(0x0028, 0x0103, "US", tags["pixel_representation"]),
            _element(0x0028, 0x1050, "DS", tags["window_center"]),
            _element(0x0028, 0x1051, "DS", tags["window_width"]),
            _element(0x0028, 0x1052, "DS", _fmt_int(tags["intercept"])),
            _element(0x0028, 0x1053, "DS", "1"),
            _element(0x7FE0, 0x0010, "OW", pixels),
        )
    )
    return b"\x00" * 128 + b"DICM" + _element(0x0002, 0x0000, "UL", len(meta)) + meta + body


def _fmt_int(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else _ds(v)
