"""``ich3d predict --explain N``: the key slices, their scores and the Grad-CAM files (tiny run, fast)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import copy_tiny_run

from ich3d.cli.main import main
from ich3d.data.cache import open_cache
from ich3d.deploy.predict import predict_package
from ich3d.errors import UserError
from ich3d.evaluation.evaluate import evaluate_run
from ich3d.evaluation.inference.passes import build_eval_datamodule
from ich3d.evaluation.prediction.explain import (
    SliceCAM,
    _volume_scores,
    brain_channel,
    choose_key_slices,
    occlusion_scores,
    safe_key,
)
from ich3d.evaluation.prediction.predict import predict_run
from ich3d.models.volume import build_slice_classifier, build_volume_model
from ich3d.runs.checkpoints import load_volume_model
from ich3d.runs.run_dir import open_run_dir

PNG = b"\x89PNG\r\n\x1a\n"


def _volume_model(per_slice: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_volume_model({"name": "patel_cnn", "in_channels": 3, "width": 2, "feature_dim": 8, "dropout": 0.0},
                              {"name": "bilstm", "hidden": 4}, per_slice=per_slice).eval()


def test_occlusion_is_the_drop_when_a_slice_is_left_out():
    model = _volume_model()
    vol = torch.rand(5, 3, 32, 32)
    drops, full = occlusion_scores(model, vol)
    with torch.no_grad():
        assert full == pytest.approx(float(torch.sigmoid(model(vol[None]))[0]), abs=1e-6)
        for t in range(5):
            rest = torch.cat([vol[:t], vol[t + 1 :]])[None]
            assert drops[t] == pytest.approx(full - float(torch.sigmoid(model(rest))[0]), abs=1e-6)
    one, p1 = occlusion_scores(model, vol[:1])
    assert one.tolist() == [pytest.approx(p1)]


def test_per_slice_head_scores_and_depth_pool_spread():
    model = _volume_model(per_slice=True)
    pooled = torch.rand(3, 3, 32, 32)
    scores, kind, prob = _volume_scores(model, pooled, n=5, pool=2, primary=None)
    with torch.no_grad():
        p = torch.sigmoid(model.slice_logits(pooled[None]))[0].double().numpy()
    assert kind == "per_slice"
    np.testing.assert_allclose(scores, [p[0], p[0], p[1], p[1], p[2]], atol=1e-9)
    assert prob == pytest.approx(float(p.max()))
    scores, kind, _ = _volume_scores(_volume_model(), pooled, n=6, pool=2, primary=None)
    assert kind == "occlusion" and scores.shape == (6,) and scores[0] == scores[1]


def test_key_slice_choice_and_names():
    assert choose_key_slices(np.array([0.1, 0.5, 0.5, 0.2]), np.array([0.9, 0.1, 0.3, 0.0]), 3) == [2, 1, 3]
    assert choose_key_slices(np.array([0.0, 0.0]), np.array([0.2, 0.2]), 5) == [0, 1]  # ties: lower index; fewer slices
    assert brain_channel(["bone", "subdural", "brain"]) == 2 and brain_channel([[35, 90], "bone"]) == 0
    assert safe_key("a1b2c3d4") == "a1b2c3d4"
    assert safe_key("../1.2.840 x") != "../1.2.840 x" and len(safe_key("../1.2.840 x")) == 16


def test_cam_is_monai_gradcam_of_the_last_conv_and_leaves_the_model_alone():
    torch.manual_seed(1)
    model = build_slice_classifier({"name": "patel_cnn", "in_channels": 3, "width": 2, "feature_dim": 8}).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam = SliceCAM(model)
    maps = cam(torch.rand(2, 3, 128, 128))
    assert cam.layer == "encoder.units.5.1"  # the ReLU of the encoder's last convolution
    assert maps.shape == (2, 128, 128) and maps.dtype == np.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert all(m.max() == pytest.approx(1.0) or m.max() == 0.0 for m in maps)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.encoder.units[5][1].inplace  # the copy's ReLUs were changed, not the model's


@pytest.fixture(scope="module")
def explained(tiny_run, tmp_path_factory):
    run = copy_tiny_run(tiny_run, tmp_path_factory.mktemp("explain"), stages=("slice", "sequence"))
    out = run.root / "out"
    assert main(["predict", str(run.run_dir), str(run.cache), "--out", str(out), "--device", "cpu",
                 "--no-progress", "--explain", "3"]) == 0
    return run, out


def test_explain_files_per_volume(explained):
    run, out = explained
    volumes = pd.read_csv(out / "volumes.csv")
    slices = pd.read_csv(out / "slices.csv").set_index(["key", "slice_index"])
    assert sorted(p.name for p in (out / "explain").iterdir()) == sorted(volumes["key"].astype(str))
    for v in volumes.itertuples():
        folder = out / "explain" / str(v.key)
        ks = pd.read_csv(folder / "key_slices.csv")
        assert list(ks["rank"]) == list(range(1, min(3, v.n_slices) + 1))
        assert set(ks["score_kind"]) == {"occlusion"}
        assert ks["slice_index"].between(0, v.n_slices - 1).all() and ks["slice_index"].is_unique
        assert (np.diff(ks["score"]) <= 1e-12).all()  # best first
        # the stage-1 probability beside is slices.csv's; the volume probability is volumes.csv's
        beside = [slices.loc[(v.key, int(i)), "probability"] for i in ks["slice_index"]]
        np.testing.assert_allclose(ks["slice_probability"], beside, atol=1e-6)
        np.testing.assert_allclose(ks["volume_probability"], v.probability, atol=1e-6)
        for i in ks["slice_index"]:
            assert (folder / f"slice_{int(i):03d}.png").read_bytes()[:8] == PNG
        assert (folder / "contact_sheet.png").read_bytes()[:8] == PNG
        assert len(list(folder.iterdir())) == len(ks) + 2


def test_explain_key_slices_are_the_top_occlusion_scores(explained):
    run, out = explained
    rd = open_run_dir(run.run_dir)
    model, _ = load_volume_model(rd, "sequence")
    config = rd.load_config()
    dm = build_eval_datamodule(config, run.cache, depth_pool=config.data.depth_pool, batch_size=1)
    batch = next(iter(dm.eval_dataloader("predict")))
    key, n = str(batch["key"][0]), int(batch["length"][0])
    drops, _ = occlusion_scores(model.eval(), batch["volume"][0, :n])
    spread = np.repeat(drops, config.data.depth_pool)
    ks = pd.read_csv(out / "explain" / key / "key_slices.csv")
    np.testing.assert_allclose(ks["score"], spread[ks["slice_index"]], atol=1e-6)
    assert ks["score"].iloc[-1] >= np.sort(spread)[::-1][len(ks) - 1] - 1e-9  # no better slice left out


def test_explain_names_no_identifier(explained):
    run, out = explained
    ids = open_cache(run.cache).volumes[["patient_id", "series_uid", "study_uid"]].astype(str).to_numpy().ravel()
    names = [str(p.relative_to(out / "explain")) for p in (out / "explain").rglob("*")]
    assert names and not any(i in name for i in ids for name in names)


def test_explain_errors(tiny_run, tmp_path, capsys):
    run = copy_tiny_run(tiny_run, tmp_path / "a", stages=("sequence",))
    with pytest.raises(UserError, match="--explain needs the stage-1 slice CNN"):
        predict_run(run.run_dir, run.cache, tmp_path / "o", explain=2, device="cpu", progress=False)
    with pytest.raises(UserError, match="--explain -1"):
        predict_run(run.run_dir, run.cache, tmp_path / "o", explain=-1, device="cpu", progress=False)
    assert main(["predict", str(run.run_dir), str(run.cache), "--out", str(tmp_path / "o"), "--explain", "2"]) == 2
    assert "ich3d: error: --explain needs the stage-1 slice CNN (slice/best.ckpt)" in capsys.readouterr().err


def test_explain_from_a_package_matches_the_run(explained, tmp_path, capsys):
    run, out = explained
    evaluate_run(run.run_dir, device="cpu", progress=False, tracking=False)
    pkg = tmp_path / "pkg"
    assert main(["export", str(run.run_dir), "--out", str(pkg)]) == 0
    pkg_out = tmp_path / "pkg_out"
    result = predict_package(pkg, run.cache, pkg_out, explain=3, device="cpu", progress=False)
    assert result["explain"]["n_volumes"] == len(list((out / "explain").iterdir()))
    for folder in (out / "explain").iterdir():
        mine = pd.read_csv(pkg_out / "explain" / folder.name / "key_slices.csv")
        theirs = pd.read_csv(folder / "key_slices.csv")
        assert list(mine["slice_index"]) == list(theirs["slice_index"])
        np.testing.assert_allclose(mine[["score", "slice_probability"]], theirs[["score", "slice_probability"]], atol=1e-6)
        assert mine[["cam_row", "cam_col"]].equals(theirs[["cam_row", "cam_col"]])
    assert main(["predict", str(pkg), str(run.cache), "--out", str(tmp_path / "o"), "--runtime", "onnx",
                 "--explain", "2"]) == 2
    assert "--explain needs the gradients of ich3d's own network: use --runtime weights" in capsys.readouterr().err
