"""``ich3d train``: run the training stages of an experiment config.

Usage::

    ich3d train CONFIG [--stage all|STAGE] [--run-id ID] [key=value ...]
    ich3d train --resume RUN_DIR [--stage ...] [key=value ...]
    ich3d train CONFIG --run-id ID --continue [--stage ...] [key=value ...]
    ich3d train CONFIG --fold K | --folds all [--run-id ID [--continue]] [...]   # data.folds > 1
    ich3d train --resume RUN_DIR/fold<k> | --resume RUN_DIR --fold K | --folds all
    ich3d train --list-stages

Prints the run directory at the start and the end, and the best validation AUC of
every finished stage. Config errors (unknown key, wrong type, a value out of its range,
missing data) print one line and exit 2 before anything is written; an error found
later but before the first checkpoint (the data's ingest or split refusing) removes
what this command created (a new run directory, its offline W&B runs), so a failed
start leaves nothing behind.

Cross-validation (``data.folds: K`` > 1, :mod:`ich3d.training.folds`): ``--fold k``
trains fold k in ``RUN/fold<k>/``, ``--folds all`` every fold in turn; ``--continue``
and ``--resume`` act per fold (``--resume RUN`` of the whole run continues the
folds given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.config import Config, load_config
from ich3d.errors import TrainingFailed, UserError
from ich3d.runs.run_dir import (
    RunDir,
    cv_run_dir,
    fold_config,
    fold_dir_name,
    global_rank_from_env,
    open_run_dir,
    resolve_run_id,
    run_path,
)
from ich3d.stages import all_stages, chain, stage_names

__all__ = ["add_parser", "run"]


class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides come before or after options (``parse_intermixed_args``)."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    names = [s.name for s in all_stages()]
    chained = [s.name for s in chain()]
    others = [n for n in names if n not in chained]
    p = subparsers.add_parser(
        "train",
        help=COMMANDS["train"],
        description=(
            f"Train an experiment described by a YAML config. --stage all runs {', '.join(chained)} "
            "in order in one run directory (<run.root>/<experiment>/<run-id>/)"
            + (f"; also: {', '.join(others)}" if others else "")
            + " (--list-stages describes them). "
            "Overrides use dotted keys, e.g. stages.slice.lr=3e-4 trainer.devices=2. "
            "Relative paths are resolved against the current directory."
        ),
    )
    p.__class__ = _IntermixedParser
    p.add_argument("config", nargs="?", help="experiment YAML (optional with --resume)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--stage", choices=["all", *names], default="all", help="stage(s) to run (default all)")
    p.add_argument(
        "--list-stages",
        action="store_true",
        help="print the declared stages (name, kind, starts from, in the 'all' chain, description) "
        "as tab-separated lines and exit; slurm/submit.sh reads the chain from it",
    )
    p.add_argument("--run-id", default=None, help="run id (default: UTC timestamp + random suffix)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue RUN_DIR: the interrupted stage from last.ckpt, then the later stages of --stage all",
    )
    p.add_argument(
        "--continue",
        dest="continue_run",
        action="store_true",
        help="with --run-id: skip the stages already done (result.json), resume an interrupted "
        "one from its newest checkpoint (last.ckpt or a requeue hpc_ckpt_N.ckpt), start the "
        "others; the same command can be run again after any interruption (slurm/stage.sbatch runs it)",
    )
    folds = p.add_mutually_exclusive_group()
    folds.add_argument(
        "--fold",
        type=int,
        default=None,
        metavar="K",
        help="with data.folds > 1: train cross-validation fold K (validates on fold K, trains on "
        "the others) in RUN/fold<K>/",
    )
    folds.add_argument(
        "--folds",
        choices=["all"],
        default=None,
        help="with data.folds > 1: train every fold, one after the other (RUN/fold0/ ...)",
    )
    p.add_argument(
        "--print-run-dir",
        action="store_true",
        help="print the run directory this command would use (needs --run-id to be "
        "stable) and exit without training; slurm/submit.sh uses it",
    )
    p.add_argument(
        "--print-scale",
        action="store_true",
        help="print trainer.num_nodes, trainer.devices and data.folds of the config (tab-separated; "
        "devices may be 'auto') and exit; slurm/submit.sh sizes its jobs from it and submits "
        "job arrays (one task per fold) when data.folds > 1",
    )
    p.set_defaults(func=run)


def _format_auc(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def _list_stages() -> int:
    print("name\tkind\tstarts_from\tloads\tfrozen_encoder\tin_chain\tdescription")
    for s in all_stages():
        print(
            f"{s.name}\t{s.kind}\t{s.starts_from or '-'}\t{s.loads or '-'}\t"
            f"{'yes' if s.freeze_encoder else 'no'}\t{'yes' if s.in_chain else 'no'}\t{s.description}"
        )
    return 0


class _Attempt:
    """What one ``ich3d train`` call creates, so that a failed start can take it back.

    A start failed when no checkpoint or ``result.json`` was written since the call
    began: then a run directory this call created is removed (with the folders above
    it that it created and that are empty now), and in a run directory that existed
    before, the W&B run folders this call added.
    """

    def __init__(self, run_path: Path) -> None:
        self.run_path = Path(run_path)
        self.start = time.time()
        self.existed = self.run_path.exists()
        top = self.run_path
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        self.top_created = None if self.existed else top
        self.wandb_before = self._wandb_entries()
        self.folds_before = self._fold_entries()

    def _fold_entries(self) -> set[str]:
        return {p.name for p in self.run_path.glob("fold*")} if self.run_path.is_dir() else set()

    def _wandb_entries(self) -> set[str]:
        folder = self.run_path / "wandb"
        return set(os.listdir(folder)) if folder.is_dir() else set()

    def started(self) -> bool:
        """Whether training wrote anything to keep (a checkpoint or a result) since the start."""
        if not self.run_path.is_dir():
            return False
        for pattern in ("*/*.ckpt", "*/result.json", "fold*/*/*.ckpt", "fold*/*/result.json"):
            for path in self.run_path.glob(pattern):
                try:
                    if path.stat().st_mtime >= self.start - 1:
                        return True
                except OSError:
                    continue
        return False

    def discard_if_not_started(self) -> None:
        if self.started() or not self.run_path.is_dir():
            return
        if self.top_created is not None:
            shutil.rmtree(self.run_path, ignore_errors=True)
            folder = self.run_path.parent
            while self.top_created in (folder, *folder.parents) and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
            return
        for name in self._wandb_entries() - self.wandb_before:
            shutil.rmtree(self.run_path / "wandb" / name, ignore_errors=True)
        for name in self._fold_entries() - self.folds_before:  # a fold's folder this call created
            shutil.rmtree(self.run_path / name, ignore_errors=True)


@dataclass
class _Plan:
    """What to train: one run directory (``folds`` None) or the folds of a cross-validation run."""

    folds: list[int] | None
    resume: str | None
    run_id: str | None
    continue_run: bool


def _fold_plan(args: argparse.Namespace, config: Config) -> _Plan:
    """Map ``--fold`` / ``--folds`` / ``--resume`` onto the folds to train (module docstring)."""
    plan = _Plan(None, args.resume, args.run_id, args.continue_run)
    want = None
    if args.folds == "all":
        want = list(range(config.data.folds))
    elif args.fold is not None:
        want = [args.fold]
    if args.resume is not None and config.data.fold is not None:  # one fold's run directory
        if want is not None and want != [config.data.fold]:
            raise UserError(
                f"{args.resume} is the run directory of fold {config.data.fold}: resume it without "
                "--fold/--folds, or resume the whole run (its parent folder) with --folds all"
            )
        return plan
    if want is None:
        if config.data.fold is None:
            if config.data.folds > 1:
                k = config.data.folds
                raise UserError(
                    f"data.folds={k}: train one fold with --fold K (0 to {k - 1}) or every fold with --folds all"
                )
            return plan
        want = [config.data.fold]  # data.fold=k given as an override: as --fold k
    for k in want:
        fold_config(config, k)
    if args.resume is not None:  # the whole cross-validation run: continue the folds asked for
        top = open_run_dir(args.resume)
        expected = cv_run_dir(config, top.run_id).path.resolve()
        if expected != top.path:
            raise UserError(
                f"{args.resume} is not at {expected} (run.root/experiment/run id): it was moved; "
                f"resume its folds one by one with --resume {args.resume}/fold<k>"
            )
        plan.run_id, plan.resume, plan.continue_run = top.run_id, None, True
    plan.folds = want
    return plan


def _load(args: argparse.Namespace) -> Config:
    """The config: the file (or ``--resume``'s) plus the overrides."""
    overrides = list(args.overrides)
    config_path = args.config
    if config_path is not None and "=" in config_path and not os.path.exists(config_path):
        overrides.insert(0, config_path)  # `ich3d train --resume RUN key=value`
        config_path = None
    if args.continue_run and (args.run_id is None or args.resume is not None):
        raise UserError("--continue needs --run-id ID (the run to continue) and excludes --resume")
    if args.resume is not None:
        if args.run_id is not None:
            raise UserError("--run-id and --resume exclude each other (the run id is RUN_DIR's)")
        run_dir = open_run_dir(args.resume)
        return load_config(config_path or run_dir.config_path, overrides)
    if config_path is None:
        raise UserError("give a config file (or --resume RUN_DIR)")
    return load_config(config_path, overrides)


def _report(dirs: list[RunDir]) -> None:
    """Print each run directory and the best validation AUC of its finished stages."""
    for run_dir in dirs:
        print(f"ich3d: run directory {run_dir.path}")
        for stage in stage_names():
            result = run_dir.read_result(stage)
            if result is not None:
                print(
                    f"  {stage:<9} best val AUC {_format_auc(result.get('best_val_auc'))} "
                    f"(epoch {result.get('best_epoch')}, step {result.get('best_global_step')})"
                )
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    if args.list_stages:
        return _list_stages()
    config = _load(args)
    if args.print_scale:
        devices = config.trainer.devices
        if isinstance(devices, list):
            devices = len(devices)
        print(f"{config.trainer.num_nodes}\t{devices}\t{config.data.folds}")
        return 0
    plan = _fold_plan(args, config)
    if plan.folds is not None:
        config = fold_config(config, None)
    if args.print_run_dir:
        if plan.resume:
            print(Path(plan.resume).resolve())
        elif plan.folds is not None and args.fold is not None:
            print(run_path(fold_config(config, args.fold), resolve_run_id(plan.run_id)))
        else:
            print(run_path(config, resolve_run_id(plan.run_id)))
        return 0

    from ich3d.training.runner import train, train_folds  # heavy (torch, Lightning): config first

    chatty = global_rank_from_env() == 0

    def announce(run_dir) -> None:
        if chatty:
            print(f"ich3d: run directory {run_dir.path}", flush=True)

    run_id = None if plan.resume is not None else resolve_run_id(plan.run_id)
    attempt = _Attempt(Path(plan.resume).resolve() if plan.resume else run_path(config, run_id))
    try:
        if plan.folds is None:
            run_dir, _ = train(
                config,
                args.stage,
                run_id=run_id,
                resume_dir=plan.resume,
                continue_run=plan.continue_run,
                on_run_dir=announce,
            )
            dirs = [run_dir]
        else:
            top, _ = train_folds(
                config, plan.folds, args.stage, run_id=run_id, continue_run=plan.continue_run, on_run_dir=announce
            )
            dirs = [RunDir(top.path / fold_dir_name(k)) for k in plan.folds]
    except TrainingFailed:
        raise  # training began: the run directory stays for inspection
    except UserError:
        if chatty:
            attempt.discard_if_not_started()
        raise
    if chatty:
        _report(dirs)
    return 0
