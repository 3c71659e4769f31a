"""Run trained models over the volumes of an ingest cache (shared by ``predict`` and ``evaluate``).

Two passes:

* :func:`predict_volumes`: a volume model (``VolumeClassifier``) over depth-pooled
  volumes -> one probability per volume and the seconds its forward pass took;
* :func:`predict_slices`: the stage-1 slice model (``SliceClassifier``) over every
  cached slice of each volume (``depth_pool=1``) -> per volume, the slice
  probabilities and the 512-element slice features (for the SVM baseline).

Both run under ``torch.inference_mode()`` with the model in eval mode, on the
device of :func:`resolve_device` (``auto`` = CUDA when available), with bf16
autocast on CUDA and fp32 on CPU, and show a progress bar. Volumes come from the
project's ``VolumeDataModule`` (:func:`build_eval_datamodule`), so ``predict``
and ``evaluate`` see exactly the same input tensors for the same volume and give
the same probabilities.

Probabilities are the sigmoid of the logits computed in float64: a float32
sigmoid rounds probabilities near 0 or 1 (or near-constant outputs of a weak
model) to equal values, and ties change AUCs and the ``max``/``p95`` baselines.

Timing: the seconds of a batch cover the transfer to the device, the forward
pass and the copy of the outputs back to the host (which waits for the device),
divided by the number of volumes in the batch; reading and windowing the volume
(the DataLoader) is excluded and reported separately as ``load_seconds``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ich3d.errors import UserError
from ich3d.models.sequence import valid_slice_mask
from ich3d.runs.datamodules import volume_datamodule
from ich3d.runs.inputs import cache_image_size

__all__ = [
    "resolve_device",
    "autocast_context",
    "hardware_info",
    "cpu_model_name",
    "VolumeScores",
    "SliceOutputs",
    "predict_volumes",
    "predict_slices",
    "training_image_size",
    "build_eval_datamodule",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda[:i]``.

    Raises:
        UserError: an unknown device string, or ``cuda`` without a usable GPU.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
        return torch.device(name)
    raise UserError(f"--device {device!r}: expected auto, cpu or cuda[:index]")


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_model_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux) or :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_info(device: torch.device) -> dict[str, Any]:
    """Where inference ran: device, CPU model / GPU name, threads, torch version.

    Returns:
        ``{"device", "name", "cpu", "threads", "torch", "cuda", "precision",
        "summary"}``; ``summary`` is one human-readable line.
    """
    cpu = cpu_model_name()
    info: dict[str, Any] = {
        "device": device.type,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
    }
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["summary"] = f"GPU {info['name']} (CUDA {torch.version.cuda}), bf16 autocast, torch {torch.__version__}"
    else:
        info["name"] = cpu
        info["summary"] = (
            f"CPU {cpu} ({info['threads']} torch threads of {info['cpu_count']} cores), "
            f"fp32, torch {torch.__version__}"
        )
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(iterable: Any, total: int | None, desc: str, enabled: bool) -> Any:
    return tqdm(iterable, total=total, desc=desc, unit="vol", disable=not enabled, leave=False)


# ----------------------------------------------------------------------------- results


@dataclass
class VolumeScores:
    """Volume probabilities of one model, in loader order.

    Attributes:
        keys: volume keys.
        labels: volume labels as the loader gave them (float; -1 = unlabeled).
        probs: probabilities, float64 ``(n,)``.
        seconds: forward seconds per volume (see the module docstring), ``(n,)``.
        load_seconds: seconds spent waiting for the loader, in total.
        target_probs: with a model of several targets, ``(n, K)`` probabilities
            (``probs`` is then its ``primary`` column); None otherwise.
        slice_probs: with per-slice outputs (``model.per_slice``), per volume the
            ``(T_i, K)`` probabilities of its (depth-pooled) slices; else empty.
    """

    keys: list[str]
    labels: np.ndarray
    probs: np.ndarray
    seconds: np.ndarray
    load_seconds: float = 0.0
    target_probs: np.ndarray | None = None
    slice_probs: list[np.ndarray] = field(default_factory=list)

    def by_key(self) -> dict[str, float]:
        """``key -> probability``."""
        return dict(zip(self.keys, self.probs.tolist(), strict=True))


@dataclass
class SliceOutputs:
    """Stage-1 outputs per volume, in loader order.

    Attributes:
        keys: volume keys.
        labels: volume labels (float; -1 = unlabeled).
        probs: per volume, slice probabilities float64 ``(N_i,)`` in slice order.
        features: per volume, slice features float32 ``(N_i, F)`` (empty when not kept).
        seconds: forward seconds per volume, ``(n,)``.
        load_seconds: seconds spent waiting for the loader, in total.
        target_probs: with a model of several targets, per volume ``(N_i, K)``
            slice probabilities (``probs`` is their ``primary`` column); else empty.
    """

    keys: list[str]
    labels: np.ndarray
    probs: list[np.ndarray]
    features: list[np.ndarray] = field(default_factory=list)
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    load_seconds: float = 0.0
    target_probs: list[np.ndarray] = field(default_factory=list)

    def subset(self, keys: list[str]) -> SliceOutputs:
        """The outputs of ``keys``, in that order (``KeyError`` for an unknown key)."""
        pos = {k: i for i, k in enumerate(self.keys)}
        idx = [pos[k] for k in keys]
        return SliceOutputs(
            keys=list(keys),
            labels=self.labels[idx],
            probs=[self.probs[i] for i in idx],
            features=[self.features[i] for i in idx] if self.features else [],
            seconds=self.seconds[idx],
            load_seconds=self.load_seconds,
            target_probs=[self.target_probs[i] for i in idx] if self.target_probs else [],
        )


def _timed_batches(loader: Any) -> Iterator[tuple[dict, float]]:
    """Yield ``(batch, seconds waited for it)``."""
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch, time.perf_counter() - t0


# ----------------------------------------------------------------------------- passes


@dataclass
class _Pass:
    """What both passes keep per batch: keys, labels, seconds per volume, loader wait."""

    keys: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    secs: list[np.ndarray] = field(default_factory=list)
    load: float = 0.0

    def batches(self, loader: Any, desc: str, progress: bool) -> Iterator[dict[str, Any]]:
        """The loader's batches, with a progress bar; the time spent waiting for them is ``load``."""
        for batch, waited in _progress(_timed_batches(loader), _len(loader), desc, progress):
            self.load += waited
            yield batch

    def record(self, batch: dict[str, Any], seconds: float) -> None:
        """A batch's keys and labels, and its model time spread over its volumes."""
        n = len(batch["key"])
        self.keys.extend(str(k) for k in batch["key"])
        self.labels.append(batch["label"].numpy().astype(np.float64).reshape(-1))
        self.secs.append(np.full(n, seconds / n))

    def finish(self) -> tuple[list[str], np.ndarray, np.ndarray, float]:
        """``keys, labels, secs, load``; a :class:`UserError` for an empty loader."""
        if not self.keys:
            raise UserError("no volume to predict (the loader is empty)")
        return self.keys, np.concatenate(self.labels), np.concatenate(self.secs), self.load


