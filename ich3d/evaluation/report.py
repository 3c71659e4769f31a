"""The evaluation report: predictions tables -> ``predictions.csv``, ``metrics.json``, ``report.md``, ``roc.png``.

Pure with respect to models: everything here works on tables of scores, so the
report of any set of methods (the run's models, the slice baselines, a user's
own scores) is built the same way.

Inputs are two DataFrames with one row per volume, a ``key`` column (hashed
volume key), a 0/1 ``label`` column and one numeric score column per method
(higher = more likely positive):

* ``test``: the evaluated split; every statistic is computed on it;
* ``val``: the validation split, where the operating points are chosen.

Outputs (in ``out_dir``):

* ``predictions.csv``: ``key, label, <method>...`` of the test split (the format
  ``ich3d roc`` reads), ``val_predictions.csv`` the same for validation;
* ``metrics.json``: see :func:`build_report`;
* ``roc.png``: every method's ROC curve, legend ``name AUC [lo, hi]``;
* ``report.md``: the AUC table with the paired DeLong test against the best
  method, all pairwise tests, the embedded ROC figure, the operating points with
  Wilson intervals, inference time per volume and the hardware, slice-level
  stage-1 AUC, SVM details and what was not evaluated.

:func:`log_to_wandb` sends the per-method table, the ROC curves (curve points
only) and the summary metrics to a W&B run of job type ``evaluate``; it never
sends per-volume rows or keys.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ich3d.errors import UserError
from ich3d.evaluation.delong import DeLongResult, delong_roc
from ich3d.evaluation.operating_points import (
    Proportion,
    apply_threshold,
    threshold_for_sensitivity,
    youden_threshold,
)
from ich3d.evaluation.plots import plot_roc_scores
from ich3d.evaluation.roc_table import render_markdown, validate_predictions

__all__ = [
    "METHOD_ORDER",
    "METHOD_DESCRIPTIONS",
    "EvaluationReport",
    "method_columns",
    "slice_level_auc",
    "choose_operating_points",
    "build_report",
    "render_report",
    "summary_metrics",
    "log_to_wandb",
]

log = logging.getLogger(__name__)

#: Column order of the methods in ``predictions.csv`` (others follow in input order).
METHOD_ORDER: tuple[str, ...] = ("max", "p95", "svm", "sequence", "finetune", "direct")

#: One-line description of each built-in method, used in ``report.md``.
METHOD_DESCRIPTIONS: dict[str, str] = {
    "max": "stage-1 slice CNN, maximum slice probability",
    "p95": "stage-1 slice CNN, percentile of slice probabilities",
    "svm": "linear SVM on the zero-padded stage-1 slice features",
    "sequence": "CNN (frozen) + BiLSTM after stage 2",
    "finetune": "CNN + BiLSTM after end-to-end fine-tuning (stage 3)",
    "direct": "CNN + BiLSTM trained end to end from scratch (ablation)",
}

_ID_COLUMNS = ("key", "label")


@dataclass
class EvaluationReport:
    """What :func:`build_report` computed and wrote.

    Attributes:
        metrics: the content of ``metrics.json``.
        delong: DeLong statistics of the test split.
        markdown: the content of ``report.md``.
        files: name -> path of every file written.
    """

    metrics: dict[str, Any]
    delong: DeLongResult
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def method_columns(frame: pd.DataFrame, methods: Sequence[str] | None = None) -> list[str]:
    """The score columns of a predictions table, in :data:`METHOD_ORDER` then input order.

    Args:
        frame: predictions with ``key``, ``label`` and score columns.
        methods: the columns to use (validated, order kept); default every numeric
            column other than ``key`` and ``label``.

    Raises:
        UserError: a requested column is missing or no score column exists.
    """
    if methods is not None:
        missing = [m for m in methods if m not in frame.columns]
        if missing:
            raise UserError(f"predictions have no column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))})")
        cols = [str(m) for m in methods]
    else:
        cols = [
            str(c)
            for c in frame.columns
            if c not in _ID_COLUMNS and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        ]
        known = [m for m in METHOD_ORDER if m in cols]
        cols = known + [c for c in cols if c not in known]
    if not cols:
        raise UserError("predictions have no score column besides key and label")
    return cols


def _check_frame(frame: pd.DataFrame, what: str) -> None:
    for c in _ID_COLUMNS:
        if c not in frame.columns:
            raise UserError(f"{what} predictions need a {c!r} column (columns: {', '.join(map(str, frame.columns))})")
    if frame["key"].duplicated().any():
        dup = frame.loc[frame["key"].duplicated(), "key"].iloc[0]
        raise UserError(f"{what} predictions list volume {dup!r} more than once")


def _finite(x: float) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return _finite(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def slice_level_auc(labels: ArrayLike, probs: ArrayLike, level: float = 0.95) -> dict[str, Any]:
    """Slice-level AUC of the stage-1 CNN with its DeLong interval.

    Args:
        labels: 0/1 slice labels.
        probs: slice probabilities.
        level: confidence level; default 0.95.

    Returns:
        ``{"n_slices", "n_pos", "n_neg", "auc", "ci_lower", "ci_upper", "var"}``;
        AUC and interval are NaN (with a warning) when a class has fewer than 2 slices.
    """
    import warnings

    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = delong_roc(y, p, names=["slice"], level=level, strict=False)
    m = res.models[0]
    if res.n_pos < 2 or res.n_neg < 2:
        log.warning("slice-level AUC: %d positive and %d negative slices; not enough for DeLong", res.n_pos, res.n_neg)
    return {
        "n_slices": int(y.size),
        "n_pos": int(res.n_pos),
        "n_neg": int(res.n_neg),
        "auc": m.auc,
        "ci_lower": m.ci_lower,
        "ci_upper": m.ci_upper,
        "var": m.var,
        "level": float(level),
    }


def choose_operating_points(
    val_labels: ArrayLike,
    val_scores: ArrayLike,
    test_labels: ArrayLike,
    test_scores: ArrayLike,
    target_sensitivity: float = 0.98,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Both operating points of one method: thresholds from validation, measured on test.

    Args:
        val_labels: 0/1 validation labels (both classes needed).
        val_scores: validation scores.
        test_labels: 0/1 test labels.
        test_scores: test scores.
        target_sensitivity: validation sensitivity to reach; default 0.98.
        level: confidence level of the Wilson intervals; default 0.95.

    Returns:
        ``{"sensitivity": {...}, "youden": {...}}`` where each value is
        :meth:`OperatingPoint.to_dict` plus ``"validation"``: the sensitivity,
        specificity and accuracy at the same threshold on the validation cases,
        and, for ``sensitivity``, ``"target"``.
    """
    thresholds = {
        "sensitivity": threshold_for_sensitivity(val_labels, val_scores, target_sensitivity),
        "youden": youden_threshold(val_labels, val_scores),
    }
    out: dict[str, dict[str, Any]] = {}
    for rule, thr in thresholds.items():
        test_op = apply_threshold(test_labels, test_scores, thr, level)
        val_op = apply_threshold(val_labels, val_scores, thr, level)
        d = test_op.to_dict()
        d["validation"] = {
            "sensitivity": val_op.sensitivity.to_dict(),
            "specificity": val_op.specificity.to_dict(),
            "accuracy": val_op.accuracy.to_dict(),
        }
        if rule == "sensitivity":
            d["target"] = float(target_sensitivity)
        out[rule] = d
    return out


