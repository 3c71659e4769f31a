"""Torch datasets over an ingest cache (the sampler and collate: :mod:`ich3d.data.batching`).

Items are addressed by a row of the dataset's table. A plain ``int`` row gives
the sample as stored (evaluation); a ``(row, seed)`` pair, as yielded by
:class:`BalancedSampler`, gives it augmented with that per-sample seed. The
seed travels with the index from the sampler (main process) to the worker, so
augmentation does not depend on the number of workers or on which worker runs
it, and the same ``seed`` gives the same batches. With ``raw_hu`` (the
DataModules' ``augment_on: device``) an item carries the stored HU and only the
augmentation's draws for its seed; the augmentation and windowing run after
the transfer.

The datasets keep their table as fixed-dtype arrays (:class:`TableArrays`),
never a DataFrame or the cache object: DataLoader workers started with
``spawn``/``forkserver`` memory-map one copy of it instead of each unpickling
their own, and ``fork`` workers do not copy it page by page.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ich3d.data.augment import AIR_OFFSET, augment, augment_params
from ich3d.data.batching import (  # re-exported: the datasets' batching
    BalancedSampler,
    VolumeCollate,
    collate_volume_fields,
    pad_slice_targets,
    worker_init_fn,
)
from ich3d.data.cache import IngestCache
from ich3d.data.context import check_context, neighbour_indices, stack_context, window_major
from ich3d.data.schema import HU_MIN
from ich3d.data.windows import WindowSpec, apply_windows
from ich3d.errors import UserError

__all__ = [
    "slice_label_arrays",
    "pad_slice_targets",
    "depth_pool",
    "fit_in_plane",
    "TableArrays",
    "SliceDataset",
    "VolumeDataset",
    "BalancedSampler",
    "VolumeCollate",
    "collate_volume_fields",
    "worker_init_fn",
]


def depth_pool(volume: np.ndarray, k: int = 2) -> np.ndarray:
    """Max over consecutive groups of ``k`` slices; an incomplete last group is pooled alone.

    With the cache's 2x2 in-plane max filter, ``k=2`` gives the 2x2x2 max filter
    of the volume models. ``k=1`` returns the input unchanged.

    Args:
        volume: ``(T, H, W)`` array.
        k: slices per group (>= 1).

    Returns:
        ``(ceil(T / k), H, W)`` array of the same dtype.
    """
    if k < 1:
        raise ValueError(f"depth pool must be >= 1, got {k}")
    v = np.asarray(volume)
    if k == 1:
        return v
    return np.maximum.reduceat(v, np.arange(0, v.shape[0], k), axis=0)


def fit_in_plane(arr: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Center-crop or pad (with air, -1024 HU) the last two axes of an HU array to ``size``.

    Returns ``arr`` itself when it already has that size or ``size`` is None.
    """
    if size is None or tuple(arr.shape[-2:]) == tuple(size):
        return arr
    out = np.full(arr.shape[:-2] + tuple(size), HU_MIN, dtype=arr.dtype)
    src, dst = [], []
    for have, want in zip(arr.shape[-2:], size, strict=True):
        if have >= want:
            a = (have - want) // 2
            src.append(slice(a, a + want))
            dst.append(slice(0, want))
        else:
            a = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(a, a + have))
    out[(..., *dst)] = arr[(..., *src)]
    return out


def _split_item(item: int | tuple[int, int]) -> tuple[int, int | None]:
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), None


def _target_array(table: pd.DataFrame, targets: Sequence[str] | None) -> np.ndarray | None:
    """``(N, K)`` float32 target labels of ``table`` (None without targets)."""
    if targets is None:
        return None
    missing = [t for t in targets if t not in table.columns]
    if missing:
        raise UserError(f"the table has no label column {missing[0]!r} for the targets")
    return np.ascontiguousarray(table[list(targets)].to_numpy(dtype=np.float32))


def slice_label_arrays(
    cache: IngestCache, keys: Sequence[str], columns: Sequence[str], depth_pool: int = 1
) -> dict[str, np.ndarray]:
    """Per volume, its slice labels ``(T, K)`` float32 after the depth max-filter.

    A pooled slice is positive on a label when one of the ``depth_pool`` slices it
    pools is (the same max as the image's); the per-slice sequence outputs
    (``model.per_slice``) train on these.
    """
    wanted = set(map(str, keys))
    sl = cache.slices[["key", "slice_index", *columns]]
    sl = sl[sl["key"].isin(wanted)].sort_values(["key", "slice_index"], kind="stable")
    out: dict[str, np.ndarray] = {}
    for key, group in sl.groupby("key", sort=False):
        a = group[list(columns)].to_numpy(np.float32)
        out[str(key)] = np.maximum.reduceat(a, np.arange(0, len(a), int(depth_pool)), axis=0) if len(a) else a
    return out