def predict_volumes(
    model: nn.Module,
    loader: Any,
    device: torch.device | str = "auto",
    *,
    progress: bool = True,
    desc: str = "volumes",
    warmup: bool = True,
    primary: int | None = None,
) -> VolumeScores:
    """Volume probabilities (``sigmoid`` of the logits) of ``model`` over ``loader``.

    Args:
        model: a ``VolumeClassifier`` (``(B, T, C, H, W), (B,) -> (B,)`` logits).
        loader: batches ``{"volume", "length", "label", "key"}`` (a ``VolumeDataModule``
            evaluation loader).
        device: ``auto`` (default), ``cpu``, ``cuda`` or a torch device.
        progress: show a progress bar (default True).
        desc: progress bar label.
        warmup: run the first volume once untimed before timing (default True).
        primary: for a model of several targets (``(B, K)`` logits), the column that
            is ``probs`` (``data.label``); required then.

    Returns:
        The :class:`VolumeScores`, in loader order.
    """
    dev = resolve_device(device)
    model = model.to(dev).eval()
    run = _Pass()
    probs: list[np.ndarray] = []
    multi: list[np.ndarray] = []
    per_slice: list[np.ndarray] = []
    has_slices = bool(getattr(getattr(model, "head", None), "per_slice", False))
    with torch.inference_mode():
        for batch in run.batches(loader, desc, progress):
            n = len(batch["key"])
            if warmup and not run.keys:  # first call: allocator, cuDNN/oneDNN setup, lazy inits
                with autocast_context(dev):
                    model(batch["volume"][:1].to(dev), batch["length"][:1].to(dev))
            _sync(dev)
            t0 = time.perf_counter()
            x = batch["volume"].to(dev, non_blocking=True)
            lengths = batch["length"].to(dev)
            with autocast_context(dev):
                if has_slices:  # one pass: the slice logits, the volume's is their max
                    slice_logits = model.slice_logits(x, lengths)
                    logits = slice_logits.amax(dim=1)
                else:
                    logits = model(x, lengths)
            if has_slices:
                sp = torch.sigmoid(slice_logits.double()).cpu().numpy()
                sp = sp[..., None] if sp.ndim == 2 else sp
                per_slice.extend(sp[b, : int(lengths[b])] for b in range(n))
            p = torch.sigmoid(logits.double()).cpu().numpy()
            dt = time.perf_counter() - t0
            if p.ndim == 2:
                multi.append(p)
                p = p[:, _primary(primary)]
            p = p.reshape(-1)
            if p.shape[0] != n:
                raise RuntimeError(f"the model returned {p.shape[0]} outputs for {n} volumes")
            probs.append(p)
            run.record(batch, dt)
    keys, labels, secs, load = run.finish()
    return VolumeScores(
        keys, labels, np.concatenate(probs), secs, load, np.concatenate(multi) if multi else None, per_slice
    )


