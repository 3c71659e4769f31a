"""Decoding compressed pixel data: pydicom's decoder plugins and which package decodes what."""

from __future__ import annotations

import os

import numpy as np
import pydicom
from pydicom.pixels import get_decoder, pixel_array

from ich3d.data.dicom.records import DEFLATED, REASON_UNREADABLE_PIXELS, SkipSlice

__all__ = ["DECODER_PACKAGES", "decoder_available", "decode_frames"]

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

_DECODER_OK: dict[str, bool] = {}


def decoder_available(syntax: str) -> bool:
    """Whether a decoder plugin for ``syntax`` is installed (cached per process)."""
    ok = _DECODER_OK.get(syntax)
    if ok is None:
        try:
            ok = bool(get_decoder(syntax).is_available)
        except NotImplementedError:
            ok = False
        _DECODER_OK[syntax] = ok
    return ok


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
    try:
        if transfer_syntax is None:
            meta = pydicom.dcmread(os.fspath(path), stop_before_pixels=True).file_meta
            transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
        if transfer_syntax == DEFLATED:  # pixel_array(path) cannot inflate: read it all
            return pydicom.dcmread(os.fspath(path)).pixel_array
        return pixel_array(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - corrupt stream, decoder error
        raise SkipSlice(REASON_UNREADABLE_PIXELS, f"{type(exc).__name__}: {exc}") from None
