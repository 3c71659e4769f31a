"""Training: build model, data and trainer of a declared stage, run stages in a run directory.

The stages themselves are declared in :mod:`ich3d.stages` (one file each: name,
slice or volume, the stage it starts from and what it loads, a frozen encoder,
its default optimisation); this module reads those declarations and never
names a stage. Built in (``docs/method.md`` section 1): ``slice`` (stage 1),
``sequence`` (stage 2, frozen CNN), ``finetune`` (stage 3) and ``direct`` (the
ablation); ``ich3d train --list-stages`` prints them.

``all`` runs the chain (the stages declared ``in_chain``) in order; each later
stage finds its starting checkpoint in the run directory, and starts only from a
stage that finished (its ``result.json`` exists). Resuming continues a stage from
its newest checkpoint, ``last.ckpt`` or a requeue checkpoint ``hpc_ckpt_<n>.ckpt``
(:mod:`ich3d.training.preemption`), through ``Trainer.fit(ckpt_path=...,
weights_only=True)`` (global step, epoch, optimizer and callback states continue,
and ``metrics.csv`` continues from the rows stored in that checkpoint).
``continue_run`` (``ich3d train --continue``, what ``slurm/stage.sbatch`` runs)
makes a command idempotent: finished stages are skipped, an interrupted one
resumes, the others start.

Batch sizes are global: ``stages.<name>.batch_size`` is divided over the
processes of a DDP run (``trainer.devices`` x ``trainer.num_nodes``), so the
optimisation is the same on 1 GPU or 8; a batch that does not divide is an error.

Every checkpoint records the inputs it was trained on
(:mod:`ich3d.runs.inputs`); a stage that starts from another refuses a
checkpoint trained on other inputs before anything is written.

Public API::

    model_spec(config) -> dict
    target_spec(config) -> dict
    selection_metric(stage_config) -> (monitor, mode)
    build_module(config, stage) -> SliceModule | VolumeModule
    build_slice_datamodule(config, cache_dir=None, *, stage="slice", **overrides)
    build_volume_datamodule(config, cache_dir=None, *, stage="finetune", **overrides)
    build_trainer(config, stage, run, loggers=None) -> Trainer
    check_data_paths(config)
    plan_stages(stage, run=None, resume=False) -> list[str]
    per_process_batch(config, stage, world_size) -> int
    run_stage(config, run, stage, resume=False) -> dict
    train(config, stage="all", run_id=None, resume_dir=None, continue_run=False) -> (RunDir, dict)
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ich3d.config import Config, StageConfig, resolve_precision
from ich3d.data.targets import primary_index, resolve_targets, target_weights
from ich3d.errors import UserError
from ich3d.runs.run_dir import RunDir
from ich3d.stages import Stage, chain, get_stage, stage_names

if TYPE_CHECKING:  # heavy imports stay lazy at run time
    import pytorch_lightning as pl

    from ich3d.data.datamodule import SliceDataModule, VolumeDataModule
    from ich3d.training.modules import SliceModule, VolumeModule

__all__ = [
    "model_spec",
    "optimizer_spec",
    "build_module",
    "build_slice_datamodule",
    "build_volume_datamodule",
    "build_datamodule",
    "build_trainer",
    "selection_metric",
    "target_spec",
    "check_data_paths",
    "check_model",
    "plan_stages",
    "per_process_batch",
    "run_stage",
    "stage_result",
    "train",
    "quiet_lightning",
]

log = logging.getLogger(__name__)

_NOISE = (
    r".*module\(s\) in eval mode.*",  # stage 2: the frozen encoder is in eval mode on purpose
    r".*LeafSpec.*",
    r".*smaller than the logging interval.*",
    r".*exists and is not empty.*",
    r".*does not have many workers.*",
    r".*anonymous setting has no effect.*",
    r".*`srun` command is available.*",  # ich3d train outside srun on a SLURM login node
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence the Lightning/W&B messages that are expected in this pipeline."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


# --------------------------------------------------------------------------- specs


def model_spec(config: Config) -> dict[str, Any]:
    """The plain-data model spec the modules take (and checkpoints store).

    ``encoder.in_channels`` defaults to the number of windows; a different explicit
    value is an error.
    """
    encoder = {"name": config.model.encoder, **config.model.encoder_args}
    n_windows = len(config.data.windows)
    if encoder.setdefault("in_channels", n_windows) != n_windows:
        raise UserError(
            f"model.encoder_args.in_channels is {encoder['in_channels']} but data.windows "
            f"gives {n_windows} channels; drop in_channels or make them agree"
        )
    head = {"name": config.model.head, **config.model.head_args}
    spec: dict[str, Any] = {"encoder": encoder, "head": head, "slice_chunk": config.model.slice_chunk}
    targets = resolve_targets(config.data.targets)
    if targets is not None:  # one output per target; the binary spec stays as it was
        spec["targets"] = list(targets)
    if config.model.per_slice:
        spec["per_slice"] = True
    return spec


def target_spec(config: Config) -> dict[str, Any]:
    """``{"target_weights", "primary"}`` of the modules with ``data.targets`` (``{}`` when binary)."""
    targets = resolve_targets(config.data.targets)
    if targets is None:
        return {}
    return {
        "target_weights": list(target_weights(targets, config.data.target_weights)),
        "primary": primary_index(targets, config.data.label),
    }


def optimizer_spec(stage_cfg: StageConfig) -> dict[str, Any]:
    """``{"name", "lr", "weight_decay", "momentum"}`` of a stage."""
    return {
        "name": stage_cfg.optimizer,
        "lr": stage_cfg.lr,
        "weight_decay": stage_cfg.weight_decay,
        "momentum": stage_cfg.momentum,
    }


def check_model(config: Config) -> None:
    """Build the networks once (CPU, cheap) so a bad name or option fails before any run dir exists."""
    from ich3d.models.volume import build_volume_model

    spec = model_spec(config)
    build_volume_model(
        dict(spec["encoder"]),
        dict(spec["head"]),
        slice_chunk=spec["slice_chunk"],
        num_outputs=len(spec.get("targets") or [None]),
        per_slice=bool(spec.get("per_slice")),
    )


def build_module(config: Config, stage: str) -> SliceModule | VolumeModule:
    """A freshly initialised LightningModule for ``stage`` (no weights loaded)."""
    from ich3d.models.speed import speed_up
    from ich3d.training.modules import SliceModule, VolumeModule

    st = get_stage(stage)
    stage_cfg = config.stages.get(st.name)
    spec = model_spec(config)
    module: SliceModule | VolumeModule
    if not st.is_volume:
        module = SliceModule(model=spec, optimizer=optimizer_spec(stage_cfg), **target_spec(config))
    else:
        module = VolumeModule(
            model=spec,
            optimizer=optimizer_spec(stage_cfg),
            freeze_encoder=st.freeze_encoder,
            gradient_checkpointing=stage_cfg.gradient_checkpointing,
            **target_spec(config),
        )
    speed_up(module.model, channels_last=config.model.channels_last, compile=config.model.compile)
    return module


def _starting_checkpoint(config: Config, run: RunDir, st: Stage) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``st`` starts from, checked against the config's model and inputs.

    Raises:
        UserError: the checkpoint is missing, or was trained with another encoder /
            model or on other inputs (windows, depth pool, size, label, cache, split).
    """
    from ich3d.runs.checkpoints import load_checkpoint
    from ich3d.runs.inputs import check_inputs, input_signature, recorded_inputs

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


