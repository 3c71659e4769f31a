"""Key slices and heat maps (``ich3d predict --explain N``): which slices drive a volume's call, and where.

**Key slices.** Every slice of a volume gets a score of how much it drives the
volume's call, and the ``N`` slices with the highest score are its key slices
(ties: the higher stage-1 probability, then the lower index). The score is

* ``per_slice``: the volume model's own per-slice probability where its sequence
  head labels every slice (``model.per_slice``; the volume probability is their
  maximum, so the key slices are the slices that make it);
* ``occlusion``: otherwise the drop of the volume probability when the slice is
  left out of the sequence (the head re-run on the other slices' features; a
  negative drop: the slice speaks against a bleed);
* ``slice_cnn``: the stage-1 slice probability, when there is no volume model.

With depth pooling (``data.depth_pool`` k > 1) a pooled slice's score goes to each
of the k slices it pools. The stage-1 slice probability is written beside.

**Heat maps.** A class-activation map of the stage-1 slice CNN on each key slice:
Grad-CAM (:class:`monai.visualize.GradCAM`) of the logit of ``data.label``, target
layer = the rectified output of the encoder's last convolution (``units.5`` of
``patel_cnn``), upsampled to the slice and normalised to [0, 1] per slice, drawn
over the brain window (the input channel nearest to W80/L40).

Files, per volume, in ``OUT/explain/<volume key>/`` (the cache's hashed key; no
identifier in a file name or a title):

* ``key_slices.csv``: ``rank, slice_index, score, score_kind, slice_probability,
  volume_probability, cam_row, cam_col`` (the CAM's peak, in slice pixels; empty for
  a flat map, which has no spatial evidence);
* ``slice_<index>.png``: the brain window with the CAM overlaid, per key slice;
* ``contact_sheet.png``: every key slice of the volume, window and overlay.

``on_volume`` receives each volume's :class:`VolumeExplanation` (the arrays the PNGs
draw) as it is written: ``ich3d predict --dicom-out`` turns it into DICOM objects
(:mod:`ich3d.evaluation.prediction.dicom_out`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.visualize import GradCAM
from torch import Tensor, nn

from ich3d.data.cache import atomic_write_csv
from ich3d.data.context import center_channel
from ich3d.data.windows import WindowSpec, resolve_windows
from ich3d.errors import UserError
from ich3d.evaluation.prediction.explain_plots import contact_sheet, overlay_png

__all__ = [
    "SCORE_KINDS",
    "SliceCAM",
    "VolumeExplanation",
    "brain_channel",
    "choose_key_slices",
    "explain_volumes",
    "occlusion_scores",
    "safe_key",
]

log = logging.getLogger(__name__)

#: How a key slice's score was computed (see the module docstring).
SCORE_KINDS: tuple[str, ...] = ("per_slice", "occlusion", "slice_cnn")

_BRAIN = (40.0, 80.0)
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


def safe_key(key: str) -> str:
    """A file name for a volume key: the key itself when it is a plain token, else its sha256 (16 hex)."""
    key = str(key)
    if _SAFE_KEY.match(key) and not key.startswith("."):
        return key
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def brain_channel(windows: Sequence[WindowSpec]) -> int:
    """The input channel whose window is nearest the brain window (centre 40, width 80 HU)."""
    pairs = resolve_windows(windows)
    return int(np.argmin([abs(c - _BRAIN[0]) + abs(w - _BRAIN[1]) for c, w in pairs]))


def choose_key_slices(scores: np.ndarray, slice_probs: np.ndarray, n: int) -> list[int]:
    """The ``n`` slice indices of highest score (ties: higher stage-1 probability, then lower index)."""
    scores = np.asarray(scores, dtype=np.float64)
    probs = np.asarray(slice_probs, dtype=np.float64)
    if scores.shape != probs.shape:
        raise ValueError(f"{scores.shape[0]} scores for {probs.shape[0]} slices")
    order = np.lexsort((np.arange(len(scores)), -probs, -scores))
    return [int(i) for i in order[: max(0, int(n))]]


def _column(logits: Tensor, primary: int | None) -> Tensor:
    """The ``data.label`` column of ``(..., K)`` logits (binary models: the logits themselves)."""
    if primary is None:
        return logits
    return logits[..., int(primary)]


def occlusion_scores(model: nn.Module, volume: Tensor, primary: int | None = None) -> tuple[np.ndarray, float]:
    """Per slice, the drop of the volume probability when that slice is left out of the sequence.

    Args:
        model: a ``VolumeClassifier`` (``encode``, ``head_logits``).
        volume: ``(T, C, H, W)`` the volume's (depth-pooled) slices.
        primary: the column of ``data.label`` for a model of several targets.

    Returns:
        ``(T,)`` drops (probability with every slice minus without slice ``t``;
        a one-slice volume: its probability) and the volume probability.
    """
    with torch.inference_mode():
        feats = model.encode(volume[None])  # (1, T, F)
        t = feats.shape[1]
        full = float(torch.sigmoid(_column(model.head_logits(feats), primary).double()).reshape(-1)[0])
        if t == 1:
            return np.array([full]), full
        keep = ~torch.eye(t, dtype=torch.bool, device=feats.device)  # row i: every slice but i
        variants = feats[0].unsqueeze(0).expand(t, t, -1)[keep].reshape(t, t - 1, -1)
        lengths = torch.full((t,), t - 1, dtype=torch.long, device=feats.device)
        without = torch.sigmoid(_column(model.head_logits(variants, lengths), primary).double()).reshape(-1)
    return (full - without.cpu().numpy()).astype(np.float64), full


def _per_slice_scores(model: nn.Module, volume: Tensor, primary: int | None) -> tuple[np.ndarray, float]:
    """The per-slice probabilities of a head that labels every slice, and their maximum."""
    with torch.inference_mode():
        logits = _column(model.slice_logits(volume[None]), primary)[0]
        p = torch.sigmoid(logits.double()).cpu().numpy().reshape(-1)
    return p, float(p.max())


class _Logits(nn.Module):
    """A slice classifier's logits as ``(N, K)`` (MONAI's CAM tools index a class column)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out[:, None] if out.ndim == 1 else out


