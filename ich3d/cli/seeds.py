"""``ich3d seeds``: AUC ranges over seeds of the same experiments on one test set.

Usage::

    ich3d seeds RUN_DIR [RUN_DIR ...] [--out DIR] [--alpha 0.05]

Reads each run's ``evaluation/`` folder (what ``ich3d evaluate`` wrote) and its
``config.yaml`` (for the seed), groups the runs by experiment and writes
``seeds.md`` and ``seeds.json`` to ``--out`` (default ``./seeds``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ich3d.cli.commands import COMMANDS

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "seeds",
        help=COMMANDS["seeds"],
        description=(
            "Group evaluated runs (ich3d evaluate) by experiment and give, for every method, the "
            "AUC of each seed with its minimum, median and maximum and the widest DeLong interval; "
            "for every paired test of the evaluation, the range of its p-values and how many seeds "
            "found the difference; the slice classifiers' slice-level AUC ranges. The runs must "
            "have been evaluated on the same volumes with the same labels, one run per seed and "
            "experiment (the seed is read from each run's config.yaml)."
        ),
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="evaluated run directories")
    p.add_argument("--out", type=Path, default=Path("seeds"), metavar="DIR", help="output folder (default: ./seeds)")
    p.add_argument("--alpha", type=float, default=0.05, help="level at which a paired difference counts (default: 0.05)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ich3d.evaluation.comparison.seeds import seed_ranges  # heavy (torch): off the --help path

    result = seed_ranges(args.run_dirs, args.out, alpha=args.alpha)
    print(result.markdown)
    print(f"report: {result.files['seeds.md']}")
    return 0
