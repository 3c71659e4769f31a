"""The published-system configs (configs/<author><year>_*.yaml): each loads, builds and trains.

Every config is run as a user runs it, ``ich3d train CONFIG --stage ...`` with ``key=value``
overrides that only shrink it (64 px fake cache, a few slices, one training batch, CPU, no
W&B) and point it at the test's data; the model, optimizer and stage settings stay the
config's. No ImageNet file is present (an empty torch hub folder), so each ImageNet encoder
starts from random initialisation with exactly one warning; one config also runs with a
local weights file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from _cache_helpers import write_fake_cache
from _train_helpers import run_cli

from ich3d.config import load_config
from ich3d.models.torchvision_encoders import _WARNED_RANDOM
from ich3d.runs.checkpoints import load_checkpoint, sub_state_dict
from ich3d.training.runner import check_model, model_spec

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

_SMALL_CNN = ["model.encoder=patel_cnn", "model.encoder_args={width: 2, feature_dim: 16}"]

#: config -> (stages trained here, overrides that only shrink the network for a 64 px test)
SYSTEMS: dict[str, tuple[str, list[str]]] = {
    "dawud2019_alexnet": ("slice", []),
    # the SVM systems: the slice stage with a width-2 CNN (AlexNet's one-step training is
    # dawud2019_alexnet's); their SVMs are scored by the evaluation test below
    "dawud2019_alexnet_svm": ("slice", _SMALL_CNN),
    "ayesha2025_alexnet_ae_svm": ("slice", _SMALL_CNN),
    "dawud2019_cnn": ("slice", ["model.encoder_args.input_size=64"]),
    # VGG-16's fc6/fc7 (120 M parameters) take seconds per step on one CPU thread: the
    # pooled conv features keep every conv layer of the config's network
    "soni2025_vgg16": ("slice", ["model.encoder_args.layer=pool"]),
    "kumar2022_densenet201": ("slice", []),
    # the three stages of the recurrent systems with a width-2 CNN in place of AlexNet (whose
    # one-step slice training dawud2019_alexnet covers); the real encoder: the slow test below
    "ayesha2025_cnn_lstm": ("all", _SMALL_CNN),
    "ayesha2025_cnn_gru": ("all", _SMALL_CNN),
    # the RSNA 2019 winners: their own encoders (DenseNet-121 on nine 2.5D channels; ResNeXt-101's
    # lighter kin ResNeXt-50, the compare version's, whose one CPU step takes ~1 s, not ~10 s),
    # one split (their folds: test_winners_train_a_fold_and_evaluate below)
    "rsna2019_1st": ("all", ["data.folds=1"]),
    "rsna2019_2nd": ("all", ["data.folds=1", "model.encoder=resnext50_32x4d"]),
}

#: (optimizer class, lr) of the slice stage each config declares (docs/method.md section 2)
SLICE_OPTIMIZER = {
    "dawud2019_alexnet": ("SGD", 1e-2, 200),
    "dawud2019_alexnet_svm": ("SGD", 1e-2, 200),
    "ayesha2025_alexnet_ae_svm": ("Adam", 1e-4, 25),
    "dawud2019_cnn": ("SGD", 1e-3, 60),
    "soni2025_vgg16": ("Adam", 1e-5, 32),
    "kumar2022_densenet201": ("Adam", 1e-4, 32),
    "ayesha2025_cnn_lstm": ("Adam", 1e-4, 25),
    "ayesha2025_cnn_gru": ("Adam", 1e-4, 25),
    "rsna2019_1st": ("Adam", 1e-4, 256),
    "rsna2019_2nd": ("Adam", 1e-4, 32),
}

#: what each RSNA 2019 winner's config must say (docs/method.md section 4, the write-ups)
WINNERS = {
    "rsna2019_1st": {"encoder": "densenet121", "head": "bigru", "context_slices": 1, "in_channels": 9, "tta": ()},
    "rsna2019_2nd": {"encoder": "resnext101_32x8d", "head": "lstm", "context_slices": 0, "in_channels": 3,
                     "tta": ("flip_lr",)},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("systems")
    write_fake_cache(root / "cache", patients=8, size=64, slices=(6, 8), seed=0)
    return root / "cache"


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """No ImageNet file anywhere, and any download attempt fails the test."""

    def _refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ich3d tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _refuse)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    _WARNED_RANDOM.clear()
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _tiny(cache: Path, root: Path) -> list[str]:
    """Overrides pointing a config at the fake cache and cutting each stage to one batch."""
    out = [
        f"data.cache_dir={cache}",
        "data.images_dir=null",
        "data.labels_csv=null",
        "data.split_fractions=[0.5, 0.25, 0.25]",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        "data.ingest_workers=1",
        "model.slice_chunk=null",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "tracking.mode=disabled",
        f"run.root={root / 'runs'}",
    ]
    for stage, batch in (("slice", 4), ("sequence", 1), ("finetune", 1)):
        out += [
            f"stages.{stage}.batch_size={batch}",
            f"stages.{stage}.samples_per_epoch={batch}",
            f"stages.{stage}.max_epochs=1",
            f"stages.{stage}.early_stopping_patience=null",
        ]
    return out


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_config_loads_with_the_papers_settings_and_builds(name: str, empty_hub) -> None:  # noqa: ANN001
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.experiment == name
    assert config.data.windows == ("brain", "subdural", "bone")
    optimizer, lr, batch = SLICE_OPTIMIZER[name]
    s = config.stages.get("slice")
    assert (s.optimizer, s.lr, s.batch_size) == (optimizer.lower(), lr, batch)
    if name == "dawud2019_cnn":
        assert s.max_epochs == 100
        assert config.model.encoder_args["maps"] == [10, 20, 30, 40]
    if name.endswith("svm"):
        assert config.model.encoder_args["layer"] == "fc6"  # AlexNet FC6, 4096 (docs/method.md section 2)
        assert config.evaluation.methods == (("slice_svm",) if name.startswith("dawud") else ("slice_svm", "ae_svm"))
    elif name.startswith("ayesha"):
        assert config.model.head == name.rsplit("_", 1)[1]
    if name in WINNERS:
        want = WINNERS[name]
        assert (config.model.encoder, config.model.head, config.data.context_slices) == (
            want["encoder"], want["head"], want["context_slices"])
        assert model_spec(config)["encoder"]["in_channels"] == want["in_channels"]
        assert config.evaluation.tta == want["tta"]
        assert config.data.folds == 5 and config.model.per_slice and config.data.depth_pool == 1
        assert config.data.targets == "all"
        compare = load_config(CONFIGS / "compare" / f"{name}.yaml")  # the CPU version: one split
        assert compare.data.folds == 1 and compare.data.context_slices == want["context_slices"]
    text = (CONFIGS / f"{name}.yaml").read_text()
    assert "Stages:" in text
    # the values the paper does not give are marked, in the file or in the base it overrides
    bases = yaml.safe_load(text).get("base") or []
    documented = text + "".join((CONFIGS / b).read_text() for b in ([bases] if isinstance(bases, str) else bases))
    assert "# ours" in documented
    check_model(config)  # the full-size network builds (no weights file: random init)


def _trained_steps(run: Path, stage: str) -> tuple[int, pd.DataFrame]:
    ckpt = load_checkpoint(run / stage / "last.ckpt")
    return int(ckpt["global_step"]), pd.read_csv(run / stage / "metrics.csv")


def _cases() -> list:
    # kumar2022_densenet201 trains its step with a local ImageNet file: the test after this
    cases: list = [
        (name, stage, shrink)
        for name, (stage, shrink) in sorted(SYSTEMS.items())
        if name != "kumar2022_densenet201"
    ]
    for name in ("ayesha2025_cnn_lstm", "ayesha2025_cnn_gru"):  # with the config's AlexNet
        cases.append(pytest.param(name, "all", [], marks=pytest.mark.slow, id=f"{name}-alexnet"))
    return cases


@pytest.mark.parametrize(("name", "stage", "shrink"), _cases())
def test_config_trains_one_step(
    name: str, stage: str, shrink: list[str], cache, tmp_path, empty_hub, caplog  # noqa: ANN001
) -> None:
    overrides = _tiny(cache, tmp_path) + shrink
    with caplog.at_level(logging.WARNING):
        code = run_cli("train", str(CONFIGS / f"{name}.yaml"), "--stage", stage, "--run-id", "t", *overrides)
    assert code == 0
    run = tmp_path / "runs" / name / "t"
    stages = ["slice", "sequence", "finetune"] if stage == "all" else [stage]
    for s in stages:
        steps, metrics = _trained_steps(run, s)
        assert steps == 1, s
        assert np.isfinite(metrics["train/loss_epoch"].dropna()).all()
        assert (run / s / "best.ckpt").is_file()
    ckpt = load_checkpoint(run / "slice" / "best.ckpt")
    opt = ckpt["optimizer_states"][0]["param_groups"][0]
    assert opt["lr"] == pytest.approx(SLICE_OPTIMIZER[name][1])
    spec = ckpt["hyper_parameters"]["model"]["encoder"]
    assert spec == model_spec(load_config(CONFIGS / f"{name}.yaml", shrink))["encoder"]
    random_init = [r for r in caplog.records if "random initialisation" in r.getMessage()]
    if spec.get("pretrained") == "auto":
        assert len(random_init) == 1, [r.getMessage() for r in random_init]
        enc = sub_state_dict(ckpt["state_dict"], "model.encoder.")
        assert not bool(enc["input_normalized"])  # no ImageNet weights: no ImageNet scaling
    else:
        assert not random_init


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory):
    """A fake cache whose test quarter holds both classes twice (DeLong needs 2 + 2)."""
    root = tmp_path_factory.mktemp("systems_eval")
    write_fake_cache(root / "cache", patients=16, size=64, slices=(6, 8), seed=1)
    return root / "cache"


@pytest.mark.parametrize("name", ["dawud2019_alexnet_svm", "ayesha2025_alexnet_ae_svm"])
def test_svm_systems_train_and_evaluate(name: str, eval_cache, tmp_path, empty_hub) -> None:  # noqa: ANN001
    """``--stage slice`` then ``ich3d evaluate``: the config's SVM methods are scored, slice level too."""
    import json

    overrides = _tiny(eval_cache, tmp_path) + _SMALL_CNN
    overrides += ["evaluation.ae_epochs=3", "evaluation.ae_hidden=8", "evaluation.ae_code_dim=4"]
    assert run_cli("train", str(CONFIGS / f"{name}.yaml"), "--stage", "slice", "--run-id", "e", *overrides) == 0
    run = tmp_path / "runs" / name / "e"
    assert run_cli("evaluate", str(run), "--device", "cpu") == 0
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    wanted = ["slice_svm"] if name.startswith("dawud") else ["slice_svm", "ae_svm"]
    assert metrics["methods"] == ["max", "p95", "svm", *wanted]
    assert list(metrics["slice_level_systems"]) == ["slice", *wanted]
    for m in wanted:
        row = metrics["slice_level_systems"][m]
        assert 0.0 <= row["auc"] <= 1.0 and row["n_pos"] > 0 and row["n_neg"] > 0
        assert metrics["slice_classifiers"][m]["n_features"] == (16 if m == "slice_svm" else 4)


