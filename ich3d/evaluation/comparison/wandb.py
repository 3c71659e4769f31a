"""``ich3d compare``, ``ensemble`` and ``select`` with ``--wandb``: their tables as a W&B run (AUCs, hashed keys, never keys or paths).

One W&B run per command, of job type ``compare``, ``ensemble`` or ``select``, its
files under the command's ``--out``/wandb. An ensemble's and a selection's runs are
grouped by the output folder's name (the ensemble's run id: ``ich3d ensemble``
names its evaluation folder after it). Settings are
:func:`ich3d.tracking.loggers.wandb_settings` (no console, metadata, git or code);
every string sent passes :func:`ich3d.tracking.loggers.scrub_value`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from ich3d.errors import UserError
from ich3d.evaluation.comparison.compare import ComparisonResult
from ich3d.evaluation.report.build import EvaluationReport
from ich3d.evaluation.report.wandb import predictions_table
from ich3d.tracking.loggers import scrub_value, wandb_settings

__all__ = ["log_compare_to_wandb", "log_ensemble_to_wandb", "log_selection_to_wandb"]


def _init(job: str, name: str, config: dict[str, Any], out_dir: str | Path, mode: str, project: str,
          entity: str | None, group: str | None = None) -> Any:
    """``wandb.init`` of a command's run (``mode``: offline or online)."""
    if mode not in ("offline", "online"):
        raise UserError(f"--wandb mode must be offline or online, got {mode!r}")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
    import wandb  # heavy: optional at import time, only --wandb needs it

    return wandb.init(
        project=project, entity=entity, job_type=job, name=scrub_value(name), group=group, dir=str(out_dir),
        mode=mode, config=scrub_value(config), settings=wandb_settings(), reinit="create_new",
    )


def log_compare_to_wandb(
    result: ComparisonResult, out_dir: str | Path, *, mode: str = "offline", project: str = "ich3d", entity: str | None = None
) -> str:
    """Log the comparison to a W&B run of job type ``compare`` (files under ``out_dir/wandb``).

    Sent: the run labels, experiments and run ids, a table with one row per column
    (run, method, AUC, CI, p vs best), a table of the paired tests across runs, the
    ROC image and the AUCs as summary metrics (``compare/<column>/auc``). Never sent:
    volume keys, per-volume rows, file-system paths.

    Returns:
        The W&B run's local folder.
    """
    import wandb  # heavy: optional at import time, only --wandb needs it

    s = result.summary
    config = {
        "runs": [{k: r[k] for k in ("label", "experiment", "run_id", "methods")} for r in s["runs"]],
        "split": s["split"], "split_hash": s["split_hash"], "n_volumes": s["n_volumes"], "level": s["level"],
    }
    run = _init("compare", "compare:" + "+".join(r["label"] for r in s["runs"]), config, out_dir, mode, project, entity)
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


def log_ensemble_to_wandb(
    report: EvaluationReport, out_dir: str | Path, *, mode: str = "offline", project: str = "ich3d", entity: str | None = None
) -> str:
    """Log ``ich3d ensemble``'s tables to a W&B run of job type ``ensemble`` (group: the ensemble's name).

    Sent: ``ensemble/columns`` (one row per member and the ensemble: AUC, interval,
    ensemble - member and its paired DeLong p), ``ensemble/predictions`` (per volume,
    keyed by :func:`~ich3d.evaluation.report.wandb.hashed_key`: label, every member's
    and the ensemble's score) and the AUCs as summary metrics (``ensemble/<column>/auc``).

    Returns:
        The W&B run's local folder.
    """
    import wandb  # heavy: optional at import time, only --wandb needs it

    m, out = report.metrics, Path(out_dir)
    e = m["ensemble"]
    config = {k: e[k] for k in ("members", "rule", "split_hash", "runs")} | {"split": m["split"], "n_volumes": m["n_volumes"]}
    run = _init("ensemble", f"ensemble/{out.name}", config, out, mode, project, entity, group=out.name)
    try:
        tests = {t["member"]: t for t in e["tests"]}
        cols = ["column", "auc", "ci_lower", "ci_upper", "ensemble_minus_member", "p"]
        rows = [[d["name"], d["auc"], d["ci_lower"], d["ci_upper"], tests.get(d["name"], {}).get("diff"),
                 tests.get(d["name"], {}).get("p")] for d in m["delong"]["models"]]
        frame = pd.read_csv(report.files["predictions"], dtype={"key": str})
        pcols, prows = predictions_table(frame, [d["name"] for d in m["delong"]["models"]])
        run.log({"ensemble/columns": wandb.Table(columns=cols, data=scrub_value(rows)),
                 "ensemble/predictions": wandb.Table(columns=scrub_value(pcols), data=prows)})
        for d in m["delong"]["models"]:
            if d["auc"] is not None:
                run.summary[f"ensemble/{scrub_value(d['name'])}/auc"] = d["auc"]
        folder = run.dir
    finally:
        run.finish()
    return str(folder)


def log_selection_to_wandb(
    summary: dict[str, Any], out_dir: str | Path, *, mode: str = "offline", project: str = "ich3d", entity: str | None = None
) -> str:
    """Log ``ich3d select``'s ranking to a W&B run of job type ``select`` (group: the ``--out`` folder's name).

    Sent: ``select/ranking`` (rank, candidate, run, method, the criterion's value on
    the out-of-fold or validation predictions), the pick and its one test AUC with
    its interval as summary metrics (``select/pick``, ``select/test_auc`` ...).

    Returns:
        The W&B run's local folder.
    """
    import wandb  # heavy: optional at import time, only --wandb needs it

    out = Path(out_dir)
    config = {k: summary[k] for k in ("criterion", "higher_is_better", "on", "n_volumes", "split_hash")}
    run = _init("select", f"select/{out.name}", config, out, mode, project, entity, group=out.name)
    try:
        cols = ["rank", "candidate", "run", "method", summary["criterion"]]
        rows = [[r["rank"], r["candidate"], r["run"], r["method"], r["value"]] for r in summary["ranking"]]
        run.log({"select/ranking": wandb.Table(columns=cols, data=scrub_value(rows))})
        run.summary["select/pick"] = scrub_value(summary["pick"])
        t = summary["test"]
        for k in ("auc", "ci_lower", "ci_upper", "level", "n_volumes"):
            if t.get(k) is not None:
                run.summary[f"select/test_{k}"] = t[k]
        folder = run.dir
    finally:
        run.finish()
    return str(folder)
