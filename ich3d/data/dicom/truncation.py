"""Telling a file cut short inside its header from one that lacks tags.

A download or copy that stopped early leaves a DICOM file whose header ends in the
middle of a data element. pydicom then parses the elements before the cut and stops
quietly, so the file looks like one *without* Modality, Rows or PixelData, and the
ingest would report "not CT" or "missing series or size tag": true of the bytes, but
not what happened. :func:`ends_inside_an_element` walks the file's elements once
(only for a file already being skipped: off the ingest's hot path) and says whether
the last one is incomplete: a declared value length longer than the bytes left,
a partial element header, or a file meta group shorter than its declared length.

A file cut exactly on an element boundary cannot be told from one written without
the later elements; it keeps the reason its tags give.
"""

from __future__ import annotations

import io
import warnings

from pydicom.filereader import data_element_generator, read_file_meta_info

__all__ = ["TRUNCATED_HEADER", "ends_inside_an_element"]

TRUNCATED_HEADER = "truncated: the file ends inside its header (an incomplete data element)"

_UNDEFINED = 0xFFFFFFFF
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_META_GROUP_LENGTH_TAG = b"\x02\x00\x00\x00UL"


def ends_inside_an_element(path: str) -> bool:
    """Whether a DICOM Part 10 file (preamble and ``DICM``) ends inside a data element.

    Args:
        path: the file.

    Returns:
        True when the file is cut inside its file meta group or inside a data element of
        the dataset; False for a complete file, a file cut on an element boundary, and a
        file without the ``DICM`` preamble (nothing to compare with).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if len(data) < 132 or data[128:132] != b"DICM":
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # pydicom's public reader of group 0002
            meta = read_file_meta_info(path)
            group_length = int(meta["FileMetaInformationGroupLength"].value)
        except Exception:  # noqa: BLE001 - a meta group cut short or without its length
            return _META_GROUP_LENGTH_TAG in data[132:144] and len(data) < 144 + _declared(data)
        start = 144 + group_length  # preamble, DICM, the 12-byte group length element, the group
        if len(data) < start:
            return True
        syntax = str(meta.get("TransferSyntaxUID") or "")
        fp = io.BytesIO(data)
        fp.seek(start)
        end = start
        try:
            elements = data_element_generator(fp, syntax == _IMPLICIT_LE, syntax != _EXPLICIT_BE, defer_size=None)
            for element in elements:
                if element.length != _UNDEFINED and element.value is not None and len(element.value) < element.length:
                    return True
                end = fp.tell()
        except Exception:  # noqa: BLE001 - an element header cut in two
            return True
    return end < len(data)


def _declared(data: bytes) -> int:
    """The file meta group's declared length (0 when its length element is itself cut)."""
    return int.from_bytes(data[140:144], "little") if len(data) >= 144 else 0
