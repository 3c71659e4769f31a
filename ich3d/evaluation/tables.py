"""The evaluation's slice-level and per-target tables, assembled from the shared context.

:func:`stage1_slice_table` is the stage-1 CNN's ``slice_predictions.csv`` with its
slice AUCs (all slices and cranial-cavity slices); :func:`per_target_section` is the
``per_target`` section of ``metrics.json`` for a run of several targets
(``data.targets``) with its ``predictions_<target>.csv`` and
``slice_predictions_targets.csv``. Both read the context's cached passes only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.data.cavity import CavityRule, load_slice_stats
from ich3d.data.targets import target_weights
from ich3d.evaluation.report import per_target as pt
from ich3d.stats.roc_table import slice_level_auc

__all__ = ["stage1_slice_table", "per_target_section"]

log = logging.getLogger(__name__)

#: method -> (volume keys, scores): one row per key, ``(n, K)`` for several targets
KeyedScores = Mapping[str, tuple[list[str], np.ndarray]]


def stage1_slice_table(dm: Any, outs: Any, label: str, level: float) -> tuple[dict[str, Any], pd.DataFrame]:
    """Slice-level AUC of the stage-1 CNN on the evaluated split (all and cranial-cavity slices).

    Args:
        dm: the evaluated role's data module at ``depth_pool=1``.
        outs: the stage-1 :class:`~ich3d.evaluation.inference.passes.SliceOutputs` of the evaluated volumes.
        label: ``data.label``.
        level: confidence level.

    Returns:
        ``({"cavity": ..., "all": ...}, table)``: the AUCs (empty without a 0/1 slice label)
        and the ``key, slice_index, label, probability`` table.
    """
    rows = [
        pd.DataFrame({"key": key, "slice_index": np.arange(len(p)), "probability": p})
        for key, p in zip(outs.keys, outs.probs, strict=True)
    ]
    table = pd.concat(rows, ignore_index=True)
    sl = dm.cache.slices[["key", "slice_index", label]].rename(columns={label: "label"})
    table = table.merge(sl, on=["key", "slice_index"], how="left", validate="one_to_one")
    if table["label"].isna().any():
        raise RuntimeError("slice probabilities and slices.csv disagree on the slices of a volume")
    table["label"] = table["label"].astype(np.int64)
    table = table[["key", "slice_index", "label", "probability"]]
    result: dict[str, Any] = {}
    labeled = table["label"].isin([0, 1]).to_numpy()
    if not labeled.any():  # e.g. another cache with study-level labels only
        log.warning("slice-level AUC not computed: no evaluated slice has a 0/1 label")
        return result, table
    result["all"] = slice_level_auc(table["label"][labeled], table["probability"][labeled], level)
    try:
        rule = CavityRule()
        stats = load_slice_stats(dm.cache, rule)
        t = table.merge(stats[["key", "slice_index", "cavity_fraction"]], on=["key", "slice_index"], how="left")
        cav = (t["cavity_fraction"].fillna(0.0) >= rule.min_fraction).to_numpy() & labeled
        result = {"cavity": slice_level_auc(t["label"][cav], t["probability"][cav], level), **result}
    except Exception as exc:  # the statistics are a convenience; the all-slice AUC stands
        log.warning("cranial-cavity slice statistics unavailable: %s", exc)
    return result, table


def per_target_section(
    ctx: Any,
    scored: Sequence[str],
    out_dir: Path,
    target_scores: KeyedScores,
    val_target_scores: KeyedScores,
    slice_scores: Mapping[str, tuple[list[str], list[np.ndarray]]],
) -> dict[str, Any]:
    """Per-target volume and slice statistics (:mod:`ich3d.evaluation.report.per_target`) and their CSVs."""
    config = ctx.config
    targets = list(ctx.targets)
    level = config.evaluation.confidence
    weights = list(target_weights(targets, config.data.target_weights))
    frames = pt.target_frames(ctx.table("evaluated"), target_scores, targets)
    for t, f in frames.items():
        f.to_csv(out_dir / f"predictions_{t}.csv", index=False)
    section: dict[str, Any] = {
        "targets": targets,
        "weights": weights,
        "level": level,
        "volume": pt.volume_level(frames, [m for m in scored if m in target_scores], level),
    }
    if val_target_scores:  # operating points per target: chosen on validation, as the main table's
        val_frames = pt.target_frames(ctx.table("val"), val_target_scores, targets)
        section["operating_points"] = pt.operating_points_per_target(
            frames, val_frames, config.evaluation.target_sensitivity, level
        )
    labels = ctx.datamodule("evaluated", 1).cache.slices[["key", "slice_index", *targets]]
    if ctx.has_slice_outputs("evaluated"):
        keep = set(frames[targets[0]]["key"]) | set(ctx.table("evaluated")["key"])
        table = _stage1_target_table(ctx.slice_outputs("evaluated"), keep, targets, labels)
        if table is not None:
            table.to_csv(out_dir / "slice_predictions_targets.csv", index=False)
            section["slice"] = pt.slice_level(table, targets, weights, level)
    # volume models with per-slice outputs (model.per_slice): each pooled slice's
    # probabilities stand for the data.depth_pool slices it pools
    evaluated = set(ctx.table("evaluated")["key"])
    for method, (keys, per_volume) in slice_scores.items():
        rows = [
            _slice_rows(key, np.repeat(p, config.data.depth_pool, axis=0), targets)
            for key, p in zip(keys, per_volume, strict=True)
            if key in evaluated
        ]
        if rows:
            t = pd.concat(rows, ignore_index=True).merge(labels, on=["key", "slice_index"], how="inner")
            t[targets] = t[targets].fillna(-1).astype(np.int64)
            section.setdefault("slice_methods", {})[method] = pt.slice_level(t, targets, weights, level)
    return section


def _slice_rows(key: str, probs: np.ndarray, targets: Sequence[str]) -> pd.DataFrame:
    r = pd.DataFrame(probs, columns=[f"p_{t}" for t in targets])
    r.insert(0, "slice_index", np.arange(len(probs)))
    r.insert(0, "key", key)
    return r


def _stage1_target_table(
    outs: Any, keep: set[str], targets: Sequence[str], labels: pd.DataFrame
) -> pd.DataFrame | None:
    """``key, slice_index, <target>..., p_<target>...`` of the stage-1 pass (None when empty)."""
    per_volume = outs.target_probs or [p[:, None] for p in outs.probs]  # one target: probs
    rows = [_slice_rows(key, p, targets) for key, p in zip(outs.keys, per_volume, strict=True) if key in keep]
    if not rows:
        return None
    table = pd.concat(rows, ignore_index=True)
    table = table.merge(labels, on=["key", "slice_index"], how="left", validate="one_to_one")
    table[list(targets)] = table[list(targets)].fillna(-1).astype(np.int64)
    return table[["key", "slice_index", *targets, *(f"p_{t}" for t in targets)]]
