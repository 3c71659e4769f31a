"""Cached slice features for a frozen-encoder stage: exact against recomputing, views, reuse."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

from ich3d.data.features import FeatureStore
from ich3d.runs.checkpoints import load_checkpoint, sub_state_dict
from ich3d.runs.run_dir import open_run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs sharing one slice stage: stage 2 with cached features and recomputing the CNN."""
    root = tmp_path_factory.mktemp("features")
    cache = make_cache(root / "data", patients=12)
    raw = tiny_raw_config(cache, root, stages={"sequence": {"augment": False, "samples_per_epoch": 8, "max_epochs": 2}})
    cfg = write_config(root / "tiny.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "cached") == 0
    run_c = open_run_dir(root / "runs" / "tiny" / "cached")
    # the same slice stage for the recomputing run (copied, so both start from the same CNN)
    run_r = root / "runs" / "tiny" / "recompute"
    (run_r / "slice").mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt", "result.json"):
        (run_r / "slice" / name).write_bytes((run_c.path / "slice" / name).read_bytes())
    (run_r / "config.yaml").write_text(run_c.config_path.read_text())
    assert run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "cached") == 0
    assert run_cli(
        "train", str(cfg), "--stage", "sequence", "--run-id", "recompute", "stages.sequence.cached_features=false"
    ) == 0
    return cfg, run_c, open_run_dir(run_r)


def test_cached_features_are_exact(runs):
    cfg, cached, recompute = runs
    assert (cached.stage_dir("sequence") / "features" / "features.json").is_file()
    assert not (recompute.stage_dir("sequence") / "features").exists()
    a = pd.read_csv(cached.stage_dir("sequence") / "metrics.csv")
    b = pd.read_csv(recompute.stage_dir("sequence") / "metrics.csv")
    for col in ("train/loss_epoch", "val/loss", "val/auc"):
        x, y = a[col].dropna().to_numpy(), b[col].dropna().to_numpy()
        assert len(x) == len(y) == 2, col
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=col)
    ra = json.loads(cached.result_path("sequence").read_text())
    rb = json.loads(recompute.result_path("sequence").read_text())
    assert ra["best_val_auc"] == pytest.approx(rb["best_val_auc"], abs=1e-6)
    assert ra["global_step"] == rb["global_step"] == 16
    # same head weights, and the frozen encoder is stage 1's in both (checkpoints interchangeable)
    sa = load_checkpoint(cached.best_ckpt("sequence"))["state_dict"]
    sb = load_checkpoint(recompute.best_ckpt("sequence"))["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-5, msg=k)
    enc = sub_state_dict(load_checkpoint(cached.best_ckpt("slice"))["state_dict"], "model.encoder.")
    for k, v in sub_state_dict(sa, "model.encoder.").items():
        assert torch.equal(v, enc[k])


def test_store_holds_the_encoders_features(runs):
    cfg, cached, _ = runs
    from ich3d.runs.checkpoints import load_volume_model
    from ich3d.training.runner import build_volume_datamodule

    store_dir = cached.stage_dir("sequence") / "features"
    meta = json.loads((store_dir / "features.json").read_text())
    assert (meta["views"], meta["augment"], meta["depth_pool"]) == (1, False, 2)
    model, config = load_volume_model(cached, "sequence")
    dm = build_volume_datamodule(config, stage="sequence", augment=False)
    dm.setup("fit")
    store = FeatureStore(store_dir, "val")
    table = dm.split_table("val")
    assert len(store) == len(table)
    batch = next(iter(dm.eval_dataloader("val")))
    with torch.no_grad():
        want = model.encode(batch["volume"], batch["length"])[0].numpy()
    np.testing.assert_allclose(store.features(0), want[: int(batch["length"][0])], rtol=0, atol=1e-6)


def test_augmented_views_and_reuse(runs, tmp_path):
    cfg, cached, _ = runs
    # augmentation on + cached_features=true: 3 fixed views per training volume, 1 per val volume
    over = ["stages.sequence.augment=true", "stages.sequence.cached_features=true", "stages.sequence.feature_views=3"]
    assert run_cli("train", str(cfg), "--stage", "direct", "--run-id", "cached") == 0  # no frozen encoder: no store
    assert not (cached.stage_dir("direct") / "features").exists()
    run_id = "views"
    run = cached.path.parent / run_id
    (run / "slice").mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt", "result.json"):
        (run / "slice" / name).write_bytes((cached.path / "slice" / name).read_bytes())
    (run / "config.yaml").write_text(cached.config_path.read_text())
    assert run_cli("train", str(cfg), "--stage", "sequence", "--run-id", run_id, *over) == 0
    store_dir = run / "sequence" / "features"
    train = FeatureStore(store_dir, "train")
    assert train.views == 3 and FeatureStore(store_dir, "val").views == 1
    views = [train.features(0, v) for v in range(3)]
    assert all(v.shape == views[0].shape for v in views)
    assert not all(np.array_equal(views[0], v) for v in views[1:])  # augmented: the views differ
    meta_before = (store_dir / "features.json").stat().st_mtime_ns
    data_before = (store_dir / "train.npy").stat().st_mtime_ns
    # a resumed stage reuses the store (same encoder, inputs and views)
    assert run_cli("train", "--resume", str(run), "--stage", "sequence", *over, "stages.sequence.max_epochs=3") == 0
    assert (store_dir / "train.npy").stat().st_mtime_ns == data_before
    assert (store_dir / "features.json").stat().st_mtime_ns == meta_before
