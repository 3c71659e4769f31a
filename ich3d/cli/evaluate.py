"""``ich3d evaluate``: every scoring method of a trained run on its test split, with DeLong statistics.

Usage::

    ich3d evaluate RUN_DIR [--out DIR] [--stages STAGE ...] [--methods NAME ...]
                           [--data CACHE] [--include-unfinished]
                           [--device auto|cpu|cuda] [--no-wandb] [--no-progress]

Writes ``RUN_DIR/evaluation/`` (``RUN_DIR/evaluation-<cache name>`` with ``--data``,
or ``--out``): ``predictions.csv`` (key, label, one score column per method, in the
registry's order; readable by ``ich3d roc``), ``val_predictions.csv``,
``slice_predictions.csv``, ``metrics.json``, ``roc.png`` and ``report.md``; prints
the AUC table and where the report is. The work is
:func:`ich3d.evaluation.evaluate.evaluate_run`; this module parses and prints.

A cross-validation run's own directory (``data.folds`` > 1, above ``fold<k>/``):
every fold is evaluated, then the out-of-fold and fold-ensemble statistics go to
``RUN_DIR/evaluation/`` (:mod:`ich3d.evaluation.crossval`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.errors import UserError
from ich3d.evaluation.methods import all_methods
from ich3d.runs.run_dir import open_run_dir
from ich3d.stages import stage_names
from ich3d.stats.roc_table import render_markdown

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    methods = all_methods()
    by_stage = {s: [m.name for m in methods if m.needs == s] for s in stage_names()}
    stages_help = ", ".join(
        s if ms == [s] else f"{s} (= {', '.join(ms)})" if ms else s for s, ms in by_stage.items()
    )
    p = subparsers.add_parser(
        "evaluate",
        help=COMMANDS["evaluate"],
        description=(
            "Evaluate the scoring methods of a run directory on its test split (evaluation.split), "
            "or with --data on every labelled volume of another ingest cache: "
            + "; ".join(f"{m.name}: {m.description}" for m in methods)
            + ". Each method needs its stage's best.ckpt and a finished stage (result.json). "
            "Reports AUC with 95% DeLong CIs, paired DeLong tests, operating points chosen "
            "on the run's validation split (target sensitivity evaluation.target_sensitivity "
            "and Youden) with Wilson CIs on the evaluated volumes, inference seconds per volume "
            "and the hardware, and the slice-level stage-1 AUC. Logs to W&B when the run's "
            "tracking is on."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory (runs/<experiment>/<run-id>)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: RUN_DIR/evaluation, or RUN_DIR/evaluation-<cache name> with --data)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=stage_names(),
        default=None,
        metavar="STAGE",
        help=f"evaluate the methods of these stages: {stages_help} (default: every method whose checkpoint exists)".replace(
            "%", "%%"
        ),
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=[m.name for m in methods],
        default=None,
        metavar="NAME",
        help=f"scoring methods to evaluate: {', '.join(m.name for m in methods)} (with --stages: both)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="CACHE",
        help="evaluate on every labelled volume of this ingest cache (e.g. an external test set); "
        "thresholds are still chosen on the run's validation split",
    )
    p.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also score stages that did not finish (best.ckpt without result.json), marked unfinished",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available, default), cpu, cuda or cuda:N"
    )
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B even if the run's tracking is on")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are drawn only when stderr is a terminal)")
    p.set_defaults(func=run)


def _is_whole_cv_run(run_dir: str) -> bool:
    """Whether ``run_dir`` is a cross-validation run's own directory (above its ``fold<k>/``)."""
    config = open_run_dir(run_dir).load_config()
    return config.data.folds > 1 and config.data.fold is None


def _run_cv(args: argparse.Namespace) -> int:
    from ich3d.evaluation.crossval import evaluate_cv_run  # heavy (torch): off the --help path

    if args.data is not None or args.out is not None:
        raise UserError(
            "--data and --out apply to one run directory: give a fold's, e.g. "
            f"{Path(args.run_dir) / 'fold0'}"
        )
    result = evaluate_cv_run(
        args.run_dir,
        stages=args.stages,
        methods=args.methods,
        include_unfinished=args.include_unfinished,
        device=args.device,
        progress=not args.no_progress,
        tracking=not args.no_wandb,
    )
    print(result.markdown, end="")
    print(f"report: {result.files['report']}")
    if result.wandb_dir:
        print(f"W&B run: {result.wandb_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    if _is_whole_cv_run(args.run_dir):
        return _run_cv(args)
    from ich3d.evaluation.evaluate import evaluate_run  # heavy (torch): off the --help path

    result = evaluate_run(
        args.run_dir,
        out=args.out,
        stages=args.stages,
        methods=args.methods,
        data=args.data,
        include_unfinished=args.include_unfinished,
        device=args.device,
        progress=not args.no_progress and sys.stderr.isatty(),  # no bar frames in log files
        tracking=not args.no_wandb,
    )
    print(render_markdown(result.report.delong), end="")
    quiet = result.plan.unasked if result.plan is not None else set()
    for what, why in result.missing.items():
        if what not in quiet:  # a default stage the run never trained is listed in the report only
            print(f"not evaluated: {what}: {why}")
    for method, stage in result.unfinished.items():
        print(f"unfinished: {method} (stage {stage} has no result.json)")
    print(f"report: {result.report.files['report']}")
    if result.wandb_dir:
        print(f"W&B run: {result.wandb_dir}")
    return 0
