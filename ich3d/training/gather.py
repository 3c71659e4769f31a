"""Validation predictions across processes: sample ids, gathering without duplicates, AUC.

Under DDP each process keeps the ``(id, probability, label)`` of every sample it
validated; :func:`gather_unique` gathers them and keeps one row per id (the
distributed sampler pads by repeating samples), the same on every rank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

__all__ = ["sample_ids", "gather_unique", "auc_or_nan"]


def _key_hash(key: str) -> int:
    """A non-negative int63 for a sample key (hex cache keys map to themselves)."""
    try:
        if len(key) >= 15:
            return int(key[:15], 16)
    except ValueError:
        pass
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


def sample_ids(batch: Mapping[str, Any], batch_size: int, device: torch.device) -> Tensor:
    """``(B, 2)`` int64 ids of the samples of a batch, unique within a split.

    Column 0 is a hash of the volume ``key`` (or the batch ``index`` when there is no
    key), column 1 the ``slice_index`` for slice batches (0 for volumes).
    """
    if "key" in batch:
        keys = batch["key"]
        keys = [keys] if isinstance(keys, str) else list(keys)
        first = torch.tensor([_key_hash(str(k)) for k in keys], dtype=torch.long)
    elif "index" in batch:
        first = torch.as_tensor(batch["index"], dtype=torch.long).reshape(-1).cpu()
    else:
        raise KeyError("a validation batch needs 'key' or 'index' to identify its samples")
    if "slice_index" in batch:
        second = torch.as_tensor(batch["slice_index"], dtype=torch.long).reshape(-1).cpu()
    else:
        second = torch.zeros_like(first)
    if first.numel() != batch_size or second.numel() != batch_size:
        raise ValueError(f"batch ids ({first.numel()}) do not match the batch size {batch_size}")
    return torch.stack([first, second], dim=1).to(device)


def gather_unique(
    module: pl.LightningModule, ids: Tensor, probs: Tensor, labels: Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gather ``(ids, probs, labels)`` from every process and keep one row per id.

    Works with unequal per-process counts (rows are padded to the largest count for
    the collective and trimmed after). Every rank returns the same arrays, sorted by id.
    ``probs`` and ``labels`` are ``(N,)`` (one target) or ``(N, K)`` (one column per
    target); the result keeps their shape.

    Returns:
        ``(ids (N, 2) int64, probs (N,) or (N, K) float64, labels (N,) or (N, K) int64)``, numpy.
    """
    width_k = 1 if probs.ndim == 1 else int(probs.shape[1])
    n_local = torch.tensor([ids.shape[0]], dtype=torch.long, device=module.device)
    if module.trainer is not None and module.trainer.world_size > 1:
        counts = module.all_gather(n_local).reshape(-1).cpu()
        width = int(counts.max())
        pad = width - ids.shape[0]
        packed = torch.cat(
            [probs.double().reshape(-1, width_k), labels.double().reshape(-1, width_k)], dim=1
        ).to(module.device)
        ids_local = ids.to(module.device)
        if pad:
            packed = torch.cat([packed, packed.new_zeros((pad, 2 * width_k))], dim=0)
            ids_local = torch.cat([ids_local, ids_local.new_zeros((pad, 2))], dim=0)
        # ids (< 2**60) travel as int64: float64 is exact only below 2**53
        rows_g = module.all_gather(packed).reshape(-1, width, 2 * width_k).cpu()
        ids_g = module.all_gather(ids_local).reshape(-1, width, 2).cpu()
        rows = torch.cat([rows_g[r, : int(counts[r])] for r in range(rows_g.shape[0])], dim=0)
        all_ids = torch.cat([ids_g[r, : int(counts[r])] for r in range(ids_g.shape[0])], dim=0)
        all_probs = rows[:, :width_k]
        all_labels = rows[:, width_k:].long()
        if probs.ndim == 1:
            all_probs, all_labels = all_probs[:, 0], all_labels[:, 0]
    else:
        all_ids, all_probs, all_labels = ids.cpu(), probs.double().cpu(), labels.long().cpu()
    ids_np = all_ids.numpy().astype(np.int64).reshape(-1, 2)
    if ids_np.shape[0] == 0:
        shape = (0,) if probs.ndim == 1 else (0, width_k)
        return ids_np, np.zeros(shape), np.zeros(shape, dtype=np.int64)
    _, first = np.unique(ids_np, axis=0, return_index=True)
    first = np.sort(first)
    order = np.lexsort((ids_np[first, 1], ids_np[first, 0]))
    keep = first[order]
    return ids_np[keep], all_probs.numpy()[keep].astype(np.float64), all_labels.numpy()[keep]


def auc_or_nan(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (torchmetrics) or NaN when only one class is present."""
    if probs.size == 0 or len(np.unique(labels)) < 2:
        return float("nan")
    return float(binary_auroc(torch.from_numpy(probs), torch.from_numpy(labels).long()))
