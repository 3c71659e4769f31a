"""Per-volume latency of an exported volume model on CPU: eager vs TorchScript vs ONNX (onnxruntime).

Run from the repository root::

    python -m benchmarks.bench_export                                   # paper size
    python -m benchmarks.bench_export --size 64 --width 8 --slices 8    # quick

Model: ``configs/patel2019.yaml``'s volume model (``patel_cnn`` width 32, 512-d
features, 2 x 512 BiLSTM) on one volume of ``--slices`` (30) pooled slices of
``--size`` (256) px, seeded weights. It is written as ``ich3d export`` writes it
(:func:`ich3d.deploy.export.save_model_files`: traced on a volume of
:data:`~ich3d.deploy.export.TRACE_SLICES` slices, so the timed length also checks
the dynamic slice axis) and loaded back as ``ich3d predict PKG --runtime`` loads it
(:func:`ich3d.deploy.runtime.load_models`). After ``--warmup`` calls each, the
three are timed in turn, one volume each, ``--rounds`` rounds (interleaved, so a
load change on a shared machine hits all of them). Prints ms per volume (median
over rounds), each runtime's ratio to eager (median of the per-round ratios) and
the largest absolute difference of its logit from eager's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ich3d.deploy.export import TRACE_SLICES, OneVolume, save_model_files
from ich3d.deploy.package import ICH3D, open_package, sha256_file, write_manifest
from ich3d.deploy.runtime import load_models
from ich3d.models.build import build

RUNTIMES = ("eager", "torchscript", "onnx")


def _package(root: Path, args: argparse.Namespace) -> torch.nn.Module:
    """A package holding only the volume model (enough for load_models); returns the eager model."""
    torch.manual_seed(0)
    spec = {"encoder": {"name": "patel_cnn", "in_channels": 3, "width": args.width, "feature_dim": args.feature_dim,
                        "input_size": args.size},
            "head": {"name": "bilstm", "hidden": args.hidden, "num_layers": 2}, "slice_chunk": None}
    model = OneVolume(build(spec)).eval()
    (root / "models").mkdir(parents=True)
    (root / "configs").mkdir()
    example = torch.rand(1, TRACE_SLICES, 3, args.size, args.size)
    files = save_model_files(model, spec, example, root, "model", axis=1)
    entry = {"stage": "bench", "spec": spec, "files": files, "sha256": {k: sha256_file(root / v) for k, v in files.items()}}
    (root / ICH3D).write_text(json.dumps({"format": 1, "models": {"volume": entry}}))
    (root / "configs" / "metadata.json").write_text("{}")
    write_manifest(root)
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=30)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--feature-dim", type=int, default=512)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        t0 = time.perf_counter()
        eager = _package(Path(tmp), args)
        export_s = time.perf_counter() - t0
        pkg = open_package(tmp)
        run = {"eager": eager, "torchscript": load_models(pkg, "torchscript")[0], "onnx": load_models(pkg, "onnx")[0]}
        vol = torch.rand(1, args.slices, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        out: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for name in RUNTIMES:
                for _ in range(args.warmup):
                    out[name] = run[name](vol)
            times: dict[str, list[float]] = {name: [] for name in RUNTIMES}
            for _ in range(args.rounds):
                for name in RUNTIMES:
                    t0 = time.perf_counter()
                    run[name](vol)
                    times[name].append(time.perf_counter() - t0)
    print(f"volume model: patel_cnn width {args.width}, {args.feature_dim}-d features, 2 x {args.hidden} BiLSTM; "
          f"{args.slices} slices of {args.size} px; traced on {TRACE_SLICES} slices; {args.threads} torch thread(s); "
          f"export {export_s:.1f} s")
    print(f"{'runtime':<12} {'ms/volume':>10} {'x eager':>8} {'max |logit diff|':>17}")
    for name in RUNTIMES:
        ratio = statistics.median(t / e for t, e in zip(times[name], times["eager"], strict=True))
        diff = float((out[name].reshape(-1) - out["eager"].reshape(-1)).abs().max())
        print(f"{name:<12} {1000 * statistics.median(times[name]):>10.1f} {ratio:>8.2f} {diff:>17.2e}")


if __name__ == "__main__":
    main()
