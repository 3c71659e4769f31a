"""benchmarks.bench_gpu runs on a CPU (small) and writes every row it prints."""

from __future__ import annotations

import json

from benchmarks.bench_gpu import main


def test_bench_gpu_runs_small_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    result = main([
        "--device", "cpu", "--size", "32", "--width", "4", "--slices", "4", "--feature-dim", "16",
        "--hidden", "8", "--batch", "4", "--steps", "1", "--warmup", "0", "--loader-patients", "4",
        "--loader-items", "4", "--workers", "0", "--out", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    compute = [r for r in saved["rows"] if r["stage"] != "loader"]
    # 2 precisions x 2 variants (no compile on a CPU by default) x 6 rows
    assert len(compute) == 24 and not any("error" in r for r in compute)
    assert {r["precision"] for r in compute} == {"fp32", "bf16"}
    assert {r["variant"] for r in compute} == {"eager", "channels_last"}
    assert all(r["rate"] > 0 and r["ms"] > 0 for r in saved["rows"])
    assert {r["what"] for r in saved["rows"] if r["stage"] == "loader"} == {
        "augmented slices, 0 workers", "augmented volumes, 0 workers"}
    assert set(saved["ratios"]) == {
        "fp32 stage-2 cached / recompute", "bf16 stage-2 cached / recompute",
        "fp32 inference time channels_last / eager", "bf16 inference time channels_last / eager"}