# ----------------------------------------------------------------------------- report


def build_report(
    test: pd.DataFrame,
    out_dir: str | Path,
    *,
    val: pd.DataFrame | None = None,
    methods: Sequence[str] | None = None,
    target_sensitivity: float = 0.98,
    level: float = 0.95,
    timing: Mapping[str, float] | None = None,
    hardware: Mapping[str, Any] | None = None,
    slice_level: Mapping[str, Any] | None = None,
    svm: Mapping[str, Any] | None = None,
    missing: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    title: str = "ich3d evaluation",
    split: str = "test",
    extra: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """Compute every statistic of the report and write its files to ``out_dir``.

    Args:
        test: evaluated split: ``key``, ``label`` (0/1) and one score column per method.
        out_dir: output folder (created).
        val: validation split with the same score columns; the operating points
            are chosen on it. None (or a method without both classes / without its
            column in ``val``) skips that method's operating points, with a note.
        methods: score columns to report; default every numeric column, ordered
            by :data:`METHOD_ORDER` then input order.
        target_sensitivity: validation sensitivity of the first operating point;
            default 0.98 (the method paper's).
        level: confidence level of the DeLong and Wilson intervals; default 0.95.
        timing: average inference seconds per volume, per method.
        hardware: description of the machine (``{"device", "name", "torch", ...}``;
            ``"summary"`` is shown in the report).
        slice_level: slice-level stage-1 results: ``{"cavity": slice_level_auc(...),
            "all": slice_level_auc(...)}`` (either key optional).
        svm: SVM baseline details (``SVMBaseline.to_dict()`` plus ``n_cropped_test``).
        missing: methods that could not be evaluated -> reason.
        notes: free-text lines added to the report (no identifiers).
        title: report title (no identifiers).
        split: name of the evaluated split; default ``test``.
        extra: more JSON-safe entries copied into ``metrics.json``.

    Returns:
        The :class:`EvaluationReport`. ``metrics.json`` holds ``title``, ``split``,
        ``level``, ``target_sensitivity``, ``methods``, ``best``, ``delong`` (exactly
        the ``ich3d roc --json`` schema), ``per_method`` (name -> auc, ci, var, p/z
        vs best, operating points, seconds per volume), ``operating_points``,
        ``timing``, ``hardware``, ``slice_level``, ``svm``, ``missing``, ``notes``.

    Raises:
        UserError: missing key/label columns, labels other than 0/1, NaN scores,
            a single class, or fewer than 2 cases of a class in ``test``.
    """
    _check_frame(test, split)
    cols = method_columns(test, methods)
    preds = validate_predictions(
        test["label"].to_numpy(dtype=np.float64), test[cols].to_numpy(dtype=np.float64), cols, split
    )
    result = delong_roc(preds.labels, preds.scores, names=cols, level=level)
    best = result.names[result.best]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    notes_l = [str(n) for n in notes]

    test_out = test[["key", "label", *cols]].copy()
    test_out["label"] = preds.labels
    files["predictions"] = out / "predictions.csv"
    test_out.to_csv(files["predictions"], index=False)

    # ---- operating points (chosen on validation)
    ops: dict[str, dict[str, Any]] = {}
    if val is not None:
        _check_frame(val, "validation")
        vcols = [c for c in cols if c in val.columns]
        val_out = val[["key", "label", *vcols]].copy()
        files["val_predictions"] = out / "val_predictions.csv"
        val_out.to_csv(files["val_predictions"], index=False)
        vy = val["label"].to_numpy()
        for c in cols:
            if c not in val.columns:
                notes_l.append(f"no validation scores for {c}: no operating point")
                continue
            vs = val[c].to_numpy(dtype=np.float64)
            if not np.isin(vy, (0, 1)).all() or (vy == 1).sum() == 0 or (vy == 0).sum() == 0:
                notes_l.append(f"validation split lacks a class or has bad labels: no operating point for {c}")
                continue
            if np.isnan(vs).any():
                notes_l.append(f"validation scores of {c} contain NaN: no operating point")
                continue
            ops[c] = choose_operating_points(
                vy, vs, preds.labels, test_out[c].to_numpy(dtype=np.float64), target_sensitivity, level
            )
    else:
        notes_l.append("no validation predictions: operating points not computed")

    files["roc"] = out / "roc.png"
    plot_roc_scores(
        preds.labels, preds.scores, result, files["roc"], title=f"{title}: {split} ROC ({len(preds.labels)} volumes)"
    )

    per_method: dict[str, dict[str, Any]] = {}
    for m in result.models:
        entry: dict[str, Any] = {"auc": m.auc, "ci_lower": m.ci_lower, "ci_upper": m.ci_upper, "var": m.var}
        if m.name != best:
            t = result.pair(m.name, best)
            entry.update({"vs_best": best, "z_vs_best": t.z, "p_vs_best": t.p, "diff_vs_best": t.diff})
        else:
            entry.update({"vs_best": None, "z_vs_best": None, "p_vs_best": None, "diff_vs_best": 0.0})
        if m.name in ops:
            entry["operating_points"] = ops[m.name]
        if timing and m.name in timing:
            entry["seconds_per_volume"] = float(timing[m.name])
        per_method[m.name] = entry

    metrics: dict[str, Any] = {
        "title": title,
        "split": split,
        "n_volumes": int(len(preds.labels)),
        "n_pos": int(result.n_pos),
        "n_neg": int(result.n_neg),
        "level": float(level),
        "target_sensitivity": float(target_sensitivity),
        "methods": cols,
        "best": best,
        "delong": result.to_dict(),
        "per_method": per_method,
        "operating_points": ops,
        "timing": {k: float(v) for k, v in (timing or {}).items()},
        "hardware": dict(hardware or {}),
        "slice_level": dict(slice_level or {}),
        "svm": dict(svm or {}),
        "missing": dict(missing or {}),
        "notes": notes_l,
    }
    if extra:
        metrics.update(dict(extra))
    metrics = _jsonable(metrics)

    markdown = render_report(metrics, result)
    files["metrics"] = out / "metrics.json"
    files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    files["report"] = out / "report.md"
    files["report"].write_text(markdown)
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return EvaluationReport(metrics=metrics, delong=result, markdown=markdown, files=files)


# ----------------------------------------------------------------------------- markdown


def _pct(level: float) -> str:
    return f"{level * 100:g}%"


def _prop(d: Mapping[str, Any] | Proportion, digits: int = 3) -> str:
    if isinstance(d, Proportion):
        d = d.to_dict()
    v, lo, hi = d.get("value"), d.get("ci_lower"), d.get("ci_upper")
    if v is None:
        return "n/a"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] ({d['k']}/{d['n']})"


