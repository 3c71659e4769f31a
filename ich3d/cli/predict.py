"""``ich3d predict``: volume and slice probabilities of a trained run on new data.

Usage::

    ich3d predict RUN_DIR INPUT [--out DIR] [--uids] [--workers N] [--device auto|cpu|cuda]
                               [--stage VOLUME_STAGE] [--methods NAME ...] [--format ich3d|rsna]
                               [--explain N] [--dicom-out DIR]
    ich3d predict PKG INPUT [--out DIR] [--uids] [--workers N] [--device ...]
                           [--runtime weights|torchscript|onnx] [--explain N] [--dicom-out DIR]
    ich3d predict RUN_DIR|PKG --pacs URL --study STUDY_UID [--pacs-aet AET] [--pacs-timeout S] [...]

With a package (``ich3d export``) as the first argument, the package alone is used
(:mod:`ich3d.deploy.predict`): no run directory, no config; ``--runtime`` picks its
safetensors weights (default), TorchScript or ONNX file; ``--out`` defaults to
``./predict-<INPUT name>-<8 hex>``.

``INPUT`` is a folder of DICOM files (any number of series; ingested, without
labels, into ``OUT/cache``; re-running reuses that cache) or an ingest cache (a
folder with ``ingest.json``). Writes to ``OUT`` (default ``RUN_DIR/predict/<INPUT
name>-<8 hex of the resolved INPUT path>``, printed):

* ``volumes.csv``: ``key, n_slices, probability`` (the volume model of the best
  volume stage, or ``--stage``), plus one column per ``--methods`` scoring method,
  ``label`` and ``split`` when the cache has them (``ich3d roc volumes.csv`` then
  compares the scores), ``probability_<target>`` per target of a several-target run;
* ``slices.csv``: ``key, slice_index, probability`` of the stage-1 slice CNN on
  every slice (slice order along the patient axis), plus ``label`` when labeled;
* ``predict.json``: the run, the stage, device, timing, counts;
* with ``--format rsna`` (a run trained with ``data.targets: all``): ``submission.csv``
  in the RSNA 2019 challenge format (``ID,Label``, ``ID_<image>_<subtype>``, every
  input image x six targets) and ``submission_fallback.csv`` (the images that could
  not be ingested, with their reason; :mod:`ich3d.evaluation.prediction.submission`);
  ``--sample-submission CSV`` keeps exactly the sample's IDs;
* with ``--explain N``: ``explain/<volume key>/`` per volume, its N key slices
  (``key_slices.csv``) and a Grad-CAM heat map of the slice CNN on each
  (``slice_<index>.png``, ``contact_sheet.png``; :mod:`ich3d.evaluation.prediction.explain`);
* with ``--dicom-out DIR``: per series, ``DIR/<volume key>/`` a Structured Report, a Key
  Object Selection and Secondary Captures of the heat maps, in the source study, marked
  not for diagnostic use (:mod:`ich3d.evaluation.prediction.dicom_out`; implies
  ``--explain 5`` unless ``--explain N`` is given; needs ``ich3d[dicom]``).

With ``--pacs`` instead of INPUT, the study is retrieved from a DICOM node, predicted on
and its ``--dicom-out`` results are stored back into it (:mod:`ich3d.cli.predict_pacs`,
:mod:`ich3d.deploy.pacs.roundtrip`).

Volumes are named by their hashed key; ``--uids`` adds ``series_uid``,
``study_uid`` and ``patient_id`` columns (identifiers: keep such files local).
The probabilities are exactly those ``ich3d evaluate`` computes for the same volumes.
The work is :func:`ich3d.evaluation.prediction.predict.predict_run`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.cli.predict_pacs import add_pacs_args, check_pacs_args, pacs_line, run_pacs
from ich3d.deploy.package import is_package
from ich3d.errors import UserError
from ich3d.evaluation.methods import all_methods
from ich3d.stages import volume_stages

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    volume_names = [s.name for s in volume_stages()]
    p = subparsers.add_parser(
        "predict",
        help=COMMANDS["predict"],
        description=(
            "Predict with a trained run. INPUT is a folder of DICOM files (ingested without "
            "labels into OUT/cache) or an ingest cache. Writes volumes.csv (key, n_slices, "
            f"probability of the best volume model: {' > '.join(volume_names)}) and slices.csv "
            "(key, slice_index, stage-1 slice probability) so a reader can see which slices "
            "drive the call. Volumes are named by hashed keys unless --uids is given."
        ),
    )
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR|PKG",
        help="run directory (runs/<experiment>/<run-id>) or a package made by ich3d export",
    )
    p.add_argument("input", type=Path, metavar="INPUT", nargs="?", default=None,
                   help="folder of DICOM files, or an ingest cache (none with --pacs: the study is retrieved)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: RUN_DIR/predict/<INPUT name>-<hash of the INPUT path>)",
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
        help=f"volume model to use (default: the first finished one of {' > '.join(volume_names)})",
    )
    extra = [m for m in all_methods() if m.name not in volume_names]
    p.add_argument(
        "--methods",
        nargs="+",
        default=(),
        choices=[m.name for m in all_methods()],
        metavar="NAME",
        help="more scoring methods, one volumes.csv column each: "
        + "; ".join(f"{m.name} ({m.description})" for m in extra).replace("%", "%%")
        + " (svm is fitted on the run's training split: needs its cache)",
    )
    p.add_argument(
        "--format",
        choices=("ich3d", "rsna"),
        default="ich3d",
        help="rsna: also write submission.csv in the RSNA 2019 challenge format (ID_<image>_<subtype>,Label; "
        "needs a run trained on the six labels, data.targets: all)",
    )
    p.add_argument(
        "--sample-submission",
        type=Path,
        default=None,
        metavar="CSV",
        help="with --format rsna: write exactly the IDs of this sample submission (its ID column), in its order",
    )
    _add_deploy_args(p)
    add_pacs_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are drawn only when stderr is a terminal)")
    p.set_defaults(func=run)


def _add_deploy_args(p: argparse.ArgumentParser) -> None:
    """``--runtime``, ``--explain`` and ``--dicom-out``: what docs/deploy.md describes."""
    p.add_argument(
        "--runtime",
        choices=("weights", "torchscript", "onnx"),
        default=None,
        help="with a package: weights (default: ich3d's network from the package's spec and safetensors "
        "weights, nothing unpickled), torchscript or onnx (the exported files, on CPU; onnx needs ich3d[export])",
    )
    p.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="N",
        help="per volume, the N slices that drive the call and a Grad-CAM heat map of the slice CNN on each: "
        "OUT/explain/<volume key>/ key_slices.csv, slice_<index>.png, contact_sheet.png (needs the stage-1 CNN)",
    )
    p.add_argument(
        "--dicom-out",
        type=Path,
        default=None,
        metavar="DIR",
        help="per series, DICOM results in DIR/<volume key>/: a Structured Report (probabilities, model, key slices), "
        "a Key Object Selection of the key slices and Secondary Captures of the heat maps, in the source study, "
        "marked not for diagnostic use; implies --explain 5 unless --explain N is given (needs ich3d[dicom])",
    )


def _run_package(args: argparse.Namespace) -> dict:
    from ich3d.deploy.predict import predict_package  # heavy (torch): off the --help path

    given = [f for f, on in (("--stage", args.stage), ("--methods", args.methods), ("--format rsna", args.format != "ich3d"),
                             ("--sample-submission", args.sample_submission)) if on]
    if given:
        raise UserError(f"{given[0]} needs a run directory; a package predicts with its own models only")
    return predict_package(
        args.run_dir, args.input, args.out, runtime=args.runtime or "weights", uids=args.uids,
        workers=args.workers, device=args.device, progress=not args.no_progress and sys.stderr.isatty(),
        explain=args.explain, dicom_out=args.dicom_out,
    )


def run(args: argparse.Namespace) -> int:
    check_pacs_args(args)
    result = run_pacs(args, predict_with) if args.pacs else predict_with(args)
    print(f"output folder: {result['out']}")
    _print_files(result)
    return 0


def predict_with(args: argparse.Namespace) -> dict:
    """``predict PKG`` or ``predict RUN_DIR`` with the parsed options; its result (``predict.json`` + files)."""
    if is_package(args.run_dir):
        return _run_package(args)
    if args.runtime is not None:
        raise UserError(f"--runtime goes with a package (ich3d export), and {args.run_dir} is not one")
    from ich3d.evaluation.prediction.predict import (  # heavy (torch): off the --help path
        predict_run,
    )

    return predict_run(
        args.run_dir,
        args.input,
        args.out,
        uids=args.uids,
        workers=args.workers,
        device=args.device,
        stage=args.stage,
        methods=args.methods,
        progress=not args.no_progress and sys.stderr.isatty(),  # no bar frames in log files
        format=args.format,
        sample_submission=args.sample_submission,
        explain=args.explain,
        dicom_out=args.dicom_out,
    )


def _print_files(result: dict) -> None:
    files = result["files"]
    if result.get("ingest_skipped"):
        print(f"ingest skipped {result['ingest_skipped']} file(s) or series: see {Path(result['cache']) / 'skipped.csv'}")
    if "volumes" in files:
        what = ", ".join(x for x in [f"{result['stage']} model" if result.get("stage") else "", *result.get("methods", [])] if x)
        print(f"{result['n_volumes']} volumes ({what}): {files['volumes']}")
    if "slices" in files:
        print(f"{result['n_slices']} slices (stage-1 CNN): {files['slices']}")
    if "explain" in files:
        ex = result["explain"]
        print(f"{ex['n_volumes']} volumes x {ex['n']} key slices ({', '.join(ex['score_kind'])}), "
              f"heat maps of {ex['layer']}: {files['explain']}")
    if "dicom_out" in result:
        d = result["dicom_out"]
        skipped = f", {len(d['skipped'])} series skipped (reasons in predict.json)" if d["skipped"] else ""
        print(f"{d['n_series']} series: {len(d['files'])} DICOM objects (SR, KOS, secondary captures){skipped}: "
              f"{files['dicom_out']}")
    if "submission" in files:
        sub = result["submission"]
        print(f"{sub['n_rows']} rows ({sub['n_images']} images x 6 labels, {sub['n_fallback_images']} "
              f"not ingested: fallback values, see {files['submission_fallback']}): {files['submission']}")
    if "pacs" in result:
        print(pacs_line(result["pacs"]))
