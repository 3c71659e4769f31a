"""Volume inference at the paper's size: eager vs ``channels_last`` vs ``channels_last`` + ``torch.compile``.

Run from the repository root::

    python -m benchmarks.bench_inference                       # paper size, 1 and 2 threads
    python -m benchmarks.bench_inference --size 64 --width 8 --slices 8 --volumes 2   # quick

Model: ``configs/patel2019.yaml``'s (``patel_cnn`` width 32, 512-d features,
2 x 512 BiLSTM) on one volume of ``--slices`` (30) pooled slices of ``--size``
(256) px, in eval mode under ``torch.inference_mode()``, as
:func:`ich3d.evaluation.inference.passes.predict_volumes` runs it. The three variants
are the same weights (one seed) with :func:`ich3d.models.speed.speed_up`'s
options. For each ``--threads`` setting every variant is warmed up
``--warmup`` times (``torch.compile`` compiles there; its time is printed),
then the variants are timed in turn, one volume each, ``--volumes`` rounds
(interleaved, so a load change on a shared machine hits all of them).
Prints ms per volume (median over the rounds), the ratio of each variant's time
to eager's (median of the per-round ratios) and the largest absolute difference
of its logits and slice features from eager's. ``--compile auto`` compiles when
a C compiler is found; a variant that fails prints its error instead of a time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from typing import Any

import torch

VARIANTS = ("eager", "channels_last", "channels_last+compile")


def _model(args: argparse.Namespace, variant: str) -> torch.nn.Module:
    from ich3d.models.speed import speed_up
    from ich3d.models.volume import build_volume_model

    torch.manual_seed(0)
    enc = {"name": "patel_cnn", "in_channels": 3, "width": args.width, "feature_dim": args.feature_dim,
           "input_size": args.size}
    head = {"name": "bilstm", "hidden": args.hidden, "num_layers": 2}
    model = build_volume_model(enc, head).eval()
    return speed_up(model, channels_last=variant != "eager", compile=variant == "channels_last+compile")


def _infer(model: torch.nn.Module, vol: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, slice features)`` of one volume, as evaluation computes them."""
    with torch.inference_mode():
        feats = model.encode(vol, lengths)
        return model.head_logits(feats, lengths), feats


def _measure(args: argparse.Namespace, threads: int, variants: list[str]) -> dict[str, Any]:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1)
    vol = torch.rand(1, args.slices, 3, args.size, args.size, generator=gen)
    lengths = torch.tensor([args.slices])
    models: dict[str, torch.nn.Module] = {}
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    errors: dict[str, str] = {}
    warm: dict[str, float] = {}
    for v in variants:
        try:
            models[v] = _model(args, v)
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                outputs[v] = _infer(models[v], vol, lengths)
            warm[v] = time.perf_counter() - t0
        except Exception as exc:  # inductor without a working compiler, ...
            errors[v] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
            models.pop(v, None)
    times: dict[str, list[float]] = {v: [] for v in models}
    for _ in range(args.volumes):
        for v, model in models.items():
            t0 = time.perf_counter()
            outputs[v] = _infer(model, vol, lengths)
            times[v].append(time.perf_counter() - t0)
    result: dict[str, Any] = {"threads": threads, "rows": {}}
    base = times.get("eager")
    for v in variants:
        if v in errors:
            result["rows"][v] = {"error": errors[v]}
            continue
        row: dict[str, Any] = {"ms": 1e3 * statistics.median(times[v]), "warmup_s": warm[v],
                               "all_ms": [round(1e3 * t, 1) for t in times[v]]}
        if base:
            row["ratio"] = statistics.median(t / b for t, b in zip(times[v], base, strict=True))
            row["max_abs_diff_logits"] = float((outputs[v][0] - outputs["eager"][0]).abs().max())
            row["max_abs_diff_features"] = float((outputs[v][1] - outputs["eager"][1]).abs().max())
        result["rows"][v] = row
    return result


def compiler_available() -> bool:
    """Whether inductor's CPU backend can find a C++ compiler."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="slice side in px (default 256)")
    parser.add_argument("--slices", type=int, default=30, help="slices per volume after the depth filter")
    parser.add_argument("--width", type=int, default=32, help="patel_cnn first-layer width")
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--volumes", type=int, default=3, help="timed volumes per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed volumes per variant first")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    args = parser.parse_args(argv)
    compile_on = args.compile == "on" or (args.compile == "auto" and compiler_available())
    variants = list(VARIANTS if compile_on else VARIANTS[:2])
    print(f"ich3d bench_inference: torch {torch.__version__}, patel_cnn width {args.width} at {args.size} px, "
          f"{args.slices} slices/volume, 2 x {args.hidden} BiLSTM; {args.warmup} warm-up + {args.volumes} timed "
          f"volumes per variant, interleaved")
    print(f"{'threads':<9}{'variant':<24}{'ms/volume':>11}{'ratio':>8}{'max|diff| logit':>17}"
          f"{'max|diff| feat':>16}{'warm-up s':>11}")
    results = []
    for threads in args.threads:
        res = _measure(args, threads, variants)
        results.append(res)
        for v, row in res["rows"].items():
            if "error" in row:
                print(f"{threads:<9}{v:<24}  failed: {row['error']}")
                continue
            print(f"{threads:<9}{v:<24}{row['ms']:>11.1f}{row.get('ratio', float('nan')):>8.2f}"
                  f"{row.get('max_abs_diff_logits', float('nan')):>17.2e}"
                  f"{row.get('max_abs_diff_features', float('nan')):>16.2e}{row['warmup_s']:>11.1f}", flush=True)
    return results


if __name__ == "__main__":
    main()
