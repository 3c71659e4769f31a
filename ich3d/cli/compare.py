"""``ich3d compare``: several evaluated runs in one report, paired DeLong tests across runs.

Usage::

    ich3d compare RUN_DIR [RUN_DIR ...] [--out DIR] [--names A B ...] [--methods M ...]
                  [--level 0.95] [--wandb [offline|online]] [--wandb-project NAME]

Reads each run's ``evaluation/`` folder (what ``ich3d evaluate`` wrote), refuses runs
evaluated on other volumes or labels, and writes ``compare.md``, ``compare.json``,
``roc.png`` (and ``slice_roc.png``) to ``--out`` (default ``./compare``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.cli.options import add_wandb_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help=COMMANDS["compare"],
        description=(
            "Put every method of several evaluated runs (ich3d evaluate) in one report: AUC with "
            "DeLong confidence intervals at volume level and, from the stage-1 CNN, at slice "
            "level; paired DeLong tests between the runs' methods (the runs must have evaluated "
            "the same volumes with the same labels: a hash of the (key, label) set is compared); "
            "one ROC figure. Columns are named <run>:<method>, the run being its experiment, "
            "its run id or experiment/run-id, whichever is unique (or --names)."
        ),
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="evaluated run directories (or their evaluation/ folders)")
    p.add_argument("--out", type=Path, default=Path("compare"), metavar="DIR", help="output folder (default: ./compare)")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME", help="one label per run instead of the automatic ones")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD", help="only these methods of each run (e.g. finetune svm)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default: 0.95)")
    add_wandb_options(p, what="the tables", files="--out/wandb")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ich3d.evaluation.comparison.compare import (  # heavy (torch): off the --help path
        compare_runs,
    )
    from ich3d.evaluation.comparison.wandb import (  # heavy (torch): off the --help path
        log_compare_to_wandb,
    )

    result = compare_runs(args.run_dirs, args.out, names=args.names, methods=args.methods, level=args.level)
    s = result.summary
    print(f"{len(s['runs'])} runs, {s['n_volumes']} {s['split']} volumes ({s['n_pos']} positive)")
    print("| column | AUC | CI | p vs best |")
    print("| --- | --- | --- | --- |")
    for col, d in s["columns"].items():
        ci = "n/a" if d["ci_lower"] is None else f"{d['ci_lower']:.3f} - {d['ci_upper']:.3f}"
        p = "best" if col == s["best"] else ("n/a" if d["p_vs_best"] is None else f"{d['p_vs_best']:.3g}")
        print(f"| {col} | {d['auc']:.3f} | {ci} | {p} |")
    print(f"report: {result.files['markdown']}")
    if args.wandb:
        print(f"W&B run: {log_compare_to_wandb(result, args.out, mode=args.wandb, project=args.wandb_project, entity=args.wandb_entity)}")
    return 0
