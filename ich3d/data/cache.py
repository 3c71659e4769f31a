"""Read access to an ingest cache (what ``ich3d ingest`` writes).

Layout of ``CACHE``:

- ``volumes/<key>.npy``: int16 HU, shape ``(slices, H, W)``, slices ascending
  along the patient axis, already 2x2 max-filtered in plane;
- ``volumes.csv`` (:data:`~ich3d.data.schema.VOLUME_COLUMNS`), ``slices.csv``
  (:data:`~ich3d.data.schema.SLICE_COLUMNS`), ``skipped.csv``;
- ``ingest.json``: parameters and counts, ``"complete": true`` once finished.

Files added by the data modules: ``splits.json`` (:mod:`ich3d.data.splits`),
``slice_stats.csv`` + ``slice_stats.json`` (:mod:`ich3d.data.cavity`).

Every reader opens a cache through :func:`open_cache` (the DataModules,
``predict``, evaluation and ``ingest`` when it checks an existing cache), so
the tables are parsed one way everywhere, and checked where they are used:

- a table is read only when its bytes have the sha256 ``ingest.json`` recorded
  for it (``"tables"``; a cache written before the hashes were recorded is read
  as it is), so a changed, truncated or shortened table is refused;
- a volume is returned only when its file exists, reads as a ``.npy`` and has
  the shape ``(n_slices, height, width)`` and type int16 ``volumes.csv`` gives;
- a missing or damaged ``ingest.json``, table or volume is one
  :class:`~ich3d.errors.UserError` naming it, with the command that rebuilds the
  cache (``ich3d ingest --images ... --out CACHE --overwrite``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.data.schema import (
    LABEL_COLUMNS,
    SLICE_COLUMNS,
    UNLABELED,
    VOLUME_COLUMNS,
    most_common_size,
)
from ich3d.errors import UserError

__all__ = [
    "IngestCache",
    "open_cache",
    "is_complete",
    "atomic_write_text",
    "atomic_write_csv",
    "table_sha256",
    "INGEST_TABLES",
]

#: The tables the ingest writes; ``ingest.json`` records their sha256 (``"tables"``).
INGEST_TABLES: tuple[str, ...] = ("slices.csv", "volumes.csv", "skipped.csv")

_STR_COLUMNS = ("key", "patient_id", "study_uid", "series_uid", "image_id", "path")


def is_complete(root: str | Path) -> bool:
    """Return True when ``root/ingest.json`` exists and says ``"complete": true``."""
    p = Path(root) / "ingest.json"
    try:
        return bool(json.loads(p.read_text()).get("complete", False))
    except (OSError, ValueError, AttributeError):
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index) atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def table_sha256(data: bytes) -> str:
    """The hash ``ingest.json`` records for a table's bytes."""
    return hashlib.sha256(data).hexdigest()


