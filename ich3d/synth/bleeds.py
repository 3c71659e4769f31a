"""Hemorrhages of the five RSNA subtypes: how they are drawn and where they are painted.

A slice is positive for a subtype iff it holds painted voxels of that subtype;
a bleed's cross-section smaller than :func:`min_bleed_pixels` on a slice is
not painted on that slice (labels are never noise). Acute blood is 50-90 HU,
an intraparenchymal bleed has a 15-21 HU edema rim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ich3d.data.schema import SUBTYPES
from ich3d.synth.anatomy import Head, Tissues, lateral_ventricle
from ich3d.synth.geometry import NATURAL_HALF_HEIGHT, Frame, Geometry

__all__ = [
    "BLEED_SUBTYPES",
    "MIN_BLEED_AREA_MM2",
    "Bleed",
    "min_bleed_pixels",
    "sample_bleeds",
    "bleed_mask",
    "paint_edema",
    "paint_bleeds",
]

#: The five hemorrhage subtypes in CSV order (``any`` excluded); a bleed code
#: in :attr:`~ich3d.synth.phantom.Phantom.bleed` is ``1 + index`` in this tuple.
BLEED_SUBTYPES: tuple[str, ...] = SUBTYPES[:5]

#: Minimal painted cross-section of a bleed on one slice, in mm^2 (see
#: :func:`min_bleed_pixels`).
MIN_BLEED_AREA_MM2 = 10.0


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


def bleed_mask(b: Bleed, fr: Frame, head: Head, f: Tissues) -> tuple[int, int, np.ndarray | None]:
    """Mask of bleed ``b`` over local slices [a, b) of the chunk (``f``: its tissues)."""
    p = b.params
    if b.subtype == "epidural":
        a, e, m = fr.ellipsoid(p["center"], p["radii"])
        if m is None:
            return a, e, None
        return a, e, m & f.cavity[a:e]
    if b.subtype == "intraparenchymal":
        a, e, m = fr.ellipsoid(p["center"], p["radii"], p["yaw"])
        if m is None:
            return a, e, None
        return a, e, m & f.brain[a:e] & ~f.vent[a:e]
    if b.subtype == "subdural":
        a, e = fr.krange(p["zc"] - p["hz"], p["zc"] + p["hz"])
        if a >= e:
            return a, e, None
        wz = np.clip(1.0 - ((fr.Z[a:e] - p["zc"]) / p["hz"]) ** 2, 0.0, None)
        w = p["width"] * _angle_window(f.phi, p["phi"], p["half_angle"]) * wz
        d = f.depth[a:e]
        inner = head.skull + f.extra[a:e]
        return a, e, (d >= inner) & (d < inner + w)
    if b.subtype == "subarachnoid":
        a, e = fr.krange(p["zc"] - p["hz"], p["zc"] + p["hz"])
        if a >= e:
            return a, e, None
        wz = np.abs(fr.Z[a:e] - p["zc"]) <= p["hz"]
        if p["cistern"]:
            return a, e, f.cistern[a:e] & wz
        win = _angle_window(f.phi, p["phi"], p["half_angle"]) > 0
        # blood in the sulci and in the convexity subarachnoid space (extra-axial CSF)
        return a, e, (f.sulci[a:e] | f.csf_layer[a:e]) & win & wz
    if b.subtype == "intraventricular":
        m = None
        a0, e0 = fr.n, 0
        parts = []
        for side in p["sides"]:
            c, r, yaw = lateral_ventricle(head, side)
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


def min_bleed_pixels(pixel_spacing: float) -> int:
    """Smallest painted bleed cross-section on a slice, in pixels.

    ``max(3, ceil(10 mm^2 / pixel_area))``: 42 pixels at 0.49 mm, 3 at 2 mm.
    """
    return max(3, math.ceil(MIN_BLEED_AREA_MM2 / pixel_spacing**2))


def paint_edema(fr: Frame, bleeds: list[Bleed], hu: np.ndarray, tissues: Tissues) -> None:
    """The edema rim of intraparenchymal bleeds (tissue, not blood), in the parenchyma."""
    for b in bleeds:
        if b.subtype == "intraparenchymal":
            p = b.params
            r = tuple(v * 1.45 for v in p["radii"])
            a, e, m = fr.ellipsoid(p["center"], r, p["yaw"])
            if m is not None:
                np.copyto(hu[a:e], np.float32(p["edema"]), where=m & tissues.soft[a:e])


def paint_bleeds(
    fr: Frame,
    head: Head,
    bleeds: list[Bleed],
    hu: np.ndarray,
    tissues: Tissues,
    min_px: int,
    painted: np.ndarray,
) -> np.ndarray:
    """Paint ``bleeds`` into ``hu`` (in place) where each covers ``min_px`` pixels of a slice.

    Never over bone or calcifications (HU >= 150 before painting); overlaps
    that leave slivers below the minimal area are restored.

    Args:
        fr: the chunk's frame.
        head: the head.
        bleeds: the bleeds to paint.
        hu: the chunk's HU (anatomy painted).
        tissues: the chunk's tissues.
        min_px: :func:`min_bleed_pixels` of the series.
        painted: bool (n_bleeds, n_slices) of the series; the slices of this
            chunk on which each bleed was painted are set.

    Returns:
        uint8 bleed codes of the chunk (0 or ``1 + index`` in :data:`BLEED_SUBTYPES`).
    """
    code = np.zeros(fr.shape, dtype=np.uint8)
    if not bleeds:
        return code
    base = hu.copy()
    for ib, b in enumerate(bleeds):
        a, e, m = bleed_mask(b, fr, head, tissues)
        if m is None:
            continue
        m &= base[a:e] < 150.0  # never over bone or calcifications
        counts = m.sum(axis=(1, 2))
        keep = counts >= min_px
        m &= keep[:, None, None]
        painted[ib, fr.k0 + a : fr.k0 + e] |= keep
        np.copyto(code[a:e], np.uint8(b.code), where=m)
        val = np.float32(b.density) + 0.6 * tissues.tex[a:e]
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
    return code
