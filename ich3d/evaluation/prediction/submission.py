"""The RSNA 2019 submission file: ``submission.csv`` with one ``ID_<image>_<subtype>,Label`` row per image and target.

``ich3d predict RUN_DIR stage_2_test --format rsna`` writes it for a run trained on
the six labels (``data.targets: all``). Rows:

* every image of the input that was ingested: the stage-1 slice CNN's six
  probabilities for that image (its slice of its series; what the challenge scored);
* every input **DICOM** file the ingest skipped (unreadable, localizer, other series
  of the study, too few slices ...): the **fallback** value of each target, the mean of
  that target's probabilities over the ingested images (0.5 when none was
  ingested), so an uninformed row costs about the average; these images are listed
  with their reason in ``submission_fallback.csv`` (``image_id, reason``). A file that
  is no DICOM image at all (not DICOM, or a DICOMDIR) and is not named ``*.dcm`` (a
  stray ``notes.txt``) gets no row: the challenge rejects unknown IDs. A corrupt
  ``ID_x.dcm`` still gets its fallback rows (its ID is one the challenge expects).

With a sample submission (``--sample-submission CSV``, its ``ID`` column) the file has
exactly the sample's rows, in its order: predictions where the image was ingested, the
fallback value of the row's target elsewhere (:func:`restrict_to_sample`).

Rows are sorted by image id, targets in the challenge's order
(:data:`~ich3d.data.targets.RSNA_TARGETS`); each image appears exactly once per
target and every value is in ``[0, 1]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.data.cache import atomic_write_csv
from ich3d.data.dicom import REASON_DICOMDIR, REASON_NOT_DICOM, image_id_of
from ich3d.data.targets import RSNA_TARGETS
from ich3d.errors import UserError

__all__ = [
    "FALLBACK_DEFAULT",
    "NOT_IMAGES",
    "check_targets",
    "skipped_images",
    "rsna_submission",
    "restrict_to_sample",
    "write_submission",
]

log = logging.getLogger(__name__)

#: Fallback probability of a target when no image at all was ingested.
FALLBACK_DEFAULT = 0.5

#: Skip reasons of input files that are no image at all: no submission row.
NOT_IMAGES: frozenset[str] = frozenset({REASON_NOT_DICOM, REASON_DICOMDIR})


def check_targets(targets: Sequence[str]) -> None:
    """Refuse a run that does not predict every RSNA label.

    Raises:
        UserError: names the missing labels.
    """
    missing = [t for t in RSNA_TARGETS if t not in targets]
    if missing:
        raise UserError(
            f"--format rsna needs a run trained on the six RSNA labels (data.targets: all); this run "
            f"predicts {', '.join(targets)} (missing: {', '.join(missing)})"
        )


def skipped_images(skipped: pd.DataFrame, ingested: set[str]) -> pd.DataFrame:
    """``image_id, reason`` of the input files the ingest skipped (one row per image).

    ``skipped`` is the cache's ``skipped.csv`` (``item`` = the file's path relative to
    the images folder, ``#<frame>`` for a frame); rows whose image was ingested after
    all (a frame of a kept file) and files that are no DICOM image (:data:`NOT_IMAGES`)
    unless named ``*.dcm`` are dropped.
    """
    rows = {}
    for item, reason in zip(skipped["item"].astype(str), skipped["reason"].astype(str), strict=True):
        if reason in NOT_IMAGES and not item.lower().endswith(".dcm"):
            continue  # a stray non-image file: no submission row
        path, _, frame = item.partition("#")
        image = image_id_of(path) + (f"#{frame}" if frame else "")
        if image not in ingested and image not in rows:
            rows[image] = reason
    return pd.DataFrame({"image_id": list(rows), "reason": list(rows.values())})


def rsna_submission(
    images: pd.DataFrame, targets: Sequence[str], fallback_images: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Build the submission rows.

    Args:
        images: one row per ingested image: ``image_id`` and one probability column
            per target (named as the target).
        targets: the run's targets; must include every RSNA label.
        fallback_images: :func:`skipped_images` (images without a prediction).

    Returns:
        ``(submission, fallback)``: the ``ID, Label`` frame and the fallback value of
        each target.

    Raises:
        UserError: the run does not predict the six RSNA labels, or an image repeats.
    """
    check_targets(targets)
    if images["image_id"].duplicated().any():
        raise UserError("an image id occurs twice among the ingested images; the submission needs unique ids")
    fallback = {
        t: float(images[t].mean()) if len(images) else FALLBACK_DEFAULT for t in RSNA_TARGETS
    }
    extra = fallback_images[~fallback_images["image_id"].isin(set(images["image_id"]))]
    filled = pd.DataFrame({"image_id": extra["image_id"].to_numpy(), **{t: fallback[t] for t in RSNA_TARGETS}})
    every = pd.concat([images[["image_id", *RSNA_TARGETS]], filled], ignore_index=True)
    every = every.sort_values("image_id", kind="stable").reset_index(drop=True)
    ids = np.repeat(every["image_id"].to_numpy(dtype=object), len(RSNA_TARGETS))
    names = np.tile(np.array(RSNA_TARGETS, dtype=object), len(every))
    values = every[list(RSNA_TARGETS)].to_numpy(np.float64).reshape(-1)
    sub = pd.DataFrame({"ID": [f"{i}_{t}" for i, t in zip(ids, names, strict=True)], "Label": np.clip(values, 0, 1)})
    return sub, fallback


