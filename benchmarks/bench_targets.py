"""Six outputs vs one: the stage-1 training step time of ``data.targets: all`` against the binary default.

Run from the repository root::

    python -m benchmarks.bench_targets [--patients 12] [--size 256] [--samples 200] [--repeats 3]

Writes a small synthetic dataset (synth + ingest) to a temporary folder, then
times one stage-1 training epoch of ``samples`` slices through ``Trainer.fit``
(validation, checkpointing and logging off) with the binary default (one logit,
plain BCE) and with the six RSNA labels (six logits, the challenge-weighted BCE),
same model, data and seed, alternating the two ``repeats`` times after a warm-up
pair (the order alternating between repeats); it prints the fastest and the
median step time of each and the ratios ``six / one`` (the issue's bound: at most
1.05). Then it times single training steps of the two modules alternating step
by step on the same batches, which cancels the drift of a shared machine's load;
other processes only ever add time, so the fastest steps compare best.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _config(cache: Path, root: Path, samples: int, batch: int, targets: str | None):
    from ich3d.config import config_from_dict

    return config_from_dict(
        {
            "experiment": "bench",
            "data": {"cache_dir": str(cache), "split_fractions": [0.6, 0.2, 0.2], "targets": targets},
            "model": {"encoder_args": {"width": 8, "feature_dim": 128, "dropout": 0.5}},
            "stages": {"slice": {"samples_per_epoch": samples, "batch_size": batch, "augment": False}},
            "trainer": {"accelerator": "cpu", "precision": "32-true"},
            "tracking": {"mode": "disabled"},
            "run": {"root": str(root / "runs")},
        }
    )


def _epoch_seconds(config) -> tuple[float, int]:
    """Seconds of one stage-1 training epoch inside ``Trainer.fit`` and its step count."""
    from benchmarks.bench_train import _fit_plain
    from ich3d.training.runner import build_datamodule, build_module

    torch.manual_seed(0)
    module = build_module(config, "slice")
    dm = build_datamodule(config, "slice")
    dm.prepare_data()
    return _fit_plain(module, dm)


def _interleaved_steps(configs: dict, steps: int) -> dict[str, list[float]]:
    """Seconds of single training steps (forward, weighted BCE, backward, Adam), the
    configs' modules alternating step by step on the same batches (load drift cancels)."""
    from ich3d.training.runner import build_datamodule, build_module

    mods, batches = {}, {}
    for name, config in configs.items():
        torch.manual_seed(0)
        module = build_module(config, "slice")
        dm = build_datamodule(config, "slice")
        dm.prepare_data()
        dm.setup("fit")
        mods[name] = (module, module.configure_optimizers())
        batches[name] = list(dm.train_dataloader())
    out: dict[str, list[float]] = {k: [] for k in configs}
    for i in range(steps + 2):  # two warm-up steps each
        for name, (module, opt) in mods.items():
            batch = batches[name][i % len(batches[name])]
            module.train()
            t0 = time.perf_counter()
            logits, y = module._outputs(batch)
            loss = module._batch_loss(batch, logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 2:
                out[name].append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=200, help="slices per epoch")
    parser.add_argument("--batch", type=int, default=25, help="slices per step (the method's 25)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="interleaved single steps per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)

    import logging
    import warnings

    from ich3d.data.ingest import run_ingest
    from ich3d.synth import NO_DEFECTS, generate
    from ich3d.training.runner import quiet_lightning

    quiet_lightning()
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root / "synth", patients=args.patients, size=args.size, slices=(12, 20), defects=NO_DEFECTS,
                 progress=False)
        run_ingest(root / "synth" / "stage_2_train", root / "synth" / "stage_2_train.csv", root / "cache",
                   progress=False)
        print(f"data: {args.patients} patients, {args.size} px (cache {args.size // 2} px), "
              f"synth + ingest {time.perf_counter() - t0:.1f} s; {args.threads} threads")
        configs = {
            "one (any)": _config(root / "cache", root, args.samples, args.batch, None),
            "six (all)": _config(root / "cache", root, args.samples, args.batch, "all"),
        }
        steps: dict[str, list[float]] = {k: [] for k in configs}
        for rep in range(args.repeats + 1):  # the first pair warms up; the order alternates
            for name, config in (list(configs.items()) if rep % 2 == 0 else list(configs.items())[::-1]):
                seconds, n = _epoch_seconds(config)
                if rep:
                    steps[name].append(seconds / max(n, 1))
        print(f"{'targets':<12}{'min ms/step':>13}{'median':>9}")
        best = {k: min(v) for k, v in steps.items()}
        med = {k: statistics.median(v) for k, v in steps.items()}
        for k in steps:
            print(f"{k:<12}{1000 * best[k]:>13.2f}{1000 * med[k]:>9.2f}")
        print(f"ratio six / one: {best['six (all)'] / best['one (any)']:.3f} on the fastest epochs, "
              f"{med['six (all)'] / med['one (any)']:.3f} on the medians (bound 1.05)")
        inter = _interleaved_steps(configs, args.steps)
        print(f"interleaved single steps ({args.steps} each, same batches, alternating):")
        for k, v in inter.items():
            print(f"{k:<12}{1000 * min(v):>13.2f}{1000 * statistics.median(v):>9.2f}")
        ratio_min = min(inter["six (all)"]) / min(inter["one (any)"])
        ratio_med = statistics.median(inter["six (all)"]) / statistics.median(inter["one (any)"])
        print(f"ratio six / one: {ratio_min:.3f} fastest, {ratio_med:.3f} median (bound 1.05)")


if __name__ == "__main__":
    main()
