"""``ich3d evaluate RUN_DIR``: every method of a run on its test split, with the report.

Methods (each only when its checkpoint exists; the report names what is missing):

* from ``slice/best.ckpt`` (the stage-1 CNN over every cached slice of a volume):
  ``max``, ``p95`` (``evaluation.percentile``) and ``svm`` (linear SVM on the
  zero-padded slice features, fitted on the training volumes with C chosen on
  validation among ``evaluation.svm_cs``; :mod:`ich3d.evaluation.baselines`);
* ``sequence``, ``finetune``, ``direct``: the volume models of stages 2 and 3 and
  the ablation, on depth-pooled volumes (``data.depth_pool``).

Scores are computed on the validation split (operating points) and on
``evaluation.split`` (default ``test``); :func:`~ich3d.evaluation.report.build_report`
writes ``RUN_DIR/evaluation/`` (or ``--out``): ``predictions.csv``,
``val_predictions.csv``, ``slice_predictions.csv`` (test slices: key, slice index,
slice label, stage-1 probability), ``metrics.json``, ``roc.png`` and ``report.md``.
With tracking on (the run's ``tracking.mode``), the table, ROC curves and summary
metrics go to a W&B run of job type ``evaluate`` in the run's group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.errors import UserError

__all__ = ["SLICE_METHODS", "EvaluationResult", "available_stages", "evaluate_run"]

log = logging.getLogger(__name__)

#: The baselines computed from the stage-1 CNN.
SLICE_METHODS: tuple[str, ...] = ("max", "p95", "svm")


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` produced.

    Attributes:
        out_dir: the evaluation folder.
        report: the :class:`~ich3d.evaluation.report.EvaluationReport`.
        missing: stage or method -> why it was not evaluated.
        wandb_dir: the W&B run's local folder, if one was written.
    """

    out_dir: Path
    report: Any
    missing: dict[str, str] = field(default_factory=dict)
    wandb_dir: str | None = None


def available_stages(run: Any) -> list[str]:
    """Declared stages whose ``best.ckpt`` exists in the run."""
    from ich3d.stages import stage_names

    return [s for s in stage_names() if run.best_ckpt(s).is_file()]


def _frame(table: pd.DataFrame) -> pd.DataFrame:
    return table[["key", "label"]].reset_index(drop=True).copy()


def _put(frame: pd.DataFrame, name: str, keys: Sequence[str], scores: np.ndarray) -> None:
    """Add a score column to ``frame`` by volume key (every key of ``frame`` must be scored)."""
    by_key = pd.Series(np.asarray(scores, dtype=np.float64), index=list(keys))
    col = frame["key"].map(by_key)
    if col.isna().any():
        raise RuntimeError(f"{name}: {int(col.isna().sum())} volume(s) of the split were not scored")
    frame[name] = col.to_numpy(dtype=np.float64)


