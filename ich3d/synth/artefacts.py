"""CT artefacts of the phantom that mimic blood: partial volume of the vault, skull-base streaks.

**Partial volume of the skull vault.**

A CT slice is not a plane: each pixel averages the tissue over the slice's
thickness along the normal. Where the skull surface is steep (mid-head) the
averaging reaches a pixel or less into the cavity, but where the slice cuts
the vault obliquely (near the vertex, and where the skull curves in at its
base) a slab a few millimetres thick holds skull above or below a pixel that
lies in the cavity at the slice's centre plane. Those pixels read between
brain and bone: a crescent of 60-300 HU along the inner table that is bright
in the brain window (0-80 HU) and the subdural window, as an epidural or
subdural hematoma is. On real head CT this is what a slice CNN trained on
cranial-cavity slices fires on in the first and last slices of negative
series (with the streaks of the skull base, below), and why the maximum slice probability is the weakest volume
baseline there (docs/method.md: AUC 0.60).

The model is physical and carries no parameter chosen for an outcome. The
slab is the slice spacing (the synthetic series' slices are contiguous). Over
it the depth below the skull surface (:func:`ich3d.synth.geometry.depth`)
changes by ``span = |d depth / d z| * spacing`` (the derivative by central
differences a quarter slab either side); a cavity pixel at depth ``d`` sees
the depths ``[d - span / 2, d + span / 2]``, and the part of that range above
the inner table (outer table, diploe, inner table, at their HU) replaces the
same fraction of the pixel: ``HU <- (1 - f) * HU + (integral of the skull's
HU over the overlap) / span``, ``f`` the overlap over ``span``. The fraction
is continuous, so the crescent fades from bone to brain through every value
between. It is applied to every series, negative and positive alike, after
the hemorrhages are painted and before the noise, and never to a painted
hemorrhage voxel: a bleed stays 50-90 HU, so the rule that labels are never
noise (a positive slice shows at least ``min_bleed_pixels`` of blood) holds.
Labels are read from the painted voxels and do not change. The petrous ridges and the clivus, the scalp and
the air above the vertex are not averaged in; nor are the voxels that are
skull at the centre plane.

**Beam-hardening streaks of the skull base.** Between the petrous ridges the
beam crosses the most bone of any head slice and hardens: a dark band (the
Hounsfield bar) joins the ridges and thin bright streaks run back from their
apices across the posterior fossa, where they look like subarachnoid blood
or a small contusion. The phantom paints a band ``-A`` HU deep (linear fall-off
over 5 mm either side of the line joining the ridges, between them) and three
streaks from each apex, 0.6 mm (at least half a pixel) half width, ``+A`` HU at the apex decaying over
40 mm, fanned 20 degrees apart about the posterior direction (the sum clipped to
``+-A`` where they cross); ``A = 20 +
20 * (bone HU - 1000) / 500`` (20-40 HU, denser bone hardens more: within the
ranges reported for these artefacts; no draw), weighted by ``1 - (dz / 12
mm)^2`` of the slice's natural height from the ridges' level, on cavity
pixels that are not bone, calcification (< 150 HU) or hemorrhage. Both artefacts are in
every series; :func:`paint_artefacts` applies them in that order.
"""

from __future__ import annotations

import math

import numpy as np

from ich3d.synth.anatomy import Head, Tissues
from ich3d.synth.geometry import NATURAL_HALF_HEIGHT, Frame, depth

__all__ = ["paint_artefacts", "paint_partial_volume", "paint_streaks"]

#: Natural height of the petrous ridges (as painted by the skull base).
RIDGE_Z = -0.72 * NATURAL_HALF_HEIGHT


class _Shifted:
    """The coordinates of ``fr`` moved by ``dz`` along the natural vertical axis."""

    def __init__(self, fr: Frame, dz: float) -> None:
        self.X = fr.X
        self.Y = fr.Y
        self.Z = fr.Z + np.float32(dz)