def restrict_to_sample(
    sub: pd.DataFrame, sample: pd.DataFrame, fallback: dict[str, float]
) -> tuple[pd.DataFrame, int]:
    """The submission rows of a sample submission's IDs, in its order.

    Args:
        sub: :func:`rsna_submission`'s ``ID, Label`` frame.
        sample: a sample submission with an ``ID`` column (``ID_<image>_<target>``).
        fallback: each target's fallback value (for IDs without a prediction).

    Returns:
        ``(rows, n_filled)``: the ``ID, Label`` frame and how many IDs got a fallback value.

    Raises:
        UserError: no ``ID`` column, or an ID whose target is not an RSNA label.
    """
    if "ID" not in sample.columns:
        raise UserError(f"--sample-submission needs an ID column (columns: {', '.join(map(str, sample.columns))})")
    ids = sample["ID"].astype(str)
    values = ids.map(sub.set_index("ID")["Label"])
    missing = values.isna()
    for i in ids[missing].index:
        target = ids[i].rsplit("_", 1)[-1]
        if target not in fallback:
            raise UserError(f"--sample-submission: ID {ids[i]!r} does not end in an RSNA label ({', '.join(RSNA_TARGETS)})")
        values[i] = fallback[target]
    return pd.DataFrame({"ID": ids.to_numpy(), "Label": values.to_numpy(np.float64)}), int(missing.sum())


def write_submission(
    outs: Any,
    targets: Sequence[str],
    cache: Any,
    out_dir: Path,
    files: dict[str, Path],
    sample_submission: str | Path | None = None,
) -> dict[str, Any]:
    """``submission.csv`` and ``submission_fallback.csv`` from the stage-1 per-image probabilities.

    Args:
        outs: the stage-1 ``SliceOutputs`` of the cache's volumes (with ``target_probs``).
        targets: the run's targets.
        cache: the ingest cache (its ``slices.csv`` and ``skipped.csv``).
        out_dir: the output folder.
        files: name -> path of the files written (updated).
        sample_submission: a sample submission CSV: only its IDs, in its order.

    Returns:
        ``predict.json``'s ``submission`` entry.
    """
    parts = []
    for key, p in zip(outs.keys, outs.target_probs, strict=True):
        part = pd.DataFrame(p, columns=list(targets))
        part.insert(0, "slice_index", range(len(p)))
        part.insert(0, "key", key)
        parts.append(part)
    probs = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["key", "slice_index", *targets])
    ids = cache.slices[["key", "slice_index", "image_id"]]
    images = probs.merge(ids, on=["key", "slice_index"], how="left", validate="one_to_one")
    if images["image_id"].isna().any():
        raise RuntimeError("slice probabilities and slices.csv disagree on the slices of a volume")
    ingested = set(cache.slices["image_id"].astype(str))
    skipped_csv = Path(cache.root) / "skipped.csv"
    skipped = pd.read_csv(skipped_csv, dtype=str).fillna("") if skipped_csv.is_file() else pd.DataFrame(
        {"item": [], "reason": []}
    )
    fallback_images = skipped_images(skipped, ingested)
    sub, fallback = rsna_submission(images, targets, fallback_images)
    info: dict[str, Any] = {}
    if sample_submission is not None:
        path = Path(sample_submission)
        if not path.is_file():
            raise UserError(f"--sample-submission {path}: no such file")
        sub, filled = restrict_to_sample(sub, pd.read_csv(path, dtype={"ID": str}), fallback)
        info["sample_submission_filled"] = filled
        if filled:
            log.warning("%d row(s) of the sample submission have no prediction: fallback values", filled)
    files["submission"] = out_dir / "submission.csv"
    atomic_write_csv(files["submission"], sub)
    files["submission_fallback"] = out_dir / "submission_fallback.csv"
    atomic_write_csv(files["submission_fallback"], fallback_images)
    if len(fallback_images):
        log.warning("%d input image(s) were not ingested: fallback values in submission.csv, listed in %s",
                    len(fallback_images), files["submission_fallback"])
    return {
        "n_images": int(len(sub) // 6),
        "n_rows": int(len(sub)),
        "n_fallback_images": int(len(fallback_images)),
        "fallback": fallback,
        **info,
    }
