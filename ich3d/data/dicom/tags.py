"""The DICOM tags the header reader needs and the raw-value helpers that read them.

The helpers take a pydicom dataset or the fast path's
:class:`~ich3d.data.dicom.raw.RawHeader` (both offer ``get_item``) and decode the
undecoded bytes of a tag themselves: pydicom's value conversion is the slow part
of a header read.
"""

from __future__ import annotations

from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.tag import BaseTag

__all__ = [
    "TAGS",
    "tag_list",
    "tag_raw",
    "tag_text",
    "tag_strings",
    "tag_floats",
    "tag_ushort",
    "tag_int",
    "tag_encodings",
]

# (group, element) tags read from the header.
T_CHARSET = 0x00080005
T_IMAGE_TYPE = 0x00080008
T_SOP_CLASS = 0x00080016
T_SOP = 0x00080018
T_ACCESSION = 0x00080050
T_MODALITY = 0x00080060
T_PATIENT = 0x00100020
T_THICKNESS = 0x00180050
T_KERNEL = 0x00181210
T_STUDY = 0x0020000D
T_SERIES = 0x0020000E
T_POSITION = 0x00200032
T_ORIENTATION = 0x00200037
T_SAMPLES = 0x00280002
T_FRAMES = 0x00280008
T_ROWS = 0x00280010
T_COLUMNS = 0x00280011
T_SPACING = 0x00280030
T_BITS_ALLOCATED = 0x00280100
T_BITS_STORED = 0x00280101
T_PIXEL_REPR = 0x00280103
T_INTERCEPT = 0x00281052
T_SLOPE = 0x00281053
T_LOSSY = 0x00282110
T_SHARED_GROUPS = 0x52009229
T_FRAME_GROUPS = 0x52009230
T_PIXEL_DATA = 0x7FE00010
TAGS = [
    T_CHARSET,
    T_IMAGE_TYPE,
    T_SOP_CLASS,
    T_SOP,
    T_ACCESSION,
    T_MODALITY,
    T_PATIENT,
    T_THICKNESS,
    T_KERNEL,
    T_STUDY,
    T_SERIES,
    T_POSITION,
    T_ORIENTATION,
    T_SAMPLES,
    T_FRAMES,
    T_ROWS,
    T_COLUMNS,
    T_SPACING,
    T_BITS_ALLOCATED,
    T_BITS_STORED,
    T_PIXEL_REPR,
    T_INTERCEPT,
    T_SLOPE,
    T_LOSSY,
    T_SHARED_GROUPS,
    T_FRAME_GROUPS,
    T_PIXEL_DATA,
]


_TAG_OBJECTS: list[Any] | None = None


def tag_raw(ds: Any, tag: int) -> object:
    """The undecoded value of ``tag`` (bytes), its decoded value, or None."""
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return None
    return elem.value


def tag_text(ds: Any, tag: int, encodings: list[str] | None = None) -> str | None:
    value = tag_raw(ds, tag)
    if value is None:
        return None
    if isinstance(value, bytes):
        if encodings:
            text = decode_bytes(value, encodings, set()).strip(" \x00")
        else:
            text = value.decode("latin-1").strip(" \x00")
    else:
        text = str(value).strip()
    return text or None


def tag_strings(ds: Any, tag: int) -> list[str]:
    text = tag_text(ds, tag)
    return [p.strip() for p in text.split("\\")] if text else []


def tag_floats(ds: Any, tag: int) -> list[float] | None:
    value = tag_raw(ds, tag)
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


def tag_ushort(ds: Any, tag: int) -> int | None:
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if len(value) < 2:
            return None
        return int.from_bytes(value[:2], "little" if elem.is_little_endian else "big")
    return int(value)


def tag_int(ds: Any, tag: int) -> int | None:
    value = tag_floats(ds, tag)
    return int(value[0]) if value else None


def tag_encodings(ds: Any) -> list[str] | None:
    names = tag_strings(ds, T_CHARSET)
    if not names:
        return None
    return convert_encodings(names)


def tag_list() -> list[Any]:
    """``TAGS`` as pydicom ``BaseTag`` objects, made once (pydicom converts ints per read)."""
    global _TAG_OBJECTS
    if _TAG_OBJECTS is None:
        _TAG_OBJECTS = [BaseTag(t) for t in TAGS]
    return _TAG_OBJECTS