def paint_partial_volume(
    fr: Frame, head: Head, hu: np.ndarray, tissues: Tissues, code: np.ndarray
) -> None:
    """Average the skull into the cavity pixels of ``hu`` over each slice's slab, in place.

    Args:
        fr: the chunk's frame (its ``dz`` is the natural slice spacing).
        head: the head.
        hu: float32 HU of the chunk, hemorrhages painted, no noise yet.
        tissues: the chunk's tissues (depth, inner-table depth and cavity at the centre plane).
        code: the chunk's hemorrhage codes (0 = no blood); those voxels are left alone.
    """
    q = 0.25 * fr.dz
    span = depth(_Shifted(fr, q), head)
    span -= depth(_Shifted(fr, -q), head)
    np.abs(span, out=span)
    span *= np.float32(fr.dz / (2.0 * q))  # depth range covered by the slab
    d, t = tissues.depth, tissues.inner
    lo = d - np.float32(0.5) * span  # shallowest depth the slab reaches
    mix = tissues.cavity & (lo < t) & (span > 0.0) & (code == 0)
    if not mix.any():
        return
    lo = np.maximum(lo, np.float32(0.0))
    layers = (
        (np.float32(0.0), np.float32(1.8), head.hu_bone),  # outer table
        (np.float32(1.8), t - np.float32(1.5), head.hu_diploe),
        (t - np.float32(1.5), t, head.hu_bone),  # inner table
    )
    covered = np.zeros(fr.shape, dtype=np.float32)
    skull = np.zeros(fr.shape, dtype=np.float32)
    for a, b, layer_hu in layers:
        ov = np.clip(np.minimum(b, t) - np.maximum(a, lo), np.float32(0.0), None)
        covered += ov
        skull += ov * np.float32(layer_hu)
    safe = np.where(mix, span, np.float32(1.0))
    frac = np.minimum(covered / safe, np.float32(1.0))
    out = hu * (np.float32(1.0) - frac) + skull / np.maximum(safe, covered)
    np.copyto(hu, out, where=mix)


def paint_streaks(
    fr: Frame, head: Head, hu: np.ndarray, tissues: Tissues, code: np.ndarray
) -> None:
    """Paint the skull base's beam-hardening band and streaks into ``hu``, in place (not on ``code > 0``)."""
    w = 1.0 - ((fr.Z - np.float32(RIDGE_Z)) / np.float32(12.0)) ** 2  # (k,H,1)
    np.clip(w, 0.0, None, out=w)
    ks = np.nonzero(w.reshape(w.shape[0], -1).max(axis=1) > 0.0)[0]
    if ks.size == 0:
        return
    a, b = int(ks[0]), int(ks[-1]) + 1
    amp = np.float32(20.0 + 20.0 * (head.hu_bone - 1000.0) / 500.0)
    x, y = fr.X[0], fr.Y[0]  # (H,W) head frame, mm; +y posterior
    band = np.clip(1.0 - np.abs(y - 12.0) / 5.0, 0.0, None) * (np.abs(x) < 30.0)
    field = -amp * band
    half = max(0.6, 0.5 * fr.ps)
    for side in (-1.0, 1.0):
        ax, ay = side * 12.0, 12.0
        for deg in (-20.0, 0.0, 20.0):
            th = math.radians(90.0 + side * deg)  # fanned about +y (posterior)
            ux, uy = math.cos(th), math.sin(th)
            s = (x - ax) * ux + (y - ay) * uy  # along the ray
            off = np.abs(-(x - ax) * uy + (y - ay) * ux)  # across it
            ray = (s > 0.0) & (off < half)
            field = field + np.where(ray, amp * np.exp(-np.maximum(s, 0.0) / 40.0), 0.0)
    field = np.clip(field, -amp, amp).astype(np.float32)  # where the streaks cross
    sl = hu[a:b]
    ok = tissues.cavity[a:b] & (sl < 150.0) & (code[a:b] == 0)
    np.copyto(sl, sl + w[a:b] * field, where=ok)


def paint_artefacts(
    fr: Frame, head: Head, hu: np.ndarray, tissues: Tissues, code: np.ndarray
) -> None:
    """Both artefacts of this module, partial volume first, into ``hu`` in place."""
    paint_partial_volume(fr, head, hu, tissues, code)
    paint_streaks(fr, head, hu, tissues, code)
