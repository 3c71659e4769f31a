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
is :mod:`ich3d.evaluation.report.wandb`'s job; nothing here touches a tracker.
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

from ich3d.errors import UserError
from ich3d.evaluation.methods import all_methods, method_names
from ich3d.evaluation.report.plots import plot_roc_scores
from ich3d.evaluation.report.render import render_report
from ich3d.stats.delong import DeLongResult, delong_roc
from ich3d.stats.formatting import jsonable
from ich3d.stats.multiplicity import holm_adjust
from ich3d.stats.operating_points import operating_point_entries
from ich3d.stats.roc_table import slice_level_auc, validate_predictions

__all__ = [
    "EvaluationReport",
    "method_columns",
    "method_descriptions",
    "slice_level_auc",
    "build_report",
    "render_report",
    "check_frame",
    "paired_tests",
    "interval_cautions",
    "MIN_CASES_PER_CLASS",
]

log = logging.getLogger(__name__)

#: Fewer positive or negative cases than this in the evaluated split: the report warns
#: that its intervals are too wide to separate methods (:func:`interval_cautions`).
MIN_CASES_PER_CLASS = 100

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


def method_descriptions(names: Sequence[str] | None = None) -> dict[str, str]:
    """The registered methods' one-line descriptions (of ``names``, default all)."""
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
        known = [m for m in method_names() if m in cols]
        cols = known + [c for c in cols if c not in known]
    if not cols:
        raise UserError("predictions have no score column besides key and label")
    return cols


def check_frame(frame: pd.DataFrame, what: str) -> None:
    for c in _ID_COLUMNS:
        if c not in frame.columns:
            raise UserError(f"{what} predictions need a {c!r} column (columns: {', '.join(map(str, frame.columns))})")
    if frame["key"].duplicated().any():
        dup = frame.loc[frame["key"].duplicated(), "key"].iloc[0]
        raise UserError(f"{what} predictions list volume {dup!r} more than once")


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
    check_frame(test, split)
    cols = method_columns(test, methods)
    preds = validate_predictions(
        test["label"].to_numpy(dtype=np.float64), test[cols].to_numpy(dtype=np.float64), cols, split
    )
    result = delong_roc(preds.labels, preds.scores, names=cols, level=level)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    notes_l = [str(n) for n in notes]

    test_out = test[["key", "label", *cols]].copy()
    test_out["label"] = preds.labels
    files["predictions"] = out / "predictions.csv"
    test_out.to_csv(files["predictions"], index=False)
    if val is not None:
        check_frame(val, "validation")
        files["val_predictions"] = out / "val_predictions.csv"
        val[["key", "label", *(c for c in cols if c in val.columns)]].to_csv(files["val_predictions"], index=False)
        ops = _operating_points(val, test_out, cols, target_sensitivity, level, notes_l)
    else:
        ops = {}
        notes_l.append("no validation predictions: operating points not computed")

    files["roc"] = out / "roc.png"
    plot_roc_scores(
        preds.labels, preds.scores, result, files["roc"], title=f"{title}: {split} ROC ({len(preds.labels)} volumes)"
    )
    metrics: dict[str, Any] = {
        "title": title,
        "split": split,
        "n_volumes": int(len(preds.labels)),
        "n_pos": int(result.n_pos),
        "n_neg": int(result.n_neg),
        "level": float(level),
        "target_sensitivity": float(target_sensitivity),
        "methods": cols,
        "best": result.names[result.best],
        "delong": result.to_dict(),
        "paired_tests": paired_tests(result),
        "tta_tests": tta_tests(result),
        "per_method": _per_method(result, ops, timing or {}, unfinished or {}),
        "operating_points": ops,
        "timing": {k: float(v) for k, v in (timing or {}).items()},
        "hardware": dict(hardware or {}),
        "slice_level": dict(slice_level or {}),
        "svm": dict(svm or {}),
        "missing": dict(missing or {}),
        "notes": notes_l,
        "cautions": interval_cautions(result),
        "descriptions": dict(descriptions) if descriptions is not None else method_descriptions(cols),
        "unfinished": {m: str(unfinished[m]) for m in cols if m in unfinished} if unfinished else {},
    }
    if extra:
        metrics.update(dict(extra))
    metrics = jsonable(metrics)

    markdown = render_report(metrics, result)
    files["metrics"] = out / "metrics.json"
    files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
    files["report"] = out / "report.md"
    files["report"].write_text(markdown)
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return EvaluationReport(metrics=metrics, delong=result, markdown=markdown, files=files)


