"""Windows, the cranial-cavity rule, augmentation and the slice / volume DataModules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cache_helpers import head_volume, write_fake_cache

from ich3d.data.augment import BRANCHES, build_augment_2d, build_augment_3d, chosen_branch
from ich3d.data.cavity import STATS_CSV, cavity_fraction
from ich3d.data.datamodule import SliceDataModule, VolumeDataModule
from ich3d.data.datasets import BalancedSampler, depth_pool, fit_in_plane
from ich3d.data.windows import WINDOWS, air_values, apply_windows, resolve_windows
from ich3d.errors import UserError

# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize("to", [np.asarray, torch.as_tensor])
def test_windows_exact_values(to) -> None:
    hu = to(np.array([-1024.0, 0.0, 20.0, 40.0, 80.0, 180.0, 600.0, 2000.0], dtype=np.float32))
    out = apply_windows(hu, ["brain", "subdural", "bone", "bone_wide", (50, 100)])
    out = np.asarray(out)
    assert out.dtype == np.float32 and out.shape == (5, 8)
    np.testing.assert_allclose(out[0], [0, 0, 0.25, 0.5, 1, 1, 1, 1], atol=1e-7)  # 40/80
    np.testing.assert_allclose(out[1], [0, 0.1, 0.2, 0.3, 0.5, 1, 1, 1], atol=1e-6)  # 80/200
    np.testing.assert_allclose(out[2, [1, 3, 5]], [150 / 380, 0.5, 330 / 380], atol=1e-6)  # 40/380
    np.testing.assert_allclose(out[3, [0, 6, 7]], [0, 0.5, 1], atol=1e-6)  # 600/2800
    np.testing.assert_allclose(out[4, [1, 3, 4]], [0, 0.4, 0.8], atol=1e-6)  # custom 50/100


def test_windows_channel_axis_air_and_errors() -> None:
    vol = np.zeros((4, 3, 5), dtype=np.int16)
    assert apply_windows(vol, ["brain", "bone"], channel_axis=1).shape == (4, 2, 3, 5)
    np.testing.assert_array_equal(air_values(list(WINDOWS)), np.zeros(4, dtype=np.float32))
    with pytest.raises(UserError, match="unknown window 'lung'.*bone, bone_wide, brain, subdural"):
        apply_windows(vol, ["lung"])
    with pytest.raises(UserError, match="width"):
        apply_windows(vol, [(40, 0)])
    with pytest.raises(UserError, match="pair"):
        apply_windows(vol, [(1, 2, 3)])


# ----------------------------------------------------------------------------- cavity rule


def test_cavity_rule_on_made_up_volume() -> None:
    vol, expected = head_volume(8, 32, np.random.default_rng(0))
    frac = cavity_fraction(vol)
    # neck (soft tissue, no bone), skull caps (bone, no brain): 0; head slices: brain disc
    assert frac[0] == 0 and frac[1] == 0 and frac[-1] == 0
    brain_px = int((np.hypot(*(np.mgrid[:32, :32] - 15.5)) <= 0.34 * 32).sum())
    np.testing.assert_allclose(
        frac[2:-1], brain_px / 32**2
    )  # scalp ring outside the bone not counted
    assert np.array_equal(frac >= 0.02, expected)
    # soft tissue touching the image border on one side only is not enclosed
    s = np.full((1, 20, 20), -1024, np.int16)
    s[0, :, :10] = 30
    s[0, :, 10] = 1000
    assert cavity_fraction(s)[0] == 0


def test_cavity_rule_on_phantom() -> None:
    phantom = pytest.importorskip("ich3d.synth.phantom")
    for seed in range(3):
        rng = np.random.default_rng(seed)
        g = phantom.sample_geometry(rng, 128, 20)
        ph = phantom.render(g, phantom.sample_head(rng, g), [], seed)
        hu = np.clip(np.rint(ph.hu), -1024, 3071).astype(np.int16)
        pooled = hu.reshape(20, 64, 2, 64, 2).max(axis=(2, 4))
        cav = cavity_fraction(pooled) >= 0.02
        assert not cav[0] and not cav[-1]  # skull base / cap edge slices
        assert cav[5:15].all()  # the brain
        idx = np.flatnonzero(cav)
        assert idx[-1] - idx[0] + 1 == len(idx)  # one contiguous range


# ----------------------------------------------------------------------------- helpers


def test_depth_pool_and_fit_in_plane_exact() -> None:
    sign = np.array([1, -1, 1, -1, 1], dtype=np.int16).reshape(5, 1, 1)
    v = np.arange(5 * 2 * 2, dtype=np.int16).reshape(5, 2, 2) * sign
    p = depth_pool(v, 2)
    assert p.shape == (3, 2, 2) and p.dtype == np.int16
    np.testing.assert_array_equal(p[0], np.maximum(v[0], v[1]))
    np.testing.assert_array_equal(p[1], np.maximum(v[2], v[3]))
    np.testing.assert_array_equal(p[2], v[4])  # odd count: the last slice alone
    assert depth_pool(v, 1) is v
    a = np.arange(16, dtype=np.int16).reshape(1, 4, 4)
    np.testing.assert_array_equal(fit_in_plane(a, (2, 2))[0], [[5, 6], [9, 10]])
    padded = fit_in_plane(a, (6, 6))
    np.testing.assert_array_equal(padded[0, 1:5, 1:5], a[0])
    assert (padded[0, 0] == -1024).all() and (padded[0, :, 5] == -1024).all()


def test_augment_branches_equal_probability_2d_and_3d() -> None:
    for build in (build_augment_2d, build_augment_3d):
        t = build()
        seeds = np.random.default_rng(1).integers(0, 2**32, size=800, dtype=np.uint64)
        counts = np.bincount([chosen_branch(t, int(s)) for s in seeds], minlength=4) / len(seeds)
        assert np.all(np.abs(counts - 0.25) < 0.05), (build.__name__, counts)
    # 3D rotation: axis chosen uniformly among the three
    rot = build_augment_3d().transforms[1]
    axes = np.bincount([chosen_branch(rot, s) for s in range(900)], minlength=3) / 900
    assert np.all(np.abs(axes - 1 / 3) < 0.05), axes


# ----------------------------------------------------------------------------- slice module


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_cache(tmp_path_factory.mktemp("cache"), patients=12, size=32, slices=(6, 10))


def _slice_dm(fake, **kw) -> SliceDataModule:
    kw.setdefault("batch_size", 8)
    dm = SliceDataModule(fake.root, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_prepare_data_without_cache(tmp_path) -> None:
    with pytest.raises(UserError, match="not a complete ich3d cache"):
        SliceDataModule(tmp_path / "nothing").prepare_data()
    fc = write_fake_cache(tmp_path / "half", patients=4, complete=False)
    with pytest.raises(UserError, match="ich3d ingest"):
        VolumeDataModule(fc.root).prepare_data()


def test_bad_arguments() -> None:
    with pytest.raises(UserError, match="label"):
        SliceDataModule("x", label="stroke")
    with pytest.raises(UserError, match="pad_batches"):
        VolumeDataModule("x", batch_size=2)
    with pytest.raises(UserError, match="sum to"):
        VolumeDataModule("x", split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(UserError, match="unknown window"):
        SliceDataModule("x", windows=["brain", "lungs"])


def test_slice_batches_shapes_ranges_and_cavity_only(fake) -> None:
    dm = _slice_dm(fake)
    assert (fake.root / STATS_CSV).is_file() and (fake.root / "splits.json").is_file()
    assert len(resolve_windows(dm.windows)) == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert float(batch["image"].max()) == 1.0  # bone saturates every window
    assert batch["label"].dtype == torch.float32 and batch["slice_index"].dtype == torch.long
    assert isinstance(batch["key"], list) and all(isinstance(k, str) for k in batch["key"])
    # only cranial-cavity slices, in every split
    for split in ("train", "val", "test", "predict"):
        t = dm.slice_table(split)
        assert all(fake.cavity[k][i] for k, i in zip(t["key"], t["slice_index"], strict=True))
    n_cavity = sum(int(c.sum()) for c in fake.cavity.values())
    assert len(dm.slice_table("predict")) == n_cavity
    # val: every cavity slice of the split's volumes once, with its own label, fixed order
    val = dm.slice_table("val")
    rows = [
        (k, int(i), float(lab))
        for b in dm.val_dataloader()
        for k, i, lab in zip(b["key"], b["slice_index"], b["label"], strict=True)
    ]
    assert rows == [
        (k, int(i), float(lab))
        for k, i, lab in zip(val["key"], val["slice_index"], val["label"], strict=True)
    ]
    sl = fake.slices.set_index(["key", "slice_index"])["any"]
    assert all(sl[(k, i)] == lab for k, i, lab in rows)


def test_slice_balance_and_negatives_from_negative_volumes(fake) -> None:
    dm = _slice_dm(fake)
    train = dm.slice_table("train")
    n_pos = int((train["label"] == 1).sum())
    vol_label = fake.volumes.set_index("key")["any"]
    labels, keys = [], []
    dl = dm.train_dataloader()
    for b in dl:
        labels += b["label"].tolist()
        keys += b["key"]
    assert len(labels) == 2 * n_pos  # default samples_per_epoch
    assert sum(labels) == n_pos  # exactly half positive
    train_keys = set(dm.split_table("train")["key"])
    for k, lab in zip(keys, labels, strict=True):
        assert k in train_keys
        if lab == 0:
            assert vol_label[k] == 0, "negative slice drawn from a positive volume"
    # every positive training slice is seen once per epoch at the default size
    sampler = dl.sampler
    pos_rows = [r for r, _ in sampler.draw(0) if train["label"][r] == 1]
    assert sorted(pos_rows) == sorted(np.flatnonzero(train["label"] == 1))


def test_slice_augmentation_rule_on_dataset_items(fake) -> None:
    dm = _slice_dm(fake, samples_per_epoch=800)
    dl = dm.train_dataloader()
    ds, sampler = dl.dataset, dl.sampler
    items = sampler.draw(0)
    branches = np.array([chosen_branch(ds.transform, s) for _, s in items])
    counts = np.bincount(branches, minlength=4) / len(items)
    assert np.all(np.abs(counts - 0.25) < 0.05), dict(zip(BRANCHES, counts, strict=True))
    # the branch picked is the one applied: check on a few items of each branch
    for b in range(4):
        for row, seed in [it for it, br in zip(items, branches, strict=True) if br == b][:5]:
            aug, orig = ds[(row, seed)]["image"], ds[row]["image"]
            if b == 0:
                assert torch.equal(aug, orig)
            elif b == 2:
                assert torch.equal(aug, torch.flip(orig, dims=[-1]))
            else:
                assert not torch.equal(aug, orig) and not torch.equal(
                    aug, torch.flip(orig, dims=[-1])
                )
                assert 0.0 <= float(aug.min()) and float(aug.max()) <= 1.0
    # rotation/shift fill with air: corners of the padded area read 0 in every window
    shifted = [it for it, br in zip(items, branches, strict=True) if br == 3]
    img = ds[shifted[0]]["image"]
    assert float(img.min()) == 0.0


def _batches(dm, n=3):
    out = []
    for i, b in enumerate(dm.train_dataloader()):
        out.append(b)
        if i + 1 == n:
            break
    return out


def test_slice_reproducible_and_epoch_fresh(fake) -> None:
    a = _batches(_slice_dm(fake, seed=4))
    b = _batches(_slice_dm(fake, seed=4, num_workers=2, persistent_workers=True))
    c = _batches(_slice_dm(fake, seed=5))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"], y["image"]) and x["key"] == y["key"]
    assert not all(torch.equal(x["image"], z["image"]) for x, z in zip(a, c, strict=True))
    sampler = _slice_dm(fake, seed=4).train_dataloader().sampler
    sampler.set_epoch(0)
    e0 = list(sampler)
    sampler.set_epoch(1)
    e1 = list(sampler)
    assert e0 != e1 and sorted(e0) != sorted(e1)
    assert list(sampler) != e1  # no set_epoch: the next iteration advances the epoch


def test_balanced_sampler_rank_shards(monkeypatch) -> None:
    s = BalancedSampler([0, 1, 2], [3, 4, 5, 6, 7], num_samples=9, seed=0)
    full = s.draw(0)
    shards = []
    for r in range(2):
        monkeypatch.setattr(BalancedSampler, "_world", staticmethod(lambda r=r: (r, 2)))
        s.set_epoch(0)
        assert len(s) == 5
        shards.append(list(s))
    padded = full + full[:1]
    assert shards[0] == padded[0::2] and shards[1] == padded[1::2]


def test_lightning_keeps_sampler_and_sets_epoch(fake) -> None:
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)
            self.seen: list[list[str]] = []

        def training_step(self, batch, _):
            self.seen.append(list(batch["key"]))
            x = batch["image"].mean(dim=(2, 3))
            return torch.nn.functional.binary_cross_entropy_with_logits(
                self.lin(x)[:, 0], batch["label"]
            )

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = SliceDataModule(fake.root, batch_size=4, samples_per_epoch=8)
    model = Tiny()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    assert isinstance(trainer.train_dataloader.sampler, BalancedSampler)
    assert trainer.train_dataloader.sampler.epoch == 1
    assert len(model.seen) == 4 and model.seen[:2] != model.seen[2:]


# ----------------------------------------------------------------------------- volume module


def _vol_dm(fake, **kw) -> VolumeDataModule:
    dm = VolumeDataModule(fake.root, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_volume_depth_pool_values_exact(fake) -> None:
    dm = _vol_dm(fake, windows=["bone_wide"])
    b = next(iter(dm.eval_dataloader("val")))
    key = b["key"][0]
    hu = np.load(fake.root / "volumes" / f"{key}.npy")
    expect = apply_windows(depth_pool(hu, 2), ["bone_wide"], channel_axis=1)
    assert b["volume"].shape == (1, (len(hu) + 1) // 2, 1, 32, 32)
    assert int(b["length"][0]) == (len(hu) + 1) // 2
    np.testing.assert_array_equal(b["volume"][0].numpy(), expect)
    dm1 = _vol_dm(fake, windows=["bone_wide"], depth_pool=1)
    b1 = next(iter(dm1.eval_dataloader("val")))
    np.testing.assert_array_equal(
        b1["volume"][0].numpy(), apply_windows(hu, ["bone_wide"], channel_axis=1)
    )


def test_volume_padded_batches_and_cover_every_volume_once(fake) -> None:
    dm = _vol_dm(fake, batch_size=3, pad_batches=True, windows=["brain", (-500, 1200)])
    air = air_values(["brain", (-500, 1200)])
    assert air[1] > 0  # a window whose minimum lies below air: padding must not be 0
    for split in ("val", "test", "predict"):
        table = dm.split_table(split)
        seen_keys, seen_idx = [], []
        for b in dm.eval_dataloader(split):
            v, lengths = b["volume"], b["length"]
            assert v.shape[1] == int(lengths.max()) and v.dtype == torch.float32
            for j, n in enumerate(lengths.tolist()):
                assert (v[j, n:, 0] == air[0]).all() and torch.allclose(
                    v[j, n:, 1], torch.tensor(air[1])
                )
                assert int(lengths[j]) == int(table["length"][int(b["index"][j])])
            seen_keys += b["key"]
            seen_idx += b["index"].tolist()
        assert seen_keys == list(table["key"]) and seen_idx == list(range(len(table)))
    assert len(dm.split_table("predict")) == len(fake.volumes)
    assert list(dm.split_table("val")["label"]) == list(
        fake.volumes.set_index("key").loc[dm.split_table("val")["key"], "any"]
    )


def test_volume_train_balanced_and_augmented(fake) -> None:
    dm = _vol_dm(fake, samples_per_epoch=10, seed=2)
    labels, keys = [], []
    for b in dm.train_dataloader():
        assert b["volume"].shape[0] == 1 and b["volume"].shape[2:] == (3, 32, 32)
        labels += b["label"].tolist()
        keys += b["key"]
    assert len(labels) == 10 and sum(labels) == 5
    assert set(keys) <= set(dm.split_table("train")["key"])
    ds, sampler = dm.train_dataloader().dataset, dm.train_dataloader().sampler
    for row, seed in sampler.draw(0):
        if chosen_branch(ds.transform, seed) == 2:  # mirror
            assert torch.equal(ds[(row, seed)]["volume"], torch.flip(ds[row]["volume"], dims=[-1]))
            break
    else:
        pytest.fail("no mirrored volume in the epoch")


def test_volume_loader_keys_and_unlabeled_cache(tmp_path, fake) -> None:
    dm = _vol_dm(fake)
    keys = list(fake.volumes["key"][::-1][:3])
    got = [b["key"][0] for b in dm.volume_loader(keys)]
    assert got == keys
    with pytest.raises(UserError, match="not in the cache"):
        dm.volume_loader(["nope"])
    un = write_fake_cache(tmp_path / "unlabeled", patients=3, labeled=False)
    dmu = VolumeDataModule(un.root)
    dmu.prepare_data()
    assert not (un.root / "splits.json").exists()
    with pytest.raises(UserError, match="without labels"):
        dmu.setup("fit")
    dmu.setup("predict")
    labels = [float(b["label"][0]) for b in dmu.predict_dataloader()]
    assert labels == [-1.0] * len(un.volumes)


def test_mixed_sizes_are_cropped_or_padded(tmp_path) -> None:
    fc = write_fake_cache(tmp_path / "mixed", patients=6, size=32, sizes={0: 40})
    dm = _vol_dm(fc)
    assert dm.size == (32, 32)
    for b in dm.predict_dataloader():
        assert b["volume"].shape[-2:] == (32, 32)


def test_splits_json_is_written_once(fake) -> None:
    before = (fake.root / "splits.json").read_text()
    _slice_dm(fake)
    assert (fake.root / "splits.json").read_text() == before
    with pytest.raises(UserError, match="seed"):
        SliceDataModule(fake.root, split_seed=123).prepare_data()
    assert json.loads(before)["seed"] == 0


# ----------------------------------------------------------------------------- with the real ingest


def test_prepare_data_runs_ingest_on_synthetic_dicom(tmp_path) -> None:
    synth = pytest.importorskip("ich3d.synth")
    raw = tmp_path / "raw"
    synth.generate(raw, patients=6, size=64, slices=(8, 12), seed=2, progress=False)
    kw = dict(
        images_dir=raw / "stage_2_train",
        labels_csv=raw / "stage_2_train.csv",
        split_fractions=(0.5, 0.25, 0.25),
        batch_size=4,
    )
    cache = tmp_path / "cache"
    dm = SliceDataModule(cache, **kw)
    dm.prepare_data()
    for name in ("ingest.json", "splits.json", STATS_CSV):
        assert (cache / name).is_file(), name
    stamp = {n: (cache / n).stat().st_mtime_ns for n in ("splits.json", STATS_CSV)}
    dm.prepare_data()  # idempotent: nothing rewritten
    assert stamp == {n: (cache / n).stat().st_mtime_ns for n in ("splits.json", STATS_CSV)}
    dm.setup("fit")
    # the rule keeps every labelled bleed slice of the phantom and drops the skull caps
    predict = dm.slice_table("predict")
    slices = dm.cache.slices
    positives = slices[slices["any"] == 1]
    kept = set(zip(predict["key"], predict["slice_index"], strict=True))
    assert len(positives) > 0 and all(
        (k, i) in kept for k, i in zip(positives["key"], positives["slice_index"], strict=True)
    )
    # skull caps: most series lose their first or last slice (a few series start or end in
    # the brain, e.g. with gantry tilt or a defect slice dropped by the ingest)
    ends = slices.groupby("key")["slice_index"].agg(["min", "max"])
    trimmed = [(k, r["min"]) not in kept or (k, r["max"]) not in kept for k, r in ends.iterrows()]
    assert sum(trimmed) >= len(trimmed) / 2
    b = next(iter(dm.train_dataloader()))
    assert (
        b["image"].shape == (4, 3, 32, 32)
        and 0 <= float(b["image"].min()) <= float(b["image"].max()) <= 1
    )
    with pytest.raises(UserError):
        SliceDataModule(
            cache, **{**kw, "min_slices": 5}
        ).prepare_data()  # the ingest refuses to mix


# ----------------------------------------------------------------------------- typed seams


def test_datamodules_from_a_config_read_its_sections(fake, tmp_path) -> None:
    """The data layer takes plain arguments; training translates a config into them."""
    from ich3d.config import config_from_dict
    from ich3d.training.data import build_slice_datamodule, build_volume_datamodule

    raw = {
        "seed": 11,
        "data": {
            "cache_dir": str(fake.root), "images_dir": str(tmp_path / "dicom"),
            "windows": ["brain", "bone"], "split_seed": 7, "depth_pool": 3, "label": "subdural",
            "num_workers": 0,
        },
        "stages": {"slice": {"batch_size": 3, "samples_per_epoch": 40, "augment": False},
                   "finetune": {"batch_size": 3, "samples_per_epoch": 40, "augment": False}},
    }
    (tmp_path / "dicom").mkdir()
    config = config_from_dict(raw)
    dm = build_slice_datamodule(config)
    assert type(dm) is SliceDataModule
    assert (dm.cache_dir, dm.images_dir) == (fake.root, tmp_path / "dicom")
    assert (dm.windows, dm.split_seed, dm.label) == (["brain", "bone"], 7, "subdural")
    assert (dm.batch_size, dm.samples_per_epoch, dm.augment, dm.seed) == (3, 40, False, 11)
    # another cache is never ingested from the config's images; overrides win
    vm = build_volume_datamodule(config, tmp_path / "other", augment=True)
    assert type(vm) is VolumeDataModule
    assert (vm.cache_dir, vm.images_dir, vm.labels_csv) == (tmp_path / "other", None, None)
    assert (vm.depth_pool, vm.pad_batches, vm.augment) == (3, True, True)  # batch 3 pads
    one = build_volume_datamodule(config, stage="sequence", depth_pool=1)
    assert (one.depth_pool, one.pad_batches, one.batch_size) == (1, False, 1)
    # inference: no stage's training settings
    inference = build_volume_datamodule(config, stage=None, batch_size=2, augment=False)
    assert (inference.pad_batches, inference.samples_per_epoch, inference.slice_targets) == (True, None, False)
    with pytest.raises(UserError, match="data.cache_dir"):
        build_slice_datamodule(config_from_dict({}))


def test_the_data_layer_does_not_import_the_config() -> None:
    import ast
    from pathlib import Path

    import ich3d.data as data

    for path in Path(data.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m and (m == "ich3d.config" or m.startswith("ich3d.training"))}, path.name


def test_open_cache_is_the_one_read_path(fake, tmp_path) -> None:
    from ich3d.data.cache import open_cache

    cache = open_cache(fake.root)
    assert cache.volumes_present()
    (size, n_sizes) = cache.common_size()
    assert size == (32, 32) and n_sizes == 1
    first = cache.volumes["path"].iloc[0]
    moved = tmp_path / "moved.npy"
    (fake.root / first).rename(moved)
    try:
        assert not open_cache(fake.root).volumes_present()
    finally:
        moved.rename(fake.root / first)
    with pytest.raises(UserError, match="not a complete ich3d cache"):
        open_cache(tmp_path)
    # inspecting: no error until a table is read
    empty = open_cache(tmp_path, require_complete=False)
    assert not empty.volumes_present() and empty.info == {}


def test_bounded_stage1_validation_is_a_fixed_stratified_subset(tmp_path):
    import pandas as pd

    from ich3d.data.datamodule import validation_subset

    table = pd.DataFrame({"key": [f"k{i:03d}" for i in range(100)], "label": [1] * 20 + [0] * 80})
    sub = validation_subset(table, 10, seed=3)
    assert len(sub) == 10 and int(sub["label"].sum()) == 2  # each class keeps its share
    assert list(sub["key"]) == sorted(sub["key"])  # order kept
    assert sub.equals(validation_subset(table, 10, seed=3))  # fixed for a seed
    assert not sub.equals(validation_subset(table, 10, seed=4))
    assert validation_subset(table, None, 0) is table and validation_subset(table, 500, 0) is table
    rare = pd.DataFrame({"key": list("abcdefghij"), "label": [1] + [0] * 9})
    assert validation_subset(rare, 3, seed=0)["label"].tolist().count(1) == 1  # the rare class stays


def test_slice_val_loader_uses_val_samples_and_eval_loader_everything(tmp_path):
    from _cache_helpers import write_fake_cache

    from ich3d.data.datamodule import SliceDataModule

    cache = tmp_path / "cache"
    write_fake_cache(cache, patients=12, size=32, slices=(6, 10), seed=0)
    dm = SliceDataModule(cache, split_fractions=(0.4, 0.3, 0.3), batch_size=4, val_samples=5)
    dm.prepare_data()
    dm.setup("fit")
    full = dm.slice_table("val")
    assert len(full) > 5
    seen = sum(int(b["label"].numel()) for b in dm.val_dataloader())
    assert seen == 5
    assert sum(int(b["label"].numel()) for b in dm.eval_dataloader("val")) == len(full)
