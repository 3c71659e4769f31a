"""``ich3d ensemble``: chosen methods of several evaluated runs averaged on the same test volumes.

Usage::

    ich3d ensemble RUN_DIR [RUN_DIR ...] --methods M [M ...] --out DIR [--names A B ...] [--level 0.95]
                   [--wandb [offline|online]] [--wandb-project NAME]

Writes an evaluation folder (``predictions.csv``, ``val_predictions.csv``,
``metrics.json``, ``report.md``, ``roc.png``) that ``ich3d compare`` and ``ich3d
select`` read as a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.cli.options import add_wandb_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help=COMMANDS["ensemble"],
        description=(
            "Average chosen methods of evaluated runs (systems, seeds or folds; ich3d evaluate) on "
            "the same test volumes: the mean probability (the mean rank-normalised score when a "
            "member is not a probability), with the paired DeLong test of the ensemble against "
            "each member. The runs must have evaluated the same volumes with the same labels (the "
            "split hash ich3d compare checks). Members are named <run>:<method> as in ich3d compare."
        ),
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="evaluated run directories (or their evaluation/ folders)")
    p.add_argument("--methods", nargs="+", required=True, metavar="METHOD", help="the methods to average, of every run that has them (e.g. finetune)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (an evaluation folder; its name is the ensemble's run id)")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME", help="one label per run instead of the automatic ones")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default: 0.95)")
    add_wandb_options(p, what="the tables", files="--out/wandb; hashed volume keys only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ich3d.evaluation.comparison.ensemble import (  # heavy (torch): off the --help path
        ENSEMBLE,
        ensemble_runs,
    )

    report = ensemble_runs(args.run_dirs, args.methods, args.out, names=args.names, level=args.level)
    m = report.metrics
    print(f"{len(m['ensemble']['members'])} members, {m['ensemble']['rule']}; {m['n_volumes']} {m['split']} volumes ({m['n_pos']} positive)")
    print("| column | AUC | CI | ensemble - member, p |")
    print("| --- | --- | --- | --- |")
    tests = {t["member"]: t for t in m["ensemble"]["tests"]}
    for d in m["delong"]["models"]:
        t = tests.get(d["name"])
        vs = "" if t is None else f"{t['diff']:+.3f}, p {t['p']:.3g}" if t["p"] is not None else f"{t['diff']:+.3f}"
        print(f"| {d['name']} | {d['auc']:.3f} | {d['ci_lower']:.3f} - {d['ci_upper']:.3f} | {vs} |")
    print(f"report: {report.files['report']} ({ENSEMBLE} is the column of predictions.csv)")
    if args.wandb:
        # heavy (torch): off the --help path
        from ich3d.evaluation.comparison.wandb import log_ensemble_to_wandb  # heavy

        print(f"W&B run: {log_ensemble_to_wandb(report, args.out, mode=args.wandb, project=args.wandb_project, entity=args.wandb_entity)}")
    return 0
