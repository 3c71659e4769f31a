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

from ich3d.data.schema import SUBTYPES
from ich3d.errors import UserError
from ich3d.synth import phantom as ph
from ich3d.synth.defects import (
    DEFAULT_DEFECTS,
    DEFECT_NAMES,
    DefectRates,
    SeriesDefects,
    draw_series_defects,
    write_stray_file,
)
from ich3d.synth.dicom_file import encode_file
from ich3d.synth.storage import (
    STORAGE_P,
    STORAGES,
    Storage,
    descending_positions,
    true_hu,
    twelve_bit_storage,
)
from ich3d.synth.streams import (
    ANATOMY_KEY,
    DATASET_KEY,
    IDS_KEY,
    NOISE_KEY,
    PLAN_KEY,
    Ids,
    rng,
    seq,
)

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

IMAGES_DIR = "stage_2_train"
LABELS_CSV = "stage_2_train.csv"
TRUTH_JSON = "synth_truth.json"
TRUTH_FORMAT = "ich3d-synth-truth/1"

_WINDOWS = ((40, 80), (30, 80), (35, 100), (40, 150), (36, 80), (50, 100))
_SECOND_WINDOWS = ((80, 200), (600, 2800), (40, 80), (36, 80), (500, 2000))


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


@dataclass
class _SeriesPlan:
    geometry: ph.Geometry
    head: ph.Head
    phantom: ph.Phantom
    storage: Storage
    window: tuple[int, int]
    intercept_12bit: float


def _plan_series(
    seed: int,
    patient: int,
    study: int,
    size: int,
    slices: tuple[int, int],
    positive: bool,
    artefacts: bool = True,
) -> _SeriesPlan:
    gen = rng(seed, PLAN_KEY, patient, study)
    n = int(gen.integers(slices[0], slices[1] + 1))
    geometry = ph.sample_geometry(gen, size, n)
    head = ph.sample_head(gen, geometry, anatomy_rng=rng(seed, ANATOMY_KEY, patient))
    storage = STORAGES[list(STORAGES)[int(gen.choice(len(STORAGES), p=STORAGE_P))]]
    window = _WINDOWS[int(gen.integers(len(_WINDOWS)))]
    intercept_12 = float(gen.choice([0.0, 1.0]))
    phantom = ph.render_series(
        gen,
        geometry,
        head,
        positive=positive,
        noise_seed=seq(seed, NOISE_KEY, patient, study),
        artefacts=artefacts,
    )
    return _SeriesPlan(geometry, head, phantom, storage, window, intercept_12)


