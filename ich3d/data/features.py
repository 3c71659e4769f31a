"""Cached slice features: a frozen encoder run once per volume, its outputs served as batches.

A stage whose encoder is frozen (stage 2 of the method) spends almost all of its
time in a CNN whose output never changes: this module computes the encoder's
slice features once per volume and view, stores them next to the run, and
serves them to the sequence head instead of the volumes.

Store layout (``<stage dir>/features/``)::

    features.json            fingerprint (encoder weights, inputs, views, seed ...), version
    train.npy, val.npy       float32 (total slices over all views, F), memory-mapped when read
    train.index.npy, ...     int64 (rows, views + 1): start of each view, then the length

``train`` holds ``views`` views per volume: with augmentation off one plain view
(exact: the same features the encoder computes inside the stage); with
augmentation on, ``views`` augmented views of each training volume, made once
with fixed per-view seeds, and each training draw picks one of them (from the
per-sample seed of :class:`~ich3d.data.datasets.BalancedSampler`). This
replaces a fresh augmentation at every step by ``views`` fixed ones: cheaper by
the cost of the CNN, less varied (docs/training.md says so). ``val`` holds one plain
view. The arrays are memory-mapped, so DataLoader workers share the pages
instead of copying them.

The store is rebuilt when its fingerprint differs (other encoder weights, other
inputs, another number of views or seed), and reused otherwise (a resumed stage).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ich3d.data.augment import build_augment_3d
from ich3d.data.cache import atomic_write_text
from ich3d.data.datamodule import VolumeDataModule
from ich3d.data.datasets import (
    BalancedSampler,
    VolumeDataset,
    collate_volume_fields,
    slice_label_arrays,
)
from ich3d.errors import UserError

__all__ = [
    "FEATURE_STORE_VERSION",
    "view_seed",
    "FeatureStore",
    "FeatureDataset",
    "FeatureCollate",
    "FeatureDataModule",
]

log = logging.getLogger(__name__)

FEATURE_STORE_VERSION = 1

#: ``(1, T, C, H, W) volume -> (1, T, F) features`` (a volume model's ``encode``).
Encoder = Callable[[torch.Tensor], torch.Tensor]


def view_seed(seed: int, row: int, view: int) -> int:
    """The augmentation seed of view ``view`` of training row ``row``."""
    return int(np.random.SeedSequence([int(seed), 0x5EED, int(row), int(view)]).generate_state(1)[0])


class FeatureStore:
    """One split's features: ``features(row, view) -> (T, F)`` float32, memory-mapped.

    Args:
        root: the store folder.
        split: ``train`` or ``val``.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        root = Path(root)
        self.data = np.load(root / f"{split}.npy", mmap_mode="r")
        self.index = np.load(root / f"{split}.index.npy")
        self.views = self.index.shape[1] - 1

    def __len__(self) -> int:
        return len(self.index)

    def features(self, row: int, view: int = 0) -> np.ndarray:
        start, length = int(self.index[row, view]), int(self.index[row, -1])
        return self.data[start : start + length]

    @staticmethod
    def write(root: Path, split: str, per_row: list[list[np.ndarray]]) -> None:
        """Write ``per_row[row][view]`` arrays ``(T, F)`` (every view of a row has the same T)."""
        views = len(per_row[0]) if per_row else 1
        index = np.zeros((len(per_row), views + 1), dtype=np.int64)
        pos = 0
        for r, feats in enumerate(per_row):
            for v, f in enumerate(feats):
                index[r, v] = pos
                pos += len(f)
            index[r, -1] = len(feats[0])
        dim = per_row[0][0].shape[1] if per_row else 0
        data = np.empty((pos, dim), dtype=np.float32)
        for r, feats in enumerate(per_row):
            for v, f in enumerate(feats):
                data[index[r, v] : index[r, v] + len(f)] = f
        for name, arr in ((f"{split}.npy", data), (f"{split}.index.npy", index)):
            tmp = root / f".{name}.tmp.npy"
            np.save(tmp, arr)
            tmp.replace(root / name)


