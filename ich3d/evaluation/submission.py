"""The RSNA 2019 submission file: ``submission.csv`` with one ``ID_<image>_<subtype>,Label`` row per image and target.

``ich3d predict RUN_DIR stage_2_test --format rsna`` writes it for a run trained on
the six labels (``data.targets: all``). Rows:

* every image of the input that was ingested: the stage-1 slice CNN's six
  probabilities for that image (its slice of its series; what the challenge scored);
* every input file the ingest skipped (unreadable, localizer, other series of the
  study, too few slices ...): the **fallback** value of each target, the mean of
  that target's probabilities over the ingested images (0.5 when none was
  ingested), so an uninformed row costs about the average; these images are listed
  with their reason in ``submission_fallback.csv`` (``image_id, reason``).

Rows are sorted by image id, targets in the challenge's order
(:data:`~ich3d.data.targets.RSNA_TARGETS`); each image appears exactly once per
target and every value is in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ich3d.data.dicom import image_id_of
from ich3d.data.targets import RSNA_TARGETS
from ich3d.errors import UserError

__all__ = ["FALLBACK_DEFAULT", "check_targets", "skipped_images", "rsna_submission"]

#: Fallback probability of a target when no image at all was ingested.
FALLBACK_DEFAULT = 0.5


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
    all (a frame of a kept file) are dropped.
    """
    rows = {}
    for item, reason in zip(skipped["item"].astype(str), skipped["reason"].astype(str), strict=True):
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
