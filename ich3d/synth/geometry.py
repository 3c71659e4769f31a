"""Series geometry and the head frame of the phantom (patient coordinates, mm).

Patient coordinates are DICOM LPS (x to the patient's left, y posterior, z
superior). A series is a stack of parallel planes; with gantry tilt the planes
are rotated about the x axis (row cosine (1, 0, 0), column cosine
(0, cos t, -sin t)) and the table moves along z, so successive
``ImagePositionPatient`` differ by (0, 0, table_feed) and the distance between
planes along the normal is ``table_feed * cos t`` (as on real scanners).

:class:`Frame` gives the head-frame coordinates of a chunk of slices: in-plane
mm around the head centre (small yaw) and the *natural* vertical coordinate in
which the skull spans [-:data:`NATURAL_HALF_HEIGHT`, +:data:`NATURAL_HALF_HEIGHT`].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ich3d.synth.anatomy import Head

__all__ = ["NATURAL_HALF_HEIGHT", "Geometry", "sample_geometry", "Frame", "depth"]

#: Half height of the skull in the natural vertical coordinate (mm).
NATURAL_HALF_HEIGHT = 85.0


@dataclass(frozen=True)
class Geometry:
    """Where the slices of one series lie in patient space.

    Args:
        size: rows = columns of every slice (pixels).
        n_slices: number of slices.
        pixel_spacing: in-plane spacing (mm/pixel), rows = columns.
        table_feed: z distance between successive ``ImagePositionPatient`` (mm).
        tilt_deg: gantry tilt, rotation of the planes about the x axis (degrees).
        center_y: y of the reconstruction centre (mm).
        z0: z of the reconstruction centre of slice 0, the lowest slice (mm).
    """

    size: int
    n_slices: int
    pixel_spacing: float
    table_feed: float
    tilt_deg: float = 0.0
    center_y: float = 0.0
    z0: float = 0.0

    @property
    def fov(self) -> float:
        """Reconstruction field of view (mm), the image width."""
        return self.size * self.pixel_spacing

    @property
    def row_cosine(self) -> np.ndarray:
        return np.array([1.0, 0.0, 0.0])

    @property
    def col_cosine(self) -> np.ndarray:
        t = math.radians(self.tilt_deg)
        return np.array([0.0, math.cos(t), -math.sin(t)])

    @property
    def normal(self) -> np.ndarray:
        """Slice normal, row x column cosine (points superior)."""
        return np.cross(self.row_cosine, self.col_cosine)

    @property
    def slice_spacing(self) -> float:
        """Distance between successive planes along the normal (mm)."""
        return self.table_feed * math.cos(math.radians(self.tilt_deg))

    def orientation(self) -> list[float]:
        """``ImageOrientationPatient``: row cosine then column cosine."""
        return [float(v) for v in (*self.row_cosine, *self.col_cosine)]

    def positions(self) -> np.ndarray:
        """``ImagePositionPatient`` of every slice, shape (n_slices, 3), ascending."""
        half = self.fov / 2.0
        t = math.radians(self.tilt_deg)
        k = np.arange(self.n_slices, dtype=np.float64)
        pos = np.empty((self.n_slices, 3))
        pos[:, 0] = -half
        pos[:, 1] = self.center_y - half * math.cos(t)
        pos[:, 2] = self.z0 + k * self.table_feed + half * math.sin(t)
        return pos

    def plane_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates of the voxel centres.

        Returns:
            ``x`` of shape (1, 1, W), ``y`` of shape (1, H, 1) and ``z`` of
            shape (n_slices, H, 1), in mm.
        """
        t = math.radians(self.tilt_deg)
        half = self.fov / 2.0
        s = np.arange(self.size, dtype=np.float64) * self.pixel_spacing - half
        x = s[None, None, :]
        y = (self.center_y + s * math.cos(t))[None, :, None]
        zk = self.z0 + np.arange(self.n_slices) * self.table_feed
        z = zk[:, None, None] - (s * math.sin(t))[None, :, None]
        return x, y, z


def sample_geometry(rng: np.random.Generator, size: int, n_slices: int) -> Geometry:
    """Draw a plausible series geometry.

    Field of view 195-500 mm (pixel spacing 0.38-0.98 mm at 512 pixels; the
    spacing scales with ``size`` so the field of view, not the spacing, is
    what varies), table feed 4-6 mm, gantry tilt of 4-20 degrees in 30% of
    series.
    """
    if rng.random() < 0.8:
        fov = rng.uniform(195.0, 260.0)
    else:
        fov = rng.uniform(260.0, 500.0)
    feed = float(rng.choice([4.0, 5.0, 5.0, 5.0, 6.0]) + rng.uniform(-0.25, 0.25))
    tilt = 0.0
    if rng.random() < 0.3:
        tilt = float(rng.uniform(4.0, 20.0) * rng.choice([-1.0, 1.0]))
    return Geometry(
        size=size,
        n_slices=n_slices,
        pixel_spacing=round(fov / size, 6),
        table_feed=round(feed, 4),
        tilt_deg=round(tilt, 3),
        center_y=round(float(rng.uniform(-20.0, 20.0)), 3),
        z0=round(float(rng.uniform(-250.0, 100.0)), 3),
    )