class FeatureDataset(Dataset):
    """Items like :class:`~ich3d.data.datasets.VolumeDataset`'s, with ``features`` for ``volume``.

    A plain ``int`` item gives view 0; a ``(row, seed)`` pair (training draws)
    gives view ``seed % views``.
    """

    def __init__(
        self,
        store: FeatureStore,
        table: pd.DataFrame,
        targets: list[str] | None = None,
        slice_targets: dict[str, np.ndarray] | None = None,
    ) -> None:
        if len(store) != len(table):
            raise RuntimeError(f"feature store has {len(store)} rows, the split {len(table)}")
        self.store = store
        self._keys = table["key"].to_numpy().astype(str)  # fixed width: no objects to copy per worker
        self._label = table["label"].to_numpy(dtype=np.float32)
        # several targets (data.targets): ``target`` (K,) as the volume items have it
        self._targets = table[targets].to_numpy(np.float32) if targets else None
        self._slice_targets = slice_targets  # key -> (T, K) pooled slice labels (model.per_slice)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        row, seed = (int(item[0]), item[1]) if isinstance(item, tuple) else (int(item), None)
        view = 0 if seed is None else int(seed) % self.store.views
        feats = torch.from_numpy(np.array(self.store.features(row, view)))
        out = {
            "features": feats,
            "length": torch.tensor(feats.shape[0], dtype=torch.long),
            "label": torch.tensor(self._label[row]),
            "key": str(self._keys[row]),
            "index": torch.tensor(row, dtype=torch.long),
        }
        if self._targets is not None:
            out["target"] = torch.tensor(self._targets[row])
        if self._slice_targets is not None:
            out["slice_target"] = torch.from_numpy(self._slice_targets[str(self._keys[row])])
        return out


class FeatureCollate:
    """Pad ``features`` along T with zeros (the heads never read padded positions)."""

    def __call__(self, items: list[dict]) -> dict:
        t_max = max(int(it["length"]) for it in items)
        feats = torch.zeros((len(items), t_max, items[0]["features"].shape[-1]), dtype=torch.float32)
        for i, it in enumerate(items):
            feats[i, : it["features"].shape[0]] = it["features"]
        return {"features": feats, **collate_volume_fields(items, t_max)}