def _operating_points(
    val: pd.DataFrame,
    test: pd.DataFrame,
    cols: Sequence[str],
    target_sensitivity: float,
    level: float,
    notes: list[str],
) -> dict[str, dict[str, Any]]:
    """Operating points of every method with usable validation scores (chosen there, applied to test)."""
    ops: dict[str, dict[str, Any]] = {}
    vy = val["label"].to_numpy()
    for c in cols:
        if c not in val.columns:
            notes.append(f"no validation scores for {c}: no operating point")
            continue
        vs = val[c].to_numpy(dtype=np.float64)
        if not np.isin(vy, (0, 1)).all() or (vy == 1).sum() == 0 or (vy == 0).sum() == 0:
            notes.append(f"validation split lacks a class or has bad labels: no operating point for {c}")
            continue
        if np.isnan(vs).any():
            notes.append(f"validation scores of {c} contain NaN: no operating point")
            continue
        ops[c] = operating_point_entries(
            vy, vs, test["label"].to_numpy(), test[c].to_numpy(dtype=np.float64), target_sensitivity, level
        )
    return ops


def _per_method(
    result: DeLongResult,
    ops: Mapping[str, Any],
    timing: Mapping[str, float],
    unfinished: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """``metrics.json``'s ``per_method``: AUC, interval, test against the best, operating points, time."""
    best = result.names[result.best]
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
        if m.name in timing:
            entry["seconds_per_volume"] = float(timing[m.name])
        if m.name in unfinished:
            entry["unfinished"] = True
        per_method[m.name] = entry
    return per_method


def paired_tests(result: DeLongResult) -> list[dict[str, Any]]:
    """Every paired DeLong test with its Holm-Bonferroni adjusted p-value (``p_holm``), in table order."""
    holm = holm_adjust([t.p for t in result.pairs])
    return [{**t.to_dict(), "p_holm": float(q)} for t, q in zip(result.pairs, holm, strict=True)]


def tta_tests(result: DeLongResult) -> list[dict[str, Any]]:
    """The paired DeLong test of each TTA variant (``finetune+flip_lr``) against its plain method.

    ``diff`` is ``AUC_tta - AUC_plain`` with its interval; ``p`` the two-sided p-value.
    """
    auc = dict(zip(result.names, result.aucs.tolist(), strict=True))
    out = []
    for t in result.pairs:
        for plain, tta, sign in ((t.a, t.b, -1.0), (t.b, t.a, 1.0)):
            if tta.split("+", 1)[0] == plain and "+" in tta:
                lo, hi = sorted((sign * t.diff_ci_lower, sign * t.diff_ci_upper))
                out.append({
                    "method": tta, "plain": plain, "auc": auc[tta], "auc_plain": auc[plain],
                    "diff": auc[tta] - auc[plain], "diff_ci_lower": lo, "diff_ci_upper": hi, "p": t.p,
                })
    return out


def interval_cautions(result: DeLongResult) -> list[str]:
    """Why this split's intervals may not separate methods (empty when they can).

    The rule (:data:`MIN_CASES_PER_CLASS`): fewer than 100 positive or 100 negative
    cases, or, with two methods or more, every pair of AUC intervals overlapping.
    """
    out: list[str] = []
    if result.n_pos < MIN_CASES_PER_CLASS or result.n_neg < MIN_CASES_PER_CLASS:
        out.append(
            f"small split: {result.n_pos} positive and {result.n_neg} negative volumes (fewer than "
            f"{MIN_CASES_PER_CLASS} of a class): the AUC intervals are wide, and differences between "
            "methods of a few hundredths are within chance"
        )
    models = [m for m in result.models if math.isfinite(m.ci_lower) and math.isfinite(m.ci_upper)]
    if len(models) >= 2 and all(
        a.ci_lower <= b.ci_upper and b.ci_lower <= a.ci_upper for i, a in enumerate(models) for b in models[i + 1 :]
    ):
        out.append(
            "every pair of AUC intervals overlaps: the intervals alone separate no two methods "
            "(the paired tests, Holm-adjusted, are the comparison to read)"
        )
    return out
