"""The loader's tables as shared arrays and augmentation after the batch transfer (``data.augment_on``).

- The datasets hold fixed-dtype arrays (:class:`~ich3d.data.datasets.TableArrays`)
  and give exactly the items of the DataFrame datasets they replaced
  (``benchmarks._dataframe_datasets``, the code before the change), on a
  synthetic DICOM set ingested like a user's.
- A pickled dataset (what each spawn worker receives) carries file paths, not
  the table; spawn workers give the same batches as the main process.
- ``augment_on: device``: the loader reads HU and only draws the augmentation's
  parameters (no MONAI transform runs); the DataModule's ``on_after_batch_transfer``
  applies them batched and windows, giving the loader path's batches bit for bit
  (here the device is the CPU).
"""

from __future__ import annotations

import gc
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import make_tiny_cache
from torch.utils.data import DataLoader

from benchmarks._dataframe_datasets import DataFrameSliceDataset, DataFrameVolumeDataset
from ich3d.config import config_from_dict
from ich3d.data.augment import build_augment_2d, build_augment_3d
from ich3d.data.datamodule import SliceDataModule, VolumeDataModule
from ich3d.data.datasets import SliceDataset, TableArrays, VolumeCollate, VolumeDataset
from ich3d.data.schema import LABEL_COLUMNS
from ich3d.errors import UserError


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("loader"), patients=6, size=64, slices=(8, 12))


