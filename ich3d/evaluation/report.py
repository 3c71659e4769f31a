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

Method order and descriptions come from the scoring-method registry
(:mod:`ich3d.evaluation.methods`), or from the caller. Sending the report to W&B
is :mod:`ich3d.tracking.evaluation`'s job; nothing here touches a tracker.
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
from ich3d.evaluation.operating_points import Proportion, apply_threshold, operating_points
from ich3d.evaluation.plots import plot_roc_scores
from ich3d.evaluation.roc_table import render_markdown, validate_predictions

__all__ = [
    "EvaluationReport",
    "method_columns",
    "method_descriptions",
    "slice_level_auc",
    "build_report",
    "render_report",
]

log = logging.getLogger(__name__)

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


def _registry_order() -> list[str]:
    from ich3d.evaluation.methods import method_names

    return method_names()


def method_descriptions(names: Sequence[str] | None = None) -> dict[str, str]:
    """The registered methods' one-line descriptions (of ``names``, default all)."""
    from ich3d.evaluation.methods import all_methods

    found = {m.name: m.description for m in all_methods()}
    return {n: found[n] for n in (names if names is not None else found) if n in found}


def method_columns(frame: pd.DataFrame, methods: Sequence[str] | None = None) -> list[str]:
    """The score columns of a predictions table, in the registry's order then input order.

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
        known = [m for m in _registry_order() if m in cols]
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


def _operating_point_entries(
    val_labels: ArrayLike,
    val_scores: ArrayLike,
    test_labels: ArrayLike,
    test_scores: ArrayLike,
    target_sensitivity: float,
    level: float,
) -> dict[str, dict[str, Any]]:
    """:func:`~ich3d.evaluation.operating_points.operating_points` as ``metrics.json`` entries.

    Each rule's :meth:`OperatingPoint.to_dict` on test plus ``"validation"``: the
    sensitivity, specificity and accuracy at the same threshold on the validation
    cases, and, for ``sensitivity``, ``"target"``.
    """
    out: dict[str, dict[str, Any]] = {}
    ops = operating_points(val_labels, val_scores, test_labels, test_scores, target_sensitivity, level)
    for rule, op in ops.items():
        val_op = apply_threshold(val_labels, val_scores, op.threshold, level)
        d = op.to_dict()
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
    descriptions: Mapping[str, str] | None = None,
    unfinished: Mapping[str, str] | None = None,
) -> EvaluationReport:
    """Compute every statistic of the report and write its files to ``out_dir``.

    Args:
        test: evaluated split: ``key``, ``label`` (0/1) and one score column per method.
        out_dir: output folder (created).
        val: validation split with the same score columns; the operating points
            are chosen on it. None (or a method without both classes / without its
            column in ``val``) skips that method's operating points, with a note.
        methods: score columns to report; default every numeric column, ordered
            by the scoring-method registry's order then input order.
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
        descriptions: method -> one line for the report; default the registered
            methods' descriptions (:func:`method_descriptions`).
        unfinished: method -> the stage it was scored from, for methods whose stage
            did not finish (``best.ckpt`` without ``result.json``): marked
            "unfinished" in ``metrics.json`` (``unfinished``, ``per_method``) and
            ``report.md``.

    Returns:
        The :class:`EvaluationReport`. ``metrics.json`` holds ``title``, ``split``,
        ``level``, ``target_sensitivity``, ``methods``, ``best``, ``delong`` (exactly
        the ``ich3d roc --json`` schema), ``per_method`` (name -> auc, ci, var, p/z
        vs best, operating points, seconds per volume), ``operating_points``,
        ``timing``, ``hardware``, ``slice_level``, ``svm``, ``missing``, ``notes``,
        ``descriptions``, ``unfinished``.

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
            ops[c] = _operating_point_entries(
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
        if unfinished and m.name in unfinished:
            entry["unfinished"] = True
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
        "descriptions": dict(descriptions) if descriptions is not None else method_descriptions(cols),
        "unfinished": {m: str(unfinished[m]) for m in cols if m in unfinished} if unfinished else {},
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
    unfinished = metrics.get("unfinished") or {}
    if unfinished:
        stages = ", ".join(f"`{s}`" for s in dict.fromkeys(unfinished.values()))
        lines += [
            "",
            f"**Unfinished**: {', '.join(f'`{m}`' for m in unfinished)} scored from the best.ckpt of "
            f"stage(s) {stages}, which did not finish training (no result.json); not a final result.",
        ]
    lines += ["", "## Volume-level ROC AUC", ""]
    lines.append(render_markdown(result).rstrip("\n"))
    lines += ["", "![ROC curves of all methods](roc.png)", ""]

    descriptions = metrics.get("descriptions") or {}
    described = [m for m in metrics["methods"] if m in descriptions or m in unfinished]
    if described:
        lines += ["Methods:", ""]
        for m in described:
            desc = descriptions.get(m, "")
            if m in unfinished:
                desc += f" (**unfinished**: {unfinished[m]} did not finish)"
            lines.append(f"- `{m}`: {desc.strip()}")
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

    from ich3d.evaluation.slice_level import render_slice_systems

    lines += render_slice_systems(metrics)

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

    if metrics.get("per_target"):  # a run trained on several targets (data.targets)
        from ich3d.evaluation.per_target import render_per_target

        lines += [render_per_target(metrics["per_target"])]

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
