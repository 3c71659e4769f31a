"""``run_ingest``: the two passes, the tables and the record, in order."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ich3d.data.cache import atomic_write_text
from ich3d.data.dicom import REASON_UNREADABLE_PIXELS
from ich3d.data.ingest import workers as _workers
from ich3d.data.ingest.labels import read_labels, read_study_labels
from ich3d.data.ingest.listing import fingerprint, list_files
from ich3d.data.ingest.plan import SERIES_PER_STUDY, Planner, Volume, plan_ingest
from ich3d.data.ingest.state import (
    KEY_FILE,
    PARTIAL,
    check_cache_state,
    ingest_lock,
    parameters,
    sweep_temporary,
)
from ich3d.data.ingest.summary import IngestSummary
from ich3d.data.ingest.tables import (
    abspath_or_none,
    csv_text,
    ingest_counts,
    table_rows,
    write_outputs,
)
from ich3d.data.schema import SKIPPED_COLUMNS, SLICE_COLUMNS, VOLUME_COLUMNS
from ich3d.errors import UserError

__all__ = ["run_ingest"]

log = logging.getLogger(__name__)

_PATH_KEYS = ("images", "labels", "study_labels")


def _check_arguments(
    images: Path,
    labels: Path | None,
    out: Path,
    study_labels: Path | None,
    *,
    workers: int,
    min_slices: int,
    series_per_study: str,
    target_thickness: float,
) -> None:
    """Refuse arguments ``run_ingest`` cannot use (one :class:`UserError` each)."""
    if not images.is_dir():
        raise UserError(f"images folder {images} does not exist")
    if labels is not None and not labels.is_file():
        raise UserError(f"labels CSV {labels} does not exist")
    if study_labels is not None and not study_labels.is_file():
        raise UserError(f"study labels CSV {study_labels} does not exist")
    if labels is not None and study_labels is not None:
        raise UserError("give slice labels (--labels) or study labels (--study-labels), not both")
    if series_per_study not in SERIES_PER_STUDY:
        raise UserError(
            f"series_per_study must be one of {', '.join(SERIES_PER_STUDY)}, got {series_per_study!r}"
        )
    if not float(target_thickness) > 0:
        raise UserError(f"target_thickness must be > 0 mm, got {target_thickness}")
    if int(min_slices) < 2:
        raise UserError(
            f"min_slices must be >= 2 (a volume needs a slice spacing), got {min_slices}"
        )
    if int(workers) < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    if out.exists() and not out.is_dir():
        raise UserError(f"cache folder {out} exists and is not a folder")


def run_ingest(
    images: Path,
    labels: Path | None,
    out: Path,
    *,
    workers: int = 1,
    min_slices: int = 4,
    overwrite: bool = False,
    progress: bool = True,
    study_labels: Path | None = None,
    series_per_study: str = "all",
    target_thickness: float = 5.0,
) -> IngestSummary:
    """Ingest a folder of CT DICOM files into a volume cache.

    See :mod:`ich3d.data.ingest` for the outputs and rules.

    Args:
        images: folder of DICOM files (searched recursively; every file counts).
        labels: RSNA labels CSV (``ID,Label``) or None.
        out: cache folder (created).
        workers: processes for both passes; 1 runs in-process. Default 1.
        min_slices: volumes with fewer kept slices are skipped (>= 2). Default 4.
        overwrite: rebuild a cache made with other parameters or inputs.
        progress: show tqdm progress bars.
        study_labels: study-level labels CSV (:func:`read_study_labels`), instead of
            ``labels``.
        series_per_study: ``"all"`` (default) or ``"one"`` (:func:`select_series`).
        target_thickness: slice thickness (mm) ``"one"`` prefers. Default 5.0.

    Returns:
        The counts of this run.

    Raises:
        UserError: missing folder / CSV, no files, bad ``min_slices``, ``workers`` or
            ``series_per_study``, both label kinds, or a cache made with other
            parameters, inputs or an older format (without ``overwrite``).
    """
    images, out = Path(images), Path(out)
    labels, study_labels = (Path(p) if p is not None else None for p in (labels, study_labels))
    _check_arguments(
        images,
        labels,
        out,
        study_labels,
        workers=workers,
        min_slices=min_slices,
        series_per_study=series_per_study,
        target_thickness=target_thickness,
    )
    workers = int(workers)
    table = read_labels(labels) if labels is not None else None  # a bad CSV: before any write
    study_table = read_study_labels(study_labels) if study_labels is not None else None
    listing = list_files(images, exclude=out)
    if not listing.files and not listing.skipped:
        raise UserError(f"images folder {images} holds no files")
    params = parameters(
        min_slices, labels is not None, study_labels is not None, series_per_study, target_thickness
    )
    inputs = fingerprint(listing, labels, study_labels)
    paths = [os.path.abspath(images), abspath_or_none(labels), abspath_or_none(study_labels)]
    record = {"parameters": params, "input": inputs, **dict(zip(_PATH_KEYS, paths, strict=True))}
    with ingest_lock(out):  # one writer per cache; what a killed writer left is swept
        sweep_temporary(out)
        done = check_cache_state(out, params, inputs, overwrite)
        if done is not None:
            return done
        vdir = _start(out, params, inputs)
        planner = plan_ingest(
            images,
            listing.files,
            table,
            study_table,
            workers=workers,
            min_slices=min_slices,
            series_per_study=series_per_study,
            target_thickness=target_thickness,
            progress=progress,
        )
        planner.skipped.extend(listing.skipped)
        written, reused, blank = _build_volumes(planner, vdir, workers, progress)
        counts = _finish(out, planner, len(listing), blank, record)
    return _summarize(out, counts, written, reused)


def _summarize(out: Path, counts: dict[str, Any], written: int, reused: int) -> IngestSummary:
    """The summary of a finished run, logged."""
    summary = IngestSummary.from_counts(out, counts, written=written, reused=reused)
    log.info(
        "ingest: %d files -> %d slices in %d volumes (%d written, %d reused); skipped %s",
        summary.files_seen,
        summary.slices_kept,
        summary.volumes,
        summary.volumes_written,
        summary.volumes_reused,
        dict(summary.skipped) or "nothing",
    )
    return summary


def _start(out: Path, params: dict[str, Any], inputs: dict[str, Any]) -> Path:
    """Create the volumes folder and record the start (parameters and inputs)."""
    vdir = out / "volumes"
    vdir.mkdir(parents=True, exist_ok=True)
    if not (out / PARTIAL).exists():
        text = json.dumps({"parameters": params, "input": inputs}, indent=2, sort_keys=True)
        atomic_write_text(out / PARTIAL, text + "\n")
    return vdir


def _finish(
    out: Path,
    planner: Planner,
    files_seen: int,
    blank: dict[str, list[int]],
    record: dict[str, Any],
) -> dict[str, Any]:
    """Write the tables and ingest.json of the built volumes; the recorded counts."""
    skipped = planner.skipped
    for rows in planner.plan_skips.values():
        skipped.extend(rows)
    skipped.sort()
    volumes = sorted(planner.planned.values(), key=lambda v: v.key)
    if len({v.key for v in volumes}) != len(volumes):  # pragma: no cover - 64-bit hash
        raise RuntimeError("series key collision; report this")
    keep = {f"{v.key}.npy" for v in volumes}  # stale volumes of an earlier plan
    for entry in os.scandir(out / "volumes"):
        if KEY_FILE.match(entry.name) and entry.name not in keep:
            os.remove(entry.path)
    slice_rows, volume_rows = table_rows(
        volumes, planner.table, planner.item_of, planner.vol_labels
    )
    n_blank = _log_blank_and_patients(volumes, blank)
    counts = ingest_counts(
        files_seen, volumes, len(slice_rows), n_blank, skipped, planner.table, planner.study_table
    )
    tables = {
        "slices.csv": csv_text(SLICE_COLUMNS, slice_rows),
        "volumes.csv": csv_text(VOLUME_COLUMNS, volume_rows),
        "skipped.csv": csv_text(SKIPPED_COLUMNS, skipped),
    }
    write_outputs(out, tables, {**record, "counts": counts})
    (out / PARTIAL).unlink(missing_ok=True)
    return counts


def _log_blank_and_patients(volumes: Sequence[Volume], blank: dict[str, list[int]]) -> int:
    """Log the blank slices kept and the volumes without PatientID; the blank count."""
    n_blank = 0
    for v in volumes:
        n_blank += len(blank[v.group])
        for i in blank[v.group]:
            log.debug("blank slice kept: volume %s index %d", v.key, i)
    if n_blank:
        log.info("ingest: %d blank (constant) slices kept in their volumes", n_blank)
    from_study = sum(int(v.first.patient_from_study) for v in volumes)
    if from_study:
        log.info(
            "ingest: %d volumes have no PatientID; their StudyInstanceUID stands in for the "
            "patient (patient_id 'study:<uid>')",
            from_study,
        )
    return n_blank


def _reusable(path: Path, shape: tuple[int, int, int]) -> np.ndarray | None:
    """A volume a killed run finished (right shape and type), or None."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.int16 else None


