"""Resume state: the parameters an ingest records, what a cache folder holds, what to redo."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ich3d.data.cache import open_cache
from ich3d.data.ingest.plan import (
    GAP_FACTOR,
    ORIENTATION_TOLERANCE,
    POSITION_TOLERANCE_MM,
    SPACING_TOLERANCE,
)
from ich3d.data.ingest.summary import IngestSummary
from ich3d.data.schema import HU_MAX, HU_MIN
from ich3d.errors import UserError

__all__ = [
    "INGEST_FORMAT",
    "PARTIAL",
    "TABLES",
    "KEY_FILE",
    "parameters",
    "read_json",
    "clear_cache",
    "old_format",
    "check_cache_state",
    "ingest_lock",
    "sweep_temporary",
    "LOCK",
]

log = logging.getLogger(__name__)

#: Version of the cache layout and of the rules; part of the parameters. 2: compressed
#: syntaxes, per-slice rules, foot -> head, unique ids, multi-frame, new columns. 3: regular
#: files only (links followed once), modification times in the input fingerprint, rescale
#: and geometry checked, lossless first among duplicates, the tables' hashes recorded.
INGEST_FORMAT = 3
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

PARTIAL = ".ingest-partial.json"
#: The lock file an ingest holds (``fcntl.flock``) while it writes the cache; kept.
LOCK = ".ingest.lock"
TABLES = ("slices.csv", "volumes.csv", "skipped.csv")
KEY_FILE = re.compile(r"^[0-9a-f]{16}\.npy$")


def parameters(
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


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def clear_cache(out: Path) -> None:
    """Remove what an ingest writes (and nothing else)."""
    vdir = out / "volumes"
    if vdir.is_dir():
        for entry in os.scandir(vdir):
            if KEY_FILE.match(entry.name) or entry.name.startswith("."):
                os.remove(entry.path)
    for name in (*TABLES, "ingest.json", PARTIAL):
        p = out / name
        if p.exists():
            p.unlink()


def old_format(record: dict[str, Any]) -> int | None:
    fmt = (record.get("parameters") or {}).get("format")
    return fmt if fmt != INGEST_FORMAT else None


def rebuild_advice(out: Path) -> str:
    """What to do about a cache that other inputs built, from ``ich3d ingest`` or ``ich3d train``."""
    return (
        f"rebuild it with `ich3d ingest --images DIR --labels CSV --out {out} --overwrite` "
        "or ingest into another --out; from `ich3d train`, train on the cache as it is with "
        "data.images_dir=null data.labels_csv=null, or ingest your own DICOM with "
        "data.images_dir=DIR data.labels_csv=CSV data.cache_dir=NEW_FOLDER"
    )


def check_cache_state(
    out: Path, params: dict[str, Any], fingerprint: dict[str, Any], overwrite: bool
) -> IngestSummary | None:
    """Decide what to do with what ``out`` holds; a summary when it is complete already."""
    existing = open_cache(out, require_complete=False)
    record = existing.info or None
    partial = read_json(out / PARTIAL)
    if record is not None and record.get("complete"):
        same = record.get("parameters") == params and record.get("input") == fingerprint
        if same and not overwrite and existing.volumes_present():
            summary = IngestSummary.from_counts(
                out, record["counts"], written=0, reused=record["counts"]["volumes"], cached=True
            )
            (out / PARTIAL).unlink(missing_ok=True)  # killed between ingest.json and cleanup
            log.info("ingest: %s is complete for these inputs and parameters; nothing to do", out)
            return summary
        if not same and not overwrite:
            old = old_format(record)
            if old is not None:
                raise UserError(
                    f"cache {out} was written by an older ingest (format {old}; this ich3d "
                    f"writes format {INGEST_FORMAT}: other rules, see its ingest.json); re-ingest "
                    f"it: {rebuild_advice(out)}"
                )
            what = "parameters" if record.get("parameters") != params else "input files"
            raise UserError(
                f"cache {out} was built with other {what} (see {out / 'ingest.json'}): "
                f"{rebuild_advice(out)}"
            )
        if not same or overwrite:
            clear_cache(out)
        else:  # same inputs, volumes lost: finish it again; not complete meanwhile
            (out / "ingest.json").unlink()
    elif partial is not None:
        same = partial.get("parameters") == params and partial.get("input") == fingerprint
        if not same and not overwrite:
            raise UserError(
                f"cache {out} holds an unfinished ingest with other parameters or input files "
                f"(see {out / PARTIAL}): {rebuild_advice(out)}"
            )
        if not same or overwrite:
            clear_cache(out)
        else:
            log.info("ingest: resuming the unfinished ingest in %s", out)
    else:
        leftovers = [n for n in TABLES if (out / n).exists()]
        if leftovers and not overwrite:
            raise UserError(
                f"{out} holds {', '.join(leftovers)} but no ingest.json: not an ich3d cache "
                f"or a damaged one: {rebuild_advice(out)}"
            )
        if overwrite:
            clear_cache(out)
    return None


@contextmanager
def ingest_lock(out: Path) -> Iterator[None]:
    """Hold the cache's write lock (``fcntl.flock`` on ``out/.ingest.lock``) while writing.

    The lock file records who holds it (process id and host); the lock is released
    when the holder ends, however it ends. The file itself stays.

    Raises:
        UserError: another process holds the lock (it is named).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cache folder {out} cannot be written ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown"
            raise UserError(
                f"another ingest ({holder}) is writing {out}; wait for it to finish "
                "(its outputs are then complete), or give this one another cache folder "
                "(`ich3d ingest --out`, or data.cache_dir for `ich3d train`)"
            ) from None
        holder = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        if os.pread(fd, 256, 0) != holder:  # (a re-run in one process leaves it untouched)
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder, 0)
        yield
    finally:
        os.close(fd)


def sweep_temporary(out: Path) -> None:
    """Remove the temporary files a killed ingest left (tables, records, volumes)."""
    names = {*TABLES, "ingest.json", PARTIAL}
    for entry in os.scandir(out):
        base = entry.name[1:].rsplit(".", 2)[0] if entry.name.startswith(".") else ""
        if entry.name.endswith(".tmp") and base in names:
            os.remove(entry.path)
            log.info("ingest: removed %s, left by an interrupted run", entry.name)
    vdir = out / "volumes"
    if vdir.is_dir():
        for entry in os.scandir(vdir):
            if entry.name.startswith(".") and ".tmp-" in entry.name:
                os.remove(entry.path)