class FeatureDataModule(pl.LightningDataModule):
    """A :class:`~ich3d.data.datamodule.VolumeDataModule` whose volumes are replaced by cached features.

    ``prepare_data`` (rank 0) runs the volume module's own ``prepare_data`` (ingest,
    splits), then builds the store when it is missing or its fingerprint differs:
    every training volume in ``views`` views, every validation volume once,
    through ``encode`` on the trainer's device and under its precision context.
    ``setup`` opens the store. Batches: ``features`` float32 ``(B, T, F)``,
    ``length``, ``label``, ``key``, ``index`` (the volume module's split rows).

    Args:
        volumes: the stage's volume DataModule (its splits, sampler settings,
            loaders and augmentation switch are used as they are).
        encode: ``(1, T, C, H, W) -> (1, T, F)``, the frozen model's ``encode``.
        store_dir: the store folder.
        fingerprint: what the features depend on besides the data (encoder
            weights hash, inputs, ...); the views, seed and augmentation switch
            are added here.
        views: augmented views per training volume when the volume module
            augments (1 when it does not).
        progress: progress bars.
    """

    def __init__(
        self,
        volumes: VolumeDataModule,
        encode: Encoder,
        store_dir: str | Path,
        fingerprint: Mapping[str, Any],
        *,
        views: int = 4,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if views < 1:
            raise UserError(f"feature_views must be >= 1, got {views}")
        self.volumes = volumes
        self.encode = encode
        self.store_dir = Path(store_dir)
        self.views = int(views) if volumes.augment else 1
        self.fingerprint = {
            **dict(fingerprint),
            "version": FEATURE_STORE_VERSION,
            "views": self.views,
            "augment": bool(volumes.augment),
            "seed": int(volumes.seed),
            "depth_pool": int(volumes.depth_pool),
        }
        if volumes.context_slices:  # 2.5D features differ; absent at 0 keeps older stores current
            self.fingerprint["context_slices"] = int(volumes.context_slices)
        self.prepare_data_per_node = volumes.prepare_data_per_node
        self.batch_size = volumes.batch_size
        self._stores: dict[str, FeatureStore] = {}
        self.progress = progress
        self.built = False  # whether this process computed the store (vs. reused it)

    # ------------------------------------------------------------------ disk work
    def _meta_path(self) -> Path:
        return self.store_dir / "features.json"

    def is_current(self) -> bool:
        """Whether the store exists with this fingerprint."""
        try:
            return json.loads(self._meta_path().read_text()) == self.fingerprint
        except (OSError, ValueError):
            return False

    def prepare_data(self) -> None:
        self.volumes.prepare_data()
        if self.is_current():
            log.info("reusing the cached slice features in %s", self.store_dir)
            return
        self.volumes.setup("fit")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._meta_path().unlink(missing_ok=True)
        device, context = torch.device("cpu"), None
        trainer = self.trainer
        if trainer is not None:
            device = trainer.strategy.root_device
            context = trainer.precision_plugin.forward_context
        transform = build_augment_3d() if self.volumes.augment else None
        for split, views in (("train", self.views), ("val", 1)):
            table = self.volumes.split_table(split)
            dataset = VolumeDataset(
                self.volumes.cache,  # type: ignore[arg-type]
                table,
                self.volumes.windows,
                depth_pool=self.volumes.depth_pool,
                transform=transform if split == "train" else None,
                size=self.volumes.size,
                context_slices=self.volumes.context_slices,
            )
            if split == "train" and transform is not None:
                items: list[Any] = [(r, view_seed(self.volumes.seed, r, v)) for r in range(len(table)) for v in range(views)]
            else:
                items = list(range(len(table)))
            loader = DataLoader(
                dataset,
                batch_size=None,
                sampler=items,
                num_workers=self.volumes.num_workers,
                pin_memory=self.volumes.pin_memory,
            )
            per_row: list[list[np.ndarray]] = [[] for _ in range(len(table))]
            from tqdm.auto import tqdm

            bar = tqdm(loader, total=len(items), desc=f"slice features ({split})", unit="vol", disable=not self.progress)
            with torch.no_grad():
                for item in bar:
                    x = item["volume"].to(device, non_blocking=True)[None]
                    if context is not None:
                        with context():
                            f = self.encode(x)
                    else:
                        f = self.encode(x)
                    per_row[int(item["index"])].append(f[0].float().cpu().numpy())
            FeatureStore.write(self.store_dir, split, per_row)
        atomic_write_text(self._meta_path(), json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n")
        self.built = True
        log.info("cached slice features in %s (%d view(s) per training volume)", self.store_dir, self.views)

    # ------------------------------------------------------------------ state
    def setup(self, stage: str | None = None) -> None:
        if not self.is_current():
            raise RuntimeError(f"no current feature store in {self.store_dir}; prepare_data did not run")
        self.volumes.setup("fit")
        self._stores = {s: FeatureStore(self.store_dir, s) for s in ("train", "val")}

    def _dataset(self, split: str) -> FeatureDataset:
        if split not in self._stores:
            raise RuntimeError("call setup() first")
        table = self.volumes.split_table(split)
        columns = getattr(self.volumes, "slice_columns", None)
        slice_targets = None
        if columns:
            slice_targets = slice_label_arrays(self.volumes.cache, list(table["key"]), columns, self.volumes.depth_pool)
        return FeatureDataset(self._stores[split], table, getattr(self.volumes, "targets", None), slice_targets)

    def train_dataloader(self) -> DataLoader:
        table = self.volumes.split_table("train")
        pos, neg, n = self.volumes._train_rows(table, table["label"].to_numpy() == 0)
        sampler = BalancedSampler(pos, neg, n, seed=self.volumes.seed)
        return self.volumes._loader(self._dataset("train"), sampler=sampler, collate_fn=FeatureCollate())

    def val_dataloader(self) -> DataLoader:
        return self.volumes._loader(self._dataset("val"), collate_fn=FeatureCollate())
