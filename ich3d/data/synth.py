"""Synthetic datasets in exactly the RSNA 2019 format, with RSNA's defects.

:func:`generate` writes::

    OUT/stage_2_train/ID_<9 hex>.dcm   one CT slice per file (+ stray non-DICOM files)
    OUT/stage_2_train.csv              ID,Label with rows ID_<image>_<subtype>
    OUT/synth_truth.json               ground truth for tests (not part of the format)

The pixels come from the head phantom of :mod:`ich3d.data.phantom`; labels are
read back from the painted bleeds. Everything random derives from
``numpy.random.SeedSequence(seed, spawn_key=...)`` per patient and per series,
so the same seed gives byte-identical files, one patient's content does not
depend on the others', and neither progress bars nor defect rates change the
phantoms (defect draws have their own streams; a defect changes only how its
files store the phantom). A patient's studies show the same head anatomy
(skull, ventricles, calcifications), scanned with different geometries.

Files follow the tag set of the RSNA files (SOPInstanceUID, Modality,
PatientID, StudyInstanceUID, SeriesInstanceUID, StudyID, ImagePositionPatient,
ImageOrientationPatient, SamplesPerPixel, PhotometricInterpretation, Rows,
Columns, PixelSpacing, BitsAllocated, BitsStored, HighBit,
PixelRepresentation, WindowCenter, WindowWidth, RescaleIntercept,
RescaleSlope, PixelData) plus SOPClassUID and a file meta header (explicit VR
little endian), so pydicom and SimpleITK/GDCM read them. Identifiers are
``ID_`` + hex strings as in RSNA (not valid DICOM UIDs, also as in RSNA).

Storage variants (per series): int16 with intercept -1024 (70%), unsigned
12-bit with intercept -1024 (15%), int16 with intercept -1000 (10%), int16
with intercept 0 (5%; note: intercept > -100 but *not* the 12-bit defect,
which also needs BitsStored 12 and PixelRepresentation 0).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import struct
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ich3d.data import phantom as ph
from ich3d.data.schema import SUBTYPES
from ich3d.errors import UserError

__all__ = [
    "DefectRates",
    "DEFAULT_DEFECTS",
    "NO_DEFECTS",
    "DEFECT_NAMES",
    "SERIES_DEFECTS",
    "IMAGE_DEFECTS",
    "SynthSummary",
    "generate",
    "load_truth",
    "series_hu",
    "series_phantom",
    "IMAGES_DIR",
    "LABELS_CSV",
    "TRUTH_JSON",
    "CT_IMAGE_STORAGE",
]

log = logging.getLogger(__name__)

IMAGES_DIR = "stage_2_train"
LABELS_CSV = "stage_2_train.csv"
TRUTH_JSON = "synth_truth.json"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: fixed implementation UID (pydicom's root) so bytes do not depend on the pydicom version
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.7167351"
IMPLEMENTATION_VERSION = "ICH3D_SYNTH_1"
TRUTH_FORMAT = "ich3d-synth-truth/1"

_IDS_KEY = 1  # spawn-key tags of the sub-streams
_PLAN_KEY = 2
_NOISE_KEY = 3
_DEFECT_KEY = 4
_DATASET_KEY = 5
_ANATOMY_KEY = 6


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class DefectRates:
    """Probabilities of RSNA's data defects, each in [0, 1].

    Attributes:
        twelve_bit: per series: all its slices carry the 12-bit intercept
            defect (BitsStored 12, PixelRepresentation 0, RescaleIntercept 0
            or 1, uint16 pixels holding ``HU mod 4096`` with HU clipped to
            [-1000, 3095]); the standard correction (add 1000, subtract 4096
            from values >= 4096, intercept -1000) recovers the true HU.
        multi_window: per image: WindowCenter / WindowWidth hold two values.
        fov_minus2000: per series: pixels outside the circular field of view
            (the inscribed circle) store HU -2000 (int16 storage; a 12-bit
            defect series does not also get this one).
        descending: per series: the slice normal points inferior
            (row cosine (-1, 0, 0), pixels mirrored to stay anatomical), so
            the order ascending along the normal is top first and positions
            descend in z; sorting by z alone reverses such a series.
        corrupt: per image: PixelData truncated to half its length; pydicom
            reads the header but ``pixel_array`` raises (like ID_6431af929).
        blank: per image: every pixel stores 0 (zero variance); its labels
            are all 0.
        duplicate_rows: per image: its 6 label rows appear twice in the CSV.
        missing_label: per image: file written, no label rows.
        orphan_label: per image: label rows written, file absent.
        not_dicom: per series: one stray non-DICOM file (junk ``.dcm``,
            empty ``.dcm`` or a ``.txt`` note) in the images folder.

    An image gets at most one of orphan_label / corrupt / blank (in that
    priority) and at most one of missing_label / duplicate_rows; an orphan
    image never loses its rows.
    """

    twelve_bit: float = 0.0
    multi_window: float = 0.0
    fov_minus2000: float = 0.0
    descending: float = 0.0
    corrupt: float = 0.0
    blank: float = 0.0
    duplicate_rows: float = 0.0
    missing_label: float = 0.0
    orphan_label: float = 0.0
    not_dicom: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not (0.0 <= float(v) <= 1.0) or math.isnan(v):
                raise UserError(f"defect rate {f.name}={v!r}: expected a number in [0, 1]")

    def with_rates(self, **rates: float) -> DefectRates:
        """Copy with some rates changed; unknown names raise :class:`UserError`."""
        unknown = sorted(set(rates) - set(DEFECT_NAMES))
        if unknown:
            raise UserError(
                f"unknown defect name(s) {', '.join(unknown)}; expected one of {', '.join(DEFECT_NAMES)}"
            )
        return DefectRates(**{**asdict(self), **rates})


DEFECT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(DefectRates))
SERIES_DEFECTS: tuple[str, ...] = ("twelve_bit", "fov_minus2000", "descending", "not_dicom")
IMAGE_DEFECTS: tuple[str, ...] = (
    "multi_window",
    "corrupt",
    "blank",
    "duplicate_rows",
    "missing_label",
    "orphan_label",
)

#: Small rates in the spirit of RSNA (where most are far rarer per image, but
#: a demo dataset should show each of them now and then).
DEFAULT_DEFECTS = DefectRates(
    twelve_bit=0.05,
    multi_window=0.03,
    fov_minus2000=0.3,
    descending=0.1,
    corrupt=0.002,
    blank=0.002,
    duplicate_rows=0.005,
    missing_label=0.002,
    orphan_label=0.002,
    not_dicom=0.03,
)
NO_DEFECTS = DefectRates()


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote."""

    out: Path
    patients: int
    studies: int
    series: int
    images: int  # planned slices (files written + orphan images)
    files: int  # DICOM files written (corrupt included)
    stray_files: int
    label_rows: int
    positive_series: int
    positive_images: int
    defects: dict[str, int]
    seconds: float

    def format(self) -> str:
        lines = [
            f"wrote {self.out}",
            f"  patients {self.patients}, studies/series {self.series}, images {self.images} "
            f"({self.files} DICOM files, {self.stray_files} stray files, {self.label_rows} label rows)",
            f"  positive series {self.positive_series}/{self.series}, "
            f"positive images {self.positive_images}/{self.images}",
            "  defects planted: "
            + (", ".join(f"{k} {v}" for k, v in self.defects.items() if v) or "none"),
            f"  {self.seconds:.1f} s",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class _Storage:
    name: str
    bits_stored: int
    pixel_representation: int
    intercept: float

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<i2") if self.pixel_representation else np.dtype("<u2")

    def hu_range(self) -> tuple[int, int]:
        if self.name == "twelve_bit_defect":
            return -1000, 3095
        if self.pixel_representation == 0:
            lo = int(self.intercept)
            return lo, lo + (1 << self.bits_stored) - 1
        return -32768 + int(self.intercept), 32767 + int(self.intercept)

    def encode(self, hu: np.ndarray) -> np.ndarray:
        """Integer HU -> stored pixel values (``hu`` already within :meth:`hu_range`)."""
        if self.name == "twelve_bit_defect":
            return np.mod(hu, 4096).astype(self.dtype)
        return (hu - int(self.intercept)).astype(self.dtype)


_STORAGES = {
    "int16_m1024": _Storage("int16_m1024", 16, 1, -1024.0),
    "uint12_m1024": _Storage("uint12_m1024", 12, 0, -1024.0),
    "int16_m1000": _Storage("int16_m1000", 16, 1, -1000.0),
    "int16_0": _Storage("int16_0", 16, 1, 0.0),
}
_STORAGE_P = (0.70, 0.15, 0.10, 0.05)


def _twelve_bit(intercept: float) -> _Storage:
    return _Storage("twelve_bit_defect", 12, 0, intercept)


_WINDOWS = ((40, 80), (30, 80), (35, 100), (40, 150), (36, 80), (50, 100))
_SECOND_WINDOWS = ((80, 200), (600, 2800), (40, 80), (36, 80), (500, 2000))


# --------------------------------------------------------------------------- plans


def _seq(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(_seq(seed, *key))


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join("0123456789abcdef"[int(d)] for d in rng.integers(0, 16, size=n))


@dataclass
class _SeriesPlan:
    geometry: ph.Geometry
    head: ph.Head
    phantom: ph.Phantom
    storage: _Storage
    window: tuple[int, int]
    intercept_12bit: float


def _plan_series(
    seed: int, patient: int, study: int, size: int, slices: tuple[int, int], positive: bool
) -> _SeriesPlan:
    rng = _rng(seed, _PLAN_KEY, patient, study)
    n = int(rng.integers(slices[0], slices[1] + 1))
    geometry = ph.sample_geometry(rng, size, n)
    head = ph.sample_head(rng, geometry, anatomy_rng=_rng(seed, _ANATOMY_KEY, patient))
    storage = _STORAGES[list(_STORAGES)[int(rng.choice(len(_STORAGES), p=_STORAGE_P))]]
    window = _WINDOWS[int(rng.integers(len(_WINDOWS)))]
    intercept_12 = float(rng.choice([0.0, 1.0]))
    phantom = ph.render_series(
        rng,
        geometry,
        head,
        positive=positive,
        noise_seed=_seq(seed, _NOISE_KEY, patient, study),
    )
    return _SeriesPlan(geometry, head, phantom, storage, window, intercept_12)


def _descending_positions(geometry: ph.Geometry) -> np.ndarray:
    """Positions of a mirrored, top-first series (see ``DefectRates.descending``)."""
    pos = geometry.positions()[::-1].copy()
    pos[:, 0] += (geometry.size - 1) * geometry.pixel_spacing
    return pos


def _fov_mask(size: int) -> np.ndarray:
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - c) ** 2 + (xx - c) ** 2 > (size / 2.0) ** 2


def _true_hu(
    plan: _SeriesPlan,
    storage: _Storage,
    *,
    descending: bool,
    fov: bool,
    blank: np.ndarray,
) -> np.ndarray:
    """Integer HU each written slice represents, anatomical order (int32)."""
    hu = np.rint(plan.phantom.hu).astype(np.int32)
    lo, hi = storage.hu_range()
    np.clip(hu, lo, hi, out=hu)
    if descending:
        hu = hu[::-1, :, ::-1]
    if fov:
        hu[:, _fov_mask(hu.shape[-1])] = -2000
    if blank.any():  # every pixel stores 0
        hu[blank] = 0 if storage.name == "twelve_bit_defect" else int(storage.intercept)
    return np.ascontiguousarray(hu)


# --------------------------------------------------------------------------- DICOM


def _ds(v: float) -> str:
    v = float(v) + 0.0  # no "-0.000000"
    s = f"{v:.6f}"
    if s == "-0.000000":
        s = "0.000000"
    if len(s) > 16:
        s = f"{v:.{max(0, 16 - len(str(int(v))) - 2)}f}"
    return s


_LONG_VRS = frozenset(
    {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UR", "UT", "UN", "SV", "UV"}
)


def _element(group: int, elem: int, vr: str, value: bytes | str | int | list[str]) -> bytes:
    """One data element in explicit VR little endian."""
    if vr == "US":
        data = struct.pack("<H", int(value))  # type: ignore[arg-type]
    elif vr == "UL":
        data = struct.pack("<I", int(value))  # type: ignore[arg-type]
    elif isinstance(value, bytes):
        data = value
    else:
        text = "\\".join(value) if isinstance(value, list) else str(value)
        data = text.encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", group, elem) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(data)) + data
    return head + struct.pack("<H", len(data)) + data


def _encode_file(tags: dict[str, Any], pixels: bytes) -> bytes:
    """A complete Part 10 file (preamble, file meta, data set), explicit VR LE.

    Written by hand rather than with ``pydicom.dcmwrite``: the ``ID_...``
    identifiers are not valid UIDs (as in RSNA), which pydicom would warn
    about on every file, and the bytes must not depend on the pydicom version.
    """
    meta = b"".join(
        (
            _element(0x0002, 0x0001, "OB", b"\x00\x01"),
            _element(0x0002, 0x0002, "UI", CT_IMAGE_STORAGE),
            _element(0x0002, 0x0003, "UI", tags["sop"]),
            _element(0x0002, 0x0010, "UI", EXPLICIT_VR_LITTLE_ENDIAN),
            _element(0x0002, 0x0012, "UI", IMPLEMENTATION_CLASS_UID),
            _element(0x0002, 0x0013, "SH", IMPLEMENTATION_VERSION),
        )
    )
    body = b"".join(
        (
            _element(0x0008, 0x0016, "UI", CT_IMAGE_STORAGE),
            _element(0x0008, 0x0018, "UI", tags["sop"]),
            _element(0x0008, 0x0060, "CS", "CT"),
            _element(0x0010, 0x0020, "LO", tags["patient"]),
            _element(0x0020, 0x000D, "UI", tags["study"]),
            _element(0x0020, 0x000E, "UI", tags["series"]),
            _element(0x0020, 0x0010, "SH", tags["study_id"]),
            _element(0x0020, 0x0032, "DS", [_ds(v) for v in tags["position"]]),
            _element(0x0020, 0x0037, "DS", [_ds(v) for v in tags["orientation"]]),
            _element(0x0028, 0x0002, "US", 1),
            _element(0x0028, 0x0004, "CS", "MONOCHROME2"),
            _element(0x0028, 0x0010, "US", tags["size"]),
            _element(0x0028, 0x0011, "US", tags["size"]),
            _element(0x0028, 0x0030, "DS", [_ds(tags["spacing"])] * 2),
            _element(0x0028, 0x0100, "US", 16),
            _element(0x0028, 0x0101, "US", tags["bits_stored"]),
            _element(0x0028, 0x0102, "US", tags["bits_stored"] - 1),
            _element(0x0028, 0x0103, "US", tags["pixel_representation"]),
            _element(0x0028, 0x1050, "DS", tags["window_center"]),
            _element(0x0028, 0x1051, "DS", tags["window_width"]),
            _element(0x0028, 0x1052, "DS", _fmt_int(tags["intercept"])),
            _element(0x0028, 0x1053, "DS", "1"),
            _element(0x7FE0, 0x0010, "OW", pixels),
        )
    )
    return b"\x00" * 128 + b"DICM" + _element(0x0002, 0x0000, "UL", len(meta)) + meta + body


def _fmt_int(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else _ds(v)


# --------------------------------------------------------------------------- generate


def _check(
    patients: int,
    size: int,
    slices: tuple[int, int],
    positive_fraction: float,
    studies: tuple[int, int],
    defects: DefectRates,
) -> None:
    if int(patients) < 1:
        raise UserError(f"patients={patients}: expected at least 1")
    if int(size) < 32 or int(size) > 4096:
        raise UserError(f"size={size}: expected 32 to 4096 pixels")
    lo, hi = slices
    if int(lo) < 1 or int(lo) > int(hi):
        raise UserError(f"slices={lo} {hi}: expected 1 <= MIN <= MAX")
    if int(hi) > 1000:
        raise UserError(f"slices MAX={hi}: expected at most 1000")
    slo, shi = studies
    if int(slo) < 1 or int(slo) > int(shi):
        raise UserError(f"studies={slo} {shi}: expected 1 <= MIN <= MAX")
    if not (0.0 <= float(positive_fraction) <= 1.0):
        raise UserError(f"positive_fraction={positive_fraction}: expected a number in [0, 1]")
    if not isinstance(defects, DefectRates):
        raise UserError("defects: expected a DefectRates")


class _Ids:
    """Unique ``ID_<hex>`` identifiers drawn from per-owner generators."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def new(self, rng: np.random.Generator, n: int) -> str:
        while True:
            s = f"ID_{_hex(rng, n)}"
            if s not in self.used:
                self.used.add(s)
                return s


def generate(
    out: Path,
    *,
    patients: int = 10,
    size: int = 512,
    slices: tuple[int, int] = (24, 60),
    positive_fraction: float = 0.5,
    studies: tuple[int, int] = (1, 3),
    seed: int = 0,
    defects: DefectRates = DEFAULT_DEFECTS,
    progress: bool = True,
    overwrite: bool = False,
) -> SynthSummary:
    """Write a synthetic RSNA-format dataset to ``out``.

    Args:
        out: output folder (created); refuses to write over an earlier
            dataset there unless ``overwrite``.
        patients: number of patients.
        size: rows = columns of every slice (pixels, default 512, at least 32).
        slices: (min, max) slices per series, inclusive (RSNA: 24-60).
        positive_fraction: fraction of series with a hemorrhage (rounded to
            a whole number of series).
        studies: (min, max) studies per patient, one series per study.
        seed: the same seed gives byte-identical files.
        defects: rates of RSNA's defects (:data:`DEFAULT_DEFECTS`,
            :data:`NO_DEFECTS`).
        progress: show a progress bar over series.
        overwrite: delete an earlier ``stage_2_train`` folder, CSV and truth
            file in ``out`` first.

    Returns:
        A :class:`SynthSummary`; the ground truth is in ``out/synth_truth.json``
        (see :func:`load_truth`).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    slices = (int(slices[0]), int(slices[1]))
    studies = (int(studies[0]), int(studies[1]))
    _check(patients, size, slices, positive_fraction, studies, defects)
    seed = int(seed)
    if seed < 0:
        raise UserError(f"seed={seed}: expected a non-negative integer")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    img_dir = out / IMAGES_DIR
    targets = [img_dir, out / LABELS_CSV, out / TRUTH_JSON]
    if any(p.exists() for p in targets):
        if not overwrite:
            raise UserError(
                f"{out} already holds a dataset ({IMAGES_DIR}/, {LABELS_CSV} or {TRUTH_JSON}); "
                "choose another folder or overwrite it (--overwrite, overwrite=True)"
            )
        shutil.rmtree(img_dir, ignore_errors=True)
        for p in targets[1:]:
            p.unlink(missing_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)

    # patients and their studies
    ids = _Ids()
    people: list[tuple[str, int]] = []
    for p in range(patients):
        prng = _rng(seed, _IDS_KEY, p)
        pid = ids.new(prng, 8)
        people.append((pid, int(prng.integers(studies[0], studies[1] + 1))))
    keys = [(p, s) for p, (_, n) in enumerate(people) for s in range(n)]
    drng = _rng(seed, _DATASET_KEY)
    n_pos = int(round(positive_fraction * len(keys)))
    positives = {keys[int(i)] for i in drng.permutation(len(keys))[:n_pos]}

    truth_series: list[dict[str, Any]] = []
    found: dict[str, list[str]] = {k: [] for k in DEFECT_NAMES}
    label_blocks: list[tuple[str, np.ndarray]] = []
    n_files = n_stray = 0
    for p, s in tqdm(keys, desc="synth series", unit="series", disable=not progress):
        pid = people[p][0]
        entry, blocks, written, stray = _make_series(
            seed, p, s, pid, size, slices, (p, s) in positives, defects, ids, img_dir, found
        )
        truth_series.append(entry)
        label_blocks.extend(blocks)
        n_files += written
        n_stray += stray

    # CSV: image blocks in a seeded random order, duplicates re-inserted at random places
    order = drng.permutation(len(label_blocks))
    blocks = [label_blocks[int(i)] for i in order]
    dup = set(found["duplicate_rows"])
    for image_id, labels in [b for b in label_blocks if b[0] in dup]:
        blocks.insert(int(drng.integers(0, len(blocks) + 1)), (image_id, labels))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Label"])
    for image_id, labels in blocks:
        for name, v in zip(SUBTYPES, labels, strict=True):
            w.writerow([f"{image_id}_{name}", int(v)])
    (out / LABELS_CSV).write_text(buf.getvalue())

    n_images = sum(e["n_slices"] for e in truth_series)
    summary = SynthSummary(
        out=out,
        patients=patients,
        studies=len(keys),
        series=len(keys),
        images=n_images,
        files=n_files,
        stray_files=n_stray,
        label_rows=6 * len(blocks),
        positive_series=sum(e["positive"] for e in truth_series),
        positive_images=sum(int(np.asarray(e["labels"])[:, -1].sum()) for e in truth_series),
        defects={k: len(v) for k, v in found.items()},
        seconds=0.0,
    )
    truth = {
        "format": TRUTH_FORMAT,
        "params": {
            "patients": patients,
            "size": size,
            "slices": list(slices),
            "positive_fraction": positive_fraction,
            "studies": list(studies),
            "seed": seed,
            "defects": asdict(defects),
        },
        "subtypes": list(SUBTYPES),
        "counts": {
            "patients": patients,
            "series": len(keys),
            "images": n_images,
            "dicom_files": n_files,
            "stray_files": n_stray,
            "label_rows": 6 * len(blocks),
            "positive_series": summary.positive_series,
            "positive_images": summary.positive_images,
        },
        "defects": {k: sorted(v) for k, v in found.items()},
        "series": truth_series,
    }
    (out / TRUTH_JSON).write_text(json.dumps(truth, indent=1, sort_keys=False) + "\n")
    summary = SynthSummary(**{**summary.__dict__, "seconds": time.perf_counter() - t0})
    log.debug("synth: %d series, %d images in %.1f s", len(keys), n_images, summary.seconds)
    return summary


def _make_series(
    seed: int,
    p: int,
    s: int,
    pid: str,
    size: int,
    slices: tuple[int, int],
    positive: bool,
    defects: DefectRates,
    ids: _Ids,
    img_dir: Path,
    found: dict[str, list[str]],
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]], int, int]:
    plan = _plan_series(seed, p, s, size, slices, positive)
    g = plan.geometry
    n = g.n_slices

    irng = _rng(seed, _IDS_KEY, p, s)
    study_uid = ids.new(irng, 10)
    series_uid = ids.new(irng, 10)
    image_ids = [ids.new(irng, 9) for _ in range(n)]

    # defect draws: a fixed number of uniforms per series and image
    dr = _rng(seed, _DEFECT_KEY, p, s)
    us = dr.random(4)
    ui = dr.random((n, 6))
    detail = dr.random(8)
    twelve = bool(us[0] < defects.twelve_bit)
    fov = bool(us[1] < defects.fov_minus2000) and not twelve
    descending = bool(us[2] < defects.descending)
    stray = bool(us[3] < defects.not_dicom)
    multi = ui[:, 0] < defects.multi_window
    orphan = ui[:, 5] < defects.orphan_label
    corrupt = (ui[:, 1] < defects.corrupt) & ~orphan
    blank = (ui[:, 2] < defects.blank) & ~orphan & ~corrupt
    missing = (ui[:, 4] < defects.missing_label) & ~orphan
    duplicate = (ui[:, 3] < defects.duplicate_rows) & ~missing

    storage = plan.storage
    if twelve:
        storage = _twelve_bit(plan.intercept_12bit)
    elif fov and storage.pixel_representation == 0:
        storage = _STORAGES["int16_m1024"]

    if descending:
        positions = _descending_positions(g)
        orientation = [-1.0, 0.0, 0.0, *g.col_cosine.tolist()]
    else:
        positions = g.positions()
        orientation = g.orientation()
    labels = plan.phantom.labels[::-1] if descending else plan.phantom.labels
    labels = labels.copy()
    blank_k = blank.copy()
    # the anatomical index of each draw row: rows follow the anatomical order
    labels[blank_k] = 0
    hu = _true_hu(plan, storage, descending=descending, fov=fov, blank=blank_k)
    raw = storage.encode(hu)

    study_id = ""  # RSNA leaves StudyID empty
    wc, ww = plan.window
    second = _SECOND_WINDOWS[int(detail[0] * len(_SECOND_WINDOWS))]
    zero_pad = bool(detail[1] < 0.5)
    written = 0
    for k, image_id in enumerate(image_ids):
        if multi[k]:
            if zero_pad:  # RSNA style: ['00036', '00036']
                wcv = [f"{wc:05d}", f"{wc:05d}"]
                wwv = [f"{ww:05d}", f"{ww:05d}"]
            else:
                wcv = [str(wc), str(second[0])]
                wwv = [str(ww), str(second[1])]
        else:
            wcv, wwv = str(wc), str(ww)
        if orphan[k]:
            found["orphan_label"].append(image_id)
            continue
        data = raw[k].tobytes()
        if corrupt[k]:
            data = data[: (len(data) // 4) * 2]
            found["corrupt"].append(image_id)
        (img_dir / f"{image_id}.dcm").write_bytes(
            _encode_file(
                {
                    "sop": image_id,
                    "patient": pid,
                    "study": study_uid,
                    "series": series_uid,
                    "study_id": study_id,
                    "position": positions[k].tolist(),
                    "orientation": orientation,
                    "size": size,
                    "spacing": g.pixel_spacing,
                    "bits_stored": storage.bits_stored,
                    "pixel_representation": storage.pixel_representation,
                    "window_center": wcv,
                    "window_width": wwv,
                    "intercept": storage.intercept,
                },
                data,
            )
        )
        written += 1
        if multi[k]:
            found["multi_window"].append(image_id)
        if blank[k]:
            found["blank"].append(image_id)
        if missing[k]:
            found["missing_label"].append(image_id)
    for k in np.nonzero(duplicate)[0]:
        found["duplicate_rows"].append(image_ids[int(k)])
    blocks = [(image_ids[k], labels[k]) for k in range(n) if not missing[k]]

    stray_name = None
    if stray:
        srng = _rng(seed, _DEFECT_KEY, p, s, 1)
        kind = int(srng.integers(3))
        if kind == 0:
            stray_name = f"{ids.new(srng, 9)}.dcm"
            (img_dir / stray_name).write_bytes(srng.integers(0, 256, 700, dtype=np.uint8).tobytes())
        elif kind == 1:
            stray_name = f"{ids.new(srng, 9)}.dcm"
            (img_dir / stray_name).write_bytes(b"")
        else:
            stray_name = f"notes_{_hex(srng, 6)}.txt"
            (img_dir / stray_name).write_text("exported by the PACS; do not edit\n")
        found["not_dicom"].append(f"{IMAGES_DIR}/{stray_name}")
    if twelve:
        found["twelve_bit"].append(series_uid)
    if fov:
        found["fov_minus2000"].append(series_uid)
    if descending:
        found["descending"].append(series_uid)

    n_phantom_slices = plan.phantom.labels.shape[0]
    bleeds = []
    for b in plan.phantom.bleeds:
        rows = np.nonzero((plan.phantom.bleed == b.code).any(axis=(1, 2)))[0]
        if descending:
            rows = n_phantom_slices - 1 - rows
        bleeds.append(
            {
                "subtype": b.subtype,
                "density_hu": round(b.density, 1),
                "slices": [int(rows.min()), int(rows.max())] if rows.size else [],
            }
        )
    entry = {
        "patient_id": pid,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "study_id": study_id,
        "patient_index": p,
        "study_index": s,
        "positive": bool(labels[:, -1].any()) if positive else False,
        "n_slices": n,
        "size": size,
        "pixel_spacing": g.pixel_spacing,
        "table_feed": g.table_feed,
        "slice_spacing": round(g.slice_spacing, 6),
        "tilt_deg": g.tilt_deg,
        "orientation": [round(float(v), 6) + 0.0 for v in orientation],
        "storage": {
            "name": storage.name,
            "bits_stored": storage.bits_stored,
            "pixel_representation": storage.pixel_representation,
            "rescale_intercept": storage.intercept,
            "rescale_slope": 1.0,
        },
        "window": [wc, ww],
        "twelve_bit": twelve,
        "fov_minus2000": fov,
        "descending": descending,
        "image_ids": image_ids,
        "positions": [[round(float(v), 6) for v in row] for row in positions],
        "labels": labels.astype(int).tolist(),
        "bleeds": bleeds,
        "calcifications": [c.kind for c in plan.head.calcifications],
        "anatomy": {  # per patient: the same in all of a patient's studies
            "skull_mm": round(plan.head.skull, 3),
            "ventricle_mm": round(plan.head.ventricle, 3),
            "grey_hu": round(plan.head.hu_grey, 2),
            "white_hu": round(plan.head.hu_white, 2),
        },
        "files": {
            "absent": [image_ids[k] for k in np.nonzero(orphan)[0]],
            "corrupt": [image_ids[k] for k in np.nonzero(corrupt)[0]],
            "blank": [image_ids[k] for k in np.nonzero(blank)[0]],
            "no_label_rows": [image_ids[k] for k in np.nonzero(missing)[0]],
            "duplicate_rows": [image_ids[k] for k in np.nonzero(duplicate)[0]],
            "multi_window": [image_ids[k] for k in np.nonzero(multi)[0]],
            "stray": stray_name,
        },
        "regenerate": {
            "seed": seed,
            "patient_index": p,
            "study_index": s,
            "size": size,
            "slices": list(slices),
            "planned_positive": positive,
        },
    }
    return entry, blocks, written, int(stray)


# --------------------------------------------------------------------------- truth


def load_truth(out: Path) -> dict[str, Any]:
    """Read ``out/synth_truth.json``.

    Schema (``format`` = ``"ich3d-synth-truth/1"``): ``params`` (the
    generate() arguments), ``subtypes``, ``counts``, ``defects`` (defect name
    -> sorted list: series UIDs for ``twelve_bit``, ``fov_minus2000``,
    ``descending``; image ids for the per-image defects; paths relative to
    ``out`` for ``not_dicom``) and ``series``: one dict per series with
    ``patient_id, study_uid, series_uid, study_id, positive, n_slices, size,
    pixel_spacing, table_feed, slice_spacing, tilt_deg, orientation, storage,
    window, twelve_bit, fov_minus2000, descending``, ``image_ids`` (ascending
    along the slice normal), ``positions`` (same order), ``labels`` (same
    order, 6 ints in ``subtypes`` order; the rows of the CSV when present),
    ``bleeds`` (subtype, density, first/last slice), ``calcifications``,
    ``anatomy`` (per-patient head parameters),
    ``files`` (per-image defects of this series) and ``regenerate`` (what
    :func:`series_hu` needs).
    """
    path = Path(out) / TRUTH_JSON
    if not path.is_file():
        raise UserError(f"{path}: no synth truth file (not made by `ich3d synth`?)")
    truth = json.loads(path.read_text())
    if truth.get("format") != TRUTH_FORMAT:
        raise UserError(f"{path}: format {truth.get('format')!r}, expected {TRUTH_FORMAT!r}")
    return truth


def series_phantom(entry: dict[str, Any]) -> ph.Phantom:
    """Re-render the phantom of a truth series entry (generation order, ascending z)."""
    r = entry["regenerate"]
    plan = _plan_series(
        int(r["seed"]),
        int(r["patient_index"]),
        int(r["study_index"]),
        int(r["size"]),
        (int(r["slices"][0]), int(r["slices"][1])),
        bool(r["planned_positive"]),
    )
    return plan.phantom


def series_hu(entry: dict[str, Any]) -> np.ndarray:
    """The true HU of every slice of a truth series entry, int32, anatomical order.

    This is what each written file represents after the standard reading
    (``pixel * slope + intercept``, with the 12-bit correction where it
    applies): noise and rounding included, clipped to what the storage can
    hold, -2000 outside the field of view and the stored value of blank
    slices. Slices whose file is absent or corrupt get what they would have
    held.
    """
    r = entry["regenerate"]
    plan = _plan_series(
        int(r["seed"]),
        int(r["patient_index"]),
        int(r["study_index"]),
        int(r["size"]),
        (int(r["slices"][0]), int(r["slices"][1])),
        bool(r["planned_positive"]),
    )
    st = entry["storage"]
    storage = _Storage(
        st["name"],
        int(st["bits_stored"]),
        int(st["pixel_representation"]),
        float(st["rescale_intercept"]),
    )
    blank_ids = set(entry["files"]["blank"])
    blank = np.array([i in blank_ids for i in entry["image_ids"]], dtype=bool)
    return _true_hu(
        plan,
        storage,
        descending=bool(entry["descending"]),
        fov=bool(entry["fov_minus2000"]),
        blank=blank,
    )
