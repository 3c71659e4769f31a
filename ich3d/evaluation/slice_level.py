"""Slice-level results of every slice classifier of a run: the figures the papers report.

The published slice systems (docs/method.md section 2) report slice accuracy,
sensitivity and specificity. For each slice classifier of an evaluation (the
stage-1 CNN, named after its stage, and every scoring method that returns
``MethodScores.stage1_slice_scores``: ``slice_svm``, ``ae_svm``), :func:`slice_systems`
measures on the evaluated split's **cranial-cavity slices with a 0/1 slice
label** (the slices stage 1 trains and validates on):

* the slice ROC AUC with its DeLong interval;
* accuracy, sensitivity and specificity, each with a Wilson interval, at two
  thresholds chosen on the validation split's cranial-cavity slices: Youden's J
  and the target sensitivity (``evaluation.target_sensitivity``), as the volume
  operating points (:mod:`~ich3d.evaluation.operating_points`).

:func:`slice_frame` is the per-slice table of a role (slice label, volume label,
cranial cavity) aligned with the stage-1 outputs, shared with the slice SVM's
training-set selection (:func:`training_rows`). :func:`render_slice_systems` is the
``report.md`` section.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["slice_frame", "training_rows", "slice_systems", "render_slice_systems", "STAGE1_DESCRIPTION"]

log = logging.getLogger(__name__)

STAGE1_DESCRIPTION = "stage-1 slice CNN's own output layer (sigmoid)"


def slice_frame(ctx: Any, role: str) -> pd.DataFrame:
    """Every slice of the role's stage-1 pass, in its flat order (volume by volume, slice order).

    Columns: ``key``, ``slice_index``, ``label`` (slice label on ``data.label``; -1
    when unknown), ``volume_label``, ``cavity`` (shows the cranial cavity, the
    default :class:`~ich3d.data.cavity.CavityRule`). Computed once per role.
    """

    def build() -> pd.DataFrame:
        from ich3d.data.cavity import CavityRule, load_slice_stats

        outs = ctx.slice_outputs(role)
        n = [len(p) for p in outs.probs]
        frame = pd.DataFrame(
            {
                "key": np.repeat(np.asarray(outs.keys, dtype=object), n),
                "slice_index": np.concatenate([np.arange(k) for k in n]) if n else np.zeros(0, np.int64),
                "volume_label": np.repeat(outs.labels, n),
            }
        )
        cache = ctx.datamodule(role, 1).cache
        label = ctx.config.data.label
        sl = cache.slices[["key", "slice_index", label]].rename(columns={label: "label"})
        frame = frame.merge(sl, on=["key", "slice_index"], how="left", validate="one_to_one")
        rule = CavityRule()
        stats = load_slice_stats(cache, rule)[["key", "slice_index", "cavity_fraction"]]
        frame = frame.merge(stats, on=["key", "slice_index"], how="left", validate="one_to_one")
        frame["label"] = frame["label"].fillna(-1).astype(np.int64)
        frame["cavity"] = frame["cavity_fraction"].fillna(0.0).to_numpy() >= rule.min_fraction
        return frame[["key", "slice_index", "label", "volume_label", "cavity"]]

    return ctx.memo(("slice_frame", ctx.role_name(role)), build)


def _labelled_cavity(frame: pd.DataFrame) -> np.ndarray:
    return frame["cavity"].to_numpy() & frame["label"].isin([0, 1]).to_numpy()


def training_rows(frame: pd.DataFrame, *, train: bool, max_n: int, seed: int) -> np.ndarray:
    """Rows of :func:`slice_frame` a slice classifier is fitted (``train``) or tuned on.

    Cranial-cavity slices with a 0/1 slice label; for training, negatives come only
    from negative volumes (as stage 1 samples them). At most ``max_n`` rows: a seeded
    subset stratified by slice label (:func:`~ich3d.evaluation.slice_svm.bounded_subset`).
    """
    from ich3d.evaluation.slice_svm import bounded_subset

    ok = _labelled_cavity(frame)
    if train:
        y = frame["label"].to_numpy()
        ok &= (y == 1) | (frame["volume_label"].to_numpy() == 0)
    rows = np.flatnonzero(ok)
    return rows[bounded_subset(frame["label"].to_numpy()[rows], max_n, seed)]


def _one(
    name: str,
    description: str,
    test_y: np.ndarray,
    test_s: np.ndarray,
    val_y: np.ndarray,
    val_s: np.ndarray,
    target: float,
    level: float,
) -> dict[str, Any]:
    from ich3d.evaluation.operating_points import (
        apply_threshold,
        threshold_for_sensitivity,
        youden_threshold,
    )
    from ich3d.evaluation.report import slice_level_auc

    entry: dict[str, Any] = {"description": description, **slice_level_auc(test_y, test_s, level)}
    ops: dict[str, Any] = {}
    if (val_y == 1).any() and (val_y == 0).any() and (test_y == 1).any() and (test_y == 0).any():
        for rule, thr in (
            ("youden", youden_threshold(val_y, val_s)),
            ("sensitivity", threshold_for_sensitivity(val_y, val_s, target)),
        ):
            d = apply_threshold(test_y, test_s, thr, level).to_dict()
            d["validation_sensitivity"] = apply_threshold(val_y, val_s, thr, level).sensitivity.value
            if rule == "sensitivity":
                d["target"] = float(target)
            ops[rule] = d
    else:
        log.warning("slice level: %s has a split without both slice classes; no operating point", name)
    entry["operating_points"] = ops
    return entry


def slice_systems(
    ctx: Any,
    methods: Mapping[str, tuple[Any, Any]],
    *,
    keep: Sequence[str] | None = None,
    descriptions: Mapping[str, str] | None = None,
    target_sensitivity: float = 0.98,
    level: float = 0.95,
) -> dict[str, Any]:
    """The slice-level table: stage-1 CNN plus every method with slice scores.

    Args:
        ctx: the :class:`~ich3d.evaluation.context.EvaluationContext` (its stage-1 passes
            of ``evaluated`` and ``val`` are used; nothing runs when they did not).
        methods: method name -> ``(evaluated MethodScores, val MethodScores)``, both with
            ``stage1_slice_scores`` (one array per volume, every slice of the volume in order).
        keep: the evaluated volumes (default every volume of the pass).
        descriptions: method name -> one line.
        target_sensitivity: validation slice sensitivity of the second threshold.
        level: confidence level of the intervals.

    Returns:
        ``{system: {"description", "n_slices", "n_pos", "n_neg", "auc", "ci_lower",
        "ci_upper", "var", "level", "operating_points": {"youden": ..., "sensitivity": ...}}}``;
        empty when the stage-1 CNN did not run or no evaluated slice has a 0/1 label.
    """
    from ich3d.evaluation.methods.base import slice_stage_name

    if not (ctx.has_slice_outputs("evaluated") and ctx.has_slice_outputs("val")):
        return {}
    frames = {r: slice_frame(ctx, r) for r in ("evaluated", "val")}
    masks = {r: _labelled_cavity(f) for r, f in frames.items()}
    if keep is not None:
        masks["evaluated"] &= frames["evaluated"]["key"].isin(set(keep)).to_numpy()
    if not masks["evaluated"].any():
        log.warning("slice level: no evaluated cranial-cavity slice has a 0/1 slice label")
        return {}
    ys = {r: frames[r]["label"].to_numpy()[masks[r]] for r in frames}

    def flat(role: str, keys: Sequence[str], per_volume: Sequence[np.ndarray]) -> np.ndarray:
        by_key = dict(zip(keys, per_volume, strict=True))
        order = ctx.slice_outputs(role).keys
        return np.concatenate([np.asarray(by_key[k], dtype=np.float64) for k in order])[masks[role]]

    stage = slice_stage_name()
    out: dict[str, Any] = {}
    s1 = {r: flat(r, ctx.slice_outputs(r).keys, ctx.slice_outputs(r).probs) for r in frames}
    out[stage] = _one(stage, STAGE1_DESCRIPTION, ys["evaluated"], s1["evaluated"], ys["val"], s1["val"],
                      target_sensitivity, level)
    for name, (got, val_got) in methods.items():
        s = {"evaluated": flat("evaluated", got.keys, got.stage1_slice_scores), "val": flat("val", val_got.keys,
                                                                                       val_got.stage1_slice_scores)}
        desc = (descriptions or {}).get(name, name)
        out[name] = _one(name, desc, ys["evaluated"], s["evaluated"], ys["val"], s["val"], target_sensitivity, level)
    return out


def _prop(d: Mapping[str, Any]) -> str:
    if d.get("value") is None:
        return "n/a"
    return f"{d['value']:.3f} [{d['ci_lower']:.3f}, {d['ci_upper']:.3f}]"


def render_slice_systems(metrics: Mapping[str, Any]) -> list[str]:
    """The ``report.md`` section of ``metrics["slice_level_systems"]`` (no lines when absent)."""
    systems = metrics.get("slice_level_systems") or {}
    if not systems:
        return []
    pct = f"{float(metrics.get('level', 0.95)) * 100:g}%"
    lines = [
        "## Slice level (every slice classifier)",
        "",
        f"Cranial-cavity slices of `{metrics.get('split', 'test')}` with a 0/1 slice label (what the slice "
        f"papers report). AUC: DeLong {pct} interval; thresholds chosen on the validation split's "
        f"cranial-cavity slices (Youden's J; validation sensitivity >= target), accuracy, sensitivity and "
        f"specificity with {pct} Wilson intervals.",
        "",
        "| system | slices (pos/neg) | AUC | rule | threshold | accuracy | sensitivity | specificity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, d in systems.items():
        auc = "n/a" if d.get("auc") is None else f"{d['auc']:.3f} [{d['ci_lower']:.3f}, {d['ci_upper']:.3f}]"
        ops = d.get("operating_points") or {}
        first = True
        for rule, op in ops.items():
            label = "Youden" if rule == "youden" else f"sens >= {op['target']:g}"
            lead = f"| {name} | {d['n_slices']} ({d['n_pos']}/{d['n_neg']}) | {auc} " if first else "| | | "
            lines.append(
                f"{lead}| {label} | {op['threshold']:.4g} | {_prop(op['accuracy'])} | "
                f"{_prop(op['sensitivity'])} | {_prop(op['specificity'])} |"
            )
            first = False
        if not ops:
            lines.append(f"| {name} | {d['n_slices']} ({d['n_pos']}/{d['n_neg']}) | {auc} | - | - | - | - | - |")
    lines += ["", "Systems: " + "; ".join(f"`{n}`: {d.get('description', '')}" for n, d in systems.items()) + ".", ""]
    return lines
