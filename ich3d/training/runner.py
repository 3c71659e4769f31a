"""Training a run: the stages of ``--stage``, in a new or an existing run directory.

The stages themselves are declared in :mod:`ich3d.stages` (one file each: name,
slice or volume, the stage it starts from and what it loads, a frozen encoder,
its default optimisation); nothing here names a stage. Built in (the method of
Patel et al. 2019): ``slice`` (stage 1), ``sequence`` (stage 2, frozen CNN),
``finetune`` (stage 3) and ``direct`` (the ablation); ``ich3d train
--list-stages`` prints them.

``all`` runs the chain (the stages declared ``in_chain``) in order; each later
stage finds its starting checkpoint in the run directory, and starts only from a
stage that finished (its ``result.json`` exists). ``continue_run`` (``ich3d
train --continue``, what ``slurm/stage.sbatch`` runs) makes a command
idempotent: finished stages are skipped, an interrupted one resumes
(:mod:`ich3d.training.stage_run`), the others start.

Batch sizes are global: ``stages.<name>.batch_size`` is divided over the
processes of a DDP run (``trainer.devices`` x ``trainer.num_nodes``), so the
optimisation is the same on 1 GPU or 8; a batch that does not divide is an error.

The training package, by concern:

* :mod:`ich3d.training.specs`: config -> model/optimizer specs, ``build_module``, ``check_model``;
* :mod:`ich3d.training.data`: config -> DataModules, ``check_data_paths``;
* :mod:`ich3d.training.trainer`: the Lightning ``Trainer`` of a stage;
* :mod:`ich3d.training.stage_run`: one stage resolved once, started or resumed, trained;
* this module: the chain of stages in a run directory (``train``).

Public API (the names of the modules above stay importable from here)::

    plan_stages(stage, run=None, resume=False) -> list[str]
    train(config, stage="all", run_id=None, resume_dir=None, continue_run=False) -> (RunDir, dict)
    train_folds(config, folds, stage="all", run_id=None, continue_run=False) -> (RunDir, {fold: results})

Cross-validation (``data.folds: K`` > 1): a run holds one run directory per fold,
``<run.root>/<experiment>/<run-id>/fold<k>/`` (:func:`~ich3d.runs.run_dir.run_path`),
below a ``config.yaml`` of the whole run (``data.fold: null``). Fold ``k`` validates
on fold ``k`` and trains on the other folds (:mod:`ich3d.data.folds`); its config
records ``data.fold: k``, so everything that works on a run directory works on a
fold's: its stages chain within the fold (``finetune`` starts from the fold's own
``sequence``), ``--continue`` skips its finished stages and resumes an interrupted
one, ``--resume RUN/fold<k>`` continues it. ``train_folds`` trains folds one after
the other; each is an independent command (``ich3d train --fold k``) where a
cluster runs them side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ich3d.config import Config, make_dirs
from ich3d.errors import UserError
from ich3d.runs.run_dir import (
    RunDir,
    attach_log_file,
    create_run_dir,
    cv_run_dir,
    detach_log_file,
    fold_config,
    global_rank_from_env,
    open_run_dir,
    resolve_run_id,
    run_path,
    write_config,
)
from ich3d.stages import chain, get_stage, stage_names
from ich3d.training.data import (
    build_datamodule,
    build_slice_datamodule,
    build_volume_datamodule,
    check_data_paths,
)
from ich3d.training.specs import (
    build_module,
    check_model,
    model_spec,
    optimizer_spec,
    selection_metric,
    target_spec,
)
from ich3d.training.stage_run import (
    StageRun,
    check_resume_inputs,
    has_checkpoints,
    resume_point,
    run_stage,
    stage_result,
    starting_checkpoint,
)
from ich3d.training.trainer import (
    build_trainer,
    per_process_batch,
    quiet_lightning,
    static_world_size,
)

__all__ = [
    "plan_stages",
    "train",
    "train_folds",
    # re-exported from the modules of the package
    "model_spec",
    "optimizer_spec",
    "target_spec",
    "selection_metric",
    "check_model",
    "build_module",
    "build_slice_datamodule",
    "build_volume_datamodule",
    "build_datamodule",
    "check_data_paths",
    "build_trainer",
    "per_process_batch",
    "quiet_lightning",
    "run_stage",
    "stage_result",
]

log = logging.getLogger(__name__)


def plan_stages(stage: str, run: RunDir | None = None, resume: bool = False) -> list[str]:
    """The stages to run for ``--stage`` (``all`` = the chain; on resume, the unfinished part)."""
    if stage == "all":
        stages = [s.name for s in chain()]
        if resume and run is not None:
            stages = [s for s in stages if not run.is_done(s)]
        return stages
    if stage not in stage_names():
        raise UserError(f"unknown stage {stage!r}; expected all or one of {', '.join(stage_names())}")
    return [stage]


def _check_before_writing(config: Config, run: RunDir | None, stages: list[str], resume: bool) -> None:
    """Everything that can fail before a run directory is created or written.

    The config's data and model, the batch over the processes, the checkpoint the
    first stage starts from (done, same model and inputs), the checkpoints a resume
    continues (readable, same inputs) and the stages that would be overwritten.
    """
    check_data_paths(config)
    check_model(config)
    world = static_world_size(config)
    if world is not None:
        for s in stages:
            per_process_batch(config, s, world)
    if not stages:
        return
    st = get_stage(stages[0])
    first = StageRun.resolve(config, run, st) if run is not None else None
    resumable = resume_point(first) if (resume and first is not None) else None
    if resumable is not None:
        assert first is not None
        check_resume_inputs(config, resumable, first)
    elif st.starts_from is not None:
        if first is None or not first.run.best_ckpt(st.starts_from).is_file():
            raise UserError(
                f"stage {st.name!r} starts from {st.starts_from}/best.ckpt of an existing run: "
                f"pass --run-id of that run or --resume RUN_DIR (or train --stage all)"
            )
        starting_checkpoint(config, first)  # done, model and inputs agree: before any write
    if run is None:
        return
    for s in stages[1:] if resume else stages:
        sr = StageRun.resolve(config, run, s)
        if resume:
            resume_point(sr)  # unreadable checkpoints: say so now, not after the first stages
        elif has_checkpoints(sr):
            raise UserError(
                f"{sr.dir} already holds checkpoints; continue it with "
                f"--resume {run.path} --stage {s} (or --continue), or use a new run id"
            )


def train(
    config: Config,
    stage: str = "all",
    *,
    run_id: str | None = None,
    resume_dir: str | Path | None = None,
    continue_run: bool = False,
    on_run_dir: Any = None,
) -> tuple[RunDir, dict[str, dict[str, Any]]]:
    """Validate, create/open the run directory and run the stages of ``--stage``.

    Everything that can be checked (config, data paths, model options, the previous
    stage's checkpoint, the batch over the processes) is checked before a run
    directory is created.

    Args:
        config: the experiment config (for a resume, the run's config plus overrides).
        stage: ``all`` or a declared stage (:mod:`ich3d.stages`).
        run_id: run id (default: a new one); an existing run id is reused, which lets
            ``--stage sequence --run-id X`` continue run X after its slice stage.
        resume_dir: continue this run directory (interrupted stage from its newest
            checkpoint, then the later stages of ``all``).
        continue_run: with ``run_id``: skip the stages already done (``result.json``),
            resume an interrupted one, start the others; running the same command again
            (a resubmitted or requeued job) continues where the last one stopped.
        on_run_dir: called with the :class:`RunDir` once it exists (the CLI prints it).

    Returns:
        ``(run, {stage: result})`` for the stages run now.
    """
    if continue_run and (run_id is None or resume_dir is not None):
        raise UserError("--continue needs --run-id (and no --resume)")
    if config.data.folds > 1 and config.data.fold is None:
        k = config.data.folds
        raise UserError(
            f"data.folds={k}: train one fold with --fold K (0 to {k - 1}) or every fold with --folds all"
        )
    resume = resume_dir is not None or continue_run
    run = open_run_dir(resume_dir) if resume_dir is not None else None
    if run is None and run_id is not None:
        existing = RunDir(run_path(config, run_id))
        run = existing if existing.config_path.is_file() else None
    stages = plan_stages(stage, run, resume)
    skipped: list[str] = []
    if continue_run and run is not None:
        skipped = [s for s in stages if run.is_done(s)]
        stages = [s for s in stages if not run.is_done(s)]
    _check_before_writing(config, run, stages, resume)
    if resume_dir is not None:
        assert run is not None
        write_config(run, config)
    else:
        run = create_run_dir(config, run_id)
    handler = attach_log_file(run)
    results: dict[str, dict[str, Any]] = {}
    try:
        if on_run_dir is not None:
            on_run_dir(run)
        for s in skipped:
            log.info("stage %s of %s is done (result.json); skipped", s, run.path)
        if not stages:
            log.info("every stage of %s is done; nothing to resume", run.path)
        for s in stages:
            results[s] = run_stage(config, run, s, resume=resume)
    finally:
        detach_log_file(handler)
    return run, results


def train_folds(
    config: Config,
    folds: Sequence[int],
    stage: str = "all",
    *,
    run_id: str | None = None,
    continue_run: bool = False,
    on_run_dir: Callable[[RunDir], Any] | None = None,
) -> tuple[RunDir, dict[int, dict[str, dict[str, Any]]]]:
    """Train ``stage`` (``all``: the chain) in each fold of ``folds``, one after the other.

    Each fold is :func:`~ich3d.training.runner.train` with ``data.fold: k`` in the
    run id's ``fold<k>/`` folder; the whole run's ``config.yaml`` is written once the
    first fold's checks passed (its run directory exists).

    Args:
        config: the experiment config (``data.folds`` > 1; ``data.fold`` is ignored).
        folds: the folds to train, e.g. ``range(config.data.folds)``.
        stage: ``all`` or a declared stage.
        run_id: the run id (default: a new one); each fold's stages chain within it.
        continue_run: skip each fold's finished stages, resume an interrupted one.
        on_run_dir: called with each fold's :class:`RunDir` once it exists.

    Returns:
        ``(the whole run's RunDir, {fold: {stage: result}})`` for the stages run now.
    """
    folds = list(folds)
    whole = fold_config(config, None)
    for k in folds:
        fold_config(config, k)  # every fold in range before the first trains
    run_id = resolve_run_id(run_id)
    top = cv_run_dir(config, run_id)

    def created(run: RunDir) -> None:
        if global_rank_from_env() == 0:
            make_dirs(top.path, "run directory")
            write_config(top, whole)
        if on_run_dir is not None:
            on_run_dir(run)

    results: dict[int, dict[str, dict[str, Any]]] = {}
    for k in folds:
        log.info("cross-validation fold %d of %d (run %s)", k, config.data.folds, run_id)
        _, results[k] = train(
            fold_config(config, k), stage, run_id=run_id, continue_run=continue_run, on_run_dir=created
        )
    return top, results
