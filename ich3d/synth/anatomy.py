"""The head of the phantom: its parameters, how they are drawn, how its tissues are painted.

Tissue values (HU): air -1000, scalp skin/muscle 40-45 with a fat layer -90,
skull tables 1000-1500 with diploe 700-950, CSF 5-10, grey matter 33-40, white
matter 24-30 (plus a smooth +-3 HU texture), calcifications 100-300; confounders
in every head: falx 42-58, dural venous sinuses 48-68, a one-pixel
partial-volume rim between inner table and CSF, petrous ridges and clivus low
down. :func:`paint_head` paints them on a chunk of slices, one named function
per structure, in a fixed order (later ones overwrite earlier ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ich3d.synth.geometry import NATURAL_HALF_HEIGHT, Frame, Geometry, depth

__all__ = [
    "AIR_HU",
    "Calcification",
    "Head",
    "Tissues",
    "sample_head",
    "lateral_ventricle",
    "paint_head",
    "paint_calcifications",
]

#: HU of air (outside the head, sphenoid sinus).
AIR_HU = -1000.0


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


def _sample_calcifications(arng: np.random.Generator) -> list[Calcification]:
    """The head's physiological calcifications (pineal, choroid plexus, falx, basal ganglia)."""
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
    return calcs


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
    calcs = _sample_calcifications(arng)

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


def lateral_ventricle(head: Head, side: float) -> tuple[tuple, tuple, float]:
    c = (side * (head.ventricle + 3.0), 2.0, 10.0)
    r = (head.ventricle, 26.0, 15.0)
    return c, r, side * math.radians(-12.0)


# --------------------------------------------------------------------------- painting


@dataclass
class Tissues:
    """Where the tissues of a painted chunk lie (arrays broadcastable to the chunk).

    Attributes:
        depth: approximate depth below the outer skull surface (mm, negative outside).
        extra: extra skull thickness towards the base (mm).
        inner: depth of the inner table surface (skull thickness + ``extra``).
        cavity: inside the inner table.
        brain: the brain surface and below (under the extra-axial CSF).
        sulci: CSF clefts through the cortical ribbon.
        phi: azimuth around the head (radians), in-plane.
        cistern: the cistern ring around the brainstem.
        vent: the ventricles.
        soft: parenchyma (brain without ventricles, sulci, cisterns).
        tex: the smooth parenchymal texture (HU) added to ``soft``.
    """

    depth: np.ndarray
    extra: np.ndarray
    inner: np.ndarray
    cavity: np.ndarray
    brain: np.ndarray
    sulci: np.ndarray
    phi: np.ndarray
    cistern: np.ndarray
    vent: np.ndarray
    soft: np.ndarray
    tex: np.ndarray

    @property
    def csf_layer(self) -> np.ndarray:
        """The convexity subarachnoid space (extra-axial CSF)."""
        return self.cavity & ~self.brain


def paint_head(fr: Frame, head: Head) -> tuple[np.ndarray, Tissues]:
    """Paint the head on the chunk of ``fr``: layers, sulci, deep grey, brainstem,
    ventricles, skull base, texture and the confounders every head has.

    Calcifications are painted separately (:func:`paint_calcifications`), after
    the edema of the bleeds.

    Returns:
        float32 HU of the chunk (air outside the head) and its :class:`Tissues`.
    """
    hu, d, extra, t, cavity, brain = _paint_layers(fr, head)
    sulci, phi = _paint_sulci(fr, head, hu, d, t, brain)
    _paint_deep_grey(fr, head, hu)
    cistern = _paint_brainstem_and_cisterns(fr, head, hu, brain)
    vent = _paint_ventricles(fr, head, hu, brain)
    _paint_skull_base(fr, head, hu, cavity)
    tex = _texture(fr, head)
    soft = brain & ~vent & ~sulci & ~cistern
    np.add(hu, tex, out=hu, where=soft)
    _paint_confounders(fr, head, hu, d, t, cavity, brain)
    tissues = Tissues(d, extra, t, cavity, brain, sulci, phi, cistern, vent, soft, tex)
    return hu, tissues


