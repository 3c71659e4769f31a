"""Which slices show the cranial cavity: a documented HU rule, computed once per cache.

Stage-1 training uses only slices that show part of the cranial cavity
(docs/method.md section 1). The rule, on the cached (2x2 max-filtered) HU slice:

1. **bone** pixels are those with HU >= ``bone_hu`` (default 300; skull is
   700-1500+, blood 50-90, calcifications 100-300 in the phantom);
2. a pixel is **enclosed** when its row has bone somewhere to its left *and*
   to its right, and its column has bone somewhere above *and* below it (the
   pixel itself counts; i.e. it lies between the first and the last bone pixel
   of its row and of its column: four ``argmax`` scans over the whole volume);
3. **soft tissue** pixels are those with HU in ``soft_range`` (default
   [0, 100]: brain 20-45, CSF 0-15, blood 50-90);
4. ``cavity_fraction`` = (enclosed soft-tissue pixels) / (all pixels of the slice);
5. the slice **shows the cranial cavity** when ``cavity_fraction >= min_fraction``
   (default 0.02, i.e. 2% of the field of view; about 1,300 pixels of a
   256 x 256 slice).

What it does: the scalp and the neck's soft tissue lie outside the bone ring
and do not count; the top and bottom skull caps (bone with little or no brain
inside) fall below the threshold; slices with no bone at all (below the skull,
blank slices) count as 0. Limits: a skull opened on one side (craniectomy)
loses the rows/columns that cross the opening; at the skull base, soft tissue
enclosed by facial bones counts as cavity (mostly harmless: those slices are
near the posterior fossa).

The fractions are stored per slice in ``CACHE/slice_stats.csv`` (``key,
slice_index, cavity_fraction``) with the rule's parameters in
``CACHE/slice_stats.json``, so changing ``min_fraction`` needs no recompute.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ich3d.data.cache import IngestCache, atomic_write_csv, atomic_write_text

__all__ = [
    "CavityRule",
    "cavity_fraction",
    "compute_slice_stats",
    "ensure_slice_stats",
    "stats_frame",
    "volume_fractions",
    "write_slice_stats",
    "load_slice_stats",
    "STATS_CSV",
    "STATS_JSON",
]

log = logging.getLogger(__name__)

STATS_CSV = "slice_stats.csv"
STATS_JSON = "slice_stats.json"


@dataclass(frozen=True)
class CavityRule:
    """Parameters of the cranial-cavity rule (see the module docstring).

    Args:
        bone_hu: HU at and above which a pixel is bone (default 300).
        soft_min: lower end of the soft-tissue range in HU (default 0).
        soft_max: upper end of the soft-tissue range in HU (default 100).
        min_fraction: fraction of the slice's pixels that must be enclosed soft
            tissue (default 0.02). Not part of the stored statistics.
    """

    bone_hu: float = 300.0
    soft_min: float = 0.0
    soft_max: float = 100.0
    min_fraction: float = 0.02

    def stats_params(self) -> dict[str, float]:
        """Parameters that change the stored fractions (everything but ``min_fraction``)."""
        d = asdict(self)
        d.pop("min_fraction")
        return d


def cavity_fraction(volume: np.ndarray, rule: CavityRule | None = None) -> np.ndarray:
    """Fraction of each slice's pixels that are soft tissue enclosed by bone.

    Args:
        volume: HU array ``(T, H, W)`` (or one slice ``(H, W)``), any numeric dtype.
        rule: the rule's parameters (default :class:`CavityRule()`).

    Returns:
        float64 array ``(T,)`` (``(1,)`` for one slice) of fractions in [0, 1].
    """
    rule = rule or CavityRule()
    v = np.asarray(volume)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3:
        raise ValueError(f"expected (T, H, W) or (H, W), got shape {v.shape}")
    bone = v >= rule.bone_hu
    enclosed = (v >= rule.soft_min) & (v <= rule.soft_max)
    # "bone somewhere to the left and to the right (at or beyond the pixel)" is "between the
    # first and the last bone pixel of the row": two argmax scans per axis give the same
    # pixels as running-or scans (ufunc accumulate, element by element), 2-3x faster
    for axis in (2, 1):
        first, last = _bone_span(bone, axis)
        index = np.arange(v.shape[axis], dtype=first.dtype)
        index = index if axis == 2 else index[:, None]
        enclosed &= index >= np.expand_dims(first, axis)
        enclosed &= index <= np.expand_dims(last, axis)
    return enclosed.mean(axis=(1, 2), dtype=np.float64)


def _bone_span(bone: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the first and the last bone pixel of every line along ``axis``.

    A line without bone gets first = its length and last = -1 (nothing between them).
    """
    n = bone.shape[axis]
    dtype = np.int16 if n < 2**15 else np.int64  # narrow: the comparisons run on a full volume
    first = np.argmax(bone, axis=axis)
    has = np.take_along_axis(bone, np.expand_dims(first, axis), axis=axis).squeeze(axis)
    first = first.astype(dtype)
    last = ((n - 1) - np.argmax(np.flip(bone, axis=axis), axis=axis)).astype(dtype)
    first[~has] = n
    last[~has] = -1
    return first, last


