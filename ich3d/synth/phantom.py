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
and clivus low down; two CT artefacts, the slice-thickness partial volume of
the vault and the skull base's beam-hardening streaks
(:mod:`ich3d.synth.artefacts`); Gaussian noise of 5-10 HU everywhere, then a floor at
-1024. A count of 60-95 HU pixels per slice separates positive from negative
slices with an AUC of about 0.87 (0.81 per volume), so the task needs more
than a threshold.

Everything is pure numpy; randomness comes only from the ``numpy.random.Generator``
objects passed in. The parts live in :mod:`ich3d.synth.geometry`,
:mod:`ich3d.synth.anatomy` and :mod:`ich3d.synth.bleeds`; this module renders
them and re-exports what a caller needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ich3d.data.schema import SUBTYPES
from ich3d.synth.anatomy import (
    AIR_HU,
    Calcification,
    Head,
    paint_calcifications,
    paint_head,
    sample_head,
)
from ich3d.synth.artefacts import paint_artefacts
from ich3d.synth.bleeds import (
    BLEED_SUBTYPES,
    MIN_BLEED_AREA_MM2,
    Bleed,
    min_bleed_pixels,
    paint_bleeds,
    paint_edema,
    sample_bleeds,
)
from ich3d.synth.geometry import NATURAL_HALF_HEIGHT, Frame, Geometry, sample_geometry

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
    "MIN_BLEED_AREA_MM2",
]

_CHUNK_VOXELS = 4_000_000

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
    artefacts: bool = True,
) -> None:
    """Render slices [k0, k1): the head inside ``box`` (rows r0:r1, cols c0:c1), air outside."""
    fr = Frame(geometry, head, k0, k1, box)
    hu, tissues = paint_head(fr, head)
    paint_edema(fr, bleeds, hu, tissues)
    paint_calcifications(fr, head, hu, tissues.cavity)
    code = paint_bleeds(fr, head, bleeds, hu, tissues, min_px, painted)
    if artefacts:
        paint_artefacts(fr, head, hu, tissues, code)
    r0, r1, c0, c1 = box
    out_hu.fill(AIR_HU)
    out_hu[:, r0:r1, c0:c1] = hu
    out_code.fill(0)
    out_code[:, r0:r1, c0:c1] = code
    _add_noise(noise_rng, out_hu, head.noise)
    np.maximum(out_hu, np.float32(-1024.0), out=out_hu)


def _head_box(geometry: Geometry, head: Head) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 that hold the head (scalp included) on every slice."""
    fr = Frame(geometry, head, 0, 1)
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
    artefacts: bool = True,
) -> Phantom:
    """Render the series voxel by voxel and read the slice labels back.

    Args:
        geometry: where the slices are.
        head: the head to sample.
        bleeds: hemorrhages to paint; those that end up on no slice are dropped
            from :attr:`Phantom.bleeds`.
        noise_seed: seed of the noise generator (the same seed, the same noise).
        artefacts: paint the CT artefacts of :mod:`ich3d.synth.artefacts` (default True).

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
            geometry, head, bleeds, k0, k1, rng, min_px, painted, box, hu[k0:k1], code[k0:k1], artefacts
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
    artefacts: bool = True,
) -> Phantom:
    """Render a negative series, or a positive one with one contiguous positive range.

    For a positive series, bleeds are drawn with :func:`sample_bleeds`; if the
    painted ``any`` range is not contiguous the last bleed is dropped, and if
    nothing could be painted (all cross-sections below the minimal area) new
    bleeds are drawn, up to ``tries`` times, then a single large
    intraparenchymal bleed in the middle of the series is used.
    """
    if not positive:
        return render(geometry, head, [], noise_seed, artefacts)
    for _ in range(tries):
        bleeds = sample_bleeds(rng, head, geometry)
        ph = render(geometry, head, bleeds, noise_seed, artefacts)
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
            ph = render(geometry, head, sub, noise_seed, artefacts)
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
    return render(geometry, head, [big], noise_seed, artefacts)
