"""benchmarks.bench_scale: the synthetic cache has RSNA's shape, and the rehearsal runs every phase (tiny)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks._scale_cache import RSNA_TRAIN, scaled_counts, write_scale_cache
from benchmarks.bench_scale import PHASES, growth_exponent, main
from ich3d.data.cache import open_cache


def test_scale_cache_has_rsna_shape_and_opens_as_a_cache(tmp_path):
    counts = write_scale_cache(tmp_path / "c", 1 / 200)
    cache = open_cache(tmp_path / "c")  # the tables' sha256 match ingest.json
    vols, slices = cache.volumes, cache.slices
    assert (len(vols), len(slices)) == (round(21_744 / 200), round(752_803 / 200)) == scaled_counts(1 / 200)[:2]
    assert vols["n_slices"].between(24, 60).all() and vols["n_slices"].sum() == len(slices)
    assert vols["patient_id"].nunique() == counts["patients"] == round(RSNA_TRAIN[2] / 200)
    assert (vols.groupby("patient_id").size() == 1).mean() > 0.7  # most patients: one series
    assert 0.08 < slices["any"].mean() < 0.21 and 0.25 < vols["any"].mean() < 0.57  # 109 series: wide bounds
    # a volume's labels are the maximum over its slices; subtype implies any
    by_key = slices.groupby("key")[["epidural", "subdural", "any"]].max()
    assert (by_key.loc[vols["key"]].to_numpy() == vols[["epidural", "subdural", "any"]].to_numpy()).all()
    assert (slices["subdural"] <= slices["any"]).all()
    key = vols["key"].iloc[0]
    assert cache.load_volume(key).shape == (vols["n_slices"].iloc[0], 32, 32)
    test = write_scale_cache(tmp_path / "t", 1 / 200, labeled=False, seed=1)
    tc = open_cache(tmp_path / "t")
    assert len(tc.slices) == test["slices"] == round(121_232 / 200) and not tc.labeled


def test_growth_exponent_is_the_log_log_slope():
    n = [1000, 4000, 16000]
    assert growth_exponent(n, [2.0 * x for x in n]) == pytest.approx(1.0)
    assert growth_exponent(n, [3e-6 * x**2 for x in n]) == pytest.approx(2.0)
    assert growth_exponent([1000], [1.0]) is None


def test_bench_scale_runs_every_phase_tiny(tmp_path):
    saved = main(["--fractions", "0.004", "--out", str(tmp_path / "out"), "--quick", "--in-process", "--workers", "1",
                  "--keep"])
    table = saved["table"]
    assert [row["phase"] for row in table] == [p for p, _ in PHASES]
    for row in table:
        assert len(row["cpu_s"]) == 1 and row["wall_s"][0] >= 0 and row["cpu_s"][0] >= 0
    assert all(row["peak_rss_mib"][0] > 100 for row in table if row["phase"] != "report")
    size = saved["sizes"][0]
    assert size["submission_rows"] == 6 * size["counts"]["test"]["slices"] == 6 * round(121_232 * 0.004)
    assert json.loads((tmp_path / "out" / "scale.json").read_text())["table"] == json.loads(json.dumps(table))
    md = (tmp_path / "out" / "scale.md").read_text()
    assert all(f"| {p}: " in md for p, _ in PHASES)
    assert np.isfinite([row["cpu_s_full_projected"] for row in table]).all()
    # the phases.jsonl each phase appends gives the same table (--collect: kept or interrupted runs)
    again = main(["--collect", str(tmp_path / "out" / "size-0.004"), "--out", str(tmp_path / "collected")])
    for row, back in zip(table, again["table"], strict=True):
        assert back["phase"] == row["phase"] and back["cpu_s"] == pytest.approx(row["cpu_s"])
        assert back["peak_rss_mib"] == row["peak_rss_mib"]
