"""Preemption: checkpoint at a batch boundary, requeue, resume from the newest checkpoint.

A stage folder can hold two kinds of resumable checkpoints: ``last.ckpt`` (written
after every validation, by a ``ModelCheckpoint``) and the requeue checkpoints
``hpc_ckpt_<n>.ckpt`` (Lightning's name and folder for them: the Trainer's
``default_root_dir``, the stage folder). Lightning's own resume modes each see
one kind only (``ckpt_path="last"`` the ``ModelCheckpoint`` files, ``"hpc"`` the
highest ``hpc_ckpt_<n>``), so :func:`newest_checkpoint` compares both by global step.

:class:`RequeueOnSignal` replaces the handler of Lightning's SLURM auto-requeue
(``SLURMEnvironment(auto_requeue=False)`` is passed to the Trainer): Lightning's
handler saves the checkpoint inside the signal handler, i.e. wherever the signal
lands in a training step. A checkpoint taken after the optimizer step but before
the batch is counted as completed resumes by repeating that batch (one step more
than an uninterrupted run, and its logged row twice), and under DDP the ranks
save at different batches. Here the handler only records the signal; the
checkpoint is written at the start of the next training batch, where the
previous batch, its logged rows and any validation are complete, by all ranks at
the same batch (the flag is reduced over the ranks each batch). Then rank 0 runs
``scontrol requeue $SLURM_JOB_ID`` (Lightning's command; under ``slurm/stage.sbatch``
it leaves a marker file and the batch script requeues after the step, see
:func:`slurm_requeue`) and every rank stops with Lightning's ``SIGTERMException``; from then on the process ignores SIGTERM
(:func:`ignore_sigterm`: the requeue itself makes Slurm SIGTERM the job at once,
and the process is already on its way out, so it finishes its loggers instead of
dying mid-flush). Otherwise SIGTERM (``scancel``, the end of the time limit)
stays Lightning's: stop at the next batch end.

:class:`LastCheckpoint` writes ``last.ckpt`` at the first batch of each epoch and
when training ends, i.e. once the previous epoch's summary row (``train/loss_epoch``,
``train/auc``, logged by Lightning *after* validation and after any
``ModelCheckpoint`` of that epoch) exists, so a crash that resumes from it loses no
row either; it writes a temporary file and renames it (a kill during the save
leaves the previous ``last.ckpt`` intact).

Every checkpoint also carries the CSV rows logged up to it
(``checkpoint["ich3d"]["metrics_rows"]``): a resumed stage starts its
``metrics.csv`` from exactly those rows, so no row is lost or repeated however
often it is preempted (before its first epoch ends included).

Public API::

    requeue_checkpoints(stage_dir) -> list[Path]
    newest_checkpoint(stage_dir) -> Path | None
    prune_requeue_checkpoints(stage_dir, keep=None) -> list[Path]
    metrics_rows(checkpoint) -> list[dict] | None
    RequeueOnSignal(signum=SIGUSR1, requeue=slurm_requeue)
    LastCheckpoint(path)
    MetricsInCheckpoint(csv_logger)
    slurm_requeue() -> bool
    ignore_sigterm(trainer) -> previous SIGTERM handler
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ich3d.runs.checkpoints import describe_load_error

__all__ = [
    "HPC_PREFIX",
    "REQUEUE_MARKER_ENV",
    "UNREADABLE_SUFFIX",
    "requeue_checkpoints",
    "checkpoint_step",
    "newest_checkpoint",
    "prune_requeue_checkpoints",
    "metrics_rows",
    "slurm_requeue",
    "ignore_sigterm",
    "RequeueOnSignal",
    "LastCheckpoint",
    "MetricsInCheckpoint",
    "save_atomically",
]

log = logging.getLogger(__name__)

#: Appended to the name of an unreadable requeue checkpoint moved aside.
UNREADABLE_SUFFIX = ".unreadable"
#: Lightning's file-name prefix of requeue checkpoints (``hpc_ckpt_<n>.ckpt``).
HPC_PREFIX = "hpc_ckpt_"
_HPC = re.compile(rf"^{HPC_PREFIX}(\d+)\.ckpt$")


def requeue_checkpoints(stage_dir: str | Path) -> list[Path]:
    """The ``hpc_ckpt_<n>.ckpt`` files of a stage folder, by ``n``."""
    folder = Path(stage_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _HPC.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | Path) -> int | None:
    """The global step stored in a checkpoint; ``None`` when the file cannot be read.

    Reads with ``weights_only=True`` and ``mmap=True`` (no tensor is loaded to memory).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"])
    except Exception as exc:  # truncated by a kill during the save, or not a checkpoint
        log.warning("ignoring unreadable checkpoint %s (%s)", path, describe_load_error(exc))
        return None


