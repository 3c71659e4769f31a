"""Ingest RSNA-format DICOM slices into a cache of ordered, max-pooled HU volumes.

``run_ingest(images, labels, out)`` writes::

    CACHE/volumes/<key>.npy   int16 HU, shape (slices, rows // 2, columns // 2)
    CACHE/slices.csv          schema.SLICE_COLUMNS, one row per kept slice
    CACHE/volumes.csv         schema.VOLUME_COLUMNS, one row per volume
    CACHE/skipped.csv         schema.SKIPPED_COLUMNS, one row per skipped item
    CACHE/ingest.json         parameters, input fingerprint, counts, version;
                              ``"complete": true`` (written last)

Design (two passes, neither holds pixels of more than one series per worker):

1. **Headers** (parallel over files): :func:`ich3d.data.dicom.read_header`
   parses each header without reading the pixel data, validates the pixel
   data length against the file, and records its byte offset.
2. **Plan** (in the parent): labels CSV, per-file skip reasons, grouping by
   SeriesInstanceUID, ordering, duplicates, minimum length.
3. **Volumes** (parallel, one task per series): each task reads exactly the
   pixel bytes of its slices (seek + read, no second header parse), pools,
   converts to HU (:func:`ich3d.data.dicom.pooled_hu`), stacks and writes the
   ``.npy`` atomically.

Rules:

* ``image_id`` is the file name without ``.dcm`` (RSNA names files after
  their SOPInstanceUID and the labels CSV uses that name).
* **Order**: ascending projection of ImagePositionPatient on the slice normal
  (cross product of the ImageOrientationPatient row and column cosines of
  the series' first slice by image id). ``position`` in slices.csv is that
  projection (mm). All slices of a series must share the orientation (normal
  dot product > 0.9999) and Rows/Columns, else the whole series is skipped.
* **Duplicate positions**: slices whose projections lie within
  ``POSITION_TOLERANCE_MM`` of the previous one form a group; the lowest
  image id of a group is kept, the others are skipped ("duplicate position").
* **slice_spacing** = median difference of consecutive projections;
  **gap** = 1 when any difference exceeds ``GAP_FACTOR`` (1.5) x the median
  (e.g. a slice lost to a skip reason), else 0.
* **pixel_spacing** in volumes.csv is the *original* PixelSpacing of the rows
  (mm, first value) of the first slice; the pooled volume's in-plane spacing
  is twice that. height / width are the pooled sizes.
* **Blank slices** (a constant image in the cached volume, e.g. RSNA's
  zero-variance slices) are kept: a blank slice inside a volume is part of
  its geometry. They are counted (``IngestSummary.blank_slices``) and logged.
* **Labels** (``ID,Label`` with ``ID_<image>_<subtype>``): exact duplicate
  rows are dropped and counted; conflicting duplicates of one
  (image, subtype) take the maximum (logged, counted); an image needs all
  six subtypes. Volume labels are the max over its slices. Without a labels
  CSV every label column is ``schema.UNLABELED``.
* **Accounting**: every input file is either a slices.csv row (by image id)
  or a skipped.csv row whose ``item`` is its path relative to the images
  folder. Every labelled image id is in slices.csv, or its file is in
  skipped.csv (the file's reason accounts for its label rows too), or the id
  itself is in skipped.csv with "label row with no image" (or "malformed
  label row" for an ID that does not parse; item = the raw ID). A file gets
  the first reason that applies, in this order: not DICOM, unreadable file,
  not CT, missing tags, missing position or orientation, unsupported /
  unreadable pixel data, duplicate image id, no label row, incomplete label
  rows, inconsistent slice size in series, inconsistent orientation in
  series, duplicate position, series shorter than min_slices.

Idempotent and resumable: every output is written to a temp file in its
directory and renamed. A run first writes ``CACHE/.ingest-partial.json``
(parameters + input fingerprint); a run that finds it with the same
parameters and inputs reuses the volumes already written (file present,
shape as planned) and finishes the rest, so a run killed at any point and
started again ends with byte-identical outputs. Tables and ingest.json are
written only at the end. A complete cache with the same parameters and inputs
is returned at once; different parameters or inputs raise
:class:`~ich3d.errors.UserError` unless ``overwrite=True``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ich3d.data.dicom import (
    SkipSlice,
    SliceHeader,
    image_id_of,
    pooled_hu,
    read_header,
    read_pixels,
    slice_normal,
)
from ich3d.data.schema import (
    HU_MAX,
    HU_MIN,
    LABEL_COLUMNS,
    SKIPPED_COLUMNS,
    SLICE_COLUMNS,
    SUBTYPES,
    UNLABELED,
    VOLUME_COLUMNS,
    series_key,
)
from ich3d.errors import UserError

__all__ = [
    "IngestSummary",
    "run_ingest",
    "summary_dict",
    "read_labels",
    "LabelTable",
    "INGEST_FORMAT",
    "GAP_FACTOR",
    "POSITION_TOLERANCE_MM",
    "REASON_DUPLICATE_IMAGE",
    "REASON_NO_LABEL",
    "REASON_INCOMPLETE_LABEL",
    "REASON_ORPHAN_LABEL",
    "REASON_MALFORMED_LABEL",
    "REASON_SIZE_MISMATCH",
    "REASON_ORIENTATION_MISMATCH",
    "REASON_DUPLICATE_POSITION",
    "REASON_SHORT_SERIES",
]

log = logging.getLogger(__name__)

#: Version of the cache layout and of the pixel rules; part of the parameters.
INGEST_FORMAT = 1
GAP_FACTOR = 1.5
POSITION_TOLERANCE_MM = 1e-3
TWELVE_BIT_RULE = (
    "rsna-v1: if BitsStored == 12 and PixelRepresentation == 0 and RescaleIntercept > -100: "
    "pixel += 1000; pixel[pixel >= 4096] -= 4096; intercept = -1000"
)
POOLING = "max 2x2 in-plane on stored integers (min if slope < 0), odd last row/column cropped"

REASON_DUPLICATE_IMAGE = "duplicate image id"
REASON_NO_LABEL = "no label row"
REASON_INCOMPLETE_LABEL = "incomplete label rows"
REASON_ORPHAN_LABEL = "label row with no image"
REASON_MALFORMED_LABEL = "malformed label row"
REASON_SIZE_MISMATCH = "inconsistent slice size in series"
REASON_ORIENTATION_MISMATCH = "inconsistent orientation in series"
REASON_DUPLICATE_POSITION = "duplicate position"
REASON_SHORT_SERIES = "series shorter than min_slices"

_PARTIAL = ".ingest-partial.json"
_TABLES = ("slices.csv", "volumes.csv", "skipped.csv")
_KEY_FILE = re.compile(r"^[0-9a-f]{16}\.npy$")


@dataclass(frozen=True)
class IngestSummary:
    """Counts of one ingest run (``cached=True``: read back from a complete cache).

    Attributes:
        out: the cache folder.
        files_seen: files found under the images folder.
        slices_kept: rows of slices.csv.
        volumes: rows of volumes.csv.
        volumes_written: volumes built by this run.
        volumes_reused: volumes found finished on disk (resume / complete cache).
        volumes_with_gap: volumes whose gap flag is set.
        blank_slices: kept slices whose cached image is constant.
        label_rows: data rows of the labels CSV (0 when unlabeled).
        label_rows_duplicate: exact duplicate rows dropped.
        label_conflicts: (image, subtype) pairs with conflicting values (max taken).
        label_images: distinct image ids in the labels CSV.
        skipped: skipped.csv row counts by reason.
        cached: True when the cache was complete and nothing was recomputed.
    """

    out: Path
    files_seen: int
    slices_kept: int
    volumes: int
    volumes_written: int
    volumes_reused: int
    volumes_with_gap: int
    blank_slices: int
    label_rows: int
    label_rows_duplicate: int
    label_conflicts: int
    label_images: int
    skipped: dict[str, int] = field(default_factory=dict)
    cached: bool = False

    @property
    def skipped_total(self) -> int:
        """Rows of skipped.csv."""
        return sum(self.skipped.values())

    @property
    def label_orphans(self) -> int:
        """Labelled image ids with no file ("label row with no image")."""
        return self.skipped.get(REASON_ORPHAN_LABEL, 0)

    def format(self) -> str:
        """Human-readable multi-line summary (printed by ``ich3d ingest``)."""
        lines = [
            f"ingest {'(cache complete, nothing to do) ' if self.cached else ''}-> {self.out}",
            f"  files seen            {self.files_seen}",
            f"  slices kept           {self.slices_kept}",
            f"  volumes               {self.volumes} "
            f"(written {self.volumes_written}, reused {self.volumes_reused}, "
            f"with gap {self.volumes_with_gap})",
            f"  blank slices kept     {self.blank_slices}",
        ]
        if self.label_rows:
            lines.append(
                f"  label rows            {self.label_rows} "
                f"({self.label_rows_duplicate} exact duplicates dropped, "
                f"{self.label_conflicts} conflicts -> max, {self.label_images} images)"
            )
        lines.append(f"  skipped               {self.skipped_total}")
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {n:8d}  {reason}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelTable:
    """Parsed labels CSV.

    Attributes:
        labels: image id -> six 0/1 labels (images with all six subtypes).
        incomplete: image ids with some but not all six subtypes.
        malformed: raw IDs that do not parse (or whose Label is not 0/1).
        rows: data rows in the file.
        duplicate_rows: rows repeating the value already read for their ID, dropped.
        conflicts: (image, subtype) pairs with conflicting values.
    """

    labels: dict[str, tuple[int, ...]]
    incomplete: frozenset[str]
    malformed: tuple[str, ...]
    rows: int
    duplicate_rows: int
    conflicts: int

    @property
    def image_ids(self) -> set[str]:
        return set(self.labels) | set(self.incomplete)


def read_labels(path: Path) -> LabelTable:
    """Read an RSNA labels CSV (``ID,Label``; ``ID`` = ``ID_<image>_<subtype>``).

    A plain ``csv`` loop (no pandas): it has no fixed cost on small sets and
    reads RSNA's 4.5M rows in a few seconds.

    Raises:
        UserError: missing file or wrong header.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labels CSV {path} does not exist")
    index = {s: i for i, s in enumerate(SUBTYPES)}
    values: dict[str, list[int]] = {}
    conflicted: set[tuple[str, str]] = set()
    malformed: set[str] = set()
    rows = duplicates = 0
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ID", "Label"]:
            raise UserError(
                f"labels CSV {path} has columns {header}; expected 'ID,Label' "
                "(RSNA stage_2_train.csv format)"
            )
        for row in reader:
            if not row:
                continue
            rows += 1
            raw_id = row[0].strip()
            image, _, subtype = raw_id.rpartition("_")
            k = index.get(subtype)
            label = row[1].strip() if len(row) > 1 else ""
            if k is None or not image or label not in ("0", "1", "0.0", "1.0"):
                malformed.add(raw_id)
                continue
            v = int(label[0])
            slot = values.get(image)
            if slot is None:
                slot = values[image] = [-1] * len(SUBTYPES)
            old = slot[k]
            if old == -1:
                slot[k] = v
            elif old == v:
                duplicates += 1
            else:
                conflicted.add((image, subtype))
                slot[k] = max(old, v)
    # a malformed ID that shares the exact text of a good row's ID cannot happen; but an
    # exact duplicate malformed row is still one malformed item
    if conflicted:
        shown = ", ".join(f"{i}/{s}" for i, s in sorted(conflicted)[:5])
        log.warning(
            "labels: %d (image, subtype) pairs have conflicting values; taking the max (%s%s)",
            len(conflicted),
            shown,
            ", ..." if len(conflicted) > 5 else "",
        )
    if malformed:
        log.warning("labels: %d IDs do not parse as ID_<image>_<subtype> with 0/1", len(malformed))
    labels = {img: tuple(v) for img, v in values.items() if -1 not in v}
    incomplete = frozenset(img for img, v in values.items() if -1 in v)
    return LabelTable(
        labels, incomplete, tuple(sorted(malformed)), rows, duplicates, len(conflicted)
    )


