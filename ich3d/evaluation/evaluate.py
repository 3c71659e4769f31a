"""``ich3d evaluate RUN_DIR``: every scoring method of a run on its test split, with the report.

The methods are the registry's (:mod:`ich3d.evaluation.methods`), each evaluated
when the stage it needs has a ``best.ckpt`` (the report names what is missing):

* from the stage-1 slice CNN over every cached slice of a volume: ``max``,
  ``p95`` (``evaluation.percentile``) and ``svm`` (linear SVM on the zero-padded
  slice features, fitted on the training volumes with C chosen on validation
  among ``evaluation.svm_cs``);
* one volume model per declared volume stage (:func:`ich3d.stages.volume_stages`),
  on depth-pooled volumes (``data.depth_pool``);
* any method a user registers (:func:`~ich3d.evaluation.methods.register_method`).

Shared work is done once (:class:`~ich3d.evaluation.context.EvaluationContext`).
Every checkpoint used must have been trained on the inputs the run's config and
cache give now (:mod:`ich3d.runs.inputs`), and its stage must have finished
(``result.json``; ``include_unfinished`` scores a crashed stage's ``best.ckpt``
and marks it "unfinished").

Scores are computed on the validation split (operating points) and on
``evaluation.split`` (default ``test``), or with ``data`` on every labelled volume
of another ingest cache (thresholds still chosen on the run's own validation
split, the SVM still fitted on its training split);
:func:`~ich3d.evaluation.report.build_report` writes ``RUN_DIR/evaluation/``
(``RUN_DIR/evaluation-<cache name>`` with ``data``, or ``out``): ``predictions.csv``,
``val_predictions.csv``, ``slice_predictions.csv`` (evaluated slices: key, slice
index, slice label, stage-1 probability), ``metrics.json``, ``roc.png`` and
``report.md``. With tracking on (the run's ``tracking.mode``), the table, ROC curves
and summary metrics go to a W&B run of job type ``evaluate`` in the run's group
(:mod:`ich3d.tracking.evaluation`).
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

__all__ = ["EvaluationResult", "available_stages", "select_methods", "evaluate_run"]

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` produced.

    Attributes:
        out_dir: the evaluation folder.
        report: the :class:`~ich3d.evaluation.report.EvaluationReport`.
        missing: stage or method -> why it was not evaluated.
        wandb_dir: the W&B run's local folder, if one was written.
        unfinished: method -> the unfinished stage it was scored from
            (``include_unfinished`` only).
    """

    out_dir: Path
    report: Any
    missing: dict[str, str] = field(default_factory=dict)
    wandb_dir: str | None = None
    unfinished: dict[str, str] = field(default_factory=dict)


def available_stages(run: Any) -> list[str]:
    """Declared stages whose ``best.ckpt`` exists in the run."""
    from ich3d.stages import stage_names

    return [s for s in stage_names() if run.best_ckpt(s).is_file()]


def select_methods(
    methods: Sequence[str] | None = None, stages: Sequence[str] | None = None, extra: Sequence[str] = ()
) -> list[Any]:
    """The scoring methods asked for: ``methods`` by name plus those needing one of ``stages``.

    Neither given: every default method (``ScoringMethod.default``) plus ``extra`` (the
    config's ``evaluation.methods``, opt-in methods such as ``slice_svm``); ``stages``
    selects among the same. Order: the registry's (report order).

    Raises:
        UserError: an unknown method or stage (the message lists the known ones).
    """
    from ich3d.evaluation.methods import all_methods, get_method, methods_for_stages
    from ich3d.stages import stage_names

    chosen = {get_method(m).name for m in extra}
    if not methods and not stages:
        return [m for m in all_methods() if m.default or m.name in chosen]
    names = stage_names()
    unknown = [s for s in stages or () if s not in names]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r} for --stages; expected some of {', '.join(names)}")
    wanted = {get_method(m).name for m in methods or ()}
    wanted |= {m.name for m in methods_for_stages(stages or ()) if m.default or m.name in chosen}
    return [m for m in all_methods() if m.name in wanted]


def _frame(table: pd.DataFrame) -> pd.DataFrame:
    return table[["key", "label"]].reset_index(drop=True).copy()


