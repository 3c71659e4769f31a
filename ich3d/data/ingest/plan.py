"""The plan: slices grouped into volumes, per-slice rules, order, duplicates, labels."""

from __future__ import annotations

import logging
import os
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ich3d.data.dicom import SliceHeader, slice_normal, superior_normal
from ich3d.data.ingest.labels import (
    REASON_INCOMPLETE_LABEL,
    REASON_MALFORMED_LABEL,
    REASON_MALFORMED_STUDY_LABEL,
    REASON_NO_LABEL,
    REASON_NO_STUDY_LABEL,
    REASON_ORPHAN_LABEL,
    REASON_ORPHAN_STUDY_LABEL,
    LabelTable,
    StudyLabelTable,
    study_key,
)
from ich3d.data.ingest.listing import image_ids
from ich3d.data.ingest.workers import header_task, header_task_packed, pmap
from ich3d.data.schema import most_common_size, series_key

__all__ = [
    "Volume",
    "Planner",
    "plan_ingest",
    "plan_group",
    "group_of",
    "majority_normal",
    "is_soft_kernel",
    "select_series",
    "GAP_FACTOR",
    "POSITION_TOLERANCE_MM",
    "SPACING_TOLERANCE",
    "ORIENTATION_TOLERANCE",
    "SERIES_PER_STUDY",
    "REASON_SIZE_MISMATCH",
    "REASON_ORIENTATION_MISMATCH",
    "REASON_DUPLICATE_POSITION",
    "REASON_SHORT_SERIES",
    "REASON_SERIES_NOT_SELECTED",
]

log = logging.getLogger(__name__)

GAP_FACTOR = 1.5
POSITION_TOLERANCE_MM = 1e-3
SPACING_TOLERANCE = "max(0.01 mm, 1% of the median spacing)"
ORIENTATION_TOLERANCE = 0.9999
SERIES_PER_STUDY = ("all", "one")

REASON_SIZE_MISMATCH = "inconsistent slice size in series"
REASON_ORIENTATION_MISMATCH = "inconsistent orientation in series"
REASON_DUPLICATE_POSITION = "duplicate position"
REASON_SHORT_SERIES = "series shorter than min_slices"
REASON_SERIES_NOT_SELECTED = "other series of the study selected"

_SHARP_KERNEL = re.compile(
    r"BONE|LUNG|SHARP|EDGE|DETAIL|HIGH|(?<![A-Z])(?:[HJBQ]|HR|BR|QR|JR)(?:[6-9]\d)", re.IGNORECASE
)


def is_soft_kernel(kernel: str) -> bool:
    """Whether a ConvolutionKernel looks like a soft-tissue (brain) kernel.

    Sharp kernels: names containing BONE, LUNG, SHARP, EDGE, DETAIL or HIGH, or a
    Siemens-style letter (H, J, B, Q, Hr, Br, Qr, Jr) followed by 60..99 (``H70h``,
    ``Br64``). Everything else (``STANDARD``, ``SOFT``, ``H30s``, ``FC21``, "") counts as soft.
    """
    return _SHARP_KERNEL.search(kernel or "") is None


@dataclass
class Volume:
    key: str
    group: str
    series_uid: str
    slices: list[SliceHeader]
    positions: list[float]
    slice_spacing: float
    spacing_min: float
    spacing_max: float
    gap: bool
    uniform: bool
    thickness: float

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]


def select_series(volumes: Sequence[Any], target_thickness: float) -> Any:
    """The volume kept of one study by ``series_per_study="one"``.

    Order: a soft-tissue kernel (:func:`is_soft_kernel`) first, then the slice
    thickness closest to ``target_thickness`` (SliceThickness, or the slice
    spacing where it is absent), then more slices, then the smallest key.
    """

    def rank(v: Any) -> tuple[Any, ...]:
        t = v.thickness if np.isfinite(v.thickness) else v.slice_spacing
        return (
            not is_soft_kernel(v.first.kernel),
            abs(t - target_thickness),
            -len(v.slices),
            v.key,
        )

    return min(volumes, key=rank)


def majority_normal(members: list[SliceHeader]) -> tuple[np.ndarray, list[bool]]:
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


def plan_group(
    group: str,
    members: list[SliceHeader],
    min_slices: int,
    skip: Callable[[SliceHeader, str, str], None],
) -> Volume | None:
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
    _, in_majority = majority_normal(members)
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
            best = min(grp, key=lambda i: (members[i].lossy, members[i].image_id))
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
    return Volume(
        key, group, first.series_uid, slices, positions, spacing, lo, hi, gap, uniform, thickness
    )


def group_of(h: SliceHeader) -> str:
    """Volume grouping: the series, or the series and file of a multi-frame file."""
    if h.n_frames > 1 or h.frame:
        return f"{h.series_uid}#{h.image_id.rsplit('#', 1)[0]}"
    return h.series_uid