def _check_resume_inputs(config: Config, ckpt_path: str | Path, stage: str) -> None:
    """A resumed stage continues on the inputs its checkpoint was trained on."""
    from ich3d.runs.checkpoints import load_checkpoint
    from ich3d.runs.inputs import check_inputs, input_signature, recorded_inputs

    check_inputs(
        recorded_inputs(load_checkpoint(ckpt_path)),
        input_signature(config.data),
        what=f"{stage}/{Path(ckpt_path).name} (the stage being resumed)",
    )


def _pin_inputs_callback(config: Config) -> Any:
    """A callback that records :func:`~ich3d.runs.inputs.input_signature` in every checkpoint.

    The signature is taken in ``setup``, after the DataModule's ``setup`` wrote the
    splits, so its cache and split hashes are those the stage trains on.
    """
    import pytorch_lightning as pl

    from ich3d.runs.inputs import input_signature

    class PinInputs(pl.Callback):
        inputs: dict[str, Any] | None = None

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            self.inputs = input_signature(config.data)

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            checkpoint.setdefault("ich3d", {})["inputs"] = self.inputs

    return PinInputs()


def _encoder_hash(encoder: Any) -> str:
    """sha256 of an encoder's weights (names, shapes, dtypes and bytes), 16 hex digits."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _feature_datamodule(config: Config, run: RunDir, stage: str, module: Any, volumes: Any, ckpt_path: str | None) -> Any:
    """Wrap a frozen-encoder stage's volume DataModule so the head trains on cached features."""
    from ich3d.data.features import FeatureDataModule
    from ich3d.runs.inputs import input_signature

    if ckpt_path is not None:  # a resumed stage: the encoder of its checkpoint (Lightning restores later)
        from ich3d.runs.checkpoints import load_checkpoint, sub_state_dict

        state = load_checkpoint(ckpt_path)["state_dict"]
        module.model.encoder.load_state_dict(sub_state_dict(state, "model.encoder."))
    fingerprint = {
        "encoder": _encoder_hash(module.model.encoder),
        "encoder_spec": model_spec(config)["encoder"],
        "slice_chunk": config.model.slice_chunk,
        "inputs": input_signature(config.data),
    }
    s = config.stages.get(stage)
    return FeatureDataModule(
        volumes,
        module.model.encode,
        run.stage_dir(stage) / "features",
        fingerprint,
        views=s.feature_views,
        progress=config.trainer.enable_progress_bar,
    )


