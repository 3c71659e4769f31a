"""The datasets as they were before :class:`ich3d.data.datasets.TableArrays` (commit 8ea9c4b).

They hold the DataFrame, an object array of keys and the cache object (with
its tables once read); kept unchanged as the baseline of
``benchmarks.bench_loader`` and as the reference the tests compare the new
datasets' items with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ich3d.data.augment import AIR_OFFSET, augment
from ich3d.data.cache import IngestCache
from ich3d.data.datasets import _split_item, depth_pool, fit_in_plane, slice_label_arrays
from ich3d.data.windows import WindowSpec, apply_windows
from ich3d.errors import UserError

__all__ = ["DataFrameSliceDataset", "DataFrameVolumeDataset"]


def _target_array(table: pd.DataFrame, targets: Sequence[str] | None) -> np.ndarray | None:
    """``(N, K)`` float32 target labels of ``table`` (None without targets)."""
    if targets is None:
        return None
    missing = [t for t in targets if t not in table.columns]
    if missing:
        raise UserError(f"the table has no label column {missing[0]!r} for the targets")
    return np.ascontiguousarray(table[list(targets)].to_numpy(dtype=np.float32))


class DataFrameSliceDataset(Dataset):
    """One windowed axial slice per item.

    Args:
        cache: the opened ingest cache.
        table: one row per slice with columns ``key``, ``slice_index``, ``label``.
        windows: window names / ``(center, width)`` pairs, one channel each.
        transform: 2D augmentation (:func:`~ich3d.data.augment.build_augment_2d`),
            applied only to ``(row, seed)`` items; None disables it.
        size: in-plane ``(H, W)`` every slice is cropped/padded to (None: as stored).
        targets: label columns of ``table`` given as ``target`` (None: no ``target``).

    Items are dicts: ``image`` float32 ``(C, H, W)`` in [0, 1], ``label`` float32
    scalar, ``key`` str, ``slice_index`` int64, ``index`` int64 (row of ``table``),
    and with ``targets`` ``target`` float32 ``(K,)``.
    """

    def __init__(
        self,
        cache: IngestCache,
        table: pd.DataFrame,
        windows: Sequence[WindowSpec],
        transform=None,
        size: tuple[int, int] | None = None,
        targets: Sequence[str] | None = None,
    ) -> None:
        self.cache = cache
        self.table = table.reset_index(drop=True)
        self.windows = list(windows)
        self.transform = transform
        self.size = size
        self._keys = self.table["key"].to_numpy()
        self._slice = self.table["slice_index"].to_numpy(dtype=np.int64)
        self._label = self.table["label"].to_numpy(dtype=np.float32)
        self._targets = _target_array(self.table, targets)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        row, seed = _split_item(item)
        key = str(self._keys[row])
        hu = np.asarray(self.cache.load_volume(key)[self._slice[row]])
        hu = fit_in_plane(hu, self.size)
        x = torch.from_numpy(hu.astype(np.float32))
        if self.transform is not None and seed is not None:
            x = augment(self.transform, x[None] + AIR_OFFSET, seed)[0] - AIR_OFFSET
        out = {
            "image": apply_windows(x, self.windows, channel_axis=0),
            "label": torch.tensor(self._label[row]),
            "key": key,
            "slice_index": torch.tensor(self._slice[row], dtype=torch.long),
            "index": torch.tensor(row, dtype=torch.long),
        }
        if self._targets is not None:
            out["target"] = torch.from_numpy(self._targets[row])
        return out


class DataFrameVolumeDataset(Dataset):
    """One windowed, depth-pooled volume per item.

    Args:
        cache: the opened ingest cache.
        table: one row per volume with columns ``key`` and ``label``.
        windows: window names / ``(center, width)`` pairs, one channel each.
        depth_pool: slices pooled by a max into one (default 2; 1 keeps all slices).
        transform: 3D augmentation (:func:`~ich3d.data.augment.build_augment_3d`),
            applied to the pooled HU volume of ``(row, seed)`` items only.
        size: in-plane ``(H, W)`` every volume is cropped/padded to (None: as stored).
        targets: label columns of ``table`` given as ``target`` (None: no ``target``).
        slice_columns: label columns given per pooled slice as ``slice_target``
            ``(T, K)`` (:func:`slice_label_arrays`); None: none.

    Items are dicts: ``volume`` float32 ``(T, C, H, W)`` in [0, 1], ``length``
    int64 ``T``, ``label`` float32, ``key`` str, ``index`` int64 (row of ``table``),
    and with ``targets`` ``target`` float32 ``(K,)``.
    """

    def __init__(
        self,
        cache: IngestCache,
        table: pd.DataFrame,
        windows: Sequence[WindowSpec],
        depth_pool: int = 2,
        transform=None,
        size: tuple[int, int] | None = None,
        targets: Sequence[str] | None = None,
        slice_columns: Sequence[str] | None = None,
    ) -> None:
        self.cache = cache
        self.table = table.reset_index(drop=True)
        self.windows = list(windows)
        self.depth_pool = int(depth_pool)
        self.transform = transform
        self.size = size
        self._keys = self.table["key"].to_numpy()
        self._label = self.table["label"].to_numpy(dtype=np.float32)
        self._targets = _target_array(self.table, targets)
        self._slice_targets = (
            slice_label_arrays(cache, list(self._keys), slice_columns, self.depth_pool) if slice_columns else None
        )

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        row, seed = _split_item(item)
        key = str(self._keys[row])
        hu = depth_pool(np.asarray(self.cache.load_volume(key)), self.depth_pool)
        hu = fit_in_plane(hu, self.size)
        x = torch.from_numpy(hu.astype(np.float32))
        if self.transform is not None and seed is not None:
            x = augment(self.transform, x[None] + AIR_OFFSET, seed)[0] - AIR_OFFSET
        out = {
            "volume": apply_windows(x, self.windows, channel_axis=1),
            "length": torch.tensor(x.shape[0], dtype=torch.long),
            "label": torch.tensor(self._label[row]),
            "key": key,
            "index": torch.tensor(row, dtype=torch.long),
        }
        if self._targets is not None:
            out["target"] = torch.from_numpy(self._targets[row])
        if self._slice_targets is not None:
            st = self._slice_targets[key]
            if st.shape[0] != x.shape[0]:
                raise RuntimeError(f"slice labels ({st.shape[0]}) and pooled slices ({x.shape[0]}) disagree")
            out["slice_target"] = torch.from_numpy(st)
        return out
