"""``ich3d ingest``: DICOM slices -> cache of ordered, 2x2 max-pooled HU volumes."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="ingest RSNA-format DICOM into a cache of volumes and tables",
        description=(
            "Read one-slice-per-file DICOM (RSNA 2019 format), group slices by series, order "
            "them along the slice normal, convert to HU (12-bit correction, clip to "
            "[-1024, 3071]), 2x2 max-pool in-plane and write CACHE/volumes/<key>.npy with "
            "slices.csv, volumes.csv, skipped.csv and ingest.json. Idempotent and resumable: "
            "run it again after an interruption."
        ),
    )
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of .dcm files")
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="labels CSV (ID,Label rows ID_<image>_<subtype>); omit for an unlabeled set",
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ich3d.data.ingest import run_ingest

    summary = run_ingest(
        args.images,
        args.labels,
        args.out,
        workers=args.workers,
        min_slices=args.min_slices,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(summary.format())
    return 0
