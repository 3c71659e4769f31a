"""One synthetic series: its plan (geometry, head, phantom, storage), its files and truth.

:func:`make_series` plans series ``s`` of patient ``p`` from the seed, draws its
defects, writes its DICOM files and returns its truth entry and label blocks;
:func:`plan_of` plans a truth entry again (what :func:`~ich3d.synth.series_hu`
re-renders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ich3d.synth import phantom as ph
from ich3d.synth.defects import (
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
from ich3d.synth.streams import ANATOMY_KEY, IDS_KEY, NOISE_KEY, PLAN_KEY, Ids, rng, seq

__all__ = ["SeriesPlan", "plan_series", "plan_of", "make_series", "IMAGES_DIR"]

IMAGES_DIR = "stage_2_train"

_WINDOWS = ((40, 80), (30, 80), (35, 100), (40, 150), (36, 80), (50, 100))
_SECOND_WINDOWS = ((80, 200), (600, 2800), (40, 80), (36, 80), (500, 2000))


@dataclass
class SeriesPlan:
    geometry: ph.Geometry
    head: ph.Head
    phantom: ph.Phantom
    storage: Storage
    window: tuple[int, int]
    intercept_12bit: float


def plan_series(
    seed: int,
    patient: int,
    study: int,
    size: int,
    slices: tuple[int, int],
    positive: bool,
    artefacts: bool = True,
) -> SeriesPlan:
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
    return SeriesPlan(geometry, head, phantom, storage, window, intercept_12)


def plan_of(entry: dict[str, Any]) -> SeriesPlan:
    """Plan a truth series entry again (what its ``regenerate`` record says)."""
    r = entry["regenerate"]
    return plan_series(
        int(r["seed"]),
        int(r["patient_index"]),
        int(r["study_index"]),
        int(r["size"]),
        (int(r["slices"][0]), int(r["slices"][1])),
        bool(r["planned_positive"]),
        bool(r.get("artefacts", True)),
    )


def make_series(
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
    plan = plan_series(seed, p, s, size, slices, positive, artefacts)
    g = plan.geometry
    n = g.n_slices

    irng = rng(seed, IDS_KEY, p, s)
    study_uid, series_uid = ids.new(irng, 10), ids.new(irng, 10)
    image_ids = [ids.new(irng, 9) for _ in range(n)]
    dr = draw_series_defects(seed, p, s, n, defects)

    storage = _storage_of(plan, dr)
    positions, orientation = _stored_geometry(g, dr)
    labels = plan.phantom.labels[::-1] if dr.descending else plan.phantom.labels
    labels = labels.copy()
    # the anatomical index of each draw row: rows follow the anatomical order
    labels[dr.blank] = 0
    hu = true_hu(
        plan.phantom.hu, storage, descending=dr.descending, fov=dr.fov_minus2000, blank=dr.blank
    )
    raw = storage.encode(hu)

    study_id = ""  # RSNA leaves StudyID empty
    common = dict(patient=pid, study=study_uid, series=series_uid, study_id=study_id)
    common.update(orientation=orientation, size=size, spacing=g.pixel_spacing)
    common.update(bits_stored=storage.bits_stored, intercept=storage.intercept)
    common["pixel_representation"] = storage.pixel_representation
    written = _write_files(img_dir, image_ids, raw, positions, common, plan.window, dr, found)
    for k in np.nonzero(dr.duplicate)[0]:
        found["duplicate_rows"].append(image_ids[int(k)])
    blocks = [(image_ids[k], labels[k]) for k in range(n) if not dr.missing[k]]

    stray_name = None
    if dr.stray:
        stray_name = write_stray_file(seed, p, s, ids, img_dir)
        found["not_dicom"].append(f"{IMAGES_DIR}/{stray_name}")
    for name in ("twelve_bit", "fov_minus2000", "descending"):
        if getattr(dr, name):
            found[name].append(series_uid)

    entry = {
        "patient_id": pid,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "study_id": study_id,
        "patient_index": p,
        "study_index": s,
        "positive": bool(labels[:, -1].any()) if positive else False,
        **_geometry_truth(plan, storage, orientation, size),
        "twelve_bit": dr.twelve_bit,
        "fov_minus2000": dr.fov_minus2000,
        "descending": dr.descending,
        "image_ids": image_ids,
        "positions": [[round(float(v), 6) for v in row] for row in positions],
        "labels": labels.astype(int).tolist(),
        "bleeds": _bleeds_truth(plan.phantom, descending=dr.descending),
        **_head_truth(plan),
        "files": _files_truth(image_ids, dr, stray_name),
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


def _storage_of(plan: SeriesPlan, dr: SeriesDefects) -> Storage:
    """The pixel storage of a series: its plan's, or what its 12-bit / FOV defect needs."""
    if dr.twelve_bit:
        return twelve_bit_storage(plan.intercept_12bit)
    if dr.fov_minus2000 and plan.storage.pixel_representation == 0:
        return STORAGES["int16_m1024"]
    return plan.storage


