"""The evaluation's W&B run: the per-method table, ROC curve points and summary metrics.

:func:`log_evaluation` is what ``ich3d evaluate`` calls: from rank 0 only, only
when the run's ``tracking.mode`` is not ``disabled``, and a W&B failure is logged
as a warning (the report's files are already written). :func:`log_to_wandb` does
the logging; :func:`summary_metrics` and :func:`method_table` say what is sent.

Sent: the scrubbed resolved config (:func:`~ich3d.tracking.loggers.scrub_config`),
one table row per method (AUC, CI, p vs best, operating points, seconds per
volume), the paired DeLong tests (raw and Holm-adjusted p), a per-volume predictions
table keyed by a **hash of the volume key** (:func:`hashed_key`: label and one
score per method), the ROC curves as ``(fpr, tpr)`` points per method and the ROC
image (titled without identifiers), and the summary metrics. Never sent: volume
keys, identifiers, file names.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.evaluation.report.plots import roc_curves
from ich3d.runs.run_dir import global_rank_from_env
from ich3d.tracking.loggers import code_version, scrub_config, wandb_environment, wandb_settings

__all__ = [
    "summary_metrics",
    "method_table",
    "paired_test_table",
    "predictions_table",
    "hashed_key",
    "log_to_wandb",
    "log_evaluation",
]

log = logging.getLogger(__name__)


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flat scalar metrics for a W&B summary: ``eval/<method>/auc``, ``.../ci_lower`` ...

    Only aggregates: AUCs, intervals, p-values against the best method,
    operating-point proportions, seconds per volume and the slice-level AUC.
    """
    out: dict[str, float] = {}

    def put(k: str, v: Any) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)

    put("eval/n_volumes", metrics.get("n_volumes"))
    put("eval/n_pos", metrics.get("n_pos"))
    put("eval/n_neg", metrics.get("n_neg"))
    for m, d in (metrics.get("per_method") or {}).items():
        for k in ("auc", "ci_lower", "ci_upper", "p_vs_best", "seconds_per_volume"):
            put(f"eval/{m}/{k}", d.get(k))
        for rule, op in (d.get("operating_points") or {}).items():
            put(f"eval/{m}/{rule}/threshold", op.get("threshold"))
            for what in ("sensitivity", "specificity", "accuracy"):
                p = op.get(what) or {}
                put(f"eval/{m}/{rule}/{what}", p.get("value"))
                put(f"eval/{m}/{rule}/{what}_ci_lower", p.get("ci_lower"))
                put(f"eval/{m}/{rule}/{what}_ci_upper", p.get("ci_upper"))
    for k, d in (metrics.get("slice_level") or {}).items():
        for f in ("auc", "ci_lower", "ci_upper", "n_slices"):
            put(f"eval/slice_{k}/{f}", d.get(f))
    per_target = metrics.get("per_target") or {}  # several targets: eval/<target>/<method>/auc ...
    for t, d in (per_target.get("volume") or {}).items():
        for m, a in (d.get("methods") or {}).items():
            for f in ("auc", "ci_lower", "ci_upper"):
                put(f"eval/{t}/{m}/{f}", a.get(f))
    sl = per_target.get("slice") or {}
    put("eval/slice/log_loss", sl.get("log_loss"))
    for t, a in (sl.get("targets") or {}).items():
        for f in ("auc", "ci_lower", "ci_upper"):
            put(f"eval/slice_{t}/{f}", a.get(f))
    return out


def hashed_key(key: str) -> str:
    """A volume key as W&B sees it: 16 hex of SHA-256 of ``ich3d-wandb:<key>`` (the key never leaves the machine)."""
    return hashlib.sha256(f"ich3d-wandb:{key}".encode()).hexdigest()[:16]


def predictions_table(frame: pd.DataFrame, methods: list[str]) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of the per-volume W&B table: ``volume`` (:func:`hashed_key`), ``label``, scores."""
    columns = ["volume", "label", *methods]
    rows = [
        [hashed_key(str(k)), int(y), *(float(v) for v in vals)]
        for k, y, *vals in frame[["key", "label", *methods]].itertuples(index=False)
    ]
    return columns, rows


def paired_test_table(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of the paired DeLong tests (``metrics["paired_tests"]``), raw and Holm-adjusted p."""
    columns = ["a", "b", "diff", "diff_ci_lower", "diff_ci_upper", "z", "p", "p_holm"]
    rows = []
    for t in metrics.get("paired_tests") or []:
        a = (metrics.get("per_method") or {}).get(t["a"], {}).get("auc")
        b = (metrics.get("per_method") or {}).get(t["b"], {}).get("auc")
        diff = None if a is None or b is None else a - b
        rows.append([t["a"], t["b"], diff, t.get("diff_ci_lower"), t.get("diff_ci_upper"), t.get("z"), t.get("p"),
                     t.get("p_holm")])
    return columns, rows


