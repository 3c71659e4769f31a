"""Out-of-fold evaluation of a cross-validation run (``ich3d evaluate RUN_DIR`` with ``data.folds`` > 1).

Each fold's run directory ``RUN/fold<k>/`` is evaluated as any run
(:func:`~ich3d.evaluation.evaluate.evaluate_run`): its models score its validation
split, which is fold ``k`` (so every non-test volume gets exactly one out-of-fold
prediction per method), and the common test split; the baselines follow the folds
(the SVM is fitted on the fold's training part, its C chosen on the fold). Then,
in ``RUN/evaluation/``:

* ``oof_predictions.csv``: ``key, label, fold`` and one column per method, the
  out-of-fold predictions (the folds' ``val_predictions.csv`` concatenated);
* ``test_predictions.csv``: ``key, label`` and per method ``<method>@fold<k>`` (each
  fold's model) and ``<method>@ensemble``;
* ``metrics.json`` and ``report.md`` (section "Cross-validation"): the OOF AUC of
  each method with its DeLong interval (and the paired tests between methods), the
  per-fold validation AUCs (mean, sd), and on the test split each fold model and the
  fold ensemble, with paired DeLong tests ensemble vs each fold; operating points
  chosen on the OOF predictions and measured on the ensemble's test predictions;
  and the interval widths side by side (:func:`ci_widths`): each method's OOF
  DeLong interval against the single split's, i.e. each fold model's interval on
  the test split (a fold model is a single-split model: trained on the other folds,
  validated on its own, tested on the test split).

**The ensemble rule.** A method whose scores are probabilities (every value of
every fold in [0, 1]) is ensembled by the mean probability. Other scores (the
``svm`` baseline's decision values, whose scale differs from fold to fold) by the
mean of each fold's rank-normalised scores on the test split (average ranks divided
by the number of test volumes, in (0, 1]); such an ensemble is a ranking, not a
calibrated score, so it has no operating points (the report says so).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.errors import UserError
from ich3d.evaluation.crossval_wandb import log_cv_evaluation
from ich3d.evaluation.evaluate import evaluate_run
from ich3d.runs.run_dir import RunDir, fold_dir_name, open_run_dir
from ich3d.stats.delong import DeLongResult, delong_roc
from ich3d.stats.ensembles import ensemble_scores
from ich3d.stats.operating_points import operating_point_entries
from ich3d.stats.roc_table import render_markdown

__all__ = [
    "ENSEMBLE",
    "CVEvaluation",
    "oof_table",
    "ensemble_scores",
    "ensemble_table",
    "cv_statistics",
    "ci_widths",
    "render_cv_section",
    "fold_run_dirs",
    "evaluate_cv_run",
]

log = logging.getLogger(__name__)

#: the suffix of the fold ensemble's columns in ``test_predictions.csv``
ENSEMBLE = "ensemble"


@dataclass
class CVEvaluation:
    """What :func:`evaluate_cv_run` produced.

    Attributes:
        out_dir: ``RUN/evaluation``.
        oof: the out-of-fold table (``key, label, fold, <method> ...``).
        test: the test table (``key, label, <method>@fold<k> ..., <method>@ensemble``).
        metrics: the content of ``metrics.json``.
        markdown: the content of ``report.md``.
        files: name -> path of every file written.
        wandb_dir: the W&B run's local folder (None: tracking off or failed).
    """

    out_dir: Path
    oof: pd.DataFrame
    test: pd.DataFrame
    metrics: dict[str, Any]
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)
    wandb_dir: str | None = None


def _methods(tables: Sequence[pd.DataFrame]) -> list[str]:
    """The score columns every table has, in the first table's order."""
    first = [c for c in tables[0].columns if c not in ("key", "label", "fold")]
    return [m for m in first if all(m in t.columns for t in tables)]


