"""Lightning DataModules over an ingest cache: slices (stage 1) and volumes (stages 2-3).

``prepare_data`` (once per node, disk work only): runs the ingest when
``images_dir`` is given (idempotent: fast when the cache is complete with the
same parameters), otherwise requires a complete cache; writes
``CACHE/splits.json`` when missing (labeled caches only) and, for slices, the
cranial-cavity statistics ``CACHE/slice_stats.csv``.

``setup`` (every process): reads the tables, the splits and the statistics and
builds the per-split tables; it never writes. If ``prepare_data`` did not run,
the splits and statistics are computed in memory (deterministic, seeded).

Training batches are balanced and drawn by :class:`~ich3d.data.datasets.BalancedSampler`
(a fresh draw per epoch from ``seed`` and the epoch, rank-aware under DDP;
Lightning keeps it because it is a ``DistributedSampler``, so the trainer does
not need ``use_distributed_sampler=False``). Evaluation loaders go through each
split in a fixed order (sorted by volume key, then slice index); under DDP
Lightning shards them with a ``DistributedSampler`` that pads by repeating
items: de-duplicate predictions by the ``index`` field.

Where training items are augmented (``augment_on``): ``loader`` augments and
windows each item in the DataLoader workers, on the CPU. ``device`` makes the
training loader deliver the HU as stored (int16, cropped/padded, not windowed;
a sixth of the bytes of three float32 windows) and, per item, only the
augmentation's random draws (branch and affine matrix,
:func:`~ich3d.data.augment.augment_params`, the draws MONAI makes for the
item's seed); after Lightning has moved the batch to the device (pinned
memory, ``non_blocking`` copies), :meth:`ICHDataModule.on_after_batch_transfer`
applies them batched per branch (:func:`~ich3d.data.augment.augment_batch`),
then windows. The order is the loader's: augment HU, then window; the batch
that reaches the model has the same keys and, on the CPU, bit for bit the same
values. ``auto`` (default) is ``device`` when the trainer runs on a CUDA device
and ``loader`` otherwise. Evaluation loaders always window in the loader (they
do not augment).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ich3d.data.augment import augment_batch, build_augment_2d, build_augment_3d
from ich3d.data.cache import IngestCache, open_cache
from ich3d.data.cavity import CavityRule, ensure_slice_stats, load_slice_stats
from ich3d.data.datasets import (
    BalancedSampler,
    SliceDataset,
    VolumeCollate,
    VolumeDataset,
    worker_init_fn,
)
from ich3d.data.schema import LABEL_COLUMNS, patient_key
from ich3d.data.splits import (
    DEFAULT_FRACTIONS,
    SPLIT_NAMES,
    Splits,
    load_or_create_splits,
    read_splits_file,
    validate_fractions,
)
from ich3d.data.windows import WindowSpec, apply_windows, resolve_windows
from ich3d.errors import UserError

__all__ = [
    "ICHDataModule",
    "SliceDataModule",
    "VolumeDataModule",
    "EVAL_SPLITS",
    "AUGMENT_ON",
    "validation_subset",
]

log = logging.getLogger(__name__)

#: Values of ``augment_on`` (``data.augment_on``).
AUGMENT_ON: tuple[str, ...] = ("auto", "loader", "device")

#: Splits an evaluation loader accepts; ``predict`` is every volume of the cache.
EVAL_SPLITS: tuple[str, ...] = (*SPLIT_NAMES, "predict")

_TABLE_COLUMNS = (
    "key",
    "patient",
    "label",
    *LABEL_COLUMNS,
    "n_slices",
    "length",
    "height",
    "width",
    "pixel_spacing",
    "slice_spacing",
    "gap",
)


def validation_subset(table: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows of ``table``, stratified by ``label``, drawn from ``seed``, order kept.

    Each class keeps its share of ``n`` (at least one row of each class present),
    so a validation AUC stays defined. ``n`` None or >= the rows: the table itself.
    """
    if n is None or n >= len(table):
        return table
    rng = np.random.default_rng([int(seed), 0x7A1])
    labels = table["label"].to_numpy()
    keep: list[np.ndarray] = []
    classes = np.unique(labels)
    for c in classes:
        rows = np.flatnonzero(labels == c)
        share = max(1, round(n * len(rows) / len(table)))
        keep.append(rng.choice(rows, size=min(share, len(rows)), replace=False))
    return table.iloc[np.sort(np.concatenate(keep))].reset_index(drop=True)


