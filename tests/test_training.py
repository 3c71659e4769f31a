"""The staged trainer: checkpoints per stage, frozen CNN in stage 2, resume, CLI errors, DDP AUC."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

from ich3d.config import config_from_dict
from ich3d.runs.checkpoints import (
    load_checkpoint,
    load_slice_model,
    load_volume_model,
    sub_state_dict,
)
from ich3d.runs.run_dir import open_run_dir
from ich3d.training.modules import VolumeModule, gather_unique
from ich3d.training.runner import build_module, build_volume_datamodule, model_spec


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("data"), patients=12)


@pytest.fixture(scope="module")
def full_run(cache, tmp_path_factory):
    """One `ich3d train CONFIG --stage all` run (slice, sequence, finetune) shared by tests."""
    root = tmp_path_factory.mktemp("all")
    cfg = write_config(root / "tiny.yaml", tiny_raw_config(cache, root))
    assert run_cli("train", str(cfg), "--stage", "all", "--run-id", "r1") == 0
    return open_run_dir(root / "runs" / "tiny" / "r1")


def _plain(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (str, int, float, bool))


def test_stage_all_writes_every_stage(full_run, capsys):
    run = full_run
    assert run.config_path.is_file() and run.log_path.is_file()
    for stage in ("slice", "sequence", "finetune"):
        for name in ("best.ckpt", "last.ckpt", "metrics.csv", "result.json"):
            assert (run.stage_dir(stage) / name).is_file(), (stage, name)
        result = json.loads(run.result_path(stage).read_text())
        assert 0.0 <= result["best_val_auc"] <= 1.0
        metrics = pd.read_csv(run.stage_dir(stage) / "metrics.csv")
        assert {"train/loss_epoch", "val/loss", "val/auc"} <= set(metrics.columns)
        assert np.isclose(metrics["val/auc"].max(), result["best_val_auc"])
        ckpt = load_checkpoint(run.best_ckpt(stage))  # weights_only=True
        assert _plain(dict(ckpt["hyper_parameters"]))
        assert ckpt["ich3d"]["val_auc"] == pytest.approx(result["best_val_auc"])
    # every val volume counted once: val/n equals the val split size
    seq = pd.read_csv(run.stage_dir("sequence") / "metrics.csv").dropna(subset=["val/n"])
    dm = build_volume_datamodule(run.load_config())
    dm.setup("fit")
    assert set(seq["val/n"]) == {float(len(dm.split_table("val")))}
    assert "train.log" in {p.name for p in run.path.iterdir()}
    assert "stage finetune done" in run.log_path.read_text()


def test_stage2_freezes_cnn_bit_identical_and_stage3_changes_it(full_run):
    run = full_run
    slice_enc = sub_state_dict(load_checkpoint(run.best_ckpt("slice"))["state_dict"], "model.encoder.")
    for name in ("best.ckpt", "last.ckpt"):
        seq = load_checkpoint(run.stage_dir("sequence") / name)
        seq_enc = sub_state_dict(seq["state_dict"], "model.encoder.")
        assert seq_enc.keys() == slice_enc.keys()
        for k, v in slice_enc.items():
            assert torch.equal(v, seq_enc[k]), k
        # the encoder is not in the optimizer: one param group with head parameters only
        n_head = len(sub_state_dict(seq["state_dict"], "model.head."))
        assert len(seq["optimizer_states"][0]["param_groups"][0]["params"]) == n_head
    seq_best = sub_state_dict(load_checkpoint(run.best_ckpt("sequence"))["state_dict"], "model.")
    fin = sub_state_dict(load_checkpoint(run.best_ckpt("finetune"))["state_dict"], "model.")
    changed = [k for k in seq_best if k.startswith("encoder.") and not torch.equal(seq_best[k], fin[k])]
    assert len(changed) >= 1
    assert any(k.startswith("encoder.features") or k.startswith("encoder.") for k in changed)


def test_frozen_encoder_stays_in_eval_mode_and_out_of_optimizer(cache, tmp_path):
    config = config_from_dict(tiny_raw_config(cache, tmp_path))
    module = build_module(config, "sequence")
    assert isinstance(module, VolumeModule)
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) not in in_opt and not p.requires_grad for p in module.model.encoder.parameters())
    assert all(id(p) in in_opt for p in module.model.head.parameters())
    module.train()
    assert module.model.head.training and not module.model.encoder.training
    assert type(opt).__name__ == "RMSprop" and opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    ft = build_module(config, "finetune")
    assert all(p.requires_grad for p in ft.parameters())


def test_models_for_predict_and_evaluate(full_run):
    model, config = load_volume_model(full_run.path)  # best available: finetune
    fin = load_checkpoint(full_run.best_ckpt("finetune"))
    assert torch.equal(model.encoder.state_dict()[next(iter(model.encoder.state_dict()))],
                       sub_state_dict(fin["state_dict"], "model.encoder.")[next(iter(model.encoder.state_dict()))])
    assert not model.training and config.experiment == "tiny"
    seq_model, _ = load_volume_model(full_run.path, stage="sequence")
    dm = build_volume_datamodule(config, stage="finetune")
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        p = torch.sigmoid(model(batch["volume"], batch["length"]))
    assert p.shape == (1,) and 0 < float(p) < 1
    slice_model = load_slice_model(full_run.path)
    with torch.no_grad():
        assert slice_model(torch.zeros(2, 3, 32, 32)).shape == (2,)
    assert model_spec(config)["encoder"]["in_channels"] == 3
    with pytest.raises(Exception, match="not a volume stage"):
        load_volume_model(full_run.path, stage="slice")


def test_direct_stage_from_random_init(cache, tmp_path):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_raw_config(cache, tmp_path))
    assert run_cli("train", str(cfg), "--stage", "direct", "--run-id", "d") == 0
    run = open_run_dir(tmp_path / "runs" / "tiny" / "d")
    assert run.best_ckpt("direct").is_file() and run.last_ckpt("direct").is_file()
    assert not run.stage_dir("slice").exists()
    ckpt = load_checkpoint(run.best_ckpt("direct"))
    n_params = len(ckpt["optimizer_states"][0]["param_groups"][0]["params"])
    assert n_params == len(sub_state_dict(ckpt["state_dict"], "model."))  # encoder trainable too


def test_resume_continues_global_step_then_later_stages(cache, tmp_path, capsys):
    raw = tiny_raw_config(cache, tmp_path)
    cfg = write_config(tmp_path / "tiny.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "res") == 0
    run = open_run_dir(tmp_path / "runs" / "tiny" / "res")
    first = load_checkpoint(run.last_ckpt("slice"))
    assert first["epoch"] == 1 and first["global_step"] == 4  # 1 epoch done; 40 samples / batch 10
    # an "interrupted" stage: continue it for one more epoch
    assert run_cli("train", "--resume", str(run.path), "--stage", "slice", "stages.slice.max_epochs=2") == 0
    second = load_checkpoint(run.last_ckpt("slice"))
    assert second["epoch"] == 2 and second["global_step"] == 2 * first["global_step"]
    # optimizer state continued (Adam step count), not restarted
    state = second["optimizer_states"][0]["state"]
    assert int(next(iter(state.values()))["step"]) == 8
    metrics = pd.read_csv(run.stage_dir("slice") / "metrics.csv")
    assert sorted(metrics["epoch"].dropna().unique().tolist()) == [0, 1]
    assert "stages.slice.max_epochs: 2" not in run.config_path.read_text()  # nested YAML
    assert load_checkpoint(run.last_ckpt("slice"))["hyper_parameters"]["optimizer"]["name"] == "adam"
    # resuming `all` skips the finished slice stage and runs sequence + finetune
    capsys.readouterr()
    assert run_cli("train", "--resume", str(run.path)) == 0
    out = capsys.readouterr().out
    assert run.is_done("sequence") and run.is_done("finetune")
    assert json.loads(run.result_path("slice").read_text())["global_step"] == 8
    assert f"run directory {run.path}" in out and "finetune  best val AUC" in out


def _runs(root):
    return sorted(p for p in (root / "runs").rglob("*") if p.is_dir()) if (root / "runs").exists() else []


def test_cli_config_errors_exit_2_and_write_nothing(cache, tmp_path, capsys):
    raw = tiny_raw_config(cache, tmp_path)
    raw["data"]["cache_dir"] = str(tmp_path / "missing-cache")
    cfg = write_config(tmp_path / "bad.yaml", raw)
    assert run_cli("train", str(cfg)) == 2
    assert "is not a complete ingest cache" in capsys.readouterr().err
    raw = tiny_raw_config(cache, tmp_path)
    raw["data"]["images_dir"] = str(tmp_path / "no-images")
    raw["data"]["labels_csv"] = str(tmp_path / "labels.csv")
    assert run_cli("train", str(write_config(tmp_path / "bad2.yaml", raw))) == 2
    assert "data.images_dir not found" in capsys.readouterr().err
    good = write_config(tmp_path / "good.yaml", tiny_raw_config(cache, tmp_path))
    assert run_cli("train", str(good), "stages.slice.optimiser=adam") == 2
    err = capsys.readouterr().err
    assert err.startswith("ich3d: error: unknown config key 'stages.slice.optimiser'")
    assert "did you mean 'stages.slice.optimizer'" in err
    assert run_cli("train", str(good), "stages.slice.max_epochs=many") == 2
    assert "expects int, got 'many'" in capsys.readouterr().err
    assert run_cli("train", str(good), "model.encoder_args.widht=3") == 2
    assert "widht" in capsys.readouterr().err
    assert run_cli("train", str(good), "--stage", "sequence") == 2
    assert "starts from slice/best.ckpt" in capsys.readouterr().err
    assert run_cli("train", "--resume", str(tmp_path / "nope")) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert _runs(tmp_path) == []  # nothing half-written


def test_gather_unique_dedupes_and_sorts():
    class _Fake:
        trainer = None
        device = torch.device("cpu")

    ids = torch.tensor([[5, 0], [3, 1], [5, 0], [3, 0]])
    probs = torch.tensor([0.9, 0.2, 0.9, 0.4])
    labels = torch.tensor([1, 0, 1, 0])
    out_ids, p, y = gather_unique(_Fake(), ids, probs, labels)
    assert out_ids.tolist() == [[3, 0], [3, 1], [5, 0]]
    assert p.tolist() == pytest.approx([0.4, 0.2, 0.9]) and y.tolist() == [0, 0, 1]


def _ddp_validate(ckpt_path, config, devices):
    import pytorch_lightning as pl

    from ich3d.training.runner import quiet_lightning

    quiet_lightning()
    module = VolumeModule.load_from_checkpoint(ckpt_path, weights_only=True)
    dm = build_volume_datamodule(config, stage="sequence")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    return metrics


def test_ddp_two_processes_give_the_single_process_volume_auc(full_run):
    config = full_run.load_config()
    dm = build_volume_datamodule(config)
    dm.setup("validate")
    n_val = len(dm.split_table("val"))
    assert n_val % 2 == 1, "the test needs an odd number of val volumes so the sampler pads"
    ckpt = str(full_run.best_ckpt("sequence"))
    single = _ddp_validate(ckpt, config, 1)
    double = _ddp_validate(ckpt, config, 2)
    assert single["val/n"] == n_val and double["val/n"] == n_val
    assert double["val/auc"] == single["val/auc"]
    assert 0.0 <= single["val/auc"] <= 1.0


def test_stage_by_stage_with_run_id_and_no_overwrite(cache, tmp_path, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", tiny_raw_config(cache, tmp_path))
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "s") == 0
    run = open_run_dir(tmp_path / "runs" / "tiny" / "s")
    slice_best = run.best_ckpt("slice").read_bytes()
    # a second slice run into the same run id refuses to overwrite
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "s") == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert run.best_ckpt("slice").read_bytes() == slice_best
    # the next stage finds slice/best.ckpt of that run by itself
    assert run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "s") == 0
    assert run.is_done("sequence") and not run.stage_dir("finetune").exists()
    seq_enc = sub_state_dict(load_checkpoint(run.best_ckpt("sequence"))["state_dict"], "model.encoder.")
    slice_enc = sub_state_dict(load_checkpoint(run.best_ckpt("slice"))["state_dict"], "model.encoder.")
    assert all(torch.equal(v, seq_enc[k]) for k, v in slice_enc.items())


def test_interrupted_stage_resumes_from_last_checkpoint(cache, tmp_path, monkeypatch):
    import signal

    import pytorch_lightning as pl

    import ich3d.training.trainer as stages

    class _Interrupt(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 2:
                raise KeyboardInterrupt

    real = stages.build_trainer

    def with_interrupt(*args, **kwargs):
        trainer = real(*args, **kwargs)
        trainer.callbacks.append(_Interrupt())
        return trainer

    raw = tiny_raw_config(cache, tmp_path)
    raw["stages"]["slice"]["max_epochs"] = 2
    cfg = write_config(tmp_path / "tiny.yaml", raw)
    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(stages, "build_trainer", with_interrupt)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown exits
            run_cli("train", str(cfg), "--stage", "slice", "--run-id", "int")
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after the interrupt
    monkeypatch.setattr(stages, "build_trainer", real)
    run = open_run_dir(tmp_path / "runs" / "tiny" / "int")
    assert not run.is_done("slice")
    assert load_checkpoint(run.last_ckpt("slice"))["global_step"] == 4  # start of epoch 1
    assert run_cli("train", "--resume", str(run.path), "--stage", "slice") == 0
    last = load_checkpoint(run.last_ckpt("slice"))
    assert (last["epoch"], last["global_step"]) == (2, 8)
    assert run.is_done("slice")
