"""Resume and preemption without a scheduler: newest checkpoint, requeue checkpoints, metrics rows.

The preemption is the real mechanism (:class:`RequeueOnSignal` on a real SIGUSR1 sent to this
process) with the ``scontrol requeue`` call replaced; the resubmitted job is the same
``ich3d train CONFIG --run-id ID --continue`` command again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from _train_helpers import (
    crash_after_step,
    make_cache,
    row_keys,
    run_cli,
    tiny_raw_config,
    write_config,
)

import ich3d.training.runner as runner
import ich3d.training.trainer as trainer_lib
from ich3d.config import config_from_dict
from ich3d.errors import UserError
from ich3d.runs.checkpoints import load_checkpoint
from ich3d.runs.run_dir import open_run_dir
from ich3d.tracking.loggers import finish_loggers, read_offline_run
from ich3d.training.preemption import (
    RequeueOnSignal,
    metrics_rows,
    newest_checkpoint,
    prune_requeue_checkpoints,
    requeue_checkpoints,
    slurm_requeue,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("data"), patients=12)


def _fake_ckpt(path, step):
    torch.save({"global_step": step, "state_dict": {}}, path)


def test_newest_checkpoint_by_global_step_whichever_kind(tmp_path):
    assert newest_checkpoint(tmp_path) is None
    _fake_ckpt(tmp_path / "last.ckpt", 124)
    _fake_ckpt(tmp_path / "hpc_ckpt_1.ckpt", 60)  # an older requeue checkpoint
    assert newest_checkpoint(tmp_path).name == "last.ckpt"
    _fake_ckpt(tmp_path / "hpc_ckpt_2.ckpt", 130)  # mid-epoch, after last.ckpt
    assert newest_checkpoint(tmp_path).name == "hpc_ckpt_2.ckpt"
    (tmp_path / "hpc_ckpt_10.ckpt").write_bytes(b"PK\x03\x04 cut short by a kill")
    assert newest_checkpoint(tmp_path).name == "hpc_ckpt_2.ckpt"  # unreadable: skipped
    assert [p.name for p in requeue_checkpoints(tmp_path)] == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt"]
    _fake_ckpt(tmp_path / "last.ckpt", 248)
    assert newest_checkpoint(tmp_path).name == "last.ckpt"
    # same step: the file written last
    time.sleep(0.01)
    _fake_ckpt(tmp_path / "hpc_ckpt_11.ckpt", 248)
    os.utime(tmp_path / "last.ckpt", (1, 1))
    assert newest_checkpoint(tmp_path).name == "hpc_ckpt_11.ckpt"
    removed = prune_requeue_checkpoints(tmp_path, keep=tmp_path / "hpc_ckpt_11.ckpt")
    assert sorted(p.name for p in removed) == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt"]
    # the unreadable one is never deleted: moved aside, no longer a requeue checkpoint (issue 18)
    assert (tmp_path / "hpc_ckpt_10.ckpt.unreadable").is_file()
    prune_requeue_checkpoints(tmp_path)
    assert requeue_checkpoints(tmp_path) == [] and (tmp_path / "last.ckpt").is_file()


class _Preempt(pl.Callback):
    """Send SIGUSR1 to this process right after the optimizer step that reaches a target step."""

    def __init__(self, targets):
        self.targets = targets  # shared list: one target is used up per attempt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.targets and trainer.global_step == self.targets[0]:
            self.targets.pop(0)
            os.kill(os.getpid(), signal.SIGUSR1)


def _with_preemption(monkeypatch, targets, requeued):
    real = trainer_lib.build_trainer

    def build(*args, **kwargs):
        trainer = real(*args, **kwargs)

        def requeue():
            requeued.append(trainer.global_step)
            return True

        trainer.callbacks.extend([RequeueOnSignal(requeue=requeue), _Preempt(targets)])
        return trainer

    monkeypatch.setattr(trainer_lib, "build_trainer", build)


def _slice_config(cache, root, **tracking):
    raw = tiny_raw_config(cache, root)
    raw["stages"]["slice"].update({"max_epochs": 3, "samples_per_epoch": 40})  # 4 steps per epoch
    raw["trainer"]["log_every_n_steps"] = 1
    if tracking:
        raw["tracking"] = tracking
    return write_config(root / "tiny.yaml", raw)


def test_repeated_preemption_keeps_every_metrics_row_once(cache, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "reference"
    reference.mkdir()
    cfg = _slice_config(cache, reference)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "ref") == 0
    ref = open_run_dir(reference / "runs" / "tiny" / "ref")
    expected = row_keys(ref.stage_dir("slice") / "metrics.csv")
    assert max(step for step, _ in expected) >= 11 and all(n == 1 for n in expected.values())

    work = tmp_path / "preempted"
    work.mkdir()
    cfg = _slice_config(cache, work)
    # step 2: before the first epoch ends (no last.ckpt yet); 5 and 6: twice in epoch 1;
    # 8: at the end of epoch 1 (the signal lands just before its validation)
    targets, requeued = [2, 5, 6, 8], []
    _with_preemption(monkeypatch, targets, requeued)
    attempts = 0
    while attempts < 10:  # the requeued job runs the same command again
        attempts += 1
        try:
            code = run_cli("train", str(cfg), "--stage", "slice", "--run-id", "pre", "--continue")
        except SystemExit as exc:
            assert exc.code == 0  # checkpointed and requeued
            run = open_run_dir(work / "runs" / "tiny" / "pre")
            hpc = requeue_checkpoints(run.stage_dir("slice"))
            assert len(hpc) == 1  # superseded requeue checkpoints are deleted
            assert load_checkpoint(hpc[0])["global_step"] == requeued[-1]
            assert newest_checkpoint(run.stage_dir("slice")) == hpc[0]
            assert not run.is_done("slice")
            continue
        assert code == 0
        break
    assert attempts == 5 and requeued == [2, 5, 6, 8]
    run = open_run_dir(work / "runs" / "tiny" / "pre")
    assert run.is_done("slice") and requeue_checkpoints(run.stage_dir("slice")) == []
    last = load_checkpoint(run.last_ckpt("slice"))
    assert last["global_step"] == load_checkpoint(ref.last_ckpt("slice"))["global_step"] == 12
    assert row_keys(run.stage_dir("slice") / "metrics.csv") == expected
    # last.ckpt is written at train end, after the last epoch's train/auc row: every row
    assert len(metrics_rows(last)) == sum(expected.values())
    assert json.loads(run.result_path("slice").read_text())["global_step"] == 12
    # a resubmission of the finished stage skips it
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "pre", "--continue") == 0
    assert "stage slice of" in run.log_path.read_text() and "skipped" in run.log_path.read_text()
    assert load_checkpoint(run.last_ckpt("slice"))["global_step"] == 12


def test_the_sigterm_of_the_requeue_cannot_kill_the_stopping_stage(cache, tmp_path, monkeypatch, capsys):
    """Slurm SIGTERMs a job as soon as it is requeued, while the stage still finishes its loggers."""
    import ich3d.training.stage_run as stage_run

    cfg = _slice_config(cache, tmp_path)
    _with_preemption(monkeypatch, [6], [])
    real_finish = stage_run.finish_loggers

    def finish_during_the_kill(loggers, status="success"):
        os.kill(os.getpid(), signal.SIGTERM)  # what the requeue makes Slurm send, mid-shutdown
        real_finish(loggers, status)

    monkeypatch.setattr(stage_run, "finish_loggers", finish_during_the_kill)
    got = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # the "default"
    try:
        with pytest.raises(SystemExit) as stop:
            run_cli("train", str(cfg), "--stage", "slice", "--run-id", "term")
        assert stop.value.code == 0 and got == []  # ignored: not Lightning's start-of-fit handler
        assert "checkpointed (hpc_ckpt_1.ckpt, step 6) and requeued" in capsys.readouterr().out
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert got == [signal.SIGTERM]  # and the handler from before the stage is back
    finally:
        signal.signal(signal.SIGTERM, before)


def test_under_stage_sbatch_the_requeue_is_a_marker_for_the_batch_script(tmp_path, monkeypatch):
    marker = tmp_path / "ich3d-requeue-61"
    monkeypatch.setenv("ICH3D_REQUEUE_MARKER", str(marker))
    monkeypatch.setenv("PATH", str(tmp_path / "no-scontrol-here"))  # scontrol is not called
    assert slurm_requeue() is True and marker.read_text() == "requeue\n"
    monkeypatch.setenv("ICH3D_REQUEUE_MARKER", str(tmp_path / "missing" / "m"))
    assert slurm_requeue() is False  # an unwritable marker: not requeued, training goes on
    monkeypatch.delenv("ICH3D_REQUEUE_MARKER")
    monkeypatch.setenv("SLURM_JOB_ID", "61")
    assert slurm_requeue() is False  # scontrol itself, absent here


def test_later_stage_refuses_an_unfinished_one(cache, tmp_path, monkeypatch, capsys):
    cfg = _slice_config(cache, tmp_path)
    _with_preemption(monkeypatch, [6], [])
    with pytest.raises(SystemExit):
        run_cli("train", str(cfg), "--stage", "slice", "--run-id", "cut")
    run = open_run_dir(tmp_path / "runs" / "tiny" / "cut")
    assert run.best_ckpt("slice").is_file() and not run.is_done("slice")
    capsys.readouterr()
    assert run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "cut") == 2
    err = capsys.readouterr().err
    assert "slice, which has no result.json" in err and "--resume" in err
    assert not run.stage_dir("sequence").exists()
    # --continue resumes slice from its requeue checkpoint, then runs the chain
    assert run_cli("train", str(cfg), "--run-id", "cut", "--continue") == 0
    assert all(run.is_done(s) for s in ("slice", "sequence", "finetune"))
    assert load_checkpoint(run.last_ckpt("slice"))["global_step"] == 12


def test_requeued_stage_continues_the_same_wandb_run(cache, tmp_path, monkeypatch):
    cfg = _slice_config(cache, tmp_path, mode="offline", project="t")
    _with_preemption(monkeypatch, [5], [])
    with pytest.raises(SystemExit):
        run_cli("train", str(cfg), "--stage", "slice", "--run-id", "wb", "--continue")
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "wb", "--continue") == 0
    run = open_run_dir(tmp_path / "runs" / "tiny" / "wb")
    offline = sorted((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    # offline-run-<date>_<time>-<id>, with "-<n>" appended when two attempts start in one second
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([^-]+)(?:-\d+)?", p.name).group(1) for p in offline}
    assert len(ids) == 1  # one W&B run id for both attempts
    first, second = (read_offline_run(p) for p in offline)
    assert first["run"]["job_type"] == second["run"]["job_type"] == "slice"
    steps = [h["trainer/global_step"] for h in first["history"] + second["history"] if "trainer/global_step" in h]
    assert max(steps) >= 11


class _Broken:
    class _experiment:  # noqa: N801 - the attribute Lightning's loggers use
        @staticmethod
        def finish(**kwargs):
            raise TypeError("finish() got an unexpected keyword argument 'quiet'")

    def finalize(self, status):
        raise RuntimeError("service gone")


def test_logger_shutdown_never_raises(tmp_path):
    from ich3d.tracking.loggers import StageCSVLogger

    csv = StageCSVLogger(str(tmp_path), rows=[{"step": 0, "train/loss_step": 1.0}])
    csv.log_metrics({"train/loss_step": 0.5}, step=1)
    finish_loggers([_Broken(), csv], "failed")  # no exception, the CSV logger still flushed
    frame = pd.read_csv(tmp_path / "metrics.csv")
    assert frame["step"].tolist() == [0, 1] and frame["train/loss_step"].tolist() == [1.0, 0.5]


def test_global_batch_divides_over_processes(cache, tmp_path):
    config = config_from_dict(tiny_raw_config(cache, tmp_path))  # slice batch 10, volume batch 1
    assert runner.per_process_batch(config, "slice", 1) == 10
    assert runner.per_process_batch(config, "slice", 2) == 5
    with pytest.raises(UserError, match=r"stages.slice.batch_size=10 is the global batch.*4 processes.*8 or 12"):
        runner.per_process_batch(config, "slice", 4)
    with pytest.raises(UserError, match="a volume stage with batch 1 runs on one process"):
        runner.per_process_batch(config, "sequence", 2)


def test_batch_that_does_not_divide_fails_before_any_write(cache, tmp_path, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_raw_config(cache, tmp_path))
    assert run_cli("train", str(cfg), "--run-id", "b", "trainer.devices=3", "--continue") == 2
    assert "stages.slice.batch_size=10 is the global batch" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_crash_resumes_from_last_ckpt_with_every_row_once(cache, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    reference.mkdir()
    assert run_cli("train", str(_slice_config(cache, reference)), "--stage", "slice", "--run-id", "ref") == 0
    expected = row_keys(reference / "runs" / "tiny" / "ref" / "slice" / "metrics.csv")
    cfg = _slice_config(cache, tmp_path)
    with crash_after_step(monkeypatch, 6), pytest.raises(RuntimeError, match="node lost"):
        run_cli("train", str(cfg), "--stage", "slice", "--run-id", "crash")
    run = open_run_dir(tmp_path / "runs" / "tiny" / "crash")
    assert newest_checkpoint(run.stage_dir("slice")) == run.last_ckpt("slice")
    assert load_checkpoint(run.last_ckpt("slice"))["global_step"] == 4
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "crash", "--continue") == 0
    assert load_checkpoint(run.last_ckpt("slice"))["global_step"] == 12
    assert row_keys(run.stage_dir("slice") / "metrics.csv") == expected
