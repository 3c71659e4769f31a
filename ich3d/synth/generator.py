"""Synthetic datasets in exactly the RSNA 2019 format, with RSNA's defects.

:func:`generate` writes::

    OUT/stage_2_train/ID_<9 hex>.dcm   one CT slice per file (+ stray non-DICOM files)
    OUT/stage_2_train.csv              ID,Label with rows ID_<image>_<subtype>
    OUT/synth_truth.json               ground truth for tests (not part of the format)

The pixels come from the head phantom of :mod:`ich3d.synth.phantom`; labels are
read back from the painted bleeds. Everything random derives from
``numpy.random.SeedSequence(seed, spawn_key=...)`` per patient and per series,
so the same seed gives byte-identical files, one patient's content does not
depend on the others', and neither progress bars nor defect rates change the
phantoms (defect draws have their own streams; a defect changes only how its
files store the phantom). A patient's studies show the same head anatomy
(skull, ventricles, calcifications), scanned with different geometries.

Files follow the tag set of the RSNA files (:mod:`ich3d.synth.dicom_file`);
identifiers are ``ID_`` + hex strings as in RSNA (not valid DICOM UIDs, also as
in RSNA). Pixel storage variants: :mod:`ich3d.synth.storage`; defects:
:mod:`ich3d.synth.defects`."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ich3d.data.schema import SUBTYPES
from ich3d.errors import UserError
from ich3d.synth import phantom as ph
from ich3d.synth.defects import DEFAULT_DEFECTS, DEFECT_NAMES, DefectRates
from ich3d.synth.series import IMAGES_DIR, make_series, plan_of
from ich3d.synth.storage import Storage, true_hu
from ich3d.synth.streams import DATASET_KEY, IDS_KEY, Ids, rng

__all__ = [
    "SynthSummary",
    "generate",
    "load_truth",
    "series_hu",
    "series_phantom",
    "IMAGES_DIR",
    "LABELS_CSV",
    "TRUTH_JSON",
    "TRUTH_FORMAT",
]

log = logging.getLogger(__name__)

LABELS_CSV = "stage_2_train.csv"
TRUTH_JSON = "synth_truth.json"
TRUTH_FORMAT = "ich3d-synth-truth/1"


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


# --------------------------------------------------------------------------- plans


# --------------------------------------------------------------------------- generate


def _check(
    patients: int,
    size: int,
    slices: tuple[int, int],
    positive_fraction: float,
    studies: tuple[int, int],
    defects: DefectRates,
    seed: int,
) -> None:
    if seed < 0:
        raise UserError(f"seed={seed}: expected a non-negative integer")
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
    artefacts: bool = True,
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
        artefacts: paint the phantom's CT artefacts (:mod:`ich3d.synth.artefacts`;
            default True); False gives the phantom without them, for ablations.

    Returns:
        A :class:`SynthSummary`; the ground truth is in ``out/synth_truth.json``
        (see :func:`load_truth`).
    """
    t0 = time.perf_counter()
    slices = (int(slices[0]), int(slices[1]))
    studies = (int(studies[0]), int(studies[1]))
    _check(patients, size, slices, positive_fraction, studies, defects, int(seed))
    seed = int(seed)
    out = Path(out)
    img_dir = _prepare(out, overwrite)

    ids = Ids()
    people = _people(seed, patients, studies, ids)
    keys = [(p, s) for p, (_, n) in enumerate(people) for s in range(n)]
    drng = rng(seed, DATASET_KEY)
    n_pos = int(round(positive_fraction * len(keys)))
    positives = {keys[int(i)] for i in drng.permutation(len(keys))[:n_pos]}

    truth_series: list[dict[str, Any]] = []
    found: dict[str, list[str]] = {k: [] for k in DEFECT_NAMES}
    label_blocks: list[tuple[str, np.ndarray]] = []
    n_files = n_stray = 0
    for p, s in tqdm(keys, desc="synth series", unit="series", disable=not progress):
        pid = people[p][0]
        positive = (p, s) in positives
        entry, blocks, written, stray = make_series(
            seed, p, s, pid, size, slices, positive, defects, ids, img_dir, found, artefacts
        )
        truth_series.append(entry)
        label_blocks.extend(blocks)
        n_files += written
        n_stray += stray

    n_rows = _write_labels(out / LABELS_CSV, label_blocks, set(found["duplicate_rows"]), drng)
    n_images = sum(e["n_slices"] for e in truth_series)
    summary = SynthSummary(
        out=out,
        patients=patients,
        studies=len(keys),
        series=len(keys),
        images=n_images,
        files=n_files,
        stray_files=n_stray,
        label_rows=n_rows,
        positive_series=sum(e["positive"] for e in truth_series),
        positive_images=sum(int(np.asarray(e["labels"])[:, -1].sum()) for e in truth_series),
        defects={k: len(v) for k, v in found.items()},
        seconds=0.0,
    )
    params = {"patients": patients, "size": size, "slices": list(slices)}
    params.update(positive_fraction=positive_fraction, studies=list(studies), seed=seed)
    params["defects"] = asdict(defects)
    _write_truth(out / TRUTH_JSON, params, summary, found, truth_series)
    summary = SynthSummary(**{**summary.__dict__, "seconds": time.perf_counter() - t0})
    log.debug("synth: %d series, %d images in %.1f s", len(keys), n_images, summary.seconds)
    return summary