def _plan_of(entry: dict[str, Any]) -> _SeriesPlan:
    """Plan a truth series entry again (what its ``regenerate`` record says)."""
    r = entry["regenerate"]
    return _plan_series(
        int(r["seed"]),
        int(r["patient_index"]),
        int(r["study_index"]),
        int(r["size"]),
        (int(r["slices"][0]), int(r["slices"][1])),
        bool(r["planned_positive"]),
        bool(r.get("artefacts", True)),
    )


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
    ids = Ids()
    people: list[tuple[str, int]] = []
    for p in range(patients):
        prng = rng(seed, IDS_KEY, p)
        pid = ids.new(prng, 8)
        people.append((pid, int(prng.integers(studies[0], studies[1] + 1))))
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
        entry, blocks, written, stray = _make_series(
            seed, p, s, pid, size, slices, (p, s) in positives, defects, ids, img_dir, found, artefacts
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
    ids: Ids,
    img_dir: Path,
    found: dict[str, list[str]],
    artefacts: bool = True,
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]], int, int]:
    """Plan, draw the defects of, write and describe series ``s`` of patient ``p``.

    Returns:
        The truth entry, the label blocks ``(image_id, labels)`` of the CSV,
        the number of DICOM files written and whether a stray file was written.
    """
    plan = _plan_series(seed, p, s, size, slices, positive, artefacts)
    g = plan.geometry
    n = g.n_slices

    irng = rng(seed, IDS_KEY, p, s)
    study_uid = ids.new(irng, 10)
    series_uid = ids.new(irng, 10)
    image_ids = [ids.new(irng, 9) for _ in range(n)]
    dr = draw_series_defects(seed, p, s, n, defects)

    storage = plan.storage
    if dr.twelve_bit:
        storage = twelve_bit_storage(plan.intercept_12bit)
    elif dr.fov_minus2000 and storage.pixel_representation == 0:
        storage = STORAGES["int16_m1024"]

    if dr.descending:
        positions = descending_positions(g)
        orientation = [-1.0, 0.0, 0.0, *g.col_cosine.tolist()]
    else:
        positions = g.positions()
        orientation = g.orientation()
    labels = plan.phantom.labels[::-1] if dr.descending else plan.phantom.labels
    labels = labels.copy()
    # the anatomical index of each draw row: rows follow the anatomical order
    labels[dr.blank] = 0
    hu = true_hu(
        plan.phantom.hu, storage, descending=dr.descending, fov=dr.fov_minus2000, blank=dr.blank
    )
    raw = storage.encode(hu)

    study_id = ""  # RSNA leaves StudyID empty
    written = 0
    for k, image_id in enumerate(image_ids):
        if dr.orphan[k]:
            found["orphan_label"].append(image_id)
            continue
        data = raw[k].tobytes()
        if dr.corrupt[k]:
            data = data[: (len(data) // 4) * 2]
            found["corrupt"].append(image_id)
        wcv, wwv = _window_values(plan.window, dr, k)
        tags = {
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
        }
        (img_dir / f"{image_id}.dcm").write_bytes(encode_file(tags, data))
        written += 1
        if dr.multi_window[k]:
            found["multi_window"].append(image_id)
        if dr.blank[k]:
            found["blank"].append(image_id)
        if dr.missing[k]:
            found["missing_label"].append(image_id)
    for k in np.nonzero(dr.duplicate)[0]:
        found["duplicate_rows"].append(image_ids[int(k)])
    blocks = [(image_ids[k], labels[k]) for k in range(n) if not dr.missing[k]]

    stray_name = None
    if dr.stray:
        stray_name = write_stray_file(seed, p, s, ids, img_dir)
        found["not_dicom"].append(f"{IMAGES_DIR}/{stray_name}")
    if dr.twelve_bit:
        found["twelve_bit"].append(series_uid)
    if dr.fov_minus2000:
        found["fov_minus2000"].append(series_uid)
    if dr.descending:
        found["descending"].append(series_uid)

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
        "window": list(plan.window),
        "twelve_bit": dr.twelve_bit,
        "fov_minus2000": dr.fov_minus2000,
        "descending": dr.descending,
        "image_ids": image_ids,
        "positions": [[round(float(v), 6) for v in row] for row in positions],
        "labels": labels.astype(int).tolist(),
        "bleeds": _bleeds_truth(plan.phantom, descending=dr.descending),
        "calcifications": [c.kind for c in plan.head.calcifications],
        "anatomy": {  # per patient: the same in all of a patient's studies
            "skull_mm": round(plan.head.skull, 3),
            "ventricle_mm": round(plan.head.ventricle, 3),
            "grey_hu": round(plan.head.hu_grey, 2),
            "white_hu": round(plan.head.hu_white, 2),
        },
        "files": {
            "absent": [image_ids[k] for k in np.nonzero(dr.orphan)[0]],
            "corrupt": [image_ids[k] for k in np.nonzero(dr.corrupt)[0]],
            "blank": [image_ids[k] for k in np.nonzero(dr.blank)[0]],
            "no_label_rows": [image_ids[k] for k in np.nonzero(dr.missing)[0]],
            "duplicate_rows": [image_ids[k] for k in np.nonzero(dr.duplicate)[0]],
            "multi_window": [image_ids[k] for k in np.nonzero(dr.multi_window)[0]],
            "stray": stray_name,
        },
        "regenerate": {
            "seed": seed,
            "patient_index": p,
            "study_index": s,
            "size": size,
            "slices": list(slices),
            "planned_positive": positive,
            **({} if artefacts else {"artefacts": False}),  # the default adds no key
        },
    }
    return entry, blocks, written, int(dr.stray)


def _window_values(
    window: tuple[int, int], dr: SeriesDefects, k: int
) -> tuple[str | list[str], str | list[str]]:
    """WindowCenter and WindowWidth of image ``k``: two values each for a multi-window image."""
    wc, ww = window
    if not dr.multi_window[k]:
        return str(wc), str(ww)
    if dr.detail[1] < 0.5:  # RSNA style: ['00036', '00036']
        return [f"{wc:05d}", f"{wc:05d}"], [f"{ww:05d}", f"{ww:05d}"]
    second = _SECOND_WINDOWS[int(dr.detail[0] * len(_SECOND_WINDOWS))]
    return [str(wc), str(second[0])], [str(ww), str(second[1])]


def _bleeds_truth(phantom: ph.Phantom, *, descending: bool) -> list[dict[str, Any]]:
    """Subtype, density and first/last slice (in file order) of each painted bleed."""
    n_slices = phantom.labels.shape[0]
    bleeds = []
    for b in phantom.bleeds:
        rows = np.nonzero((phantom.bleed == b.code).any(axis=(1, 2)))[0]
        if descending:
            rows = n_slices - 1 - rows
        bleeds.append(
            {
                "subtype": b.subtype,
                "density_hu": round(b.density, 1),
                "slices": [int(rows.min()), int(rows.max())] if rows.size else [],
            }
        )
    return bleeds


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
    return _plan_of(entry).phantom


def series_hu(entry: dict[str, Any]) -> np.ndarray:
    """The true HU of every slice of a truth series entry, int32, anatomical order.

    This is what each written file represents after the standard reading
    (``pixel * slope + intercept``, with the 12-bit correction where it
    applies): noise and rounding included, clipped to what the storage can
    hold, -2000 outside the field of view and the stored value of blank
    slices. Slices whose file is absent or corrupt get what they would have
    held.
    """
    plan = _plan_of(entry)
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