@dataclass
class Planner:
    """What pass 1 and the plan hand to pass 2 (which may plan a group again)."""

    table: LabelTable | None
    study_table: StudyLabelTable | None
    min_slices: int
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    item_of: dict[int, str] = field(default_factory=dict)
    by_group: dict[str, list[SliceHeader]] = field(default_factory=lambda: defaultdict(list))
    planned: dict[str, Volume] = field(default_factory=dict)
    plan_skips: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    vol_labels: dict[str, list[int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def plan(self, group: str) -> Volume | None:
        """Plan one group (again); its skips replace the group's earlier ones."""
        rows: list[tuple[str, str, str]] = []
        self.plan_skips[group] = rows
        item_of = self.item_of
        return plan_group(
            group,
            self.by_group[group],
            self.min_slices,
            lambda h, reason, detail: rows.append((item_of[id(h)], reason, detail)),
        )


def plan_ingest(
    images: Path,
    listing: Sequence[tuple[str, int]],
    table: LabelTable | None,
    study_table: StudyLabelTable | None,
    *,
    workers: int,
    min_slices: int,
    series_per_study: str,
    target_thickness: float,
    progress: bool,
) -> Planner:
    """Pass 1 (headers, over the worker pool) and the plan (no pixel data read).

    Args:
        images: the images folder.
        listing: its regular files (:attr:`~ich3d.data.ingest.listing.Listing.files`).
        table: the slice labels (:func:`read_labels`) or None.
        study_table: the study labels (:func:`read_study_labels`) or None.
        workers: processes for the header pass.
        min_slices: a shorter volume is skipped.
        series_per_study: ``"all"`` or ``"one"``.
        target_thickness: the slice thickness ``"one"`` prefers (mm).
        progress: show a progress bar.
    """
    planner = Planner(table, study_table, int(min_slices))
    t1 = time.perf_counter()
    ids = image_ids(listing)
    headers = _read_all_headers(images, listing, ids, planner.skipped, workers, progress)
    t2 = time.perf_counter()
    for item, h in headers:
        if table is not None:
            if h.image_id in table.incomplete:
                planner.skipped.append((item, REASON_INCOMPLETE_LABEL, ""))
                continue
            if h.image_id not in table.labels:
                planner.skipped.append((item, REASON_NO_LABEL, ""))
                continue
        planner.item_of[id(h)] = item
        planner.by_group[group_of(h)].append(h)
    for group in sorted(planner.by_group):
        vol = planner.plan(group)
        if vol is not None:
            planner.planned[group] = vol
    if study_table is not None:
        _apply_study_labels(planner, study_table)
    if series_per_study == "one":
        _select_one_series(planner, target_thickness)
    if table is not None:
        for image_id in sorted(table.image_ids - set(ids.values())):
            planner.skipped.append((image_id, REASON_ORPHAN_LABEL, ""))
        for raw_id in table.malformed:
            planner.skipped.append((raw_id, REASON_MALFORMED_LABEL, ""))
    planner.seconds = {"headers": t2 - t1, "plan": time.perf_counter() - t2}
    log.info(
        "ingest: headers %.1f s, plan %.1f s (%d files, %d workers)",
        *planner.seconds.values(),
        len(listing),
        workers,
    )
    return planner


def _read_all_headers(
    images: Path,
    listing: Sequence[tuple[str, int]],
    ids: dict[str, str],
    skipped: list[tuple[str, str, str]],
    workers: int,
    progress: bool,
) -> list[tuple[str, SliceHeader]]:
    """Pass 1: (item, header) of every slice; the files that are no slice go to ``skipped``."""
    root = os.fspath(images)
    items = [(root, rel, size) for rel, size in listing]
    headers: list[tuple[str, SliceHeader]] = []
    chunk = max(1, min(256, len(items) // (workers * 8) or 1))
    task = header_task_packed if workers > 1 and len(items) > 1 else header_task
    with tqdm(total=len(items), desc="ingest: headers", unit="file", disable=not progress) as bar:
        for (rel, _size), res in zip(listing, pmap(task, items, workers, chunk, bar), strict=True):
            if isinstance(res, list):
                for h in res:
                    if not isinstance(h, SliceHeader):
                        h = SliceHeader(*h)
                    image_id = ids[rel] if not h.frame else f"{ids[rel]}#{h.frame}"
                    if image_id != h.image_id:
                        h = replace(h, image_id=image_id)
                    headers.append((f"{rel}#{h.frame}" if h.frame else rel, h))
            else:
                _, reason, detail = res
                log.debug("skip %s: %s %s", rel, reason, detail)
                skipped.append((rel, reason, detail))
    return headers


def _apply_study_labels(planner: Planner, study_table: StudyLabelTable) -> None:
    """Volume labels from the study table; volumes without a row and unused rows skipped."""
    used: set[str] = set()
    for group in sorted(planner.planned):
        v = planner.planned[group]
        k = study_key(v.first, study_table.key_column)
        if k and k in study_table.labels:
            used.add(k)
            planner.vol_labels[group] = list(study_table.labels[k])
        else:
            for h in v.slices:
                planner.skipped.append(
                    (
                        planner.item_of[id(h)],
                        REASON_NO_STUDY_LABEL,
                        f"no {study_table.key_column} row",
                    )
                )
            del planner.planned[group]
    for k in sorted(set(study_table.labels) - used):
        planner.skipped.append((k, REASON_ORPHAN_STUDY_LABEL, study_table.key_column))
    for raw in study_table.malformed:
        planner.skipped.append((raw, REASON_MALFORMED_STUDY_LABEL, ""))


def _select_one_series(planner: Planner, target_thickness: float) -> None:
    """``series_per_study="one"``: keep :func:`select_series` of each study, skip the others."""
    by_study: dict[str, list[Volume]] = defaultdict(list)
    for v in planner.planned.values():
        by_study[v.first.study_uid or v.key].append(v)  # no StudyInstanceUID: its own study
    for study in sorted(by_study):
        vols = by_study[study]
        best = select_series(vols, target_thickness)
        for v in vols:
            if v is best:
                continue
            for h in v.slices:
                planner.skipped.append(
                    (planner.item_of[id(h)], REASON_SERIES_NOT_SELECTED, f"kept volume {best.key}")
                )
            del planner.planned[v.group]
