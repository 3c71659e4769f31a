"""2.5D input (``data.context_slices``): each slice with its neighbours, per window, as channels.

Values, not shapes: the channels of slice ``i`` are exactly the windows of slices
``i - 1, i, i + 1`` (window-major; the edge slice repeated at both ends), in the
stage-1 slice items, the volume items (depth-pooled and not), padded batches and the
``augment_on: device`` path; the encoder's first convolution takes the channel count;
and a tiny 2.5D run trains its three stages (stage 2 on cached features), evaluates,
exports and predicts from the package with the run's probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _cache_helpers import write_fake_cache
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

from ich3d.config import config_from_dict
from ich3d.data.cache import open_cache
from ich3d.data.context import center_channel, neighbour_indices, stack_context
from ich3d.data.datamodule import SliceDataModule, VolumeDataModule
from ich3d.data.datasets import SliceDataset, VolumeCollate, VolumeDataset, depth_pool
from ich3d.data.windows import air_values, apply_windows
from ich3d.errors import UserError
from ich3d.runs.checkpoints import load_checkpoint
from ich3d.runs.inputs import check_inputs
from ich3d.training.specs import model_spec

WINDOWS = ["brain", "subdural", "bone"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("context")
    write_fake_cache(root / "cache", patients=6, size=32, slices=(6, 9), seed=3)
    return root / "cache"


def _expected(hu: np.ndarray, i: int, k: int) -> torch.Tensor:
    """By hand: for each window, slices i-k .. i+k clamped into the volume, window-major."""
    rows = [min(max(i + o, 0), len(hu) - 1) for o in range(-k, k + 1)]
    win = [apply_windows(hu[r].astype(np.float32), WINDOWS, channel_axis=0) for r in rows]  # each (C, H, W)
    return torch.from_numpy(np.stack([win[s][c] for c in range(len(WINDOWS)) for s in range(len(rows))]))


def test_neighbour_indices_repeat_the_edges() -> None:
    assert neighbour_indices(0, 5, 1).tolist() == [0, 0, 1]
    assert neighbour_indices(4, 5, 1).tolist() == [3, 4, 4]
    assert neighbour_indices(2, 5, 2).tolist() == [0, 1, 2, 3, 4]
    assert neighbour_indices(0, 1, 2).tolist() == [0, 0, 0, 0, 0]
    assert center_channel(0, 1) == 1 and center_channel(2, 1) == 7 and center_channel(1, 0) == 1
    with pytest.raises(UserError, match="context_slices"):
        neighbour_indices(0, 3, -1)


@pytest.mark.parametrize("k", [1, 2])
def test_slice_items_hold_the_windows_of_the_neighbours(cache, k) -> None:
    opened = open_cache(cache)
    key = str(opened.volumes["key"].iloc[0])
    hu = np.load(opened.volume_path(key))
    n = len(hu)
    table = pd.DataFrame({"key": key, "slice_index": np.arange(n), "label": 0.0})  # every slice, edges too
    ds = SliceDataset(opened, table, WINDOWS, context_slices=k)
    plain = SliceDataset(opened, table, WINDOWS)
    for i in range(n):
        image = ds[i]["image"]
        assert image.shape == (3 * (2 * k + 1), 32, 32)
        assert torch.equal(image, _expected(hu, i, k)), i
        # the centre channel of each window is the plain input
        centre = image[[center_channel(c, k) for c in range(3)]]
        assert torch.equal(centre, plain[i]["image"])
    # slice 0's "slice above" is slice 0 itself, not slice 1
    first = ds[0]["image"]
    assert torch.equal(first[0], first[k]) and not torch.equal(first[k], first[k + 1])


@pytest.mark.parametrize("pool", [1, 2])
def test_volume_items_hold_the_windows_of_the_pooled_neighbours(cache, pool) -> None:
    opened = open_cache(cache)
    table = opened.volumes[["key"]].assign(label=0.0)
    ds = VolumeDataset(opened, table, WINDOWS, depth_pool=pool, context_slices=1)
    for row in range(len(table)):
        pooled = depth_pool(np.load(opened.volume_path(table["key"].iloc[row])), pool)
        vol = ds[row]["volume"]
        assert vol.shape == (len(pooled), 9, 32, 32)
        for t in range(len(pooled)):
            assert torch.equal(vol[t], _expected(pooled, t, 1)), (row, t)


def test_padded_batches_repeat_the_true_edge_and_pad_with_air() -> None:
    torch.manual_seed(0)
    a, b = torch.rand(4, 3, 5, 5), torch.rand(2, 3, 5, 5)
    air = torch.from_numpy(air_values(WINDOWS))
    batch = torch.stack([a, torch.cat([b, air.view(1, 3, 1, 1).expand(2, 3, 5, 5)])])
    got = stack_context(batch, 1, [4, 2])
    assert got.shape == (2, 4, 9, 5, 5)
    assert torch.equal(got[0], stack_context(a, 1)) and torch.equal(got[1, :2], stack_context(b, 1))
    # the last real slice of the short volume repeats itself, not the padding
    assert torch.equal(got[1, 1, 2], b[1, 0]) and torch.equal(got[1, 1, 1], b[1, 0])
    assert torch.equal(got[1, 2:], air.repeat_interleave(3).view(1, 9, 1, 1).expand(2, 9, 5, 5))
    # the loader's collate pads the 9 channels with each window's air
    items = [
        {"volume": stack_context(v, 1), "length": torch.tensor(len(v)), "label": torch.tensor(0.0),
         "key": str(i), "index": torch.tensor(i)}
        for i, v in enumerate((a, b))
    ]
    assert torch.equal(VolumeCollate(WINDOWS, 1)(items)["volume"], got)


def _first(dm, n: int, hook: bool) -> list[dict]:
    out = []
    for i, batch in enumerate(dm.train_dataloader()):
        out.append(dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0) if hook else batch)
        if i + 1 == n:
            break
    return out


@pytest.mark.parametrize("kind", ["slice", "volume"])
def test_device_path_gives_the_loader_path_batches(cache, kind) -> None:
    """``augment_on: device`` augments the neighbours alike and stacks them after the transfer:
    the same 2.5D batches as the loader, bit for bit on the CPU, augmentation on."""
    cls, kw = (
        (SliceDataModule, {"batch_size": 8, "samples_per_epoch": 32})
        if kind == "slice"
        else (VolumeDataModule, {"batch_size": 3, "pad_batches": True, "samples_per_epoch": 9})
    )
    made = []
    for mode in ("loader", "device"):
        dm = cls(cache, split_fractions=(0.5, 0.25, 0.25), seed=4, augment_on=mode, context_slices=1, **kw)
        dm.prepare_data()
        dm.setup("fit")
        made.append(_first(dm, 3, hook=mode == "device"))
    key = "image" if kind == "slice" else "volume"
    branches = set()
    for a, b in zip(*made, strict=True):
        assert a[key].shape[-3] == 9 and torch.equal(a[key], b[key])
        assert a["key"] == b["key"]
    raw_dm = cls(cache, split_fractions=(0.5, 0.25, 0.25), seed=4, augment_on="device", context_slices=1, **kw)
    raw_dm.prepare_data()
    raw_dm.setup("fit")
    for batch in _first(raw_dm, 3, hook=False):
        branches.update(batch["augment_branch"].tolist())
        if kind == "slice":
            assert batch["hu"].shape[1] == 3  # the neighbours' HU travel, not nine windows
    assert len(branches) > 1  # more than the identity is exercised


def test_model_spec_takes_the_channel_count() -> None:
    raw = {"data": {"cache_dir": "x", "context_slices": 1}, "model": {"encoder": "patel_cnn",
           "encoder_args": {"width": 2, "feature_dim": 8}}}
    spec = model_spec(config_from_dict(raw))
    assert spec["encoder"]["in_channels"] == 9
    raw["data"]["windows"] = ["brain"]
    raw["data"]["context_slices"] = 2
    assert model_spec(config_from_dict(raw))["encoder"]["in_channels"] == 5
    raw["model"]["encoder_args"]["in_channels"] = 1
    with pytest.raises(UserError, match=r"data.context_slices give 1 x 5 = 5"):
        model_spec(config_from_dict(raw))
    with pytest.raises(UserError, match="context_slices"):
        config_from_dict({"data": {"context_slices": -1}})


def test_pinned_inputs_refuse_other_neighbours() -> None:
    now = {"windows": WINDOWS, "context_slices": 1, "depth_pool": 2}
    check_inputs(now, now, what="x")
    with pytest.raises(UserError, match=r"context_slices: trained on 0, now 1"):
        check_inputs({**now, "context_slices": 0}, now, what="x")
    old = {"windows": WINDOWS, "depth_pool": 2}  # pinned before 2.5D: one slice per input
    check_inputs(old, {**now, "context_slices": 0}, what="x")
    with pytest.raises(UserError, match=r"context_slices: trained on 0, now 1"):
        check_inputs(old, now, what="x")


def test_a_25d_run_trains_evaluates_exports_and_predicts(tmp_path, capsys) -> None:
    """Three stages (stage 2 on cached features), evaluate, export, predict PKG == predict RUN_DIR."""
    cache = make_cache(tmp_path, patients=12)
    raw = tiny_raw_config(cache, tmp_path, data={"context_slices": 1},
                          stages={"sequence": {"cached_features": True, "augment": False}})
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "all", "--run-id", "r") == 0
    run = tmp_path / "runs" / "tiny" / "r"
    assert json.loads((run / "sequence" / "features" / "features.json").read_text())["context_slices"] == 1
    for stage in ("slice", "sequence", "finetune"):
        ckpt = load_checkpoint(run / stage / "best.ckpt")
        assert ckpt["hyper_parameters"]["model"]["encoder"]["in_channels"] == 9
        assert ckpt["ich3d"]["inputs"]["context_slices"] == 1
        conv = next(v for k, v in ckpt["state_dict"].items() if k.endswith(".weight") and v.ndim == 4)
        assert conv.shape[1] == 9  # the first convolution reads nine channels
    assert run_cli("evaluate", str(run), "--device", "cpu") == 0
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert {"max", "sequence", "finetune"} <= set(metrics["per_method"])
    # the run's inputs are pinned: evaluating it as a plain 2D run is refused
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("context_slices: 1", "context_slices: 0"))
    capsys.readouterr()
    assert run_cli("evaluate", str(run), "--device", "cpu") == 2
    assert "context_slices" in capsys.readouterr().err
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("context_slices: 0", "context_slices: 1"))
    pkg = tmp_path / "pkg"
    assert run_cli("export", str(run), "--out", str(pkg)) == 0
    spec = json.loads((pkg / "configs" / "ich3d.json").read_text())
    assert spec["inputs"]["context_slices"] == 1
    meta = json.loads((pkg / "configs" / "metadata.json").read_text())
    channels = meta["network_data_format"]["inputs"]["image"]["channel_def"]
    assert len(channels) == 9 and channels["0"].endswith("slice i-1") and channels["4"].endswith("slice i")
    assert run_cli("predict", str(pkg), str(cache), "--out", str(tmp_path / "p_pkg"), "--device", "cpu") == 0
    assert run_cli("predict", str(run), str(cache), "--out", str(tmp_path / "p_run"), "--device", "cpu") == 0
    a = pd.read_csv(tmp_path / "p_pkg" / "volumes.csv").sort_values("key")
    b = pd.read_csv(tmp_path / "p_run" / "volumes.csv").sort_values("key")
    assert list(a["key"]) == list(b["key"]) and len(a) > 0
    np.testing.assert_allclose(a["probability"], b["probability"], atol=1e-5)