# --------------------------------------------------------------------------- listing


def _list_files(images: Path, exclude: Path | None) -> list[tuple[str, int]]:
    """All regular files under ``images`` as (posix path relative to it, size), sorted."""
    out: list[tuple[str, int]] = []
    exclude_real = os.path.realpath(exclude) if exclude is not None else None
    for root, dirs, files in os.walk(images, followlinks=True):
        if exclude_real is not None:
            dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) != exclude_real]
        rel_root = os.path.relpath(root, images)
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            rel = name if rel_root == "." else Path(rel_root, name).as_posix()
            out.append((rel, st.st_size))
    out.sort()
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(listing: Sequence[tuple[str, int]], labels: Path | None) -> dict[str, Any]:
    h = hashlib.sha256()
    for rel, size in listing:
        h.update(f"{rel}\0{size}\n".encode())
    fp: dict[str, Any] = {
        "n_files": len(listing),
        "total_bytes": int(sum(s for _, s in listing)),
        "listing_sha256": h.hexdigest(),
        "labels_sha256": None,
    }
    if labels is not None:
        fp["labels_sha256"] = _sha256_file(labels)
    return fp


# --------------------------------------------------------------------------- workers


def _header_task(item: tuple[str, str, int]) -> SliceHeader | tuple[str, str, str]:
    """Pass 1: one file -> its header, or (relpath, reason, detail)."""
    root, rel, size = item
    try:
        h = read_header(os.path.join(root, rel), file_size=size)
    except SkipSlice as exc:
        return (rel, exc.reason, exc.detail)
    return h


