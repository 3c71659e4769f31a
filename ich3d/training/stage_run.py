"""One stage of one run: resolved once, started from its previous stage or resumed, trained.

:class:`StageRun` is the declared stage (:mod:`ich3d.stages`), its settings
(``stages.<name>``) and its folder in the run directory, looked up once; every
function below takes it instead of the stage's name.

A stage starts from the ``best.ckpt`` of the stage it declares ``starts_from``
(only from a stage that finished: its ``result.json`` exists), refusing a
checkpoint trained with another model or on other inputs. Resuming continues a
stage from its newest checkpoint, ``last.ckpt`` or a requeue checkpoint
``hpc_ckpt_<n>.ckpt`` (:mod:`ich3d.training.preemption`), through
``Trainer.fit(ckpt_path=..., weights_only=True)``; ``metrics.csv`` continues
from the rows stored in that checkpoint.

A stage whose loss stops being finite ends with one ``ich3d: error:`` naming the
stage, the step and the likely causes; it writes no ``result.json``, so it is
never taken for done.

Public API::

    StageRun.resolve(config, run, stage) -> StageRun
    resume_point(stage_run) -> Path | None
    has_checkpoints(stage_run) -> bool
    starting_checkpoint(config, stage_run) -> (Path, dict)
    check_resume_inputs(config, ckpt_path, stage_run)
    feature_datamodule(config, stage_run, module, volumes, ckpt_path) -> FeatureDataModule
    stage_result(run, stage, seconds=None) -> dict
    run_stage(config, run, stage, resume=False) -> dict
"""

from __future__ import annotations

import csv
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ich3d.config import Config, StageConfig, dump_config
from ich3d.data.features import FeatureDataModule
from ich3d.errors import TrainingFailed, UserError
from ich3d.runs.checkpoints import load_checkpoint, sub_state_dict
from ich3d.runs.inputs import check_inputs, input_signature, recorded_inputs
from ich3d.runs.provenance import provenance
from ich3d.runs.run_dir import RunDir, global_rank_from_env
from ich3d.stages import Stage, get_stage
from ich3d.tracking.loggers import build_loggers, finish_loggers, log_config
from ich3d.training import trainer as trainer_lib
from ich3d.training.data import build_datamodule
from ich3d.training.modules import NonFiniteLoss
from ich3d.training.preemption import (
    RequeueOnSignal,
    metrics_rows,
    newest_checkpoint,
    prune_requeue_checkpoints,
    requeue_checkpoints,
)
from ich3d.training.specs import build_module, model_spec

