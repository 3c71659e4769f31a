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
* with ``evaluation.tta``, each volume model's test-time-augmented variant
  (``finetune+flip_lr``, :mod:`ich3d.evaluation.methods.tta`).

Shared work is done once (:class:`~ich3d.evaluation.inference.context.EvaluationContext`).
Every checkpoint used must have been trained on the inputs the run's config and
cache give now (:mod:`ich3d.runs.inputs`), and its stage must have finished
(``result.json``; ``include_unfinished`` scores a crashed stage's ``best.ckpt``
and marks it "unfinished").

Scores are computed on the validation split (operating points) and on
``evaluation.split`` (default ``test``), or with ``data`` on every labelled volume
of another ingest cache (thresholds still chosen on the run's own validation
split, the SVM still fitted on its training split);
:func:`~ich3d.evaluation.report.build.build_report` writes ``RUN_DIR/evaluation/``
(``RUN_DIR/evaluation-<cache name>`` with ``data``, or ``out``): ``predictions.csv``,
``val_predictions.csv``, ``slice_predictions.csv`` (evaluated slices: key, slice
index, slice label, stage-1 probability), ``metrics.json``, ``roc.png`` and
``report.md``. With tracking on (the run's ``tracking.mode``), the table, ROC curves
and summary metrics go to a W&B run of job type ``evaluate`` in the run's group
(:mod:`ich3d.evaluation.report.wandb`).
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

from ich3d.data.cache import is_complete
from ich3d.errors import UserError
from ich3d.evaluation.inference.context import EvaluationContext
from ich3d.evaluation.inference.passes import hardware_info, resolve_device
from ich3d.evaluation.inference.slice_level import slice_systems
from ich3d.evaluation.methods import (
    MethodScores,
    MethodUnavailable,
    ScoringMethod,
    all_methods,
    get_method,
    methods_for_stages,
)
from ich3d.evaluation.methods.tta import with_tta
from ich3d.evaluation.report.build import EvaluationReport, build_report
from ich3d.evaluation.report.curves import training_curves
from ich3d.evaluation.report.reference import reference_for
from ich3d.evaluation.report.wandb import log_evaluation
from ich3d.evaluation.tables import per_target_section, stage1_slice_table
from ich3d.runs.inputs import input_signature
from ich3d.runs.provenance import data_origin, provenance
from ich3d.runs.run_dir import RunDir, open_run_dir
from ich3d.stages import stage_names

__all__ = [
    "EvaluationPlan", "MethodOutcome", "ScoredMethods", "EvaluationResult", "available_stages",
    "select_methods", "plan_evaluation", "score_methods", "evaluate_run",
]

log = logging.getLogger(__name__)


@dataclass
class EvaluationPlan:
    """What one evaluation runs, decided before any model is loaded.

    Attributes:
        run: the run directory.
        config: the run's resolved config.
        methods: the scoring methods to score (their stage's ``best.ckpt`` exists).
        stages: the stages those methods need, in declared order.
        missing: stage or method -> why it is not evaluated.
        unfinished: method -> the unfinished stage it is scored from.
        data_dir: another ingest cache to evaluate on, or None (the run's split).
        out_dir: the evaluation folder.
        unasked: the stages of ``missing`` nobody asked for (a default volume stage the
            run never trained): listed in the report only, never warned about.
    """

    run: RunDir
    config: Any
    methods: list[ScoringMethod]
    stages: list[str]
    missing: dict[str, str]
    unfinished: dict[str, str]
    data_dir: Path | None
    out_dir: Path
    unasked: set[str] = field(default_factory=set)


@dataclass
class MethodOutcome:
    """One method's scores of the evaluated and the validation volumes."""

    name: str
    description: str
    evaluated: MethodScores
    val: MethodScores


@dataclass
class ScoredMethods:
    """Every scored method of an evaluation, with the volume tables their columns fill.

    Attributes:
        test: ``key, label, <method>...`` of the evaluated volumes.
        val: the same for the validation split.
        outcomes: method -> its :class:`MethodOutcome`, in scoring order.
        missing: method -> why it could not be computed (``MethodUnavailable``).
        notes: the methods' notes for the report (no identifiers).
    """

    test: pd.DataFrame
    val: pd.DataFrame
    outcomes: dict[str, MethodOutcome] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The scored methods, in scoring (report) order."""
        return list(self.outcomes)

    def descriptions(self) -> dict[str, str]:
        return {n: o.description for n, o in self.outcomes.items()}

    def timing(self) -> dict[str, float]:
        """Forward seconds per volume of each method that reported them."""
        return {n: float(o.evaluated.seconds) for n, o in self.outcomes.items() if o.evaluated.seconds is not None}

    def load_seconds(self) -> dict[str, float]:
        return {
            n: float(o.evaluated.load_seconds) for n, o in self.outcomes.items() if o.evaluated.load_seconds is not None
        }

    def details(self) -> dict[str, dict[str, Any]]:
        return {n: o.evaluated.details for n, o in self.outcomes.items() if o.evaluated.details}

    def slice_classifiers(self) -> dict[str, tuple[MethodScores, MethodScores]]:
        """Methods with stage-1 slice scores on both roles (the slice-level table's systems)."""
        return {
            n: (o.evaluated, o.val)
            for n, o in self.outcomes.items()
            if o.evaluated.stage1_slice_scores is not None and o.val.stage1_slice_scores is not None
        }

    def target_scores(self, role: str, one_target: bool) -> dict[str, tuple[list[str], np.ndarray]]:
        """Method -> ``(keys, (n, K) scores)`` of ``role`` (``evaluated`` or ``val``) for the per-target section."""
        out = {}
        for n, o in self.outcomes.items():
            g = o.evaluated if role == "evaluated" else o.val
            if g.target_scores is not None:
                out[n] = (list(g.keys), np.asarray(g.target_scores))
            elif one_target:  # data.targets: [one label]
                out[n] = (list(g.keys), np.asarray(g.scores, dtype=np.float64)[:, None])
        return out

    def slice_scores(self) -> dict[str, tuple[list[str], list[np.ndarray]]]:
        """Method -> per-slice volume-model outputs (``model.per_slice``)."""
        return {
            n: (list(o.evaluated.keys), o.evaluated.slice_scores)
            for n, o in self.outcomes.items()
            if o.evaluated.slice_scores is not None
        }


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` produced.

    Attributes:
        out_dir: the evaluation folder.
        report: the :class:`~ich3d.evaluation.report.build.EvaluationReport`.
        missing: stage or method -> why it was not evaluated.
        wandb_dir: the W&B run's local folder, if one was written.
        unfinished: method -> the unfinished stage it was scored from
            (``include_unfinished`` only).
        plan: the :class:`EvaluationPlan`.
        scored: the :class:`ScoredMethods`.
    """

    out_dir: Path
    report: EvaluationReport
    missing: dict[str, str] = field(default_factory=dict)
    wandb_dir: str | None = None
    unfinished: dict[str, str] = field(default_factory=dict)
    plan: EvaluationPlan | None = None
    scored: ScoredMethods | None = None


def available_stages(run: Any) -> list[str]:
    """Declared stages whose ``best.ckpt`` exists in the run."""
    return [s for s in stage_names() if run.best_ckpt(s).is_file()]


def select_methods(
    methods: Sequence[str] | None = None, stages: Sequence[str] | None = None, extra: Sequence[str] = ()
) -> list[ScoringMethod]:
    """The scoring methods asked for: ``methods`` by name plus those needing one of ``stages``.

    Neither given: every default method (``ScoringMethod.default``) plus ``extra`` (the
    config's ``evaluation.methods``, opt-in methods such as ``slice_svm``); ``stages``
    selects among the same. Order: the registry's (report order).

    Raises:
        UserError: an unknown method or stage (the message lists the known ones).
    """
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


def _unfinished_message(run: Any, stages: Sequence[str]) -> str:
    names = ", ".join(stages)
    return (
        f"stage {names} of {run.path} did not finish (best.ckpt but no result.json: training was "
        f"interrupted or is still running); finish it with `ich3d train --resume {run.path}`, "
        f"leave it out with --stages/--methods, or score its best.ckpt anyway with "
        f"--include-unfinished (marked unfinished in the report)"
    )


def plan_evaluation(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    stages: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    data: str | Path | None = None,
    include_unfinished: bool = False,
) -> EvaluationPlan:
    """Which methods and stages an evaluation runs, and where it writes (see :func:`evaluate_run`).

    A method whose stage has no ``best.ckpt`` is listed in ``missing`` with one warning
    only when it was asked for by name, by ``--stages`` or by the config's
    ``evaluation.methods``; a default volume stage the run never trained (such as the
    ``direct`` ablation) is listed in ``missing`` silently.

    Raises:
        UserError: see :func:`evaluate_run`.
    """
    run = open_run_dir(run_dir)
    config = run.load_config()
    if config.evaluation.split not in ("train", "val", "test"):
        raise UserError(f"evaluation.split must be train, val or test, got {config.evaluation.split!r}")
    data_dir: Path | None = None
    if data is not None:
        data_dir = Path(data).expanduser().resolve()
        if not is_complete(data_dir):
            raise UserError(f"--data {data}: not a complete ingest cache (run `ich3d ingest` on it first)")
    selected = select_methods(methods, stages, config.evaluation.methods)
    needed = [s for s in stage_names() if s in {m.needs for m in selected} | set(stages or ())]
    present = set(available_stages(run))
    asked = set(methods or ()) | set(config.evaluation.methods) | set(stages or ())
    missing: dict[str, str] = {}
    unasked: set[str] = set()
    for s in needed:
        if s not in present:
            names = [m.name for m in selected if m.needs == s]
            missing[s] = f"no {s}/best.ckpt in the run directory: {', '.join(names) or 'nothing'} not evaluated"
            if s in asked or asked & set(names):
                log.warning("%s", missing[s])
            else:
                unasked.add(s)
    todo = with_tta([m for m in selected if m.needs in present], config.evaluation.tta)
    if not todo:
        raise UserError(
            f"{run.path} has none of the requested checkpoints ({', '.join(f'{s}/best.ckpt' for s in needed)}); "
            "train first"
        )
    todo_stages = [s for s in needed if s in present and any(m.needs == s for m in todo)]
    unfinished_stages = [s for s in todo_stages if not run.is_done(s)]
    if unfinished_stages and not include_unfinished:
        raise UserError(_unfinished_message(run, unfinished_stages))
    for s in unfinished_stages:
        log.warning("stage %s did not finish (no result.json): its best.ckpt is scored and marked unfinished", s)
    if out is not None:
        out_dir = Path(out)
    elif data_dir is not None:
        out_dir = run.path / f"evaluation-{data_dir.name}"
    else:
        out_dir = run.path / "evaluation"
    return EvaluationPlan(
        run=run,
        config=config,
        methods=todo,
        stages=todo_stages,
        missing=missing,
        unfinished={m.name: m.needs for m in todo if m.needs in unfinished_stages},
        data_dir=data_dir,
        out_dir=out_dir,
        unasked=unasked,
    )


def _put(frame: pd.DataFrame, name: str, keys: Sequence[str], scores: np.ndarray) -> None:
    """Add a score column to ``frame`` by volume key (every key of ``frame`` must be scored)."""
    by_key = pd.Series(np.asarray(scores, dtype=np.float64), index=list(keys))
    if by_key.index.duplicated().any():
        raise RuntimeError(f"{name}: a volume was scored more than once")
    col = frame["key"].map(by_key)
    if col.isna().any():
        raise RuntimeError(f"{name}: {int(col.isna().sum())} volume(s) of the split were not scored")
    frame[name] = col.to_numpy(dtype=np.float64)


def _frame(table: pd.DataFrame) -> pd.DataFrame:
    return table[["key", "label"]].reset_index(drop=True).copy()


def score_methods(ctx: EvaluationContext, methods: Sequence[ScoringMethod]) -> ScoredMethods:
    """Score every method on the evaluated and the validation volumes (a method that cannot be
    computed for this run is left out with its reason)."""
    scored = ScoredMethods(test=_frame(ctx.table("evaluated")), val=_frame(ctx.table("val")))
    for method in methods:
        try:
            got = method.score(ctx, "evaluated")
            val_got = got if ctx.same_data("evaluated", "val") else method.score(ctx, "val")
        except MethodUnavailable as exc:
            scored.missing[method.name] = str(exc)
            log.warning("%s: %s", method.name, exc)
            continue
        _put(scored.test, method.name, got.keys, got.scores)
        _put(scored.val, method.name, val_got.keys, val_got.scores)
        scored.outcomes[method.name] = MethodOutcome(method.name, method.describe(ctx.config), got, val_got)
        scored.notes.extend(n for n in got.notes if n not in scored.notes)
    ctx.release_model()
    return scored


def _external_facts(ctx: EvaluationContext, data_dir: Path, n_labelled: int) -> tuple[dict[str, Any], str]:
    """``metrics.json``'s ``data`` entry and the report's note for an evaluation on another cache."""
    config = ctx.config
    every = ctx.datamodule("evaluated", config.data.depth_pool).split_table("predict")
    facts = {
        "cache": str(data_dir),
        "cache_hash": input_signature(config.data, cache_dir=data_dir)["cache"],
        "n_volumes_in_cache": int(len(every)),
        "n_labelled": int(n_labelled),
        "image_size": None if ctx.image_size is None else list(ctx.image_size),
    }
    note = (
        f"evaluated on another cache ({n_labelled} labelled volumes of {len(every)}); operating "
        "points chosen on the run's validation split, the SVM fitted on its training split"
    )
    return facts, note


def _slice_sections(ctx: EvaluationContext, scored: ScoredMethods, out_dir: Path) -> dict[str, Any]:
    """The stage-1 slice-level AUCs (and ``slice_predictions.csv``) and every slice classifier's table."""
    ev = ctx.config.evaluation
    sections: dict[str, Any] = {"slice_level": {}}
    if ctx.has_slice_outputs("evaluated"):
        outs = ctx.slice_outputs("evaluated")
        keep = set(scored.test["key"])
        if len(keep) != len(outs.keys):
            outs = outs.subset([k for k in outs.keys if k in keep])
        sections["slice_level"], table = stage1_slice_table(
            ctx.datamodule("evaluated", 1), outs, ctx.config.data.label, ev.confidence
        )
        table.to_csv(out_dir / "slice_predictions.csv", index=False)
    classifiers = scored.slice_classifiers()
    sections["slice_level_systems"] = slice_systems(
        ctx, classifiers, keep=list(scored.test["key"]), descriptions=scored.descriptions(),
        target_sensitivity=ev.target_sensitivity, level=ev.confidence,
    )
    details = scored.details()
    sections["slice_classifiers"] = {m: details[m] for m in classifiers if m in details}
    return sections


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
    plan = plan_evaluation(
        run_dir, out=out, stages=stages, methods=methods, data=data, include_unfinished=include_unfinished
    )
    config, run, ev = plan.config, plan.run, plan.config.evaluation
    dev = resolve_device(device)
    ctx = EvaluationContext(run, config, device=dev, progress=progress, split=ev.split, data=plan.data_dir)
    ctx.check_stages(plan.stages)  # inputs of every checkpoint, before any work
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    hardware = hardware_info(dev)
    extra: dict[str, Any] = {
        "provenance": provenance(run, config, hardware, plan.data_dir),
        "data_origin": data_origin(plan.data_dir or config.data.cache_dir),
        "experiment": config.experiment,
        "run_id": run.run_id,
        "percentile": ev.percentile,
        "stages_evaluated": plan.stages,
        "label": config.data.label,
        "depth_pool": config.data.depth_pool,
    }
    notes: list[str] = []
    if plan.data_dir is not None:
        extra["data"], note = _external_facts(ctx, plan.data_dir, len(ctx.table("evaluated")))
        notes.append(note)
    scored = score_methods(ctx, plan.methods)
    missing = {**plan.missing, **scored.missing}
    extra.update(_slice_sections(ctx, scored, plan.out_dir))
    if ctx.primary is not None:  # several targets: the per-target section
        one = len(ctx.targets) == 1
        extra["per_target"] = per_target_section(
            ctx, scored.names, plan.out_dir, scored.target_scores("evaluated", one),
            scored.target_scores("val", one), scored.slice_scores(),
        )
    extra["reference"] = reference_for(scored.names)
    extra["training_curves"] = training_curves(run, stage_names(), plan.out_dir)
    extra["load_seconds_per_volume"] = scored.load_seconds()
    extra["seconds_total"] = round(time.perf_counter() - t_start, 3)
    names = scored.names
    report = build_report(
        scored.test[["key", "label", *names]],
        plan.out_dir,
        val=scored.val[["key", "label", *names]],
        methods=names,
        target_sensitivity=ev.target_sensitivity,
        level=ev.confidence,
        timing=scored.timing(),
        hardware=hardware,
        slice_level=extra.pop("slice_level"),
        svm=scored.details().get("svm") or {},  # metrics.json's `svm` section: the svm method's details
        missing=missing,
        notes=[*notes, *scored.notes],
        title=f"ich3d evaluation: {config.experiment}/{run.run_id}" + (", another cache" if plan.data_dir else ""),
        split="external" if plan.data_dir is not None else ev.split,
        extra=extra,
        descriptions=scored.descriptions(),
        unfinished={m: s for m, s in plan.unfinished.items() if m in names},
    )
    wandb_dir = None
    if tracking:
        job = "evaluate" if plan.data_dir is None else "evaluate-external"
        wandb_dir = log_evaluation(report, config, run.path, job=job)
    return EvaluationResult(
        out_dir=plan.out_dir, report=report, missing=missing, wandb_dir=wandb_dir,
        unfinished=plan.unfinished, plan=plan, scored=scored,
    )
