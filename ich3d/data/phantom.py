"""A numerical head-CT phantom in Hounsfield units, with painted hemorrhages.

The phantom is an analytic head (scalp, skull with diploe, extra-axial CSF,
cortex with sulci, white matter, deep grey nuclei, ventricles, brainstem and
cisterns, skull base) sampled directly on the voxel grid of one CT series, so
a 512 x 512 x 40 series costs about as much as a few dozen array operations on
its own voxels. Hemorrhages of the five RSNA subtypes are painted into it and
the per-slice labels are read back from the painted voxels, so labels follow
the image exactly:

    a slice is positive for a subtype iff it holds painted voxels of that
    subtype; a bleed's cross-section smaller than :func:`min_bleed_pixels`
    on a slice is not painted on that slice (labels are never noise).

Geometry. Patient coordinates are DICOM LPS (x to the patient's left, y
posterior, z superior), in mm. A series is a stack of parallel planes; with
gantry tilt the planes are rotated about the x axis (row cosine (1, 0, 0),
column cosine (0, cos t, -sin t)) and the table moves along z, so successive
``ImagePositionPatient`` differ by (0, 0, table_feed) and the distance between
planes along the normal is ``table_feed * cos t`` (as on real scanners).

The head is defined in its own frame: in-plane coordinates in mm (head
centre, small yaw), and a *natural* vertical coordinate in mm where the skull
spans [-85, 85]. The natural vertical axis is stretched onto the z range the
series covers, so every series spans skull base to vertex whatever its slice
count: the top and bottom slices cut the skull cap and base (bright bone
edges), the middle ones the ventricles. This stretch is the one place where
the phantom is not physically consistent (a 60-slice series gets a tall
head); nothing downstream can tell.

Tissue values (HU): air -1000, scalp skin/muscle 40-45 with a fat layer -90,
skull tables 1000-1500 with diploe 700-950, CSF 5-10, grey matter 33-40, white
matter 24-30 (plus a smooth +-3 HU texture), calcifications (pineal, choroid
plexus, falx, basal ganglia; in negative and positive series alike) 100-300,
acute blood 50-90 (IPH with a 15-21 HU edema rim); confounders in every head:
falx 42-58, dural venous sinuses 48-68, a one-pixel partial-volume rim between
inner table and CSF, bright skull caps on the extreme slices, petrous ridges
and clivus low down; Gaussian noise of 5-10 HU everywhere, then a floor at
-1024. A count of 60-95 HU pixels per slice separates positive from negative
slices with an AUC of about 0.87 (0.81 per volume), so the task needs more
than a threshold.

Everything is pure numpy; randomness comes only from the ``numpy.random.Generator``
objects passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ich3d.data.schema import SUBTYPES

__all__ = [
    "BLEED_SUBTYPES",
    "Geometry",
    "Head",
    "Bleed",
    "Calcification",
    "Phantom",
    "sample_geometry",
    "sample_head",
    "sample_bleeds",
    "render",
    "render_series",
    "min_bleed_pixels",
    "NATURAL_HALF_HEIGHT",
]

#: The five hemorrhage subtypes in CSV order (``any`` excluded); a bleed code
#: in :attr:`Phantom.bleed` is ``1 + index`` in this tuple.
BLEED_SUBTYPES: tuple[str, ...] = SUBTYPES[:5]

#: Half height of the skull in the natural vertical coordinate (mm).
NATURAL_HALF_HEIGHT = 85.0

#: Minimal painted cross-section of a bleed on one slice, in mm^2 (see
#: :func:`min_bleed_pixels`).
MIN_BLEED_AREA_MM2 = 10.0

_AIR = -1000.0
_CHUNK_VOXELS = 4_000_000


# --------------------------------------------------------------------------- geometry


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


def sample_geometry(
    rng: np.random.Generator, size: int, n_slices: int, *, head_half_width: float = 103.0
) -> Geometry:
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
    del head_half_width
    return Geometry(
        size=size,
        n_slices=n_slices,
        pixel_spacing=round(fov / size, 6),
        table_feed=round(feed, 4),
        tilt_deg=round(tilt, 3),
        center_y=round(float(rng.uniform(-20.0, 20.0)), 3),
        z0=round(float(rng.uniform(-250.0, 100.0)), 3),
    )


# --------------------------------------------------------------------------- head


@dataclass(frozen=True)
class Calcification:
    """A small calcified sphere (head frame, natural vertical coordinate, mm, HU)."""

    kind: str
    center: tuple[float, float, float]
    radius: float
    hu: float


@dataclass(frozen=True)
class Head:
    """Parameters of one head (head frame: mm, natural vertical coordinate).

    ``hx, hy, hz`` place the head centre in patient space; ``z_half`` is the
    patient-space half height the natural range [-85, 85] is stretched onto.
    """

    hx: float
    hy: float
    hz: float
    z_half: float
    yaw: float  # radians
    a: float  # outer skull semi-axis, left-right (mm)
    b: float  # outer skull semi-axis, antero-posterior (mm)
    skull: float  # skull thickness at the vertex (mm)
    scalp: float  # scalp thickness (mm)
    csf: float  # extra-axial CSF thickness (mm)
    cortex: float  # cortical ribbon thickness (mm)
    hu_bone: float
    hu_diploe: float
    hu_grey: float
    hu_white: float
    hu_csf: float
    noise: float  # Gaussian noise sigma (HU)
    ventricle: float  # lateral ventricle half width (mm)
    waves: tuple[tuple[float, float, float, float, float], ...]  # kx, ky, kz, phase, amp
    sulci: tuple[int, float, float]  # count, phase, vertical frequency
    calcifications: tuple[Calcification, ...] = ()
    hu_dura: float = 50.0  # falx (HU)
    hu_sinus: float = 60.0  # dural venous sinuses (HU)


def sample_head(
    rng: np.random.Generator,
    geometry: Geometry,
    anatomy_rng: np.random.Generator | None = None,
) -> Head:
    """Draw a head that fits in the geometry's field of view and spans its slices.

    Args:
        rng: draws the positioning in the scanner (centre, yaw, vertical
            stretch) and the scanner noise.
        geometry: the series geometry.
        anatomy_rng: draws the anatomy (skull size and thickness, tissue HU,
            ventricle size, texture, sulci, calcifications); pass a generator
            seeded per patient so that a patient's studies show the same head.
            Defaults to ``rng``.
    """
    arng = rng if anatomy_rng is None else anatomy_rng
    # anatomy
    scalp = float(arng.uniform(3.5, 6.0))
    b_anat = float(arng.uniform(84.0, 97.0))
    ratio = float(arng.uniform(0.74, 0.84))
    anat = {
        "skull": float(arng.uniform(5.0, 8.0)),
        "csf": float(arng.uniform(1.0, 2.5)),
        "cortex": float(arng.uniform(3.0, 4.5)),
        "hu_bone": float(arng.uniform(1000, 1500)),
        "hu_diploe": float(arng.uniform(700, 950)),
        "hu_grey": float(arng.uniform(33, 40)),
        "hu_white": float(arng.uniform(24, 30)),
        "hu_csf": float(arng.uniform(5, 10)),
        "ventricle": float(arng.uniform(4.0, 9.0)),
        "hu_dura": float(arng.uniform(42, 58)),
        "hu_sinus": float(arng.uniform(48, 68)),
    }
    waves = tuple(
        (
            float(arng.uniform(-0.12, 0.12)),
            float(arng.uniform(-0.12, 0.12)),
            float(arng.uniform(-0.08, 0.08)),
            float(arng.uniform(0, 2 * math.pi)),
            float(arng.uniform(0.6, 1.6)),
        )
        for _ in range(3)
    )
    sulci = (
        int(arng.integers(26, 44)),
        float(arng.uniform(0, 2 * math.pi)),
        float(arng.uniform(0.05, 0.15)),
    )
    calcs: list[Calcification] = []
    if arng.random() < 0.6:  # pineal gland
        calcs.append(
            Calcification(
                "pineal",
                (
                    float(arng.uniform(-1, 1)),
                    float(arng.uniform(14, 20)),
                    float(arng.uniform(-8, 2)),
                ),
                float(arng.uniform(1.5, 3.5)),
                float(arng.uniform(110, 300)),
            )
        )
    if arng.random() < 0.5:  # choroid plexus glomus, usually both sides
        zc = float(arng.uniform(4, 14))
        both = arng.random() < 0.8
        one = float(arng.choice([-1.0, 1.0]))
        for side in (-1.0, 1.0) if both else (one,):
            calcs.append(
                Calcification(
                    "choroid_plexus",
                    (side * float(arng.uniform(13, 18)), float(arng.uniform(20, 28)), zc),
                    float(arng.uniform(1.8, 3.5)),
                    float(arng.uniform(100, 250)),
                )
            )
    if arng.random() < 0.15:  # falx
        calcs.append(
            Calcification(
                "falx",
                (0.0, float(arng.uniform(-40, 20)), float(arng.uniform(30, 60))),
                float(arng.uniform(1.5, 2.5)),
                float(arng.uniform(120, 300)),
            )
        )
    if arng.random() < 0.1:  # basal ganglia
        side = float(arng.choice([-1.0, 1.0]))
        calcs.append(
            Calcification(
                "basal_ganglia",
                (
                    side * float(arng.uniform(18, 24)),
                    float(arng.uniform(-6, 4)),
                    float(arng.uniform(-4, 8)),
                ),
                float(arng.uniform(1.5, 3.0)),
                float(arng.uniform(100, 200)),
            )
        )

    # positioning in this scanner
    z_first = geometry.z0
    z_last = geometry.z0 + (geometry.n_slices - 1) * geometry.table_feed
    # the stretched skull ends a little inside the first/last slice so that the
    # extreme slices cut the skull cap and base
    z_half = max((z_last - z_first) / 2.0, 1.0) * float(rng.uniform(0.96, 1.06))
    hz = (z_first + z_last) / 2.0 + float(rng.uniform(-0.04, 0.04)) * z_half
    # the head (scalp included) stays inside the inscribed FOV circle, also when
    # a tilted plane stretches its section by 1 / cos(tilt)
    cos_t = math.cos(math.radians(geometry.tilt_deg))
    room = 0.46 * geometry.fov * cos_t - scalp - 5.0
    b = min(b_anat, room)
    a = min(ratio * b_anat, room)
    hy = geometry.center_y + float(rng.uniform(-4.0, 4.0))
    hx = float(rng.uniform(-4.0, 4.0))
    return Head(
        hx=hx,
        hy=hy,
        hz=hz,
        z_half=z_half,
        yaw=math.radians(float(rng.uniform(-8.0, 8.0))),
        a=a,
        b=b,
        scalp=scalp,
        noise=float(rng.uniform(5.0, 10.0)),
        waves=waves,
        sulci=sulci,
        calcifications=tuple(calcs),
        **anat,
    )


# --------------------------------------------------------------------------- frame


class _Frame:
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


def _depth(fr: _Frame, head: Head) -> np.ndarray:
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


# --------------------------------------------------------------------------- bleeds


@dataclass(frozen=True)
class Bleed:
    """One hemorrhage (head frame, natural vertical coordinate, mm, HU).

    ``kind`` is the subtype; ``params`` holds its shape parameters (see
    :func:`sample_bleeds`); ``z_lo, z_hi`` bound its natural vertical extent.
    """

    subtype: str
    density: float
    z_lo: float
    z_hi: float
    params: dict = field(default_factory=dict)

    @property
    def code(self) -> int:
        return 1 + BLEED_SUBTYPES.index(self.subtype)


#: relative frequency of the subtypes among painted bleeds
_SUBTYPE_WEIGHTS = {
    "epidural": 0.10,
    "intraparenchymal": 0.26,
    "intraventricular": 0.14,
    "subarachnoid": 0.25,
    "subdural": 0.25,
}


def _inner_point(head: Head, phi: float, zn: float) -> tuple[float, float]:
    """In-plane point of the inner skull surface at azimuth ``phi``, height ``zn``."""
    ai, bi = head.a - head.skull, head.b - head.skull
    ci = NATURAL_HALF_HEIGHT - head.skull
    scale = math.sqrt(max(1.0 - (zn / ci) ** 2, 0.05))
    return ai * scale * math.cos(phi), bi * scale * math.sin(phi)


def _sample_one(rng: np.random.Generator, head: Head, subtype: str, zc: float, dz: float) -> Bleed:
    """Draw one bleed of ``subtype`` centred near natural height ``zc``."""
    minz = 1.6 * dz  # every bleed spans at least ~3 slices vertically
    if subtype == "epidural":
        phi = float(rng.uniform(0, 2 * math.pi))
        px, py = _inner_point(head, phi, zc)
        n = math.hypot(px, py)
        thick = float(rng.uniform(5.0, 18.0))
        r = float(rng.uniform(max(18.0, thick + 6.0), 36.0))
        cx, cy = px + px / n * (r - thick), py + py / n * (r - thick)
        rz = max(r * 0.8, minz)
        return Bleed(
            subtype,
            float(rng.uniform(60, 90)),
            zc - rz,
            zc + rz,
            {"center": (cx, cy, zc), "radii": (r, r, rz)},
        )
    if subtype == "subdural":
        hz = max(float(rng.uniform(18, 45)), minz)
        return Bleed(
            subtype,
            float(rng.uniform(50, 80)),
            zc - hz,
            zc + hz,
            {
                "phi": float(rng.uniform(0, 2 * math.pi)),
                "half_angle": float(rng.uniform(0.5, 1.3)),
                "width": float(rng.uniform(3.0, 13.0)),
                "zc": zc,
                "hz": hz,
            },
        )
    if subtype == "subarachnoid":
        hz = max(float(rng.uniform(12, 35)), minz)
        cistern = bool(rng.random() < 0.5) and zc < 0.0
        if cistern:  # perimesencephalic / basal cisterns sit low
            zc = float(np.clip(zc, -45, -10))
        return Bleed(
            subtype,
            float(rng.uniform(55, 80)),
            zc - hz,
            zc + hz,
            {
                "cistern": cistern,
                "phi": float(rng.uniform(0, 2 * math.pi)),
                "half_angle": float(rng.uniform(0.4, 1.5)),
                "zc": zc,
                "hz": hz,
            },
        )
    if subtype == "intraparenchymal":
        r = float(math.exp(rng.uniform(math.log(5.0), math.log(22.0))))
        ang = float(rng.uniform(0, 2 * math.pi))
        rad = float(rng.uniform(0.15, 0.5))
        cx, cy = rad * head.a * math.cos(ang), rad * head.b * math.sin(ang)
        rz = max(r * float(rng.uniform(0.7, 1.2)), minz)
        return Bleed(
            subtype,
            float(rng.uniform(55, 90)),
            zc - rz * 1.4,
            zc + rz * 1.4,
            {
                "center": (cx, cy, zc),
                "radii": (r * float(rng.uniform(0.7, 1.3)), r, rz),
                "yaw": float(rng.uniform(0, math.pi)),
                "edema": float(rng.uniform(15, 21)),
            },
        )
    if subtype == "intraventricular":
        side = rng.random()
        sides = (-1.0, 1.0) if side < 0.4 else ((-1.0,) if side < 0.7 else (1.0,))
        return Bleed(
            subtype,
            float(rng.uniform(50, 75)),
            -5.0,
            25.0,
            {"sides": sides, "fill": float(rng.uniform(0.25, 1.0))},
        )
    raise ValueError(f"unknown bleed subtype {subtype!r}")


def sample_bleeds(rng: np.random.Generator, head: Head, geometry: Geometry) -> list[Bleed]:
    """Draw 1-3 bleeds whose vertical ranges overlap (one contiguous positive range).

    Subtype frequencies: subdural and subarachnoid 25%, intraparenchymal 26%,
    intraventricular 14%, epidural 10%. Sizes span small (a few slices, a few
    tens of mm^2) to large; densities 50-90 HU.
    """
    n = int(rng.choice([1, 1, 2, 2, 3]))
    names = list(_SUBTYPE_WEIGHTS)
    p = np.array([_SUBTYPE_WEIGHTS[k] for k in names])
    dz = geometry.slice_spacing * NATURAL_HALF_HEIGHT / head.z_half
    bleeds: list[Bleed] = []
    zc = float(rng.uniform(-35, 50))
    for i in range(n):
        subtype = names[int(rng.choice(len(names), p=p / p.sum()))]
        if i > 0:
            # near the middle of the first bleed so the painted ranges overlap
            first = bleeds[0]
            mid, half = (first.z_lo + first.z_hi) / 2.0, (first.z_hi - first.z_lo) / 2.0
            zc = float(np.clip(mid + rng.uniform(-0.35, 0.35) * half, -45, 60))
            if subtype == "intraventricular" and not -5.0 <= zc <= 25.0:
                subtype = "intraparenchymal"  # the ventricles are elsewhere
        bleeds.append(_sample_one(rng, head, subtype, zc, dz))
    return bleeds


def _angle_window(phi: np.ndarray, phi0: float, half: float) -> np.ndarray:
    """1 at ``phi0`` falling to 0 at ``half`` radians away (quadratic taper)."""
    d = np.angle(np.exp(1j * (phi - phi0))).astype(np.float32)
    return np.clip(1.0 - (d / half) ** 2, 0.0, None)


def _bleed_mask(
    b: Bleed, fr: _Frame, head: Head, f: dict[str, np.ndarray]
) -> tuple[int, int, np.ndarray | None]:
    """Mask of bleed ``b`` over local slices [a, b) of the chunk."""
    p = b.params
    if b.subtype == "epidural":
        a, e, m = fr.ellipsoid(p["center"], p["radii"])
        if m is None:
            return a, e, None
        return a, e, m & f["cavity"][a:e]
    if b.subtype == "intraparenchymal":
        a, e, m = fr.ellipsoid(p["center"], p["radii"], p["yaw"])
        if m is None:
            return a, e, None
        return a, e, m & f["brain"][a:e] & ~f["vent"][a:e]
    if b.subtype == "subdural":
        a, e = fr.krange(p["zc"] - p["hz"], p["zc"] + p["hz"])
        if a >= e:
            return a, e, None
        wz = np.clip(1.0 - ((fr.Z[a:e] - p["zc"]) / p["hz"]) ** 2, 0.0, None)
        w = p["width"] * _angle_window(f["phi"], p["phi"], p["half_angle"]) * wz
        d = f["depth"][a:e]
        inner = head.skull + f["extra"][a:e]
        return a, e, (d >= inner) & (d < inner + w)
    if b.subtype == "subarachnoid":
        a, e = fr.krange(p["zc"] - p["hz"], p["zc"] + p["hz"])
        if a >= e:
            return a, e, None
        wz = np.abs(fr.Z[a:e] - p["zc"]) <= p["hz"]
        if p["cistern"]:
            return a, e, f["cistern"][a:e] & wz
        win = _angle_window(f["phi"], p["phi"], p["half_angle"]) > 0
        # blood in the sulci and in the convexity subarachnoid space (extra-axial CSF)
        return a, e, (f["sulci"][a:e] | f["csf_layer"][a:e]) & win & wz
    if b.subtype == "intraventricular":
        m = None
        a0, e0 = fr.n, 0
        parts = []
        for side in p["sides"]:
            c, r, yaw = _lateral_ventricle(head, side)
            a, e, mm = fr.ellipsoid(c, r, yaw)
            if mm is None:
                continue
            # blood layers posteriorly (patient supine): y above a level
            level = c[1] + r[1] * (1.0 - 2.0 * p["fill"])
            parts.append((a, e, mm & (fr.Y >= level)))
            a0, e0 = min(a0, a), max(e0, e)
        if not parts:
            return 0, 0, None
        m = np.zeros((e0 - a0, *fr.shape[1:]), dtype=bool)
        for a, e, mm in parts:
            m[a - a0 : e - a0] |= mm
        return a0, e0, m
    raise ValueError(b.subtype)


def _lateral_ventricle(head: Head, side: float) -> tuple[tuple, tuple, float]:
    c = (side * (head.ventricle + 3.0), 2.0, 10.0)
    r = (head.ventricle, 26.0, 15.0)
    return c, r, side * math.radians(-12.0)


# --------------------------------------------------------------------------- render

_NOISE_BANK_SIZE = 1 << 22
_noise_bank: np.ndarray | None = None


def _add_noise(rng: np.random.Generator, vol: np.ndarray, sigma: float) -> None:
    """Add Gaussian noise of ``sigma`` HU to ``vol`` in place, one bank window per slice.

    Drawing fresh normals costs more than the whole phantom; slices instead
    take windows at random offsets (drawn from ``rng``) of a 4M-sample bank
    made once per process from a fixed seed, so the result is as
    deterministic as fresh draws and much cheaper.
    """
    global _noise_bank
    if _noise_bank is None:
        bank = np.random.default_rng(20191001).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
        _noise_bank = np.concatenate([bank, bank])  # windows may wrap around
    n, h, w = vol.shape
    per = h * w
    sig = np.float32(sigma)
    if per > _NOISE_BANK_SIZE:
        vol += rng.standard_normal(vol.shape, dtype=np.float32) * sig
        return
    offsets = rng.integers(0, _NOISE_BANK_SIZE, size=n)
    buf = np.empty((h, w), dtype=np.float32)
    for k, o in enumerate(offsets):
        np.multiply(_noise_bank[o : o + per].reshape(h, w), sig, out=buf)
        vol[k] += buf


@dataclass
class Phantom:
    """A rendered series, slices in ascending order along the normal.

    Attributes:
        hu: float32 HU, shape (n_slices, size, size), noise included.
        bleed: uint8 per voxel, 0 or ``1 + index`` in :data:`BLEED_SUBTYPES`.
        labels: uint8 (n_slices, 6) in the order of ``SUBTYPES`` (``any`` last).
        bleeds: the bleeds that were painted (dropped ones removed).
        bleed_slices: bool (n_bleeds_requested, n_slices), slices on which each
            requested bleed was painted (before overlap clean-up).
    """

    hu: np.ndarray
    bleed: np.ndarray
    labels: np.ndarray
    bleeds: list[Bleed]
    bleed_slices: np.ndarray


def min_bleed_pixels(pixel_spacing: float) -> int:
    """Smallest painted bleed cross-section on a slice, in pixels.

    ``max(3, ceil(10 mm^2 / pixel_area))``: 42 pixels at 0.49 mm, 3 at 2 mm.
    """
    return max(3, math.ceil(MIN_BLEED_AREA_MM2 / pixel_spacing**2))


def _render_chunk(
    geometry: Geometry,
    head: Head,
    bleeds: list[Bleed],
    k0: int,
    k1: int,
    noise_rng: np.random.Generator,
    min_px: int,
    painted: np.ndarray,
    box: tuple[int, int, int, int],
    out_hu: np.ndarray,
    out_code: np.ndarray,
) -> None:
    """Render slices [k0, k1): the head inside ``box`` (rows r0:r1, cols c0:c1), air outside."""
    fr = _Frame(geometry, head, k0, k1, box)
    shape = fr.shape
    d = _depth(fr, head)  # (k,H,W)
    # skull thicker towards the base
    extra = (6.0 * np.clip(-fr.Z / NATURAL_HALF_HEIGHT - 0.45, 0.0, 1.0)).astype(np.float32)
    t = head.skull + extra  # (k,H,1)
    hu = np.full(shape, _AIR, dtype=np.float32)
    np.copyto(hu, np.float32(40.0), where=d >= -head.scalp)  # skin
    np.copyto(hu, np.float32(-90.0), where=d >= -head.scalp + 1.3)  # fat
    np.copyto(hu, np.float32(45.0), where=d >= -1.0)  # galea / muscle
    np.copyto(hu, np.float32(head.hu_bone), where=d >= 0.0)  # outer table
    np.copyto(hu, np.float32(head.hu_diploe), where=d >= 1.8)
    np.copyto(hu, np.float32(head.hu_bone), where=d >= t - 1.5)  # inner table
    cavity = d >= t
    np.copyto(hu, np.float32(head.hu_csf), where=cavity)
    brain = d >= t + head.csf
    np.copyto(hu, np.float32(head.hu_grey), where=brain)
    np.copyto(hu, np.float32(head.hu_white), where=d >= t + head.csf + head.cortex)

    # sulci: CSF clefts through the cortical ribbon
    n_sulci, ph, fz = head.sulci
    phi = np.arctan2(fr.Y / head.b, fr.X / head.a).astype(np.float32)  # (1,H,W)
    # uneven spacing: the phase wanders slowly around the head
    arg = n_sulci * phi + ph + 2.5 * np.sin(3.0 * phi + 0.5 * ph)
    cz, sz = np.cos(fz * fr.Z), np.sin(fz * fr.Z)
    pattern = np.cos(arg) * cz
    pattern -= np.sin(arg) * sz
    # irregular widths and depths: thresholds vary slowly with the azimuth
    width = 0.80 + 0.10 * np.cos(5.0 * phi + ph)  # (1,H,W)
    depth = head.csf + head.cortex + 1.0 + 2.5 * np.sin(7.0 * phi + 2.0 * ph)
    sulci = brain & (d < t + depth) & (pattern > width)
    np.copyto(hu, np.float32(head.hu_csf), where=sulci)

    # deep grey nuclei (thalami / basal ganglia)
    for side in (-1.0, 1.0):
        a, e, m = fr.ellipsoid((side * 14.0, 4.0, -2.0), (9.0, 16.0, 12.0), side * 0.3)
        if m is not None:
            np.copyto(hu[a:e], np.float32(head.hu_grey - 2.0), where=m)

    # brainstem and the cistern ring around it
    a, e, stem = fr.ellipsoid((0.0, 14.0, -55.0), (13.0, 12.0, 45.0))
    a2, e2, ring = fr.ellipsoid((0.0, 14.0, -40.0), (16.5, 15.5, 22.0))
    cistern = np.zeros(shape, dtype=bool)
    if ring is not None:
        cistern[a2:e2] = ring
    if stem is not None:
        cistern[a:e] &= ~stem
        np.copyto(hu[a:e], np.float32(head.hu_white + 3.0), where=stem & brain[a:e])
    cistern &= brain
    np.copyto(hu, np.float32(head.hu_csf), where=cistern)

    # ventricles
    vent = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        c, r, yaw = _lateral_ventricle(head, side)
        a, e, m = fr.ellipsoid(c, r, yaw)
        if m is not None:
            vent[a:e] |= m
    for c, r in (((0.0, 4.0, -8.0), (1.6, 10.0, 8.0)), ((0.0, 30.0, -50.0), (5.0, 3.5, 8.0))):
        a, e, m = fr.ellipsoid(c, r)
        if m is not None:
            vent[a:e] |= m
    vent &= brain
    np.copyto(hu, np.float32(head.hu_csf), where=vent)

    # skull base: petrous ridges and clivus (bone), sphenoid sinus (air)
    zb = -0.72 * NATURAL_HALF_HEIGHT
    for c, r, yaw in (
        ((-32.0, 12.0, zb), (30.0, 7.0, 9.0), 0.7),
        ((32.0, 12.0, zb), (30.0, 7.0, 9.0), -0.7),
        ((0.0, -2.0, zb - 4.0), (7.0, 16.0, 12.0), 0.0),
    ):
        a, e, m = fr.ellipsoid(c, r, yaw)
        if m is not None:
            np.copyto(hu[a:e], np.float32(head.hu_bone * 0.85), where=m & cavity[a:e])
    a, e, m = fr.ellipsoid((0.0, -22.0, zb - 2.0), (9.0, 9.0, 8.0))
    if m is not None:
        np.copyto(hu[a:e], np.float32(_AIR), where=m & cavity[a:e])

    # smooth parenchymal texture (three plane waves)
    # sum_w amp cos(kx x + ky y + ph + kz z) with one kz: two in-plane fields
    # modulated by cos/sin(kz z), three full-volume operations in all
    tc = np.zeros(fr.X.shape, dtype=np.float32)
    ts = np.zeros(fr.X.shape, dtype=np.float32)
    for kx, ky, _kz, ph0, amp in head.waves:
        arg2 = kx * fr.X + ky * fr.Y + ph0  # (1,H,W)
        tc += amp * np.cos(arg2)
        ts += amp * np.sin(arg2)
    kz = head.waves[0][2]
    tex = tc * np.cos(kz * fr.Z)
    tex -= ts * np.sin(kz * fr.Z)
    soft = brain & ~vent & ~sulci & ~cistern
    np.add(hu, tex, out=hu, where=soft)

    # confounders every head has: a thin bright rim where about one pixel
    # blends the inner table into the CSF (partial volume), the falx, and the
    # hyperdense dural venous sinuses (superior sagittal, transverse)
    rim_w = np.float32(0.8 * fr.ps)
    rim = cavity & (d < t + rim_w)
    frac = (t + rim_w - d) / rim_w  # 1 at the bone .. 0 one pixel in
    frac *= np.float32(0.6 * (head.hu_bone - head.hu_csf))
    frac += np.float32(head.hu_csf)
    np.copyto(hu, frac, where=rim)
    del frac
    half = max(0.8, 0.5 * fr.ps)
    midline = np.abs(fr.X) < half  # (1,H,W)
    reach = 25.0 + 45.0 * np.clip(fr.Z / NATURAL_HALF_HEIGHT, 0.0, 1.0)  # (k,H,1)
    falx = brain & midline & (d < t + reach) & (fr.Z > -25.0)
    np.copyto(hu, np.float32(head.hu_dura), where=falx)
    near = cavity & ~rim & (d < t + 5.0)
    sss = near & (np.abs(fr.X) < 5.0) & (fr.Z > -30.0)
    transverse = near & (fr.Y > 0.55 * head.b) & (fr.Z > -52.0) & (fr.Z < -32.0)
    np.copyto(hu, np.float32(head.hu_sinus), where=sss | transverse)

    # IPH edema (tissue, not blood)
    for b in bleeds:
        if b.subtype == "intraparenchymal":
            p = b.params
            r = tuple(v * 1.45 for v in p["radii"])
            a, e, m = fr.ellipsoid(p["center"], r, p["yaw"])
            if m is not None:
                np.copyto(hu[a:e], np.float32(p["edema"]), where=m & soft[a:e])

    # calcifications: at least about one pixel / one slice big
    for cal in head.calcifications:
        rxy = max(cal.radius, 0.6 * fr.ps)
        rz = max(cal.radius, 0.6 * fr.dz)
        a, e, m = fr.ellipsoid(cal.center, (rxy, rxy, rz))
        if m is not None:
            np.copyto(hu[a:e], np.float32(cal.hu), where=m & cavity[a:e])

    # bleeds
    code = np.zeros(shape, dtype=np.uint8)
    if bleeds:
        base = hu.copy()
        fields = {
            "depth": d,
            "extra": extra,
            "cavity": cavity,
            "brain": brain,
            "vent": vent,
            "sulci": sulci,
            "csf_layer": cavity & ~brain,
            "cistern": cistern,
            "phi": phi,
        }
        for ib, b in enumerate(bleeds):
            a, e, m = _bleed_mask(b, fr, head, fields)
            if m is None:
                continue
            m &= base[a:e] < 150.0  # never over bone or calcifications
            counts = m.sum(axis=(1, 2))
            keep = counts >= min_px
            m &= keep[:, None, None]
            painted[ib, fr.k0 + a : fr.k0 + e] |= keep
            np.copyto(code[a:e], np.uint8(b.code), where=m)
            val = np.float32(b.density) + 0.6 * tex[a:e]
            np.copyto(hu[a:e], val, where=m)
        # overlaps may leave slivers below the minimal area: restore them
        for i in sorted({b.code for b in bleeds}) if len(bleeds) > 1 else ():
            mi = code == i
            cnt = mi.sum(axis=(1, 2))
            small = (cnt > 0) & (cnt < min_px)
            if small.any():
                sl = mi & small[:, None, None]
                np.copyto(hu, base, where=sl)
                code[sl] = 0

    r0, r1, c0, c1 = box
    out_hu.fill(_AIR)
    out_hu[:, r0:r1, c0:c1] = hu
    out_code.fill(0)
    out_code[:, r0:r1, c0:c1] = code
    _add_noise(noise_rng, out_hu, head.noise)
    np.maximum(out_hu, np.float32(-1024.0), out=out_hu)


def _head_box(geometry: Geometry, head: Head) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 that hold the head (scalp included) on every slice."""
    fr = _Frame(geometry, head, 0, 1)
    q = (fr.X / (head.a + head.scalp + 2.0)) ** 2 + (fr.Y / (head.b + head.scalp + 2.0)) ** 2
    inside = q[0] <= 1.0
    rows = np.nonzero(inside.any(axis=1))[0]
    cols = np.nonzero(inside.any(axis=0))[0]
    if rows.size == 0 or cols.size == 0:
        return 0, geometry.size, 0, geometry.size
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def render(
    geometry: Geometry,
    head: Head,
    bleeds: list[Bleed],
    noise_seed: int | np.random.SeedSequence,
) -> Phantom:
    """Render the series voxel by voxel and read the slice labels back.

    Args:
        geometry: where the slices are.
        head: the head to sample.
        bleeds: hemorrhages to paint; those that end up on no slice are dropped
            from :attr:`Phantom.bleeds`.
        noise_seed: seed of the noise generator (the same seed, the same noise).

    Returns:
        The :class:`Phantom`; ``labels[k, j]`` is 1 iff slice ``k`` holds
        painted voxels of subtype ``j`` (``any`` is the maximum).
    """
    n, size = geometry.n_slices, geometry.size
    hu = np.empty((n, size, size), dtype=np.float32)
    code = np.empty((n, size, size), dtype=np.uint8)
    step = max(1, _CHUNK_VOXELS // (size * size))
    rng = np.random.default_rng(noise_seed)
    min_px = min_bleed_pixels(geometry.pixel_spacing)
    painted = np.zeros((len(bleeds), n), dtype=bool)
    box = _head_box(geometry, head)
    for k0 in range(0, n, step):
        k1 = min(n, k0 + step)
        _render_chunk(
            geometry, head, bleeds, k0, k1, rng, min_px, painted, box, hu[k0:k1], code[k0:k1]
        )
    labels = np.zeros((n, len(SUBTYPES)), dtype=np.uint8)
    for i in range(len(BLEED_SUBTYPES)):
        labels[:, i] = (code == i + 1).any(axis=(1, 2))
    labels[:, -1] = labels[:, :-1].max(axis=1)
    kept = [b for i, b in enumerate(bleeds) if painted[i].any()]
    return Phantom(hu=hu, bleed=code, labels=labels, bleeds=kept, bleed_slices=painted)


def _contiguous(flags: np.ndarray) -> bool:
    idx = np.nonzero(flags)[0]
    return idx.size > 0 and int(idx[-1] - idx[0] + 1) == idx.size


def render_series(
    rng: np.random.Generator,
    geometry: Geometry,
    head: Head,
    *,
    positive: bool,
    noise_seed: int | np.random.SeedSequence,
    tries: int = 12,
) -> Phantom:
    """Render a negative series, or a positive one with one contiguous positive range.

    For a positive series, bleeds are drawn with :func:`sample_bleeds`; if the
    painted ``any`` range is not contiguous the last bleed is dropped, and if
    nothing could be painted (all cross-sections below the minimal area) new
    bleeds are drawn, up to ``tries`` times, then a single large
    intraparenchymal bleed in the middle of the series is used.
    """
    if not positive:
        return render(geometry, head, [], noise_seed)
    for _ in range(tries):
        bleeds = sample_bleeds(rng, head, geometry)
        ph = render(geometry, head, bleeds, noise_seed)
        if _contiguous(ph.labels[:, -1]):
            return ph
        # keep the bleeds whose slices join into one range, render once more
        flags = ph.bleed_slices
        order = np.argsort(-flags.sum(axis=1), kind="stable")
        union = np.zeros(geometry.n_slices, dtype=bool)
        chosen: list[int] = []
        for i in order:
            if flags[i].any() and _contiguous(union | flags[i]):
                union |= flags[i]
                chosen.append(int(i))
        if chosen and len(chosen) < len(bleeds):
            sub = [bleeds[i] for i in sorted(chosen)]
            ph = render(geometry, head, sub, noise_seed)
            if _contiguous(ph.labels[:, -1]):
                return ph
    dz = geometry.slice_spacing * NATURAL_HALF_HEIGHT / head.z_half
    big = Bleed(
        "intraparenchymal",
        75.0,
        -30.0,
        30.0,
        {
            "center": (0.25 * head.a, -0.2 * head.b, 10.0),
            "radii": (22.0, 22.0, max(22.0, 2.0 * dz)),
            "yaw": 0.0,
            "edema": 18.0,
        },
    )
    return render(geometry, head, [big], noise_seed)