def _paint_layers(
    fr: Frame, head: Head
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scalp, skull tables and diploe, extra-axial CSF, cortex and white matter.

    Returns:
        ``hu``, depth, extra skull thickness, inner-table depth, cavity, brain.
    """
    d = depth(fr, head)  # (k,H,W)
    # skull thicker towards the base
    extra = (6.0 * np.clip(-fr.Z / NATURAL_HALF_HEIGHT - 0.45, 0.0, 1.0)).astype(np.float32)
    t = head.skull + extra  # (k,H,1)
    hu = np.full(fr.shape, AIR_HU, dtype=np.float32)
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
    return hu, d, extra, t, cavity, brain


def _paint_sulci(
    fr: Frame, head: Head, hu: np.ndarray, d: np.ndarray, t: np.ndarray, brain: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSF clefts through the cortical ribbon; returns the sulci mask and the azimuth."""
    n_sulci, ph, fz = head.sulci
    phi = np.arctan2(fr.Y / head.b, fr.X / head.a).astype(np.float32)  # (1,H,W)
    # uneven spacing: the phase wanders slowly around the head
    arg = n_sulci * phi + ph + 2.5 * np.sin(3.0 * phi + 0.5 * ph)
    cz, sz = np.cos(fz * fr.Z), np.sin(fz * fr.Z)
    pattern = np.cos(arg) * cz
    pattern -= np.sin(arg) * sz
    # irregular widths and depths: thresholds vary slowly with the azimuth
    width = 0.80 + 0.10 * np.cos(5.0 * phi + ph)  # (1,H,W)
    reach = head.csf + head.cortex + 1.0 + 2.5 * np.sin(7.0 * phi + 2.0 * ph)
    sulci = brain & (d < t + reach) & (pattern > width)
    np.copyto(hu, np.float32(head.hu_csf), where=sulci)
    return sulci, phi


def _paint_deep_grey(fr: Frame, head: Head, hu: np.ndarray) -> None:
    """Deep grey nuclei (thalami / basal ganglia)."""
    for side in (-1.0, 1.0):
        a, e, m = fr.ellipsoid((side * 14.0, 4.0, -2.0), (9.0, 16.0, 12.0), side * 0.3)
        if m is not None:
            np.copyto(hu[a:e], np.float32(head.hu_grey - 2.0), where=m)


def _paint_brainstem_and_cisterns(
    fr: Frame, head: Head, hu: np.ndarray, brain: np.ndarray
) -> np.ndarray:
    """The brainstem and the cistern ring around it; returns the cistern mask."""
    a, e, stem = fr.ellipsoid((0.0, 14.0, -55.0), (13.0, 12.0, 45.0))
    a2, e2, ring = fr.ellipsoid((0.0, 14.0, -40.0), (16.5, 15.5, 22.0))
    cistern = np.zeros(fr.shape, dtype=bool)
    if ring is not None:
        cistern[a2:e2] = ring
    if stem is not None:
        cistern[a:e] &= ~stem
        np.copyto(hu[a:e], np.float32(head.hu_white + 3.0), where=stem & brain[a:e])
    cistern &= brain
    np.copyto(hu, np.float32(head.hu_csf), where=cistern)
    return cistern


def _paint_ventricles(fr: Frame, head: Head, hu: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Lateral, third and fourth ventricles (CSF); returns their mask."""
    vent = np.zeros(fr.shape, dtype=bool)
    for side in (-1.0, 1.0):
        c, r, yaw = lateral_ventricle(head, side)
        a, e, m = fr.ellipsoid(c, r, yaw)
        if m is not None:
            vent[a:e] |= m
    for c, r in (((0.0, 4.0, -8.0), (1.6, 10.0, 8.0)), ((0.0, 30.0, -50.0), (5.0, 3.5, 8.0))):
        a, e, m = fr.ellipsoid(c, r)
        if m is not None:
            vent[a:e] |= m
    vent &= brain
    np.copyto(hu, np.float32(head.hu_csf), where=vent)
    return vent


def _paint_skull_base(fr: Frame, head: Head, hu: np.ndarray, cavity: np.ndarray) -> None:
    """Petrous ridges and clivus (bone), sphenoid sinus (air)."""
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
        np.copyto(hu[a:e], np.float32(AIR_HU), where=m & cavity[a:e])


def _texture(fr: Frame, head: Head) -> np.ndarray:
    """Smooth parenchymal texture (three plane waves), HU.

    ``sum_w amp cos(kx x + ky y + ph + kz z)`` with one kz: two in-plane fields
    modulated by cos/sin(kz z), three full-volume operations in all.
    """
    tc = np.zeros(fr.X.shape, dtype=np.float32)
    ts = np.zeros(fr.X.shape, dtype=np.float32)
    for kx, ky, _kz, ph0, amp in head.waves:
        arg2 = kx * fr.X + ky * fr.Y + ph0  # (1,H,W)
        tc += amp * np.cos(arg2)
        ts += amp * np.sin(arg2)
    kz = head.waves[0][2]
    tex = tc * np.cos(kz * fr.Z)
    tex -= ts * np.sin(kz * fr.Z)
    return tex


def _paint_confounders(
    fr: Frame,
    head: Head,
    hu: np.ndarray,
    d: np.ndarray,
    t: np.ndarray,
    cavity: np.ndarray,
    brain: np.ndarray,
) -> None:
    """Confounders every head has.

    A thin bright rim where about one pixel blends the inner table into the
    CSF (partial volume), the falx, and the hyperdense dural venous sinuses
    (superior sagittal, transverse).
    """
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


def paint_calcifications(fr: Frame, head: Head, hu: np.ndarray, cavity: np.ndarray) -> None:
    """Calcifications, at least about one pixel / one slice big."""
    for cal in head.calcifications:
        rxy = max(cal.radius, 0.6 * fr.ps)
        rz = max(cal.radius, 0.6 * fr.dz)
        a, e, m = fr.ellipsoid(cal.center, (rxy, rxy, rz))
        if m is not None:
            np.copyto(hu[a:e], np.float32(cal.hu), where=m & cavity[a:e])
