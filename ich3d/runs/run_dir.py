"""Run directories: where one experiment run keeps its config, checkpoints, metrics and logs.

Layout::

    <run.root>/<experiment>/<run-id>/
        config.yaml            # the resolved config (absolute paths), what ``--resume`` reads
        train.log              # python logging of every ``ich3d train`` call on this run
        wandb/                 # offline W&B runs (one per stage and attempt), if tracking is on
        slice/ sequence/ finetune/ direct/
            best.ckpt          # best validation AUC so far
            last.ckpt          # the last finished epoch (its first next batch) or the end of training
            hpc_ckpt_<n>.ckpt  # requeue checkpoint of a preempted job (mid-epoch; deleted once superseded)
            metrics.csv        # CSVLogger (train/loss, val/loss, val/auc, lr ...), rows of every attempt
            hparams.yaml       # CSVLogger hyper-parameters (model/optimizer specs, counts)
            result.json        # written when the stage finished: best val AUC, steps ...
                               # (a stage without it is not done: later stages refuse to start from it)

A cross-validation run (``data.folds`` K > 1) keeps one such run directory per fold,
``<run-id>/fold<k>/`` (its ``config.yaml`` records ``data.fold: k``), below a
``config.yaml`` of the whole run (``data.fold: null``); see :func:`run_path`.

The run id is ``--run-id`` if given, else ``$ICH3D_RUN_ID`` (set by the first process
so that DDP processes Lightning launches agree), else ``slurm-<SLURM_JOB_ID>`` under
SLURM when the job has several tasks, else ``<UTC timestamp>-<4 hex>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ich3d.config import Config, load_config, make_dirs, write_text
from ich3d.errors import UserError
from ich3d.stages import get_stage

__all__ = [
    "RunDir",
    "run_path",
    "fold_dir_name",
    "fold_config",
    "cv_run_dir",
    "new_run_id",
    "resolve_run_id",
    "create_run_dir",
    "open_run_dir",
    "attach_log_file",
    "global_rank_from_env",
]

_RUN_ID_ENV = "ICH3D_RUN_ID"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    def stage_dir(self, stage: str) -> Path:
        return self.path / get_stage(stage).name

    def best_ckpt(self, stage: str) -> Path:
        return self.stage_dir(stage) / "best.ckpt"

    def last_ckpt(self, stage: str) -> Path:
        return self.stage_dir(stage) / "last.ckpt"

    def result_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "result.json"

    def is_done(self, stage: str) -> bool:
        """Whether ``stage`` finished (its ``result.json`` exists)."""
        return self.result_path(stage).is_file()

    def read_result(self, stage: str) -> dict[str, Any] | None:
        path = self.result_path(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def write_result(self, stage: str, result: dict[str, Any]) -> None:
        """Write ``result.json`` atomically (a full or read-only disk: one error naming it)."""
        write_text(self.result_path(stage), json.dumps(result, indent=2, sort_keys=True) + "\n", "result file")

    def load_config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The run's resolved config (plus ``overrides``)."""
        return load_config(self.config_path, overrides)


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxx`` (UTC time + 4 random hex digits)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def global_rank_from_env() -> int:
    """This process's global rank as the launcher set it (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    # Lightning's subprocess launcher sets LOCAL_RANK / NODE_RANK for the processes it starts
    local = os.environ.get("LOCAL_RANK", "0")
    node = os.environ.get("NODE_RANK", "0")
    if local.isdigit() and node.isdigit() and (int(local) or int(node)):
        return max(1, int(node) * 1000 + int(local))  # not zero; exact value unknown here
    return 0


def resolve_run_id(run_id: str | None = None) -> str:
    """The run id to use (see the module docstring) and export it to child processes."""
    if run_id is None:
        run_id = os.environ.get(_RUN_ID_ENV) or None
    if run_id is None and os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        run_id = f"slurm-{os.environ['SLURM_JOB_ID']}"
    if run_id is None:
        run_id = new_run_id()
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise UserError(f"--run-id must be a plain folder name, got {run_id!r}")
    os.environ[_RUN_ID_ENV] = run_id
    return run_id


def fold_dir_name(fold: int) -> str:
    """The folder of fold ``fold`` inside a cross-validation run (``fold<k>``)."""
    return f"fold{int(fold)}"


def run_path(config: Config, run_id: str) -> Path:
    """``<run.root>/<experiment>/<run-id>``, plus ``/fold<k>`` for the run of fold k (``data.fold``)."""
    path = Path(config.run.root) / config.experiment / run_id
    return path if config.data.fold is None else path / fold_dir_name(config.data.fold)


def fold_config(config: Config, fold: int | None) -> Config:
    """``config`` for cross-validation fold ``fold`` (``data.fold``); None: the whole run's config.

    Raises:
        UserError: ``data.folds`` is 1, or ``fold`` is out of range.
    """
    k = config.data.folds
    if k < 2:
        raise UserError("a cross-validation fold needs folds: set data.folds=K (K >= 2)")
    if fold is not None and not 0 <= fold < k:
        raise UserError(f"fold {fold} is out of range: data.folds={k} gives folds 0 to {k - 1}")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, fold=fold))


def cv_run_dir(config: Config, run_id: str) -> RunDir:
    """A cross-validation run's whole directory (above its ``fold<k>/`` run directories)."""
    return RunDir(Path(config.run.root) / config.experiment / run_id)


def create_run_dir(config: Config, run_id: str | None = None) -> RunDir:
    """Create (or reuse) ``<run.root>/<experiment>/<run-id>/`` (:func:`run_path`) and write ``config.yaml``.

    Reusing an existing run id keeps its stage folders (so ``--stage sequence
    --run-id X`` finds ``slice/best.ckpt`` of run X); the config file is rewritten
    and the previous one kept as ``config.<n>.yaml`` when it differs.

    Raises:
        UserError: the folder or the config cannot be written (read-only or full disk).
    """
    run = RunDir(run_path(config, resolve_run_id(run_id)))
    make_dirs(run.path, "run directory")
    if global_rank_from_env() == 0:
        write_config(run, config)
    return run


def write_config(run: RunDir, config: Config) -> None:
    """Write the resolved config, keeping a differing previous one as ``config.<n>.yaml``."""
    path = run.config_path
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if path.is_file():
        previous = path.read_text(encoding="utf-8", errors="replace")
        if text == previous:
            return
        n = 1
        while (run.path / f"config.{n}.yaml").exists():
            n += 1
        write_text(run.path / f"config.{n}.yaml", previous, "config file")
    write_text(path, text, "config file")


def open_run_dir(path: str | Path) -> RunDir:
    """An existing run directory (it must hold ``config.yaml``).

    Raises:
        UserError: the folder does not exist or is not a run directory.
    """
    run = RunDir(Path(path).expanduser().resolve())
    if not run.path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not run.config_path.is_file():
        raise UserError(f"{path} is not a run directory (no config.yaml)")
    return run


def attach_log_file(run: RunDir) -> logging.Handler:
    """Send ``ich3d`` and Lightning log records to ``train.log`` (returns the handler).

    Raises:
        UserError: ``train.log`` cannot be opened for writing.
    """
    try:
        handler = logging.FileHandler(run.log_path, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write log file {run.log_path}: {exc.strerror}") from None
    handler.setLevel(logging.INFO)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    for name in ("ich3d", "pytorch_lightning", "lightning_fabric"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    """Undo :func:`attach_log_file`."""
    for name in ("ich3d", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()
