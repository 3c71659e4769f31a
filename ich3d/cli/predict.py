"""``ich3d predict``: volume and slice probabilities of a trained run on new data.

Usage::

    ich3d predict RUN_DIR INPUT [--out DIR] [--uids] [--workers N] [--device auto|cpu|cuda]
                               [--stage finetune|sequence|direct]

``INPUT`` is a folder of DICOM files (any number of series; ingested, without
labels, into ``OUT/cache``; re-running reuses that cache) or an ingest cache (a
folder with ``ingest.json``). Writes to ``OUT`` (default ``RUN_DIR/predict/<INPUT
name>``):

* ``volumes.csv``: ``key, n_slices, probability`` (the volume model of the best
  stage: finetune > sequence > direct, or ``--stage``), plus ``label`` when the
  cache is labeled;
* ``slices.csv``: ``key, slice_index, probability`` of the stage-1 slice CNN on
  every slice (slice order along the patient axis), plus ``label`` when labeled;
* ``predict.json``: the run, the stage, device, timing, counts.

Volumes are named by their hashed key; ``--uids`` adds ``series_uid``,
``study_uid`` and ``patient_id`` columns (identifiers: keep such files local).
The probabilities are exactly those ``ich3d evaluate`` computes for the same volumes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "predict_run", "UID_COLUMNS"]

log = logging.getLogger(__name__)

#: Identifier columns added by ``--uids``.
UID_COLUMNS: tuple[str, ...] = ("series_uid", "study_uid", "patient_id")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ich3d.stages import volume_stages

    volume_names = [s.name for s in volume_stages()]
    p = subparsers.add_parser(
        "predict",
        help="volume and slice probabilities of a trained run on a DICOM folder or an ingest cache",
        description=(
            "Predict with a trained run. INPUT is a folder of DICOM files (ingested without "
            "labels into OUT/cache) or an ingest cache. Writes volumes.csv (key, n_slices, "
            f"probability of the best volume model: {' > '.join(volume_names)}) and slices.csv "
            "(key, slice_index, stage-1 slice probability) so a reader can see which slices "
            "drive the call. Volumes are named by hashed keys unless --uids is given."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory (runs/<experiment>/<run-id>)")
    p.add_argument("input", type=Path, metavar="INPUT", help="folder of DICOM files, or an ingest cache")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output folder (default: RUN_DIR/predict/<INPUT name>)"
    )
    p.add_argument(
        "--uids",
        action="store_true",
        help="add series_uid, study_uid and patient_id columns (identifiers; off by default)",
    )
    p.add_argument("--workers", type=int, default=1, metavar="N", help="ingest worker processes (default: 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, default), cpu, cuda or cuda:N")
    p.add_argument(
        "--stage",
        choices=volume_names,
        default=None,
        help=f"volume model to use (default: the best available, {' > '.join(volume_names)})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def predict_run(
    run_dir: str | Path,
    input: str | Path,
    out: str | Path | None = None,
    *,
    uids: bool = False,
    workers: int = 1,
    device: str = "auto",
    stage: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict volume and slice probabilities of a run on a DICOM folder or an ingest cache.

    Args:
        run_dir: the run directory.
        input: a folder of DICOM files, or an ingest cache (has ``ingest.json``).
        out: output folder; default ``RUN_DIR/predict/<input name>``.
        uids: add the identifier columns :data:`UID_COLUMNS` (default False).
        workers: ingest processes (default 1).
        device: ``auto`` (default), ``cpu``, ``cuda[:i]``.
        stage: volume model; default the best available (finetune > sequence > direct).
        progress: progress bars (default True).

    Returns:
        The content of ``predict.json`` plus ``"files"`` (name -> path).

    Raises:
        UserError: bad run directory or input, no checkpoint, bad worker count.
    """
    import pandas as pd

    from ich3d.data.cache import IngestCache, atomic_write_csv, atomic_write_text
    from ich3d.errors import UserError
    from ich3d.evaluation.inference import (
        build_eval_datamodule,
        hardware_info,
        predict_slices,
        predict_volumes,
        resolve_device,
    )
    from ich3d.runs.checkpoints import best_volume_stage, load_slice_model, load_volume_model
    from ich3d.runs.run_dir import open_run_dir
    from ich3d.stages import volume_stages

    run = open_run_dir(run_dir)
    config = run.load_config()
    input = Path(input).expanduser()
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if not input.is_dir():
        raise UserError(f"INPUT {input} is not a folder (expected a folder of DICOM files or an ingest cache)")
    out_dir = Path(out) if out is not None else run.path / "predict" / input.resolve().name
    dev = resolve_device(device)

    has_volume = any(run.best_ckpt(s.name).is_file() for s in volume_stages())
    has_slice = run.best_ckpt("slice").is_file()
    if stage is not None and not run.best_ckpt(stage).is_file():
        raise UserError(f"{run.path} has no {stage}/best.ckpt")
    if not has_volume and not has_slice:
        raise UserError(f"{run.path} has no checkpoint (slice/, sequence/, finetune/ or direct/best.ckpt); train first")

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
    cache = IngestCache(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labeled = cache.labeled
    label = config.data.label

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

    # ---- volume model
    if has_volume:
        vstage = stage or best_volume_stage(run)
        model, _ = load_volume_model(run, vstage)
        dm = build_eval_datamodule(config, cache_dir, depth_pool=config.data.depth_pool, stage="predict")
        table = dm.split_table("predict")
        scores = predict_volumes(model, dm.eval_dataloader("predict"), dev, progress=progress, desc=f"{vstage} volumes")
        del model
        vol = pd.DataFrame({"key": scores.keys, "probability": scores.probs})
        vol = table[["key", "n_slices", "label"]].merge(vol, on="key", how="left", validate="one_to_one")
        vol = vol[["key", "n_slices", "probability", "label"]]
        if not labeled:
            vol = vol.drop(columns="label")
        if uids:
            for c in UID_COLUMNS:
                vol[c] = vol["key"].map(ids[c])
        files["volumes"] = out_dir / "volumes.csv"
        atomic_write_csv(files["volumes"], vol)
        info.update(
            {
                "stage": vstage,
                "n_volumes": len(vol),
                "seconds_per_volume": float(scores.seconds.mean()),
            }
        )
    else:
        log.warning("%s has no volume model (finetune/sequence/direct); writing slice probabilities only", run.path)
        info["stage"] = None

    # ---- stage-1 slice probabilities
    if has_slice:
        smodel = load_slice_model(run)
        dm1 = build_eval_datamodule(config, cache_dir, depth_pool=1, stage="predict")
        outs = predict_slices(
            smodel, dm1.eval_dataloader("predict"), dev, features=False, progress=progress, desc="slice CNN"
        )
        del smodel
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
        log.warning("%s has no slice/best.ckpt; slices.csv not written", run.path)

    files["summary"] = out_dir / "predict.json"
    atomic_write_text(files["summary"], json.dumps(info, indent=2) + "\n")
    return {**info, "files": files}


def run(args: argparse.Namespace) -> int:
    result = predict_run(
        args.run_dir,
        args.input,
        args.out,
        uids=args.uids,
        workers=args.workers,
        device=args.device,
        stage=args.stage,
        progress=not args.no_progress,
    )
    files = result["files"]
    if result.get("ingest_skipped"):
        print(f"ingest skipped {result['ingest_skipped']} file(s) or series: see {Path(result['cache']) / 'skipped.csv'}")
    if "volumes" in files:
        print(f"{result['n_volumes']} volumes ({result['stage']} model): {files['volumes']}")
    if "slices" in files:
        print(f"{result['n_slices']} slices (stage-1 CNN): {files['slices']}")
    return 0
