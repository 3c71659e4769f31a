"""Volume and slice probabilities of a trained run on new data (``ich3d predict``).

``INPUT`` is a folder of DICOM files (any number of series; ingested, without
labels, into ``OUT/cache``; re-running reuses that cache) or an ingest cache (a
folder with ``ingest.json``). Writes to ``OUT`` (default ``RUN_DIR/predict/<INPUT
name>-<8 hex of the resolved INPUT path>``: two inputs of the same name never share
a folder; :func:`default_out_dir`):

* ``volumes.csv``: ``key, n_slices, probability`` (the volume-model method of the
  preferred finished stage, in :func:`~ich3d.runs.checkpoints.best_volume_stage`'s
  order, or ``stage``),
  plus one column per extra scoring method asked for (``methods``, e.g. ``max``,
  ``svm``), then ``label`` when the cache is labeled and ``split`` when the cache
  has a ``splits.json`` (so ``ich3d roc volumes.csv`` works on it), and, for a run of
  several targets, ``probability_<target>`` per target;
* ``slices.csv``: ``key, slice_index, probability`` of the stage-1 slice CNN on
  every slice (slice order along the patient axis), ``probability_<target>`` per
  target for a run of several targets, plus ``label`` when labeled;
* ``predict.json``: the run, the stage, device, timing, counts;
* with ``dicom_out``: per series an SR, a KOS and secondary captures in
  ``DIR/<volume key>/`` (:mod:`ich3d.evaluation.prediction.dicom_out`), listed in
  ``predict.json``'s ``dicom_out``.

Volumes are named by their hashed key; ``uids`` adds ``series_uid``,
``study_uid`` and ``patient_id`` columns (identifiers: keep such files local).
The scores are computed by the same scoring methods and shared stage-1 pass as
``ich3d evaluate`` (:class:`~ich3d.evaluation.inference.context.EvaluationContext`), so they
equal its numbers for the same volumes. Every checkpoint used must have been
trained on the model inputs (windows, depth pool, in-plane size, label) the
run's config gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ich3d.data.cache import atomic_write_csv, atomic_write_text, open_cache
from ich3d.data.ingest import run_ingest
from ich3d.data.targets import model_targets
from ich3d.errors import UserError
from ich3d.evaluation.inference.context import EvaluationContext
from ich3d.evaluation.inference.passes import hardware_info, resolve_device
from ich3d.evaluation.methods import ScoringMethod, get_method, slice_stage_name
from ich3d.evaluation.prediction.dicom_objects import version_text
from ich3d.evaluation.prediction.dicom_out import (
    DEFAULT_KEY_SLICES,
    DicomResultsWriter,
    ResultModel,
    check_dicom_out,
    operating_thresholds,
)
from ich3d.evaluation.prediction.explain import explain_volumes
from ich3d.evaluation.prediction.submission import check_targets, write_submission
from ich3d.runs.checkpoints import best_volume_stage, load_slice_model
from ich3d.runs.run_dir import RunDir, open_run_dir
from ich3d.stages import get_stage, volume_stages

__all__ = ["UID_COLUMNS", "SCORE_COLUMNS", "PredictPlan", "default_out_dir", "plan_prediction", "predict_run"]

log = logging.getLogger(__name__)

#: Identifier columns added by ``uids``.
UID_COLUMNS: tuple[str, ...] = ("series_uid", "study_uid", "patient_id")

#: The columns of ``volumes.csv`` that are not scores (``ich3d roc`` never scores them).
NON_SCORE_COLUMNS: tuple[str, ...] = ("key", "n_slices", "label", "split", *UID_COLUMNS)

#: ``predict.json``'s list of score columns is named by this key.
SCORE_COLUMNS = "score_columns"


@dataclass
class PredictPlan:
    """What one prediction runs, decided before any data is read.

    Attributes:
        run: the run directory.
        config: the run's config.
        input: the DICOM folder or ingest cache given.
        out_dir: the output folder.
        volume_stage: the volume model's stage, or None (slice probabilities only).
        slice_stage: the stage-1 CNN's stage, or None when it has no checkpoint.
        methods: the extra scoring methods (one ``volumes.csv`` column each).
        rsna: write the RSNA submission too.
    """

    run: RunDir
    config: Any
    input: Path
    out_dir: Path
    volume_stage: str | None
    slice_stage: str | None
    methods: list[ScoringMethod]
    rsna: bool

    @property
    def stages(self) -> list[str]:
        """Every stage whose checkpoint the prediction reads."""
        wanted = [self.volume_stage, self.slice_stage, *(m.needs for m in self.methods)]
        return [s for s in dict.fromkeys(wanted) if s]


def default_out_dir(run: RunDir, input: Path) -> Path:
    """``RUN_DIR/predict/<INPUT name>-<first 8 hex of sha256(resolved INPUT path)>``."""
    resolved = input.expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return run.path / "predict" / f"{resolved.name}-{digest}"


def plan_prediction(
    run_dir: str | Path,
    input: str | Path,
    out: str | Path | None = None,
    *,
    workers: int = 1,
    stage: str | None = None,
    methods: Sequence[str] = (),
    format: str = "ich3d",
) -> PredictPlan:
    """Check the arguments against the run and choose the models (see :func:`predict_run`).

    Raises:
        UserError: see :func:`predict_run`.
    """
    run = open_run_dir(run_dir)
    config = run.load_config()
    if format not in ("ich3d", "rsna"):
        raise UserError(f"--format {format!r}: expected ich3d or rsna")
    s1 = slice_stage_name()
    if format == "rsna":
        check_targets(model_targets(config.data))
        if not run.best_ckpt(s1).is_file():
            raise UserError(f"--format rsna needs the stage-1 slice CNN ({s1}/best.ckpt) of {run.path}")
    input = Path(input).expanduser()
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if not input.is_dir():
        raise UserError(f"INPUT {input} is not a folder (expected a folder of DICOM files or an ingest cache)")
    extra = [get_method(m) for m in dict.fromkeys(methods)]
    volume_names = [s.name for s in volume_stages()]
    has_volume = any(run.best_ckpt(s).is_file() for s in volume_names)
    has_slice = run.best_ckpt(s1).is_file()
    if stage is not None:
        if not get_stage(stage).is_volume:
            raise UserError(f"--stage {stage}: not a volume stage; expected one of {', '.join(volume_names)}")
        if not run.best_ckpt(stage).is_file():
            raise UserError(f"{run.path} has no {stage}/best.ckpt")
    if not has_volume and not has_slice:
        names = ", ".join(f"{s}/best.ckpt" for s in [s1, *volume_names])
        raise UserError(f"{run.path} has no checkpoint ({names}); train first")
    for m in extra:
        if not run.best_ckpt(m.needs).is_file():
            raise UserError(f"--methods {m.name}: {run.path} has no {m.needs}/best.ckpt")
    vstage = stage
    if vstage is None and has_volume:
        # the preferred volume model whose stage finished; a crashed stage's best.ckpt only if nothing else
        done = [s for s in volume_names if run.best_ckpt(s).is_file() and run.is_done(s)]
        vstage = done[0] if done else best_volume_stage(run)
    return PredictPlan(
        run=run,
        config=config,
        input=input,
        out_dir=Path(out) if out is not None else default_out_dir(run, input),
        volume_stage=vstage,
        slice_stage=s1 if has_slice else None,
        methods=extra,
        rsna=format == "rsna",
    )


def _ingested_cache(plan: PredictPlan, workers: int, progress: bool) -> tuple[Path, int | None]:
    """The input as an ingest cache (the input itself, or ``OUT/cache`` ingested from it) and the skip count."""
    if (plan.input / "ingest.json").is_file():
        return plan.input, None
    if plan.out_dir.resolve().is_relative_to(plan.input.resolve()):
        raise UserError(
            f"--out {plan.out_dir} is inside INPUT {plan.input}; the outputs would be read as input "
            "files next time: choose an output folder outside INPUT"
        )
    cache_dir = plan.out_dir / "cache"
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    log.info("ingesting %s into %s", plan.input, cache_dir)
    summary = run_ingest(
        plan.input, None, cache_dir, workers=workers, min_slices=plan.config.data.min_slices, progress=progress
    )
    log.info("%s", summary.format())
    return cache_dir, summary.skipped_total


def volume_splits(cache_root: Path) -> dict[str, str]:
    """Volume key -> split (``train``, ``val``, ``test``) from the cache's ``splits.json``; empty without one."""
    path = Path(cache_root) / "splits.json"
    if not path.is_file():
        return {}
    keys = json.loads(path.read_text()).get("keys") or {}
    return {str(k): str(split) for split, ks in keys.items() for k in ks}


