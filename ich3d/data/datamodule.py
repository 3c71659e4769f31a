"""Lightning DataModules over an ingest cache: slices (stage 1) and volumes (stages 2-3).

They take plain typed arguments and never read a config (building them from a
config is :mod:`ich3d.training.data`). The shared part (ingest, splits, windows,
loaders, augmentation on the device) is :class:`~ich3d.data.datamodule_base.ICHDataModule`,
whose docstring describes ``prepare_data``, ``setup`` and ``augment_on``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from ich3d.data.augment import build_augment_2d, build_augment_3d
from ich3d.data.cache import IngestCache
from ich3d.data.cavity import CavityRule, ensure_slice_stats, load_slice_stats
from ich3d.data.datamodule_base import (  # re-exported: the base and its constants
    AUGMENT_ON,
    EVAL_SPLITS,
    ICHDataModule,
    validation_subset,
)
from ich3d.data.datasets import BalancedSampler, SliceDataset, VolumeCollate, VolumeDataset
from ich3d.errors import UserError

__all__ = [
    "ICHDataModule",
    "SliceDataModule",
    "VolumeDataModule",
    "EVAL_SPLITS",
    "AUGMENT_ON",
    "validation_subset",
]


class SliceDataModule(ICHDataModule):
    """Stage 1: single windowed slices that show the cranial cavity.

    Train: ``samples_per_epoch`` slices per epoch (default twice the positive
    training slices), half positive, half negative; positives are the
    cranial-cavity slices with label 1 of the training volumes; negatives are
    cranial-cavity slices of training volumes that are negative on ``label``
    (never a negative slice of a positive volume). 2D augmentation
    (:mod:`ich3d.data.augment`) when ``augment``.

    Val/test/predict: every cranial-cavity slice of the split's volumes (all
    volumes for ``predict``) with its own slice label, whatever the volume
    label (slice-level AUC), sorted by key and slice index, no augmentation.

    Batch: ``image`` float32 ``(B, C, H, W)`` in [0, 1], ``label`` float32
    ``(B,)``, ``key`` list[str], ``slice_index`` int64 ``(B,)``, ``index`` int64
    ``(B,)`` (row of :meth:`slice_table`).

    Args:
        min_cavity_fraction: threshold of the cranial-cavity rule (default 0.02;
            see :mod:`ich3d.data.cavity`).
        **kwargs: see :class:`ICHDataModule` (``batch_size`` default 25).
    """

    def __init__(
        self, cache_dir: str | Path, *, min_cavity_fraction: float = 0.02, **kwargs
    ) -> None:
        super().__init__(cache_dir, **kwargs)
        if not 0.0 <= min_cavity_fraction <= 1.0:
            raise UserError(f"min_cavity_fraction must be in [0, 1], got {min_cavity_fraction}")
        self.rule = CavityRule(min_fraction=float(min_cavity_fraction))
        self._slice_tables: dict[str, pd.DataFrame] = {}

    def _prepare_extra(self, cache: IngestCache) -> None:
        ensure_slice_stats(cache, self.rule, workers=self.ingest_workers, progress=sys.stderr.isatty())

    def _build_augment(self):
        return build_augment_2d()

    def _setup_extra(self, stage: str | None) -> None:
        assert self.cache is not None
        stats = load_slice_stats(self.cache, self.rule)
        extra = [t for t in (self.targets or []) if t != self.label]
        sl = self.cache.slices[["key", "slice_index", self.label, *extra]].copy()
        sl["label"] = sl[self.label]
        sl = sl.merge(stats, on=["key", "slice_index"], how="left", validate="one_to_one")
        sl = sl[sl["cavity_fraction"].fillna(0.0) >= self.rule.min_fraction]
        self._slice_tables = {}
        for split, vt in self._tables.items():
            t = sl[sl["key"].isin(set(vt["key"]))].merge(
                vt[["key", "label"]].rename(columns={"label": "volume_label"}), on="key"
            )
            t = t.sort_values(["key", "slice_index"], kind="stable").reset_index(drop=True)
            self._slice_tables[split] = t[
                ["key", "slice_index", "label", "volume_label", "cavity_fraction", *(self.targets or [])]
            ]

    def slice_table(self, split: str) -> pd.DataFrame:
        """Cranial-cavity slices of a split: ``key, slice_index, label, volume_label, cavity_fraction``.

        With ``targets``, one more column per target (its slice label).
        """
        self.split_table(split)  # validates the name
        return self._slice_tables[split].copy()

    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        table = self.slice_table("train")
        neg_mask = (table["label"].to_numpy() == 0) & (table["volume_label"].to_numpy() == 0)
        pos, neg, n = self._train_rows(table, neg_mask)
        on_device = self.augments_on_device()
        dataset = SliceDataset(
            self.cache,  # type: ignore[arg-type]
            table,
            self.windows,
            transform=build_augment_2d() if self.augment else None,
            size=self.size,
            targets=self.targets,
            raw_hu=on_device,
            context_slices=self.context_slices,
        )
        return self._train_loader(dataset, BalancedSampler(pos, neg, n, seed=self.seed))

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every cranial-cavity slice of ``split`` once, fixed order, no augmentation."""
        return self._loader(self._eval_dataset(self.slice_table(split)))

    def val_dataloader(self) -> DataLoader:
        """The validation slices of training: all, or the fixed ``val_samples`` subset."""
        table = validation_subset(self.slice_table("val"), self.val_samples, self.seed)
        return self._loader(self._eval_dataset(table))

    def _eval_dataset(self, table: pd.DataFrame) -> SliceDataset:
        """The slices of ``table`` as stored (no augmentation), windowed in the loader."""
        return SliceDataset(
            self.cache,  # type: ignore[arg-type]
            table,
            self.windows,
            size=self.size,
            targets=self.targets,
            context_slices=self.context_slices,
        )

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader("predict")


