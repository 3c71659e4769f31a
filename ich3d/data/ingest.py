"""Ingest CT DICOM (RSNA 2019 or a hospital / PACS export) into a cache of ordered HU volumes.

``run_ingest(images, labels, out)`` writes::

    CACHE/volumes/<key>.npy   int16 HU, shape (slices, rows // 2, columns // 2), foot -> head
    CACHE/slices.csv          schema.SLICE_COLUMNS, one row per kept slice
    CACHE/volumes.csv         schema.VOLUME_COLUMNS, one row per volume
    CACHE/skipped.csv         schema.SKIPPED_COLUMNS, one row per skipped item (with detail)
    CACHE/ingest.json         parameters, input fingerprint, counts, version;
                              ``"complete": true`` (written last)

Design (two passes, neither holds pixels of more than one series per worker):

1. **Headers** (parallel over files): :func:`ich3d.data.dicom.read_headers`
   parses each header without reading the pixel data (one header per frame of
   an Enhanced multi-frame file), validates native pixel data against the
   file, and records its byte offset.
2. **Plan** (in the parent): labels, per-file skip reasons, per-slice rules,
   grouping into volumes, ordering, duplicates, minimum length, study labels,
   the optional one-series-per-study selection.
3. **Volumes** (parallel, one task per volume): each task reads the pixels of
   its slices (native: seek + read, no second header parse; compressed:
   pydicom's decoder plugins), pools, converts to HU
   (:func:`ich3d.data.dicom.pooled_hu`), stacks and writes the ``.npy``
   atomically. A slice whose pixel data then fails to decode is skipped
   ("unreadable pixel data", with the decoder's message) and its volume is
   planned again without it.

Rules:

* **Files**: every regular file under the images folder, recursively, any
  name (``IM000001``, no extension); the cache folder itself is excluded.
* **image_id** is the file name without ``.dcm`` (RSNA names files after
  their SOPInstanceUID and the labels CSV uses that name). Where a file name
  occurs more than once in the input (PACS exports: ``IM000001`` in every
  series folder), each of those files' image id is its path relative to the
  images folder, without ``.dcm`` (``S1/IM000001``). A frame of a
  multi-frame file is ``<id>#<frame>``. Image ids are unique in the cache.
* **Volumes**: one per SeriesInstanceUID of single-frame files; one per
  multi-frame file (its frames).
* **Per-slice rules first**: a localizer (``ImageType`` LOCALIZER, skipped when
  its header is read), a slice whose Rows/Columns differ from the most common
  size of its series (:func:`most_common_size`) and a slice whose normal
  differs from the most common one (normal dot product <= 0.9999) are skipped
  alone, with their reason; the rest of the series becomes the volume.
* **Direction**: the volume's normal is the cross product of the row and
  column cosines of its majority orientation, with its sign chosen so that its
  superior component is positive (:func:`ich3d.data.dicom.superior_normal`).
  Slices ascend along it, so every volume runs foot -> head whatever its file
  order or its stored cosines (e.g. IOP ``1\\0\\0\\0\\-1\\0``, whose cross
  product points to the feet). ``position`` in slices.csv is that projection
  (mm). In-plane, rows and columns stay as stored (no flip).
* **Duplicate positions**: slices whose projections lie within
  ``POSITION_TOLERANCE_MM`` of the previous one form a group; the lowest
  image id of a group is kept, the others are skipped ("duplicate position").
* **Spacing**: ``slice_spacing`` = median difference of consecutive
  projections, ``slice_spacing_min`` / ``_max`` their range;
  ``uniform_spacing`` = 1 when max - min <= ``SPACING_TOLERANCE`` (1 % of the
  median, at least 0.01 mm); **gap** = 1 when any difference exceeds
  ``GAP_FACTOR`` (1.5) x the median (e.g. a slice lost to a skip reason).
* **pixel_spacing** in volumes.csv is the *original* PixelSpacing of the rows
  (mm, first value) of the first slice; the pooled volume's in-plane spacing
  is twice that. height / width are the pooled sizes. ``slice_thickness`` is
  the median SliceThickness, ``kernel`` the ConvolutionKernel of the first
  slice, ``transfer_syntax`` its TransferSyntaxUID, ``lossy`` = 1 when any
  slice was stored with lossy compression.
* **Patients**: a file without PatientID gets ``study:<StudyInstanceUID>``
  (``patient_from_study`` = 1 in volumes.csv; logged).
* **Blank slices** (a constant image in the cached volume, e.g. RSNA's
  zero-variance slices) are kept: a blank slice inside a volume is part of
  its geometry. They are counted (``IngestSummary.blank_slices``) and logged.
* **Labels** (``ID,Label`` with ``ID_<image>_<subtype>``): exact duplicate
  rows are dropped and counted; conflicting duplicates of one
  (image, subtype) take the maximum (logged, counted); an image needs all
  six subtypes. Volume labels are the max over its slices. Without a labels
  CSV every label column is ``schema.UNLABELED``.
* **Study labels** (``study_labels=CSV``, :func:`read_study_labels`): volume
  labels from a CSV keyed by StudyInstanceUID, PatientID or AccessionNumber
  with an ``any`` column and optional subtype columns (missing ones are
  ``UNLABELED``); slice labels stay ``UNLABELED``. A volume whose key has no
  row is skipped ("no study label row"); a row that labels no volume is
  skipped with "study label row with no volume" (item = the key value).
* **Series per study** (``series_per_study="one"``): of the volumes of a
  study, one is kept (:func:`select_series`: a soft-tissue kernel first, then
  the slice thickness closest to ``target_thickness``, then more slices, then
  the key); the slices of the others are skipped ("other series of the study
  selected"). Default ``"all"``: every series is a volume.
* **Accounting**: every input file is either slices.csv rows (``file``) or a
  skipped.csv row whose ``item`` is its path relative to the images folder
  (a frame of a multi-frame file: ``<path>#<frame>``). Every labelled image
  id is in slices.csv, or its file is in skipped.csv (the file's reason
  accounts for its label rows too), or the id itself is in skipped.csv with
  "label row with no image" (or "malformed label row" for an ID that does not
  parse; item = the raw ID). A file gets the first reason that applies, in
  this order: not DICOM / DICOMDIR, unreadable file, not CT, localizer,
  missing tags, missing position or orientation, multi-frame geometry,
  unsupported / unreadable pixel data / no decoder, no label row, incomplete
  label rows, inconsistent slice size, inconsistent orientation, duplicate
  position, series shorter than min_slices, no study label row, other series
  of the study selected.

Idempotent and resumable: every output is written to a temp file in its
directory and renamed. A run first writes ``CACHE/.ingest-partial.json``
(parameters + input fingerprint); a run that finds it with the same
parameters and inputs reuses the volumes already written (file present,
shape as planned) and finishes the rest, so a run killed at any point and
started again ends with byte-identical outputs. Tables and ingest.json are
written only at the end. A complete cache with the same parameters and inputs
is returned at once; different parameters or inputs (or a cache written by an
older ingest format) raise :class:`~ich3d.errors.UserError` unless
``overwrite=True``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import operator
import os
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ich3d.data.cache import atomic_write_text, open_cache
from ich3d.data.dicom import (
    REASON_UNREADABLE_PIXELS,
    SkipSlice,
    SliceHeader,
    decode_frames,
    image_id_of,
    pooled_hu,
    read_headers,
    read_pixels,
    slice_normal,
    superior_normal,
)
from ich3d.data.schema import (  # most_common_size: re-exported (the ingest's size rule)
    HU_MAX,
    HU_MIN,
    LABEL_COLUMNS,
    SKIPPED_COLUMNS,
    SLICE_COLUMNS,
    SUBTYPES,
    UNLABELED,
    VOLUME_COLUMNS,
    most_common_size,
    series_key,
)
from ich3d.errors import UserError

__all__ = [
    "IngestSummary",
    "run_ingest",
    "read_labels",
    "read_study_labels",
    "most_common_size",
    "select_series",
    "is_soft_kernel",
    "LabelTable",
    "StudyLabelTable",
    "INGEST_FORMAT",
    "GAP_FACTOR",
    "POSITION_TOLERANCE_MM",
    "SERIES_PER_STUDY",
    "STUDY_LABEL_KEYS",
    "REASON_NO_LABEL",
    "REASON_INCOMPLETE_LABEL",
    "REASON_ORPHAN_LABEL",
    "REASON_MALFORMED_LABEL",
    "REASON_SIZE_MISMATCH",
    "REASON_ORIENTATION_MISMATCH",
    "REASON_DUPLICATE_POSITION",
    "REASON_SHORT_SERIES",
    "REASON_NO_STUDY_LABEL",
    "REASON_ORPHAN_STUDY_LABEL",
    "REASON_MALFORMED_STUDY_LABEL",
    "REASON_SERIES_NOT_SELECTED",
]

log = logging.getLogger(__name__)

#: Version of the cache layout and of the rules; part of the parameters. 2: compressed
#: syntaxes, per-slice rules, foot -> head, unique ids, multi-frame, new columns.
INGEST_FORMAT = 2
GAP_FACTOR = 1.5
POSITION_TOLERANCE_MM = 1e-3
SPACING_TOLERANCE = "max(0.01 mm, 1% of the median spacing)"
ORIENTATION_TOLERANCE = 0.9999
TWELVE_BIT_RULE = (
    "rsna-v1: if BitsStored == 12 and PixelRepresentation == 0 and RescaleIntercept > -100: "
    "pixel += 1000; pixel[pixel >= 4096] -= 4096; intercept = -1000"
)
POOLING = "max 2x2 in-plane on stored integers (min if slope < 0), odd last row/column cropped"
IMAGE_ID_RULE = (
    "file name without .dcm; path relative to the images folder (without .dcm) where the name "
    "repeats; <id>#<frame> for a frame of a multi-frame file"
)
DIRECTION_RULE = "ascending along the slice normal signed so its superior (z) component is > 0"
SERIES_PER_STUDY = ("all", "one")
#: Columns a study-label CSV may be keyed by, in the order they are looked for.
STUDY_LABEL_KEYS = ("StudyInstanceUID", "PatientID", "AccessionNumber")

REASON_NO_LABEL = "no label row"
REASON_INCOMPLETE_LABEL = "incomplete label rows"
REASON_ORPHAN_LABEL = "label row with no image"
REASON_MALFORMED_LABEL = "malformed label row"
REASON_SIZE_MISMATCH = "inconsistent slice size in series"
REASON_ORIENTATION_MISMATCH = "inconsistent orientation in series"
REASON_DUPLICATE_POSITION = "duplicate position"
REASON_SHORT_SERIES = "series shorter than min_slices"
REASON_NO_STUDY_LABEL = "no study label row"
REASON_ORPHAN_STUDY_LABEL = "study label row with no volume"
REASON_MALFORMED_STUDY_LABEL = "malformed study label row"
REASON_SERIES_NOT_SELECTED = "other series of the study selected"

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
        volumes_lossy: volumes with lossy-compressed slices.
        volumes_nonuniform: volumes whose slice spacing is not uniform.
        patients_from_study: volumes whose files have no PatientID (study stands in).
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
    volumes_lossy: int = 0
    volumes_nonuniform: int = 0
    patients_from_study: int = 0

    @property
    def skipped_total(self) -> int:
        """Rows of skipped.csv."""
        return sum(self.skipped.values())

    def format(self) -> str:
        """Human-readable multi-line summary (printed by ``ich3d ingest``)."""
        lines = [
            f"ingest {'(cache complete, nothing to do) ' if self.cached else ''}-> {self.out}",
            f"  files seen            {self.files_seen}",
            f"  slices kept           {self.slices_kept}",
            f"  volumes               {self.volumes} "
            f"(written {self.volumes_written}, reused {self.volumes_reused}, "
            f"with gap {self.volumes_with_gap}, non-uniform spacing {self.volumes_nonuniform}, "
            f"lossy {self.volumes_lossy}, patient from study {self.patients_from_study})",
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


@dataclass(frozen=True)
class StudyLabelTable:
    """Parsed study-level labels CSV.

    Attributes:
        key_column: the column the rows are keyed by (one of :data:`STUDY_LABEL_KEYS`).
        labels: key value -> six labels in :data:`~ich3d.data.schema.LABEL_COLUMNS`
            order (``UNLABELED`` for a subtype column the CSV lacks).
        malformed: ``row <n>`` items of rows without a key or with a value not 0/1.
        rows: data rows in the file.
        duplicate_rows: rows repeating the labels already read for their key, dropped.
        conflicts: keys with conflicting rows (max taken per column).
    """

    key_column: str
    labels: dict[str, tuple[int, ...]]
    malformed: tuple[str, ...]
    rows: int
    duplicate_rows: int
    conflicts: int


def read_study_labels(path: Path) -> StudyLabelTable:
    """Read study-level labels: a key column, ``any`` and optional subtype columns.

    The key column is the first of ``StudyInstanceUID``, ``PatientID``,
    ``AccessionNumber`` the header holds (as external test sets such as CQ500
    give their reads). Values are 0 / 1 (``0.0`` / ``1.0`` accepted).

    Raises:
        UserError: missing file, no key column or no ``any`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study labels CSV {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        key_column = next((k for k in STUDY_LABEL_KEYS if k in header), None)
        if key_column is None or "any" not in header:
            raise UserError(
                f"study labels CSV {path} has columns {header}; expected one of "
                f"{', '.join(STUDY_LABEL_KEYS)} and 'any' (optional: {', '.join(SUBTYPES[:-1])})"
            )
        k_col = header.index(key_column)
        cols = {s: header.index(s) for s in LABEL_COLUMNS if s in header}
        labels: dict[str, tuple[int, ...]] = {}
        conflicted: set[str] = set()
        malformed: list[str] = []
        rows = duplicates = 0
        for n, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            rows += 1
            key = row[k_col].strip() if k_col < len(row) else ""
            values = []
            ok = bool(key)
            for s in LABEL_COLUMNS:
                if s not in cols:
                    values.append(UNLABELED)
                    continue
                v = row[cols[s]].strip() if cols[s] < len(row) else ""
                if v not in ("0", "1", "0.0", "1.0"):
                    ok = False
                    break
                values.append(int(v[0]))
            if not ok:
                malformed.append(f"row {n}")
                continue
            old = labels.get(key)
            if old is None:
                labels[key] = tuple(values)
            elif old == tuple(values):
                duplicates += 1
            else:
                conflicted.add(key)
                labels[key] = tuple(max(a, b) for a, b in zip(old, values, strict=True))
    if conflicted:
        log.warning("study labels: %d keys have conflicting rows; taking the max", len(conflicted))
    if malformed:
        log.warning("study labels: %d rows without a key or with a value not 0/1", len(malformed))
    return StudyLabelTable(key_column, labels, tuple(malformed), rows, duplicates, len(conflicted))


def _study_key(h: SliceHeader, key_column: str) -> str:
    if key_column == "StudyInstanceUID":
        return h.study_uid
    if key_column == "PatientID":
        return "" if h.patient_from_study else h.patient_id
    return h.accession


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


def _image_ids(listing: Sequence[tuple[str, int]]) -> dict[str, str]:
    """relpath -> unique image id (the file name without .dcm, the relpath where names repeat)."""
    names = Counter(image_id_of(rel) for rel, _ in listing)
    out = {}
    for rel, _ in listing:
        name = image_id_of(rel)
        out[rel] = name if names[name] == 1 else (rel[:-4] if rel.lower().endswith(".dcm") else rel)
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(
    listing: Sequence[tuple[str, int]], labels: Path | None, study_labels: Path | None
) -> dict[str, Any]:
    h = hashlib.sha256()
    for rel, size in listing:
        h.update(f"{rel}\0{size}\n".encode())
    return {
        "n_files": len(listing),
        "total_bytes": int(sum(s for _, s in listing)),
        "listing_sha256": h.hexdigest(),
        "labels_sha256": _sha256_file(labels) if labels is not None else None,
        "study_labels_sha256": _sha256_file(study_labels) if study_labels is not None else None,
    }


# --------------------------------------------------------------------------- workers


def _header_task(item: tuple[str, str, int]) -> list[SliceHeader] | tuple[str, str, str]:
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


def _header_task_packed(
    item: tuple[str, str, int],
) -> list[tuple[Any, ...]] | tuple[str, str, str]:
    """:func:`_header_task` in a worker: headers as field tuples (``SliceHeader(*t)``)."""
    res = _header_task(item)
    return [_pack_header(h) for h in res] if isinstance(res, list) else res


@dataclass(frozen=True)
class _VolumeTask:
    path: str  # final .npy path
    shape: tuple[int, int, int]
    slices: tuple[SliceHeader, ...]


def _build_volume(task: _VolumeTask) -> tuple[str, list[int], list[tuple[int, str]]]:
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
    _atomic_save_npy(task.path, vol)
    return task.path, _blank_indices(vol), []


def _blank_indices(vol: np.ndarray) -> list[int]:
    flat = vol.reshape(vol.shape[0], -1)
    return np.flatnonzero(flat.min(axis=1) == flat.max(axis=1)).tolist()


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
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
class _Volume:
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


def _fmt(x: float) -> str:
    return repr(round(float(x), 6))


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


def _group_of(h: SliceHeader) -> str:
    """Volume grouping: the series, or the series and file of a multi-frame file."""
    if h.n_frames > 1 or h.frame:
        return f"{h.series_uid}#{h.image_id.rsplit('#', 1)[0]}"
    return h.series_uid


def _csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


@dataclass
class _Planner:
    """What pass 1 and the plan hand to pass 2 (which may plan a group again)."""

    table: LabelTable | None
    study_table: StudyLabelTable | None
    min_slices: int
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    item_of: dict[int, str] = field(default_factory=dict)
    by_group: dict[str, list[SliceHeader]] = field(default_factory=lambda: defaultdict(list))
    planned: dict[str, _Volume] = field(default_factory=dict)
    plan_skips: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    vol_labels: dict[str, list[int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def plan(self, group: str) -> _Volume | None:
        """Plan one group (again); its skips replace the group's earlier ones."""
        rows: list[tuple[str, str, str]] = []
        self.plan_skips[group] = rows
        item_of = self.item_of
        return _plan_group(
            group,
            self.by_group[group],
            self.min_slices,
            lambda h, reason, detail: rows.append((item_of[id(h)], reason, detail)),
        )


def _plan(
    images: Path,
    listing: Sequence[tuple[str, int]],
    labels: Path | None,
    study_labels: Path | None,
    *,
    workers: int,
    min_slices: int,
    series_per_study: str,
    target_thickness: float,
    progress: bool,
) -> _Planner:
    """Labels, pass 1 (headers, over the worker pool) and the plan (no pixel data read)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    table = read_labels(labels) if labels is not None else None
    study_table = read_study_labels(study_labels) if study_labels is not None else None
    planner = _Planner(table, study_table, int(min_slices))
    skipped, item_of, by_group, planned = (
        planner.skipped,
        planner.item_of,
        planner.by_group,
        planner.planned,
    )
    t1 = time.perf_counter()
    # ---- pass 1: headers
    root = os.fspath(images)
    ids = _image_ids(listing)
    items = [(root, rel, size) for rel, size in listing]
    headers: list[tuple[str, SliceHeader]] = []  # (item, header)
    chunk = max(1, min(256, len(items) // (workers * 8) or 1))
    task = _header_task_packed if workers > 1 and len(items) > 1 else _header_task
    with tqdm(total=len(items), desc="ingest: headers", unit="file", disable=not progress) as bar:
        for (rel, _size), res in zip(
            listing, _map(task, items, workers, chunk, bar), strict=True
        ):
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
    t2 = time.perf_counter()
    # ---- plan
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

    for group in sorted(by_group):
        vol = planner.plan(group)
        if vol is not None:
            planned[group] = vol

    # study labels, then the one-series-per-study choice
    vol_labels = planner.vol_labels
    if study_table is not None:
        used: set[str] = set()
        for group in sorted(planned):
            v = planned[group]
            k = _study_key(v.first, study_table.key_column)
            if k and k in study_table.labels:
                used.add(k)
                vol_labels[group] = list(study_table.labels[k])
            else:
                for h in v.slices:
                    skipped.append(
                        (item_of[id(h)], REASON_NO_STUDY_LABEL, f"no {study_table.key_column} row")
                    )
                del planned[group]
        for k in sorted(set(study_table.labels) - used):
            skipped.append((k, REASON_ORPHAN_STUDY_LABEL, study_table.key_column))
        for raw in study_table.malformed:
            skipped.append((raw, REASON_MALFORMED_STUDY_LABEL, ""))
    if series_per_study == "one":
        by_study: dict[str, list[_Volume]] = defaultdict(list)
        for v in planned.values():
            by_study[v.first.study_uid or v.key].append(v)  # no StudyInstanceUID: its own study
        for study in sorted(by_study):
            vols = by_study[study]
            best = select_series(vols, target_thickness)
            for v in vols:
                if v is best:
                    continue
                for h in v.slices:
                    skipped.append(
                        (item_of[id(h)], REASON_SERIES_NOT_SELECTED, f"kept volume {best.key}")
                    )
                del planned[v.group]

    if table is not None:
        known = set(ids.values())
        for image_id in sorted(table.image_ids - known):
            skipped.append((image_id, REASON_ORPHAN_LABEL, ""))
        for raw_id in table.malformed:
            skipped.append((raw_id, REASON_MALFORMED_LABEL, ""))
    planner.seconds = {
        "labels": t1 - t0,
        "headers": t2 - t1,
        "plan": time.perf_counter() - t2,
    }
    log.info(
        "ingest: labels %.1f s, headers %.1f s, plan %.1f s (%d files, %d workers)",
        *planner.seconds.values(),
        len(listing),
        workers,
    )
    return planner


# --------------------------------------------------------------------------- run


def _parameters(
    min_slices: int,
    labeled: bool,
    study_labeled: bool,
    series_per_study: str,
    target_thickness: float,
) -> dict[str, Any]:
    return {
        "format": INGEST_FORMAT,
        "min_slices": int(min_slices),
        "labeled": bool(labeled),
        "study_labeled": bool(study_labeled),
        "series_per_study": series_per_study,
        "target_thickness_mm": float(target_thickness),
        "hu_clip": [HU_MIN, HU_MAX],
        "pooling": POOLING,
        "twelve_bit_correction": TWELVE_BIT_RULE,
        "gap_factor": GAP_FACTOR,
        "spacing_tolerance": SPACING_TOLERANCE,
        "duplicate_position_tolerance_mm": POSITION_TOLERANCE_MM,
        "orientation_tolerance": ORIENTATION_TOLERANCE,
        "direction": DIRECTION_RULE,
        "image_id": IMAGE_ID_RULE,
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
        volumes_lossy=c["volumes_lossy"],
        volumes_nonuniform=c["volumes_nonuniform"],
        patients_from_study=c["patients_from_study"],
    )


def _old_format(record: dict[str, Any]) -> int | None:
    fmt = (record.get("parameters") or {}).get("format")
    return fmt if fmt != INGEST_FORMAT else None


def _rebuild_advice(out: Path) -> str:
    """What to do about a cache that other inputs built, from ``ich3d ingest`` or ``ich3d train``."""
    return (
        f"rebuild it with `ich3d ingest --images DIR --labels CSV --out {out} --overwrite` "
        "(overwrite=True in Python) or ingest into another --out; from `ich3d train`, "
        "train on the cache as it is with data.images_dir=null data.labels_csv=null, or "
        "ingest your own DICOM with data.images_dir=DIR data.labels_csv=CSV "
        "data.cache_dir=NEW_FOLDER"
    )


def _check_cache_state(
    out: Path, params: dict[str, Any], fingerprint: dict[str, Any], overwrite: bool
) -> IngestSummary | None:
    """Decide what to do with what ``out`` holds; a summary when it is complete already."""
    existing = open_cache(out, require_complete=False)
    record = existing.info or None
    partial = _read_json(out / _PARTIAL)
    if record is not None and record.get("complete"):
        same = record.get("parameters") == params and record.get("input") == fingerprint
        if same and not overwrite and existing.volumes_present():
            summary = _summary_from_record(out, record, reused=record["counts"]["volumes"])
            (out / _PARTIAL).unlink(missing_ok=True)  # killed between ingest.json and cleanup
            log.info("ingest: %s is complete for these inputs and parameters; nothing to do", out)
            return summary
        if not same and not overwrite:
            old = _old_format(record)
            if old is not None:
                raise UserError(
                    f"cache {out} was written by an older ingest (format {old}; this ich3d "
                    f"writes format {INGEST_FORMAT}: foot -> head order, compressed DICOM, new "
                    f"columns); re-ingest it: {_rebuild_advice(out)}"
                )
            what = "parameters" if record.get("parameters") != params else "input files"
            raise UserError(
                f"cache {out} was built with other {what} (see {out / 'ingest.json'}): "
                f"{_rebuild_advice(out)}"
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
                f"(see {out / _PARTIAL}): {_rebuild_advice(out)}"
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
                f"or a damaged one: {_rebuild_advice(out)}"
            )
        if overwrite:
            _clear_cache(out)
    return None


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

    See the module docstring for the outputs and rules.

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
    from tqdm.auto import tqdm

    images = Path(images)
    out = Path(out)
    labels = Path(labels) if labels is not None else None
    study_labels = Path(study_labels) if study_labels is not None else None
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
    workers = int(workers)
    if out.exists() and not out.is_dir():
        raise UserError(f"cache folder {out} exists and is not a folder")

    listing = _list_files(images, exclude=out)
    if not listing:
        raise UserError(f"images folder {images} holds no files")
    params = _parameters(
        min_slices, labels is not None, study_labels is not None, series_per_study, target_thickness
    )
    fingerprint = _fingerprint(listing, labels, study_labels)
    done = _check_cache_state(out, params, fingerprint, overwrite)
    if done is not None:
        return done

    vdir = out / "volumes"
    vdir.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(vdir):  # temp files of a killed run
        if entry.name.startswith(".") and ".tmp-" in entry.name:
            os.remove(entry.path)
    if not (out / _PARTIAL).exists():
        atomic_write_text(
            out / _PARTIAL,
            json.dumps({"parameters": params, "input": fingerprint}, indent=2, sort_keys=True)
            + "\n",
        )

    planner = _plan(
        images,
        listing,
        labels,
        study_labels,
        workers=workers,
        min_slices=min_slices,
        series_per_study=series_per_study,
        target_thickness=target_thickness,
        progress=progress,
    )
    table, skipped, item_of = planner.table, planner.skipped, planner.item_of
    by_group, planned, vol_labels = planner.by_group, planner.planned, planner.vol_labels
    plan, plan_skips = planner.plan, planner.plan_skips
    study_table = planner.study_table

    # ---- pass 2: volumes (a slice that fails to decode is dropped and its volume re-planned)
    reused = written = 0
    blank: dict[str, list[int]] = {}
    pending = sorted(planned)
    while pending:
        tasks: list[_VolumeTask] = []
        task_group: list[str] = []
        for group in pending:
            v = planned[group]
            shape = (len(v.slices), v.first.rows // 2, v.first.columns // 2)
            path = vdir / f"{v.key}.npy"
            if path.is_file():
                try:
                    arr = np.load(path, mmap_mode="r", allow_pickle=False)
                    if arr.shape == shape and arr.dtype == np.int16:
                        reused += 1
                        blank[group] = _blank_indices(np.asarray(arr))
                        continue
                except (OSError, ValueError):
                    pass
            tasks.append(_VolumeTask(str(path), shape, tuple(v.slices)))
            task_group.append(group)
        if reused and not written:
            log.info("ingest: %d volumes already finished, %d to build", reused, len(tasks))
        weights = [t.shape[0] for t in tasks]
        pending = []
        with tqdm(
            total=sum(weights), desc="ingest: volumes", unit="slice", disable=not progress
        ) as bar:
            results = list(_map(_build_volume, tasks, workers, 1, bar, weights))
        for group, task, (_path, idx, failed) in zip(task_group, tasks, results, strict=True):
            if not failed:
                written += 1
                blank[group] = idx
                continue
            bad = {id(task.slices[i]): detail for i, detail in failed}
            for h in task.slices:
                if id(h) in bad:
                    skipped.append((item_of[id(h)], REASON_UNREADABLE_PIXELS, bad[id(h)]))
            by_group[group] = [h for h in by_group[group] if id(h) not in bad]
            labels_of_group = vol_labels.get(group)
            del planned[group]
            vol = plan(group) if by_group[group] else None
            if vol is not None:
                planned[group] = vol
                if labels_of_group is not None:
                    vol_labels[group] = labels_of_group
                pending.append(group)
    for rows in plan_skips.values():
        skipped.extend(rows)
    volumes = sorted(planned.values(), key=lambda v: v.key)
    if len({v.key for v in volumes}) != len(volumes):  # pragma: no cover - 64-bit hash
        raise RuntimeError("series key collision; report this")

    # stale volumes of an earlier plan (same parameters, e.g. a resumed run)
    keep = {f"{v.key}.npy" for v in volumes}
    for entry in os.scandir(vdir):
        if _KEY_FILE.match(entry.name) and entry.name not in keep:
            os.remove(entry.path)

    # ---- tables
    slice_rows: list[list[Any]] = []
    volume_rows: list[list[Any]] = []
    n_blank = 0
    for v in volumes:
        rel_path = f"volumes/{v.key}.npy"
        blanks = blank[v.group]
        n_blank += len(blanks)
        for i in blanks:
            log.debug("blank slice kept: volume %s index %d", v.key, i)
        vlabels = [UNLABELED] * len(LABEL_COLUMNS)
        for i, (h, pos) in enumerate(zip(v.slices, v.positions, strict=True)):
            slabels = list(table.labels[h.image_id]) if table is not None else [UNLABELED] * 6
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
        if v.group in vol_labels:
            vlabels = vol_labels[v.group]
        first = v.first
        syntaxes = sorted({h.transfer_syntax for h in v.slices})
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
        )
    skipped.sort()
    if n_blank:
        log.info("ingest: %d blank (constant) slices kept in their volumes", n_blank)
    from_study = sum(int(v.first.patient_from_study) for v in volumes)
    if from_study:
        log.info(
            "ingest: %d volumes have no PatientID; their StudyInstanceUID stands in for the "
            "patient (patient_id 'study:<uid>')",
            from_study,
        )

    atomic_write_text(out / "slices.csv", _csv_text(SLICE_COLUMNS, slice_rows))
    atomic_write_text(out / "volumes.csv", _csv_text(VOLUME_COLUMNS, volume_rows))
    atomic_write_text(out / "skipped.csv", _csv_text(SKIPPED_COLUMNS, skipped))

    reasons = Counter(reason for _, reason, _ in skipped)
    counts = {
        "files_seen": len(listing),
        "slices_kept": len(slice_rows),
        "volumes": len(volume_rows),
        "volumes_with_gap": sum(int(v.gap) for v in volumes),
        "volumes_nonuniform": sum(int(not v.uniform) for v in volumes),
        "volumes_lossy": sum(int(any(h.lossy for h in v.slices)) for v in volumes),
        "patients_from_study": from_study,
        "blank_slices": n_blank,
        "label_rows": table.rows if table else (study_table.rows if study_table else 0),
        "label_rows_duplicate": table.duplicate_rows
        if table
        else (study_table.duplicate_rows if study_table else 0),
        "label_conflicts": table.conflicts
        if table
        else (study_table.conflicts if study_table else 0),
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
        "study_labels": os.path.abspath(study_labels) if study_labels is not None else None,
        "counts": counts,
        "complete": True,
    }
    atomic_write_text(out / "ingest.json", json.dumps(record, indent=2, sort_keys=False) + "\n")
    (out / _PARTIAL).unlink(missing_ok=True)

    summary = IngestSummary(
        out=out,
        files_seen=counts["files_seen"],
        slices_kept=counts["slices_kept"],
        volumes=counts["volumes"],
        volumes_written=written,
        volumes_reused=reused,
        volumes_with_gap=counts["volumes_with_gap"],
        blank_slices=n_blank,
        label_rows=counts["label_rows"],
        label_rows_duplicate=counts["label_rows_duplicate"],
        label_conflicts=counts["label_conflicts"],
        label_images=counts["label_images"],
        skipped=counts["skipped"],
        volumes_lossy=counts["volumes_lossy"],
        volumes_nonuniform=counts["volumes_nonuniform"],
        patients_from_study=from_study,
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
