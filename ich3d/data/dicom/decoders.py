"""Decoding compressed pixel data: pydicom's decoder plugins, GDCM's reader as the fallback."""

from __future__ import annotations

import os

import numpy as np
import pydicom
from pydicom.pixels import get_decoder, pixel_array

from ich3d.data.dicom.quiet import one_line, quiet
from ich3d.data.dicom.records import (
    DEFLATED,
    REASON_NO_DECODER,
    REASON_UNREADABLE_PIXELS,
    SkipSlice,
)

__all__ = ["DECODER_PACKAGES", "decoder_available", "decode_frames"]

#: Transfer syntaxes decoded by pydicom's pixel handlers -> (name, the package(s) that decode it).
DECODER_PACKAGES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.1.99": ("Deflated Explicit VR Little Endian", "built into pydicom"),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "built into pydicom (pylibjpeg-rle is faster)"),
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline (lossy)", "python-gdcm or pillow"),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended (lossy)", "python-gdcm (12-bit: only python-gdcm)"),
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
    """Decode the pixel data of a file: pydicom's decoder plugins, then GDCM's own reader.

    pydicom's GDCM and Pillow plugins refuse 12-bit JPEG Extended (.51, the usual
    lossy CT syntax) although python-gdcm's ``gdcm.ImageReader`` decodes it; any file
    pydicom's plugins fail on is given to that reader before it is skipped. What the
    decoders print (per-plugin tracebacks, libjpeg messages) is kept off the console
    and goes into the skip detail, on one line.

    Args:
        path: the file.
        transfer_syntax: its TransferSyntaxUID if known (else read from the file meta).

    Returns:
        (rows, columns) for a single-frame file, (frames, rows, columns) otherwise:
        the stored integers, as ``Dataset.pixel_array`` gives them.

    Raises:
        SkipSlice: no decoder could decode it (``unreadable pixel data``, or ``no decoder``
            naming python-gdcm where pydicom's plugins do not support it and GDCM is
            not installed).
    """
    path = os.fspath(path)
    with quiet(stderr=True) as said:
        try:
            return _pydicom_decode(path, transfer_syntax)
        except Exception as exc:  # noqa: BLE001 - corrupt stream, decoder error
            first = one_line(f"{type(exc).__name__}: {exc}")
        try:
            return _gdcm_decode(path)
        except ImportError:
            second = None
        except Exception as exc:  # noqa: BLE001 - GDCM failed too
            second = one_line(f"gdcm.ImageReader: {exc}")
    detail = first if second is None else f"{first}; {second}"
    noise = said.summary(known=detail)
    if noise:
        detail = f"{detail} ({noise})"
    if second is None and "does not support" in first:
        name = DECODER_PACKAGES.get(transfer_syntax or "", (transfer_syntax, ""))[0]
        raise SkipSlice(
            REASON_NO_DECODER, f"{name}: pydicom's plugins cannot ({first}); install python-gdcm"
        )
    raise SkipSlice(REASON_UNREADABLE_PIXELS, detail)


def _pydicom_decode(path: str, transfer_syntax: str | None) -> np.ndarray:
    if transfer_syntax is None:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
    if transfer_syntax == DEFLATED:  # pixel_array(path) cannot inflate: read it all
        return pydicom.dcmread(path).pixel_array
    return pixel_array(path)


def _gdcm_decode(path: str) -> np.ndarray:
    """The stored integers as ``gdcm.ImageReader`` decodes them (16-bit, one sample).

    Raises:
        ImportError: python-gdcm is not installed.
        ValueError: GDCM cannot read the file or gives another pixel format.
    """
    import gdcm  # optional (python-gdcm): only when pydicom's plugins failed

    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    if not reader.Read():
        raise ValueError("cannot read the file")
    image = reader.GetImage()
    fmt = image.GetPixelFormat()
    if fmt.GetSamplesPerPixel() != 1 or fmt.GetBitsAllocated() != 16:
        raise ValueError(
            f"{fmt.GetSamplesPerPixel()} samples of {fmt.GetBitsAllocated()} bits, not 1 of 16"
        )
    dims = list(image.GetDimensions())
    raw = image.GetBuffer()
    if raw is None:
        raise ValueError("no pixels decoded")
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    dtype = np.dtype("<i2" if fmt.GetPixelRepresentation() else "<u2")
    frames = dims[2] if len(dims) > 2 else 1
    if len(data) != frames * dims[0] * dims[1] * 2:
        raise ValueError(f"{len(data)} bytes for {frames} frames of {dims[1]}x{dims[0]}")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(dims[1], dims[0]) if frames == 1 else arr.reshape(frames, dims[1], dims[0])
