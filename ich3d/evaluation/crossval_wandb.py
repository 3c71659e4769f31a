"""The W&B run of a cross-validation evaluation: the OOF and fold-ensemble tables, hashed keys only.

``ich3d evaluate RUN_DIR`` on a cross-validation run (:mod:`ich3d.evaluation.crossval`)
logs one W&B run of job type ``evaluate``, named ``<experiment>/<run-id>/evaluate``
and grouped with the folds' stage runs (group: the run id, or ``tracking.group``),
when the run's ``tracking.mode`` is not ``disabled`` (and not with ``--no-wandb``).

Sent (:func:`cv_tables`):

* ``cv/methods``: one row per method: OOF AUC and DeLong interval, the per-fold
  validation AUC (mean, sd), the fold ensemble's test AUC and interval, its rule,
  and the interval widths (OOF vs the fold models' test intervals);
* ``cv/test``: one row per method and test column (each fold model, the ensemble):
  AUC, interval, and the paired DeLong p of the ensemble against that fold model;
* ``cv/oof_predictions`` and ``cv/test_predictions``: per volume, keyed by
  :func:`~ich3d.evaluation.report.wandb.hashed_key`: label (and fold) and the scores;
* the summary: ``cv/<method>/oof_auc`` (``_ci_lower``, ``_ci_upper``),
  ``cv/<method>/ensemble_test_auc`` and ``cv/<method>/fold_val_auc_mean``;
* the config: the scrubbed resolved config, the code version and ``folds``.

Never sent: volume keys, patient identifiers, file names.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ich3d.evaluation.report.wandb import hashed_key
from ich3d.runs.run_dir import global_rank_from_env
from ich3d.tracking.loggers import code_version, scrub_config, wandb_environment, wandb_settings

__all__ = ["cv_tables", "log_cv_to_wandb", "log_cv_evaluation"]

log = logging.getLogger(__name__)

_Table = tuple[list[str], list[list[Any]]]


def _per_volume(frame: pd.DataFrame, columns: list[str]) -> _Table:
    rows = [[hashed_key(str(k)), *(v.item() if hasattr(v, "item") else v for v in rest)]
            for k, *rest in frame[["key", *columns]].itertuples(index=False)]
    return ["volume", *columns], rows


def cv_tables(metrics: dict[str, Any], oof: pd.DataFrame, test: pd.DataFrame, ensemble: str) -> dict[str, _Table]:
    """``name -> (columns, rows)`` of the four W&B tables (module docstring).

    Args:
        metrics: the ``cross_validation`` metrics (:func:`~ich3d.evaluation.crossval.cv_statistics`).
        oof: the out-of-fold table (``key, label, fold, <method> ...``).
        test: the test table (``key, label, <method>@fold<k> ..., <method>@<ensemble>``).
        ensemble: the suffix of the ensemble's test columns.
    """
    oof_models = {d["name"]: d for d in metrics["oof"]["models"]}
    widths = metrics.get("ci_widths") or {}
    methods_rows, test_rows = [], []
    for m, e in metrics["methods"].items():
        o, ens, w = oof_models[m], e["test"][f"{m}@{ensemble}"], widths.get(m, {})
        methods_rows.append([
            m, o["auc"], o["ci_lower"], o["ci_upper"], e["fold_val_auc_mean"], e["fold_val_auc_sd"],
            ens["auc"], ens["ci_lower"], ens["ci_upper"], e["ensemble_rule"],
            w.get("oof"), w.get("test_fold_mean"), w.get("narrower"),
        ])
        p_vs = {t["b"]: t["p"] for t in e["ensemble_vs_folds"]}
        for col, d in e["test"].items():
            member = col.rsplit("@", 1)[1]
            test_rows.append([m, member, d["auc"], d["ci_lower"], d["ci_upper"], p_vs.get(col)])
    methods = list(metrics["methods"])
    test_cols = [c for c in test.columns if c not in ("key", "label")]
    return {
        "cv/methods": (
            ["method", "oof_auc", "oof_ci_lower", "oof_ci_upper", "fold_val_auc_mean", "fold_val_auc_sd",
             "ensemble_test_auc", "ensemble_ci_lower", "ensemble_ci_upper", "ensemble_rule",
             "oof_ci_width", "single_split_test_ci_width_mean", "oof_narrower"],
            methods_rows,
        ),
        "cv/test": (["method", "model", "test_auc", "ci_lower", "ci_upper", "p_ensemble_vs_model"], test_rows),
        "cv/oof_predictions": _per_volume(oof, ["label", "fold", *methods]),
        "cv/test_predictions": _per_volume(test, ["label", *test_cols]),
    }


def _summary(metrics: dict[str, Any], ensemble: str) -> dict[str, float]:
    out: dict[str, float] = {"cv/folds": float(metrics["folds"]), "cv/n_oof": float(metrics["n_oof"]),
                             "cv/n_test": float(metrics["n_test"])}
    oof_models = {d["name"]: d for d in metrics["oof"]["models"]}
    for m, e in metrics["methods"].items():
        values = {
            "oof_auc": oof_models[m]["auc"], "oof_ci_lower": oof_models[m]["ci_lower"],
            "oof_ci_upper": oof_models[m]["ci_upper"], "ensemble_test_auc": e["test"][f"{m}@{ensemble}"]["auc"],
            "fold_val_auc_mean": e["fold_val_auc_mean"],
        }
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                out[f"cv/{m}/{k}"] = float(v)
    return out


def log_cv_to_wandb(
    metrics: dict[str, Any], oof: pd.DataFrame, test: pd.DataFrame, config: Any, run_path: str | Path, ensemble: str
) -> str | None:
    """Log the cross-validation evaluation to W&B (files under ``<run>/wandb/``).

    Returns:
        The W&B run's local folder, or None when ``tracking.mode`` is ``disabled``.
    """
    tracking = config.tracking
    if tracking.mode == "disabled":
        return None
    wandb_environment(tracking.mode)
    import wandb  # heavy: only a tracked evaluation needs it

    run_path = Path(run_path)
    run = wandb.init(
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group or run_path.name,
        job_type="evaluate",
        name=f"{config.experiment}/{run_path.name}/evaluate",
        tags=list(tracking.tags),
        dir=str(run_path),
        mode=tracking.mode,
        config={"config": scrub_config(config), "code": code_version(), "folds": metrics["folds"]},
        settings=wandb_settings(),
        reinit="create_new",
    )
    try:
        run.log({name: wandb.Table(columns=c, data=r) for name, (c, r) in cv_tables(metrics, oof, test, ensemble).items()})
        for k, v in _summary(metrics, ensemble).items():
            run.summary[k] = v
        folder = run.dir
    finally:
        run.finish()
    return str(folder)


def log_cv_evaluation(
    metrics: dict[str, Any], oof: pd.DataFrame, test: pd.DataFrame, config: Any, run_path: str | Path, ensemble: str
) -> str | None:
    """:func:`log_cv_to_wandb` from rank 0 only, never raising (the files are already written)."""
    if config.tracking.mode == "disabled":
        return None
    if global_rank_from_env() != 0:
        log.info("not rank 0: the cross-validation evaluation is not logged to W&B from this process")
        return None
    try:
        return log_cv_to_wandb(metrics, oof, test, config, run_path, ensemble)
    except Exception as exc:  # W&B trouble must not lose the report
        log.warning("W&B logging of the cross-validation evaluation failed: %s", exc)
        return None
