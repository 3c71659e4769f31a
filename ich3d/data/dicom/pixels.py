"""Pixels: a slice's stored integers (native read or decoder) -> pooled, clipped HU.

Pixel rule (:func:`pooled_hu`), in this order:

* values are masked to ``BitsStored`` bits (unsigned) or sign-extended
  (signed), as pydicom's ``pixel_array`` does;
* the RSNA 12-bit correction (:func:`needs_12bit_correction`): when
  ``BitsStored == 12``, ``PixelRepresentation == 0`` and
  ``RescaleIntercept > -100``, add 1000, subtract 4096 from values >= 4096 and
  use intercept -1000. It wraps values, so it is applied at full resolution;
* 2x2 in-plane **max** pooling of the stored integers. A max filter commutes
  with a positive-slope rescale, with rounding and with clipping, so pooling
  first converts only a quarter of the pixels. Odd sizes: the last row /
  column is cropped;
* ``HU = round(pixel * RescaleSlope + RescaleIntercept)`` (exact integer
  arithmetic when the slope is 1 and the intercept an integer), clipped to
  ``[HU_MIN, HU_MAX]`` = [-1024, 3071] (so -2000 / -3000 outside the field of
  view becomes air), returned as int16.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ich3d.data.dicom.decoders import decode_frames
from ich3d.data.dicom.headers import read_header
from ich3d.data.dicom.records import REASON_UNREADABLE_PIXELS, SkipSlice, SliceHeader
from ich3d.data.schema import HU_MAX, HU_MIN

__all__ = [
    "read_pixels",
    "pooled_hu",
    "pool_max_2x2",
    "needs_12bit_correction",
    "read_slice",
    "slice_normal",
    "superior_normal",
]


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