def evaluate_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    stages: Sequence[str] | None = None,
    device: str = "auto",
    progress: bool = True,
    tracking: bool = True,
) -> EvaluationResult:
    """Evaluate every available method of a run and write the report.

    Args:
        run_dir: the run directory (``runs/<experiment>/<run-id>``).
        out: output folder; default ``RUN_DIR/evaluation``.
        stages: declared stages to evaluate; default all that exist.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``.
        progress: progress bars (default True).
        tracking: log to W&B when the run's config has tracking on (default True).

    Returns:
        The :class:`EvaluationResult`.

    Raises:
        UserError: not a run directory, unknown stage, no checkpoint at all, an
            unlabeled cache, or a split without both classes.
    """
    from ich3d.evaluation.inference import (
        build_eval_datamodule,
        hardware_info,
        predict_slices,
        predict_volumes,
        resolve_device,
    )
    from ich3d.evaluation.report import METHOD_ORDER, build_report, log_to_wandb, slice_level_auc
    from ich3d.runs.checkpoints import load_slice_model, load_volume_model
    from ich3d.runs.run_dir import global_rank_from_env, open_run_dir

    run = open_run_dir(run_dir)
    config = run.load_config()
    ev = config.evaluation
    split = ev.split
    if split not in ("train", "val", "test"):
        raise UserError(f"evaluation.split must be train, val or test, got {split!r}")
    from ich3d.stages import stage_names

    eval_stages = stage_names()
    requested = list(eval_stages) if not stages else list(dict.fromkeys(stages))
    unknown = [s for s in requested if s not in eval_stages]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r} for --stages; expected some of {', '.join(eval_stages)}")
    present = available_stages(run)
    todo = [s for s in requested if s in present]
    missing: dict[str, str] = {}
    for s in requested:
        if s not in present:
            what = "max, p95 and svm baselines" if s == "slice" else "volume model"
            missing[s] = f"no {s}/best.ckpt in the run directory: {what} not evaluated"
    if not todo:
        raise UserError(
            f"{run.path} has none of the requested checkpoints ({', '.join(f'{s}/best.ckpt' for s in requested)}); "
            "train first"
        )
    for why in missing.values():
        log.warning("%s", why)

    dev = resolve_device(device)
    hw = hardware_info(dev)
    out_dir = Path(out) if out is not None else run.path / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    timing: dict[str, float] = {}
    notes: list[str] = []
    extra: dict[str, Any] = {
        "experiment": config.experiment,
        "run_id": run.run_id,
        "percentile": ev.percentile,
        "stages_evaluated": todo,
        "label": config.data.label,
        "depth_pool": config.data.depth_pool,
    }
    test_df: pd.DataFrame | None = None
    val_df: pd.DataFrame | None = None
    svm_info: dict[str, Any] = {}
    slice_level: dict[str, Any] = {}
    load_seconds: dict[str, float] = {}

    # ---- volume models (depth-pooled volumes)
    volume_stages = [s for s in todo if s != "slice"]
    if volume_stages:
        dm = build_eval_datamodule(config, depth_pool=config.data.depth_pool, stage="test")
        test_df, val_df = _frame(dm.split_table(split)), _frame(dm.split_table("val"))
        for stage in volume_stages:
            model, _ = load_volume_model(run, stage)
            for name, frame in ((split, test_df), ("val", val_df)):
                if name == "val" and split == "val":
                    val_df[stage] = test_df[stage]
                    continue
                scores = predict_volumes(
                    model, dm.eval_dataloader(name), dev, progress=progress, desc=f"{stage} {name}"
                )
                _put(frame, stage, scores.keys, scores.probs)
                if name == split:
                    timing[stage] = float(scores.seconds.mean())
                    load_seconds[stage] = scores.load_seconds / len(scores.keys)
            del model

    # ---- stage-1 baselines (every cached slice)
    if "slice" in todo:
        from ich3d.evaluation.baselines import fit_linear_svm, max_score, percentile_score

        dm1 = build_eval_datamodule(config, depth_pool=1, stage="test")
        if test_df is None:
            test_df, val_df = _frame(dm1.split_table(split)), _frame(dm1.split_table("val"))
        assert val_df is not None
        smodel = load_slice_model(run)
        outs = {}
        for name in dict.fromkeys((split, "val", "train")):
            outs[name] = predict_slices(
                smodel, dm1.eval_dataloader(name), dev, progress=progress, desc=f"slice CNN {name}"
            )
        del smodel
        for name, frame in ((split, test_df), ("val", val_df)):
            o = outs[name]
            _put(frame, "max", o.keys, max_score(o.probs))
            _put(frame, "p95", o.keys, percentile_score(o.probs, ev.percentile))
        slice_secs = float(outs[split].seconds.mean())
        timing["max"] = timing["p95"] = slice_secs
        load_seconds["max"] = load_seconds["p95"] = outs[split].load_seconds / len(outs[split].keys)
        try:
            tr, va = outs["train"], outs["val"]
            svm = fit_linear_svm(
                tr.features, tr.labels.astype(np.int64), va.features, va.labels.astype(np.int64), Cs=ev.svm_cs
            )
        except UserError as exc:
            missing["svm"] = f"SVM baseline not fitted: {exc}"
            log.warning("%s", missing["svm"])
        else:
            t0 = time.perf_counter()
            test_scores, n_crop_test = svm.decision_function(outs[split].features)
            svm_secs = (time.perf_counter() - t0) / len(outs[split].keys)
            val_scores, _ = svm.decision_function(outs["val"].features)
            _put(test_df, "svm", outs[split].keys, test_scores)
            _put(val_df, "svm", outs["val"].keys, val_scores)
            timing["svm"] = slice_secs + svm_secs
            load_seconds["svm"] = load_seconds["max"]
            svm_info = {**svm.to_dict(), "n_cropped_test": int(n_crop_test)}
            notes.append(
                "svm: C was chosen on the validation split, so its validation-chosen operating "
                "points are slightly optimistic"
            )
        slice_level, slice_table = _slice_level(dm1, outs[split], config.data.label, ev.confidence, slice_level_auc)
        slice_table.to_csv(out_dir / "slice_predictions.csv", index=False)

    assert test_df is not None and val_df is not None
    scored = [c for c in test_df.columns if c not in ("key", "label")]
    methods = [m for m in METHOD_ORDER if m in scored] + [m for m in scored if m not in METHOD_ORDER]
    extra["load_seconds_per_volume"] = load_seconds
    extra["seconds_total"] = round(time.perf_counter() - t_start, 3)
    report = build_report(
        test_df[["key", "label", *methods]],
        out_dir,
        val=val_df[["key", "label", *[m for m in methods if m in val_df.columns]]],
        methods=methods,
        target_sensitivity=ev.target_sensitivity,
        level=ev.confidence,
        timing=timing,
        hardware=hw,
        slice_level=slice_level,
        svm=svm_info,
        missing=missing,
        notes=notes,
        title=f"ich3d evaluation: {config.experiment}/{run.run_id}",
        split=split,
        extra=extra,
    )
    wandb_dir = None
    if tracking and config.tracking.mode != "disabled" and global_rank_from_env() != 0:
        log.info("not rank 0: the evaluation is not logged to W&B from this process")
    elif tracking and config.tracking.mode != "disabled":
        try:
            wandb_dir = log_to_wandb(report, config, run.path)
        except Exception as exc:  # the files are written; W&B trouble must not lose them
            log.warning("W&B logging of the evaluation failed: %s", exc)
    return EvaluationResult(out_dir=out_dir, report=report, missing=missing, wandb_dir=wandb_dir)


def _slice_level(
    dm: Any, outs: Any, label: str, level: float, slice_level_auc: Any
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Slice-level AUC of the stage-1 CNN on the evaluated split (all and cranial-cavity slices)."""
    from ich3d.data.cavity import CavityRule, load_slice_stats

    rows = []
    for key, p in zip(outs.keys, outs.probs, strict=True):
        rows.append(pd.DataFrame({"key": key, "slice_index": np.arange(len(p)), "probability": p}))
    table = pd.concat(rows, ignore_index=True)
    sl = dm.cache.slices[["key", "slice_index", label]].rename(columns={label: "label"})
    table = table.merge(sl, on=["key", "slice_index"], how="left", validate="one_to_one")
    if table["label"].isna().any():
        raise RuntimeError("slice probabilities and slices.csv disagree on the slices of a volume")
    table["label"] = table["label"].astype(np.int64)
    table = table[["key", "slice_index", "label", "probability"]]
    result: dict[str, Any] = {}
    labeled = table["label"].isin([0, 1]).to_numpy()
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