def _put(frame: pd.DataFrame, name: str, keys: Sequence[str], scores: np.ndarray) -> None:
    """Add a score column to ``frame`` by volume key (every key of ``frame`` must be scored)."""
    by_key = pd.Series(np.asarray(scores, dtype=np.float64), index=list(keys))
    if by_key.index.duplicated().any():
        raise RuntimeError(f"{name}: a volume was scored more than once")
    col = frame["key"].map(by_key)
    if col.isna().any():
        raise RuntimeError(f"{name}: {int(col.isna().sum())} volume(s) of the split were not scored")
    frame[name] = col.to_numpy(dtype=np.float64)


def _unfinished_message(run: Any, stages: Sequence[str]) -> str:
    names = ", ".join(stages)
    return (
        f"stage {names} of {run.path} did not finish (best.ckpt but no result.json: training was "
        f"interrupted or is still running); finish it with `ich3d train --resume {run.path}`, "
        f"leave it out with --stages/--methods, or score its best.ckpt anyway with "
        f"--include-unfinished (marked unfinished in the report)"
    )


def evaluate_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    stages: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    data: str | Path | None = None,
    include_unfinished: bool = False,
    device: str = "auto",
    progress: bool = True,
    tracking: bool = True,
) -> EvaluationResult:
    """Evaluate every available scoring method of a run and write the report.

    Args:
        run_dir: the run directory (``runs/<experiment>/<run-id>``).
        out: output folder; default ``RUN_DIR/evaluation`` (``RUN_DIR/evaluation-<cache
            name>`` with ``data``).
        stages: declared stages whose methods to evaluate (``slice`` = ``max``, ``p95``,
            ``svm``); with ``methods``, the union. Default (neither): every method.
        methods: scoring methods by name (:func:`~ich3d.evaluation.methods.method_names`).
        data: another ingest cache: evaluate on every volume of it labelled 0/1 on
            ``data.label`` instead of the run's ``evaluation.split``.
        include_unfinished: score stages without ``result.json`` too, marked unfinished.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``.
        progress: progress bars (default True).
        tracking: log to W&B when the run's config has tracking on (default True).

    Returns:
        The :class:`EvaluationResult`.

    Raises:
        UserError: not a run directory, unknown stage or method, no checkpoint at all,
            an unfinished stage (without ``include_unfinished``), a checkpoint trained
            on other inputs, an unlabeled cache, or a split without both classes.
    """
    from ich3d.evaluation.context import EvaluationContext
    from ich3d.evaluation.inference import hardware_info, resolve_device
    from ich3d.evaluation.methods import MethodUnavailable
    from ich3d.evaluation.report import build_report, slice_level_auc
    from ich3d.runs.run_dir import open_run_dir
    from ich3d.stages import stage_names

    run = open_run_dir(run_dir)
    config = run.load_config()
    ev = config.evaluation
    split = ev.split
    if split not in ("train", "val", "test"):
        raise UserError(f"evaluation.split must be train, val or test, got {split!r}")
    data_dir: Path | None = None
    if data is not None:
        from ich3d.data.cache import is_complete

        data_dir = Path(data).expanduser().resolve()
        if not is_complete(data_dir):
            raise UserError(f"--data {data}: not a complete ingest cache (run `ich3d ingest` on it first)")
    selected = select_methods(methods, stages, ev.methods)

    # ---- which stages exist, which finished
    needed = [s for s in stage_names() if s in {m.needs for m in selected} | set(stages or ())]
    present = set(available_stages(run))
    missing: dict[str, str] = {}
    for s in needed:
        if s not in present:
            names = [m.name for m in selected if m.needs == s]
            what = ", ".join(names) if names else "nothing"
            missing[s] = f"no {s}/best.ckpt in the run directory: {what} not evaluated"
    todo = [m for m in selected if m.needs in present]
    if not todo:
        raise UserError(
            f"{run.path} has none of the requested checkpoints ({', '.join(f'{s}/best.ckpt' for s in needed)}); "
            "train first"
        )
    todo_stages = [s for s in needed if s in present and any(m.needs == s for m in todo)]
    unfinished_stages = [s for s in todo_stages if not run.is_done(s)]
    if unfinished_stages and not include_unfinished:
        raise UserError(_unfinished_message(run, unfinished_stages))
    unfinished = {m.name: m.needs for m in todo if m.needs in unfinished_stages}
    for s in unfinished_stages:
        log.warning("stage %s did not finish (no result.json): its best.ckpt is scored and marked unfinished", s)
    for why in missing.values():
        log.warning("%s", why)

    dev = resolve_device(device)
    ctx = EvaluationContext(run, config, device=dev, progress=progress, split=split, data=data_dir)
    ctx.check_stages(todo_stages)  # inputs of every checkpoint, before any work
    hw = hardware_info(dev)
    if out is not None:
        out_dir = Path(out)
    elif data_dir is not None:
        out_dir = run.path / f"evaluation-{data_dir.name}"
    else:
        out_dir = run.path / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    timing: dict[str, float] = {}
    load_seconds: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    extra: dict[str, Any] = {
        "experiment": config.experiment,
        "run_id": run.run_id,
        "percentile": ev.percentile,
        "stages_evaluated": todo_stages,
        "label": config.data.label,
        "depth_pool": config.data.depth_pool,
    }
    test_df = _frame(ctx.table("evaluated"))
    val_df = _frame(ctx.table("val"))
    if data_dir is not None:
        from ich3d.runs.inputs import input_signature

        every = ctx.datamodule("evaluated", config.data.depth_pool).split_table("predict")
        extra["data"] = {
            "cache": str(data_dir),
            "cache_hash": input_signature(config.data, cache_dir=data_dir)["cache"],
            "n_volumes_in_cache": int(len(every)),
            "n_labelled": int(len(test_df)),
            "image_size": None if ctx.image_size is None else list(ctx.image_size),
        }
        notes.append(
            f"evaluated on another cache ({len(test_df)} labelled volumes of {len(every)}); operating "
            "points chosen on the run's validation split, the SVM fitted on its training split"
        )

    described: dict[str, str] = {}
    target_scores: dict[str, tuple[list[str], np.ndarray]] = {}
    val_target_scores: dict[str, tuple[list[str], np.ndarray]] = {}
    slice_scores: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    slice_scored: dict[str, tuple[Any, Any]] = {}
    for method in todo:
        try:
            got = method.score(ctx, "evaluated")
            val_got = got if ctx.same_data("evaluated", "val") else method.score(ctx, "val")
        except MethodUnavailable as exc:
            missing[method.name] = str(exc)
            log.warning("%s: %s", method.name, exc)
            continue
        _put(test_df, method.name, got.keys, got.scores)
        _put(val_df, method.name, val_got.keys, val_got.scores)
        one_target = ctx.primary is not None and len(ctx.targets) == 1  # data.targets: [one label]
        for g, into in ((got, target_scores), (val_got, val_target_scores)):
            if g.target_scores is not None:
                into[method.name] = (list(g.keys), np.asarray(g.target_scores))
            elif one_target:
                into[method.name] = (list(g.keys), np.asarray(g.scores, dtype=np.float64)[:, None])
        if got.slice_scores is not None:
            slice_scores[method.name] = (list(got.keys), got.slice_scores)
        described[method.name] = method.describe(config)
        if got.seconds is not None:
            timing[method.name] = float(got.seconds)
        if got.load_seconds is not None:
            load_seconds[method.name] = float(got.load_seconds)
        if got.details:
            details[method.name] = got.details
        notes.extend(n for n in got.notes if n not in notes)
        if got.stage1_slice_scores is not None and val_got.stage1_slice_scores is not None:
            slice_scored[method.name] = (got, val_got)
    ctx.release_model()

    slice_level: dict[str, Any] = {}
    if ctx.has_slice_outputs("evaluated"):
        dm1 = ctx.datamodule("evaluated", 1)
        outs = ctx.slice_outputs("evaluated")
        keep = set(test_df["key"])
        if len(keep) != len(outs.keys):
            outs = outs.subset([k for k in outs.keys if k in keep])
        slice_level, slice_table = _slice_level(dm1, outs, config.data.label, ev.confidence, slice_level_auc)
        slice_table.to_csv(out_dir / "slice_predictions.csv", index=False)
    from ich3d.evaluation.slice_level import slice_systems

    extra["slice_level_systems"] = slice_systems(
        ctx, slice_scored, keep=list(test_df["key"]), descriptions=described,
        target_sensitivity=ev.target_sensitivity, level=ev.confidence,
    )
    extra["slice_classifiers"] = {m: details[m] for m in slice_scored if m in details}

    scored = [m.name for m in todo if m.name in test_df.columns]
    if ctx.primary is not None:  # several targets: the per-target section
        extra["per_target"] = _per_target(
            ctx, config, target_scores, scored, out_dir, slice_scores, val_target_scores
        )
    extra["load_seconds_per_volume"] = load_seconds
    extra["seconds_total"] = round(time.perf_counter() - t_start, 3)
    what = f"{config.experiment}/{run.run_id}"
    report = build_report(
        test_df[["key", "label", *scored]],
        out_dir,
        val=val_df[["key", "label", *scored]],
        methods=scored,
        target_sensitivity=ev.target_sensitivity,
        level=ev.confidence,
        timing=timing,
        hardware=hw,
        slice_level=slice_level,
        # metrics.json's `svm` section (the report renders it) is the svm method's details
        svm=details.get("svm") or {},
        missing=missing,
        notes=notes,
        title=f"ich3d evaluation: {what}" + (", another cache" if data_dir is not None else ""),
        split="external" if data_dir is not None else split,
        extra=extra,
        descriptions=described,
        unfinished={m: s for m, s in unfinished.items() if m in scored},
    )
    wandb_dir = None
    if tracking:
        from ich3d.tracking.evaluation import log_evaluation

        wandb_dir = log_evaluation(
            report, config, run.path, job="evaluate" if data_dir is None else "evaluate-external"
        )
    return EvaluationResult(
        out_dir=out_dir, report=report, missing=missing, wandb_dir=wandb_dir, unfinished=unfinished
    )