def newest_checkpoint(stage_dir: str | Path) -> Path | None:
    """The checkpoint a stage resumes from: ``last.ckpt`` or the newest ``hpc_ckpt_<n>.ckpt``.

    Newest is the highest global step (optimizer steps only grow); on a tie, the
    file written last. Unreadable files (a save cut short) are skipped.

    Returns:
        The path, or ``None`` when the folder holds no readable resumable checkpoint.
    """
    folder = Path(stage_dir)
    candidates = [folder / "last.ckpt", *requeue_checkpoints(folder)]
    best: tuple[int, float] | None = None
    chosen: Path | None = None
    for path in candidates:
        if not path.is_file():
            continue
        step = checkpoint_step(path)
        if step is None:
            continue
        key = (step, path.stat().st_mtime)
        if best is None or key > best:
            best, chosen = key, path
    return chosen


def prune_requeue_checkpoints(stage_dir: str | Path, keep: str | Path | None = None) -> list[Path]:
    """Delete the readable requeue checkpoints other than ``keep``; return what was deleted.

    Called with ``keep`` = the newest checkpoint when a stage resumes (older ones
    are superseded), after each new requeue checkpoint, and with ``keep=None`` when
    the stage has finished (``last.ckpt`` is then its final state). An unreadable
    one is never deleted: it is moved aside to ``<name>.unreadable`` (a warning says
    so), where it no longer counts as a checkpoint.
    """
    keep_path = Path(keep).resolve() if keep is not None else None
    removed = []
    for path in requeue_checkpoints(stage_dir):
        if keep_path is not None and path.resolve() == keep_path:
            continue
        if checkpoint_step(path) is None:
            aside = path.with_name(path.name + UNREADABLE_SUFFIX)
            path.replace(aside)
            log.warning("moved the unreadable requeue checkpoint %s aside to %s (not deleted)", path.name, aside)
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed superseded requeue checkpoints: %s", ", ".join(p.name for p in removed))
    return removed


