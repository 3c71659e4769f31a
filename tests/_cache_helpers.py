"""Write a tiny fake ingest cache directly (npy + CSVs per ich3d.data.schema).

Lets the split and DataModule tests run without the DICOM ingest. Each volume
(``T`` slices of ``size x size``, int16 HU, slices ascending) is a simple head:

- slice 0: neck, a soft-tissue disc (40 HU) with no bone  -> not cranial cavity;
- slice 1 and slice T-1: skull caps, solid bone discs (1000 HU) -> not cavity;
- slices 2..T-2: a bone ring (1000 HU) around brain (30 HU), a scalp ring
  (40 HU) outside the bone                                    -> cavity;
- positive volumes: a 75 HU bleed in two contiguous cavity slices, labelled
  ``subdural`` and ``any``; all other slices are negative.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ich3d.data.schema import (
    HU_MIN,
    LABEL_COLUMNS,
    SKIPPED_COLUMNS,
    SLICE_COLUMNS,
    UNLABELED,
    VOLUME_COLUMNS,
    series_key,
)


@dataclass
class FakeCache:
    root: Path
    volumes: pd.DataFrame
    slices: pd.DataFrame
    cavity: dict[str, np.ndarray]  # key -> bool per slice (expected rule outcome)


def head_volume(
    n_slices: int, size: int, rng: np.random.Generator, bleed: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (int16 HU volume, expected cavity mask per slice)."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2.0
    r = np.hypot(yy - c, xx - c)
    r_out, r_in = 0.40 * size, 0.34 * size
    vol = np.full((n_slices, size, size), HU_MIN, dtype=np.int16)
    cavity = np.zeros(n_slices, dtype=bool)
    for t in range(n_slices):
        s = vol[t]
        if t == 0:
            s[r <= 0.25 * size] = 40
        elif t == 1 or t == n_slices - 1:
            s[r <= 0.3 * size] = 1000
        else:
            s[r <= r_out + 1.5] = 40
            s[r <= r_out] = 1000
            brain = r <= r_in
            s[brain] = 30 + rng.integers(-4, 5, size=int(brain.sum()))
            cavity[t] = True
    if bleed is not None:
        for t in bleed:
            assert cavity[t]
            blob = np.hypot(yy - c + 0.15 * size, xx - c - 0.1 * size) <= 0.08 * size
            vol[t][blob] = 75
    return vol, cavity


def write_fake_cache(
    root: Path,
    *,
    patients: int = 12,
    size: int = 32,
    slices: tuple[int, int] = (6, 10),
    positive_fraction: float = 0.5,
    max_volumes_per_patient: int = 2,
    labeled: bool = True,
    complete: bool = True,
    sizes: dict[int, int] | None = None,
    seed: int = 0,
) -> FakeCache:
    """Write a fake cache under ``root`` and return its tables.

    Args:
        sizes: optional volume number -> in-plane size override (mixed-size caches).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "volumes").mkdir(parents=True, exist_ok=True)
    vrows, srows, cavity = [], [], {}
    n_pos = int(round(patients * positive_fraction))
    vol_no = 0
    for p in range(patients):
        pid = f"ID_pat{p:04d}"
        positive_patient = p < n_pos
        n_vol = int(rng.integers(1, max_volumes_per_patient + 1))
        for v in range(n_vol):
            series_uid = f"ID_series_{p}_{v}"
            key = series_key(series_uid)
            t = int(rng.integers(slices[0], slices[1] + 1))
            positive = positive_patient and v == 0
            bleed = None
            if positive:
                b0 = int(rng.integers(2, t - 2))
                bleed = (b0, b0 + 1) if b0 + 1 <= t - 2 else (b0 - 1, b0)
            sz = (sizes or {}).get(vol_no, size)
            vol, cav = head_volume(t, sz, rng, bleed)
            vol_no += 1
            cavity[key] = cav
            rel = f"volumes/{key}.npy"
            np.save(root / rel, vol)
            slice_labels = np.zeros((t, len(LABEL_COLUMNS)), dtype=int)
            if bleed is not None:
                for b in bleed:
                    slice_labels[b, LABEL_COLUMNS.index("subdural")] = 1
                    slice_labels[b, LABEL_COLUMNS.index("any")] = 1
            if not labeled:
                slice_labels[:] = UNLABELED
            for i in range(t):
                srows.append(
                    {
                        "image_id": f"ID_{p:03d}{v}{i:04d}",
                        "patient_id": pid,
                        "study_uid": f"ID_study_{p}_{v}",
                        "series_uid": series_uid,
                        "key": key,
                        "slice_index": i,
                        "position": 5.0 * i,
                        **dict(zip(LABEL_COLUMNS, slice_labels[i].tolist(), strict=True)),
                    }
                )
            vlabels = slice_labels.max(axis=0) if labeled else slice_labels[0]
            vrows.append(
                {
                    "key": key,
                    "patient_id": pid,
                    "study_uid": f"ID_study_{p}_{v}",
                    "series_uid": series_uid,
                    "n_slices": t,
                    "height": sz,
                    "width": sz,
                    "pixel_spacing": 0.5,
                    "slice_spacing": 5.0,
                    "gap": 0,
                    **dict(zip(LABEL_COLUMNS, vlabels.tolist(), strict=True)),
                    "path": rel,
                }
            )
    volumes = pd.DataFrame(vrows, columns=list(VOLUME_COLUMNS))
    slices_df = pd.DataFrame(srows, columns=list(SLICE_COLUMNS))
    volumes.to_csv(root / "volumes.csv", index=False)
    slices_df.to_csv(root / "slices.csv", index=False)
    pd.DataFrame(columns=list(SKIPPED_COLUMNS)).to_csv(root / "skipped.csv", index=False)
    (root / "ingest.json").write_text(json.dumps({"complete": complete, "fake": True}))
    return FakeCache(root, volumes, slices_df, cavity)