def _build_volumes(
    planner: Planner, vdir: Path, workers: int, progress: bool
) -> tuple[int, int, dict[str, list[int]]]:
    """Pass 2: build (or reuse) every planned volume; a slice that fails to decode is
    skipped and its volume planned again without it.

    Returns:
        (volumes written, volumes reused, group -> indices of its blank slices).
    """
    reused = written = 0
    blank: dict[str, list[int]] = {}
    pending = sorted(planner.planned)
    while pending:
        tasks: list[_workers.VolumeTask] = []
        task_group: list[str] = []
        for group in pending:
            v = planner.planned[group]
            shape = (len(v.slices), v.first.rows // 2, v.first.columns // 2)
            path = vdir / f"{v.key}.npy"
            arr = _reusable(path, shape)
            if arr is not None:
                reused += 1
                blank[group] = _workers.blank_indices(np.asarray(arr))
                continue
            tasks.append(_workers.VolumeTask(str(path), shape, tuple(v.slices)))
            task_group.append(group)
        if reused and not written:
            log.info("ingest: %d volumes already finished, %d to build", reused, len(tasks))
        weights = [t.shape[0] for t in tasks]
        with tqdm(
            total=sum(weights), desc="ingest: volumes", unit="slice", disable=not progress
        ) as bar:
            results = list(_workers.pmap(_workers.build_volume, tasks, workers, 1, bar, weights))
        pending = []
        for group, task, (_path, idx, failed) in zip(task_group, tasks, results, strict=True):
            if not failed:
                written += 1
                blank[group] = idx
            elif _replan_without(planner, group, task, failed):
                pending.append(group)
    return written, reused, blank


def _replan_without(
    planner: Planner, group: str, task: _workers.VolumeTask, failed: list[tuple[int, str]]
) -> bool:
    """Skip the slices of ``group`` that failed to decode and plan it again; True when it
    is still a volume."""
    bad = {id(task.slices[i]): detail for i, detail in failed}
    for h in task.slices:
        if id(h) in bad:
            planner.skipped.append((planner.item_of[id(h)], REASON_UNREADABLE_PIXELS, bad[id(h)]))
    planner.by_group[group] = [h for h in planner.by_group[group] if id(h) not in bad]
    labels_of_group = planner.vol_labels.get(group)
    del planner.planned[group]
    vol = planner.plan(group) if planner.by_group[group] else None
    if vol is None:
        return False
    planner.planned[group] = vol
    if labels_of_group is not None:
        planner.vol_labels[group] = labels_of_group
    return True
