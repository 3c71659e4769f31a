"""The cranial-cavity statistics (ich3d.data.cavity): values, and the same table however made."""

from __future__ import annotations

import numpy as np
import pytest
from _ingest_helpers import write_labels, write_series

from ich3d.data.cache import open_cache
from ich3d.data.cavity import (
    STATS_CSV,
    STATS_JSON,
    CavityRule,
    cavity_fraction,
    compute_slice_stats,
    ensure_slice_stats,
)
from ich3d.data.ingest import run_ingest


def _reference(volume: np.ndarray, rule: CavityRule) -> np.ndarray:
    """The rule as the module docstring states it: four running "any bone so far" scans."""
    v = np.asarray(volume)
    v = v[None] if v.ndim == 2 else v
    bone = v >= rule.bone_hu
    enclosed = (v >= rule.soft_min) & (v <= rule.soft_max)
    enclosed &= np.logical_or.accumulate(bone, axis=2)
    enclosed &= np.logical_or.accumulate(bone[:, :, ::-1], axis=2)[:, :, ::-1]
    enclosed &= np.logical_or.accumulate(bone, axis=1)
    enclosed &= np.logical_or.accumulate(bone[:, ::-1, :], axis=1)[:, ::-1, :]
    return enclosed.mean(axis=(1, 2), dtype=np.float64)


def test_fraction_of_a_ring_of_bone():
    v = np.full((2, 10, 10), -1000, dtype=np.int16)
    v[0, 2:8, 2:8] = 1000  # bone square ...
    v[0, 3:7, 3:7] = 40  # ... around 16 brain pixels
    v[0, 0, :] = 40  # soft tissue outside the bone: not counted
    v[1, 4, 4] = 500  # a lone bone pixel: nothing enclosed
    np.testing.assert_array_equal(cavity_fraction(v), [0.16, 0.0])
    open_left = v[:1].copy()
    open_left[0, 4, 2] = 40  # the bone ring opened at row 4: that row's pixels drop out
    np.testing.assert_array_equal(cavity_fraction(open_left), [0.12])
    assert cavity_fraction(np.zeros((5, 7)))[0] == 0.0  # one slice, no bone


@pytest.mark.parametrize("seed", range(4))
def test_fraction_equals_the_running_scans(seed):
    rng = np.random.default_rng(seed)
    rule = CavityRule(bone_hu=float(rng.integers(200, 800)), soft_max=float(rng.integers(50, 150)))
    for _ in range(60):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        v = rng.integers(-1100, 1600, size=shape).astype(np.int16)
        v[rng.random(shape) < rng.random()] = 30  # runs of soft tissue, sparse bone
        np.testing.assert_array_equal(cavity_fraction(v, rule), _reference(v, rule))


@pytest.fixture()
def cache(tmp_path):
    rng = np.random.default_rng(3)
    img = tmp_path / "images"
    labels = {}
    for k in range(5):
        hu = rng.integers(-1100, 1500, size=(int(rng.integers(4, 9)), 24, 24)).astype(np.int32)
        hu[:, 4:20, 4:20] = 1200  # a skull ...
        hu[:, 6:18, 6:18] = rng.integers(0, 90, size=(12, 12))  # ... with brain inside
        hu[: k + 1, 6:18, 6:18] = -900  # caps without brain
        for f in write_series(img, hu, series=f"ID_cav{k}", start=0x100 * (k + 1)):
            labels[f.name[:-4]] = [0] * 6
    return img, write_labels(tmp_path / "labels.csv", labels), tmp_path


def test_stats_the_same_in_one_or_two_processes(cache):
    img, labels, tmp = cache
    out = tmp / "cache"
    run_ingest(img, labels, out, workers=2, progress=False)
    c = open_cache(out)
    ensure_slice_stats(c, workers=1, progress=False)
    written = (out / STATS_CSV).read_bytes(), (out / STATS_JSON).read_bytes()
    before = (out / STATS_CSV).stat().st_mtime_ns
    assert ensure_slice_stats(c, workers=2, progress=False) == out / STATS_CSV  # current: kept
    assert (out / STATS_CSV).stat().st_mtime_ns == before
    (out / STATS_CSV).unlink()
    ensure_slice_stats(c, workers=2, progress=False)
    assert ((out / STATS_CSV).read_bytes(), (out / STATS_JSON).read_bytes()) == written
    stats = compute_slice_stats(c, workers=2, progress=False)
    assert stats.equals(compute_slice_stats(c, workers=1, progress=False))
    assert len(stats) == len(c.slices) == int(c.volumes.n_slices.sum())
    assert list(stats.key.drop_duplicates()) == list(c.volumes.key)  # volumes.csv order
    for key, g in stats.groupby("key"):
        ref = _reference(np.load(c.volume_path(key)), CavityRule())
        np.testing.assert_array_equal(g.slice_index, np.arange(len(ref)))
        np.testing.assert_array_equal(g.cavity_fraction, ref)
    assert (stats.cavity_fraction > 0.1).sum() > 0 and (stats.cavity_fraction == 0).sum() > 0
    # another rule: recomputed
    ensure_slice_stats(c, CavityRule(bone_hu=1300.0), workers=2, progress=False)
    assert (out / STATS_CSV).read_bytes() != written[0]