def _target_columns(frame: pd.DataFrame, keys: Sequence[str], matrix: Any, targets: Sequence[str]) -> None:
    """Add ``probability_<target>`` columns to ``frame`` (rows matched by ``keys``)."""
    for k, t in enumerate(targets):
        col = pd.Series([float(v) for v in matrix[:, k]], index=list(keys), dtype="float64")
        frame[f"probability_{t}"] = frame["key"].map(col).to_numpy()


def _volume_table(ctx: EvaluationContext, plan: PredictPlan, cache: Any, uids: bool, info: dict[str, Any]) -> Any:
    """``volumes.csv``'s frame (None when there is no volume score to write)."""
    table = ctx.table("evaluated")
    vol = table[["key", "n_slices"]].copy()
    several = getattr(plan.config.data, "targets", None) is not None
    if plan.volume_stage is not None:
        scores = get_method(plan.volume_stage).score(ctx, "evaluated")
        ctx.release_model()
        col = pd.Series(scores.scores, index=scores.keys, dtype="float64")
        vol["probability"] = vol["key"].map(col).to_numpy()
        if several and scores.target_scores is not None:
            _target_columns(vol, scores.keys, scores.target_scores, ctx.targets)
        info.update({"stage": plan.volume_stage, "n_volumes": len(vol), "seconds_per_volume": float(scores.seconds or 0.0)})
    else:
        names = ", ".join(s.name for s in volume_stages())
        log.warning("%s has no volume model (%s); writing slice probabilities only", plan.run.path, names)
        info["stage"] = None
    for m in plan.methods:
        got = m.score(ctx, "evaluated")
        vol[m.name] = vol["key"].map(pd.Series(got.scores, index=got.keys, dtype="float64")).to_numpy()
        ctx.release_model()
    if plan.methods:
        info["methods"] = [m.name for m in plan.methods]
    if plan.volume_stage is None and not plan.methods:
        return None
    if cache.labeled:
        vol["label"] = table["label"].to_numpy()
    splits = volume_splits(cache.root)
    if splits:
        vol["split"] = vol["key"].map(splits).fillna("none")
    first = [c for c in vol.columns if c not in {m.name for m in plan.methods}]
    vol = vol[[*first, *(m.name for m in plan.methods if m.name not in first)]]
    if uids:
        ids = cache.volumes.set_index("key")
        for c in UID_COLUMNS:
            vol[c] = vol["key"].map(ids[c])
    info[SCORE_COLUMNS] = [c for c in vol.columns if c not in NON_SCORE_COLUMNS]
    return vol