class ICHDataModule(pl.LightningDataModule):
    """Shared base: cache, ingest, splits, windows, loaders' settings.

    Args:
        cache_dir: the ingest cache folder.
        images_dir: RSNA-format DICOM folder; when given, ``prepare_data`` runs the
            ingest into ``cache_dir`` (default None: the cache must be complete).
        labels_csv: RSNA label CSV for the ingest (default None: unlabeled ingest).
        ingest_workers: processes for the ingest and the slice statistics (default 1).
        min_slices: ingest's minimum series length (default 4).
        windows: window names or ``(center, width)`` HU pairs, one channel each
            (default brain, subdural, bone).
        split_fractions: (train, val, test) patient fractions (default 0.7/0.1/0.2).
        split_seed: seed of the splits (default 0).
        splits_file: a user's splits JSON, honoured as is (default None: ``CACHE/splits.json``).
        overwrite_splits: replace a ``CACHE/splits.json`` made with another seed/fractions.
        batch_size: items per batch (per process).
        num_workers: DataLoader worker processes (default 0).
        pin_memory: DataLoader ``pin_memory`` (default False).
        persistent_workers: keep workers between epochs (used only when ``num_workers > 0``).
        seed: seed of the training draws and augmentation (default 0).
        samples_per_epoch: training items per epoch over all processes (default:
            twice the number of positive training items).
        augment: augment training items (default True).
        label: label column to train on (default ``any``); the balanced samplers
            are defined on it also when there are ``targets``.
        targets: label columns given per item as ``target`` ``(K,)`` (one output per
            target, :mod:`ich3d.data.targets`); default None (binary, ``label`` only).
        image_size: in-plane ``(H, W)`` (or one int) every slice is cropped/padded
            to with air; default None: the most common size of the cache (as
            stored, i.e. after the 2x2 filter). Needed when a cache mixes sizes.
        prepare_data_per_node: Lightning's flag. Default False: only global rank 0
            runs ``prepare_data`` (the ingest), right for a cache on a file system
            shared by the nodes; True when every node has its own local cache.
        val_samples: validation items per validation run during training: a fixed
            subset drawn once from ``seed``, stratified by label (default None: the
            whole split). Bounds the validation of stage 1, which would otherwise
            score every cranial-cavity slice of the validation volumes each epoch;
            ``eval_dataloader`` (the final evaluation) always covers everything.
        augment_on: where training items are augmented and windowed: ``loader``,
            ``device`` (after the batch transfer, see the module docstring) or
            ``auto`` (default: ``device`` when the trainer runs on CUDA). In
            ``device`` mode on CUDA the training loader pins its memory.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        images_dir: str | Path | None = None,
        labels_csv: str | Path | None = None,
        ingest_workers: int = 1,
        min_slices: int = 4,
        windows: Sequence[WindowSpec] = ("brain", "subdural", "bone"),
        split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
        split_seed: int = 0,
        splits_file: str | Path | None = None,
        overwrite_splits: bool = False,
        batch_size: int = 25,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        augment: bool = True,
        label: str = "any",
        targets: Sequence[str] | None = None,
        image_size: int | Sequence[int] | None = None,
        prepare_data_per_node: bool = False,
        val_samples: int | None = None,
        augment_on: str = "auto",
    ) -> None:
        super().__init__()
        if augment_on not in AUGMENT_ON:
            raise UserError(f"augment_on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}")
        self.augment_on = augment_on
        self._augment_template: Any = None  # the transform whose modes finish_batch applies
        self.prepare_data_per_node = bool(prepare_data_per_node)
        if val_samples is not None and val_samples < 2:
            raise UserError(f"val_samples must be >= 2 or None, got {val_samples}")
        self.val_samples = val_samples
        self.cache_dir = Path(cache_dir)
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.labels_csv = Path(labels_csv) if labels_csv is not None else None
        if self.labels_csv is not None and self.images_dir is None:
            raise UserError("labels_csv is only used with images_dir (to run the ingest)")
        self.ingest_workers = int(ingest_workers)
        self.min_slices = int(min_slices)
        self.windows = list(windows)
        resolve_windows(self.windows)  # validate early
        self.split_fractions = validate_fractions(split_fractions)
        self.split_seed = int(split_seed)
        self.splits_file = Path(splits_file) if splits_file is not None else None
        self.overwrite_splits = bool(overwrite_splits)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.seed = int(seed)
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise UserError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.samples_per_epoch = samples_per_epoch
        self.augment = bool(augment)
        if label not in LABEL_COLUMNS:
            raise UserError(f"unknown label {label!r}; expected one of {', '.join(LABEL_COLUMNS)}")
        self.label = label
        if targets is not None:
            bad = [t for t in targets if t not in LABEL_COLUMNS]
            if bad or not targets:
                raise UserError(f"unknown target {bad[0] if bad else None!r}; expected names from {', '.join(LABEL_COLUMNS)}")
        self.targets: list[str] | None = list(targets) if targets is not None else None
        # new splits are stratified by subtype too when subtypes are trained
        self._stratify_subtypes = any(t != "any" for t in self.targets or [])
        if image_size is not None:
            size = (
                (int(image_size),) * 2
                if isinstance(image_size, int)
                else tuple(map(int, image_size))
            )
            if len(size) != 2 or min(size) < 1:
                raise UserError(f"image_size {image_size!r}: expected one int or (H, W)")
            self.image_size: tuple[int, int] | None = size  # type: ignore[assignment]
        else:
            self.image_size = None
        self.cache: IngestCache | None = None
        self.splits: Splits | None = None
        self.size: tuple[int, int] | None = None
        self._tables: dict[str, pd.DataFrame] = {}

    # ------------------------------------------------------------------ disk work
    def prepare_data(self) -> None:
        """Run the ingest if asked, then write the splits (and subclass files) if missing."""
        if self.images_dir is not None:
            from ich3d.data.ingest import run_ingest

            run_ingest(
                self.images_dir,
                self.labels_csv,
                self.cache_dir,
                workers=self.ingest_workers,
                min_slices=self.min_slices,
                progress=True,
            )
        cache = open_cache(self.cache_dir)
        if cache.labeled:
            if self.splits_file is not None:
                read_splits_file(self.splits_file, cache.volumes)
            else:
                load_or_create_splits(
                    self.cache_dir,
                    cache.volumes,
                    fractions=self.split_fractions,
                    seed=self.split_seed,
                    overwrite=self.overwrite_splits,
                    subtypes=self._stratify_subtypes,
                )
        self._prepare_extra(cache)

    def _prepare_extra(self, cache: IngestCache) -> None:
        """Subclass hook for more disk work in ``prepare_data``."""

    # ------------------------------------------------------------------ state
    def setup(self, stage: str | None = None) -> None:
        """Read the tables and splits; build the per-split tables.

        Args:
            stage: ``fit``, ``validate``, ``test``, ``predict`` or None. Every stage
                but ``predict`` needs a labeled cache.
        """
        cache = open_cache(self.cache_dir)
        self.cache = cache
        vols = cache.volumes
        common = cache.common_size()
        if common is None:
            raise UserError(f"{self.cache_dir / 'volumes.csv'} has no volumes")
        if self.image_size is not None:
            self.size = self.image_size
        else:
            self.size, n_sizes = common
            if n_sizes > 1:
                log.warning(
                    "the cache mixes %d in-plane sizes; cropping/padding all to %s with air",
                    n_sizes,
                    self.size,
                )
        if cache.labeled:
            try:
                if self.splits_file is not None:
                    self.splits = read_splits_file(self.splits_file, vols)
                else:
                    self.splits = load_or_create_splits(
                        self.cache_dir,
                        vols,
                        fractions=self.split_fractions,
                        seed=self.split_seed,
                        overwrite=self.overwrite_splits,
                        subtypes=self._stratify_subtypes,
                        write=False,
                    )
            except UserError as e:
                if stage != "predict":
                    raise
                # prediction covers every volume; another cache's splits do not matter
                log.warning("splits not available (%s); only the predict split is set up", e)
                self.splits = None
        else:
            self.splits = None
            if stage not in (None, "predict"):
                raise UserError(
                    f"{self.cache_dir} was ingested without labels; only prediction is possible"
                )
        table = self._volume_table(vols)
        self._tables = {"predict": table}
        if self.splits is not None:
            for s in SPLIT_NAMES:
                keys = set(self.splits.keys[s])
                self._tables[s] = table[table["key"].isin(keys)].reset_index(drop=True)
        self._setup_extra(stage)

    def _setup_extra(self, stage: str | None) -> None:
        """Subclass hook run at the end of ``setup``."""

    def _lengths(self, n_slices: pd.Series) -> pd.Series:
        return n_slices

    def _volume_table(self, vols: pd.DataFrame) -> pd.DataFrame:
        t = vols.sort_values("key", kind="stable").reset_index(drop=True).copy()
        t["patient"] = t["patient_id"].map(patient_key)
        t["label"] = t[self.label]
        t["length"] = self._lengths(t["n_slices"])
        return t[[c for c in _TABLE_COLUMNS if c in t.columns]]

    # ------------------------------------------------------------------ public helpers
    def _require_setup(self) -> None:
        if self.cache is None:
            raise RuntimeError("call setup() first")

    def split_table(self, split: str) -> pd.DataFrame:
        """Volumes of a split, in the evaluation order (sorted by key).

        Columns: ``key``, ``patient`` (hashed patient id), ``label`` (the
        DataModule's label), the six subtype labels, ``n_slices``, ``length``
        (slices after depth pooling), ``height``, ``width``, ``pixel_spacing``,
        ``slice_spacing``, ``gap``. Row position = the ``index`` field of the
        volume batches. ``split`` is ``train``, ``val``, ``test`` or ``predict``
        (every volume of the cache).
        """
        self._require_setup()
        if split not in EVAL_SPLITS:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(EVAL_SPLITS)}")
        if split not in self._tables:
            raise UserError(
                f"split {split!r} needs a labeled cache; {self.cache_dir} has no labels"
            )
        return self._tables[split].copy()

    def _loader(
        self,
        dataset,
        *,
        sampler=None,
        batch_size: int | None = None,
        collate_fn=None,
        pin_memory: bool | None = None,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory if pin_memory is None else bool(pin_memory),
            persistent_workers=self.persistent_workers,
            worker_init_fn=worker_init_fn,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(self.seed),
        )

    # ------------------------------------------------------------------ augmentation on the device
    #: The batch entry the windowed images go to (``image`` or ``volume``).
    _image_key = "image"

    def _build_augment(self):
        """The MONAI augmentation of this module's items (2D or 3D)."""
        raise NotImplementedError

    def _on_cuda(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def augments_on_device(self) -> bool:
        """Whether the training batches are augmented and windowed after the transfer
        (``augment_on`` resolved: ``auto`` is ``device`` when the trainer runs on CUDA)."""
        if self.augment_on == "auto":
            return self._on_cuda()
        return self.augment_on == "device"

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Keep the branches of a ``device``-mode batch on the host (a list: no device sync later)."""
        if isinstance(batch, dict) and isinstance(batch.get("augment_branch"), torch.Tensor):
            batch = {**batch, "augment_branch": batch["augment_branch"].tolist()}
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Finish a ``device``-mode batch on its device (:meth:`finish_batch`); others pass."""
        if isinstance(batch, dict) and "hu" in batch:
            return self.finish_batch(batch)
        return batch

    def finish_batch(self, batch: dict) -> dict:
        """Turn a ``device``-mode batch into the batch the loader would have given.

        ``hu`` (int16 HU; volumes padded with air along T) is augmented with the
        per-sample draws ``augment_branch``/``augment_matrix`` when the batch has
        them (:func:`~ich3d.data.augment.augment_batch`, batched per branch),
        then windowed into ``image`` ``(B, C, H, W)`` / ``volume``
        ``(B, T, C, H, W)``; those entries are removed. Runs wherever ``hu`` is
        (the device, after Lightning's transfer); the other entries stay as they are.
        """
        out = {k: v for k, v in batch.items() if k not in ("hu", "augment_branch", "augment_matrix")}
        x = batch["hu"].float()
        if "augment_branch" in batch:
            if self._augment_template is None:
                self._augment_template = self._build_augment()
            lengths = batch["length"] if self._image_key == "volume" else None
            x = augment_batch(self._augment_template, x, batch["augment_branch"], batch["augment_matrix"], lengths)
        return {self._image_key: apply_windows(x, self.windows, channel_axis=x.ndim - 2), **out}

    def _train_loader(self, dataset, sampler, collate_fn=None) -> DataLoader:
        # Lightning copies batches to CUDA with non_blocking=True; pinned pages make the copy async
        pin = self.pin_memory or (getattr(dataset, "raw_hu", False) and self._on_cuda())
        return self._loader(dataset, sampler=sampler, collate_fn=collate_fn, pin_memory=pin)

    def _train_rows(
        self, table: pd.DataFrame, negatives_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        pos = np.flatnonzero(table["label"].to_numpy() == 1)
        neg = np.flatnonzero(negatives_mask)
        if len(pos) == 0 or len(neg) == 0:
            raise UserError(
                f"the training split has {len(pos)} positive and {len(neg)} negative "
                f"items for label {self.label!r}; balanced training needs both"
            )
        n = self.samples_per_epoch if self.samples_per_epoch is not None else 2 * len(pos)
        return pos, neg, n


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
        ensure_slice_stats(cache, self.rule, workers=self.ingest_workers)

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
        )
        return self._train_loader(dataset, BalancedSampler(pos, neg, n, seed=self.seed))

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every cranial-cavity slice of ``split`` once, fixed order, no augmentation."""
        dataset = SliceDataset(self.cache, self.slice_table(split), self.windows, size=self.size, targets=self.targets)  # type: ignore[arg-type]
        return self._loader(dataset)

    def val_dataloader(self) -> DataLoader:
        """The validation slices of training: all, or the fixed ``val_samples`` subset."""
        table = validation_subset(self.slice_table("val"), self.val_samples, self.seed)
        return self._loader(SliceDataset(self.cache, table, self.windows, size=self.size, targets=self.targets))  # type: ignore[arg-type]

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
                f"batch_size {self.batch_size} needs pad_batches=True (volumes differ in length)"
            )
        self.collate = VolumeCollate(self.windows)

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