def metrics_rows(checkpoint: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The CSV rows logged up to ``checkpoint`` (``None`` for a checkpoint without them)."""
    rows = checkpoint.get("ich3d", {}).get("metrics_rows")
    return None if rows is None else [dict(r) for r in rows]


#: Set by ``slurm/stage.sbatch``: a file to create instead of requeueing (the batch script requeues).
REQUEUE_MARKER_ENV = "ICH3D_REQUEUE_MARKER"


def slurm_requeue() -> bool:
    """``scontrol requeue`` this SLURM job (array task aware); ``True`` on success.

    With ``ICH3D_REQUEUE_MARKER=FILE`` in the environment (``slurm/stage.sbatch`` sets it)
    the requeue is left to the batch script: this creates FILE and returns ``True``; the
    script requeues once the training step has ended. A requeue from inside the step
    makes Slurm SIGTERM every process of the step at once, W&B's service among them,
    which loses what that service had not yet written.
    """
    marker = os.environ.get(REQUEUE_MARKER_ENV)
    if marker:
        try:
            Path(marker).write_text("requeue\n")
        except OSError as exc:
            log.warning("could not write the requeue marker %s: %s", marker, exc)
            return False
        log.info("requeue left to the batch script (%s)", marker)
        return True
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job or not re.fullmatch(r"[0-9_]+", job):
        log.warning("not requeued: no SLURM job id in the environment")
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("scontrol requeue %s failed: %s", job, exc)
        return False
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job, done.returncode, done.stderr.strip())
        return False
    log.info("requeued SLURM job %s", job)
    return True


class RequeueOnSignal(pl.Callback):
    """On ``signum``: checkpoint at the next batch start (all ranks), requeue, stop.

    Args:
        signum: the signal SLURM sends before the time limit (``#SBATCH --signal=USR1@90``)
            or that ``scancel --signal=USR1`` delivers.
        requeue: called on rank 0 after the checkpoint is written; returns whether the
            job was requeued. When it was not, training goes on (the checkpoint is kept).
    """

    def __init__(self, signum: int = signal.SIGUSR1, requeue: Callable[[], bool] = slurm_requeue) -> None:
        self.signum = signum
        self.requeue = requeue
        self.received = False
        self.saved: Path | None = None
        self._previous: Any = None
        self._sigterm_before: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handler)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        received = self.received
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        loop = trainer.fit_loop.epoch_loop
        accumulate = trainer.accumulate_grad_batches
        if accumulate > 1 and (loop.batch_progress.current.ready - 1) % accumulate:
            return  # inside a gradient accumulation window (its gradients are not checkpointed)
        self.received = False
        from pytorch_lightning.trainer.connectors.checkpoint_connector import _CheckpointConnector
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        path = _CheckpointConnector.hpc_save_path(trainer.default_root_dir)
        path = trainer.strategy.broadcast(path)  # rank 0's name on every rank
        save_at_batch_start(trainer, path)
        self.saved = Path(path)
        requeued = False
        if trainer.is_global_zero:
            prune_requeue_checkpoints(trainer.default_root_dir, keep=path)
            log.info("signal %d: checkpoint %s at global step %d", self.signum, path, trainer.global_step)
            requeued = bool(self.requeue())
        requeued = trainer.strategy.broadcast(requeued)
        if requeued:
            self._sigterm_before = ignore_sigterm(trainer)
            raise SIGTERMException()

    def restore_sigterm(self) -> None:
        """Undo :func:`ignore_sigterm` once the stopped stage has finished its loggers."""
        if self._sigterm_before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._sigterm_before)
        self._sigterm_before = None


def ignore_sigterm(trainer: pl.Trainer) -> Any:
    """Ignore SIGTERM after a successful requeue, until the stage has stopped; return the handler to restore.

    ``scontrol requeue`` makes Slurm stop the job at once (SIGTERM to every task, SIGKILL
    after its KillWait). The checkpoint is written and the process is on its way out, so
    it ignores that SIGTERM and finishes its loggers (W&B's run, the CSV) and its message,
    instead of dying mid-flush by the default action. Lightning restores the handlers it
    found at the start of ``fit`` when it tears down, so its record is set to ignored too.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    originals = getattr(getattr(trainer, "_signal_connector", None), "_original_handlers", None)
    before = signal.SIG_DFL
    if isinstance(originals, dict):  # Lightning's own record of the handlers to restore
        before = originals.get(signal.SIGTERM, signal.SIG_DFL)
        originals[signal.SIGTERM] = signal.SIG_IGN
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return before


def save_at_batch_start(trainer: pl.Trainer, path: str | Path) -> None:
    """Save a checkpoint from ``on_train_batch_start`` that resumes exactly there.

    Lightning counts logging steps as if every mid-epoch checkpoint were saved at a
    batch end, before that batch is counted (it adds 1 when it restarts); this one is
    saved after, so it stores the count minus the 1 Lightning adds back.
    """
    loop = trainer.fit_loop.epoch_loop
    compensate = int(not loop._should_accumulate())
    loop._batches_that_stepped -= compensate
    try:
        save_atomically(trainer, path)
    finally:
        loop._batches_that_stepped += compensate


def save_atomically(trainer: pl.Trainer, path: str | Path) -> None:
    """``trainer.save_checkpoint`` to a temporary name, then renamed on rank 0 (all ranks call it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(tmp, weights_only=False)  # the full state: a resume needs the optimizer
    if trainer.is_global_zero:
        os.replace(tmp, path)
    trainer.strategy.barrier("ich3d.save_atomically")


class LastCheckpoint(pl.Callback):
    """``last.ckpt``: written at each epoch's first batch (the previous epoch complete) and at train end.

    Args:
        path: the file (``<stage dir>/last.ckpt``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._saved_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._saved_step = trainer.global_step if trainer.ckpt_path else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # the first batch of an epoch: the previous epoch, its validation and rows are complete
        if batch_idx == 0 and trainer.global_step not in (0, self._saved_step):
            save_at_batch_start(trainer, self.path)
            self._saved_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step not in (0, self._saved_step):
            save_atomically(trainer, self.path)
            self._saved_step = trainer.global_step


class MetricsInCheckpoint(pl.Callback):
    """Store the CSV rows logged so far in every checkpoint (``ich3d.metrics_rows``).

    Args:
        csv_logger: the stage's :class:`~ich3d.tracking.loggers.StageCSVLogger`.
    """

    def __init__(self, csv_logger: Any) -> None:
        self.csv_logger = csv_logger

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("ich3d", {})["metrics_rows"] = self.csv_logger.rows