def _slice_table(ctx: EvaluationContext, cache: Any, label: str) -> pd.DataFrame:
    """``slices.csv``'s frame: the stage-1 probability of every slice (and per target, and the label)."""
    outs = ctx.slice_outputs("evaluated")
    several = getattr(ctx.config.data, "targets", None) is not None and bool(outs.target_probs)
    parts = []
    for i, (k, p) in enumerate(zip(outs.keys, outs.probs, strict=True)):
        part = pd.DataFrame({"key": k, "slice_index": range(len(p)), "probability": p})
        if several:
            for j, t in enumerate(ctx.targets):
                part[f"probability_{t}"] = outs.target_probs[i][:, j]
        parts.append(part)
    sl = pd.concat(parts, ignore_index=True)
    if cache.labeled:
        lab = cache.slices[["key", "slice_index", label]].rename(columns={label: "label"})
        sl = sl.merge(lab, on=["key", "slice_index"], how="left", validate="one_to_one")
    return sl


def _explain(ctx: EvaluationContext, plan: PredictPlan, n: int, on_volume: Any = None) -> dict[str, Any]:
    """``OUT/explain``: the key slices and heat maps of every volume (:func:`explain_volumes`)."""
    s1 = str(plan.slice_stage)
    slice_model = ctx.memo(("slice_model", s1), lambda: load_slice_model(plan.run, s1))
    pool = int(plan.config.data.depth_pool)
    vmodel = ctx.volume_model(plan.volume_stage) if plan.volume_stage is not None else None
    try:
        return explain_volumes(
            slice_model, ctx.loader("evaluated", 1), plan.out_dir / "explain", n,
            windows=list(plan.config.data.windows), volume_model=vmodel,
            volume_loader=ctx.loader("evaluated", pool) if vmodel is not None else None,
            depth_pool=pool, primary=ctx.primary, device=ctx.device, on_volume=on_volume,
            context_slices=int(plan.config.data.context_slices),
        )
    finally:
        ctx.release_model()