def oof_table(val_tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The folds' validation predictions as one table with a ``fold`` column (sorted by key).

    Raises:
        UserError: a volume predicted by two folds (folds that are not disjoint).
    """
    methods = _methods(val_tables)
    parts = [t[["key", "label", *methods]].assign(fold=k) for k, t in enumerate(val_tables)]
    oof = pd.concat(parts, ignore_index=True)[["key", "label", "fold", *methods]]
    if oof["key"].duplicated().any():
        raise UserError("a volume has out-of-fold predictions from two folds: the folds are not disjoint")
    return oof.sort_values("key", kind="stable").reset_index(drop=True)


def ensemble_table(test_tables: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Each fold model's and the ensemble's test scores per method, and each method's rule.

    Raises:
        UserError: the folds scored different test volumes.
    """
    methods = _methods(test_tables)
    base = test_tables[0][["key", "label"]].reset_index(drop=True)
    for t in test_tables[1:]:
        if list(t["key"]) != list(base["key"]) or list(t["label"]) != list(base["label"]):
            raise UserError("the folds' test predictions cover different volumes; evaluate every fold anew")
    columns: dict[str, Any] = {}
    rules: dict[str, str] = {}
    for m in methods:
        members = np.column_stack([t[m].to_numpy(dtype=float) for t in test_tables])
        for k in range(members.shape[1]):
            columns[f"{m}@{fold_dir_name(k)}"] = members[:, k]
        columns[f"{m}@{ENSEMBLE}"], rules[m] = ensemble_scores(members)
    return pd.concat([base, pd.DataFrame(columns)], axis=1), rules


def _auc_entry(result: DeLongResult, index: int) -> dict[str, Any]:
    model = result.models[index]
    return {"auc": model.auc, "ci_lower": model.ci_lower, "ci_upper": model.ci_upper}


def _per_method(
    m: str, oof: pd.DataFrame, test: pd.DataFrame, k: int, rule: str, level: float, target: float
) -> dict[str, Any]:
    """One method's per-fold AUCs, test AUCs (folds, ensemble), paired tests, operating points."""
    fold_aucs = []
    for j in range(k):
        part = oof[oof["fold"] == j]
        fold_aucs.append(float(delong_roc(part["label"], part[m], [m], level, strict=False).aucs[0]))
    names = [f"{m}@{fold_dir_name(j)}" for j in range(k)] + [f"{m}@{ENSEMBLE}"]
    res = delong_roc(test["label"], test[names].to_numpy(dtype=float), names, level)
    entry: dict[str, Any] = {
        "ensemble_rule": rule,
        "fold_val_auc": fold_aucs,
        "fold_val_auc_mean": float(np.nanmean(fold_aucs)),
        "fold_val_auc_sd": float(np.nanstd(fold_aucs, ddof=1)) if k > 1 else float("nan"),
        "test": {n: _auc_entry(res, i) for i, n in enumerate(names)},
        "ensemble_vs_folds": [res.pair(names[-1], n).to_dict() for n in names[:-1]],
    }
    if rule == "mean probability":
        entry["operating_points"] = operating_point_entries(
            oof["label"], oof[m], test["label"], test[names[-1]], target, level
        )
    return entry


def _width(entry: dict[str, Any]) -> float:
    lo, hi = entry.get("ci_lower"), entry.get("ci_upper")
    return float("nan") if lo is None or hi is None else float(hi) - float(lo)


def ci_widths(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: the OOF interval's width beside the single split's (each fold model's on test).

    ``narrower`` is true when the OOF interval is narrower than every fold model's
    test interval, false when not, None when a width is not finite.
    """
    k = metrics["folds"]
    oof = {d["name"]: d for d in metrics["oof"]["models"]}
    out: dict[str, dict[str, Any]] = {}
    for m, e in metrics["methods"].items():
        folds = [_width(e["test"][f"{m}@{fold_dir_name(j)}"]) for j in range(k)]
        w = _width(oof[m])
        finite = np.isfinite([w, *folds]).all()
        out[m] = {
            "oof": w,
            "test_per_fold": folds,
            "test_fold_mean": float(np.mean(folds)),
            "test_ensemble": _width(e["test"][f"{m}@{ENSEMBLE}"]),
            "narrower": bool(w < min(folds)) if finite else None,
        }
    return out


def cv_statistics(
    oof: pd.DataFrame, test: pd.DataFrame, rules: dict[str, str], k: int, level: float = 0.95, target: float = 0.98
) -> tuple[dict[str, Any], DeLongResult]:
    """The cross-validation metrics (OOF DeLong table, per-method fold and test statistics)
    and the OOF :class:`DeLongResult` (DeLong on the concatenated OOF table)."""
    methods = [m for m in rules if m in oof.columns]
    oof_res = delong_roc(oof["label"], oof[methods].to_numpy(dtype=float), methods, level)
    metrics = {
        "folds": k,
        "level": level,
        "n_oof": len(oof),
        "n_test": len(test),
        "oof": oof_res.to_dict(),
        "methods": {m: _per_method(m, oof, test, k, rules[m], level, target) for m in methods},
    }
    metrics["ci_widths"] = ci_widths(metrics)
    return metrics, oof_res


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _width_lines(metrics: dict[str, Any]) -> list[str]:
    """The interval widths side by side: OOF vs the single split (each fold model on test)."""
    k, widths = metrics["folds"], metrics["ci_widths"]
    narrower = sum(bool(w["narrower"]) for w in widths.values())
    lines = [
        f"Interval widths ({metrics['level']:.0%} DeLong, upper - lower): the OOF AUC ({metrics['n_oof']} volumes) "
        f"against a single split's test AUC ({metrics['n_test']} volumes; each of the {k} fold models is a "
        f"single-split model). OOF narrower than every fold model's test interval: {narrower} of {len(widths)} methods.",
        "",
        "| method | OOF CI width | single-split test CI width (per fold model: min - max, mean) | ensemble test CI width | OOF narrower |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, w in widths.items():
        per = w["test_per_fold"]
        verdict = "n/a" if w["narrower"] is None else "yes" if w["narrower"] else "no"
        lines.append(
            f"| {m} | {_fmt(w['oof'])} | {_fmt(min(per))} - {_fmt(max(per))}, {_fmt(w['test_fold_mean'])} | "
            f"{_fmt(w['test_ensemble'])} | {verdict} |"
        )
    return lines


def render_cv_section(metrics: dict[str, Any], oof_markdown: str) -> str:
    """The report's "Cross-validation" section."""
    k = metrics["folds"]
    lines = [
        "## Cross-validation",
        "",
        f"{k} folds. Out-of-fold (OOF): each of the {metrics['n_oof']} non-test volumes scored once, by the "
        "model of the fold that validated on it (DeLong intervals):",
        "",
        oof_markdown.rstrip(),
        "",
        f"Per fold and on the test split ({metrics['n_test']} volumes): the fold models' validation AUC "
        "(mean, sd over folds), each fold model's and the fold ensemble's test AUC, and the paired "
        "DeLong test of the ensemble against each fold model.",
        "",
        "| method | fold val AUC mean (sd) | test AUC per fold | ensemble test AUC (CI) | rule | p ensemble vs folds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, e in metrics["methods"].items():
        tests = e["test"]
        ens = tests[f"{m}@{ENSEMBLE}"]
        per_fold = ", ".join(_fmt(tests[f"{m}@{fold_dir_name(j)}"]["auc"]) for j in range(k))
        ps = ", ".join(f"{p['p']:.3g}" for p in e["ensemble_vs_folds"])
        lines.append(
            f"| {m} | {_fmt(e['fold_val_auc_mean'])} ({_fmt(e['fold_val_auc_sd'])}) | {per_fold} | "
            f"{_fmt(ens['auc'])} ({_fmt(ens['ci_lower'])} - {_fmt(ens['ci_upper'])}) | {e['ensemble_rule']} | {ps} |"
        )
    lines += ["", *_width_lines(metrics)]
    lines += ["", "Operating points: thresholds chosen on the OOF predictions, measured on the ensemble's test scores.", ""]
    lines += ["| method | rule | threshold | test sensitivity | test specificity |", "| --- | --- | --- | --- | --- |"]
    for m, e in metrics["methods"].items():
        if "operating_points" not in e:
            lines.append(f"| {m} | - | - | - | - (a rank ensemble has no threshold) |")
            continue
        for rule, op in e["operating_points"].items():
            sens, spec = op["sensitivity"]["value"], op["specificity"]["value"]
            lines.append(f"| {m} | {rule} | {op['threshold']:.4g} | {_fmt(sens)} | {_fmt(spec)} |")
    return "\n".join(lines) + "\n"


def fold_run_dirs(run: RunDir, k: int) -> list[RunDir]:
    """The folds' run directories ``RUN/fold<k>/``, every one of them.

    Raises:
        UserError: a fold was not trained.
    """
    dirs = [RunDir(run.path / fold_dir_name(j)) for j in range(k)]
    missing = [d.path.name for d in dirs if not d.config_path.is_file()]
    if missing:
        raise UserError(
            f"{run.path}: {', '.join(missing)} not trained; out-of-fold evaluation needs every fold "
            f"(ich3d train --resume {run.path} --folds all)"
        )
    return dirs


def evaluate_cv_run(
    run_dir: str | Path,
    *,
    stages: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    include_unfinished: bool = False,
    device: str = "auto",
    progress: bool = True,
    tracking: bool = True,
) -> CVEvaluation:
    """Evaluate every fold of a cross-validation run, then the OOF and ensemble statistics.

    Args:
        run_dir: the cross-validation run's directory (above ``fold<k>/``).
        stages, methods, include_unfinished, device, progress: as for
            :func:`~ich3d.evaluation.evaluate.evaluate_run`, applied to every fold.
        tracking: log the OOF and ensemble tables to W&B when the run's
            ``tracking.mode`` is not ``disabled`` (:mod:`ich3d.evaluation.crossval_wandb`;
            the folds' own evaluations are not logged).

    Raises:
        UserError: not a cross-validation run, a fold not trained, or what
            :func:`~ich3d.evaluation.evaluate.evaluate_run` raises for a fold.
    """
    run = open_run_dir(run_dir)
    config = run.load_config()
    if config.data.folds < 2 or config.data.fold is not None:
        raise UserError(f"{run_dir} is not a cross-validation run's directory (data.folds > 1, above fold<k>/)")
    ev = config.evaluation
    vals, tests = [], []
    for d in fold_run_dirs(run, config.data.folds):
        log.info("evaluating %s", d.path)
        res = evaluate_run(
            d.path,
            stages=stages,
            methods=methods,
            include_unfinished=include_unfinished,
            device=device,
            progress=progress,
            tracking=False,
        )
        if "val_predictions" not in res.report.files:
            raise UserError(f"{d.path}: no validation predictions, so no out-of-fold predictions")
        vals.append(pd.read_csv(res.report.files["val_predictions"], dtype={"key": str}))
        tests.append(pd.read_csv(res.report.files["predictions"], dtype={"key": str}))
    oof = oof_table(vals)
    test, rules = ensemble_table(tests)
    metrics, oof_res = cv_statistics(oof, test, rules, config.data.folds, ev.confidence, ev.target_sensitivity)
    out = run.path / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    title = f"# ich3d cross-validation: {config.experiment}/{run.run_id}\n\n"
    reports = ", ".join(f"`{fold_dir_name(j)}/evaluation/report.md`" for j in range(config.data.folds))
    markdown = title + render_cv_section(metrics, render_markdown(oof_res)) + f"\nEach fold's own report: {reports}\n"
    files = {
        "oof_predictions": out / "oof_predictions.csv",
        "test_predictions": out / "test_predictions.csv",
        "metrics": out / "metrics.json",
        "report": out / "report.md",
    }
    oof.to_csv(files["oof_predictions"], index=False)
    test.to_csv(files["test_predictions"], index=False)
    files["metrics"].write_text(json.dumps({"cross_validation": metrics}, indent=2) + "\n")
    files["report"].write_text(markdown)
    wandb_dir = log_cv_evaluation(metrics, oof, test, config, run.path, ENSEMBLE) if tracking else None
    return CVEvaluation(out, oof, test, metrics, markdown, files, wandb_dir)
