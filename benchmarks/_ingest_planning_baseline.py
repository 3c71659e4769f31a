"""The ingest's planning as it was before the fast header read (baseline of bench_ingest).

A frozen copy of the pre-change code (commit 8ea9c4b): pass 1 reads every header
with ``pydicom.dcmread(defer_size=256, specific_tags=...)``, the parent collects
them and plans every series with the per-slice loop below. Only
``benchmarks.bench_ingest --planning-files`` uses it, to time the old path
against the new one on the same files in the same run and to check that both
plan the same volumes and skips. Not part of ich3d.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ich3d.data import dicom
from ich3d.data.dicom import SkipSlice, SliceHeader
from ich3d.data.dicom import headers as dicom_headers
from ich3d.data.ingest import (
    GAP_FACTOR,
    ORIENTATION_TOLERANCE,
    POSITION_TOLERANCE_MM,
    REASON_DUPLICATE_POSITION,
    REASON_INCOMPLETE_LABEL,
    REASON_MALFORMED_LABEL,
    REASON_NO_LABEL,
    REASON_ORIENTATION_MISMATCH,
    REASON_ORPHAN_LABEL,
    REASON_SHORT_SERIES,
    REASON_SIZE_MISMATCH,
    read_labels,
)
from ich3d.data.ingest.listing import image_ids as _image_ids
from ich3d.data.ingest.plan import Volume as _Volume
from ich3d.data.ingest.plan import group_of as _group_of
from ich3d.data.ingest.workers import pmap as _map
from ich3d.data.schema import most_common_size, series_key

__all__ = ["baseline_plan"]

log = logging.getLogger(__name__)


def _read_headers(path: str, file_size: int | None) -> list[SliceHeader]:
    ds, syntax = dicom_headers.pydicom_dataset(path)
    try:
        return dicom_headers.headers_of(ds, path, syntax, file_size)
    except SkipSlice:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed tag value
        raise SkipSlice(dicom.REASON_UNREADABLE_FILE, f"{type(exc).__name__}: {exc}") from None


def slice_normal(orientation: tuple[float, ...] | list[float]) -> np.ndarray:
    n = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float))
    return n / np.linalg.norm(n)


def superior_normal(orientation: tuple[float, ...] | list[float]) -> np.ndarray:
    n = slice_normal(orientation)
    if abs(n[2]) > 1e-6:
        return n if n[2] > 0 else -n
    k = int(np.argmax(np.abs(n)))
    return n if n[k] > 0 else -n


def _header_task(item: tuple[str, str, int]) -> list[SliceHeader] | tuple[str, str, str]:
    root, rel, size = item
    try:
        return _read_headers(os.path.join(root, rel), file_size=size)
    except SkipSlice as exc:
        return (rel, exc.reason, exc.detail)


def _majority_normal(members: list[SliceHeader]) -> tuple[np.ndarray, list[bool]]:
    """Most common normal (clusters of dot > tolerance; a tie: the first in id order)."""
    reps: list[np.ndarray] = []
    counts: list[int] = []
    cluster: list[int] = []
    cache: dict[tuple[float, ...], int] = {}
    for h in members:
        c = cache.get(h.orientation)
        if c is None:
            n = slice_normal(h.orientation)
            c = next(
                (k for k, r in enumerate(reps) if float(np.dot(n, r)) > ORIENTATION_TOLERANCE),
                -1,
            )
            if c < 0:
                reps.append(n)
                counts.append(0)
                c = len(reps) - 1
            cache[h.orientation] = c
        counts[c] += 1
        cluster.append(c)
    best = min(range(len(reps)), key=lambda k: (-counts[k], k))
    return reps[best], [c == best for c in cluster]


def _plan_group(
    group: str,
    members: list[SliceHeader],
    min_slices: int,
    skip: Callable[[SliceHeader, str, str], None],
) -> _Volume | None:
    """Order one group (series or multi-frame file): per-slice rules, duplicates, length.

    None (its slices skipped) when it cannot be a volume.
    """
    members = sorted(members, key=lambda h: h.image_id)
    size = most_common_size((h.rows, h.columns) for h in members)
    same_size = []
    for h in members:
        if (h.rows, h.columns) == size:
            same_size.append(h)
        else:
            skip(
                h,
                REASON_SIZE_MISMATCH,
                f"{h.rows}x{h.columns}, series majority {size[0]}x{size[1]}",
            )
    members = same_size
    _, in_majority = _majority_normal(members)
    kept_orientation = []
    for h, ok in zip(members, in_majority, strict=True):
        if ok:
            kept_orientation.append(h)
        else:
            skip(h, REASON_ORIENTATION_MISMATCH, "normal differs from the series' majority")
    members = kept_orientation
    first = members[0]
    normal = superior_normal(first.orientation)
    proj = [float(np.dot(h.position, normal)) for h in members]
    order = sorted(range(len(members)), key=lambda i: (proj[i], members[i].image_id))
    kept: list[int] = []
    grp: list[int] = []

    def close_group() -> None:
        if grp:
            best = min(grp, key=lambda i: members[i].image_id)
            kept.append(best)
            for i in grp:
                if i != best:
                    skip(
                        members[i],
                        REASON_DUPLICATE_POSITION,
                        f"same position as {members[best].image_id}",
                    )

    for i in order:
        if grp and proj[i] - proj[grp[-1]] > POSITION_TOLERANCE_MM:
            close_group()
            grp = []
        grp.append(i)
    close_group()
    if len(kept) < min_slices:
        for i in kept:
            skip(members[i], REASON_SHORT_SERIES, f"{len(kept)} slices < {min_slices}")
        return None
    slices = [members[i] for i in kept]
    positions = [proj[i] for i in kept]
    diffs = np.diff(positions)
    spacing = float(statistics.median(diffs.tolist()))
    lo, hi = float(diffs.min()), float(diffs.max())
    gap = bool(np.any(diffs > GAP_FACTOR * spacing))
    uniform = hi - lo <= max(0.01, 0.01 * spacing)
    thick = [h.thickness for h in slices if np.isfinite(h.thickness)]
    thickness = float(statistics.median(thick)) if thick else float("nan")
    first = slices[0]
    key = series_key(group)
    return _Volume(
        key, group, first.series_uid, slices, positions, spacing, lo, hi, gap, uniform, thickness
    )


def baseline_plan(
    images: Path,
    listing: Sequence[tuple[str, int]],
    labels: Path | None,
    *,
    workers: int,
    min_slices: int = 4,
) -> tuple[dict[str, _Volume], list[tuple[str, str, str]]]:
    """Pass 1 and the plan of the pre-change ``run_ingest`` (slice labels, all series).

    Returns:
        (group -> planned volume, skipped rows sorted).
    """

    class _Bar:  # the tqdm bar, disabled
        def update(self, n: int) -> None:
            pass

    bar = _Bar()
    table = read_labels(labels) if labels is not None else None
    # ---- pass 1: headers
    root = os.fspath(images)
    ids = _image_ids(listing)
    items = [(root, rel, size) for rel, size in listing]
    skipped: list[tuple[str, str, str]] = []
    headers: list[tuple[str, SliceHeader]] = []  # (item, header)
    chunk = max(1, min(256, len(items) // (workers * 8) or 1))
    for (rel, _size), res in zip(
        listing, _map(_header_task, items, workers, chunk, bar), strict=True
    ):
        if isinstance(res, list):
            for h in res:
                image_id = ids[rel] if not h.frame else f"{ids[rel]}#{h.frame}"
                if image_id != h.image_id:
                    h = replace(h, image_id=image_id)
                headers.append((f"{rel}#{h.frame}" if h.frame else rel, h))
        else:
            _, reason, detail = res
            log.debug("skip %s: %s %s", rel, reason, detail)
            skipped.append((rel, reason, detail))
    # ---- plan
    item_of: dict[int, str] = {}
    by_group: dict[str, list[SliceHeader]] = defaultdict(list)
    for item, h in headers:
        if table is not None:
            if h.image_id in table.incomplete:
                skipped.append((item, REASON_INCOMPLETE_LABEL, ""))
                continue
            if h.image_id not in table.labels:
                skipped.append((item, REASON_NO_LABEL, ""))
                continue
        item_of[id(h)] = item
        by_group[_group_of(h)].append(h)

    plan_skips: dict[str, list[tuple[str, str, str]]] = {}

    def plan(group: str) -> _Volume | None:
        rows: list[tuple[str, str, str]] = []
        plan_skips[group] = rows
        return _plan_group(
            group,
            by_group[group],
            min_slices,
            lambda h, reason, detail: rows.append((item_of[id(h)], reason, detail)),
        )

    planned: dict[str, _Volume] = {}
    for group in sorted(by_group):
        vol = plan(group)
        if vol is not None:
            planned[group] = vol

    if table is not None:
        known = set(ids.values())
        for image_id in sorted(table.image_ids - known):
            skipped.append((image_id, REASON_ORPHAN_LABEL, ""))
        for raw_id in table.malformed:
            skipped.append((raw_id, REASON_MALFORMED_LABEL, ""))
    for rows in plan_skips.values():
        skipped.extend(rows)
    skipped.sort()
    return planned, skipped