def _primary(primary: int | None) -> int:
    if primary is None:
        raise ValueError("the model has several targets: pass primary (the column of data.label)")
    return int(primary)


def predict_slices(
    model: nn.Module,
    loader: Any,
    device: torch.device | str = "auto",
    *,
    features: bool = True,
    chunk: int = 64,
    progress: bool = True,
    desc: str = "slices",
    warmup: bool = True,
    primary: int | None = None,
) -> SliceOutputs:
    """Stage-1 slice probabilities (and features) of every slice of every volume.

    One encoder pass per slice gives both the feature (``model.encoder``) and the
    probability (``sigmoid(model.classifier(feature))``, what ``model(x)`` computes).

    Args:
        model: a ``SliceClassifier`` (``encoder``, ``dropout``, ``classifier``).
        loader: volume batches with every slice (``VolumeDataModule`` with ``depth_pool=1``).
        device: ``auto`` (default), ``cpu``, ``cuda`` or a torch device.
        features: keep the slice features (default True; the SVM baseline needs them).
        chunk: slices per encoder call (bounds memory); default 64.
        progress: show a progress bar (default True).
        desc: progress bar label.
        warmup: run the first slices once untimed before timing (default True).
        primary: for a model of several targets, the column that is ``probs``
            (``data.label``); required then.

    Returns:
        The :class:`SliceOutputs`, in loader order.
    """
    if chunk < 1:
        raise UserError(f"chunk must be >= 1, got {chunk}")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    head = nn.Sequential(getattr(model, "dropout", nn.Identity()), model.classifier)
    run = _Pass()
    probs: list[np.ndarray] = []
    multi: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in run.batches(loader, desc, progress):
            vols, lengths = batch["volume"], batch["length"]
            n = vols.shape[0]
            if warmup and not run.keys:
                with autocast_context(dev):
                    head(model.encoder(vols[0, : min(int(lengths[0]), chunk)].to(dev)))
            _sync(dev)
            t0 = time.perf_counter()
            mask = valid_slice_mask(lengths, vols.shape[1])
            slices = vols[mask]  # (sum(lengths), C, H, W), volume by volume
            f_parts, p_parts = [], []
            for part in torch.split(slices, chunk):
                x = part.to(dev, non_blocking=True)
                with autocast_context(dev):
                    f = model.encoder(x)
                    logit = head(f).squeeze(-1)
                p_parts.append(torch.sigmoid(logit.double()).cpu())
                if features:
                    f_parts.append(f.float().cpu())
            dt = time.perf_counter() - t0
            p_all = torch.cat(p_parts).numpy().astype(np.float64)
            f_all = torch.cat(f_parts).numpy() if features else None
            bounds = np.cumsum([0, *lengths.tolist()])
            if p_all.ndim == 2:
                m_all, p_all = p_all, p_all[:, _primary(primary)]
                multi.extend(m_all[bounds[b] : bounds[b + 1]] for b in range(n))
            for b in range(n):
                probs.append(p_all[bounds[b] : bounds[b + 1]])
                if f_all is not None:
                    feats.append(f_all[bounds[b] : bounds[b + 1]])
            run.record(batch, dt)
    keys, labels, secs, load = run.finish()
    return SliceOutputs(keys, labels, probs, feats, secs, load, multi)


