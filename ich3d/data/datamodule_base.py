"""The shared base of the Lightning DataModules over an ingest cache (:mod:`ich3d.data.datamodule`).

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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ich3d.data.augment import augment_batch
from ich3d.data.cache import IngestCache, open_cache
from ich3d.data.context import check_context, window_batch
from ich3d.data.datasets import (
    worker_init_fn,
)
from ich3d.data.folds import load_splits
from ich3d.data.ingest import run_ingest
from ich3d.data.schema import LABEL_COLUMNS, patient_key
from ich3d.data.splits import (
    DEFAULT_FRACTIONS,
    SPLIT_NAMES,
    Splits,
    validate_fractions,
)
from ich3d.data.windows import WindowSpec, resolve_windows
from ich3d.errors import UserError

__all__ = [
    "ICHDataModule",
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


def _checked_targets(targets: Sequence[str] | None) -> list[str] | None:
    """``targets`` as a list, every name a label column.

    Raises:
        UserError: an unknown or empty target list.
    """
    if targets is None:
        return None
    bad = [t for t in targets if t not in LABEL_COLUMNS]
    if bad or not targets:
        raise UserError(
            f"unknown target {bad[0] if bad else None!r}; expected names from {', '.join(LABEL_COLUMNS)}"
        )
    return list(targets)


def _checked_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` as ``(H, W)`` (one int: a square), or None.

    Raises:
        UserError: not one or two positive ints.
    """
    if image_size is None:
        return None
    size = (int(image_size),) * 2 if isinstance(image_size, int) else tuple(map(int, image_size))
    if len(size) != 2 or min(size) < 1:
        raise UserError(f"image_size {image_size!r}: expected one int or (H, W)")
    return (size[0], size[1])


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
        folds: cross-validation folds over the non-test patients (default 1: none;
            :mod:`ich3d.data.folds`); written into ``splits.json`` by ``prepare_data``.
        fold: with ``folds`` > 1, validate on fold ``fold`` and train on the others
            (default None: the single split's train and val).
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
        context_slices: 2.5D input: each slice with its ``k`` neighbours above and
            below, per window, as ``C * (2k + 1)`` channels, edge slices repeated
            (:mod:`ich3d.data.context`). Default 0 (the slice alone).
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
        folds: int = 1,
        fold: int | None = None,
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
        context_slices: int = 0,
    ) -> None:
        super().__init__()
        self.context_slices = check_context(context_slices)
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
        if folds < 1 or (fold is not None and not 0 <= fold < folds):
            raise UserError(f"fold {fold} of {folds}: expected folds >= 1 and 0 <= fold < folds")
        self.folds = int(folds)
        self.fold = None if fold is None else int(fold)
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
        self.targets: list[str] | None = _checked_targets(targets)
        # new splits are stratified by subtype too when subtypes are trained
        self._stratify_subtypes = any(t != "any" for t in self.targets or [])
        self.image_size: tuple[int, int] | None = _checked_size(image_size)
        self.cache: IngestCache | None = None
        self.splits: Splits | None = None
        self.size: tuple[int, int] | None = None
        self._tables: dict[str, pd.DataFrame] = {}

    # ------------------------------------------------------------------ disk work
    def prepare_data(self) -> None:
        """Run the ingest if asked, then write the splits (and subclass files) if missing."""
        if self.images_dir is not None:
            run_ingest(
                self.images_dir,
                self.labels_csv,
                self.cache_dir,
                workers=self.ingest_workers,
                min_slices=self.min_slices,
                progress=sys.stderr.isatty(),  # no bar frames in log files and job logs
            )
        cache = open_cache(self.cache_dir)
        if cache.labeled:
            self._load_splits(cache.volumes, write=True)
        self._prepare_extra(cache)

    def _load_splits(self, volumes: pd.DataFrame, *, write: bool) -> Splits:
        """The splits (a user's file or ``CACHE/splits.json``), with folds, as this module trains."""
        return load_splits(
            self.cache_dir,
            volumes,
            splits_file=self.splits_file,
            fractions=self.split_fractions,
            seed=self.split_seed,
            overwrite=self.overwrite_splits,
            subtypes=self._stratify_subtypes,
            write=write,
            folds=self.folds,
            fold=self.fold,
        )

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
                self.splits = self._load_splits(vols, write=False)
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
        ``(B, T, C, H, W)``; those entries are removed. 2.5D: a slice's ``hu``
        ``(B, 2k + 1, H, W)`` is augmented alike, volumes get their neighbours
        after windowing (:func:`~ich3d.data.context.window_batch`). Runs wherever
        ``hu`` is (the device, after the transfer); the other entries stay.
        """
        out = {k: v for k, v in batch.items() if k not in ("hu", "augment_branch", "augment_matrix")}
        x = batch["hu"].float()
        volumes = self._image_key == "volume"
        stacked = not volumes and self.context_slices > 0
        if "augment_branch" in batch:
            if self._augment_template is None:
                self._augment_template = self._build_augment()
            lengths = batch["length"] if volumes else None
            branches, matrices, s = batch["augment_branch"], batch["augment_matrix"], x.shape[1]
            if stacked:  # every neighbour of item i takes item i's draws, as one 2D image each
                branches, matrices = [b for b in list(branches) for _ in range(s)], matrices.repeat_interleave(s, 0)
            x = augment_batch(self._augment_template, x.flatten(0, 1) if stacked else x, branches, matrices, lengths)
            x = x.unflatten(0, (-1, s)) if stacked else x
        image = window_batch(x, self.windows, self.context_slices, lengths=batch["length"] if volumes else None)
        return {self._image_key: image, **out}

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
