"""Throughput and memory of every stage at the paper's size, for one GPU (runs small on a CPU too).

Run from the repository root::

    python -m benchmarks.bench_gpu                     # GPU: about 3-5 minutes; writes bench_gpu.json
    python -m benchmarks.bench_gpu --device cpu --size 64 --width 8 --slices 8   # a small CPU run

Model: ``configs/patel2019.yaml``'s (``patel_cnn`` width 32, 512-d features,
2 x 512 BiLSTM) on ``--size`` px slices (256: the 2x2-filtered 512 px CT) and
volumes of ``--slices`` slices after the 2x2x2 filter (30). For each row the
step is run ``--warmup`` times, then timed over ``--steps`` steps
(``torch.cuda.synchronize`` around the clock on a GPU):

* stage 1: slice-CNN training step on a batch of ``--batch`` slices (slices/s);
* stage 2: frozen CNN + BiLSTM step recomputing the CNN, and the head step on
  cached features (:mod:`ich3d.data.features`) (volumes/s);
* stage 3: end-to-end step, without and with gradient checkpointing per
  ``--chunk`` slices (volumes/s);
* inference: ms per volume (slice CNN + BiLSTM);
* loader: items/s the DataLoader delivers (windowed, augmented slices and
  volumes of a small synthetic cache) with each of ``--workers`` (0, 2, 8) workers.

Each compute row is measured in fp32 and bf16 autocast, eager, ``channels_last``
and ``channels_last`` + ``torch.compile`` (``--compile auto``: on a GPU only);
peak GPU memory is ``torch.cuda.max_memory_allocated`` of that row. Prints the
table and writes it as JSON (``--out``). Nothing is refused: bf16 runs under
CPU autocast on a CPU, and a variant that fails prints its error in its row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _autocast(dev: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _time(step: Callable[[], Any], dev: torch.device, warmup: int, steps: int) -> tuple[float, float | None]:
    """Seconds per step and peak GPU MiB (None on a CPU)."""
    for _ in range(warmup):
        step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return seconds, peak


def _models(args: argparse.Namespace, variant: str, dev: torch.device, checkpoint: bool = False):
    from ich3d.models.speed import speed_up
    from ich3d.models.volume import build_slice_classifier, build_volume_model

    torch.manual_seed(0)
    enc = {"name": "patel_cnn", "in_channels": 3, "width": args.width, "feature_dim": args.feature_dim,
           "input_size": args.size}
    head = {"name": "bilstm", "hidden": args.hidden, "num_layers": 2}
    volume = build_volume_model(enc, head, slice_chunk=args.chunk if checkpoint else None, checkpoint_chunks=checkpoint)
    slice_model = build_slice_classifier(enc)
    opts = {"channels_last": variant != "eager", "compile": variant == "channels_last+compile"}
    return speed_up(slice_model.to(dev), **opts), speed_up(volume.to(dev), **opts)


def _measure(args: argparse.Namespace, dev: torch.device, precision: str, variant: str, inputs: dict) -> list[dict]:
    """The compute rows of one precision and variant."""
    rows: list[dict[str, Any]] = []
    bce = torch.nn.BCEWithLogitsLoss()
    slices, slice_y, vol, vol_y, lengths = (inputs[k] for k in ("slices", "slice_y", "vol", "vol_y", "lengths"))

    def row(stage: str, what: str, unit: str, items: int, fn: Callable[[], Any]) -> None:
        entry = {"stage": stage, "what": what, "precision": precision, "variant": variant, "unit": unit}
        try:
            sec, peak = _time(fn, dev, args.warmup, args.steps)
            entry.update(rate=items / sec, ms=sec * 1e3, peak_mib=peak)
        except Exception as exc:  # a variant the machine cannot run: say so, go on
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        rows.append(entry)
        print(_fmt(entry), flush=True)

    slice_model, frozen = _models(args, variant, dev)
    opt1 = torch.optim.Adam(slice_model.parameters(), lr=1e-4)

    def stage1() -> None:
        with _autocast(dev, precision):
            loss = bce(slice_model(slices).float(), slice_y)
        opt1.zero_grad(set_to_none=True)
        loss.backward()
        opt1.step()

    row("1 slice", "train step", "slices/s", args.batch, stage1)

    frozen.freeze_encoder().train()
    opt2 = torch.optim.RMSprop([p for p in frozen.parameters() if p.requires_grad], lr=1e-3)

    def stage2() -> None:
        with _autocast(dev, precision):
            loss = bce(frozen(vol, lengths).float(), vol_y)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()

    row("2 sequence", "recompute frozen CNN", "volumes/s", 1, stage2)
    with torch.no_grad(), _autocast(dev, precision):
        feats = frozen.encode(vol, lengths).float()

    def stage2_cached() -> None:
        loss = bce(frozen.head_logits(feats, lengths).float(), vol_y)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()

    row("2 sequence", "cached features", "volumes/s", 1, stage2_cached)

    def inference() -> None:
        with torch.no_grad(), _autocast(dev, precision):
            frozen(vol, lengths)

    row("inference", "CNN + BiLSTM per volume", "volumes/s", 1, inference)
    for ckpt in (False, True):
        _, model = _models(args, variant, dev, checkpoint=ckpt)
        model.train()
        opt3 = torch.optim.RMSprop(model.parameters(), lr=1e-4)

        def stage3(model: Any = model, opt3: Any = opt3) -> None:
            with _autocast(dev, precision):
                loss = bce(model(vol, lengths).float(), vol_y)
            opt3.zero_grad(set_to_none=True)
            loss.backward()
            opt3.step()

        what = f"end to end, checkpointing per {args.chunk}" if ckpt else "end to end"
        row("3 finetune", what, "volumes/s", 1, stage3)
    return rows


def _compute_rows(args: argparse.Namespace, dev: torch.device, variants: list[str]) -> list[dict[str, Any]]:
    inputs = {
        "slices": torch.rand(args.batch, 3, args.size, args.size, device=dev),
        "slice_y": (torch.rand(args.batch, device=dev) > 0.5).float(),
        "vol": torch.rand(1, args.slices, 3, args.size, args.size, device=dev),
        "vol_y": torch.ones(1, device=dev),
        "lengths": torch.tensor([args.slices], device=dev),
    }
    rows = []
    for precision in ("fp32", "bf16"):
        for variant in variants:
            rows += _measure(args, dev, precision, variant, inputs)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _loader_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ich3d.data.datamodule import SliceDataModule, VolumeDataModule
    from ich3d.data.ingest import run_ingest
    from ich3d.synth import NO_DEFECTS, generate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "synth", patients=args.loader_patients, size=2 * args.size,
                 slices=(2 * args.slices, 2 * args.slices), defects=NO_DEFECTS, progress=False)
        run_ingest(root / "synth" / "stage_2_train", root / "synth" / "stage_2_train.csv", root / "cache", progress=False)
        for workers in dict.fromkeys(args.workers):
            for kind in ("slices", "volumes"):
                common = {"split_fractions": (0.6, 0.2, 0.2), "num_workers": workers, "augment": True,
                          "samples_per_epoch": args.loader_items, "pin_memory": torch.cuda.is_available()}
                if kind == "slices":
                    dm = SliceDataModule(root / "cache", batch_size=args.batch, **common)
                else:
                    dm = VolumeDataModule(root / "cache", batch_size=1, **common)
                dm.prepare_data()
                dm.setup("fit")
                loader = dm.train_dataloader()
                t0 = time.perf_counter()
                n = 0
                for batch in loader:
                    n += int(batch["label"].numel())
                sec = time.perf_counter() - t0
                entry = {"stage": "loader", "what": f"augmented {kind}, {workers} workers", "precision": "-",
                         "variant": "-", "unit": f"{kind}/s", "rate": n / sec, "ms": sec / max(n, 1) * 1e3,
                         "peak_mib": None}
                rows.append(entry)
                print(_fmt(entry), flush=True)
    return rows


def _fmt(r: dict[str, Any]) -> str:
    head = f"{r['stage']:<11}{r['what']:<34}{r['precision']:<6}{r['variant']:<23}"
    if "error" in r:
        return head + f"  failed: {r['error']}"
    peak = f"{r['peak_mib']:>9.0f}" if r.get("peak_mib") is not None else f"{'-':>9}"
    return head + f"{r['rate']:>10.2f} {r['unit']:<10}{r['ms']:>9.1f}{peak}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--size", type=int, default=256, help="slice side in px (default 256)")
    parser.add_argument("--slices", type=int, default=30, help="slices per volume after the depth filter")
    parser.add_argument("--width", type=int, default=32, help="patel_cnn first-layer width")
    parser.add_argument("--feature-dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=25, help="slices per stage-1 step")
    parser.add_argument("--chunk", type=int, default=4, help="slices per checkpointed chunk")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8], help="DataLoader worker counts")
    parser.add_argument("--loader-patients", type=int, default=6)
    parser.add_argument("--loader-items", type=int, default=200, help="items per loader measurement")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader rows")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    compile_on = args.compile == "on" or (args.compile == "auto" and dev.type == "cuda")
    variants = ["eager", "channels_last"] + (["channels_last+compile"] if compile_on else [])
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"ich3d bench_gpu: {hw}, torch {torch.__version__}, {args.size} px, {args.slices} slices/volume, "
          f"patel_cnn width {args.width}, 2 x {args.hidden} BiLSTM, {args.steps} timed steps")
    print(f"{'stage':<11}{'what':<34}{'prec':<6}{'variant':<23}{'rate':>10} {'unit':<10}{'ms/step':>9}{'peak MiB':>9}")
    rows = _compute_rows(args, dev, variants)
    if not args.no_loader:
        rows += _loader_rows(args)
    result = {"device": str(dev), "hardware": hw, "torch": torch.__version__, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}
    ratios = {}
    for prec in ("fp32", "bf16"):
        def rate(stage: str, what: str, variant: str = "eager", prec: str = prec) -> float | None:
            return next((r.get("rate") for r in rows if (r["stage"], r["what"], r["precision"], r["variant"])
                         == (stage, what, prec, variant)), None)
        rec, cac = rate("2 sequence", "recompute frozen CNN"), rate("2 sequence", "cached features")
        inf_e, inf_c = rate("inference", "CNN + BiLSTM per volume"), rate("inference", "CNN + BiLSTM per volume", variants[-1])
        if rec and cac:
            ratios[f"{prec} stage-2 cached / recompute"] = cac / rec
        if inf_e and inf_c:
            ratios[f"{prec} inference time {variants[-1]} / eager"] = inf_e / inf_c
    result["ratios"] = ratios
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
