"""The input listing: the files under the images folder, their image ids, the fingerprint."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ich3d.data.dicom import image_id_of

__all__ = ["list_files", "image_ids", "sha256_file", "fingerprint"]


def list_files(images: Path, exclude: Path | None) -> list[tuple[str, int]]:
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


def fingerprint(
    listing: Sequence[tuple[str, int]], labels: Path | None, study_labels: Path | None
) -> dict[str, Any]:
    h = hashlib.sha256()
    for rel, size in listing:
        h.update(f"{rel}\0{size}\n".encode())
    return {
        "n_files": len(listing),
        "total_bytes": int(sum(s for _, s in listing)),
        "listing_sha256": h.hexdigest(),
        "labels_sha256": sha256_file(labels) if labels is not None else None,
        "study_labels_sha256": sha256_file(study_labels) if study_labels is not None else None,
    }
