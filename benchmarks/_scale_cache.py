"""A synthetic ingest cache at a fraction of RSNA 2019 stage-2 cardinality, written in the cache format.

``write_scale_cache(out, fraction)`` writes what ``ich3d ingest`` writes
(:mod:`ich3d.data.ingest`) through the ingest's own writers: ``volumes/<key>.npy``
with :func:`~ich3d.data.ingest.workers.atomic_save_npy`, the tables with
:func:`~ich3d.data.ingest.tables.csv_text` and the schema's column lists, and
``ingest.json`` (with the tables' sha256, ``"complete": true``) with
:func:`~ich3d.data.ingest.tables.write_outputs`; keys are
:func:`~ich3d.data.schema.series_key` of the series UID. So every reader opens it
through :func:`~ich3d.data.cache.open_cache` exactly like an ingested cache.

Cardinality at ``fraction`` 1 (RSNA 2019 stage 2 training set): 21,744 series
(one per study) of 24-60 slices summing to 752,803 slices, over 18,938
patients (most with one series, the rest with 2-4). Labels at RSNA's per-image
prevalences (``RSNA_IMAGE_COUNTS``: ``any`` 14.3 %; about 41 % of the series
positive): a positive series has one contiguous run of positive slices (15-55 %
of its slices) carrying that series' subtypes. The test set (``labeled=False``)
has RSNA's stage-2 test cardinality: 121,232 images in 3,518 series, unlabeled.

Pixels: ``size`` x ``size`` int16 HU (default 32, the smallest side the Patel
CNN takes): air, a bone ring, brain inside, and on positive slices a small
bright blob; every slice of a series is the same but for the blob.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ich3d.data.ingest.state import parameters
from ich3d.data.ingest.tables import csv_text, write_outputs
from ich3d.data.ingest.workers import atomic_save_npy
from ich3d.data.schema import (
    LABEL_COLUMNS,
    SKIPPED_COLUMNS,
    SLICE_COLUMNS,
    SUBTYPES,
    UNLABELED,
    VOLUME_COLUMNS,
    series_key,
)

__all__ = ["RSNA_TRAIN", "RSNA_TEST", "RSNA_IMAGE_COUNTS", "scaled_counts", "write_scale_cache"]

#: RSNA 2019 stage 2 training set: (series, images, patients).
RSNA_TRAIN: tuple[int, int, int] = (21_744, 752_803, 18_938)
#: RSNA 2019 stage 2 test set: (series, images, patients).
RSNA_TEST: tuple[int, int, int] = (3_518, 121_232, 3_518)
#: Positive images per subtype in RSNA's stage_2_train.csv (of 752,803 images).
RSNA_IMAGE_COUNTS: dict[str, int] = {
    "epidural": 3_145,
    "intraparenchymal": 36_118,
    "intraventricular": 26_205,
    "subarachnoid": 35_675,
    "subdural": 47_166,
    "any": 107_933,
}
_MIN_SLICES, _MAX_SLICES = 24, 60
#: fraction of the series that are positive; with runs of 35 % of their slices on
#: average this gives RSNA's 14.3 % positive images
_POSITIVE_SERIES = 0.41


def scaled_counts(fraction: float, full: tuple[int, int, int] = RSNA_TRAIN) -> tuple[int, int, int]:
    """(series, slices, patients) at ``fraction`` of ``full`` (slices within the 24-60 bounds)."""
    series = max(2, round(full[0] * fraction))
    slices = min(max(round(full[1] * fraction), series * _MIN_SLICES), series * _MAX_SLICES)
    patients = max(1, min(series, round(full[2] * fraction)))
    return series, slices, patients


def _lengths(rng: np.random.Generator, series: int, total: int) -> np.ndarray:
    """Slices per series in [24, 60] summing to ``total``."""
    mean = total / series
    p = (mean - _MIN_SLICES) / (_MAX_SLICES - _MIN_SLICES)
    n = _MIN_SLICES + rng.binomial(_MAX_SLICES - _MIN_SLICES, p, size=series)
    while (diff := total - int(n.sum())) != 0:
        room = np.flatnonzero(n < _MAX_SLICES) if diff > 0 else np.flatnonzero(n > _MIN_SLICES)
        pick = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
        n[pick] += 1 if diff > 0 else -1
    return n


def _ids(count: int, offset: int, digits: int) -> np.ndarray:
    """``count`` distinct RSNA-style ids ``ID_<hex>`` (an odd multiplier mod 16**digits is a bijection)."""
    values = (np.arange(count, dtype=np.uint64) * np.uint64(0x9E3779B1) + np.uint64(offset)) % np.uint64(
        16**digits
    )
    return np.array([f"ID_{int(v):0{digits}x}" for v in values])


def _template(size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx) / (size / 2)
    img = np.full((size, size), -1024, dtype=np.int16)
    img[r < 0.95] = 1000  # skull
    img[r < 0.8] = 35  # brain
    return img


def _labels(rng: np.random.Generator, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice labels ``(slices, 6)`` and the positive run ``(series, 2)`` (start, stop; 0, 0 if none)."""
    series = len(lengths)
    positive = rng.random(series) < _POSITIVE_SERIES
    frac = rng.uniform(0.15, 0.55, size=series)
    run_len = np.where(positive, np.maximum(1, np.round(lengths * frac)).astype(np.int64), 0)
    start = (rng.random(series) * (lengths - run_len + 1)).astype(np.int64)
    runs = np.stack([start, start + run_len], axis=1)
    given = np.array([RSNA_IMAGE_COUNTS[s] / RSNA_IMAGE_COUNTS["any"] for s in SUBTYPES[:-1]])
    subtypes = rng.random((series, len(given))) < given
    none = positive & ~subtypes.any(axis=1)
    subtypes[np.flatnonzero(none), rng.choice(len(given), size=int(none.sum()), p=given / given.sum())] = True
    subtypes &= positive[:, None]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    index = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths)
    series_of = np.repeat(np.arange(series), lengths)
    inside = (index >= runs[series_of, 0]) & (index < runs[series_of, 1])
    labels = np.zeros((len(index), len(SUBTYPES)), dtype=np.int64)
    labels[:, :-1] = subtypes[series_of] & inside[:, None]
    labels[:, -1] = inside
    return labels, runs