__all__ = [
    "StageRun",
    "resume_point",
    "has_checkpoints",
    "starting_checkpoint",
    "check_resume_inputs",
    "feature_datamodule",
    "stage_result",
    "run_stage",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRun:
    """A declared stage in a run directory, resolved once.

    Attributes:
        stage: the declaration (kind, what it starts from, frozen encoder ...).
        settings: its optimisation settings (``stages.<name>`` of the config).
        run: the run directory.
    """

    stage: Stage
    settings: StageConfig
    run: RunDir

    @classmethod
    def resolve(cls, config: Config, run: RunDir, stage: str | Stage) -> StageRun:
        """Look ``stage`` up once (a name or a declared stage)."""
        st = stage if isinstance(stage, Stage) else get_stage(stage)
        return cls(st, config.stages.get(st.name), run)

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def dir(self) -> Path:
        """The stage's folder (checkpoints, ``metrics.csv``, ``result.json``)."""
        return self.run.stage_dir(self.name)

    @property
    def uses_cached_features(self) -> bool:
        """Whether the head trains on the frozen encoder's cached slice features."""
        return self.stage.is_volume and self.settings.uses_cached_features(self.stage.freeze_encoder)


# --------------------------------------------------------------------------- checkpoints


def has_checkpoints(sr: StageRun) -> bool:
    """Whether the stage folder holds any checkpoint (readable or not)."""
    return (
        sr.run.last_ckpt(sr.name).is_file()
        or sr.run.best_ckpt(sr.name).is_file()
        or bool(requeue_checkpoints(sr.dir))
    )


def resume_point(sr: StageRun) -> Path | None:
    """The checkpoint a resumed stage continues from; None when it has none to resume.

    Raises:
        UserError: the stage has resumable checkpoints but none can be read (a corrupt
            ``last.ckpt``); the message says which folder to move aside.
    """
    path = newest_checkpoint(sr.dir)
    if path is not None:
        return path
    unreadable = [p.name for p in (sr.run.last_ckpt(sr.name), *requeue_checkpoints(sr.dir)) if p.is_file()]
    if unreadable:
        raise UserError(
            f"cannot resume stage {sr.name}: {', '.join(unreadable)} in {sr.dir} cannot be read "
            f"(cut short or corrupt); to train the stage again from its start, move its folder "
            f"aside (mv {sr.dir} {sr.dir}.unreadable) and run the same command"
        )
    return None


def starting_checkpoint(config: Config, sr: StageRun) -> tuple[Path, dict[str, Any]]:
    """The checkpoint the stage starts from, checked against the config's model and inputs.

    Raises:
        UserError: the checkpoint is missing, or was trained with another encoder /
            model or on other inputs (windows, depth pool, size, label, cache, split).
    """
    st, run = sr.stage, sr.run
    assert st.starts_from is not None
    path = run.best_ckpt(st.starts_from)
    if not path.is_file():
        raise UserError(
            f"stage {st.name!r} starts from {st.starts_from}/best.ckpt, which {run.path} does not have; "
            f"run --stage {st.starts_from} (or --stage all) first"
        )
    if not run.is_done(st.starts_from):
        raise UserError(
            f"stage {st.name!r} starts from {st.starts_from}, which has no result.json in {run.path}: "
            f"it was interrupted or failed, so its best.ckpt is from an unfinished training; "
            f"finish it first (ich3d train --resume {run.path} --stage {st.starts_from})"
        )
    ckpt = load_checkpoint(path)
    prev_spec = ckpt.get("hyper_parameters", {}).get("model", {})
    spec = model_spec(config)
    if st.loads == "encoder" and prev_spec.get("encoder") != spec["encoder"]:
        raise UserError(
            f"{path} was trained with encoder {prev_spec.get('encoder')} but the config "
            f"asks for {spec['encoder']}"
        )
    if st.loads == "model" and prev_spec != spec:
        raise UserError(f"{path} was trained with model {prev_spec} but the config asks for {spec}")
    check_inputs(
        recorded_inputs(ckpt),
        input_signature(config.data),
        what=f"{st.starts_from}/best.ckpt (which stage {st.name} starts from)",
    )
    return path, ckpt


def check_resume_inputs(config: Config, ckpt_path: str | Path, sr: StageRun) -> None:
    """A resumed stage continues on the inputs its checkpoint was trained on."""
    check_inputs(
        recorded_inputs(load_checkpoint(ckpt_path)),
        input_signature(config.data),
        what=f"{sr.name}/{Path(ckpt_path).name} (the stage being resumed)",
    )


def _init_from_previous(config: Config, module: Any, sr: StageRun) -> None:
    """Load the starting weights of the stage from the ``best.ckpt`` it starts from."""
    path, ckpt = starting_checkpoint(config, sr)
    if sr.stage.loads == "encoder":
        module.model.encoder.load_state_dict(sub_state_dict(ckpt["state_dict"], "model.encoder."))
    else:
        module.model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    log.info("stage %s starts from %s", sr.name, path)


def _legacy_rows(stage_dir: Path, step: int) -> list[dict[str, Any]]:
    """Rows of ``metrics.csv`` up to ``step``, for a checkpoint that does not store its rows."""
    path = stage_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    for row in rows:
        for key in ("step", "epoch"):
            if key in row:
                row[key] = int(row[key])
    return [r for r in rows if r.get("step", 0) <= step]


# --------------------------------------------------------------------------- data


def encoder_hash(encoder: torch.nn.Module) -> str:
    """sha256 of an encoder's weights (names, shapes, dtypes and bytes), 16 hex digits."""
    h = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def feature_datamodule(
    config: Config, sr: StageRun, module: Any, volumes: Any, ckpt_path: str | None
) -> FeatureDataModule:
    """Wrap a frozen-encoder stage's volume DataModule so the head trains on cached features."""
    if ckpt_path is not None:  # a resumed stage: the encoder of its checkpoint (Lightning restores later)
        state = load_checkpoint(ckpt_path)["state_dict"]
        module.model.encoder.load_state_dict(sub_state_dict(state, "model.encoder."))
    fingerprint = {
        "encoder": encoder_hash(module.model.encoder),
        "encoder_spec": model_spec(config)["encoder"],
        "slice_chunk": config.model.slice_chunk,
        "inputs": input_signature(config.data),
    }
    return FeatureDataModule(
        volumes,
        module.model.encode,
        sr.dir / "features",
        fingerprint,
        views=sr.settings.feature_views,
        progress=trainer_lib.show_progress_bar(config),
    )


# --------------------------------------------------------------------------- results


def _hardware(trainer: pl.Trainer) -> dict[str, Any]:
    """Threads and device of a stage's training, for its provenance."""
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {
        "threads": torch.get_num_threads(),
        "device": device.type,
        "summary": f"{name} x {trainer.world_size} process(es), {torch.get_num_threads()} torch threads",
    }


def stage_result(run: RunDir, stage: str, seconds: float | None = None) -> dict[str, Any]:
    """Summary of a stage read from its checkpoints (works whatever process trained it).

    ``best_*`` are those of ``best.ckpt`` (the validation that chose it: its epoch,
    step, AUC, loss and per-target metrics); ``global_step`` and ``epochs`` those of
    the end of training (``last.ckpt``).
    """
    best = load_checkpoint(run.best_ckpt(stage)) if run.best_ckpt(stage).is_file() else None
    last = load_checkpoint(run.last_ckpt(stage)) if run.last_ckpt(stage).is_file() else None
    info = (best or {}).get("ich3d", {})
    result: dict[str, Any] = {
        "stage": stage,
        "best_val_auc": info.get("val_auc"),
        "best_val_loss": info.get("val_loss"),
        "best_epoch": info.get("epoch"),
        "best_global_step": (best or {}).get("global_step"),
        "global_step": (last or {}).get("global_step"),
        "epochs": (last or {}).get("epoch", 0),  # written at train end: epochs completed
        "best_ckpt": "best.ckpt" if best else None,
    }
    if info.get("val_metrics"):
        result["best_val_metrics"] = info["val_metrics"]
    if seconds is not None:
        result["seconds"] = round(seconds, 1)
    return result


def _non_finite_error(sr: StageRun, exc: NonFiniteLoss) -> TrainingFailed:
    s = sr.settings
    return TrainingFailed(
        f"stage {sr.name}: the {exc.which} loss is not finite ({exc.value}) at step {exc.step} "
        f"(epoch {exc.epoch}); the stage is not done and wrote no result.json. Likely causes: a "
        f"learning rate too high or not finite (stages.{sr.name}.lr = {s.lr:g}) or non-finite values "
        f"in the data; lower stages.{sr.name}.lr or set stages.{sr.name}.gradient_clip_val, check "
        f"the data, and train again with a new --run-id"
    )


# --------------------------------------------------------------------------- running


def _resume_state(config: Config, sr: StageRun, resume: bool, rank0: bool) -> tuple[str | None, list[dict[str, Any]]]:
    """The checkpoint to continue from (None: start) and the CSV rows logged up to it."""
    resume_from = resume_point(sr) if resume else None
    if resume_from is None and has_checkpoints(sr):
        raise UserError(
            f"{sr.dir} already holds checkpoints; continue it with --resume {sr.run.path} "
            f"--stage {sr.name}, or use a new run id"
        )
    if resume_from is None:
        return None, []
    check_resume_inputs(config, resume_from, sr)
    ckpt = load_checkpoint(resume_from)
    stored = metrics_rows(ckpt)
    rows = stored if stored is not None else _legacy_rows(sr.dir, int(ckpt.get("global_step", 0)))
    if rank0:
        prune_requeue_checkpoints(sr.dir, keep=resume_from)
    return str(resume_from), rows


def _stopped(sr: StageRun, trainer: pl.Trainer) -> SystemExit:
    """The exit of a stage stopped by a signal: 0 when checkpointed and requeued, else 143."""
    requeue = next((c for c in trainer.callbacks if isinstance(c, RequeueOnSignal)), None)
    saved = requeue.saved if requeue is not None else None
    step = trainer.global_step
    if saved is not None:
        log.info("stage %s: checkpointed to %s at step %d and requeued", sr.name, saved.name, step)
        if trainer.is_global_zero:
            print(f"ich3d: stage {sr.name} checkpointed ({saved.name}, step {step}) "
                  "and requeued; the requeued job resumes it", flush=True)
        requeue.restore_sigterm()  # ignored since the requeue, while the loggers finished
        return SystemExit(0)
    log.info("stage %s: stopped by SIGTERM at step %d", sr.name, step)
    if trainer.is_global_zero:
        print(f"ich3d: stage {sr.name} stopped by SIGTERM at step {step}; "
              f"continue with: ich3d train --resume {sr.run.path} --stage {sr.name}", flush=True)
    return SystemExit(143)


def _fit(sr: StageRun, trainer: pl.Trainer, module: Any, datamodule: Any, ckpt_path: str | None, loggers: list) -> None:
    """``trainer.fit``; the loggers finish as ``success``, ``aborted`` or ``failed``."""
    status = "failed"
    stopped = False
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
        status = "aborted" if trainer.interrupted else "success"
    except SIGTERMException:
        stopped = True
    except NonFiniteLoss as exc:
        raise _non_finite_error(sr, exc) from None
    finally:
        finish_loggers(loggers, status)
    if stopped:
        raise _stopped(sr, trainer)
    if trainer.interrupted:
        raise KeyboardInterrupt(f"stage {sr.name} interrupted; continue with --resume {sr.run.path}")


def run_stage(config: Config, run: RunDir, stage: str | Stage, *, resume: bool = False) -> dict[str, Any]:
    """Train one stage in ``run``; return (and write, on rank 0) its ``result.json``.

    Args:
        config: the experiment config.
        run: the run directory.
        stage: a declared stage (:mod:`ich3d.stages`) or its name.
        resume: continue from the stage's newest checkpoint (``last.ckpt`` or a requeue
            checkpoint) when it has one; start it otherwise.

    Raises:
        UserError: missing previous checkpoint, existing checkpoints without ``resume``,
            unreadable checkpoints to resume, or a loss that is not finite.
        KeyboardInterrupt: the fit was interrupted (checkpoints so far are kept).
        SystemExit: stopped by SIGTERM or checkpointed and requeued on SIGUSR1 (exit
            status 0 when requeued, 143 otherwise); the checkpoints are kept.
    """
    trainer_lib.quiet_lightning()
    sr = StageRun.resolve(config, run, stage)
    rank0 = global_rank_from_env() == 0
    ckpt_path, rows = _resume_state(config, sr, resume, rank0)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = build_module(config, sr.stage)
    if ckpt_path is None and sr.stage.starts_from is not None:
        _init_from_previous(config, module, sr)
    sr.dir.mkdir(parents=True, exist_ok=True)
    if rank0:  # the config this stage trained with (the run's may change later)
        dump_config(config, sr.dir / "config.yaml")
    loggers = build_loggers(config, run.path, sr.name, rows=rows, resume=ckpt_path is not None)
    log_config(loggers, config)
    trainer = trainer_lib.build_trainer(config, sr.stage, run, loggers)
    batch = trainer_lib.per_process_batch(config, sr.name, trainer.world_size)
    datamodule = build_datamodule(config, sr.stage, batch_size=batch)
    if sr.uses_cached_features:
        datamodule = feature_datamodule(config, sr, module, datamodule, ckpt_path)
    (log.info if trainer.is_global_zero else log.debug)(
        "stage %s: %s (global batch %d = %d per process x %d)", sr.name,
        f"resuming from {Path(ckpt_path).name}" if ckpt_path else "training",
        sr.settings.batch_size, batch, trainer.world_size,
    )
    start = time.perf_counter()
    _fit(sr, trainer, module, datamodule, ckpt_path, loggers)
    if not run.best_ckpt(sr.name).is_file():
        raise UserError(f"stage {sr.name} wrote no best.ckpt (was validation skipped?)")
    result = stage_result(run, sr.name, time.perf_counter() - start)
    result["provenance"] = provenance(run, config, _hardware(trainer))
    if trainer.is_global_zero:
        prune_requeue_checkpoints(sr.dir)  # last.ckpt is the final state
        run.write_result(sr.name, result)
    log.info("stage %s done: best val AUC %s (epoch %s, step %s)", sr.name, result["best_val_auc"],
             result["best_epoch"], result["best_global_step"])
    return result
