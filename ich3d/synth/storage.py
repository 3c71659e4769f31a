"""How a series stores its HU: the storage variants and the HU each written slice holds.

Storage variants (per series): int16 with intercept -1024 (70%), unsigned
12-bit with intercept -1024 (15%), int16 with intercept -1000 (10%), int16
with intercept 0 (5%; note: intercept > -100 but *not* the 12-bit defect,
which also needs BitsStored 12 and PixelRepresentation 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ich3d.synth.geometry import Geometry

__all__ = [
    "Storage",
    "STORAGES",
    "STORAGE_P",
    "twelve_bit_storage",
    "descending_positions",
    "fov_mask",
    "true_hu",
]


@dataclass(frozen=True)
class Storage:
    """A pixel storage: BitsStored, PixelRepresentation, RescaleIntercept (slope 1)."""

    name: str
    bits_stored: int
    pixel_representation: int
    intercept: float

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<i2") if self.pixel_representation else np.dtype("<u2")

    def hu_range(self) -> tuple[int, int]:
        if self.name == "twelve_bit_defect":
            return -1000, 3095
        if self.pixel_representation == 0:
            lo = int(self.intercept)
            return lo, lo + (1 << self.bits_stored) - 1
        return -32768 + int(self.intercept), 32767 + int(self.intercept)

    def encode(self, hu: np.ndarray) -> np.ndarray:
        """Integer HU -> stored pixel values (``hu`` already within :meth:`hu_range`)."""
        if self.name == "twelve_bit_defect":
            return np.mod(hu, 4096).astype(self.dtype)
        return (hu - int(self.intercept)).astype(self.dtype)


STORAGES = {
    "int16_m1024": Storage("int16_m1024", 16, 1, -1024.0),
    "uint12_m1024": Storage("uint12_m1024", 12, 0, -1024.0),
    "int16_m1000": Storage("int16_m1000", 16, 1, -1000.0),
    "int16_0": Storage("int16_0", 16, 1, 0.0),
}
STORAGE_P = (0.70, 0.15, 0.10, 0.05)


def twelve_bit_storage(intercept: float) -> Storage:
    return Storage("twelve_bit_defect", 12, 0, intercept)


def descending_positions(geometry: Geometry) -> np.ndarray:
    """Positions of a mirrored, top-first series (see ``DefectRates.descending``)."""
    pos = geometry.positions()[::-1].copy()
    pos[:, 0] += (geometry.size - 1) * geometry.pixel_spacing
    return pos


def fov_mask(size: int) -> np.ndarray:
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - c) ** 2 + (xx - c) ** 2 > (size / 2.0) ** 2


def true_hu(
    phantom_hu: np.ndarray,
    storage: Storage,
    *,
    descending: bool,
    fov: bool,
    blank: np.ndarray,
) -> np.ndarray:
    """Integer HU each written slice represents, anatomical order (int32)."""
    hu = np.rint(phantom_hu).astype(np.int32)
    lo, hi = storage.hu_range()
    np.clip(hu, lo, hi, out=hu)
    if descending:
        hu = hu[::-1, :, ::-1]
    if fov:
        hu[:, fov_mask(hu.shape[-1])] = -2000
    if blank.any():  # every pixel stores 0
        hu[blank] = 0 if storage.name == "twelve_bit_defect" else int(storage.intercept)
    return np.ascontiguousarray(hu)