def result_model(plan: PredictPlan, targets: Sequence[str]) -> ResultModel:
    """The run's volume model as the DICOM results name it: name, version (provenance), operating points."""
    stage = str(plan.volume_stage)
    prov = (plan.run.read_result(stage) or {}).get("provenance") or {}
    metrics_path = plan.run.path / "evaluation" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    version = version_text(prov, f"run {plan.run.run_id}")
    return ResultModel(
        name=f"ich3d-{plan.config.experiment}-{stage}", version=version, targets=tuple(targets),
        label=str(plan.config.data.label),
        operating_points=operating_thresholds((metrics.get("operating_points") or {}).get(stage)),
        parameters=(f"volume model: stage {stage}",),
    )


def _explain_outputs(ctx: EvaluationContext, plan: PredictPlan, cache: Any, vol: Any, explain: int,
                     dicom_out: str | Path | None, info: dict[str, Any], files: dict[str, Path]) -> None:
    """``--explain N`` and ``--dicom-out DIR`` (which implies the key slices: :data:`DEFAULT_KEY_SLICES`)."""
    writer = None
    if dicom_out is not None:
        writer = DicomResultsWriter(dicom_out, cache, vol, result_model(plan, ctx.targets))
    info["explain"] = _explain(ctx, plan, explain or DEFAULT_KEY_SLICES, writer.add if writer else None)
    files["explain"] = plan.out_dir / "explain"
    if writer is not None:
        info["dicom_out"] = writer.summary()
        files["dicom_out"] = Path(dicom_out)


