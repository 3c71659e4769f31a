"""Training that cannot go on ends in one ``ich3d: error:`` line with advice that exists,
and leaves everything else as it was; the end-of-training summary names the best checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import sys

import pandas as pd
import pytest
import torch
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

import ich3d
from ich3d.config import config_from_dict
from ich3d.errors import UserError
from ich3d.runs.checkpoints import load_checkpoint
from ich3d.runs.inputs import input_signature
from ich3d.runs.run_dir import RunDir, open_run_dir
from ich3d.training.preemption import UNREADABLE_SUFFIX, prune_requeue_checkpoints
from ich3d.training.trainer import build_trainer, show_progress_bar


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("data"), patients=12)


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("ich3d: error:")]


def test_non_finite_loss_stops_the_stage_with_one_error_and_no_result(cache, tmp_path, capsys):
    raw = tiny_raw_config(cache, tmp_path)
    raw["stages"]["slice"].update({"lr": 1e30, "max_epochs": 2})
    cfg = write_config(tmp_path / "tiny.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "nan") == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1, errors
    assert errors[0].startswith("ich3d: error: stage slice: the training loss is not finite (")
    assert "at step " in errors[0] and "(epoch 0)" in errors[0]
    assert "stages.slice.lr = 1e+30" in errors[0] and "stages.slice.gradient_clip_val" in errors[0]
    assert "wrote no result.json" in errors[0] and "--run-id" in errors[0]
    run = open_run_dir(tmp_path / "runs" / "tiny" / "nan")
    assert not run.is_done("slice") and not run.result_path("slice").exists()
    assert not run.best_ckpt("slice").exists()  # no validation of a NaN model chose a "best"


def _train_slice(cache, root, run_id, **slice_settings):
    raw = tiny_raw_config(cache, root)
    raw["stages"]["slice"].update(slice_settings)
    cfg = write_config(root / f"{run_id}.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", run_id) == 0
    return cfg, open_run_dir(root / "runs" / "tiny" / run_id)


def test_corrupt_last_ckpt_on_resume_names_the_folder_to_move_and_changes_nothing(cache, tmp_path, capsys):
    _, run = _train_slice(cache, tmp_path, "corrupt")
    stage_dir = run.stage_dir("sequence")
    stage_dir.mkdir()
    (stage_dir / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_cli("train", "--resume", str(run.path), "--stage", "sequence") == 2
    errors = _error_lines(capsys)
    assert errors == [
        f"ich3d: error: cannot resume stage sequence: last.ckpt in {stage_dir} cannot be read (cut short "
        f"or corrupt); to train the stage again from its start, move its folder aside "
        f"(mv {stage_dir} {stage_dir}.unreadable) and run the same command"
    ]
    after = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    assert after == before  # not even the run's config.yaml or log was rewritten
    stage_dir.rename(f"{stage_dir}.unreadable")  # the advice, then the same command
    assert run_cli("train", "--resume", str(run.path), "--stage", "sequence") == 0
    assert run.is_done("sequence") and (run.path / "sequence.unreadable" / "last.ckpt").is_file()


def test_resume_moves_an_unreadable_requeue_checkpoint_aside_and_says_so(tmp_path, caplog):
    for n, step in ((1, 10), (3, 30)):
        torch.save({"global_step": step, "state_dict": {}}, tmp_path / f"hpc_ckpt_{n}.ckpt")
    garbage = b"PK\x03\x04 cut short by a kill"
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(garbage)
    with caplog.at_level(logging.WARNING, logger="ich3d.training.preemption"):
        removed = prune_requeue_checkpoints(tmp_path, keep=tmp_path / "hpc_ckpt_3.ckpt")
    assert [p.name for p in removed] == ["hpc_ckpt_1.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpc_ckpt_2.ckpt" + UNREADABLE_SUFFIX, "hpc_ckpt_3.ckpt"]
    assert (tmp_path / ("hpc_ckpt_2.ckpt" + UNREADABLE_SUFFIX)).read_bytes() == garbage
    assert any(
        "moved the unreadable requeue checkpoint hpc_ckpt_2.ckpt aside" in r.getMessage() and "not deleted" in r.getMessage()
        for r in caplog.records
    )


class _NotPlainData:
    """A class a checkpoint must never make ich3d instantiate."""


def test_weights_only_refusal_is_one_line_that_never_suggests_unsafe_loading(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _NotPlainData()}, path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only=False" not in message
    assert message == (
        f"cannot read checkpoint {path}: it holds pickled Python objects, not only tensors and plain data, "
        "and ich3d loads checkpoints only with weights_only=True (it never runs code from a file)"
    )
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=r"^cannot read checkpoint .*cut\.ckpt: \w+: [^\n]+$"):
        load_checkpoint(truncated)


def test_summary_and_result_name_the_best_checkpoint_not_the_last_step(cache, tmp_path, capsys):
    # a learning rate too small to change a ranking: every validation ties and the first stays best
    _, run = _train_slice(cache, tmp_path, "best", lr=1e-12, max_epochs=2)
    out = capsys.readouterr().out
    result = json.loads(run.result_path("slice").read_text())
    best = load_checkpoint(run.best_ckpt("slice"))
    assert (result["best_epoch"], result["best_global_step"], result["global_step"]) == (0, 4, 8)
    assert best["global_step"] == 4
    assert "(epoch 0, step 4)" in out and "step 8" not in out
    logged = pd.read_csv(run.stage_dir("slice") / "metrics.csv")
    first_val = logged.dropna(subset=["val/loss"]).iloc[0]
    assert result["best_val_loss"] == pytest.approx(first_val["val/loss"], rel=1e-6)
    assert result["best_val_auc"] == pytest.approx(first_val["val/auc"], rel=1e-6)
    # where the figures came from (issue 17): hashes only, no path or identifier
    prov = result["provenance"]
    assert prov["seed"] == 0 and prov["run_id"] == "best" and prov["ich3d_version"] == ich3d.__version__
    assert prov["config_sha256"] == hashlib.sha256(run.config_path.read_bytes()).hexdigest()
    assert prov["data_fingerprint"] == input_signature(run.load_config().data)["cache"]
    assert prov["torch_threads"] == torch.get_num_threads() and prov["device"].startswith("CPU x 1")
    assert prov["git_commit"] == "unknown"  # pytest's temporary folder is no git work tree
    assert str(tmp_path) not in json.dumps(prov)


def test_progress_bar_only_when_stderr_is_a_terminal(cache, tmp_path, monkeypatch):
    raw = tiny_raw_config(cache, tmp_path)
    raw["trainer"]["enable_progress_bar"] = True
    config = config_from_dict(raw)
    run = RunDir(tmp_path / "run")

    class _Terminal:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", _Terminal(False))
    assert not show_progress_bar(config)
    assert build_trainer(config, "slice", run).progress_bar_callback is None
    monkeypatch.setattr(sys, "stderr", _Terminal(True))
    assert show_progress_bar(config)
    assert build_trainer(config, "slice", run).progress_bar_callback is not None
    raw["trainer"]["enable_progress_bar"] = False
    assert not show_progress_bar(config_from_dict(raw))
