"""``ich3d ingest``: CT DICOM -> cache of ordered (foot -> head), 2x2 max-pooled HU volumes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.data.ingest import run_ingest

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        help=COMMANDS["ingest"],
        description=(
            "Read CT DICOM in any folder layout (one slice per file or Enhanced multi-frame; "
            "native or compressed transfer syntaxes), group slices by series, skip localizers "
            "and odd slices alone, order them foot -> head along the slice normal, convert to "
            "HU (12-bit correction, clip to [-1024, 3071]), 2x2 max-pool in-plane and write "
            "CACHE/volumes/<key>.npy with slices.csv, volumes.csv, skipped.csv and "
            "ingest.json. Idempotent and resumable: run it again after an interruption."
        ),
    )
    p.add_argument(
        "--images",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder of DICOM files (recursive)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="labels CSV (ID,Label rows ID_<image>_<subtype>); omit for an unlabeled set",
    )
    p.add_argument(
        "--study-labels",
        type=Path,
        default=None,
        metavar="CSV",
        help=(
            "volume labels from a CSV keyed by StudyInstanceUID, PatientID or AccessionNumber "
            "with an 'any' column and optional subtype columns (instead of --labels)"
        ),
    )
    p.add_argument(
        "--series-per-study",
        choices=("all", "one"),
        default="all",
        help=(
            "all: every series becomes a volume (default); one: keep one per study (soft-tissue "
            "kernel, then thickness closest to --target-thickness, then more slices)"
        ),
    )
    p.add_argument(
        "--target-thickness",
        type=float,
        default=5.0,
        metavar="MM",
        help="slice thickness --series-per-study one prefers (default: 5.0)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="CACHE", help="cache folder")
    p.add_argument(
        "--workers", type=int, default=1, metavar="N", help="worker processes (default: 1)"
    )
    p.add_argument(
        "--min-slices",
        type=int,
        default=4,
        metavar="K",
        help="skip series with fewer slices (default: 4)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild a cache made with other parameters or inputs",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are drawn only when stderr is a terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = run_ingest(
        args.images,
        args.labels,
        args.out,
        workers=args.workers,
        min_slices=args.min_slices,
        overwrite=args.overwrite,
        progress=not args.no_progress and sys.stderr.isatty(),  # no bar frames in log files
        study_labels=args.study_labels,
        series_per_study=args.series_per_study,
        target_thickness=args.target_thickness,
    )
    print(summary.format())
    return 0