def _init_from_previous(config: Config, module: Any, run: RunDir, stage: str) -> None:
    """Load the starting weights of ``stage`` from the ``best.ckpt`` it starts from."""
    from ich3d.runs.checkpoints import sub_state_dict

    st = get_stage(stage)
    path, ckpt = _starting_checkpoint(config, run, st)
    if st.loads == "encoder":
        module.model.encoder.load_state_dict(sub_state_dict(ckpt["state_dict"], "model.encoder."))
    else:
        module.model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    log.info("stage %s starts from %s", stage, path)


# --------------------------------------------------------------------------- data


def build_slice_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, stage: str = "slice", **overrides: Any
) -> SliceDataModule:
    """The stage-1 ``SliceDataModule`` of ``config`` (:meth:`~ich3d.data.datamodule.ICHDataModule.from_config`)."""
    from ich3d.data.datamodule import SliceDataModule

    return SliceDataModule.from_config(
        config.data, config.stages.get(stage), config.seed, cache_dir=cache_dir, **overrides
    )


def build_volume_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, stage: str = "finetune", **overrides: Any
) -> VolumeDataModule:
    """The ``VolumeDataModule`` of ``config`` (stages 2-3, ``direct``, predict, evaluate)."""
    from ich3d.data.datamodule import VolumeDataModule

    overrides.setdefault("slice_targets", config.model.per_slice)  # per-slice sequence outputs
    return VolumeDataModule.from_config(
        config.data, config.stages.get(stage), config.seed, cache_dir=cache_dir, **overrides
    )


def build_datamodule(config: Config, stage: str) -> SliceDataModule | VolumeDataModule:
    """The DataModule a stage trains on (slice or volume, as the stage declares)."""
    if not get_stage(stage).is_volume:
        return build_slice_datamodule(config, stage=stage)
    return build_volume_datamodule(config, stage=stage)


def check_data_paths(config: Config) -> None:
    """Fail early (before any run directory exists) when the data cannot be found.

    With ``data.images_dir`` the images folder (and ``labels_csv``, if given) must exist;
    otherwise ``data.cache_dir`` must be a complete ingest cache.
    """
    from ich3d.data.cache import is_complete

    d = config.data
    if d.cache_dir is None:
        raise UserError("config key 'data.cache_dir' is required (the ingest cache folder)")
    if d.images_dir is not None:
        if not Path(d.images_dir).is_dir():
            raise UserError(f"data.images_dir not found: {d.images_dir}")
        if d.labels_csv is None:
            raise UserError("data.labels_csv is required with data.images_dir to train (labels)")
        if not Path(d.labels_csv).is_file():
            raise UserError(f"data.labels_csv not found: {d.labels_csv}")
    elif not is_complete(d.cache_dir):
        raise UserError(
            f"data.cache_dir {d.cache_dir} is not a complete ingest cache; run "
            "`ich3d ingest` first or set data.images_dir and data.labels_csv"
        )
    if d.splits_file is not None and not Path(d.splits_file).is_file():
        raise UserError(f"data.splits_file not found: {d.splits_file}")