def _per_target(
    ctx: Any,
    config: Any,
    target_scores: dict[str, tuple[list[str], np.ndarray]],
    scored: list[str],
    out_dir: Path,
    slice_scores: dict[str, tuple[list[str], list[np.ndarray]]] | None = None,
    val_target_scores: dict[str, tuple[list[str], np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Per-target volume and slice statistics (:mod:`ich3d.evaluation.per_target`) and their CSVs."""
    from ich3d.data.targets import target_weights
    from ich3d.evaluation import per_target as pt

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
    if ctx.has_slice_outputs("evaluated"):
        outs = ctx.slice_outputs("evaluated")
        keep = set(frames[targets[0]]["key"]) | set(ctx.table("evaluated")["key"])
        rows = []
        per_volume = outs.target_probs or [p[:, None] for p in outs.probs]  # one target: probs
        for key, p in zip(outs.keys, per_volume, strict=True):
            if key in keep:
                r = pd.DataFrame(p, columns=[f"p_{t}" for t in targets])
                r.insert(0, "slice_index", np.arange(len(p)))
                r.insert(0, "key", key)
                rows.append(r)
        if rows:
            table = pd.concat(rows, ignore_index=True)
            labels = ctx.datamodule("evaluated", 1).cache.slices[["key", "slice_index", *targets]]
            table = table.merge(labels, on=["key", "slice_index"], how="left", validate="one_to_one")
            table[targets] = table[targets].fillna(-1).astype(np.int64)
            table[["key", "slice_index", *targets, *(f"p_{t}" for t in targets)]].to_csv(
                out_dir / "slice_predictions_targets.csv", index=False
            )
            section["slice"] = pt.slice_level(table, targets, weights, level)
    # volume models with per-slice outputs (model.per_slice): each pooled slice's
    # probabilities stand for the data.depth_pool slices it pools
    labels = ctx.datamodule("evaluated", 1).cache.slices[["key", "slice_index", *targets]]
    evaluated = set(ctx.table("evaluated")["key"])
    for method, (keys, per_volume) in (slice_scores or {}).items():
        rows = []
        for key, p in zip(keys, per_volume, strict=True):
            if key not in evaluated:
                continue
            expanded = np.repeat(p, config.data.depth_pool, axis=0)
            r = pd.DataFrame(expanded, columns=[f"p_{t}" for t in targets])
            r.insert(0, "slice_index", np.arange(len(expanded)))
            r.insert(0, "key", key)
            rows.append(r)
        if rows:
            t = pd.concat(rows, ignore_index=True).merge(labels, on=["key", "slice_index"], how="inner")
            t[targets] = t[targets].fillna(-1).astype(np.int64)
            section.setdefault("slice_methods", {})[method] = pt.slice_level(t, targets, weights, level)
    return section


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
