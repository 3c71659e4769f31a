"""Tracking: scrubbed configs, and the offline W&B run a stage leaves in its run directory."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

from ich3d.config import config_from_dict
from ich3d.runs.run_dir import open_run_dir
from ich3d.tracking.loggers import read_offline_run, scrub_config, scrub_value


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
    # the val AUCs W&B holds are the ones of metrics.csv, and the summary holds the last
    csv = pd.read_csv(run.stage_dir("slice") / "metrics.csv").dropna(subset=["val/auc"])
    logged = [row["val/auc"] for row in wb["history"] if "val/auc" in row]
    assert logged == pytest.approx(csv["val/auc"].tolist())
    assert wb["summary"]["val/auc"] == pytest.approx(csv["val/auc"].tolist()[-1])
    assert any("train/loss_epoch" in row for row in wb["history"])
    assert any(k.startswith("lr-") for row in wb["history"] for k in row)
    # no identifier or path in what `wandb sync` uploads (the .wandb log and files/)
    uploaded = [*offline[0].glob("*.wandb"), *(p for p in (offline[0] / "files").rglob("*") if p.is_file())]
    blob = b"".join(p.read_bytes() for p in uploaded)
    for secret in ("ID_pat", "ID_series", "ID_study", str(cache), str(tmp_path)):
        assert secret.encode() not in blob, secret