def _fmt_auc(d: Mapping[str, Any], digits: int = 3) -> str:
    if d.get("auc") is None:
        return "n/a"
    if d.get("ci_lower") is None:
        return f"{d['auc']:.{digits}f} (no CI)"
    return f"{d['auc']:.{digits}f} [{d['ci_lower']:.{digits}f}, {d['ci_upper']:.{digits}f}]"


def render_report(metrics: Mapping[str, Any], result: DeLongResult) -> str:
    """``report.md`` from the metrics of :func:`build_report` and the DeLong result."""
    level = float(metrics["level"])
    pct = _pct(level)
    lines: list[str] = [f"# {metrics['title']}", ""]
    lines.append(
        f"Split `{metrics['split']}`: {metrics['n_volumes']} volumes "
        f"({metrics['n_pos']} positive, {metrics['n_neg']} negative). "
        f"Intervals: {pct} (AUC: DeLong, pROC conventions; proportions: Wilson)."
    )
    lines += ["", "## Volume-level ROC AUC", ""]
    lines.append(render_markdown(result).rstrip("\n"))
    lines += ["", "![ROC curves of all methods](roc.png)", ""]

    described = [m for m in metrics["methods"] if m in METHOD_DESCRIPTIONS]
    if described:
        lines += ["Methods:", ""]
        for m in described:
            desc = METHOD_DESCRIPTIONS[m]
            if m == "p95" and "percentile" in metrics:
                desc += f" ({metrics['percentile']:g}th)"
            lines.append(f"- `{m}`: {desc}")
        lines.append("")

    ops = metrics.get("operating_points") or {}
    lines += ["## Operating points", ""]
    if ops:
        lines.append(
            f"Thresholds chosen on the validation split (target sensitivity "
            f"{metrics['target_sensitivity']:g}; Youden's J), applied to `{metrics['split']}`. "
            f"Values: estimate [{pct} Wilson interval] (k/n)."
        )
        lines += [
            "",
            "| method | rule | threshold | val. sensitivity | sensitivity | specificity | accuracy |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for m, rules in ops.items():
            for rule, d in rules.items():
                name = f"sens >= {d['target']:g}" if rule == "sensitivity" else "Youden"
                vs = d["validation"]["sensitivity"]
                lines.append(
                    f"| {m} | {name} | {d['threshold']:.4g} | {vs['value']:.3f} | "
                    f"{_prop(d['sensitivity'])} | {_prop(d['specificity'])} | {_prop(d['accuracy'])} |"
                )
    else:
        lines.append("Not computed (no validation predictions with both classes).")
    lines.append("")

    timing = metrics.get("timing") or {}
    hw = metrics.get("hardware") or {}
    if timing or hw:
        lines += ["## Inference time", ""]
        if hw:
            lines.append(f"Hardware: {hw.get('summary') or ', '.join(f'{k} {v}' for k, v in hw.items())}.")
            lines.append("")
        if timing:
            lines += ["| method | seconds per volume |", "| --- | --- |"]
            for m in metrics["methods"]:
                if m in timing:
                    lines.append(f"| {m} | {timing[m]:.4f} |")
            lines.append("")
            lines.append(
                "Average over the evaluated volumes of the model's forward time (input already "
                "loaded and windowed; transfer to the device included). `max`/`p95`/`svm` share "
                "the slice CNN's time; `svm` adds the SVM's decision time."
            )
            lines.append("")

    sl = metrics.get("slice_level") or {}
    if sl:
        lines += ["## Slice level (stage-1 CNN)", ""]
        lines += [f"| slices | n | positive | negative | AUC [{pct} CI] |", "| --- | --- | --- | --- | --- |"]
        names = {"cavity": "cranial-cavity slices", "all": "all slices"}
        for k, d in sl.items():
            lines.append(f"| {names.get(k, k)} | {d['n_slices']} | {d['n_pos']} | {d['n_neg']} | {_fmt_auc(d)} |")
        lines.append("")

    svm = metrics.get("svm") or {}
    if svm:
        lines += ["## SVM baseline", ""]
        lines.append(
            f"Linear SVM on slice features zero-padded at both ends to {svm.get('length')} slices "
            f"x {svm.get('n_features')} features; C = {svm.get('C')} chosen on validation "
            f"(validation AUC per C: "
            + ", ".join(f"{c}: {a:.3f}" for c, a in (svm.get("val_auc") or {}).items() if a is not None)
            + ")."
        )
        crop = [
            f"{svm[k]} {name}"
            for k, name in (("n_cropped_train", "training"), ("n_cropped_val", "validation"), ("n_cropped_test", "test"))
            if k in svm
        ]
        if crop:
            lines.append(
                f"Volumes longer than {svm.get('length')} slices, centre-cropped: " + ", ".join(crop) + "."
            )
        lines.append("")

    missing = metrics.get("missing") or {}
    notes = metrics.get("notes") or []
    if missing or notes:
        lines += ["## Not evaluated / notes", ""]
        for m, why in missing.items():
            lines.append(f"- `{m}`: {why}")
        for n in notes:
            lines.append(f"- {n}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------- W&B


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
    return out


def _method_table_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
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
    ]
    rows = []
    for m in metrics["methods"]:
        d = metrics["per_method"][m]
        op = d.get("operating_points") or {}
        t, y = op.get("sensitivity") or {}, op.get("youden") or {}

        def v(p: Mapping[str, Any], what: str) -> Any:
            return (p.get(what) or {}).get("value")

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
            ]
        )
    return columns, rows


