"""Stage 2 with cached slice features vs recomputing the frozen CNN, at the paper's model size.

Run from the repository root::

    python -m benchmarks.bench_features [--patients 6] [--slices 60] [--size 512] [--samples 4]

Writes a small synthetic dataset (``--size`` px DICOM, so ``--size / 2`` px in the
cache; ``--slices`` slices, i.e. ``--slices / 2`` after the 2x2x2 filter), trains
stage 1 for a few steps, then runs stage 2 (``configs/patel2019.yaml``'s model:
``patel_cnn`` width 32, 512-d features, 2 x 512 BiLSTM; augmentation off) twice
from the same stage-1 CNN: recomputing the frozen CNN at every step, and on
cached features. Prints the training-epoch time of each (the cached one without
and with its one-off feature pass), their ratio, and both validation AUCs (the
same: the cached path is exact with augmentation off).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch


def _raw(cache: Path, root: Path, samples: int, size: int) -> dict:
    return {
        "experiment": "bench",
        "data": {"cache_dir": str(cache), "split_fractions": [0.5, 0.34, 0.16]},
        "model": {
            "encoder": "patel_cnn",
            "encoder_args": {"width": 32, "feature_dim": 512, "dropout": 0.5, "input_size": size},
            "head": "bilstm",
            "head_args": {"hidden": 512, "num_layers": 2},
        },
        "stages": {
            "slice": {"batch_size": 4, "samples_per_epoch": 8, "max_epochs": 1, "augment": False},
            "sequence": {"samples_per_epoch": samples, "max_epochs": 1, "augment": False},
        },
        "trainer": {"accelerator": "cpu", "precision": "32-true", "enable_progress_bar": False},
        "tracking": {"mode": "disabled"},
        "run": {"root": str(root / "runs")},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--slices", type=int, default=60, help="slices per series (halved by the depth filter)")
    parser.add_argument("--size", type=int, default=512, help="DICOM size (the cache holds size / 2)")
    parser.add_argument("--samples", type=int, default=4, help="stage-2 volumes per epoch")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import pytorch_lightning as pl
    import yaml

    from ich3d.cli.main import main as cli
    from ich3d.data.ingest import run_ingest
    from ich3d.synth import NO_DEFECTS, generate
    from ich3d.training.runner import quiet_lightning

    quiet_lightning()
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning_fabric", "ich3d"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    epoch_seconds: dict[str, float] = {}

    class _Clock(pl.Callback):  # the training epoch inside Trainer.fit
        def __init__(self, name: str) -> None:
            self.name = name

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epoch_seconds[self.name] = time.perf_counter() - self.start

    import ich3d.training.runner as runner

    build_trainer = runner.build_trainer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(
            root / "synth", patients=args.patients, size=args.size, slices=(args.slices, args.slices),
            defects=NO_DEFECTS, progress=False,
        )
        run_ingest(root / "synth" / "stage_2_train", root / "synth" / "stage_2_train.csv", root / "cache", progress=False)
        print(f"data: {args.patients} patients x {args.slices} slices at {args.size} px "
              f"(cache {args.size // 2} px), synth + ingest {time.perf_counter() - t0:.1f} s; torch threads {args.threads}")
        cfg = root / "bench.yaml"
        cfg.write_text(yaml.safe_dump(_raw(root / "cache", root, args.samples, args.size // 2)))
        assert cli(["train", str(cfg), "--stage", "slice", "--run-id", "a"]) == 0
        run_a = root / "runs" / "bench" / "a"
        run_b = root / "runs" / "bench" / "b"
        (run_b / "slice").mkdir(parents=True)
        for name in ("best.ckpt", "last.ckpt", "result.json"):
            (run_b / "slice" / name).write_bytes((run_a / "slice" / name).read_bytes())
        (run_b / "config.yaml").write_text((run_a / "config.yaml").read_text())

        results = {}
        for name, run_id, extra in (("recompute", "b", ["stages.sequence.cached_features=false"]), ("cached", "a", [])):

            def timed_trainer(config, stage, run, loggers=None, _name=name):
                trainer = build_trainer(config, stage, run, loggers)
                trainer.callbacks.append(_Clock(_name))
                return trainer

            runner.build_trainer = timed_trainer
            t0 = time.perf_counter()
            assert cli(["train", str(cfg), "--stage", "sequence", "--run-id", run_id, *extra]) == 0
            total = time.perf_counter() - t0
            runner.build_trainer = build_trainer
            result = json.loads((root / "runs" / "bench" / run_id / "sequence" / "result.json").read_text())
            results[name] = (total, result["best_val_auc"])
        feature_pass = results["cached"][0] - results["recompute"][0] + epoch_seconds["recompute"] - epoch_seconds["cached"]
        rec, cac = epoch_seconds["recompute"], epoch_seconds["cached"]
        print(f"{'stage 2, ' + str(args.samples) + ' volumes/epoch':<34}{'epoch s':>9}{'val AUC':>9}")
        print(f"{'recompute the frozen CNN':<34}{rec:>9.2f}{results['recompute'][1]:>9.4f}")
        print(f"{'cached features':<34}{cac:>9.2f}{results['cached'][1]:>9.4f}")
        print(f"epoch ratio recompute / cached: {rec / cac:.1f}x (target >= 20x)")
        print(f"one-off feature pass (train + val volumes), estimated: {feature_pass:.1f} s; "
              f"whole stage-2 command: recompute {results['recompute'][0]:.1f} s, cached {results['cached'][0]:.1f} s")


if __name__ == "__main__":
    main()