def _remove_folder(folder: Path, pid: int) -> None:
    """Remove a :class:`TableArrays` folder, only in the process that wrote it (not a forked copy)."""
    if os.getpid() == pid:
        shutil.rmtree(folder, ignore_errors=True)


class TableArrays:
    """Fixed-dtype numpy arrays of a dataset, shared with spawn workers through memory-mapped files.

    A DataLoader pickles its dataset once per worker under the ``spawn`` and
    ``forkserver`` start methods (``forkserver`` is the Linux default from
    Python 3.14): a dataset holding its table would send every worker its own
    copy. Pickled, a ``TableArrays`` writes its arrays once to ``.npy`` files in
    a private temporary folder and carries only the folder's path; each worker
    memory-maps the files (read only), so all of them share the same pages.
    Under ``fork`` nothing is pickled and the arrays are inherited; having no
    Python objects in them, they are not copied page by page by reference
    counting either. The folder is removed when the object that wrote it is
    garbage collected, or at exit.

    Args:
        **arrays: named arrays of any fixed dtype (numbers, ``U``/``S`` strings);
            object arrays are refused.
    """

    def __init__(self, **arrays: np.ndarray) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            if a.dtype.hasobject:
                raise TypeError(f"array {name!r} holds Python objects; give a fixed dtype")
            self._arrays[name] = a
        self._folder: Path | None = None
        self._cleanup: weakref.finalize | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __contains__(self, name: object) -> bool:
        return name in self._arrays

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays."""
        return sum(a.nbytes for a in self._arrays.values())

    def _spill(self) -> Path:
        if self._folder is None:
            folder = Path(tempfile.mkdtemp(prefix="ich3d-table-"))
            self._cleanup = weakref.finalize(self, _remove_folder, folder, os.getpid())
            for name, a in self._arrays.items():
                np.save(folder / f"{name}.npy", a, allow_pickle=False)
            self._folder = folder
        return self._folder

    def __getstate__(self) -> dict[str, Any]:
        folder = self._spill()
        small = {n: a for n, a in self._arrays.items() if a.size == 0}  # an empty file cannot be mapped
        return {"folder": str(folder), "mapped": [n for n in self._arrays if n not in small], "small": small}

    def __setstate__(self, state: dict[str, Any]) -> None:
        folder = Path(state["folder"])
        self._arrays = dict(state["small"])
        for name in state["mapped"]:
            self._arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        self._arrays = {n: self._arrays[n] for n in [*state["mapped"], *state["small"]]}
        self._folder, self._cleanup = folder, None  # the writer owns the folder


class _CacheRows(Dataset):
    """Rows over cached volumes: the shared part of :class:`SliceDataset` and :class:`VolumeDataset`.

    Holds no DataFrame and no cache object: a volume code per row (``code``),
    the keys and absolute ``.npy`` paths of the volumes (fixed-width strings),
    the labels and targets, all in one :class:`TableArrays`. Volumes are opened
    memory-mapped, the last ``_MAX_OPEN`` kept per process.
    """

    _MAX_OPEN = 64

    def __init__(
        self,
        cache: IngestCache,
        table: pd.DataFrame,
        windows: Sequence[WindowSpec],
        transform,
        size: tuple[int, int] | None,
        targets: Sequence[str] | None,
        raw_hu: bool,
        context_slices: int = 0,
        **columns: np.ndarray,
    ) -> None:
        table = table.reset_index(drop=True)
        codes, keys = pd.factorize(table["key"].astype(str), sort=False)
        vol_key = np.asarray(keys, dtype=str)
        vol_path = np.asarray([str(cache.volume_path(k)) for k in vol_key], dtype=str)
        target = _target_array(table, targets)
        extra = {} if target is None else {"target": target}
        self._arrays = TableArrays(
            code=codes.astype(np.int32),
            label=table["label"].to_numpy(dtype=np.float32),
            vol_key=vol_key,
            vol_path=vol_path,
            **extra,
            **columns,
        )
        self.windows = list(windows)
        self.transform = transform
        self.size = size
        self.raw_hu = bool(raw_hu)
        self.context_slices = check_context(context_slices)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()  # open maps stay in their process
        return state

    def __len__(self) -> int:
        return int(self._arrays["code"].shape[0])

    def _volume(self, code: int) -> np.ndarray:
        arr = self._maps.get(code)
        if arr is not None:
            self._maps.move_to_end(code)
            return arr
        arr = np.load(str(self._arrays["vol_path"][code]), mmap_mode="r")
        self._maps[code] = arr
        while len(self._maps) > self._MAX_OPEN:
            self._maps.popitem(last=False)
        return arr

    def _image(self, hu: np.ndarray, seed: int | None, channel_axis: int, stacked: bool = False) -> tuple[dict, int]:
        """The item's image entries and its number of slices (volumes).

        Windowed (and, for a seed, augmented) HU as ``image`` / ``volume``; with
        ``raw_hu`` the HU as stored as ``hu`` and, for a seed, the augmentation's
        draws (:func:`~ich3d.data.augment.augment_params`) as ``augment_branch``
        and ``augment_matrix``, applied after the transfer. ``stacked``: ``hu`` is
        a slice's ``(2k + 1, H, W)`` neighbours (2.5D, :mod:`ich3d.data.context`),
        augmented alike as the channels of one 2D image; a volume gets its
        neighbours after windowing.
        """
        if self.raw_hu:
            out = {"hu": torch.from_numpy(np.array(hu, dtype=np.int16))}
            if self.transform is not None and seed is not None:
                branch, matrix = augment_params(self.transform, seed, hu.shape[1:] if stacked else hu.shape)
                out["augment_branch"] = torch.tensor(branch, dtype=torch.long)
                out["augment_matrix"] = torch.from_numpy(matrix)
            return out, int(hu.shape[0])
        x = torch.from_numpy(hu.astype(np.float32))
        if self.transform is not None and seed is not None:
            x = augment(self.transform, (x if stacked else x[None]) + AIR_OFFSET, seed)
            x = (x if stacked else x[0]) - AIR_OFFSET
        name = "image" if channel_axis == 0 else "volume"
        image = apply_windows(x, self.windows, channel_axis=channel_axis)
        if stacked:  # (C, 2k + 1, H, W) -> (C * (2k + 1), H, W)
            image = window_major(image, 0)
        elif channel_axis == 1:
            image = stack_context(image, self.context_slices)
        return {name: image}, int(x.shape[0])

    def _labels(self, row: int) -> dict:
        if "target" not in self._arrays:
            return {}
        return {"target": torch.tensor(self._arrays["target"][row])}


class SliceDataset(_CacheRows):
    """One windowed axial slice per item.

    Args:
        cache: the opened ingest cache.
        table: one row per slice with columns ``key``, ``slice_index``, ``label``.
        windows: window names / ``(center, width)`` pairs, one channel each.
        transform: 2D augmentation (:func:`~ich3d.data.augment.build_augment_2d`),
            applied only to ``(row, seed)`` items; None disables it.
        size: in-plane ``(H, W)`` every slice is cropped/padded to (None: as stored).
        targets: label columns of ``table`` given as ``target`` (None: no ``target``).
        raw_hu: give the slice's HU as stored instead of the image and, for
            ``(row, seed)`` items, only the augmentation's draws (branch and affine
            matrix, :func:`~ich3d.data.augment.augment_params`): augmentation and
            windowing run after the batch is on the device (``data.augment_on:
            device``, :func:`~ich3d.data.augment.augment_batch`).
        context_slices: ``k`` > 0 gives each slice its ``k`` neighbours above and
            below (2.5D, :mod:`ich3d.data.context`): ``image`` has ``C * (2k + 1)``
            window-major channels, edge slices repeated; with ``raw_hu``, ``hu`` is
            the ``(2k + 1, H, W)`` neighbours. Default 0 (the slice alone).

    The table is kept as fixed-dtype arrays (:class:`TableArrays`), not as the
    DataFrame. Items are dicts: ``image`` float32 ``(C, H, W)`` in [0, 1],
    ``label`` float32 scalar, ``key`` str, ``slice_index`` int64, ``index``
    int64 (row of ``table``), and with ``targets`` ``target`` float32 ``(K,)``.
    With ``raw_hu``: ``hu`` int16 ``(H, W)`` (cropped/padded, not windowed) in
    place of ``image`` and, for ``(row, seed)`` items with a ``transform``,
    ``augment_branch`` int64 and ``augment_matrix`` float32 ``(3, 3)``.
    """

    def __init__(
        self,
        cache: IngestCache,
        table: pd.DataFrame,
        windows: Sequence[WindowSpec],
        transform=None,
        size: tuple[int, int] | None = None,
        targets: Sequence[str] | None = None,
        raw_hu: bool = False,
        context_slices: int = 0,
    ) -> None:
        super().__init__(
            cache,
            table,
            windows,
            transform,
            size,
            targets,
            raw_hu,
            context_slices,
            slice_index=table["slice_index"].to_numpy(dtype=np.int64),
        )

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        row, seed = _split_item(item)
        code = int(self._arrays["code"][row])
        index = int(self._arrays["slice_index"][row])
        volume = self._volume(code)
        stacked = self.context_slices > 0
        rows = neighbour_indices(index, volume.shape[0], self.context_slices) if stacked else index
        hu = fit_in_plane(np.asarray(volume[rows]), self.size)
        image, _ = self._image(hu, seed, channel_axis=0, stacked=stacked)
        return {
            **image,
            "label": torch.tensor(self._arrays["label"][row]),
            "key": str(self._arrays["vol_key"][code]),
            "slice_index": torch.tensor(index, dtype=torch.long),
            "index": torch.tensor(row, dtype=torch.long),
            **self._labels(row),
        }


class VolumeDataset(_CacheRows):
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
        raw_hu: give the pooled HU as stored instead of ``volume``, plus the
            augmentation's draws (see :class:`SliceDataset`).
        context_slices: ``k`` > 0 gives each pooled slice its ``k`` pooled
            neighbours above and below as channels (2.5D, :mod:`ich3d.data.context`):
            ``volume`` has ``C * (2k + 1)`` channels. Not applied to ``hu`` (the
            data module does it after the transfer). Default 0.

    Items are dicts: ``volume`` float32 ``(T, C, H, W)`` in [0, 1], ``length``
    int64 ``T``, ``label`` float32, ``key`` str, ``index`` int64 (row of ``table``),
    and with ``targets`` ``target`` float32 ``(K,)``. With ``raw_hu``: ``hu``
    int16 ``(T, H, W)`` in place of ``volume`` and, for ``(row, seed)`` items
    with a ``transform``, ``augment_branch`` int64 and ``augment_matrix``
    float32 ``(4, 4)``.
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
        raw_hu: bool = False,
        context_slices: int = 0,
    ) -> None:
        self.depth_pool = int(depth_pool)
        packed: dict[str, np.ndarray] = {}
        if slice_columns:
            keys = [str(k) for k in pd.factorize(table["key"].astype(str), sort=False)[1]]  # = the codes' order
            labels = slice_label_arrays(cache, keys, slice_columns, self.depth_pool)
            per_vol = [labels.get(k, np.zeros((0, len(slice_columns)), np.float32)) for k in keys]
            offsets = np.zeros(len(keys) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(a) for a in per_vol])
            packed = {
                "slice_target": np.concatenate(per_vol).astype(np.float32, copy=False),
                "slice_target_offset": offsets,
            }
        super().__init__(cache, table, windows, transform, size, targets, raw_hu, context_slices, **packed)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        row, seed = _split_item(item)
        code = int(self._arrays["code"][row])
        hu = depth_pool(np.asarray(self._volume(code)), self.depth_pool)
        hu = fit_in_plane(hu, self.size)
        image, length = self._image(hu, seed, channel_axis=1)
        out = {
            **image,
            "length": torch.tensor(length, dtype=torch.long),
            "label": torch.tensor(self._arrays["label"][row]),
            "key": str(self._arrays["vol_key"][code]),
            "index": torch.tensor(row, dtype=torch.long),
            **self._labels(row),
        }
        if "slice_target" in self._arrays:
            lo, hi = self._arrays["slice_target_offset"][code : code + 2]
            st = np.array(self._arrays["slice_target"][lo:hi])
            if st.shape[0] != length:
                raise RuntimeError(f"slice labels ({st.shape[0]}) and pooled slices ({length}) disagree")
            out["slice_target"] = torch.from_numpy(st)
        return out