class VolumeDataModule(ICHDataModule):
    """Stages 2-3 and evaluation: whole windowed volumes, depth-pooled.

    Train: ``samples_per_epoch`` volumes per epoch (default twice the positive
    training volumes), half positive, half negative, 3D augmentation
    (:mod:`ich3d.data.augment`, applied to the depth-pooled HU volume and filled
    with air) when ``augment``.

    Val/test/predict: every volume of the split exactly once (``predict``: every
    volume of the cache), sorted by key, no augmentation.

    Batch: ``volume`` float32 ``(B, T, C, H, W)`` in [0, 1] (padded at the end
    with windowed air up to the longest volume of the batch), ``length`` int64
    ``(B,)``, ``label`` float32 ``(B,)`` (-1 for an unlabeled cache), ``key``
    list[str], ``index`` int64 ``(B,)`` (row of :meth:`split_table`).

    Args:
        depth_pool: slices max-pooled into one (default 2: with the cache's 2x2
            in-plane filter, the 2x2x2 filter; an odd last slice is kept alone;
            1 keeps every slice, for the slice baselines).
        pad_batches: allow ``batch_size > 1`` by padding (default False).
        batch_size: volumes per batch (default 1).
        slice_targets: items also carry ``slice_target`` ``(T, K)``, the labels of each
            pooled slice (the targets, or ``label``; max over the pooled slices), for
            the per-slice sequence outputs (``model.per_slice``). Default False.
        **kwargs: see :class:`ICHDataModule`.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        depth_pool: int = 2,
        pad_batches: bool = False,
        batch_size: int = 1,
        slice_targets: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(cache_dir, batch_size=batch_size, **kwargs)
        self.slice_targets = bool(slice_targets)
        if depth_pool < 1:
            raise UserError(f"depth_pool must be >= 1, got {depth_pool}")
        self.depth_pool = int(depth_pool)
        self.pad_batches = bool(pad_batches)
        if self.batch_size > 1 and not self.pad_batches:
            raise UserError(
                f"batch_size {self.batch_size} needs padded batches (volumes differ in length): pass pad_batches as True"
            )
        self.collate = VolumeCollate(self.windows, self.context_slices)

    _image_key = "volume"

    def _build_augment(self):
        return build_augment_3d()

    def _lengths(self, n_slices: pd.Series) -> pd.Series:
        return -(-n_slices // self.depth_pool)

    def _dataset(self, table: pd.DataFrame, transform=None, *, raw_hu: bool = False) -> VolumeDataset:
        self._require_setup()
        return VolumeDataset(
            self.cache,  # type: ignore[arg-type]
            table,
            self.windows,
            depth_pool=self.depth_pool,
            transform=transform,
            size=self.size,
            targets=self.targets if self.cache.labeled else None,  # type: ignore[union-attr]
            slice_columns=self.slice_columns,
            raw_hu=raw_hu,
            context_slices=self.context_slices,
        )

    @property
    def slice_columns(self) -> list[str] | None:
        """The slice label columns of ``slice_target`` (None without ``slice_targets``)."""
        if not self.slice_targets or self.cache is None or not self.cache.labeled:
            return None
        return list(self.targets) if self.targets is not None else [self.label]

    def train_dataloader(self) -> DataLoader:
        table = self.split_table("train")
        pos, neg, n = self._train_rows(table, table["label"].to_numpy() == 0)
        on_device = self.augments_on_device()
        transform = build_augment_3d() if self.augment else None
        dataset = self._dataset(table, transform, raw_hu=on_device)
        return self._train_loader(dataset, BalancedSampler(pos, neg, n, seed=self.seed), self.collate)

    def eval_dataloader(self, split: str, *, batch_size: int | None = None) -> DataLoader:
        """Every volume of ``split`` once, in :meth:`split_table` order, no augmentation."""
        return self._loader(
            self._dataset(self.split_table(split)), batch_size=batch_size, collate_fn=self.collate
        )

    def volume_loader(self, keys: Sequence[str], *, batch_size: int | None = None) -> DataLoader:
        """Loader over the given volume keys, in the given order (``index`` = position in ``keys``)."""
        table = self.split_table("predict").set_index("key")
        missing = [k for k in keys if k not in table.index]
        if missing:
            raise UserError(
                f"{len(missing)} volume key(s) not in the cache (first: {missing[0]!r})"
            )
        sub = table.loc[list(keys)].reset_index()
        return self._loader(self._dataset(sub), batch_size=batch_size, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader("predict")