# --------------------------------------------------------------------------- trainer


def selection_metric(stage_cfg: StageConfig) -> tuple[str, str]:
    """``(monitor, mode)`` of a stage's ``select_by``: the logged metric and ``max``/``min``."""
    return {
        "auc": ("val/auc", "max"),
        "mean_auc": ("val/mean_auc", "max"),
        "log_loss": ("val/log_loss", "min"),
    }[stage_cfg.select_by]


def build_trainer(config: Config, stage: str, run: RunDir, loggers: list | None = None) -> pl.Trainer:
    """The Lightning ``Trainer`` of one stage (checkpoints, early stopping, LR monitor)."""
    import pytorch_lightning as pl
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from ich3d.tracking.loggers import StageCSVLogger
    from ich3d.training.preemption import LastCheckpoint, MetricsInCheckpoint, RequeueOnSignal

    s = config.stages.get(stage)
    t = config.trainer
    monitor, mode = selection_metric(s)
    callbacks: list[Any] = [
        _pin_inputs_callback(config),
        ModelCheckpoint(
            dirpath=run.stage_dir(stage),
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=False,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        # last.ckpt: at each epoch's first batch and at the end (ich3d.training.preemption)
        LastCheckpoint(run.last_ckpt(stage)),
    ]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        callbacks += [MetricsInCheckpoint(lg) for lg in loggers if isinstance(lg, StageCSVLogger)]
    plugins: list[Any] = []
    if SLURMEnvironment.detect():
        # Lightning's own SIGUSR1 handler saves mid-step: ours saves at the next batch start
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks.append(RequeueOnSignal())
    if s.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=s.early_stopping_patience, check_finite=False)
        )
    kwargs: dict[str, Any] = {
        "default_root_dir": str(run.stage_dir(stage)),
        "accelerator": t.accelerator,
        "devices": t.devices,
        "strategy": t.strategy,
        "num_nodes": t.num_nodes,
        "precision": resolve_precision(config, stage),
        "max_epochs": s.max_epochs,
        "logger": loggers if loggers else False,
        "callbacks": callbacks,
        "deterministic": t.deterministic,
        "benchmark": t.benchmark,
        "log_every_n_steps": t.log_every_n_steps,
        "enable_progress_bar": t.enable_progress_bar,
        "enable_model_summary": False,
        "num_sanity_val_steps": t.num_sanity_val_steps,
        "gradient_clip_val": s.gradient_clip_val,
        "accumulate_grad_batches": s.accumulate_grad_batches,
    }
    if plugins:
        kwargs["plugins"] = plugins
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return pl.Trainer(**kwargs)


# --------------------------------------------------------------------------- running


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


