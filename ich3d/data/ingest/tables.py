"""The cache's tables and its record: slices.csv, volumes.csv, skipped.csv, ingest.json."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ich3d import __version__
from ich3d.data.cache import atomic_write_text, table_sha256
from ich3d.data.ingest.labels import LabelTable, StudyLabelTable
from ich3d.data.ingest.plan import Volume
from ich3d.data.schema import (
    LABEL_COLUMNS,
    UNLABELED,
)

__all__ = ["csv_text", "table_rows", "ingest_counts", "write_outputs", "abspath_or_none"]

log = logging.getLogger(__name__)


def _fmt(x: float) -> str:
    return repr(round(float(x), 6))


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text of a header and rows (``\\n`` line ends)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def _volume_row(v: Volume, vlabels: Sequence[int]) -> list[Any]:
    first = v.first
    syntaxes = sorted({h.transfer_syntax for h in v.slices})
    return [
        v.key,
        first.patient_id,
        first.study_uid,
        v.series_uid,
        len(v.slices),
        first.rows // 2,
        first.columns // 2,
        _fmt(first.pixel_spacing),
        _fmt(v.slice_spacing),
        int(v.gap),
        *vlabels,
        f"volumes/{v.key}.npy",
        _fmt(v.spacing_min),
        _fmt(v.spacing_max),
        int(v.uniform),
        _fmt(v.thickness) if np.isfinite(v.thickness) else "",
        first.kernel,
        syntaxes[0] if len(syntaxes) == 1 else "mixed",
        int(any(h.lossy for h in v.slices)),
        int(first.n_frames > 1),
        int(first.patient_from_study),
    ]


def table_rows(
    volumes: Sequence[Volume],
    table: LabelTable | None,
    item_of: dict[int, str],
    vol_labels: dict[str, list[int]],
) -> tuple[list[list[Any]], list[list[Any]]]:
    """The rows of slices.csv and volumes.csv of the planned, built volumes."""
    slice_rows: list[list[Any]] = []
    volume_rows: list[list[Any]] = []
    unlabeled = [UNLABELED] * len(LABEL_COLUMNS)
    for v in volumes:
        vlabels = list(unlabeled)
        for i, (h, pos) in enumerate(zip(v.slices, v.positions, strict=True)):
            slabels = list(table.labels[h.image_id]) if table is not None else list(unlabeled)
            vlabels = [max(a, b) for a, b in zip(vlabels, slabels, strict=True)]
            item = item_of[id(h)]
            slice_rows.append(
                [
                    h.image_id,
                    h.patient_id,
                    h.study_uid,
                    h.series_uid,
                    v.key,
                    i,
                    _fmt(pos),
                    *slabels,
                    item.rsplit("#", 1)[0] if h.frame else item,
                    h.frame,
                ]
            )
        volume_rows.append(_volume_row(v, vol_labels.get(v.group, vlabels)))
    return slice_rows, volume_rows


def ingest_counts(
    files_seen: int,
    volumes: Sequence[Volume],
    n_slices: int,
    n_blank: int,
    skipped: Sequence[tuple[str, str, str]],
    table: LabelTable | None,
    study_table: StudyLabelTable | None,
) -> dict[str, Any]:
    """The ``"counts"`` of ingest.json (what :class:`IngestSummary` reports)."""
    labels = table if table is not None else study_table
    reasons = Counter(reason for _, reason, _ in skipped)
    return {
        "files_seen": files_seen,
        "slices_kept": n_slices,
        "volumes": len(volumes),
        "volumes_with_gap": sum(int(v.gap) for v in volumes),
        "volumes_nonuniform": sum(int(not v.uniform) for v in volumes),
        "volumes_lossy": sum(int(any(h.lossy for h in v.slices)) for v in volumes),
        "patients_from_study": sum(int(v.first.patient_from_study) for v in volumes),
        "blank_slices": n_blank,
        "label_rows": labels.rows if labels is not None else 0,
        "label_rows_duplicate": labels.duplicate_rows if labels is not None else 0,
        "label_conflicts": labels.conflicts if labels is not None else 0,
        "label_images": len(table.image_ids) if table is not None else 0,
        "skipped": dict(sorted(reasons.items())),
    }


def write_outputs(
    out: Path,
    tables: dict[str, str],
    record: dict[str, Any],
) -> None:
    """Write the tables, then ``ingest.json`` with their sha256 (last: it marks the cache
    complete; :func:`~ich3d.data.cache.open_cache` checks the tables against it)."""
    hashes = {}
    for name, text in tables.items():
        atomic_write_text(out / name, text)
        hashes[name] = table_sha256((out / name).read_bytes())
    record = {"ich3d_version": __version__, **record, "tables": hashes, "complete": True}
    atomic_write_text(out / "ingest.json", json.dumps(record, indent=2, sort_keys=False) + "\n")


def abspath_or_none(path: Path | None) -> str | None:
    """``os.path.abspath`` of a path, None for None."""
    return os.path.abspath(path) if path is not None else None