def test_local_imagenet_file_is_used(cache, tmp_path, empty_hub) -> None:  # noqa: ANN001
    """The hub cache file (where docs/published-systems.md says to put it) initialises the network."""
    torch.manual_seed(0)
    ref = torchvision.models.densenet201(weights=None)
    path = empty_hub / "checkpoints" / "densenet201-c1103571.pth"
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    overrides = _tiny(cache, tmp_path) + ["stages.slice.lr=1e-12"]  # one step that barely moves
    name = "kumar2022_densenet201"
    assert run_cli("train", str(CONFIGS / f"{name}.yaml"), "--stage", "slice", "--run-id", "w", *overrides) == 0
    ckpt = load_checkpoint(tmp_path / "runs" / name / "w" / "slice" / "last.ckpt")
    assert int(ckpt["global_step"]) == 1
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-12)
    enc = sub_state_dict(ckpt["state_dict"], "model.encoder.")
    assert bool(enc["input_normalized"])
    # BN statistics move in a train step; a conv kernel moves by ~lr only
    for key in ("features.conv0.weight", "features.denseblock4.denselayer32.conv2.weight"):
        torch.testing.assert_close(enc[key], ref.state_dict()[key], atol=1e-6, rtol=0)
    assert not torch.equal(enc["features.norm0.running_mean"], ref.features.norm0.running_mean)


@pytest.mark.slow  # ~70 s on one CPU thread; 2.5D train + evaluate in seconds: tests/test_context_slices.py
def test_winners_train_a_fold_and_evaluate(eval_cache, tmp_path, empty_hub) -> None:  # noqa: ANN001
    """The 1st-place config as configured (folds, 2.5D, BiGRU per slice): ``--fold 0`` of two
    trains its stages, ``ich3d evaluate`` scores the fold's sequence model (the system)."""
    import json

    name = "rsna2019_1st"
    overrides = _tiny(eval_cache, tmp_path) + ["data.folds=2"]
    assert run_cli("train", str(CONFIGS / f"{name}.yaml"), "--stage", "all", "--fold", "0", "--run-id", "f",
                   *overrides) == 0
    run = tmp_path / "runs" / name / "f" / "fold0"
    ckpt = load_checkpoint(run / "sequence" / "best.ckpt")
    assert ckpt["hyper_parameters"]["model"]["encoder"]["in_channels"] == 9
    assert ckpt["hyper_parameters"]["model"]["per_slice"] is True
    assert run_cli("evaluate", str(run), "--device", "cpu") == 0
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert {"max", "p95", "svm", "sequence", "finetune"} <= set(metrics["per_method"])