def log_to_wandb(
    report: EvaluationReport,
    config: Any,
    run_path: str | Path,
    *,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> str | None:
    """Log the evaluation to a W&B run of job type ``evaluate`` in the run's group.

    Sent: the scrubbed resolved config, a table with one row per method (AUC, CI,
    p vs best, operating points, seconds per volume), the ROC curves as
    ``(fpr, tpr)`` points per method (``wandb.plot.line_series``) and the ROC image,
    and :func:`summary_metrics` as the run summary. Never sent: per-volume rows,
    keys, identifiers. Does nothing when ``config.tracking.mode`` is ``disabled``.
    Call it on rank 0 only (the evaluation is single-process).

    Args:
        report: the built report.
        config: the run's :class:`~ich3d.config.Config`.
        run_path: the run directory (W&B files go to ``<run>/wandb/``).
        curves: ``method -> (fpr, tpr)``; default recomputed from ``predictions.csv``.

    Returns:
        The W&B run's local directory, or None when tracking is disabled.
    """
    import os

    tracking = config.tracking
    if tracking.mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if tracking.mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
    import wandb

    from ich3d.tracking.loggers import scrub_config

    metrics = report.metrics
    if curves is None:
        from ich3d.evaluation.plots import roc_curves

        frame = pd.read_csv(report.files["predictions"])
        cs = roc_curves(frame["label"].to_numpy(), frame[metrics["methods"]].to_numpy(dtype=np.float64))
        curves = dict(zip(metrics["methods"], cs, strict=True))

    run_path = Path(run_path)
    run_id = run_path.name
    from ich3d.tracking.loggers import wandb_settings

    settings = wandb_settings()
    experiment = getattr(config, "experiment", "experiment")
    run = wandb.init(
        project=tracking.project,
        entity=tracking.entity,
        group=tracking.group or run_id,
        job_type="evaluate",
        name=f"{experiment}/{run_id}/evaluate",
        tags=list(tracking.tags),
        dir=str(run_path),
        mode=tracking.mode,
        config={"config": scrub_config(config)},
        settings=settings,
        reinit="create_new",
    )
    try:
        columns, rows = _method_table_rows(metrics)
        run.log({"eval/methods": wandb.Table(columns=columns, data=rows)})
        names = [m for m in metrics["methods"] if m in curves]
        if names:
            xs = [np.asarray(curves[m][0], dtype=float).tolist() for m in names]
            ys = [np.asarray(curves[m][1], dtype=float).tolist() for m in names]
            run.log(
                {
                    "eval/roc": wandb.plot.line_series(
                        xs=xs, ys=ys, keys=names, title="ROC (test)", xname="1 - specificity"
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

