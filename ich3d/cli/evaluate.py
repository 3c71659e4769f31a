"""``ich3d evaluate``: every method of a trained run on its test split, with DeLong statistics.

Usage::

    ich3d evaluate RUN_DIR [--out DIR] [--stages slice sequence finetune direct]
                           [--device auto|cpu|cuda] [--no-wandb] [--no-progress]

Writes ``RUN_DIR/evaluation/`` (or ``--out``): ``predictions.csv`` (key, label, one
score column per method: max, p95, svm, sequence, finetune, direct; readable by
``ich3d roc``), ``val_predictions.csv``, ``slice_predictions.csv``, ``metrics.json``,
``roc.png`` and ``report.md``; prints the AUC table and where the report is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ich3d.stages import stage_names

    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run: baselines and volume models, DeLong CIs, operating points, report",
        description=(
            "Evaluate the methods of a run directory on its test split (evaluation.split): "
            "the stage-1 baselines max, p95 and svm (from slice/best.ckpt) and the volume "
            "models sequence, finetune and direct (from their best.ckpt), whichever exist. "
            "Reports AUC with 95% DeLong CIs, paired DeLong tests, operating points chosen "
            "on validation (target sensitivity evaluation.target_sensitivity and Youden) "
            "with Wilson CIs on test, inference seconds per volume and the hardware, and "
            "the slice-level stage-1 AUC. Logs to W&B when the run's tracking is on."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory (runs/<experiment>/<run-id>)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default: RUN_DIR/evaluation)")
    p.add_argument(
        "--stages",
        nargs="+",
        choices=stage_names(),
        default=None,
        metavar="STAGE",
        help="stages to evaluate: slice (= max, p95, svm), sequence, finetune, direct (default: all that exist)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available, default), cpu, cuda or cuda:N"
    )
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B even if the run's tracking is on")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ich3d.evaluation.evaluate import evaluate_run
    from ich3d.evaluation.roc_table import render_markdown

    result = evaluate_run(
        args.run_dir,
        out=args.out,
        stages=args.stages,
        device=args.device,
        progress=not args.no_progress,
        tracking=not args.no_wandb,
    )
    print(render_markdown(result.report.delong), end="")
    for what, why in result.missing.items():
        print(f"not evaluated: {what}: {why}")
    print(f"report: {result.report.files['report']}")
    if result.wandb_dir:
        print(f"W&B run: {result.wandb_dir}")
    return 0
