"""benchmarks.bench_train and benchmarks.bench_inference run small, measure what they say."""

from __future__ import annotations

import pytest

from benchmarks import bench_inference, bench_train


def test_bench_train_runs_small():
    res = bench_train.main(["--patients", "6", "--size", "64", "--samples", "16", "--repeat", "1",
                            "--threads", "1", "--rows", "slice", "cached"])
    assert set(res) == {"slice", "cached"}
    # 16 slices in one batch (of up to 25); 16 volumes on cached features, one per step
    assert res["slice"]["steps"] == 1 and res["cached"]["steps"] == 16
    for row in res.values():
        assert set(row["seconds"]) == {"ich3d", "plain", "floor", "bare"}
        assert all(len(v) == 1 and v[0] > 0 for v in row["seconds"].values())
        assert row["ratio_ich3d"] > 0 and row["bare_ms"] > 0


def test_bench_inference_variants_agree():
    rows = bench_inference.main(["--size", "32", "--width", "4", "--slices", "3", "--feature-dim", "8",
                                 "--hidden", "4", "--volumes", "2", "--warmup", "1", "--threads", "1",
                                 "--compile", "off"])
    assert [r["threads"] for r in rows] == [1]
    variants = rows[0]["rows"]
    assert list(variants) == ["eager", "channels_last"]
    assert variants["eager"]["ratio"] == 1.0 and variants["eager"]["max_abs_diff_logits"] == 0.0
    cl = variants["channels_last"]
    assert cl["ms"] > 0 and len(cl["all_ms"]) == 2
    assert cl["max_abs_diff_logits"] == pytest.approx(0.0, abs=1e-5)
    assert cl["max_abs_diff_features"] == pytest.approx(0.0, abs=1e-5)
