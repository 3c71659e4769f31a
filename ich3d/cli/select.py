"""``ich3d select``: the best method, system or ensemble, chosen on out-of-fold or validation predictions.

Usage::

    ich3d select RUN_DIR [RUN_DIR ...] [--criterion auc|log_loss] [--out DIR] [--names A B ...]
                 [--wandb [offline|online]] [--wandb-project NAME]

Ranks every method of the inputs (evaluated runs, ``ich3d ensemble`` folders,
cross-validation runs) on their out-of-fold or validation predictions, writes
``selection.json`` to ``--out`` (default ``./selection``) and prints the ranking and
the pick's test AUC, once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.cli.options import add_wandb_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select",
        help=COMMANDS["select"],
        description=(
            "Pick the best method, system or ensemble by a declared criterion on out-of-fold "
            "predictions (cross-validation runs: oof_predictions.csv) or validation predictions "
            "(val_predictions.csv) only; the test split is read afterwards, for the pick alone, "
            "and its test AUC reported once (for a cross-validation run, the fold ensemble's). "
            "Every input must have been evaluated on the same volumes. Writes selection.json "
            "with the ranking."
        ),
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="evaluated runs, ensemble folders or cross-validation runs")
    p.add_argument("--criterion", default="auc", choices=["auc", "log_loss"], help="auc (higher first, default) or log_loss (lower first)")
    p.add_argument("--out", type=Path, default=Path("selection"), metavar="DIR", help="output folder (default: ./selection)")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME", help="one label per run instead of the automatic ones")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the pick's test AUC (default: 0.95)")
    add_wandb_options(p, what="the tables", files="--out/wandb; hashed volume keys only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ich3d.evaluation.comparison.selection import select_best  # heavy: off the --help path

    s = select_best(args.run_dirs, args.out, criterion=args.criterion, names=args.names, level=args.level)
    print(f"ranked by {s['criterion']} on {s['n_volumes']} {s['on']} volumes")
    print(f"| rank | candidate | {s['criterion']} |")
    print("| --- | --- | --- |")
    for r in s["ranking"]:
        print(f"| {r['rank']} | {r['candidate']} | {r['value']:.4f} |")
    t = s["test"]
    print(
        f"pick: {s['pick']}; test AUC {t['auc']:.3f} ({t['level']:.0%} CI {t['ci_lower']:.3f} - {t['ci_upper']:.3f}, "
        f"{t['n_volumes']} volumes)"
    )
    print(f"selection: {args.out / 'selection.json'}")
    if args.wandb:
        # heavy (torch): off the --help path
        from ich3d.evaluation.comparison.wandb import log_selection_to_wandb  # heavy

        print(f"W&B run: {log_selection_to_wandb(s, args.out, mode=args.wandb, project=args.wandb_project, entity=args.wandb_entity)}")
    return 0