def _parse_table(data: bytes, path: Path, columns: tuple[str, ...], fix: str) -> pd.DataFrame:
    dtypes = {c: str for c in _STR_COLUMNS}
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=dtypes, keep_default_na=False, na_values=[""])
    except (ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError is a ValueError
        raise UserError(f"cache table {path} does not read as CSV ({exc}); {fix}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks columns {missing}; expected {list(columns)}")
    try:
        for c in LABEL_COLUMNS:
            frame[c] = frame[c].fillna(UNLABELED).astype(np.int64)
    except (ValueError, TypeError) as exc:
        raise UserError(
            f"cache table {path} has labels that are not integers ({exc}); {fix}"
        ) from None
    return frame


class IngestCache:
    """An opened ingest cache: its tables and memory-mapped volumes.

    Tables are read lazily and kept; volumes are opened with
    ``np.load(mmap_mode="r")`` and the last ``max_open`` maps are kept (a small
    LRU, per process: safe to use in DataLoader workers).

    Args:
        root: the cache folder.
        require_complete: raise :class:`UserError` unless ``ingest.json`` says
            the ingest finished (default True).
        max_open: how many volume memory maps to keep open (default 64).
    """

    def __init__(
        self, root: str | Path, *, require_complete: bool = True, max_open: int = 64
    ) -> None:
        self.root = Path(root)
        if require_complete and (self.root / "ingest.json").is_file() and not self.info:
            raise UserError(
                f"{self.root / 'ingest.json'} is damaged (not a JSON object: truncated or "
                f"edited); {self.rebuild_advice()}"
            )
        if require_complete and not is_complete(self.root):
            raise UserError(
                f"{self.root} is not a complete ich3d cache (no ingest.json with "
                f'"complete": true); run `ich3d ingest --images DIR --out {self.root}` '
                "or give the images folder so the ingest runs first"
            )
        self.max_open = max_open
        self._volumes: pd.DataFrame | None = None
        self._slices: pd.DataFrame | None = None
        self._paths: dict[str, Path] | None = None
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._shapes: dict[str, tuple[int, int, int]] | None = None

    # pickling for DataLoader workers: drop open maps
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state

    @property
    def info(self) -> dict[str, Any]:
        """The content of ``ingest.json`` (empty dict when absent)."""
        try:
            return json.loads((self.root / "ingest.json").read_text())
        except (OSError, ValueError):
            return {}

    def rebuild_advice(self) -> str:
        """The command that rebuilds this cache from the inputs ``ingest.json`` names."""
        record = self.info
        words = ["ich3d ingest", "--images", str(record.get("images") or "IMAGES")]
        for key, flag in (("labels", "--labels"), ("study_labels", "--study-labels")):
            if record.get(key):
                words += [flag, str(record[key])]
        words += ["--out", str(self.root), "--overwrite"]
        return f"rebuild the cache: `{' '.join(words)}`"

    def table_bytes(self, name: str) -> bytes:
        """The bytes of the table ``name``, checked against the hash ``ingest.json`` recorded.

        Raises:
            UserError: the table is missing, or its bytes are not the ones the ingest wrote.
        """
        path = self.root / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(
                f"cache table {path} cannot be read ({exc.strerror}); {self.rebuild_advice()}"
            ) from None
        recorded = (self.info.get("tables") or {}).get(name)
        if recorded is not None and table_sha256(data) != recorded:
            raise UserError(
                f"cache table {path} is not the one the ingest wrote (changed, truncated or "
                f"rows deleted: its sha256 differs from ingest.json's); {self.rebuild_advice()}"
            )
        return data

    def table_hashes(self) -> dict[str, str]:
        """sha256 of every ingest table (each checked by :meth:`table_bytes`)."""
        return {name: table_sha256(self.table_bytes(name)) for name in INGEST_TABLES}

    def _table(self, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
        data = self.table_bytes(name)
        return _parse_table(data, self.root / name, columns, self.rebuild_advice())

    @property
    def volumes(self) -> pd.DataFrame:
        """``volumes.csv`` as a DataFrame (string ids, int labels, -1 = unlabeled)."""
        if self._volumes is None:
            self._volumes = self._table("volumes.csv", VOLUME_COLUMNS)
        return self._volumes

    @property
    def slices(self) -> pd.DataFrame:
        """``slices.csv`` as a DataFrame."""
        if self._slices is None:
            self._slices = self._table("slices.csv", SLICE_COLUMNS)
        return self._slices

    def volumes_present(self) -> bool:
        """True when ``volumes.csv`` reads and every volume file it lists exists."""
        try:
            paths = self.volumes["path"]
        except UserError:
            return False
        return all((self.root / p).is_file() for p in paths)

    def common_size(self) -> tuple[tuple[int, int], int] | None:
        """The most common in-plane ``(height, width)`` of the volumes (as stored) and
        how many sizes the cache holds; None for a cache without volumes."""
        v = self.volumes
        if len(v) == 0:
            return None
        sizes = list(zip(v["height"], v["width"], strict=True))
        return most_common_size(sizes), len(set(sizes))

    @property
    def labeled(self) -> bool:
        """True when every volume carries labels (no ``-1`` in the ``any`` column)."""
        v = self.volumes
        return len(v) > 0 and bool((v["any"] != UNLABELED).all())

    def volume_path(self, key: str) -> Path:
        """Absolute path of the ``.npy`` file of volume ``key``."""
        if self._paths is None:
            self._paths = {
                k: self.root / p
                for k, p in zip(self.volumes["key"], self.volumes["path"], strict=True)
            }
        try:
            return self._paths[key]
        except KeyError:
            raise UserError(f"volume key {key!r} is not in {self.root / 'volumes.csv'}") from None

    def _expected_shape(self, key: str) -> tuple[int, int, int]:
        if self._shapes is None:
            v = self.volumes
            self._shapes = {
                k: (int(n), int(h), int(w))
                for k, n, h, w in zip(v["key"], v["n_slices"], v["height"], v["width"], strict=True)
            }
        return self._shapes[key]

    def _open_volume(self, key: str, mmap: bool) -> np.ndarray:
        """Load volume ``key`` and check it against volumes.csv."""
        path = self.volume_path(key)
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise UserError(f"cache volume {path} is missing; {self.rebuild_advice()}") from None
        except (OSError, ValueError) as exc:  # truncated or not a .npy file
            raise UserError(
                f"cache volume {path} is damaged ({exc}); {self.rebuild_advice()}"
            ) from None
        expected = self._expected_shape(key)
        if arr.shape != expected or arr.dtype != np.int16:
            raise UserError(
                f"cache volume {path} is {arr.dtype} {tuple(arr.shape)}, volumes.csv says int16 "
                f"{expected}; {self.rebuild_advice()}"
            )
        return arr

    def load_volume(self, key: str, *, mmap: bool = True) -> np.ndarray:
        """Return volume ``key``: int16 HU ``(slices, H, W)``.

        Args:
            key: the volume's cache key.
            mmap: memory-map (default, cached in the LRU) or read fully into memory.

        Raises:
            UserError: the key is not in volumes.csv, or its file is missing, damaged or
                not of the shape and type volumes.csv gives.
        """
        if not mmap:
            return self._open_volume(key, mmap=False)
        arr = self._maps.get(key)
        if arr is not None:
            self._maps.move_to_end(key)
            return arr
        arr = self._open_volume(key, mmap=True)
        self._maps[key] = arr
        while len(self._maps) > self.max_open:
            self._maps.popitem(last=False)
        return arr


def open_cache(
    root: str | Path, *, require_complete: bool = True, max_open: int = 64
) -> IngestCache:
    """Open the ingest cache in ``root``: the one read path of every cache reader.

    Args:
        root: the cache folder.
        require_complete: raise :class:`UserError` unless ``ingest.json`` says the
            ingest finished (default True); False to inspect an unfinished or
            foreign cache (``ingest`` deciding what to redo, a run's training
            cache read for its image size).
        max_open: volume memory maps kept open (see :class:`IngestCache`).
    """
    return IngestCache(root, require_complete=require_complete, max_open=max_open)