def method_table(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of the per-method W&B table (one row per method, aggregates only)."""
    columns = [
        "method",
        "auc",
        "ci_lower",
        "ci_upper",
        "p_vs_best",
        "sens_at_target",
        "spec_at_target",
        "acc_at_target",
        "sens_youden",
        "spec_youden",
        "acc_youden",
        "seconds_per_volume",
        "unfinished",
    ]

    def v(p: Mapping[str, Any], what: str) -> Any:
        return (p.get(what) or {}).get("value")

    rows = []
    for m in metrics["methods"]:
        d = metrics["per_method"][m]
        op = d.get("operating_points") or {}
        t, y = op.get("sensitivity") or {}, op.get("youden") or {}
        rows.append(
            [
                m,
                d.get("auc"),
                d.get("ci_lower"),
                d.get("ci_upper"),
                d.get("p_vs_best"),
                v(t, "sensitivity"),
                v(t, "specificity"),
                v(t, "accuracy"),
                v(y, "sensitivity"),
                v(y, "specificity"),
                v(y, "accuracy"),
                d.get("seconds_per_volume"),
                bool(d.get("unfinished", False)),
            ]
        )
    return columns, rows


def log_to_wandb(
    report: Any,
    config: Any,
    run_path: str | Path,
    *,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    job: str = "evaluate",
) -> str | None:
    """Log an evaluation report to a W&B run of job type ``evaluate`` in the run's group.

    Args:
        report: the :class:`~ich3d.evaluation.report.build.EvaluationReport`.
        config: the run's :class:`~ich3d.config.Config`.
        run_path: the run directory (W&B files go to ``<run>/wandb/``).
        curves: ``method -> (fpr, tpr)``; default recomputed from ``predictions.csv``.
        job: last part of the W&B run name (``<experiment>/<run-id>/<job>``); no
            identifiers or file names.

    Returns:
        The W&B run's local directory, or None when tracking is disabled.
    """
    tracking = config.tracking
    if tracking.mode == "disabled":
        return None
    wandb_environment(tracking.mode)
    import wandb  # optional at import time: only a tracked evaluation needs it

    metrics = report.metrics
    frame = pd.read_csv(report.files["predictions"], dtype={"key": str})
    if curves is None:
        cs = roc_curves(frame["label"].to_numpy(), frame[metrics["methods"]].to_numpy(dtype=np.float64))
        curves = dict(zip(metrics["methods"], cs, strict=True))

    run_path = Path(run_path)
    run_id = run_path.name
    experiment = getattr(config, "experiment", "experiment")
    run = wandb.init(
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group or run_id,
        job_type="evaluate",
        name=f"{experiment}/{run_id}/{job}",
        tags=list(tracking.tags),
        dir=str(run_path),
        mode=tracking.mode,
        config={"config": scrub_config(config), "code": code_version()},
        settings=wandb_settings(),
        reinit="create_new",
    )
    try:
        columns, rows = method_table(metrics)
        run.log({"eval/methods": wandb.Table(columns=columns, data=rows)})
        columns, rows = paired_test_table(metrics)
        if rows:
            run.log({"eval/paired_tests": wandb.Table(columns=columns, data=rows)})
        columns, rows = predictions_table(frame, list(metrics["methods"]))
        run.log({"eval/predictions": wandb.Table(columns=columns, data=rows)})
        names = [m for m in metrics["methods"] if m in curves]
        if names:
            xs = [np.asarray(curves[m][0], dtype=float).tolist() for m in names]
            ys = [np.asarray(curves[m][1], dtype=float).tolist() for m in names]
            run.log(
                {
                    "eval/roc": wandb.plot.line_series(
                        xs=xs, ys=ys, keys=names, title=f"ROC ({metrics.get('split', 'test')})", xname="1 - specificity"
                    ),
                    "eval/roc_image": wandb.Image(str(report.files["roc"])),
                }
            )
        for k, v in summary_metrics(metrics).items():
            run.summary[k] = v
        run.summary["eval/best"] = metrics["best"]
        out_dir = run.dir
    finally:
        run.finish()
    return str(out_dir)


def log_evaluation(report: Any, config: Any, run_path: str | Path, *, job: str = "evaluate") -> str | None:
    """:func:`log_to_wandb` when tracking is on, from rank 0 only, never raising.

    Returns:
        The W&B run's local folder, or None (tracking disabled, not rank 0, or W&B failed:
        the failure is logged as a warning).
    """
    if config.tracking.mode == "disabled":
        return None
    if global_rank_from_env() != 0:
        log.info("not rank 0: the evaluation is not logged to W&B from this process")
        return None
    try:
        return log_to_wandb(report, config, run_path, job=job)
    except Exception as exc:  # the files are written; W&B trouble must not lose them
        log.warning("W&B logging of the evaluation failed: %s", exc)
        return None
