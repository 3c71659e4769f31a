"""Label CSVs: slice labels (RSNA ``ID,Label``) and study-level labels."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from ich3d.data.dicom import SliceHeader
from ich3d.data.schema import LABEL_COLUMNS, SUBTYPES, UNLABELED
from ich3d.errors import UserError

__all__ = [
    "LabelTable",
    "StudyLabelTable",
    "read_labels",
    "read_study_labels",
    "study_key",
    "STUDY_LABEL_KEYS",
    "REASON_NO_LABEL",
    "REASON_INCOMPLETE_LABEL",
    "REASON_ORPHAN_LABEL",
    "REASON_MALFORMED_LABEL",
    "REASON_NO_STUDY_LABEL",
    "REASON_ORPHAN_STUDY_LABEL",
    "REASON_MALFORMED_STUDY_LABEL",
]

log = logging.getLogger(__name__)

#: Columns a study-label CSV may be keyed by, in the order they are looked for.
STUDY_LABEL_KEYS = ("StudyInstanceUID", "PatientID", "AccessionNumber")

REASON_NO_LABEL = "no label row"
REASON_INCOMPLETE_LABEL = "incomplete label rows"
REASON_ORPHAN_LABEL = "label row with no image"
REASON_MALFORMED_LABEL = "malformed label row"
REASON_NO_STUDY_LABEL = "no study label row"
REASON_ORPHAN_STUDY_LABEL = "study label row with no volume"
REASON_MALFORMED_STUDY_LABEL = "malformed study label row"


class _CsvReader:
    """Rows of a UTF-8 CSV file; a file that is not UTF-8 text or not CSV (a field over the
    csv module's limit, a NUL byte) is one :class:`UserError` naming the file and line."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __enter__(self) -> _CsvReader:
        self._fh = open(self.path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed in __exit__
        self._reader = csv.reader(self._fh)
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def __iter__(self) -> _CsvReader:
        return self

    def __next__(self) -> list[str]:
        try:
            return next(self._reader)
        except UnicodeDecodeError:
            raise UserError(
                f"{self.what} {self.path} is not UTF-8 text ({_first_bad_byte(self.path)}); "
                "save it as UTF-8, e.g. `iconv -f <its encoding> -t utf-8 OLD > NEW`"
            ) from None
        except csv.Error as exc:
            raise UserError(
                f"{self.what} {self.path} line {self._reader.line_num} is not CSV ({exc}); "
                "check the file"
            ) from None


def _first_bad_byte(path: Path) -> str:
    """Where a file first fails to decode as UTF-8: ``byte 0xNN on line N``."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return f"byte 0x{raw[exc.start]:02x} on line {line}"
    return "undecodable bytes"  # pragma: no cover - the reader failed, so the bytes do


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
    with _CsvReader(path, "labels CSV") as reader:
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
    with _CsvReader(path, "study labels CSV") as reader:
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


def study_key(h: SliceHeader, key_column: str) -> str:
    if key_column == "StudyInstanceUID":
        return h.study_uid
    if key_column == "PatientID":
        return "" if h.patient_from_study else h.patient_id
    return h.accession
