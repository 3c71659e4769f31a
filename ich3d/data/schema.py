"""Names shared by every part of the data layer: label subtypes, cache tables, keys.

The ingest writes these tables and the DataModule, the trainer and the evaluation
read them; keeping the column lists in one place keeps the two sides in step.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

__all__ = [
    "most_common_size",
    "SUBTYPES",
    "LABEL_COLUMNS",
    "SLICE_COLUMNS",
    "VOLUME_COLUMNS",
    "SKIPPED_COLUMNS",
    "HU_MIN",
    "HU_MAX",
    "UNLABELED",
    "PATIENT_FROM_STUDY_PREFIX",
    "series_key",
    "patient_key",
]

#: RSNA 2019 label subtypes, in the order of the CSV; ``any`` is the ICH label.
SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)
LABEL_COLUMNS: tuple[str, ...] = SUBTYPES

#: Value of a label column when the dataset has no label for that image.
UNLABELED = -1

#: ``patient_id`` of a file without a PatientID: this prefix + its StudyInstanceUID
#: (the study stands in for the patient, so splits by patient stay leak-free).
PATIENT_FROM_STUDY_PREFIX = "study:"

#: HU clip range applied by the ingest (air .. 12-bit maximum).
HU_MIN = -1024
HU_MAX = 3071

SLICE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "study_uid",
    "series_uid",
    "key",
    "slice_index",
    "position",
    *LABEL_COLUMNS,
    "file",
    "frame",
)

VOLUME_COLUMNS: tuple[str, ...] = (
    "key",
    "patient_id",
    "study_uid",
    "series_uid",
    "n_slices",
    "height",
    "width",
    "pixel_spacing",
    "slice_spacing",
    "gap",
    *LABEL_COLUMNS,
    "path",
    "slice_spacing_min",
    "slice_spacing_max",
    "uniform_spacing",
    "slice_thickness",
    "kernel",
    "transfer_syntax",
    "lossy",
    "multiframe",
    "patient_from_study",
)

#: ``item`` is a file path (relative to the images folder), ``<path>#<frame>`` for one
#: frame of a multi-frame file, or a label-CSV key; ``detail`` says more (e.g. the
#: transfer syntax and the package to install).
SKIPPED_COLUMNS: tuple[str, ...] = ("item", "reason", "detail")


def _digest(kind: str, value: str, length: int = 16) -> str:
    return hashlib.sha256(f"ich3d:{kind}:{value}".encode()).hexdigest()[:length]


def series_key(series_uid: str) -> str:
    """Return the cache key of a series: a hash of its SeriesInstanceUID.

    Keys name the cached volume files and are the only volume handle that may
    leave the machine (W&B, plots); the UID itself never does.
    """
    return _digest("series", series_uid)


def patient_key(patient_id: str) -> str:
    """Return a hash of a PatientID, for anything that leaves the machine."""
    return _digest("patient", patient_id)


def most_common_size(sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The most common (rows, columns) of ``sizes``; a tie goes to the smallest size.

    The ingest keeps the slices of a series that have this size (the others are
    skipped alone); the same rule picks one in-plane size for a whole cache.

    Raises:
        ValueError: ``sizes`` is empty.
    """
    counts = Counter((int(r), int(c)) for r, c in sizes)
    if not counts:
        raise ValueError("most_common_size() of no sizes")
    return min(counts, key=lambda s: (-counts[s], s))