def _len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


# ----------------------------------------------------------------------------- data


def training_image_size(config: Any) -> tuple[int, int] | None:
    """The in-plane size the run's models saw: the most common size of its training cache.

    A ``VolumeDataModule`` on another cache (``predict``, ``evaluate --data``)
    crops/pads every slice to this size, so a model sees the geometry it was trained
    on. None when the training cache cannot be read.
    """
    cache_dir = getattr(config.data, "cache_dir", None)
    if cache_dir is None:
        return None
    if not (Path(cache_dir) / "volumes.csv").is_file():
        log.warning("training cache %s not found; the training in-plane size is not known from it", cache_dir)
        return None
    size = cache_image_size(cache_dir)
    return None if size is None else (size[0], size[1])


def build_eval_datamodule(
    config: Any,
    cache_dir: str | Path | None = None,
    *,
    depth_pool: int | None = None,
    batch_size: int | None = None,
    image_size: tuple[int, int] | None = None,
    stage: str = "predict",
) -> Any:
    """A set-up ``VolumeDataModule`` for inference: no augmentation, fixed order, never an ingest.

    Args:
        config: the run's config.
        cache_dir: another ingest cache (``predict``, ``evaluate --data``); default the
            run's ``data.cache_dir``.
        depth_pool: slices pooled into one; default ``data.depth_pool`` (the volume
            models'); 1 for the slice baselines.
        batch_size: volumes per batch; default ``evaluation.batch_size``.
        image_size: in-plane size; default the run's training size when another
            cache is given (:func:`training_image_size`), else the cache's own.
        stage: ``setup`` stage: ``predict`` accepts unlabeled caches, ``test``
            requires labels.
    """
    d = config.data
    bs = int(batch_size or config.evaluation.batch_size)
    pool = int(depth_pool or d.depth_pool)
    own = cache_dir is None
    if own and d.cache_dir is None:
        raise UserError("the run's config has no data.cache_dir to evaluate on")
    if image_size is None and not own:
        image_size = training_image_size(config)
    dm = volume_datamodule(  # inference: no stage's training settings
        config,
        cache_dir=d.cache_dir if own else cache_dir,  # explicit: never an ingest
        # the run's splits file lists the run's volumes, not another cache's
        splits_file=d.splits_file if own else None,
        batch_size=bs,
        pad_batches=bs > 1,
        augment=False,
        depth_pool=pool,
        image_size=image_size,
    )
    dm.setup(stage)
    return dm