def write_scale_cache(
    out: str | Path, fraction: float, *, labeled: bool = True, size: int = 32, seed: int = 0
) -> dict[str, Any]:
    """Write a synthetic cache at ``fraction`` of RSNA's training (``labeled``) or test set.

    Returns its counts: series, slices, patients and the per-subtype positive images.
    """
    out = Path(out)
    (out / "volumes").mkdir(parents=True, exist_ok=False)
    rng = np.random.default_rng(seed)
    series, total, patients = scaled_counts(fraction, RSNA_TRAIN if labeled else RSNA_TEST)
    lengths = _lengths(rng, series, total)
    base = 1 + 7919 * seed + (0 if labeled else 10**9)
    series_uid, study_uid = _ids(series, base, 10), _ids(series, base + 17, 10)
    patient_ids = _ids(patients, base + 31, 9)
    patient_of = np.concatenate([np.arange(patients), rng.integers(0, patients, size=series - patients)])
    patient_of = patient_of[rng.permutation(series)]
    image_ids = _ids(total, base + 43, 9)
    labels, runs = _labels(rng, lengths) if labeled else (None, np.zeros((series, 2), dtype=np.int64))
    template = _template(size)
    keys = [series_key(s) for s in series_uid]
    slice_rows: list[list[Any]] = []
    volume_rows: list[list[Any]] = []
    unlabeled = [UNLABELED] * len(LABEL_COLUMNS)
    first = 0
    for i in range(series):
        n = int(lengths[i])
        vol = np.broadcast_to(template, (n, size, size)).copy()
        a, b = runs[i]
        if b > a:
            y, x = (int(v) for v in rng.integers(size // 4, size - size // 4 - 4, size=2))
            vol[a:b, y : y + 4, x : x + 4] = 75
        atomic_save_npy(str(out / "volumes" / f"{keys[i]}.npy"), vol)
        pid, study, uid = patient_ids[patient_of[i]], study_uid[i], series_uid[i]
        rows = labels[first : first + n].tolist() if labels is not None else [unlabeled] * n
        for j in range(n):
            image = image_ids[first + j]
            slice_rows.append([image, pid, study, uid, keys[i], j, repr(5.0 * j), *rows[j], f"{image}.dcm", 0])
        vlabels = np.max(rows, axis=0).tolist() if labels is not None else unlabeled
        volume_rows.append([
            keys[i], pid, study, uid, n, size, size, "0.488281", "5.0", 0, *vlabels, f"volumes/{keys[i]}.npy",
            "5.0", "5.0", 1, "5.0", "STANDARD", "1.2.840.10008.1.2", 0, 0, 0,
        ])
        first += n
    tables = {
        "slices.csv": csv_text(SLICE_COLUMNS, slice_rows),
        "volumes.csv": csv_text(VOLUME_COLUMNS, volume_rows),
        "skipped.csv": csv_text(SKIPPED_COLUMNS, []),
    }
    positives = {s: int(labels[:, k].sum()) for k, s in enumerate(SUBTYPES)} if labels is not None else {}
    counts = {"files_seen": total, "slices_kept": total, "volumes": series, "skipped": {}}
    record = {
        "parameters": parameters(4, labeled, False, "all", 5.0),
        "input": {"synthetic": "benchmarks._scale_cache", "fraction": fraction, "seed": seed, "size": size},
        "images": None,
        "labels": None,
        "study_labels": None,
        "counts": counts,
    }
    write_outputs(out, tables, record)
    return {"series": series, "slices": total, "patients": patients, "positive_images": positives,
            "positive_series": int((runs[:, 1] > runs[:, 0]).sum())}
