"""Experiment loggers for a training stage: a CSV logger always, W&B unless disabled.

The CSV logger (:class:`StageCSVLogger`) keeps every row of the stage, across
attempts: a resumed stage starts from the rows stored in the checkpoint it resumes
(:func:`ich3d.training.preemption.metrics_rows`), so a row is neither lost nor
repeated however often the stage is preempted, and ``metrics.csv`` is rewritten
whole and atomically at each flush.

Every stage of a run logs to its own W&B run; the runs of one ``ich3d train`` run
share a W&B *group* (the run id, unless ``tracking.group`` is set) and have the stage
as *job type*. ``tracking.mode: offline`` (default) writes the W&B run under
``<run dir>/wandb/offline-run-*`` without touching the network (``wandb sync`` uploads
it later); ``online`` logs live; ``disabled`` creates no W&B run at all.

What reaches W&B: the scrubbed resolved config (:func:`scrub_config`: file-system
paths replaced by a short hash, anything that looks like a DICOM UID or an RSNA
``ID_...`` identifier redacted), the code version (:func:`code_version`: the ich3d
version and, in a git work tree, the commit), the module hyper-parameters (registry
names and numbers), parameter counts, losses, learning rate and validation AUCs, the
console of the stage (W&B's "Logs" tab; the data is prepared before the W&B run
starts, so the ingest's per-file messages are not in it) and, with
``tracking.log_model: true``, the stage's ``best.ckpt`` as a ``model`` artifact. The
summary holds each validation metric's best value over the epochs
(``define_metric``: the maximum of AUCs, the minimum of losses), so sorting runs by
it in the W&B UI ranks them by their best epoch. W&B's own metadata collection
(command line, host, program path, git remote) stays off because the command line
can hold paths; the commit is recorded by ich3d instead.

:func:`wandb_environment` is the one place that sets W&B's environment up (the
training stages here and the evaluation's run in :mod:`ich3d.evaluation.report.wandb`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from ich3d import __version__
from ich3d.config import Config
from ich3d.data.schema import LABEL_COLUMNS
from ich3d.tracking.offline import read_offline_run

__all__ = [
    "StageCSVLogger",
    "StageWandbLogger",
    "BEST_SUMMARY",
    "code_version",
    "wandb_environment",
    "wandb_settings",
    "wandb_run_id",
    "build_loggers",
    "scrub_config",
    "scrub_value",
    "finish_loggers",
    "log_config",
    "read_offline_run",
]

log = logging.getLogger(__name__)

#: Config keys (dotted) whose values are file-system paths.
PATH_KEYS: frozenset[str] = frozenset(
    {"data.cache_dir", "data.images_dir", "data.labels_csv", "data.splits_file", "run.root"}
)

_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")  # DICOM UIDs: digits and dots
_RSNA_ID = re.compile(r"\bID_[0-9a-fA-F]{6,}\b")  # RSNA image/patient/series ids


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def scrub_value(value: Any) -> Any:
    """Redact identifier-looking substrings of strings (recursively in lists/dicts)."""
    if isinstance(value, str):
        value = _UID.sub("<uid>", value)
        return _RSNA_ID.sub("<id>", value)
    if isinstance(value, Mapping):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_value(v) for v in value]
    return value


def scrub_config(config: Config | Mapping[str, Any]) -> dict[str, Any]:
    """The config as a flat-safe nested dict fit for W&B.

    Path values become ``"path:<8 hex>"`` (the hash tells runs on the same data
    apart without revealing folder or file names); other strings are passed through
    :func:`scrub_value`.
    """
    raw = config.to_dict() if isinstance(config, Config) else dict(config)

    def walk(node: Any, prefix: str) -> Any:
        if isinstance(node, Mapping):
            return {k: walk(v, f"{prefix}.{k}" if prefix else k) for k, v in node.items()}
        if prefix in PATH_KEYS and isinstance(node, str):
            return f"path:{_hash(node)}"
        return scrub_value(node)

    return walk(raw, "")



@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The code that runs: ``{"ich3d_version", "git_commit", "git_dirty"}``.

    ``git_commit`` is the commit of the work tree ich3d is imported from (an editable
    install of a clone), ``None`` otherwise (an installed wheel, no git);
    ``git_dirty`` says whether tracked files differ from it (``None`` without git).
    """
    out: dict[str, Any] = {"ich3d_version": __version__, "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    if commit:
        out["git_commit"] = commit
        status = git("status", "--porcelain", "--untracked-files=no")
        out["git_dirty"] = bool(status) if status is not None else None
    return out


def wandb_environment(mode: str) -> None:
    """Set W&B's environment for a run of ``tracking.mode`` (the one place it is done).

    Quiet (``WANDB_SILENT``) unless the user set it; ``offline`` forces
    ``WANDB_MODE=offline`` so no network is touched.
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"


def wandb_settings(*, capture_console: bool = False):  # -> wandb.Settings
    """W&B settings for every ich3d run: no system metadata, machine info, git remote or
    code (host names, paths and file names stay local).

    Args:
        capture_console: record the console (``stdout``/``stderr``) as the run's log.
    """
    import wandb  # heavy: kept off the import path of `ich3d --help`

    return wandb.Settings(
        console="wrap" if capture_console else "off",
        silent=True,
        x_disable_stats=True,
        x_disable_meta=True,
        x_disable_machine_info=True,
        disable_git=True,
        disable_code=True,
        save_code=False,
    )

class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, but it keeps every row and rewrites ``metrics.csv`` whole.

    Lightning's writer deletes an existing ``metrics.csv`` when it starts and then
    appends: a resumed stage would lose its earlier rows, and a process killed between
    flushes leaves the rows since the last flush out. This one starts from ``rows``
    (those of the checkpoint being resumed) and writes all rows to a temporary file
    replaced atomically.

    Lightning saves its loggers after every ``log_metrics`` (every
    ``log_every_n_steps``), so each row is formatted once and kept as CSV text: a
    save formats only the rows logged since the previous one (all of them again only
    when a new column appears) and writes the text, instead of re-formatting every
    row of the stage at every logging step.
    """

    def __init__(self, log_dir: str, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]
        self._keys: set[str] = {k for row in self.rows for k in row}
        self._fields: list[str] = []  # the columns of the formatted text
        self._text: list[str] = []  # CSV text of rows[: self._formatted]
        self._formatted = 0
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # never delete the previous metrics.csv
        return

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        self.rows.append(self.metrics[-1])
        self._keys.update(self.metrics[-1])

    def _format(self, rows: Sequence[Mapping[str, Any]]) -> str:
        import csv
        import io

        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self._fields).writerows(rows)
        return buf.getvalue()

    def csv_text(self) -> str:
        """``metrics.csv``'s content: a header of the sorted columns, then every row."""
        import csv
        import io

        fields = sorted(self._keys)
        if fields != self._fields:  # a new column: every row again
            self._fields, self._text, self._formatted = fields, [], 0
        if self._formatted < len(self.rows):
            self._text.append(self._format(self.rows[self._formatted :]))
            self._formatted = len(self.rows)
        head = io.StringIO()
        csv.DictWriter(head, fieldnames=fields).writeheader()
        return head.getvalue() + "".join(self._text)

    def save(self) -> None:
        if not self.metrics and os.path.isfile(self.metrics_file_path):
            return
        tmp = self.metrics_file_path + ".tmp"
        with open(tmp, "w", newline="") as fh:
            fh.write(self.csv_text())
        os.replace(tmp, self.metrics_file_path)
        self.metrics = []


class StageCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<stage dir>/metrics.csv`` that continues the rows of a resumed stage.

    Args:
        stage_dir: the stage folder.
        rows: the rows logged before the checkpoint the stage resumes from (``[]``
            for a fresh stage).
    """

    def __init__(self, stage_dir: str, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(save_dir=stage_dir, name="", version="")
        self._initial_rows = list(rows)

    @property
    def experiment(self) -> _HistoryWriter:  # type: ignore[override]
        if self._experiment is None:
            from pytorch_lightning.utilities.rank_zero import rank_zero_only

            if rank_zero_only.rank != 0:  # other ranks log nothing (as Lightning's)
                return super().experiment
            os.makedirs(self.root_dir or ".", exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self._initial_rows)
        return self._experiment

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row so far (previous attempts' included); ``[]`` on ranks other than 0."""
        exp = self._experiment
        return list(exp.rows) if isinstance(exp, _HistoryWriter) else []


def wandb_run_id(experiment: str, run_id: str, stage: str) -> str:
    """The W&B run id of one stage of one run: the same for every attempt (resumed, requeued).

    A hash, so no path or name reaches W&B through it.
    """
    return hashlib.sha256(f"ich3d/{experiment}/{run_id}/{stage}".encode()).hexdigest()[:16]


#: how each validation metric is summarised in W&B: the best epoch's value (explicit names:
#: W&B applies only the first matching glob, and Lightning's ``*`` comes first)
BEST_SUMMARY: dict[str, str] = {
    "val/auc": "max",
    **{f"val/auc_{target}": "max" for target in LABEL_COLUMNS},
    "val/mean_auc": "max",
    "val/log_loss": "min",
    "val/loss": "min",
}


class StageWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` for one ich3d stage.

    * the summary holds the best value of every validation metric (:data:`BEST_SUMMARY`);
    * the W&B "anonymous setting" warning is not triggered (Lightning passes
      ``anonymous=None``, which W&B reads as setting a deprecated option);
    * with ``log_model``, :meth:`log_best_checkpoint` adds ``best.ckpt`` as a ``model``
      artifact named by the run's hash (no path or file name of the data in it).

    Args:
        best_ckpt: the stage's ``best.ckpt`` path.
        log_model: upload it as an artifact when the stage succeeds.
        **kwargs: ``WandbLogger`` arguments.
    """

    def __init__(self, *, best_ckpt: str | os.PathLike, log_model: bool = False, **kwargs: Any) -> None:
        super().__init__(log_model=False, **kwargs)
        self._wandb_init.pop("anonymous", None)
        self._best_ckpt = Path(best_ckpt)
        self._log_best_model = bool(log_model)

    @property
    def experiment(self):  # type: ignore[no-untyped-def]  # -> wandb Run
        fresh = self._experiment is None
        run = super().experiment
        if fresh and self._experiment is not None and callable(getattr(run, "define_metric", None)):
            for name, summary in BEST_SUMMARY.items():
                run.define_metric(name, step_metric="trainer/global_step", summary=summary)
        return run

    def log_best_checkpoint(self) -> bool:
        """Add ``best.ckpt`` to the run as a ``model`` artifact (if asked and the file exists)."""
        if not self._log_best_model or self._experiment is None or not self._best_ckpt.is_file():
            return False
        import wandb  # heavy: kept off the import path of `ich3d --help`

        stage = str(self._wandb_init.get("job_type") or "model")
        artifact = wandb.Artifact(f"model-{self._id}", type="model", metadata={"stage": stage})
        artifact.add_file(str(self._best_ckpt), name="best.ckpt")
        self._experiment.log_artifact(artifact, aliases=["best", stage])
        return True


def build_loggers(
    config: Config,
    run_path: os.PathLike | str,
    stage: str,
    *,
    rows: Sequence[Mapping[str, Any]] = (),
    resume: bool = False,
) -> list[Logger]:
    """Loggers of one stage: ``[StageCSVLogger]`` plus a :class:`StageWandbLogger` unless disabled.

    The W&B run is created lazily, when Lightning first needs it (after the
    DataModule's ``prepare_data``): a stage that fails while preparing its data
    leaves no W&B run behind.

    Args:
        config: the experiment config (``tracking`` section).
        run_path: the run directory; CSV goes to ``<run>/<stage>/metrics.csv``, W&B
            files to ``<run>/wandb/``.
        stage: stage name, the W&B job type.
        rows: CSV rows already logged by the attempts before the checkpoint resumed.
        resume: the stage continues a checkpoint: the W&B run of the earlier attempts
            is continued (same id, ``resume="allow"``) rather than a new one started.
    """
    run_path = os.fspath(run_path)
    stage_dir = os.path.join(run_path, stage)
    warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
    loggers: list[Logger] = [StageCSVLogger(stage_dir, rows)]
    tracking = config.tracking
    if tracking.mode == "disabled":
        return loggers
    wandb_environment(tracking.mode)
    run_id = os.path.basename(run_path.rstrip(os.sep))
    group = run_id
    if config.data.fold is not None:  # RUN/fold<k>/: the run id is the parent's, the fold in the name
        group = os.path.basename(os.path.dirname(run_path.rstrip(os.sep)))
        run_id = f"{group}/{run_id}"
    loggers.append(
        StageWandbLogger(
            best_ckpt=os.path.join(stage_dir, "best.ckpt"),
            log_model=tracking.log_model,
            name=f"{config.experiment}/{run_id}/{stage}",
            save_dir=run_path,
            offline=tracking.mode == "offline",
            project=tracking.project,
            entity=tracking.entity,
            group=tracking.group or group,
            job_type=stage,
            tags=list(tracking.tags),
            settings=wandb_settings(capture_console=True),
            id=wandb_run_id(config.experiment, run_id, stage),
            resume="allow" if resume else None,
            config=_wandb_config(config),
        )
    )
    return loggers


def _wandb_config(config: Config) -> dict[str, Any]:
    """The W&B config of a stage run; a fold's run also carries ``fold`` and ``folds`` at the top (to filter by)."""
    out: dict[str, Any] = {"config": scrub_config(config), "code": code_version()}
    if config.data.fold is not None:
        out.update(fold=config.data.fold, folds=config.data.folds)
    return out


def log_config(loggers: Sequence[Logger], config: Config) -> None:
    """Log the scrubbed resolved config as hyper-parameters (``config/...``) to every logger.

    A :class:`StageWandbLogger` received it when it was built (so logging it here
    would start its W&B run before the data is prepared): it is skipped.
    """
    params = {"config": scrub_config(config), "code": code_version()}
    for logger in loggers:
        if not isinstance(logger, StageWandbLogger):
            logger.log_hyperparams(params)


def finish_loggers(loggers: Sequence[Logger], status: str = "success") -> None:
    """Flush every logger and close the W&B run so the next stage opens a new one.

    With ``tracking.log_model`` and a successful stage, the best checkpoint is added
    to the W&B run first.

    Never raises: it runs in the ``finally`` of a stage, also while the process is
    being stopped by SIGTERM (preemption, ``scancel``), when W&B's service process
    may already be gone; a logger that fails is logged as a warning, and the others
    (the CSV logger first) are still flushed.
    """
    for logger in loggers:
        try:
            if status == "success" and isinstance(logger, StageWandbLogger):
                logger.log_best_checkpoint()
            logger.finalize(status)
        except Exception as exc:  # a logger failing to flush must not lose the checkpoints
            log.warning("logger %s did not finalize: %s", type(logger).__name__, exc)
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and callable(getattr(experiment, "finish", None)):
            try:
                experiment.finish(exit_code=0 if status == "success" else 1)
            except Exception as exc:
                log.warning("W&B run did not finish cleanly (%s: %s)", type(exc).__name__, exc)
