"""Batching over the datasets: the balanced training sampler, the volume collate, worker seeding.

:class:`BalancedSampler` yields ``(row, seed)`` pairs (the per-sample augmentation
seed travels with the row, :mod:`ich3d.data.datasets`); :class:`VolumeCollate`
pads volumes of different lengths into one batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from ich3d.data.schema import HU_MIN
from ich3d.data.windows import WindowSpec, air_values

__all__ = [
    "BalancedSampler",
    "VolumeCollate",
    "collate_volume_fields",
    "pad_slice_targets",
    "worker_init_fn",
]


class BalancedSampler(DistributedSampler):
    """Balanced positive/negative draws, a fresh draw each epoch, rank-aware.

    Each epoch draws ``num_samples`` items, half positive (``num_samples // 2``)
    and half negative, from the two pools of dataset rows: each pool is walked
    in a random permutation, re-permuted when exhausted (so every positive is
    seen once per epoch when ``num_samples`` is twice the positive pool). The
    items are shuffled together and each gets a per-sample augmentation seed;
    the sampler yields ``(row, seed)`` pairs. Everything is drawn from
    ``numpy.random.default_rng([seed, epoch])``.

    Distributed: the global sequence is padded (wrapping around) to a multiple
    of the world size and rank ``r`` takes items ``r::world_size``; rank and
    world size come from ``torch.distributed`` when it is initialised. The
    class derives from ``DistributedSampler`` only so that Lightning leaves it
    in place instead of wrapping it (``use_distributed_sampler`` can stay True).

    The epoch: Lightning calls :meth:`set_epoch` before each epoch. Without
    ``set_epoch``, each new iteration advances the epoch by one.

    Args:
        positives: dataset rows of positive samples.
        negatives: dataset rows of negative samples.
        num_samples: items per epoch over all ranks.
        seed: base seed.
    """

    def __init__(
        self, positives: Sequence[int], negatives: Sequence[int], num_samples: int, seed: int = 0
    ) -> None:
        self.positives = np.asarray(positives, dtype=np.int64)
        self.negatives = np.asarray(negatives, dtype=np.int64)
        if len(self.positives) == 0 or len(self.negatives) == 0:
            raise ValueError("balanced sampling needs at least one positive and one negative")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.total_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0
        self.shuffle = True
        self.drop_last = False
        self._epoch_set = False
        self._started = False

    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return self._world()[1]

    @num_replicas.setter
    def num_replicas(self, value: int) -> None:  # DistributedSampler API; rank comes from dist
        pass

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self._world()[0]

    @rank.setter
    def rank(self, value: int) -> None:
        pass

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Items this rank yields per epoch."""
        return -(-self.total_samples // self._world()[1])

    @num_samples.setter
    def num_samples(self, value: int) -> None:
        pass

    def set_epoch(self, epoch: int) -> None:
        """Use draw number ``epoch`` for the next iteration."""
        self.epoch = int(epoch)
        self._epoch_set = True

    @staticmethod
    def _cycle(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        reps = -(-k // len(pool))
        return np.concatenate([pool[rng.permutation(len(pool))] for _ in range(reps)])[:k]

    def draw(self, epoch: int) -> list[tuple[int, int]]:
        """The global (all ranks) sequence of ``(row, seed)`` items of ``epoch``."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        n_pos = self.total_samples // 2
        rows = np.concatenate(
            [
                self._cycle(rng, self.positives, n_pos),
                self._cycle(rng, self.negatives, self.total_samples - n_pos),
            ]
        )
        rows = rows[rng.permutation(len(rows))]
        seeds = rng.integers(0, 2**32, size=len(rows), dtype=np.uint64)
        return [(int(r), int(s)) for r, s in zip(rows, seeds, strict=True)]

    def __iter__(self):
        if self._started and not self._epoch_set:
            self.epoch += 1
        self._started, self._epoch_set = True, False
        items = self.draw(self.epoch)
        rank, world = self._world()
        if world > 1:
            total = self.num_samples * world
            items = (items * (-(-total // len(items))))[:total]
            items = items[rank::world]
        return iter(items)

    def __len__(self) -> int:
        return self.num_samples


class VolumeCollate:
    """Collate volume items, padding ``volume`` along T at the end with windowed air.

    Output: ``volume`` float32 ``(B, T_max, C, H, W)``, ``length`` int64 ``(B,)``
    (true lengths), ``label`` float32 ``(B,)``, ``key`` list[str], ``index`` int64 ``(B,)``.
    Items of a ``raw_hu`` dataset give ``hu`` int16 ``(B, T_max, H, W)`` padded
    with air (-1024 HU) instead of ``volume``, and ``augment_branch`` ``(B,)`` and
    ``augment_matrix`` ``(B, 4, 4)`` when they carry them.

    Args:
        windows: the windows of the dataset (to compute the air value per channel).
        context_slices: the 2.5D neighbours ``k`` of the items (:mod:`ich3d.data.context`):
            each window's air value fills its ``2k + 1`` channels. Default 0.
    """

    def __init__(self, windows: Sequence[WindowSpec], context_slices: int = 0) -> None:
        self.air = torch.from_numpy(np.repeat(air_values(windows), 2 * int(context_slices) + 1))

    def __call__(self, items: list[dict]) -> dict:
        t_max = max(int(it["length"]) for it in items)
        if "hu" in items[0]:
            hu = torch.full((len(items), t_max, *items[0]["hu"].shape[1:]), HU_MIN, dtype=torch.int16)
            for i, it in enumerate(items):
                hu[i, : it["hu"].shape[0]] = it["hu"]
            out = {"hu": hu}
            for name in ("augment_branch", "augment_matrix"):
                if name in items[0]:
                    out[name] = torch.stack([it[name] for it in items])
            return {**out, **collate_volume_fields(items, t_max)}
        vols = []
        for it in items:
            v = it["volume"]
            if v.shape[0] < t_max:
                pad = self.air.view(1, -1, 1, 1).expand(t_max - v.shape[0], -1, *v.shape[2:])
                v = torch.cat([v, pad.to(v.dtype)], dim=0)
            vols.append(v)
        return {"volume": torch.stack(vols), **collate_volume_fields(items, t_max)}


def collate_volume_fields(items: Sequence[dict], t_max: int) -> dict:
    """The fields every volume batch carries besides its data: ``length``, ``label``,
    ``key``, ``index`` and, when present, ``target`` and ``slice_target`` (padded to ``t_max``)."""
    out = {
        "length": torch.stack([it["length"] for it in items]),
        "label": torch.stack([it["label"] for it in items]),
        "key": [it["key"] for it in items],
        "index": torch.stack([it["index"] for it in items]),
    }
    if "target" in items[0]:
        out["target"] = torch.stack([it["target"] for it in items])
    if "slice_target" in items[0]:
        out["slice_target"] = pad_slice_targets([it["slice_target"] for it in items], t_max)
    return out


def pad_slice_targets(items: Sequence[torch.Tensor], t_max: int) -> torch.Tensor:
    """Stack ``(T_i, K)`` slice labels into ``(B, t_max, K)``, zero-padded (the loss masks padding)."""
    out = torch.zeros((len(items), t_max, items[0].shape[-1]), dtype=torch.float32)
    for i, st in enumerate(items):
        out[i, : st.shape[0]] = st
    return out


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random`` and numpy in a DataLoader worker from torch's per-worker seed.

    Augmentation is seeded per sample (see the module docstring); this only
    makes any other randomness in a worker reproducible too.
    """
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