def _stored_geometry(g: ph.Geometry, dr: SeriesDefects) -> tuple[np.ndarray, list[float]]:
    """Positions and orientation as the files store them (descending: reversed, flipped)."""
    if dr.descending:
        return descending_positions(g), [-1.0, 0.0, 0.0, *g.col_cosine.tolist()]
    return g.positions(), g.orientation()


def _write_files(
    img_dir: Path,
    image_ids: list[str],
    raw: np.ndarray,
    positions: np.ndarray,
    common: dict[str, Any],
    window: tuple[int, int],
    dr: SeriesDefects,
    found: dict[str, list[str]],
) -> int:
    """Write the series' DICOM files (absent, corrupt, multi-window ones as drawn); how many."""
    written = 0
    for k, image_id in enumerate(image_ids):
        if dr.orphan[k]:
            found["orphan_label"].append(image_id)
            continue
        data = raw[k].tobytes()
        if dr.corrupt[k]:
            data = data[: (len(data) // 4) * 2]
            found["corrupt"].append(image_id)
        wcv, wwv = _window_values(window, dr, k)
        tags = {
            "sop": image_id,
            "patient": common["patient"],
            "study": common["study"],
            "series": common["series"],
            "study_id": common["study_id"],
            "position": positions[k].tolist(),
            "orientation": common["orientation"],
            "size": common["size"],
            "spacing": common["spacing"],
            "bits_stored": common["bits_stored"],
            "pixel_representation": common["pixel_representation"],
            "window_center": wcv,
            "window_width": wwv,
            "intercept": common["intercept"],
        }
        (img_dir / f"{image_id}.dcm").write_bytes(encode_file(tags, data))
        written += 1
        if dr.multi_window[k]:
            found["multi_window"].append(image_id)
        if dr.blank[k]:
            found["blank"].append(image_id)
        if dr.missing[k]:
            found["missing_label"].append(image_id)
    return written


def _geometry_truth(
    plan: SeriesPlan, storage: Storage, orientation: list[float], size: int
) -> dict[str, Any]:
    g = plan.geometry
    return {
        "n_slices": g.n_slices,
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
    }


def _head_truth(plan: SeriesPlan) -> dict[str, Any]:
    return {
        "calcifications": [c.kind for c in plan.head.calcifications],
        "anatomy": {  # per patient: the same in all of a patient's studies
            "skull_mm": round(plan.head.skull, 3),
            "ventricle_mm": round(plan.head.ventricle, 3),
            "grey_hu": round(plan.head.hu_grey, 2),
            "white_hu": round(plan.head.hu_white, 2),
        },
    }


def _files_truth(image_ids: list[str], dr: SeriesDefects, stray: str | None) -> dict[str, Any]:
    def where(mask: np.ndarray) -> list[str]:
        return [image_ids[k] for k in np.nonzero(mask)[0]]

    return {
        "absent": where(dr.orphan),
        "corrupt": where(dr.corrupt),
        "blank": where(dr.blank),
        "no_label_rows": where(dr.missing),
        "duplicate_rows": where(dr.duplicate),
        "multi_window": where(dr.multi_window),
        "stray": stray,
    }


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