def _setup(cls, cache: Path, **kw):
    dm = cls(cache, split_fractions=(0.5, 0.25, 0.25), **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _assert_same_item(a: dict, b: dict, where: str) -> None:
    assert list(a) == list(b), where
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (where, k)
            assert torch.equal(a[k], b[k]), (where, k)
        else:
            assert type(a[k]) is type(b[k]) and a[k] == b[k], (where, k)


def _items(n: int) -> list:
    seeds = np.random.default_rng(3).integers(0, 2**32, size=n, dtype=np.uint64)
    return list(range(n)) + [(r, int(s)) for r, s in zip(range(n), seeds, strict=True)]


# ----------------------------------------------------------------------------- table arrays


def test_slice_items_equal_the_dataframe_dataset(cache) -> None:
    dm = _setup(SliceDataModule, cache, targets=list(LABEL_COLUMNS))
    for split in ("train", "val"):
        table = dm.slice_table(split)
        args = (dm.cache, table, dm.windows)
        kw = {"transform": build_augment_2d(), "size": dm.size, "targets": list(LABEL_COLUMNS)}
        new, old = SliceDataset(*args, **kw), DataFrameSliceDataset(*args, **kw)
        assert len(new) == len(old) == len(table) >= 5
        for item in _items(len(table)):
            _assert_same_item(new[item], old[item], f"{split} {item}")
        # the table is arrays of fixed dtype: no DataFrame, no object column, no cache object
        assert not any(isinstance(v, (pd.DataFrame, pd.Series)) for v in vars(new).values())
        assert "cache" not in vars(new)
        for name in ("code", "label", "slice_index", "vol_key", "vol_path", "target"):
            assert new._arrays[name].dtype != object, name
        assert new._arrays["vol_key"].dtype.kind == "U" and new._arrays["code"].dtype == np.int32


@pytest.mark.parametrize("pool", [2, 1])
def test_volume_items_equal_the_dataframe_dataset(cache, pool) -> None:
    dm = _setup(VolumeDataModule, cache, depth_pool=pool, targets=list(LABEL_COLUMNS))
    table = dm.split_table("train")
    # a repeated key (volume_loader allows it) and a shuffled order
    table = pd.concat([table, table.iloc[[0]]]).iloc[::-1].reset_index(drop=True)
    args = (dm.cache, table, dm.windows)
    kw = {
        "depth_pool": pool,
        "transform": build_augment_3d(),
        "size": dm.size,
        "targets": list(LABEL_COLUMNS),
        "slice_columns": ["any", "subdural"],
    }
    new, old = VolumeDataset(*args, **kw), DataFrameVolumeDataset(*args, **kw)
    assert len(new) == len(old) >= 4
    for item in _items(len(table)):
        _assert_same_item(new[item], old[item], f"pool {pool} {item}")
    assert int(new[0]["slice_target"][:, 0].max()) == int(table["any"].iloc[0])


class _StandInCache:
    """Knows the volumes' paths (no files: the pickling tests read no item)."""

    def volume_path(self, key: str) -> Path:
        return Path("/data/cache/volumes") / f"{key}.npy"


def _big_table(rows: int, volumes: int) -> tuple[_StandInCache, pd.DataFrame]:
    """A slice table of ``rows`` rows over ``volumes`` volumes (keys like the ingest's) and a
    stand-in cache that knows their paths (no files: items are not read)."""
    keys = np.array([f"ID_{i:08x}{i * 2654435761 % 2**32:08x}_ser_{i:06d}" for i in range(volumes)])
    code = np.sort(np.random.default_rng(0).integers(0, volumes, size=rows))
    table = pd.DataFrame(
        {
            "key": keys[code].astype(object),
            "slice_index": np.arange(rows) % 40,
            "label": (np.arange(rows) % 7 == 0).astype(np.int64),
        }
    )
    return _StandInCache(), table


def test_pickled_dataset_carries_paths_not_the_table() -> None:
    stand_in, table = _big_table(100_000, 3_000)
    windows = ["brain", "subdural", "bone"]
    ds = SliceDataset(stand_in, table, windows, transform=build_augment_2d())  # type: ignore[arg-type]
    assert ds._arrays.nbytes > 1_000_000
    blob = pickle.dumps(ds)
    # what each spawn worker receives: the paths of the mapped files, the windows, the transform
    assert len(blob) < 40_000, len(blob)
    old_blob = pickle.dumps(DataFrameSliceDataset(stand_in, table, windows, transform=build_augment_2d()))  # type: ignore[arg-type]
    assert len(old_blob) > 50 * len(blob)
    back = pickle.loads(blob)
    assert isinstance(back._arrays["code"], np.memmap) and not isinstance(ds._arrays["code"], np.memmap)
    for name in ("code", "label", "slice_index", "vol_key", "vol_path"):
        np.testing.assert_array_equal(back._arrays[name], ds._arrays[name])
    assert str(back._arrays["vol_key"][back._arrays["code"][99_999]]) == table["key"].iloc[-1]
    assert len(pickle.dumps(back)) < 40_000  # already mapped: pickles as the same paths
    folder = ds._arrays._folder
    assert folder is not None and folder.is_dir()
    del ds, back
    gc.collect()
    assert not folder.exists()  # the writer's folder goes with it


def test_table_arrays_refuse_objects_and_keep_empty_arrays() -> None:
    with pytest.raises(TypeError, match="Python objects"):
        TableArrays(key=np.array(["a", None], dtype=object))
    t = TableArrays(a=np.arange(3, dtype=np.int16), empty=np.zeros((0, 6), np.float32))
    back = pickle.loads(pickle.dumps(t))
    assert back["empty"].shape == (0, 6) and back["a"].tolist() == [0, 1, 2] and "a" in back


def _drop_in_child(holder: list) -> None:
    holder.pop()._cleanup()  # what garbage collection of the forked copy would run


def test_a_forked_copy_never_removes_the_writers_folder() -> None:
    import multiprocessing as mp

    t = TableArrays(a=np.arange(10))
    pickle.dumps(t)
    folder = t._folder
    child = mp.get_context("fork").Process(target=_drop_in_child, args=([t],))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and folder.is_dir() and pickle.loads(pickle.dumps(t))["a"].tolist() == list(range(10))
    del t
    gc.collect()
    assert not folder.exists()


def test_spawn_workers_give_the_same_batches(cache) -> None:
    dm = _setup(VolumeDataModule, cache, batch_size=2, pad_batches=True, slice_targets=True)
    dataset = dm._dataset(dm.split_table("train"))
    items = list(range(len(dataset)))

    def batches(**kw) -> list[dict]:
        loader = DataLoader(dataset, batch_size=2, sampler=items, collate_fn=dm.collate, **kw)
        return list(loader)

    main = batches(num_workers=0)
    spawned = batches(num_workers=2, multiprocessing_context="spawn")
    assert len(main) == len(spawned) >= 2
    for a, b in zip(main, spawned, strict=True):
        _assert_same_item(a, b, "spawn")


# ----------------------------------------------------------------------------- augment_on


def _first_batches(dm, n: int = 3, hook: bool = False) -> list[dict]:
    out = []
    for i, b in enumerate(dm.train_dataloader()):
        if hook:
            b = dm.on_after_batch_transfer(dm.on_before_batch_transfer(b, 0), 0)
        out.append(b)
        if i + 1 == n:
            break
    return out


@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("kind", ["slice", "volume"])
def test_device_path_gives_the_loader_path_batches(cache, kind, augment) -> None:
    cls, kw = (
        (SliceDataModule, {"batch_size": 8, "samples_per_epoch": 48})
        if kind == "slice"
        else (VolumeDataModule, {"batch_size": 3, "pad_batches": True, "samples_per_epoch": 9})
    )
    loader = _first_batches(_setup(cls, cache, augment=augment, augment_on="loader", seed=2, **kw))
    device_dm = _setup(cls, cache, augment=augment, augment_on="device", seed=2, **kw)
    raw = _first_batches(device_dm)
    assert "hu" in raw[0] and raw[0]["hu"].dtype == torch.int16 and "image" not in raw[0] and "volume" not in raw[0]
    assert ("augment_branch" in raw[0] and "augment_matrix" in raw[0]) == augment
    device = _first_batches(device_dm, hook=True)
    if kind == "volume":
        assert len({int(n) for b in loader for n in b["length"]}) > 1  # padding is exercised
    for a, b in zip(loader, device, strict=True):
        _assert_same_item(a, b, f"{kind} augment={augment}")
    if augment:  # the augmentation is really on: augmented images differ from the stored ones
        plain = _first_batches(_setup(cls, cache, augment=False, augment_on="loader", seed=2, **kw))
        key = "image" if kind == "slice" else "volume"
        assert not all(torch.equal(a[key], p[key]) for a, p in zip(loader, plain, strict=True))


def test_device_mode_never_calls_a_monai_transform(cache, monkeypatch) -> None:
    """The loader only draws (MONAI's randomize), the hook applies batched: no MONAI transform runs."""
    import monai.transforms as mt

    import ich3d.data.datasets as ds_mod

    kw = {"batch_size": 8, "samples_per_epoch": 24, "seed": 3}
    expected = _first_batches(_setup(SliceDataModule, cache, augment_on="loader", **kw))
    dm = _setup(SliceDataModule, cache, augment_on="device", **kw)

    def refuse(*_a, **_k):
        raise AssertionError("a MONAI transform ran")

    monkeypatch.setattr(ds_mod, "augment", refuse)
    for cls in (mt.OneOf, mt.RandRotate, mt.RandAffine, mt.Flip, mt.Identity):
        monkeypatch.setattr(cls, "__call__", refuse)
    raw = list(dm.train_dataloader())  # would raise if an item were augmented in the loader
    branches = torch.cat([b["augment_branch"] for b in raw])
    assert set(branches.tolist()) == {0, 1, 2, 3}  # every branch is exercised
    got = [dm.on_after_batch_transfer(dm.on_before_batch_transfer(b, 0), 0) for b in raw]
    for a, b in zip(expected, got, strict=True):
        _assert_same_item(a, b, "no MONAI transform")


def test_batched_augmentation_equals_monai_per_sample() -> None:
    """augment_params + augment_batch against augment, per branch, 2D and padded 3D, on the CPU."""
    from ich3d.data.augment import AIR_OFFSET, augment, augment_batch, augment_params

    rng = np.random.default_rng(5)
    for build, shapes in ((build_augment_2d, [(40, 48)] * 24), (build_augment_3d, [(7, 24, 20), (5, 24, 20)] * 8)):
        t = build()
        t_max = max(sh[0] for sh in shapes)
        hu = torch.full((len(shapes), t_max, *shapes[0][1:]), -1024.0) if len(shapes[0]) == 3 else None
        samples = [torch.from_numpy(rng.integers(-1024, 2000, size=sh).astype(np.float32)) for sh in shapes]
        if hu is None:
            hu = torch.stack(samples)
        else:
            for i, x in enumerate(samples):
                hu[i, : x.shape[0]] = x
        seeds = rng.integers(0, 2**32, size=len(shapes), dtype=np.uint64).tolist()
        params = [augment_params(t, s, sh) for s, sh in zip(seeds, shapes, strict=True)]
        branches = [b for b, _ in params]
        assert set(branches) == {0, 1, 2, 3}, branches
        lengths = [sh[0] for sh in shapes] if len(shapes[0]) == 3 else None
        got = augment_batch(t, hu, branches, torch.from_numpy(np.stack([m for _, m in params])), lengths)
        for i, (x, s) in enumerate(zip(samples, seeds, strict=True)):
            want = augment(t, x[None] + AIR_OFFSET, s)[0] - AIR_OFFSET
            assert torch.equal(got[i, : x.shape[0]], want), (build.__name__, i, branches[i])
            assert bool((got[i, x.shape[0] :] == -1024).all())  # the padding stays air


def test_augment_on_auto_follows_the_trainer_device(cache) -> None:
    dm = _setup(SliceDataModule, cache, batch_size=4)
    assert dm.augment_on == "auto" and not dm.augments_on_device()  # no trainer: the loader
    loader = dm.train_dataloader()
    assert loader.dataset.transform is not None and not loader.dataset.raw_hu and not loader.pin_memory
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert not dm.augments_on_device()
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert dm.augments_on_device()
    loader = dm.train_dataloader()
    assert loader.dataset.raw_hu and loader.dataset.transform is not None  # it only draws
    assert loader.pin_memory  # Lightning copies with non_blocking=True: pinned makes it async
    assert not dm.eval_dataloader("val").dataset.raw_hu  # evaluation windows in the loader
    dm.trainer = None
    with pytest.raises(UserError, match="augment_on must be one of"):
        SliceDataModule(cache, augment_on="gpu")


def test_augment_on_config_key(cache, tmp_path) -> None:
    from ich3d.training.data import build_volume_datamodule

    raw = {"data": {"cache_dir": str(cache), "augment_on": "device"}}
    config = config_from_dict(raw)
    assert config.data.augment_on == "device" and config_from_dict({}).data.augment_on == "auto"
    dm = build_volume_datamodule(config)
    assert dm.augment_on == "device"
    with pytest.raises(UserError, match="augment_on"):
        config_from_dict({"data": {"augment_on": "gpu"}})


def test_lightning_runs_the_hook_in_device_mode(cache) -> None:
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch, _):
            assert "hu" not in batch and "augment_seed" not in batch
            self.seen.append(batch["image"].clone())
            x = batch["image"].mean(dim=(2, 3))
            return torch.nn.functional.binary_cross_entropy_with_logits(self.lin(x)[:, 0], batch["label"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = SliceDataModule(cache, batch_size=4, samples_per_epoch=8, augment_on="device", seed=1,
                         split_fractions=(0.5, 0.25, 0.25))
    model = Tiny()
    pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(model, datamodule=dm)
    expected = _first_batches(
        _setup(SliceDataModule, cache, batch_size=4, samples_per_epoch=8, augment_on="loader", seed=1), n=2
    )
    assert len(model.seen) == 2
    for got, want in zip(model.seen, expected, strict=True):
        assert torch.equal(got, want["image"])


def test_volume_collate_pads_hu_with_air() -> None:
    items = [
        {"hu": torch.full((n, 2, 2), 7, dtype=torch.int16), "augment_branch": torch.tensor(s),
         "augment_matrix": torch.eye(4) * s,
         "length": torch.tensor(n), "label": torch.tensor(0.0), "key": f"k{n}", "index": torch.tensor(n)}
        for n, s in ((3, 11), (1, 12))
    ]
    out = VolumeCollate(["brain"])(items)
    assert out["hu"].shape == (2, 3, 2, 2) and out["hu"].dtype == torch.int16
    assert out["hu"][1, 1:].unique().tolist() == [-1024] and out["hu"][1, 0].unique().tolist() == [7]
    assert out["augment_branch"].tolist() == [11, 12] and out["length"].tolist() == [3, 1]
    assert out["augment_matrix"].shape == (2, 4, 4) and float(out["augment_matrix"][1, 0, 0]) == 12


def test_lightning_copies_batches_to_cuda_non_blocking() -> None:
    """What the pinned loader relies on: Lightning's batch transfer passes ``non_blocking=True``
    for a CUDA device (and not for the CPU); checked on a tensor that records its ``.to`` calls."""
    from lightning_fabric.utilities.apply_func import move_data_to_device

    calls: list[dict] = []

    class Spy(torch.Tensor):
        def to(self, *args, **kwargs):  # type: ignore[override]
            calls.append(kwargs)
            return self

    batch = {"hu": torch.zeros(2, dtype=torch.int16).as_subclass(Spy), "key": ["a", "b"]}
    move_data_to_device(batch, torch.device("cuda", 0))
    move_data_to_device(batch, torch.device("cpu"))
    assert calls == [{"non_blocking": True}, {}]
