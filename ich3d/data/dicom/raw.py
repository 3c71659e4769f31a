"""The fast header path: a plain native file's header parsed straight from its bytes."""

from __future__ import annotations

import os
import struct

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from ich3d.data.dicom.tags import (
    T_CHARSET,
    T_FRAME_GROUPS,
    T_FRAMES,
    T_PIXEL_DATA,
    T_SHARED_GROUPS,
    TAGS,
)

__all__ = ["RawHeader", "fast_dataset"]


class _RawElement:
    """A header element as the fast path reads it: what ``RawDataElement`` offers here."""

    __slots__ = ("value", "length", "value_tell")
    is_little_endian = True

    def __init__(self, value: bytes | None, length: int, value_tell: int) -> None:
        self.value = value
        self.length = length
        self.value_tell = value_tell


class RawHeader(dict):
    """tag -> :class:`_RawElement`; the ``get_item`` of a pydicom dataset, for the fast path."""

    def get_item(self, tag: int, keep_deferred: bool = False) -> _RawElement | None:
        return self.get(tag)


_FAST_SYNTAXES = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # -> implicit VR
_FAST_BYTES = 16384  # a header longer than this (before the pixel data) goes to pydicom
_EXPLICIT_VRS = frozenset(v.encode() for v in VR)
_LONG_VRS = frozenset(v.encode() for v in EXPLICIT_VR_LENGTH_32)
_STRUCT_TAG = struct.Struct("<HHI")  # implicit: group, element, 32-bit length
_STRUCT_EXPLICIT = struct.Struct("<HH2sH")  # explicit: group, element, VR, 16-bit length
_STRUCT_U32 = struct.Struct("<I")
_WANTED = frozenset(TAGS) | {T_CHARSET}
#: tags that send a file to pydicom (multi-frame: its functional groups are sequences)
_FAST_DECLINE = frozenset({T_FRAMES, T_SHARED_GROUPS, T_FRAME_GROUPS})


def _file_meta(buf: bytes) -> tuple[RawHeader, int] | None:
    """The file meta group (explicit VR little endian) of ``buf``: (syntax and SOP class
    elements, offset of the dataset), or None where the fast path declines."""
    n = len(buf)
    explicit_vrs, long_vrs = _EXPLICIT_VRS, _LONG_VRS
    explicit = _STRUCT_EXPLICIT.unpack_from
    u32 = _STRUCT_U32.unpack_from
    meta = RawHeader()
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
    return meta, pos


def fast_dataset(path: str, file_size: int | None) -> tuple[RawHeader, RawHeader, str] | None:
    """The header of a plain native file read straight from its bytes, or None.

    Reads what ``pydicom.dcmread(path, defer_size=256, specific_tags=TAGS)`` would
    (the same raw bytes, lengths and value offsets) for the common case only: a
    128-byte preamble and ``DICM``, explicit VR little endian file meta, an implicit
    or explicit VR little endian dataset of defined-length elements (no sequence, no
    group 0000, no multi-frame tag) ending with native pixel data that ends the file.
    Everything else returns None and goes through pydicom, so both give the same
    headers (pinned by tests/test_ingest_planning.py).

    Returns:
        (file meta, dataset, transfer syntax) or None.
    """
    try:
        with open(path, "rb") as fh:
            buf = fh.read(_FAST_BYTES)
    except OSError:
        return None
    n = len(buf)
    if n < 144 or buf[128:132] != b"DICM":
        return None
    parsed = _file_meta(buf)
    if parsed is None:
        return None
    meta, pos = parsed
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
    ds = RawHeader()
    explicit_vrs, long_vrs = _EXPLICIT_VRS, _LONG_VRS
    explicit = _STRUCT_EXPLICIT.unpack_from
    u32 = _STRUCT_U32.unpack_from
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
        if tag == T_PIXEL_DATA:
            size = file_size if file_size is not None else os.path.getsize(path)
            if pos + length < size:
                return None  # something after the pixel data: pydicom reads it
            ds[tag] = _RawElement(None, length, pos)
            return meta, ds, syntax
        if tag in wanted:
            if length > 256 and tag != T_CHARSET:
                ds[tag] = _RawElement(None, length, pos)  # deferred, as pydicom's defer_size
            else:
                if pos + length > n:
                    return None
                ds[tag] = _RawElement(buf[pos : pos + length], length, pos)
        pos += length