@dataclass(frozen=True)
class _VolumeTask:
    path: str  # final .npy path
    shape: tuple[int, int, int]
    slices: tuple[SliceHeader, ...]


def _build_volume(task: _VolumeTask) -> tuple[str, list[int]]:
    """Pass 2: read, pool, convert and stack one series; write it atomically.

    Returns the path and the indices of blank (constant) slices.
    """
    vol = np.empty(task.shape, dtype=np.int16)
    for i, h in enumerate(task.slices):
        vol[i] = pooled_hu(
            read_pixels(h),
            bits_stored=h.bits_stored,
            signed=h.signed,
            slope=h.slope,
            intercept=h.intercept,
        )
    _atomic_save_npy(task.path, vol)
    return task.path, _blank_indices(vol)


def _blank_indices(vol: np.ndarray) -> list[int]:
    flat = vol.reshape(vol.shape[0], -1)
    return np.flatnonzero(flat.min(axis=1) == flat.max(axis=1)).tolist()


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _map(
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


# --------------------------------------------------------------------------- planning


@dataclass
class _Volume:
    key: str
    series_uid: str
    slices: list[SliceHeader]
    positions: list[float]
    slice_spacing: float
    gap: bool


def _fmt(x: float) -> str:
    return repr(round(float(x), 6))


def _plan_series(
    series_uid: str,
    members: list[SliceHeader],
    min_slices: int,
    skip: Any,
) -> _Volume | None:
    """Order one series, drop duplicates; None (slices skipped) when it cannot be a volume."""
    members = sorted(members, key=lambda h: h.image_id)
    first = members[0]
    if any((h.rows, h.columns) != (first.rows, first.columns) for h in members):
        for h in members:
            skip(h, REASON_SIZE_MISMATCH)
        return None
    normal = slice_normal(first.orientation)
    if any(float(np.dot(slice_normal(h.orientation), normal)) < 0.9999 for h in members):
        for h in members:
            skip(h, REASON_ORIENTATION_MISMATCH)
        return None
    proj = [float(np.dot(h.position, normal)) for h in members]
    order = sorted(range(len(members)), key=lambda i: (proj[i], members[i].image_id))
    kept: list[int] = []
    group: list[int] = []

    def close_group() -> None:
        if group:
            best = min(group, key=lambda i: members[i].image_id)
            kept.append(best)
            for i in group:
                if i != best:
                    skip(members[i], REASON_DUPLICATE_POSITION)

    for i in order:
        if group and proj[i] - proj[group[-1]] > POSITION_TOLERANCE_MM:
            close_group()
            group = []
        group.append(i)
    close_group()
    if len(kept) < min_slices:
        for i in kept:
            skip(members[i], REASON_SHORT_SERIES)
        return None
    slices = [members[i] for i in kept]
    positions = [proj[i] for i in kept]
    diffs = np.diff(positions)
    spacing = float(statistics.median(diffs.tolist())) if len(diffs) else float("nan")
    gap = bool(len(diffs) and np.any(diffs > GAP_FACTOR * spacing))
    return _Volume(series_key(series_uid), series_uid, slices, positions, spacing, gap)


def _csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------- run


def _parameters(min_slices: int, labeled: bool) -> dict[str, Any]:
    return {
        "format": INGEST_FORMAT,
        "min_slices": int(min_slices),
        "labeled": bool(labeled),
        "hu_clip": [HU_MIN, HU_MAX],
        "pooling": POOLING,
        "twelve_bit_correction": TWELVE_BIT_RULE,
        "gap_factor": GAP_FACTOR,
        "duplicate_position_tolerance_mm": POSITION_TOLERANCE_MM,
        "image_id": "file name without .dcm",
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _clear_cache(out: Path) -> None:
    """Remove what an ingest writes (and nothing else)."""
    vdir = out / "volumes"
    if vdir.is_dir():
        for entry in os.scandir(vdir):
            if _KEY_FILE.match(entry.name) or entry.name.startswith("."):
                os.remove(entry.path)
    for name in (*_TABLES, "ingest.json", _PARTIAL):
        p = out / name
        if p.exists():
            p.unlink()


def _summary_from_record(out: Path, record: dict[str, Any], reused: int) -> IngestSummary:
    c = record["counts"]
    return IngestSummary(
        out=out,
        files_seen=c["files_seen"],
        slices_kept=c["slices_kept"],
        volumes=c["volumes"],
        volumes_written=0,
        volumes_reused=reused,
        volumes_with_gap=c["volumes_with_gap"],
        blank_slices=c["blank_slices"],
        label_rows=c["label_rows"],
        label_rows_duplicate=c["label_rows_duplicate"],
        label_conflicts=c["label_conflicts"],
        label_images=c["label_images"],
        skipped=dict(c["skipped"]),
        cached=True,
    )


def _volumes_present(out: Path) -> bool:
    import pandas as pd

    try:
        paths = pd.read_csv(out / "volumes.csv", usecols=["path"])["path"]
    except Exception:  # noqa: BLE001
        return False
    return all((out / p).is_file() for p in paths)


def run_ingest(
    images: Path,
    labels: Path | None,
    out: Path,
    *,
    workers: int = 1,
    min_slices: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Ingest a folder of RSNA-format DICOM slices into a volume cache.

    See the module docstring for the outputs and rules.

    Args:
        images: folder of ``.dcm`` files (searched recursively; every file counts).
        labels: RSNA labels CSV (``ID,Label``) or None for an unlabeled set.
        out: cache folder (created).
        workers: processes for both passes; 1 runs in-process. Default 1.
        min_slices: series with fewer kept slices are skipped (>= 2). Default 4.
        overwrite: rebuild a cache made with other parameters or inputs.
        progress: show tqdm progress bars.

    Returns:
        The counts of this run.

    Raises:
        UserError: missing folder / CSV, no files, bad ``min_slices`` or
            ``workers``, or a cache made with other parameters or inputs
            (without ``overwrite``).
    """
    from tqdm.auto import tqdm

    images = Path(images)
    out = Path(out)
    labels = Path(labels) if labels is not None else None
    if not images.is_dir():
        raise UserError(f"images folder {images} does not exist")
    if labels is not None and not labels.is_file():
        raise UserError(f"labels CSV {labels} does not exist")
    if int(min_slices) < 2:
        raise UserError(
            f"min_slices must be >= 2 (a volume needs a slice spacing), got {min_slices}"
        )
    if int(workers) < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    workers = int(workers)
    if out.exists() and not out.is_dir():
        raise UserError(f"cache folder {out} exists and is not a folder")

    listing = _list_files(images, exclude=out)
    if not listing:
        raise UserError(f"images folder {images} holds no files")
    params = _parameters(min_slices, labels is not None)
    fingerprint = _fingerprint(listing, labels)

    # ---- state of the cache folder
    record = _read_json(out / "ingest.json")
    partial = _read_json(out / _PARTIAL)
    if record is not None and record.get("complete"):
        same = record.get("parameters") == params and record.get("input") == fingerprint
        if same and not overwrite and _volumes_present(out):
            summary = _summary_from_record(out, record, reused=record["counts"]["volumes"])
            (out / _PARTIAL).unlink(missing_ok=True)  # killed between ingest.json and cleanup
            log.info("ingest: %s is complete for these inputs and parameters; nothing to do", out)
            return summary
        if not same and not overwrite:
            what = "parameters" if record.get("parameters") != params else "input files"
            raise UserError(
                f"cache {out} was built with other {what} (see {out / 'ingest.json'}); "
                "pass --overwrite (overwrite=True) to rebuild it, or choose another --out"
            )
        if not same or overwrite:
            _clear_cache(out)
        else:  # same inputs, volumes lost: finish it again; not complete meanwhile
            (out / "ingest.json").unlink()
    elif partial is not None:
        same = partial.get("parameters") == params and partial.get("input") == fingerprint
        if not same and not overwrite:
            raise UserError(
                f"cache {out} holds an unfinished ingest with other parameters or input files "
                f"(see {out / _PARTIAL}); pass --overwrite (overwrite=True) to rebuild it"
            )
        if not same or overwrite:
            _clear_cache(out)
        else:
            log.info("ingest: resuming the unfinished ingest in %s", out)
    else:
        leftovers = [n for n in _TABLES if (out / n).exists()]
        if leftovers and not overwrite:
            raise UserError(
                f"{out} holds {', '.join(leftovers)} but no ingest.json: not an ich3d cache "
                "or a damaged one; pass --overwrite (overwrite=True) or choose another --out"
            )
        if overwrite:
            _clear_cache(out)

    vdir = out / "volumes"
    vdir.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(vdir):  # temp files of a killed run
        if entry.name.startswith(".") and ".tmp-" in entry.name:
            os.remove(entry.path)
    if partial is None or not (out / _PARTIAL).exists():
        _atomic_write_text(
            out / _PARTIAL,
            json.dumps({"parameters": params, "input": fingerprint}, indent=2, sort_keys=True)
            + "\n",
        )

    # ---- labels
    table = read_labels(labels) if labels is not None else None

    # ---- pass 1: headers
    root = os.fspath(images)
    items = [(root, rel, size) for rel, size in listing]
    skipped: list[tuple[str, str]] = []
    headers: list[tuple[str, SliceHeader]] = []
    file_ids: dict[str, str] = {}  # image id -> relpath of the file that accounts for it
    chunk = max(1, min(256, len(items) // (workers * 8) or 1))
    with tqdm(total=len(items), desc="ingest: headers", unit="file", disable=not progress) as bar:
        for (rel, _size), res in zip(
            listing, _map(_header_task, items, workers, chunk, bar), strict=True
        ):
            image_id = image_id_of(rel)
            if isinstance(res, SliceHeader):
                if image_id in file_ids:
                    skipped.append((rel, REASON_DUPLICATE_IMAGE))
                    continue
                file_ids[image_id] = rel
                headers.append((rel, res))
            else:
                _, reason, detail = res
                log.debug("skip %s: %s %s", rel, reason, detail)
                skipped.append((rel, reason))
                file_ids.setdefault(image_id, rel)

    # ---- plan
    rel_of: dict[int, str] = {}
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for rel, h in headers:
        if table is not None:
            if h.image_id in table.incomplete:
                skipped.append((rel, REASON_INCOMPLETE_LABEL))
                continue
            if h.image_id not in table.labels:
                skipped.append((rel, REASON_NO_LABEL))
                continue
        rel_of[id(h)] = rel
        by_series[h.series_uid].append(h)

    def skip(h: SliceHeader, reason: str) -> None:
        skipped.append((rel_of[id(h)], reason))

    volumes: list[_Volume] = []
    for uid in sorted(by_series):
        vol = _plan_series(uid, by_series[uid], min_slices, skip)
        if vol is not None:
            volumes.append(vol)
    volumes.sort(key=lambda v: v.key)
    if len({v.key for v in volumes}) != len(volumes):  # pragma: no cover - 64-bit hash
        raise RuntimeError("series key collision; report this")

    if table is not None:
        for image_id in sorted(table.image_ids - set(file_ids)):
            skipped.append((image_id, REASON_ORPHAN_LABEL))
        for raw_id in table.malformed:
            skipped.append((raw_id, REASON_MALFORMED_LABEL))

    # ---- pass 2: volumes
    tasks: list[_VolumeTask] = []
    reused = 0
    blank: dict[str, list[int]] = {}
    for v in volumes:
        first = v.slices[0]
        shape = (len(v.slices), first.rows // 2, first.columns // 2)
        path = vdir / f"{v.key}.npy"
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                if arr.shape == shape and arr.dtype == np.int16:
                    reused += 1
                    blank[str(path)] = _blank_indices(np.asarray(arr))
                    continue
            except (OSError, ValueError):
                pass
        tasks.append(_VolumeTask(str(path), shape, tuple(v.slices)))
    if reused:
        log.info("ingest: %d volumes already finished, %d to build", reused, len(tasks))
    weights = [t.shape[0] for t in tasks]
    with tqdm(
        total=sum(weights), desc="ingest: volumes", unit="slice", disable=not progress
    ) as bar:
        for path_str, idx in _map(_build_volume, tasks, workers, 1, bar, weights):
            blank[path_str] = idx

    # stale volumes of an earlier plan (same parameters, e.g. a resumed run)
    planned = {f"{v.key}.npy" for v in volumes}
    for entry in os.scandir(vdir):
        if _KEY_FILE.match(entry.name) and entry.name not in planned:
            os.remove(entry.path)

    # ---- tables
    slice_rows: list[list[Any]] = []
    volume_rows: list[list[Any]] = []
    n_blank = 0
    for v in volumes:
        rel_path = f"volumes/{v.key}.npy"
        blanks = blank[str(vdir / f"{v.key}.npy")]
        n_blank += len(blanks)
        for i in blanks:
            log.debug("blank slice kept: volume %s index %d", v.key, i)
        vlabels = [UNLABELED] * len(LABEL_COLUMNS)
        for i, (h, pos) in enumerate(zip(v.slices, v.positions, strict=True)):
            slabels = list(table.labels[h.image_id]) if table is not None else [UNLABELED] * 6
            vlabels = [max(a, b) for a, b in zip(vlabels, slabels, strict=True)]
            slice_rows.append(
                [h.image_id, h.patient_id, h.study_uid, h.series_uid, v.key, i, _fmt(pos), *slabels]
            )
        first = v.slices[0]
        volume_rows.append(
            [
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
                rel_path,
            ]
        )
    skipped.sort()
    if n_blank:
        log.info("ingest: %d blank (constant) slices kept in their volumes", n_blank)

    _atomic_write_text(out / "slices.csv", _csv_text(SLICE_COLUMNS, slice_rows))
    _atomic_write_text(out / "volumes.csv", _csv_text(VOLUME_COLUMNS, volume_rows))
    _atomic_write_text(out / "skipped.csv", _csv_text(SKIPPED_COLUMNS, skipped))

    reasons = Counter(reason for _, reason in skipped)
    counts = {
        "files_seen": len(listing),
        "slices_kept": len(slice_rows),
        "volumes": len(volume_rows),
        "volumes_with_gap": sum(int(v.gap) for v in volumes),
        "blank_slices": n_blank,
        "label_rows": table.rows if table else 0,
        "label_rows_duplicate": table.duplicate_rows if table else 0,
        "label_conflicts": table.conflicts if table else 0,
        "label_images": len(table.image_ids) if table else 0,
        "skipped": dict(sorted(reasons.items())),
    }
    from ich3d import __version__

    record = {
        "ich3d_version": __version__,
        "parameters": params,
        "input": fingerprint,
        "images": os.path.abspath(images),
        "labels": os.path.abspath(labels) if labels is not None else None,
        "counts": counts,
        "complete": True,
    }
    _atomic_write_text(out / "ingest.json", json.dumps(record, indent=2, sort_keys=False) + "\n")
    (out / _PARTIAL).unlink(missing_ok=True)

    summary = IngestSummary(
        out=out,
        files_seen=counts["files_seen"],
        slices_kept=counts["slices_kept"],
        volumes=counts["volumes"],
        volumes_written=len(tasks),
        volumes_reused=reused,
        volumes_with_gap=counts["volumes_with_gap"],
        blank_slices=n_blank,
        label_rows=counts["label_rows"],
        label_rows_duplicate=counts["label_rows_duplicate"],
        label_conflicts=counts["label_conflicts"],
        label_images=counts["label_images"],
        skipped=counts["skipped"],
    )
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


def summary_dict(summary: IngestSummary) -> dict[str, Any]:
    """JSON-friendly view of a summary."""
    d = asdict(summary)
    d["out"] = str(summary.out)
    return d