def _last_conv_layer(encoder: nn.Module) -> str:
    """The name of the encoder's last convolution's output layer: its ReLU when one follows it."""
    names = [(n, m) for n, m in encoder.named_modules() if n]
    convs = [i for i, (_, m) in enumerate(names) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"the slice encoder {type(encoder).__name__} has no 2D convolution: no class-activation map")
    i = convs[-1]
    if i + 1 < len(names) and isinstance(names[i + 1][1], nn.ReLU):
        return names[i + 1][0]
    return names[i][0]


def _normalize(cam: Tensor) -> Tensor:
    """Each map to [0, 1] by its min and max; a flat map (no spatial evidence) is all zeros."""
    flat = cam.reshape(cam.shape[0], -1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = hi - lo
    flat_map = span <= 1e-6 * torch.clamp(hi.abs(), min=1e-12)
    scale = torch.where(flat_map, torch.ones_like(span), span)
    out = (flat - lo[:, None]) / scale[:, None]
    out[flat_map] = 0.0
    return out.reshape(cam.shape)


class SliceCAM:
    """Grad-CAM of a stage-1 slice classifier (:class:`monai.visualize.GradCAM`).

    Args:
        model: a ``SliceClassifier`` (``encoder``, ``classifier``); copied, never changed.
        primary: the column of ``data.label`` for a model of several targets.
        device: where the maps are computed.

    Attributes:
        layer: the target layer's name in the classifier (``encoder.units.5.1`` for ``patel_cnn``).
    """

    def __init__(self, model: nn.Module, primary: int | None = None, device: torch.device | str = "cpu") -> None:
        net = copy.deepcopy(model).float().to(device).eval()
        for m in net.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False  # backward hooks cannot see an activation changed in place
        self.device = torch.device(device)
        self.layer = "encoder." + _last_conv_layer(net.encoder)
        self.class_idx = 0 if primary is None else int(primary)
        self._cam = GradCAM(nn_module=_Logits(net), target_layers=f"model.{self.layer}", postprocessing=_normalize)

    def __call__(self, slices: Tensor) -> np.ndarray:
        """``(N, C, H, W)`` slices -> ``(N, H, W)`` maps in [0, 1] (float32)."""
        x = slices.float().to(self.device)
        with torch.inference_mode(False), torch.enable_grad():
            cam = self._cam(x.clone().requires_grad_(True), class_idx=self.class_idx)
        return cam[:, 0].detach().cpu().numpy().astype(np.float32)


@dataclass
class _Volume:
    """One volume's slices and scores while it is explained."""

    key: str
    slices: Tensor  # (N, C, H, W), every slice (depth pool 1)
    slice_probs: np.ndarray  # (N,)
    scores: np.ndarray  # (N,)
    kind: str
    volume_prob: float | None


@dataclass(frozen=True)
class VolumeExplanation:
    """One volume's key slices as drawn: what ``explain_volumes`` hands its ``on_volume`` callback.

    Attributes:
        key: the volume's cache key.
        rows: the ``key_slices.csv`` rows, best first (``rank``, ``slice_index``, ``score``, ...).
        brain: ``(N, H, W)`` the key slices' brain-window channel in [0, 1] (model input size).
        maps: ``(N, H, W)`` their class-activation maps in [0, 1].
    """

    key: str
    rows: list[dict[str, Any]]
    brain: np.ndarray
    maps: np.ndarray

    @property
    def slice_indices(self) -> list[int]:
        """The key slices' indices in the volume (foot to head), best first."""
        return [int(r["slice_index"]) for r in self.rows]


def _slice_probs(model: nn.Module, slices: Tensor, primary: int | None) -> np.ndarray:
    with torch.inference_mode():
        logits = _Logits(model)(slices)
        return torch.sigmoid(logits[:, 0 if primary is None else primary].double()).cpu().numpy()


def _volume_scores(model: nn.Module, pooled: Tensor, n: int, pool: int, primary: int | None) -> tuple[np.ndarray, str, float]:
    """Per-slice scores of the volume model on one volume's pooled slices, spread to its ``n`` slices."""
    if bool(getattr(getattr(model, "head", None), "per_slice", False)):
        scores, prob = _per_slice_scores(model, pooled, primary)
        kind = "per_slice"
    else:
        scores, prob = occlusion_scores(model, pooled, primary)
        kind = "occlusion"
    return np.repeat(scores, pool)[:n], kind, prob


def _volumes(volume_model: nn.Module | None, slice_model: nn.Module, slice_loader: Any, volume_loader: Any,
             pool: int, device: torch.device, primary: int | None) -> Any:
    """Yield a :class:`_Volume` per volume of the loaders (same volumes, same order)."""
    vol_batches = iter(volume_loader) if volume_model is not None else None
    for batch in slice_loader:
        vb = next(vol_batches) if vol_batches is not None else None
        if vb is not None and [str(k) for k in vb["key"]] != [str(k) for k in batch["key"]]:
            raise RuntimeError("the volume and slice loaders gave different volumes")
        for b, key in enumerate(batch["key"]):
            n = int(batch["length"][b])
            slices = batch["volume"][b, :n].to(device)
            probs = _slice_probs(slice_model, slices, primary)
            if vb is None:
                yield _Volume(str(key), slices, probs, probs.copy(), "slice_cnn", None)
                continue
            pooled = vb["volume"][b, : int(vb["length"][b])].to(device)
            scores, kind, prob = _volume_scores(volume_model, pooled, n, pool, primary)
            yield _Volume(str(key), slices, probs, scores, kind, prob)


def explain_volumes(
    slice_model: nn.Module,
    slice_loader: Any,
    out_dir: str | Path,
    n: int,
    *,
    windows: Sequence[WindowSpec],
    volume_model: nn.Module | None = None,
    volume_loader: Any = None,
    depth_pool: int = 1,
    primary: int | None = None,
    device: torch.device | str = "cpu",
    on_volume: Callable[[VolumeExplanation], None] | None = None,
    context_slices: int = 0,
) -> dict[str, Any]:
    """Write the key slices and heat maps of every volume (see the module docstring).

    Args:
        slice_model: the stage-1 ``SliceClassifier``.
        slice_loader: volume batches with every slice (``VolumeDataModule`` at ``depth_pool=1``).
        out_dir: the ``explain`` folder; one sub-folder per volume.
        n: key slices per volume (>= 1; fewer when a volume has fewer slices).
        windows: the input windows (``data.windows``); the brain window is drawn.
        volume_model: the ``VolumeClassifier`` whose call is explained; None: the stage-1 CNN's.
        volume_loader: its batches at ``depth_pool``, same volumes in the same order.
        depth_pool: the volume model's depth pooling.
        primary: the column of ``data.label`` for models of several targets.
        device: torch device.
        on_volume: called with each volume's :class:`VolumeExplanation` after its files are written.
        context_slices: the 2.5D neighbours of the inputs (``data.context_slices``):
            the drawn channel is the brain window of the slice itself.

    Returns:
        ``{"n": n, "score_kind": ..., "layer": ..., "n_volumes": ..., "folder": ...}``.

    Raises:
        UserError: ``n < 1``, or a slice encoder without a convolution.
    """
    if int(n) < 1:
        raise UserError(f"--explain {n}: expected a number of key slices >= 1")
    dev = torch.device(device)
    out = Path(out_dir)
    slice_model = slice_model.to(dev).eval()
    if volume_model is not None:
        volume_model = volume_model.to(dev).eval()
    cam = SliceCAM(slice_model, primary, dev)
    channel = center_channel(brain_channel(windows), context_slices)
    kinds: set[str] = set()
    count = 0
    for vol in _volumes(volume_model, slice_model, slice_loader, volume_loader, int(depth_pool), dev, primary):
        folder = out / safe_key(vol.key)
        folder.mkdir(parents=True, exist_ok=True)
        chosen = choose_key_slices(vol.scores, vol.slice_probs, n)
        maps = cam(vol.slices[chosen])
        brain = vol.slices[chosen, channel].float().cpu().numpy()
        rows = []
        for rank, (idx, m) in enumerate(zip(chosen, maps, strict=True), start=1):
            r, c = np.unravel_index(int(np.argmax(m)), m.shape) if m.max() > 0 else (None, None)  # flat: no peak
            rows.append({"rank": rank, "slice_index": idx, "score": float(vol.scores[idx]), "score_kind": vol.kind,
                         "slice_probability": float(vol.slice_probs[idx]), "volume_probability": vol.volume_prob,
                         "cam_row": r, "cam_col": c})
            overlay_png(folder / f"slice_{idx:03d}.png", brain[rank - 1], m, rows[-1])
        atomic_write_csv(folder / "key_slices.csv", pd.DataFrame(rows))
        contact_sheet(folder / "contact_sheet.png", brain, maps, rows)
        if on_volume is not None:
            on_volume(VolumeExplanation(vol.key, rows, brain, maps))
        kinds.add(vol.kind)
        count += 1
    return {"n": int(n), "score_kind": sorted(kinds), "layer": cam.layer, "n_volumes": count, "folder": str(out)}
