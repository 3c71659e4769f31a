"""The Lightning ``Trainer`` of one stage: callbacks, loggers, batch per process, quiet output.

Public API::

    build_trainer(config, stage, run, loggers=None) -> Trainer
    per_process_batch(config, stage, world_size) -> int
    static_world_size(config) -> int | None
    show_progress_bar(config) -> bool
    quiet_lightning()
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

from ich3d.config import Config, resolve_precision
from ich3d.errors import UserError
from ich3d.runs.inputs import input_signature
from ich3d.runs.run_dir import RunDir
from ich3d.stages import Stage, get_stage
from ich3d.tracking.loggers import StageCSVLogger
from ich3d.training.preemption import LastCheckpoint, MetricsInCheckpoint, RequeueOnSignal
from ich3d.training.specs import selection_metric

__all__ = [
    "build_trainer",
    "per_process_batch",
    "static_world_size",
    "show_progress_bar",
    "quiet_lightning",
    "PinInputs",
]

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


def show_progress_bar(config: Config) -> bool:
    """``trainer.enable_progress_bar``, and only when stderr is a terminal: a bar redrawn
    into a log file or a SLURM job log is only noise (hundreds of KB of frames)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(config.trainer.enable_progress_bar) and bool(isatty and isatty())


class PinInputs(pl.Callback):
    """Records :func:`~ich3d.runs.inputs.input_signature` in every checkpoint.

    The signature is taken in ``setup``, after the DataModule's ``setup`` wrote the
    splits, so its cache and split hashes are those the stage trains on.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.inputs: dict[str, Any] | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.inputs = input_signature(self.config.data)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("ich3d", {})["inputs"] = self.inputs


def _callbacks(config: Config, st: Stage, run: RunDir, loggers: list | None) -> list[Any]:
    s = config.stages.get(st.name)
    monitor, mode = selection_metric(s)
    callbacks: list[Any] = [
        PinInputs(config),
        ModelCheckpoint(
            dirpath=run.stage_dir(st.name),
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=False,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        # last.ckpt: at each epoch's first batch and at the end (ich3d.training.preemption)
        LastCheckpoint(run.last_ckpt(st.name)),
    ]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        callbacks += [MetricsInCheckpoint(lg) for lg in loggers if isinstance(lg, StageCSVLogger)]
    if s.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=s.early_stopping_patience, check_finite=False)
        )
    return callbacks


def build_trainer(config: Config, stage: str | Stage, run: RunDir, loggers: list | None = None) -> pl.Trainer:
    """The Lightning ``Trainer`` of one stage (checkpoints, early stopping, LR monitor)."""
    st = stage if isinstance(stage, Stage) else get_stage(stage)
    s = config.stages.get(st.name)
    t = config.trainer
    callbacks = _callbacks(config, st, run, loggers)
    plugins: list[Any] = []
    if SLURMEnvironment.detect():
        # Lightning's own SIGUSR1 handler saves mid-step: ours saves at the next batch start
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks.append(RequeueOnSignal())
    kwargs: dict[str, Any] = {
        "default_root_dir": str(run.stage_dir(st.name)),
        "accelerator": t.accelerator,
        "devices": t.devices,
        "strategy": t.strategy,
        "num_nodes": t.num_nodes,
        "precision": resolve_precision(config, st.name),
        "max_epochs": s.max_epochs,
        "logger": loggers if loggers else False,
        "callbacks": callbacks,
        "deterministic": t.deterministic,
        "benchmark": t.benchmark,
        "log_every_n_steps": t.log_every_n_steps,
        "enable_progress_bar": show_progress_bar(config),
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


def static_world_size(config: Config) -> int | None:
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
