"""Volume and slice probabilities of a trained run on new data (``ich3d predict``).

``INPUT`` is a folder of DICOM files (any number of series; ingested, without
labels, into ``OUT/cache``; re-running reuses that cache) or an ingest cache (a
folder with ``ingest.json``). Writes to ``OUT`` (default ``RUN_DIR/predict/<INPUT
name>``):

* ``volumes.csv``: ``key, n_slices, probability`` (the volume-model method of the
  preferred finished stage, in :func:`~ich3d.runs.checkpoints.best_volume_stage`'s
  order, or ``stage``),
  plus ``label`` when the cache is labeled, plus one column per extra scoring
  method asked for (``methods``, e.g. ``max``, ``svm``);
* ``slices.csv``: ``key, slice_index, probability`` of the stage-1 slice CNN on
  every slice (slice order along the patient axis), plus ``label`` when labeled;
* ``predict.json``: the run, the stage, device, timing, counts.

Volumes are named by their hashed key; ``uids`` adds ``series_uid``,
``study_uid`` and ``patient_id`` columns (identifiers: keep such files local).
The scores are computed by the same scoring methods and shared stage-1 pass as
``ich3d evaluate`` (:class:`~ich3d.evaluation.context.EvaluationContext`), so they
equal its numbers for the same volumes. Every checkpoint used must have been
trained on the model inputs (windows, depth pool, in-plane size, label) the
run's config gives.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["UID_COLUMNS", "predict_run"]

log = logging.getLogger(__name__)

#: Identifier columns added by ``uids``.
UID_COLUMNS: tuple[str, ...] = ("series_uid", "study_uid", "patient_id")


def predict_run(
    run_dir: str | Path,
    input: str | Path,
    out: str | Path | None = None,
    *,
    uids: bool = False,
    workers: int = 1,
    device: str = "auto",
    stage: str | None = None,
    methods: Sequence[str] = (),
    progress: bool = True,
    format: str = "ich3d",
) -> dict[str, Any]:
    """Predict volume and slice probabilities of a run on a DICOM folder or an ingest cache.

    Args:
        run_dir: the run directory.
        input: a folder of DICOM files, or an ingest cache (has ``ingest.json``).
        out: output folder; default ``RUN_DIR/predict/<input name>``.
        uids: add the identifier columns :data:`UID_COLUMNS` (default False).
        workers: ingest processes (default 1).
        device: ``auto`` (default), ``cpu``, ``cuda[:i]``.
        stage: volume model; default the preferred finished one (declared ``preference``,
            :func:`~ich3d.runs.checkpoints.best_volume_stage`'s order; a stage without
            ``result.json`` only when no other has a checkpoint).
        methods: more scoring methods, one ``volumes.csv`` column each (``svm`` needs
            the run's training cache: it is fitted on the training split).
        progress: progress bars (default True).
        format: ``ich3d`` (default: the files above) or ``rsna``: also
            ``submission.csv`` in the RSNA 2019 challenge format
            (:mod:`ich3d.evaluation.submission`; needs a run trained on the six labels)
            and ``submission_fallback.csv``.

    Returns:
        The content of ``predict.json`` plus ``"files"`` (name -> path).

    Raises:
        UserError: bad run directory or input, no checkpoint, bad worker count, an
            unknown method, a checkpoint trained on other model inputs.
    """
    import pandas as pd

    from ich3d.data.cache import atomic_write_csv, atomic_write_text, open_cache
    from ich3d.errors import UserError
    from ich3d.evaluation.context import EvaluationContext
    from ich3d.evaluation.inference import hardware_info, resolve_device
    from ich3d.evaluation.methods import get_method, slice_stage_name
    from ich3d.runs.checkpoints import best_volume_stage
    from ich3d.runs.run_dir import open_run_dir
    from ich3d.stages import get_stage, volume_stages

    run = open_run_dir(run_dir)
    config = run.load_config()
    if format not in ("ich3d", "rsna"):
        raise UserError(f"--format {format!r}: expected ich3d or rsna")
    if format == "rsna":
        from ich3d.data.targets import model_targets
        from ich3d.evaluation.submission import check_targets

        check_targets(model_targets(config.data))
        if not run.best_ckpt(slice_stage_name()).is_file():
            raise UserError(f"--format rsna needs the stage-1 slice CNN ({slice_stage_name()}/best.ckpt) of {run.path}")
    input = Path(input).expanduser()
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if not input.is_dir():
        raise UserError(f"INPUT {input} is not a folder (expected a folder of DICOM files or an ingest cache)")
    extra_methods = [get_method(m) for m in dict.fromkeys(methods)]
    out_dir = Path(out) if out is not None else run.path / "predict" / input.resolve().name
    dev = resolve_device(device)

    slice_stage = slice_stage_name()
    volume_names = [s.name for s in volume_stages()]
    has_volume = any(run.best_ckpt(s).is_file() for s in volume_names)
    has_slice = run.best_ckpt(slice_stage).is_file()
    if stage is not None:
        if not get_stage(stage).is_volume:
            raise UserError(f"--stage {stage}: not a volume stage; expected one of {', '.join(volume_names)}")
        if not run.best_ckpt(stage).is_file():
            raise UserError(f"{run.path} has no {stage}/best.ckpt")
    if not has_volume and not has_slice:
        names = ", ".join(f"{s}/best.ckpt" for s in [slice_stage, *volume_names])
        raise UserError(f"{run.path} has no checkpoint ({names}); train first")
    for m in extra_methods:
        if not run.best_ckpt(m.needs).is_file():
            raise UserError(f"--methods {m.name}: {run.path} has no {m.needs}/best.ckpt")

    # ---- the input as an ingest cache
    skipped: int | None = None
    if (input / "ingest.json").is_file():
        cache_dir = input
    else:
        from ich3d.data.ingest import run_ingest

        if out_dir.resolve().is_relative_to(input.resolve()):
            raise UserError(
                f"--out {out_dir} is inside INPUT {input}; the outputs would be read as input "
                "files next time: choose an output folder outside INPUT"
            )
        cache_dir = out_dir / "cache"
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("ingesting %s into %s", input, cache_dir)
        summary = run_ingest(
            input, None, cache_dir, workers=workers, min_slices=config.data.min_slices, progress=progress
        )
        log.info("%s", summary.format())
        skipped = summary.skipped_total
    cache = open_cache(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labeled = cache.labeled
    label = config.data.label
    vstage = None
    if stage is not None:
        vstage = stage
    elif has_volume:
        # the preferred volume model whose stage finished; a crashed stage's best.ckpt only if nothing else
        done = [s for s in volume_names if run.best_ckpt(s).is_file() and run.is_done(s)]
        vstage = done[0] if done else best_volume_stage(run)
    ctx = EvaluationContext(
        run,
        config,
        device=dev,
        progress=progress,
        data=Path(cache_dir),
        labelled_only=False,
        features=any(m.needs == slice_stage for m in extra_methods),
        check_all_inputs=False,  # new data: what the network sees must match, not the cache
    )
    used = [s for s in dict.fromkeys([vstage, slice_stage if has_slice else None, *(m.needs for m in extra_methods)]) if s]
    ctx.check_stages(used)
    for s in used:
        if not run.is_done(s):
            log.warning("stage %s of %s did not finish (no result.json): predicting with its best.ckpt", s, run.path)

    files: dict[str, Path] = {}
    info: dict[str, Any] = {
        "run": str(run.path),
        "cache": str(Path(cache_dir).resolve()),
        "device": dev.type,
        "hardware": hardware_info(dev),
        "labeled": labeled,
        "uids": bool(uids),
        "ingest_skipped": skipped,
    }
    ids = cache.volumes.set_index("key")
    table = ctx.table("evaluated")

    # ---- volume model (the volume-model method of the stage) and the extra methods
    vol = table[["key", "n_slices"]].copy()
    if vstage is not None:
        scores = get_method(vstage).score(ctx, "evaluated")
        ctx.release_model()
        vol = vol.merge(pd.DataFrame({"key": scores.keys, "probability": scores.scores}), on="key", how="left",
                        validate="one_to_one")
        info.update({"stage": vstage, "n_volumes": len(vol), "seconds_per_volume": float(scores.seconds or 0.0)})
    else:
        log.warning("%s has no volume model (%s); writing slice probabilities only", run.path, ", ".join(volume_names))
        info["stage"] = None
    for m in extra_methods:
        got = m.score(ctx, "evaluated")
        col = pd.Series(got.scores, index=got.keys, dtype="float64")
        vol[m.name] = vol["key"].map(col).to_numpy()
        ctx.release_model()
    if extra_methods:
        info["methods"] = [m.name for m in extra_methods]
    if vstage is not None or extra_methods:
        if labeled:
            vol["label"] = table["label"].to_numpy()
        cols = ["key", "n_slices", *(["probability"] if vstage else []), *(["label"] if labeled else [])]
        vol = vol[[*cols, *[m.name for m in extra_methods if m.name not in cols]]]
        if uids:
            for c in UID_COLUMNS:
                vol[c] = vol["key"].map(ids[c])
        files["volumes"] = out_dir / "volumes.csv"
        atomic_write_csv(files["volumes"], vol)
        info.setdefault("n_volumes", len(vol))

    # ---- stage-1 slice probabilities (the pass the slice methods share)
    if has_slice:
        outs = ctx.slice_outputs("evaluated")
        parts = [
            pd.DataFrame({"key": k, "slice_index": range(len(p)), "probability": p})
            for k, p in zip(outs.keys, outs.probs, strict=True)
        ]
        sl = pd.concat(parts, ignore_index=True)
        if labeled:
            lab = cache.slices[["key", "slice_index", label]].rename(columns={label: "label"})
            sl = sl.merge(lab, on=["key", "slice_index"], how="left", validate="one_to_one")
        files["slices"] = out_dir / "slices.csv"
        atomic_write_csv(files["slices"], sl)
        info["n_slices"] = len(sl)
        info["slice_seconds_per_volume"] = float(outs.seconds.mean())
    else:
        log.warning("%s has no %s/best.ckpt; slices.csv not written", run.path, slice_stage)

    if format == "rsna":
        info["submission"] = _write_submission(ctx, cache, out_dir, files)

    files["summary"] = out_dir / "predict.json"
    atomic_write_text(files["summary"], json.dumps(info, indent=2) + "\n")
    return {**info, "files": files}


def _write_submission(ctx: Any, cache: Any, out_dir: Path, files: dict[str, Path]) -> dict[str, Any]:
    """``submission.csv`` and ``submission_fallback.csv`` from the stage-1 per-image probabilities."""
    import pandas as pd

    from ich3d.data.cache import atomic_write_csv
    from ich3d.evaluation.submission import rsna_submission, skipped_images

    outs = ctx.slice_outputs("evaluated")
    parts = []
    for key, p in zip(outs.keys, outs.target_probs, strict=True):
        part = pd.DataFrame(p, columns=list(ctx.targets))
        part.insert(0, "slice_index", range(len(p)))
        part.insert(0, "key", key)
        parts.append(part)
    probs = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["key", "slice_index", *ctx.targets])
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
    sub, fallback = rsna_submission(images, ctx.targets, fallback_images)
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
    }
