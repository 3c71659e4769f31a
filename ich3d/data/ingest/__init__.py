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
  The listing only stats (opens nothing, so nothing can block): symbolic links are followed
  once; everything else is a skipped.csv row with its reason (item = its path):
  *not a regular file* (FIFO, socket, device), *dangling symbolic link*,
  *symbolic link loop*, *folder already listed through another path*,
  *unreadable folder*, *file name not valid UTF-8* (item with ``\\xNN`` bytes).
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
  ``POSITION_TOLERANCE_MM`` of the previous one form a group; of a group the
  lossless copies come first, then the lowest image id: that one is kept, the
  others are skipped ("duplicate position").
* **Spacing**: ``slice_spacing`` = median difference of consecutive
  projections, ``slice_spacing_min`` / ``_max`` their range;
  ``uniform_spacing`` = 1 when max - min <= ``SPACING_TOLERANCE`` (1 % of the
  median, at least 0.01 mm); **gap** = 1 when any difference exceeds
  ``GAP_FACTOR`` (1.5) x the median (e.g. a slice lost to a skip reason).
* **pixel_spacing** in volumes.csv is the *original* PixelSpacing of the rows
  (mm, first value) of the first slice; the pooled volume's in-plane spacing
  is twice that. height / width are the pooled sizes. ``slice_thickness`` is
  the median SliceThickness, ``kernel`` the ConvolutionKernel of the first
  slice, ``transfer_syntax`` the TransferSyntaxUID of its slices (``mixed``
  when they differ, e.g. a native series with JPEG slices), ``lossy`` = 1 when any
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
  this order: the listing's reasons, not DICOM / DICOMDIR, unreadable file,
  not CT, localizer, missing tags, unsupported / unreadable pixel data / no
  decoder, missing position or orientation, multi-frame geometry, unusable
  geometry (non-finite position / orientation / pixel spacing, spacing <= 0),
  unusable rescale slope or intercept (not finite, slope <= 0), no label row, incomplete
  label rows, inconsistent slice size, inconsistent orientation, duplicate
  position, series shorter than min_slices, no study label row, other series
  of the study selected.

Modules: :mod:`~ich3d.data.ingest.labels` (label CSVs),
:mod:`~ich3d.data.ingest.listing` (files, image ids, fingerprint),
:mod:`~ich3d.data.ingest.plan` (the plan), :mod:`~ich3d.data.ingest.workers`
(header reads and volume builds), :mod:`~ich3d.data.ingest.state` (resume state),
:mod:`~ich3d.data.ingest.tables` (the tables and ingest.json),
:mod:`~ich3d.data.ingest.run` (:func:`run_ingest`).

One writer per cache: an ingest holds ``fcntl.flock`` on ``CACHE/.ingest.lock``
(which names it: process id and host) while it writes; a second one is refused
with that name. Temporary files a killed run left are removed by the next run.

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

from ich3d.data.ingest.labels import (
    REASON_INCOMPLETE_LABEL,
    REASON_MALFORMED_LABEL,
    REASON_MALFORMED_STUDY_LABEL,
    REASON_NO_LABEL,
    REASON_NO_STUDY_LABEL,
    REASON_ORPHAN_LABEL,
    REASON_ORPHAN_STUDY_LABEL,
    STUDY_LABEL_KEYS,
    LabelTable,
    StudyLabelTable,
    read_labels,
    read_study_labels,
)
from ich3d.data.ingest.plan import (
    GAP_FACTOR,
    ORIENTATION_TOLERANCE,
    POSITION_TOLERANCE_MM,
    REASON_DUPLICATE_POSITION,
    REASON_ORIENTATION_MISMATCH,
    REASON_SERIES_NOT_SELECTED,
    REASON_SHORT_SERIES,
    REASON_SIZE_MISMATCH,
    SERIES_PER_STUDY,
    is_soft_kernel,
    select_series,
)
from ich3d.data.ingest.run import run_ingest
from ich3d.data.ingest.state import INGEST_FORMAT
from ich3d.data.ingest.summary import IngestSummary
from ich3d.data.schema import LABEL_COLUMNS, SUBTYPES, most_common_size

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
    "ORIENTATION_TOLERANCE",
    "POSITION_TOLERANCE_MM",
    "SERIES_PER_STUDY",
    "STUDY_LABEL_KEYS",
    "LABEL_COLUMNS",
    "SUBTYPES",
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
