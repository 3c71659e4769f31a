"""``ich3d roc``: AUCs with DeLong intervals and paired tests for any CSV of scores.

Usage::

    ich3d roc predictions.csv [--label-col label] [--scores COL ...] [--json OUT.json] [--plot OUT.png]
                              [--level 0.95]

The CSV needs a 0/1 label column. The score columns (higher = more likely
positive) are declared: ``--scores``, else the list the writer left beside the
file (``predict.json``'s ``score_columns`` next to ``ich3d predict``'s
``volumes.csv``), else every numeric column but the known non-score columns
(``n_slices``, ``slice_index``, ``split``, ...; non-numeric columns such as a key
are ignored). Prints a Markdown table: method, AUC, CI, paired DeLong p-value
against the best method, then all pairwise tests with raw and Holm-adjusted p.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ich3d.cli.commands import COMMANDS
from ich3d.errors import UserError
from ich3d.evaluation.report.plots import plot_roc_scores
from ich3d.stats.roc_table import NON_SCORE_COLUMNS, read_predictions, render_markdown, roc_table

__all__ = ["add_parser", "run", "declared_scores"]

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "roc",
        help=COMMANDS["roc"],
        description=(
            "Compare methods on a CSV of scores: one 0/1 label column and one numeric "
            "column per method (higher = more likely positive). Score columns: --scores, else "
            "predict.json's score_columns beside an `ich3d predict` volumes.csv, else every numeric "
            f"column but {', '.join(sorted(NON_SCORE_COLUMNS - {'label'}))}. Prints a Markdown table "
            "of AUCs with DeLong confidence intervals (pROC conventions), the paired DeLong p-value "
            "against the best method, and all pairwise tests (raw and Holm-adjusted p)."
        ),
    )
    p.add_argument("predictions", type=Path, help="CSV with a header row")
    p.add_argument("--label-col", default="label", help="name of the 0/1 label column (default: label)")
    p.add_argument(
        "--scores", nargs="+", default=None, metavar="COL", help="the score columns to compare (default: see above)"
    )
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the statistics as JSON")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="draw all ROC curves in one PNG")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default: 0.95)")
    p.add_argument("--title", default="ROC curves", help="plot title (no patient identifiers)")
    p.set_defaults(func=run)


def declared_scores(path: Path) -> list[str] | None:
    """The score columns a writer declared beside ``path`` (``predict.json`` next to ``volumes.csv``), or None."""
    sidecar = path.parent / "predict.json"
    if path.name != "volumes.csv" or not sidecar.is_file():
        return None
    try:
        cols = json.loads(sidecar.read_text()).get("score_columns")
    except (OSError, ValueError):
        return None
    return [str(c) for c in cols] if cols else None


def run(args: argparse.Namespace) -> int:
    scores = args.scores if args.scores is not None else declared_scores(args.predictions)
    preds = read_predictions(args.predictions, label_col=args.label_col, score_cols=scores)
    if args.plot is not None:
        finite = np.isfinite(preds.scores).all(axis=0)
        if not finite.all():
            bad = preds.names[int(np.nonzero(~finite)[0][0])]
            raise UserError(
                f"{preds.source}: score column {bad!r} has infinite values; --plot needs finite scores "
                "(leave the column out with --scores)"
            )
    result = roc_table(preds, level=args.level)
    print(render_markdown(result), end="")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        log.info("wrote %s", args.json)
    if args.plot is not None:
        plot_roc_scores(preds.labels, preds.scores, result, args.plot, title=args.title)
        log.info("wrote %s", args.plot)
    return 0
