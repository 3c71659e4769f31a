"""The input listing: the files under the images folder, their image ids, the fingerprint."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ich3d.data.dicom import image_id_of
from ich3d.errors import UserError

__all__ = [
    "Listing",
    "list_files",
    "image_ids",
    "sha256_file",
    "fingerprint",
    "REASON_NOT_REGULAR",
    "REASON_DANGLING_LINK",
    "REASON_LINK_LOOP",
    "REASON_FOLDER_LISTED",
    "REASON_UNREADABLE_FOLDER",
    "REASON_BAD_NAME",
]

log = logging.getLogger(__name__)


#: Skip reasons of the listing (items that are not regular files, or cannot be named).
REASON_NOT_REGULAR = "not a regular file"
REASON_DANGLING_LINK = "dangling symbolic link"
REASON_LINK_LOOP = "symbolic link loop"
REASON_FOLDER_LISTED = "folder already listed through another path"
REASON_UNREADABLE_FOLDER = "unreadable folder"
REASON_BAD_NAME = "file name not valid UTF-8"

_KINDS = (
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


@dataclass(frozen=True)
class Listing:
    """What the images folder holds.

    Attributes:
        files: (posix path relative to the folder, size) of every regular file, sorted.
        mtime_ns: the modification time (ns) of each file, in the order of ``files``.
        skipped: (item, reason, detail) of everything else met: special files, dangling
            links, link loops, folders reached twice, unreadable folders, names that are
            not valid UTF-8 (item: the name with its bad bytes as ``\\xNN``).
    """

    files: list[tuple[str, int]]
    mtime_ns: list[int]
    skipped: list[tuple[str, str, str]]

    def __len__(self) -> int:
        return len(self.files)


def _printable(rel: str) -> str:
    """``rel`` with bytes that are not UTF-8 shown as ``\\xNN`` (valid UTF-8 text)."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), f"file type {stat.S_IFMT(mode):o}")


def list_files(images: Path, exclude: Path | None) -> Listing:
    """Every regular file under ``images`` (links followed once), and what else it holds.

    Only ``stat`` is used (``os.stat`` follows a link, ``os.scandir`` lists a folder):
    nothing is opened, so a FIFO or a device cannot block the listing. A folder is
    listed once: a link back to one of its ancestors is a loop, a second path to a
    folder already listed is skipped. ``exclude`` (the cache folder) is left out.

    Raises:
        UserError: ``images`` itself cannot be listed.
    """
    root = os.fspath(images)
    try:
        root_stat = os.stat(root)
        with os.scandir(root):
            pass
    except OSError as exc:
        raise UserError(f"images folder {images} cannot be listed: {exc.strerror}") from None
    excluded = _folder_id(exclude) if exclude is not None else None
    seen = {(root_stat.st_dev, root_stat.st_ino)}
    files: list[tuple[str, int, int]] = []
    skipped: list[tuple[str, str, str]] = []
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [(root, "", frozenset(seen))]
    while stack:
        path, rel_dir, ancestors = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)  # the first path to a folder wins
        except OSError as exc:
            skipped.append((_printable(rel_dir), REASON_UNREADABLE_FOLDER, exc.strerror or ""))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                skipped.append((_printable(rel), REASON_BAD_NAME, "rename it"))
                continue
            try:
                st = os.stat(entry.path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    reason = REASON_LINK_LOOP
                else:
                    reason = REASON_DANGLING_LINK if entry.is_symlink() else REASON_NOT_REGULAR
                skipped.append((rel, reason, exc.strerror or ""))
                continue
            if stat.S_ISREG(st.st_mode):
                files.append((rel, st.st_size, st.st_mtime_ns))
            elif stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key == excluded:
                    continue
                if key in ancestors:
                    skipped.append((rel, REASON_LINK_LOOP, "links to a folder above it"))
                elif key in seen:
                    skipped.append((rel, REASON_FOLDER_LISTED, "not listed again"))
                else:
                    seen.add(key)
                    stack.append((entry.path, rel, ancestors | {key}))
            else:
                skipped.append((rel, REASON_NOT_REGULAR, _kind(st.st_mode)))
    files.sort()
    skipped.sort()
    for item, reason, detail in skipped:
        log.warning("ingest: skipped %s: %s (%s)", item, reason, detail)
    return Listing([(r, s) for r, s, _ in files], [m for _, _, m in files], skipped)


def _folder_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def image_ids(listing: Sequence[tuple[str, int]]) -> dict[str, str]:
    """relpath -> unique image id (the file name without .dcm, the relpath where names repeat)."""
    names = Counter(image_id_of(rel) for rel, _ in listing)
    out = {}
    for rel, _ in listing:
        name = image_id_of(rel)
        out[rel] = name if names[name] == 1 else (rel[:-4] if rel.lower().endswith(".dcm") else rel)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(listing: Listing, labels: Path | None, study_labels: Path | None) -> dict[str, Any]:
    """What the cache was built from: names, sizes and modification times of the files (a
    file rewritten in place at the same size changes its mtime), what else the folder held,
    and the label CSVs' hashes."""
    h = hashlib.sha256()
    for (rel, size), mtime in zip(listing.files, listing.mtime_ns, strict=True):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    for item, reason, _ in listing.skipped:
        h.update(f"{item}\0{reason}\n".encode())
    return {
        "n_files": len(listing.files),
        "total_bytes": int(sum(s for _, s in listing.files)),
        "listing_sha256": h.hexdigest(),
        "labels_sha256": sha256_file(labels) if labels is not None else None,
        "study_labels_sha256": sha256_file(study_labels) if study_labels is not None else None,
    }
