"""Peak memory of one end-to-end (stage 3) training step, with and without gradient checkpointing.

Run from the repository root::

    python -m benchmarks.bench_memory [--slices 30] [--size 256] [--width 32] [--chunk 4]

One volume of ``--slices`` slices at ``--size`` px through the paper's model
(``patel_cnn`` width 32, 512-d features, 2 x 512 BiLSTM), forward and backward,
encoder trainable. Each variant runs in a fresh process; the figure is the
growth of the process's peak resident memory over its resident memory just
before the step (model, optimizer-free, and the input already allocated), i.e.
the activations kept for the backward pass. On a GPU the same step reports
``torch.cuda.max_memory_allocated`` growth instead (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _child(args: argparse.Namespace) -> None:
    import resource

    import torch

    from ich3d.models.volume import build_volume_model

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = build_volume_model(
        {"name": "patel_cnn", "in_channels": 3, "width": args.width, "feature_dim": 512, "input_size": args.size},
        {"name": "bilstm", "hidden": 512, "num_layers": 2},
        slice_chunk=args.chunk if args.checkpoint or args.chunk_without else None,
        checkpoint_chunks=args.checkpoint,
    ).to(dev).train()
    x = torch.rand(1, args.slices, 3, args.size, args.size, device=dev)

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mib()
    t0 = time.perf_counter()
    model(x).sum().backward()
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"mib": peak - base, "seconds": seconds}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=4, help="model.slice_chunk with checkpointing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk-without", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    common = [f"--slices={args.slices}", f"--size={args.size}", f"--width={args.width}",
              f"--chunk={args.chunk}", f"--threads={args.threads}", f"--device={args.device}", "--child"]
    rows = {}
    for name, extra in (
        ("no checkpointing, all slices at once", []),
        (f"no checkpointing, chunks of {args.chunk}", ["--chunk-without"]),
        (f"checkpointing, chunks of {args.chunk}", ["--checkpoint"]),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_memory", *common, *extra],
            check=True, capture_output=True, text=True,
        )
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"stage-3 step, {args.slices} slices x {args.size} px, patel_cnn width {args.width} + 2 x 512 BiLSTM, {args.device}")
    print(f"{'variant':<40}{'peak MiB':>10}{'step s':>8}")
    for name, r in rows.items():
        print(f"{name:<40}{r['mib']:>10.0f}{r['seconds']:>8.1f}")
    base = rows["no checkpointing, all slices at once"]
    ck = rows[f"checkpointing, chunks of {args.chunk}"]
    print(f"peak memory checkpointing / without: {ck['mib'] / base['mib']:.2f}x (target <= 0.3x); "
          f"time {ck['seconds'] / base['seconds']:.2f}x")


if __name__ == "__main__":
    main()