def predict_run(
    run_dir: str | Path,
    input: str | Path,
    out: str | Path | None = None,
    *,
    uids: bool = False,
    workers: int = 1,
    device: str = "auto",
    stage: str | None = None,
    methods: Sequence[str] = (),
    progress: bool = True,
    format: str = "ich3d",
    sample_submission: str | Path | None = None,
    explain: int = 0,
    dicom_out: str | Path | None = None,
) -> dict[str, Any]:
    """Predict volume and slice probabilities of a run on a DICOM folder or an ingest cache.

    Args:
        run_dir: the run directory.
        input: a folder of DICOM files, or an ingest cache (has ``ingest.json``).
        out: output folder; default :func:`default_out_dir`.
        uids: add the identifier columns :data:`UID_COLUMNS` (default False).
        workers: ingest processes (default 1).
        device: ``auto`` (default), ``cpu``, ``cuda[:i]``.
        stage: volume model; default the preferred finished one (declared ``preference``,
            :func:`~ich3d.runs.checkpoints.best_volume_stage`'s order; a stage without
            ``result.json`` only when no other has a checkpoint).
        methods: more scoring methods, one ``volumes.csv`` column each (``svm`` needs
            the run's training cache: it is fitted on the training split).
        progress: progress bars (default True).
        format: ``ich3d`` (default: the files above) or ``rsna``: also
            ``submission.csv`` in the RSNA 2019 challenge format
            (:mod:`ich3d.evaluation.prediction.submission`; needs a run trained on the six labels)
            and ``submission_fallback.csv``.
        sample_submission: with ``format="rsna"``, a sample submission CSV (``ID`` column):
            the submission has exactly its rows, in its order.
        explain: with N > 0, the N key slices of each volume and the slice CNN's
            class-activation maps, in ``OUT/explain/<key>/``
            (:mod:`ich3d.evaluation.prediction.explain`; needs the stage-1 CNN).
        dicom_out: a folder for the DICOM results (SR, KOS, secondary captures per
            series; :mod:`ich3d.evaluation.prediction.dicom_out`); implies ``explain``
            (default :data:`~ich3d.evaluation.prediction.dicom_out.DEFAULT_KEY_SLICES`).

    Returns:
        The content of ``predict.json`` plus ``"files"`` (name -> path).

    Raises:
        UserError: bad run directory or input, no checkpoint, bad worker count, an
            unknown method, a checkpoint trained on other model inputs, a sample
            submission without ``format="rsna"`` or without an ``ID`` column,
            ``dicom_out`` without a volume model or without highdicom.
    """
    if sample_submission is not None and format != "rsna":
        raise UserError("--sample-submission goes with --format rsna")
    if explain < 0:
        raise UserError(f"--explain {explain}: expected a number of key slices >= 1")
    plan = plan_prediction(run_dir, input, out, workers=workers, stage=stage, methods=methods, format=format)
    if (explain or dicom_out is not None) and plan.slice_stage is None:
        flag = "--explain" if explain else "--dicom-out"
        raise UserError(f"{flag} needs the stage-1 slice CNN ({slice_stage_name()}/best.ckpt) of {plan.run.path}")
    if dicom_out is not None and plan.volume_stage is None:
        raise UserError(f"--dicom-out needs a volume model (a finished volume stage) of {plan.run.path}")
    if dicom_out is not None:
        check_dicom_out(dicom_out, plan.input)
    dev = resolve_device(device)
    cache_dir, skipped = _ingested_cache(plan, workers, progress)
    cache = open_cache(cache_dir)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    ctx = EvaluationContext(
        plan.run, plan.config, device=dev, progress=progress, data=Path(cache_dir), labelled_only=False,
        features=any(m.needs == plan.slice_stage for m in plan.methods),
        check_all_inputs=False,  # new data: what the network sees must match, not the cache
    )
    ctx.check_stages(plan.stages)
    for s in plan.stages:
        if not plan.run.is_done(s):
            log.warning("stage %s of %s did not finish (no result.json): predicting with its best.ckpt", s, plan.run.path)
    files: dict[str, Path] = {}
    info: dict[str, Any] = {
        "run": str(plan.run.path),
        "cache": str(Path(cache_dir).resolve()),
        "out": str(plan.out_dir.resolve()),
        "device": dev.type,
        "hardware": hardware_info(dev),
        "labeled": cache.labeled,
        "uids": bool(uids),
        "ingest_skipped": skipped,
    }
    vol = _volume_table(ctx, plan, cache, uids, info)
    if vol is not None:
        files["volumes"] = plan.out_dir / "volumes.csv"
        atomic_write_csv(files["volumes"], vol)
        info.setdefault("n_volumes", len(vol))
    if plan.slice_stage is not None:
        sl = _slice_table(ctx, cache, plan.config.data.label)
        files["slices"] = plan.out_dir / "slices.csv"
        atomic_write_csv(files["slices"], sl)
        info["n_slices"] = len(sl)
        info["slice_seconds_per_volume"] = float(ctx.slice_outputs("evaluated").seconds.mean())
    else:
        log.warning("%s has no %s/best.ckpt; slices.csv not written", plan.run.path, slice_stage_name())
    if plan.rsna:
        info["submission"] = write_submission(
            ctx.slice_outputs("evaluated"), ctx.targets, cache, plan.out_dir, files, sample_submission
        )
    if explain or dicom_out is not None:
        _explain_outputs(ctx, plan, cache, vol, explain, dicom_out, info, files)
    files["summary"] = plan.out_dir / "predict.json"
    atomic_write_text(files["summary"], json.dumps(info, indent=2) + "\n")
    return {**info, "files": files}
