"""Training throughput: Lightning stages vs a bare PyTorch loop over the same model and data.

Run from the repository root::

    python -m benchmarks.bench_train [--patients 16] [--size 128] [--samples 200]

Writes a small synthetic dataset (synth + ingest) to a temporary folder, then for
stage 1 (slices/s), stage 2 (frozen CNN, volumes/s) and stage 3 (end to end,
volumes/s) times one training epoch of ``samples`` items through ``Trainer.fit``
(validation, checkpointing and logging off) and through a hand-written loop
(same DataLoader, model, optimizer and loss). Each is run once to warm up and
then timed; the ratio ``lightning / bare`` shows what the framework costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _config(cache: Path, root: Path, samples: int):
    from ich3d.config import config_from_dict

    return config_from_dict(
        {
            "experiment": "bench",
            "data": {"cache_dir": str(cache), "split_fractions": [0.6, 0.2, 0.2]},
            "model": {
                "encoder_args": {"width": 8, "feature_dim": 64, "dropout": 0.5},
                "head_args": {"hidden": 32},
            },
            "stages": {
                "slice": {"samples_per_epoch": samples, "augment": False},
                "sequence": {"samples_per_epoch": samples // 4, "augment": False},
                "finetune": {"samples_per_epoch": samples // 4, "augment": False},
            },
            "trainer": {"accelerator": "cpu", "precision": "32-true"},
            "tracking": {"mode": "disabled"},
            "run": {"root": str(root / "runs")},
        }
    )


def _lightning_epoch(module, dm) -> float:
    """Seconds of the training epoch inside ``Trainer.fit`` (setup and teardown excluded)."""
    import pytorch_lightning as pl

    class _Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds = time.perf_counter() - self.start

    clock = _Clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    return clock.seconds


def _bare_epoch(module, dm, stage: str) -> float:
    dm.setup("fit")
    loader = dm.train_dataloader()
    model = module.model
    model.train()
    opt = module.configure_optimizers()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    for batch in loader:
        if stage == "slice":
            logits = model(batch["image"])
        else:
            logits = model(batch["volume"], batch["length"])
        loss = loss_fn(logits.float(), batch["label"].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=200, help="slices per stage-1 epoch (volumes: / 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)

    import logging
    import warnings

    from ich3d.data.ingest import run_ingest
    from ich3d.synth import NO_DEFECTS, generate
    from ich3d.training.runner import build_datamodule, build_module, quiet_lightning

    quiet_lightning()
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root / "synth", patients=args.patients, size=args.size, slices=(12, 20), defects=NO_DEFECTS, progress=False)
        run_ingest(root / "synth" / "stage_2_train", root / "synth" / "stage_2_train.csv", root / "cache", progress=False)
        print(f"data: {args.patients} patients, {args.size} px, synth + ingest {time.perf_counter() - t0:.1f} s")
        config = _config(root / "cache", root, args.samples)
        print(f"{'stage':<10}{'items':>7}{'lightning/s':>14}{'bare/s':>10}{'ratio':>8}")
        for stage in ("slice", "sequence", "finetune"):
            items = config.stages.get(stage).samples_per_epoch
            times = {}
            for kind in ("lightning", "bare", "lightning", "bare"):  # first pair warms up
                torch.manual_seed(0)
                module = build_module(config, stage)
                dm = build_datamodule(config, stage)
                dm.prepare_data()
                if kind == "lightning":
                    times[kind] = _lightning_epoch(module, dm)
                else:
                    times[kind] = _bare_epoch(module, dm, stage)
            unit = "slices" if stage == "slice" else "volumes"
            lit, bare = items / times["lightning"], items / times["bare"]
            print(f"{stage:<10}{items:>7}{lit:>11.1f} {unit[0]}{bare:>9.1f}{lit / bare:>8.2f}")


if __name__ == "__main__":
    main()
