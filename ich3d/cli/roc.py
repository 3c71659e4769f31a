"""``ich3d roc``: AUCs with DeLong intervals and paired tests for any CSV of scores.

Usage::

    ich3d roc predictions.csv [--label-col label] [--json OUT.json] [--plot OUT.png] [--level 0.95]

The CSV needs a 0/1 label column; every other numeric column is a method's
score (higher = more likely positive); non-numeric columns (e.g. a key) are
ignored. Prints a Markdown table: method, AUC, CI, paired DeLong p-value
against the best method, then all pairwise tests.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "roc",
        help="AUC, DeLong CIs and paired tests for a CSV of scores",
        description=(
            "Compare methods on a CSV of scores: one 0/1 label column and one numeric "
            "column per method (higher = more likely positive; non-numeric columns are "
            "ignored). Prints a Markdown table of AUCs with DeLong confidence intervals "
            "(pROC conventions), the paired DeLong p-value against the best method, and "
            "all pairwise tests."
        ),
    )
    p.add_argument("predictions", type=Path, help="CSV with a header row")
    p.add_argument("--label-col", default="label", help="name of the 0/1 label column (default: label)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the statistics as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="draw all ROC curves in one PNG")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default: 0.95)")
    p.add_argument("--title", default="ROC curves", help="plot title (no patient identifiers)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ich3d.evaluation.roc_table import read_predictions, render_markdown, roc_table

    preds = read_predictions(args.predictions, label_col=args.label_col)
    result = roc_table(preds, level=args.level)
    print(render_markdown(result), end="")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        log.info("wrote %s", args.json)
    if args.plot is not None:
        from ich3d.evaluation.plots import plot_roc_scores

        plot_roc_scores(preds.labels, preds.scores, result, args.plot, title=args.title)
        log.info("wrote %s", args.plot)
    return 0
