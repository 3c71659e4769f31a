"""Tracking: scrubbed configs, and the offline W&B run a stage leaves in its run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

from ich3d import __version__
from ich3d.config import config_from_dict
from ich3d.runs.run_dir import open_run_dir
from ich3d.tracking.loggers import (
    StageWandbLogger,
    build_loggers,
    code_version,
    read_offline_run,
    scrub_config,
    scrub_value,
    wandb_settings,
)


def test_scrub_config_hashes_paths_and_redacts_identifiers(tmp_path):
    config = config_from_dict(
        {
            "experiment": "ID_0a1b2c3d4e",
            "data": {"cache_dir": "/data/ID_abcdef123/cache", "labels_csv": "/x/labels.csv"},
            "tracking": {"tags": ["1.2.840.113619.2.55", "ok"]},
        }
    )
    scrubbed = scrub_config(config)
    text = json.dumps(scrubbed)
    assert "ID_abcdef123" not in text and "labels.csv" not in text and "/data" not in text
    assert scrubbed["data"]["cache_dir"].startswith("path:") and len(scrubbed["data"]["cache_dir"]) == 13
    assert scrubbed["data"]["cache_dir"] != scrubbed["data"]["labels_csv"]
    assert scrubbed["data"]["images_dir"] is None
    assert scrubbed["experiment"] == "<id>"
    assert scrubbed["tracking"]["tags"] == ["<uid>", "ok"]
    assert scrubbed["stages"]["slice"]["lr"] == pytest.approx(1e-4)
    assert scrub_value("series 1.2.3.4.5 of ID_0123456789") == "series <uid> of <id>"
    assert scrub_value("brain") == "brain"


def test_offline_wandb_run_holds_config_and_val_auc(tmp_path):
    cache = make_cache(tmp_path / "data", patients=12)
    raw = tiny_raw_config(cache, tmp_path, tracking={"mode": "offline", "project": "ich3d-test", "tags": ["t1"]})
    cfg = write_config(tmp_path / "tiny.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "wb", "stages.slice.max_epochs=2") == 0
    run = open_run_dir(tmp_path / "runs" / "tiny" / "wb")
    offline = sorted((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    wb = read_offline_run(offline[0])
    assert wb["run"]["group"] == "wb" and wb["run"]["job_type"] == "slice"
    assert wb["run"]["project"] == "ich3d-test"
    cfg_logged = wb["config"]["config"]
    assert cfg_logged["experiment"] == "tiny"
    assert cfg_logged["stages"]["slice"]["max_epochs"] == 2  # the resolved config, override included
    assert cfg_logged["data"]["cache_dir"].startswith("path:")
    assert wb["config"]["params/total"] > wb["config"]["params/trainable"] - 1 > 0
    assert wb["config"]["model"]["encoder"]["name"] == "patel_cnn"
    # the val AUCs W&B holds are the ones of metrics.csv, and the summary holds the best
    csv = pd.read_csv(run.stage_dir("slice") / "metrics.csv").dropna(subset=["val/auc"])
    logged = [row["val/auc"] for row in wb["history"] if "val/auc" in row]
    assert logged == pytest.approx(csv["val/auc"].tolist())
    assert wb["summary"]["val/auc"] == {"max": pytest.approx(max(csv["val/auc"]))}
    assert wb["summary"]["val/auc"]["max"] == pytest.approx(run.read_result("slice")["best_val_auc"])
    assert wb["summary"]["val/loss"] == {"min": pytest.approx(min(csv["val/loss"].dropna()))}
    # the code version; no model artifact unless asked
    assert wb["config"]["code"]["ich3d_version"] == __version__
    assert wb["config"]["code"]["git_commit"] == code_version()["git_commit"]
    assert wb["artifacts"] == []
    assert any("train/loss_epoch" in row for row in wb["history"])
    assert any(k.startswith("lr-") for row in wb["history"] for k in row)
    # no identifier or path in what `wandb sync` uploads (the .wandb log and files/)
    uploaded = [*offline[0].glob("*.wandb"), *(p for p in (offline[0] / "files").rglob("*") if p.is_file())]
    blob = b"".join(p.read_bytes() for p in uploaded)
    for secret in ("ID_pat", "ID_series", "ID_study", str(cache), str(tmp_path)):
        assert secret.encode() not in blob, secret


def test_wandb_summary_holds_the_best_not_the_last_value(tmp_path):
    logger = StageWandbLogger(
        best_ckpt=tmp_path / "slice" / "best.ckpt",
        save_dir=str(tmp_path),
        offline=True,
        project="ich3d-test",
        job_type="slice",
        id="best0001",
        settings=wandb_settings(),
    )
    for step, (auc, loss) in enumerate([(0.5, 0.9), (0.9, 0.4), (0.7, 0.6)]):
        logger.log_metrics({"val/auc": auc, "val/loss": loss, "val/auc_epidural": auc / 2}, step=step)
    logger.experiment.finish()
    import wandb

    wandb.teardown()  # the service writes the offline log asynchronously: wait for it
    wb = read_offline_run(next((tmp_path / "wandb").glob("offline-run-*")))
    assert wb["summary"]["val/auc"] == {"max": 0.9}  # the last was 0.7
    assert wb["summary"]["val/loss"] == {"min": 0.4}
    assert wb["summary"]["val/auc_epidural"] == {"max": 0.45}


def test_stage_runs_capture_the_console_and_record_the_commit(tmp_path):
    config = config_from_dict({"tracking": {"mode": "offline"}})
    (_, wb_logger) = build_loggers(config, tmp_path / "run", "slice")
    assert isinstance(wb_logger, StageWandbLogger)
    assert wb_logger._wandb_init["settings"].console == "wrap"  # W&B's Logs tab
    assert "anonymous" not in wb_logger._wandb_init
    assert wb_logger._wandb_init["config"]["code"] == code_version()
    assert wandb_settings().console == "off"  # the evaluation's run prints nothing worth keeping
    in_git = (Path(__file__).resolve().parents[1] / ".git").exists()
    assert (code_version()["git_commit"] is not None) == in_git


def test_no_anonymous_warning_and_best_checkpoint_as_opt_in_artifact(tmp_path, monkeypatch):
    import wandb

    warned: list[str] = []
    monkeypatch.setattr(wandb, "termwarn", lambda msg, *a, **k: warned.append(str(msg)))
    cache = make_cache(tmp_path / "data", patients=12)
    raw = tiny_raw_config(cache, tmp_path, tracking={"mode": "offline", "log_model": True})
    cfg = write_config(tmp_path / "tiny.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "art") == 0
    assert not [w for w in warned if "anonymous" in w], warned
    offline = next((tmp_path / "runs" / "tiny" / "art" / "wandb").glob("offline-run-*"))
    (artifact,) = read_offline_run(offline)["artifacts"]
    assert artifact["type"] == "model" and artifact["files"] == ["best.ckpt"]
    assert artifact["name"].startswith("model-") and "tiny" not in artifact["name"]
    assert {"best", "slice"} <= set(artifact["aliases"])
    blob = b"".join(p.read_bytes() for p in offline.glob("*.wandb"))
    for secret in ("ID_pat", str(cache), str(tmp_path)):
        assert secret.encode() not in blob, secret


def test_evaluation_and_training_share_the_wandb_environment(monkeypatch):
    from ich3d.evaluation.report import wandb as evaluation
    from ich3d.tracking import loggers

    assert evaluation.wandb_environment is loggers.wandb_environment
    monkeypatch.delenv("WANDB_MODE", raising=False)
    loggers.wandb_environment("online")
    assert "WANDB_MODE" not in __import__("os").environ
    loggers.wandb_environment("offline")
    assert __import__("os").environ["WANDB_MODE"] == "offline"