def _people(seed: int, patients: int, studies: tuple[int, int], ids: Ids) -> list[tuple[str, int]]:
    """(PatientID, number of studies) of every patient."""
    people: list[tuple[str, int]] = []
    for p in range(patients):
        prng = rng(seed, IDS_KEY, p)
        pid = ids.new(prng, 8)
        people.append((pid, int(prng.integers(studies[0], studies[1] + 1))))
    return people


def _prepare(out: Path, overwrite: bool) -> Path:
    """The images folder, created; an earlier dataset in ``out`` refused or removed."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    img_dir = out / IMAGES_DIR
    targets = [img_dir, out / LABELS_CSV, out / TRUTH_JSON]
    if any(p.exists() for p in targets):
        if not overwrite:
            raise UserError(
                f"{out} already holds a dataset ({IMAGES_DIR}/, {LABELS_CSV} or {TRUTH_JSON}); "
                "choose another folder or overwrite it (ich3d synth --overwrite; in Python, generate's overwrite argument)"
            )
        shutil.rmtree(img_dir, ignore_errors=True)
        for p in targets[1:]:
            p.unlink(missing_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    return img_dir


def _write_labels(
    path: Path,
    label_blocks: list[tuple[str, np.ndarray]],
    duplicated: set[str],
    drng: np.random.Generator,
) -> int:
    """The labels CSV: image blocks in a seeded random order, duplicate blocks re-inserted
    at random places; the number of label rows."""
    order = drng.permutation(len(label_blocks))
    blocks = [label_blocks[int(i)] for i in order]
    for image_id, labels in [b for b in label_blocks if b[0] in duplicated]:
        blocks.insert(int(drng.integers(0, len(blocks) + 1)), (image_id, labels))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Label"])
    for image_id, labels in blocks:
        for name, v in zip(SUBTYPES, labels, strict=True):
            w.writerow([f"{image_id}_{name}", int(v)])
    path.write_text(buf.getvalue())
    return 6 * len(blocks)


def _write_truth(
    path: Path,
    params: dict[str, Any],
    summary: SynthSummary,
    found: dict[str, list[str]],
    truth_series: list[dict[str, Any]],
) -> None:
    truth = {
        "format": TRUTH_FORMAT,
        "params": params,
        "subtypes": list(SUBTYPES),
        "counts": {
            "patients": summary.patients,
            "series": summary.series,
            "images": summary.images,
            "dicom_files": summary.files,
            "stray_files": summary.stray_files,
            "label_rows": summary.label_rows,
            "positive_series": summary.positive_series,
            "positive_images": summary.positive_images,
        },
        "defects": {k: sorted(v) for k, v in found.items()},
        "series": truth_series,
    }
    path.write_text(json.dumps(truth, indent=1, sort_keys=False) + "\n")


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
    return plan_of(entry).phantom


def series_hu(entry: dict[str, Any]) -> np.ndarray:
    """The true HU of every slice of a truth series entry, int32, anatomical order.

    This is what each written file represents after the standard reading
    (``pixel * slope + intercept``, with the 12-bit correction where it
    applies): noise and rounding included, clipped to what the storage can
    hold, -2000 outside the field of view and the stored value of blank
    slices. Slices whose file is absent or corrupt get what they would have
    held.
    """
    plan = plan_of(entry)
    st = entry["storage"]
    storage = Storage(
        st["name"],
        int(st["bits_stored"]),
        int(st["pixel_representation"]),
        float(st["rescale_intercept"]),
    )
    blank_ids = set(entry["files"]["blank"])
    blank = np.array([i in blank_ids for i in entry["image_ids"]], dtype=bool)
    return true_hu(
        plan.phantom.hu,
        storage,
        descending=bool(entry["descending"]),
        fov=bool(entry["fov_minus2000"]),
        blank=blank,
    )