def _volume_fractions(args: tuple[str, CavityRule]) -> np.ndarray:
    path, rule = args
    return cavity_fraction(np.load(path, mmap_mode="r"), rule)


def volume_fractions(
    paths: Sequence[str | Path],
    rule: CavityRule | None = None,
    *,
    workers: int = 1,
    progress: bool = False,
) -> list[np.ndarray]:
    """:func:`cavity_fraction` of every ``.npy`` volume in ``paths``, in order.

    Args:
        paths: volume files.
        rule: rule parameters (default :class:`CavityRule()`).
        workers: processes (default 1: in this process); volumes are handed out in
            chunks, so only the fractions travel back.
        progress: show a tqdm bar.
    """
    rule = rule or CavityRule()
    jobs = [(str(p), rule) for p in paths]
    bar = dict(total=len(jobs), desc="cranial-cavity stats", unit="vol", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        chunk = max(1, min(64, len(jobs) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as ex:
            return list(tqdm(ex.map(_volume_fractions, jobs, chunksize=chunk), **bar))
    return [_volume_fractions(j) for j in tqdm(jobs, **bar)]


def stats_frame(keys: Sequence[str], fractions: Sequence[np.ndarray]) -> pd.DataFrame:
    """The ``slice_stats.csv`` table: ``key, slice_index, cavity_fraction``, volume by volume."""
    frames = [
        pd.DataFrame({"key": key, "slice_index": np.arange(len(frac)), "cavity_fraction": frac})
        for key, frac in zip(keys, fractions, strict=True)
    ]
    if not frames:
        return pd.DataFrame({"key": [], "slice_index": [], "cavity_fraction": []})
    return pd.concat(frames, ignore_index=True)


def compute_slice_stats(
    cache: IngestCache,
    rule: CavityRule | None = None,
    *,
    keys: Iterable[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Compute ``cavity_fraction`` for every slice of the cache's volumes.

    Args:
        cache: the opened cache.
        rule: rule parameters (default :class:`CavityRule()`).
        keys: restrict to these volume keys (default: all of ``volumes.csv``).
        workers: processes to use (default 1: in this process).
        progress: show a tqdm bar.

    Returns:
        DataFrame with columns ``key, slice_index, cavity_fraction``.
    """
    keys = list(cache.volumes["key"]) if keys is None else list(keys)
    paths = [cache.volume_path(k) for k in keys]
    return stats_frame(keys, volume_fractions(paths, rule, workers=workers, progress=progress))


def _stats_current(cache: IngestCache, rule: CavityRule) -> bool:
    try:
        meta = json.loads((cache.root / STATS_JSON).read_text())
    except (OSError, ValueError):
        return False
    if meta.get("rule") != rule.stats_params():
        return False
    vols = cache.volumes
    want = {k: int(n) for k, n in zip(vols["key"], vols["n_slices"], strict=True)}
    return meta.get("volumes") == want


def write_slice_stats(
    root: Path,
    keys: Sequence[str],
    fractions: Sequence[np.ndarray],
    rule: CavityRule | None = None,
) -> Path:
    """Write ``root/slice_stats.csv`` and its ``.json`` (rule, volume slice counts).

    ``keys`` in ``volumes.csv`` order, ``fractions`` their :func:`cavity_fraction`
    (as :func:`volume_fractions` gives them). Returns the CSV path.
    """
    rule = rule or CavityRule()
    csv = Path(root) / STATS_CSV
    atomic_write_csv(csv, stats_frame(keys, fractions))
    meta = {
        "rule": rule.stats_params(),
        "volumes": {k: len(f) for k, f in zip(keys, fractions, strict=True)},
    }
    atomic_write_text(Path(root) / STATS_JSON, json.dumps(meta))
    return csv


def ensure_slice_stats(
    cache: IngestCache, rule: CavityRule | None = None, *, workers: int = 1, progress: bool = True
) -> Path:
    """Write ``CACHE/slice_stats.csv`` (+ ``.json``) unless current; return the CSV path.

    Disk work for ``prepare_data``: current means same rule parameters and the
    same volumes (keys and slice counts) as ``volumes.csv``. Computed over
    ``workers`` processes (``data.ingest_workers`` in ``prepare_data``), each
    handed chunks of volumes; the table is the same for any number of workers.
    """
    rule = rule or CavityRule()
    csv = cache.root / STATS_CSV
    if csv.is_file() and _stats_current(cache, rule):
        return csv
    keys = list(cache.volumes["key"])
    paths = [cache.volume_path(k) for k in keys]
    fractions = volume_fractions(paths, rule, workers=workers, progress=progress)
    return write_slice_stats(cache.root, keys, fractions, rule)


def load_slice_stats(cache: IngestCache, rule: CavityRule | None = None) -> pd.DataFrame:
    """Return the stored slice statistics when current, else compute them in memory.

    Reading never writes (safe in ``setup`` on every DDP process).
    """
    rule = rule or CavityRule()
    csv = cache.root / STATS_CSV
    if csv.is_file() and _stats_current(cache, rule):
        return pd.read_csv(csv, dtype={"key": str})
    log.warning("%s missing or stale; computing the cranial-cavity statistics in memory", csv)
    return compute_slice_stats(cache, rule, progress=False)
