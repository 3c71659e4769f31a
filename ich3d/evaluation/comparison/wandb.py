"""``ich3d compare --wandb``: the comparison as a W&B run (tables and AUCs, never keys or paths)."""

from __future__ import annotations

import os
from pathlib import Path

from ich3d.errors import UserError
from ich3d.evaluation.comparison.compare import ComparisonResult
from ich3d.tracking.loggers import scrub_value, wandb_settings

__all__ = ["log_compare_to_wandb"]


def log_compare_to_wandb(
    result: ComparisonResult, out_dir: str | Path, *, mode: str = "offline", project: str = "ich3d", entity: str | None = None
) -> str:
    """Log the comparison to a W&B run of job type ``compare`` (files under ``out_dir/wandb``).

    Sent: the run labels, experiments and run ids, a table with one row per column
    (run, method, AUC, CI, p vs best), a table of the paired tests across runs, the
    ROC image and the AUCs as summary metrics (``compare/<column>/auc``). Never sent:
    volume keys, per-volume rows, file-system paths. Settings are
    :func:`ich3d.tracking.loggers.wandb_settings` (no console, metadata, git or code).

    Returns:
        The W&B run's local folder.
    """
    if mode not in ("offline", "online"):
        raise UserError(f"--wandb mode must be offline or online, got {mode!r}")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
    import wandb  # optional at import time: only --wandb needs it

    s = result.summary
    run = wandb.init(
        project=project,
        entity=entity,
        job_type="compare",
        name="compare:" + "+".join(r["label"] for r in s["runs"]),
        dir=str(out_dir),
        mode=mode,
        config=scrub_value(
            {
                "runs": [{k: r[k] for k in ("label", "experiment", "run_id", "methods")} for r in s["runs"]],
                "split": s["split"],
                "split_hash": s["split_hash"],
                "n_volumes": s["n_volumes"],
                "level": s["level"],
            }
        ),
        settings=wandb_settings(),
        reinit="create_new",
    )
    try:
        cols = ["column", "run", "method", "auc", "ci_lower", "ci_upper", "p_vs_best"]
        rows = [[c, d["run"], d["method"], d["auc"], d["ci_lower"], d["ci_upper"], d["p_vs_best"]] for c, d in s["columns"].items()]
        pair_cols = ["a", "b", "diff", "diff_ci_lower", "diff_ci_upper", "z", "p", "p_holm"]
        pairs = [[t[k] for k in pair_cols] for t in s["across_runs"]]
        run.log(
            {
                "compare/columns": wandb.Table(columns=cols, data=scrub_value(rows)),
                "compare/across_runs": wandb.Table(columns=pair_cols, data=scrub_value(pairs)),
                "compare/roc_image": wandb.Image(str(result.files["roc"])),
            }
        )
        for c, d in s["columns"].items():
            if d["auc"] is not None:
                run.summary[f"compare/{scrub_value(c)}/auc"] = d["auc"]
        run.summary["compare/best"] = scrub_value(s["best"])
        folder = run.dir
    finally:
        run.finish()
    return str(folder)
