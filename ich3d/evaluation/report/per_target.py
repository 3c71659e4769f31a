"""Per-target statistics of a run trained on several labels (``data.targets``, e.g. the six RSNA labels).

For every target (``epidural`` ... ``any``):

* volume level, every method that scored it (the stage-1 ``max`` / ``p95``, one
  linear SVM per target, each volume stage): AUC with its DeLong interval and the
  paired DeLong tests between the methods (:func:`~ich3d.stats.delong.delong_roc`,
  non-strict: a target with fewer than 2 positive or negative volumes gets NaN
  intervals and a warning instead of an error);
* operating points (chosen on validation: the target sensitivity and Youden, as
  the main table's) per target and method;
* slice level, the stage-1 CNN: AUC with its DeLong interval on every labelled
  slice of the evaluated volumes, and the challenge's weighted log loss over those
  slices (:func:`~ich3d.stats.log_loss.weighted_log_loss`); the same for each
  volume model with per-slice outputs (``model.per_slice``, ``slice_methods``), a
  pooled slice's probabilities standing for the ``data.depth_pool`` slices it pools.

``ich3d evaluate`` puts the result under ``per_target`` in ``metrics.json``, renders
it as the per-subtype table of ``report.md`` (:func:`render_per_target`) and writes
one ``predictions_<target>.csv`` per target in the ``predictions.csv`` format, so
``ich3d roc predictions_subdural.csv`` draws one subtype's ROC curves.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ich3d.stats.delong import delong_roc
from ich3d.stats.formatting import finite
from ich3d.stats.log_loss import per_target_log_loss, weighted_log_loss
from ich3d.stats.operating_points import operating_point_entries

__all__ = ["volume_level", "slice_level", "target_frames", "operating_points_per_target", "render_per_target"]


def _aucs(labels: np.ndarray, scores: Mapping[str, np.ndarray], level: float) -> dict[str, Any]:
    names = [m for m, s in scores.items() if not np.isnan(s).any()]
    y = labels.astype(np.int64)
    out: dict[str, Any] = {"n_pos": int((y == 1).sum()), "n_neg": int((y == 0).sum()), "methods": {}, "pairs": []}
    if not names or out["n_pos"] == 0 or out["n_neg"] == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = delong_roc(y, np.stack([scores[m] for m in names], 1), names=names, level=level, strict=False)
    for m in res.models:
        out["methods"][m.name] = {"auc": finite(m.auc), "ci_lower": finite(m.ci_lower), "ci_upper": finite(m.ci_upper)}
    out["pairs"] = [{k: (finite(v) if isinstance(v, float) else v) for k, v in p.to_dict().items()} for p in res.pairs]
    return out


def target_frames(
    table: pd.DataFrame, scores: Mapping[str, tuple[Sequence[str], np.ndarray]], targets: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """One ``key, label, <method>...`` frame per target (the ``predictions.csv`` format).

    Args:
        table: the evaluated volumes with one 0/1 column per target (``split_table``).
        scores: method -> ``(keys, (n, K) scores)``.
        targets: the target names, the columns of the score matrices.
    """
    base = table[["key", *targets]].reset_index(drop=True)
    frames = {}
    for k, t in enumerate(targets):
        f = base[["key"]].copy()
        f["label"] = base[t].astype(np.int64)
        for method, (keys, mat) in scores.items():
            col = pd.Series(np.asarray(mat)[:, k], index=list(keys))
            f[method] = col.reindex(f["key"]).to_numpy(np.float64)
        frames[t] = f[f["label"].isin([0, 1])].reset_index(drop=True)
    return frames


def volume_level(frames: Mapping[str, pd.DataFrame], methods: Sequence[str], level: float = 0.95) -> dict[str, Any]:
    """Per target: AUC + DeLong interval of each method, and the paired tests."""
    return {
        t: _aucs(f["label"].to_numpy(), {m: f[m].to_numpy() for m in methods if m in f}, level)
        for t, f in frames.items()
    }


def operating_points_per_target(
    test: Mapping[str, pd.DataFrame],
    val: Mapping[str, pd.DataFrame],
    target_sensitivity: float = 0.98,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Per target and method, the operating points of the main table (same rules).

    The thresholds are chosen on the validation frame (``target_sensitivity`` and
    Youden) and applied to the test frame; a target or method without both classes
    on either side, or with an unfitted (NaN) score, is left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for t, f in test.items():
        v = val.get(t)
        if v is None or f["label"].nunique() < 2 or v["label"].nunique() < 2:
            continue
        for m in [c for c in f.columns if c not in ("key", "label") and c in v.columns]:
            if f[m].isna().any() or v[m].isna().any():
                continue
            out.setdefault(t, {})[m] = operating_point_entries(
                v["label"].to_numpy(), v[m].to_numpy(), f["label"].to_numpy(), f[m].to_numpy(),
                target_sensitivity, level,
            )
    return out


def slice_level(
    slices: pd.DataFrame, targets: Sequence[str], weights: Sequence[float], level: float = 0.95
) -> dict[str, Any]:
    """The stage-1 CNN per target at slice level, and the weighted log loss.

    Args:
        slices: one row per slice: ``<target>`` 0/1 labels and ``p_<target>`` probabilities.
        targets: the targets.
        weights: the targets' weights (the challenge's: ``any`` 2, others 1).
        level: confidence level.

    Returns:
        ``{"n_slices", "log_loss", "log_loss_per_target": {t: ...}, "targets": {t: {auc, ci...}}}``
        over the slices labelled 0/1 on every target.
    """
    y = slices[list(targets)].to_numpy()
    p = slices[[f"p_{t}" for t in targets]].to_numpy(np.float64)
    ok = np.isin(y, (0, 1)).all(axis=1)
    y, p = y[ok].astype(np.int64), p[ok]
    out: dict[str, Any] = {"n_slices": int(ok.sum()), "targets": {}}
    if not ok.any():
        return out
    out["log_loss"] = weighted_log_loss(y, p, weights)
    out["log_loss_per_target"] = {t: float(v) for t, v in zip(targets, per_target_log_loss(y, p), strict=True)}
    for k, t in enumerate(targets):
        d = _aucs(y[:, k], {"slice": p[:, k]}, level)
        out["targets"][t] = {"n_pos": d["n_pos"], "n_neg": d["n_neg"], **d["methods"].get("slice", {"auc": None})}
    return out


def _fmt(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("auc") is None:
        return "n/a"
    if d.get("ci_lower") is None:
        return f"{d['auc']:.3f}"
    return f"{d['auc']:.3f} ({d['ci_lower']:.3f}-{d['ci_upper']:.3f})"


def render_per_target(section: Mapping[str, Any]) -> str:
    """The per-subtype tables of ``report.md`` (markdown) from ``metrics.json``'s ``per_target``."""
    targets = list(section["targets"])
    volume = section.get("volume", {})
    methods: list[str] = []
    for t in targets:
        for m in volume.get(t, {}).get("methods", {}):
            if m not in methods:
                methods.append(m)
    lines = ["## Per target", ""]
    weights = ", ".join(f"{t} {w:g}" for t, w in zip(targets, section.get("weights", []), strict=False))
    lines.append(f"Volume-level AUC (DeLong {section.get('level', 0.95):.0%} CI) per target; weights {weights}.")
    lines.append("")
    lines.append("| target | pos/neg | " + " | ".join(methods) + " |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in methods) + " |")
    for t in targets:
        v = volume.get(t, {})
        cells = [_fmt(v.get("methods", {}).get(m)) for m in methods]
        lines.append(f"| {t} | {v.get('n_pos', 0)}/{v.get('n_neg', 0)} | " + " | ".join(cells) + " |")
    pairs: list[tuple[str, str]] = []
    for t in targets:
        for p in volume.get(t, {}).get("pairs", []):
            if (p["a"], p["b"]) not in pairs:
                pairs.append((p["a"], p["b"]))
    if pairs:
        lines += ["", "Paired DeLong tests per target: p (difference in AUC, first minus second).", ""]
        lines.append("| pair | " + " | ".join(targets) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in targets) + " |")
        for a, b in pairs:
            cells = []
            for t in targets:
                hit = [p for p in volume.get(t, {}).get("pairs", []) if (p["a"], p["b"]) == (a, b)]
                ms = volume.get(t, {}).get("methods", {})
                if not hit or hit[0].get("p") is None:
                    cells.append("n/a")
                    continue
                diff = ""
                if ms.get(a, {}).get("auc") is not None and ms.get(b, {}).get("auc") is not None:
                    diff = f" ({ms[a]['auc'] - ms[b]['auc']:+.3f})"
                cells.append(f"{hit[0]['p']:.3g}{diff}")
            lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    sl = section.get("slice")
    if sl and sl.get("targets"):
        lines += ["", f"Slice level, stage-1 CNN, {sl['n_slices']} slices: weighted log loss "
                  f"{sl['log_loss']:.4f} (the RSNA challenge metric).", ""]
        lines.append("| target | pos/neg slices | AUC (CI) | log loss |")
        lines.append("| --- | --- | --- | --- |")
        for t in targets:
            d = sl["targets"].get(t, {})
            ll = sl.get("log_loss_per_target", {}).get(t)
            lines.append(f"| {t} | {d.get('n_pos', 0)}/{d.get('n_neg', 0)} | {_fmt(d)} | "
                         f"{'n/a' if ll is None else f'{ll:.4f}'} |")
    for method, d in (section.get("slice_methods") or {}).items():
        if d.get("log_loss") is not None:
            aucs = ", ".join(f"{t} {_fmt(d['targets'].get(t))}" for t in targets)
            lines += ["", f"Slice level, `{method}` (per-slice outputs), {d['n_slices']} slices: weighted log "
                      f"loss {d['log_loss']:.4f}; AUC {aucs}."]
    lines.append("")
    lines.append("`predictions_<target>.csv` holds each target's volume scores: "
                 "`ich3d roc predictions_<target>.csv` draws its ROC curves.")
    return "\n".join(lines) + "\n"