def stage_result(run: RunDir, stage: str, seconds: float | None = None) -> dict[str, Any]:
    """Summary of a stage read from its checkpoints (works whatever process trained it)."""
    from ich3d.runs.checkpoints import load_checkpoint

    best = load_checkpoint(run.best_ckpt(stage)) if run.best_ckpt(stage).is_file() else None
    last = load_checkpoint(run.last_ckpt(stage)) if run.last_ckpt(stage).is_file() else None
    info = (best or {}).get("ich3d", {})
    result: dict[str, Any] = {
        "stage": stage,
        "best_val_auc": info.get("val_auc"),
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


def per_process_batch(config: Config, stage: str, world_size: int) -> int:
    """The batch each process loads: the stage's (global) ``batch_size`` over ``world_size``.

    Raises:
        UserError: the batch does not divide over the processes.
    """
    batch = config.stages.get(stage).batch_size
    if world_size <= 1:
        return batch
    if batch % world_size:
        options = sorted({max(world_size, batch // world_size * world_size), (batch // world_size + 1) * world_size})
        raise UserError(
            f"stages.{stage}.batch_size={batch} is the global batch (all processes together) and does "
            f"not divide over {world_size} processes (trainer.devices x trainer.num_nodes); set "
            f"stages.{stage}.batch_size to a multiple of {world_size} (e.g. "
            f"{' or '.join(str(o) for o in options)}) or use {world_size if batch == 1 else 'fewer'} "
            "processes"
            + (" (a volume stage with batch 1 runs on one process)" if batch == 1 else "")
        )
    return batch // world_size


def _static_world_size(config: Config) -> int | None:
    """``trainer.devices x trainer.num_nodes`` when the config fixes them (else ``None``)."""
    devices = config.trainer.devices
    if isinstance(devices, list):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    elif isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        count = int(devices)
    else:
        return None  # "auto" / -1: known once the Trainer sees the machine
    return count * int(config.trainer.num_nodes)


def _stage_datamodule(config: Config, stage: str, world_size: int) -> Any:
    """The DataModule ``stage`` trains on, with the per-process share of the global batch."""
    kwargs = {"batch_size": per_process_batch(config, stage, world_size)}
    if not get_stage(stage).is_volume:
        return build_slice_datamodule(config, stage=stage, **kwargs)
    return build_volume_datamodule(config, stage=stage, **kwargs)


def _has_checkpoints(run: RunDir, stage: str) -> bool:
    from ich3d.training.preemption import requeue_checkpoints

    return (
        run.last_ckpt(stage).is_file()
        or run.best_ckpt(stage).is_file()
        or bool(requeue_checkpoints(run.stage_dir(stage)))
    )


def _legacy_rows(stage_dir: Path, step: int) -> list[dict[str, Any]]:
    """Rows of ``metrics.csv`` up to ``step``, for a checkpoint that does not store its rows."""
    import csv

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


def run_stage(config: Config, run: RunDir, stage: str, *, resume: bool = False) -> dict[str, Any]:
    """Train one stage in ``run``; return (and write, on rank 0) its ``result.json``.

    Args:
        config: the experiment config.
        run: the run directory.
        stage: a declared stage (:mod:`ich3d.stages`).
        resume: continue from the stage's newest checkpoint (``last.ckpt`` or a requeue
            checkpoint) when it has one; start it otherwise.

    Raises:
        UserError: missing previous checkpoint, or existing checkpoints without ``resume``.
        KeyboardInterrupt: the fit was interrupted (checkpoints so far are kept).
        SystemExit: stopped by SIGTERM or checkpointed and requeued on SIGUSR1 (exit
            status 0 when requeued, 143 otherwise); the checkpoints are kept.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from ich3d.config import dump_config
    from ich3d.runs.checkpoints import load_checkpoint
    from ich3d.runs.run_dir import global_rank_from_env
    from ich3d.tracking.loggers import build_loggers, finish_loggers, log_config
    from ich3d.training.preemption import (
        RequeueOnSignal,
        metrics_rows,
        newest_checkpoint,
        prune_requeue_checkpoints,
    )

    quiet_lightning()
    stage_dir = run.stage_dir(stage)
    resume_from = newest_checkpoint(stage_dir) if resume else None
    if resume_from is None and _has_checkpoints(run, stage):
        raise UserError(
            f"{stage_dir} already holds checkpoints; continue it with --resume {run.path} "
            f"--stage {stage}, or use a new run id"
        )
    ckpt_path = str(resume_from) if resume_from is not None else None
    rank0 = global_rank_from_env() == 0
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = build_module(config, stage)
    rows: list[dict[str, Any]] = []
    if ckpt_path is None and get_stage(stage).starts_from is not None:
        _init_from_previous(config, module, run, stage)
    elif ckpt_path is not None:
        _check_resume_inputs(config, ckpt_path, stage)
        ckpt = load_checkpoint(ckpt_path)
        stored = metrics_rows(ckpt)
        rows = stored if stored is not None else _legacy_rows(stage_dir, int(ckpt.get("global_step", 0)))
        del ckpt
        if rank0:
            prune_requeue_checkpoints(stage_dir, keep=ckpt_path)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if rank0:  # the config this stage trained with (the run's may change later)
        dump_config(config, stage_dir / "config.yaml")
    loggers = build_loggers(config, run.path, stage, rows=rows, resume=ckpt_path is not None)
    log_config(loggers, config)
    trainer = build_trainer(config, stage, run, loggers)
    datamodule = _stage_datamodule(config, stage, trainer.world_size)
    st = get_stage(stage)
    if st.is_volume and config.stages.get(stage).uses_cached_features(st.freeze_encoder):
        datamodule = _feature_datamodule(config, run, stage, module, datamodule, ckpt_path)
    (log.info if trainer.is_global_zero else log.debug)(
        "stage %s: %s (global batch %d = %d per process x %d)",
        stage,
        f"resuming from {Path(ckpt_path).name}" if ckpt_path else "training",
        config.stages.get(stage).batch_size,
        per_process_batch(config, stage, trainer.world_size),
        trainer.world_size,
    )
    start = time.perf_counter()
    status = "failed"
    stopped: SIGTERMException | None = None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
        status = "aborted" if trainer.interrupted else "success"
    except SIGTERMException as exc:
        stopped = exc
    finally:
        finish_loggers(loggers, status)
    if stopped is not None:
        requeue = next((c for c in trainer.callbacks if isinstance(c, RequeueOnSignal)), None)
        saved = requeue.saved if requeue is not None else None
        if saved is not None:
            log.info("stage %s: checkpointed to %s at step %d and requeued", stage, saved.name, trainer.global_step)
            if trainer.is_global_zero:
                print(f"ich3d: stage {stage} checkpointed ({saved.name}, step {trainer.global_step}) "
                      "and requeued; the requeued job resumes it", flush=True)
            raise SystemExit(0)
        log.info("stage %s: stopped by SIGTERM at step %d", stage, trainer.global_step)
        if trainer.is_global_zero:
            print(f"ich3d: stage {stage} stopped by SIGTERM at step {trainer.global_step}; "
                  f"continue with: ich3d train --resume {run.path} --stage {stage}", flush=True)
        raise SystemExit(143)
    if trainer.interrupted:
        raise KeyboardInterrupt(f"stage {stage} interrupted; continue with --resume {run.path}")
    if not run.best_ckpt(stage).is_file():
        raise UserError(f"stage {stage} wrote no best.ckpt (was validation skipped?)")
    result = stage_result(run, stage, time.perf_counter() - start)
    if trainer.is_global_zero:
        prune_requeue_checkpoints(stage_dir)  # last.ckpt is the final state
        run.write_result(stage, result)
    log.info("stage %s done: best val AUC %s", stage, result["best_val_auc"])
    return result


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
    from ich3d.runs.run_dir import (
        attach_log_file,
        create_run_dir,
        detach_log_file,
        open_run_dir,
        write_config,
    )
    from ich3d.training.preemption import newest_checkpoint

    if continue_run and (run_id is None or resume_dir is not None):
        raise UserError("--continue needs --run-id (and no --resume)")
    resume = resume_dir is not None or continue_run
    run = open_run_dir(resume_dir) if resume_dir is not None else None
    if run is None and run_id is not None:
        existing = RunDir(Path(config.run.root) / config.experiment / run_id)
        run = existing if existing.config_path.is_file() else None
    stages = plan_stages(stage, run, resume)
    skipped: list[str] = []
    if continue_run and run is not None:
        skipped = [s for s in stages if run.is_done(s)]
        stages = [s for s in stages if not run.is_done(s)]
    check_data_paths(config)
    check_model(config)
    world = _static_world_size(config)
    if world is not None:
        for s in stages:
            per_process_batch(config, s, world)
    if stages:
        first = get_stage(stages[0])
        resumable = newest_checkpoint(run.stage_dir(first.name)) if (resume and run is not None) else None
        if first.starts_from is not None and resumable is None:
            if run is None or not run.best_ckpt(first.starts_from).is_file():
                raise UserError(
                    f"stage {first.name!r} starts from {first.starts_from}/best.ckpt of an existing run: "
                    f"pass --run-id of that run or --resume RUN_DIR (or train --stage all)"
                )
            _starting_checkpoint(config, run, first)  # done, model and inputs agree: before any write
        elif resumable is not None:
            _check_resume_inputs(config, resumable, first.name)
        if not resume and run is not None:
            for s in stages:
                if _has_checkpoints(run, s):
                    raise UserError(
                        f"{run.stage_dir(s)} already holds checkpoints; continue it with "
                        f"--resume {run.path} --stage {s} (or --continue), or use a new run id"
                    )
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
