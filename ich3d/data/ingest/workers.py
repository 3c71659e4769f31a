"""What the worker processes run: header reads (pass 1) and volume builds (pass 2)."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ich3d.data.dicom import (
    SkipSlice,
    SliceHeader,
    decode_frames,
    pooled_hu,
    read_headers,
    read_pixels,
)

__all__ = [
    "header_task",
    "header_task_packed",
    "VolumeTask",
    "build_volume",
    "blank_indices",
    "atomic_save_npy",
    "pmap",
]


def header_task(item: tuple[str, str, int]) -> list[SliceHeader] | tuple[str, str, str]:
    """Pass 1: one file -> its header(s), or (relpath, reason, detail)."""
    root, rel, size = item
    try:
        return read_headers(os.path.join(root, rel), file_size=size)
    except SkipSlice as exc:
        return (rel, exc.reason, exc.detail)


#: A header as a plain tuple of its fields: what a worker sends the parent (a frozen
#: slots dataclass pickles through Python-level __getstate__ / __setstate__, about 3x
#: slower to unpickle than a tuple, in the parent that collects 750k of them).
_pack_header = operator.attrgetter(*(f.name for f in fields(SliceHeader)))


def header_task_packed(
    item: tuple[str, str, int],
) -> list[tuple[Any, ...]] | tuple[str, str, str]:
    """:func:`header_task` in a worker: headers as field tuples (``SliceHeader(*t)``)."""
    res = header_task(item)
    return [_pack_header(h) for h in res] if isinstance(res, list) else res


@dataclass(frozen=True)
class VolumeTask:
    path: str  # final .npy path
    shape: tuple[int, int, int]
    slices: tuple[SliceHeader, ...]


def build_volume(task: VolumeTask) -> tuple[str, list[int], list[tuple[int, str]]]:
    """Pass 2: read, pool, convert and stack one volume; write it atomically.

    Returns the path, the indices of blank (constant) slices and the slices whose
    pixels could not be read as (index, detail); nothing is written when there are any.
    """
    vol = np.empty(task.shape, dtype=np.int16)
    failed: list[tuple[int, str]] = []
    decoded_path: str | None = None
    decoded: np.ndarray | None = None
    for i, h in enumerate(task.slices):
        try:
            frames = None
            if not h.native and h.n_frames > 1:  # one decode for every frame of the file
                if decoded_path != h.path:
                    decoded_path, decoded = h.path, None
                    decoded = decode_frames(h.path, h.transfer_syntax)
                frames = decoded
            vol[i] = pooled_hu(
                read_pixels(h, decoded=frames),
                bits_stored=h.bits_stored,
                signed=h.signed,
                slope=h.slope,
                intercept=h.intercept,
            )
        except SkipSlice as exc:
            failed.append((i, exc.detail))
    if failed:
        return task.path, [], failed
    atomic_save_npy(task.path, vol)
    return task.path, blank_indices(vol), []


def blank_indices(vol: np.ndarray) -> list[int]:
    flat = vol.reshape(vol.shape[0], -1)
    return np.flatnonzero(flat.min(axis=1) == flat.max(axis=1)).tolist()


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def pmap(
    fn: Any,
    items: Sequence[Any],
    workers: int,
    chunksize: int,
    progress: Any,
    weights: Sequence[int] | None = None,
) -> Iterator[Any]:
    """Ordered map, in-process for workers=1, else over a process pool."""
    if workers <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            yield fn(item)
            progress.update(weights[i] if weights is not None else 1)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, res in enumerate(pool.map(fn, items, chunksize=chunksize)):
            yield res
            progress.update(weights[i] if weights is not None else 1)