class Frame:
    """Head-frame coordinates of a chunk of slices (views, broadcastable)."""

    def __init__(
        self,
        geometry: Geometry,
        head: Head,
        k0: int,
        k1: int,
        box: tuple[int, int, int, int] | None = None,
    ) -> None:
        x, y, z = geometry.plane_coords()
        r0, r1, c0, c1 = box if box is not None else (0, geometry.size, 0, geometry.size)
        dx = x[:, :, c0:c1] - head.hx  # (1,1,W)
        dy = y[:, r0:r1] - head.hy  # (1,H,1)
        c, s = math.cos(head.yaw), math.sin(head.yaw)
        self.X = (dx * c + dy * s).astype(np.float32)  # (1,H,W)
        self.Y = (-dx * s + dy * c).astype(np.float32)
        zn = (z[k0:k1, r0:r1] - head.hz) * (NATURAL_HALF_HEIGHT / head.z_half)
        self.Z = zn.astype(np.float32)  # (k,H,1)
        self.k0 = k0
        self.n = k1 - k0
        self.shape = (self.n, r1 - r0, c1 - c0)
        self.zmin = zn.min(axis=(1, 2))
        self.zmax = zn.max(axis=(1, 2))
        # natural distance between slices, for minimal vertical sizes
        self.dz = geometry.slice_spacing * NATURAL_HALF_HEIGHT / head.z_half
        self.ps = geometry.pixel_spacing

    def krange(self, lo: float, hi: float) -> tuple[int, int]:
        """Local slice range [a, b) whose natural z range meets [lo, hi]."""
        hit = np.nonzero((self.zmax >= lo) & (self.zmin <= hi))[0]
        if hit.size == 0:
            return 0, 0
        return int(hit[0]), int(hit[-1]) + 1

    def ellipsoid(
        self,
        center: tuple[float, float, float],
        radii: tuple[float, float, float],
        yaw: float = 0.0,
    ) -> tuple[int, int, np.ndarray | None]:
        """Mask of an ellipsoid over the local slices [a, b) it can touch.

        The 3D test runs only inside the in-plane bounding box of the
        ellipsoid (small structures cost little); the mask is False elsewhere.
        """
        cx, cy, cz = center
        rx, ry, rz = radii
        a, b = self.krange(cz - rz, cz + rz)
        if a >= b:
            return a, b, None
        dx = self.X - cx
        dy = self.Y - cy
        if yaw:
            c, s = math.cos(yaw), math.sin(yaw)
            dx, dy = dx * c + dy * s, -dx * s + dy * c
        q = (dx / rx) ** 2 + (dy / ry) ** 2  # (1,H,W)
        inside = q[0] <= 1.0
        rows = np.nonzero(inside.any(axis=1))[0]
        if rows.size == 0:
            return a, a, None
        cols = np.nonzero(inside.any(axis=0))[0]
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        qz = ((self.Z[a:b, r0:r1] - cz) / rz) ** 2  # (k,h,1)
        m = np.zeros((b - a, *self.shape[1:]), dtype=bool)
        m[:, r0:r1, c0:c1] = (q[:, r0:r1, c0:c1] + qz) <= 1.0
        return a, b, m


def depth(fr: Frame, head: Head) -> np.ndarray:
    """Approximate depth (mm) below the outer skull surface; negative outside."""
    a, b, c = head.a, head.b, NATURAL_HALF_HEIGHT
    q2 = (fr.X / a) ** 2 + (fr.Y / b) ** 2  # (1,H,W)
    qz = (fr.Z / c) ** 2  # (k,H,1)
    g2 = (fr.X / a**2) ** 2 + (fr.Y / b**2) ** 2
    gz = (fr.Z / c**2) ** 2
    f = np.add(q2, qz)  # full volume from here on, in place
    np.sqrt(f, out=f)
    grad = np.add(g2, gz)
    np.sqrt(grad, out=grad)
    grad += np.float32(1e-6)
    d = np.subtract(np.float32(1.0), f)
    d *= f
    d /= grad
    return d
