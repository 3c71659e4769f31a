"""Training throughput: Lightning stages vs a bare PyTorch loop over the same model and data.

Run from the repository root::

    python -m benchmarks.bench_train [--patients 16] [--size 128] [--samples 600] [--repeat 3]
    python -m benchmarks.bench_train --profile cached     # where the Lightning step's time goes

Writes a small synthetic dataset (synth + ingest) to a temporary folder, then for
stage 1 (slices/s), stage 2 recomputing the frozen CNN and stage 2 on cached
slice features (:mod:`ich3d.data.features`, volumes/s) and stage 3 (end to end,
volumes/s) times one training epoch of ``samples`` items (volumes: ``samples / 4``;
on cached features, whose steps are short, ``samples``)
four ways, over the same DataLoader, model, optimizer and loss:

* ``ich3d``: the Trainer ``ich3d train`` builds (:func:`ich3d.training.runner.build_trainer`:
  its callbacks, checkpoint callbacks, the CSV metrics logger, ``log_every_n_steps``;
  validation off, progress bar as ``--progress-bar``) around the stage's module;
* ``plain``: a ``pl.Trainer`` without logger, checkpoints or progress bar, same module;
* ``floor``: that plain Trainer around a module whose ``training_step`` only computes
  the loss (no logging, no metric, no other hook): Lightning's own per-step cost,
  which no LightningModule goes below;
* ``bare``: a hand-written loop.

The epoch is clocked from ``on_train_epoch_start`` to ``on_train_epoch_end`` (setup,
the feature pass and teardown excluded), by the wall clock or with ``--clock cpu``
by this process's CPU time (less sensitive to other jobs on a shared machine;
use it with ``--threads 1``). After one untimed warm-up round the four run in
turn ``--repeat`` times (interleaved, so a load change hits all of them); the
printed rates are medians and the ratios the medians of the per-round ratios
``bare time / Lightning time``. ``fixed ms`` is the per-step cost the ich3d
Trainer adds, ``(t_ich3d - t_bare) / steps``, ``floor ms`` the same for the floor,
against ``bare ms``, the bare step.

``--profile ROW`` (``slice``, ``sequence``, ``cached``, ``finetune``) runs that row's
ich3d epoch once more under ``cProfile`` and prints the functions with the most
cumulative time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: (row name, stage, cached features)
ROWS = (
    ("slice", "slice", False),
    ("sequence", "sequence", False),
    ("cached", "sequence", True),
    ("finetune", "finetune", False),
)
KINDS = ("ich3d", "plain", "floor", "bare")
#: the clock of the epochs: wall time, or with ``--clock cpu`` this process's CPU time
CLOCK = [time.perf_counter]


def _config(cache: Path, root: Path, samples: int, progress_bar: bool, width: int = 8, feature_dim: int = 64,
            hidden: int = 32):
    from ich3d.config import config_from_dict

    return config_from_dict(
        {
            "experiment": "bench",
            "data": {"cache_dir": str(cache), "split_fractions": [0.6, 0.2, 0.2]},
            "model": {
                "encoder_args": {"width": width, "feature_dim": feature_dim, "dropout": 0.5},
                "head_args": {"hidden": hidden},
            },
            "stages": {
                "slice": {"samples_per_epoch": samples, "augment": False, "max_epochs": 1},
                "sequence": {"samples_per_epoch": samples // 4, "augment": False, "max_epochs": 1},
                "finetune": {"samples_per_epoch": samples // 4, "augment": False, "max_epochs": 1},
            },
            "trainer": {
                "accelerator": "cpu",
                "precision": "32-true",
                "limit_val_batches": 0,
                "enable_progress_bar": progress_bar,
            },
            "tracking": {"mode": "disabled"},
            "run": {"root": str(root / "runs")},
        }
    )


class _Epoch:
    """Builds the module and DataModule of one row, fresh for each measurement."""

    def __init__(self, config: Any, root: Path, stage: str, cached: bool) -> None:
        self.config, self.root, self.stage, self.cached = config, root, stage, cached
        self.count = 0

    def build(self) -> tuple[Any, Any, Any]:
        from ich3d.runs.run_dir import RunDir
        from ich3d.training.runner import build_datamodule, build_module
        from ich3d.training.stage_run import StageRun, feature_datamodule

        self.count += 1
        run = RunDir(self.root / "runs" / f"{self.stage}{int(self.cached)}-{self.count}")
        torch.manual_seed(0)
        module = build_module(self.config, self.stage)
        dm = build_datamodule(self.config, self.stage)
        if self.cached:  # the same weights every time: the store is built once and reused
            store = RunDir(self.root / "features")
            dm = feature_datamodule(self.config, StageRun.resolve(self.config, store, self.stage), module, dm, None)
        dm.prepare_data()
        return module, dm, run


def _clock():
    import pytorch_lightning as pl

    class _Clock(pl.Callback):
        seconds = float("nan")
        steps = 0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = CLOCK[0]()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds = CLOCK[0]() - self.start
            self.steps = trainer.global_step

    return _Clock()


def _ich3d_epoch(epoch: _Epoch, profile: Any = None) -> tuple[float, int]:
    """Seconds and steps of the training epoch with the Trainer ``ich3d train`` builds."""
    from ich3d.tracking.loggers import build_loggers
    from ich3d.training.runner import build_trainer

    module, dm, run = epoch.build()
    loggers = build_loggers(epoch.config, run.path, epoch.stage)
    trainer = build_trainer(epoch.config, epoch.stage, run, loggers)
    clock = _clock()
    trainer.callbacks.append(clock)
    if profile is not None:
        trainer.callbacks.append(_Profile(profile))
    trainer.fit(module, datamodule=dm)
    return clock.seconds, clock.steps


def _Profile(profiler: Any):
    import pytorch_lightning as pl

    class _P(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            profiler.enable()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            profiler.disable()

    return _P()


def _fit_plain(module: Any, dm: Any) -> tuple[float, int]:
    """Seconds and steps of one training epoch of ``module`` in a ``pl.Trainer`` with nothing switched on."""
    import pytorch_lightning as pl

    clock = _clock()
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
    return clock.seconds, clock.steps


def _plain_epoch(epoch: _Epoch) -> tuple[float, int]:
    """Seconds and steps of the training epoch in a ``pl.Trainer`` with nothing switched on."""
    module, dm, _ = epoch.build()
    return _fit_plain(module, dm)


def _forward_loss(model: Any, batch: dict, stage: str, loss_fn: Any) -> torch.Tensor:
    """What the bare loop and the floor module compute per batch."""
    if stage == "slice":
        logits = model(batch["image"])
    elif "features" in batch:
        logits = model.head_logits(batch["features"], batch["length"])
    else:
        logits = model(batch["volume"], batch["length"])
    return loss_fn(logits.float(), batch["label"].float())


def _floor_epoch(epoch: _Epoch) -> tuple[float, int]:
    """Lightning's own floor: the plain Trainer around a module with a bare ``training_step``
    (no logging, no metrics, no other hook): what no LightningModule can go below."""
    import pytorch_lightning as pl

    module, dm, _ = epoch.build()
    stage = epoch.stage

    class _Floor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = module.model
            self.loss_fn = torch.nn.BCEWithLogitsLoss()

        def training_step(self, batch, batch_idx):
            return _forward_loss(self.model, batch, stage, self.loss_fn)

        def configure_optimizers(self):
            from ich3d.training.modules import build_optimizer

            return build_optimizer([p for p in self.parameters() if p.requires_grad], module.hparams["optimizer"])

    return _fit_plain(_Floor(), dm)


def _bare_epoch(epoch: _Epoch) -> tuple[float, int]:
    """The same epoch by hand: same DataLoader, model, optimizer, loss."""
    module, dm, _ = epoch.build()
    dm.setup("fit")
    loader = dm.train_dataloader()
    model = module.model
    model.train()  # a frozen encoder stays in eval mode (VolumeClassifier.train)
    opt = module.configure_optimizers()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steps = 0
    start = CLOCK[0]()
    for batch in loader:
        loss = _forward_loss(model, batch, epoch.stage, loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return CLOCK[0]() - start, steps


_RUN = {"ich3d": _ich3d_epoch, "plain": _plain_epoch, "floor": _floor_epoch, "bare": _bare_epoch}


def measure(epoch: _Epoch, repeat: int) -> dict[str, Any]:
    """One warm-up round, then ``repeat`` interleaved rounds of the three kinds."""
    seconds: dict[str, list[float]] = {k: [] for k in KINDS}
    steps = {}
    for r in range(repeat + 1):
        for kind in KINDS:
            sec, n = _RUN[kind](epoch)
            steps[kind] = n
            if r:
                seconds[kind].append(sec)
    if len(set(steps.values())) != 1:
        raise RuntimeError(f"the three loops ran different numbers of steps: {steps}")
    n = steps["bare"]
    bare = seconds["bare"]
    out: dict[str, Any] = {"steps": n, "seconds": seconds}
    for kind in ("ich3d", "plain", "floor"):
        out[f"ratio_{kind}"] = statistics.median(b / t for b, t in zip(bare, seconds[kind], strict=True))
    for kind in ("ich3d", "floor"):
        out[f"{kind}_fixed_ms"] = 1e3 * statistics.median(
            (t - b) / n for b, t in zip(bare, seconds[kind], strict=True)
        )
    out["bare_ms"] = 1e3 * statistics.median(bare) / n
    return out


def profile_row(epoch: _Epoch, top: int = 60) -> None:
    """The ich3d epoch of a row under cProfile: functions by cumulative time, per step."""
    import cProfile
    import io
    import pstats

    _ich3d_epoch(epoch)  # warm
    profiler = cProfile.Profile()
    _, steps = _ich3d_epoch(epoch, profile=profiler)
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats("cumulative").print_stats(top)
    print(f"cProfile of one ich3d epoch ({steps} steps; divide the times by it for per-step figures)")
    print(buf.getvalue())


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=600, help="slices per stage-1 epoch (volumes: / 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--width", type=int, default=8, help="patel_cnn first-layer width")
    parser.add_argument("--feature-dim", type=int, default=64, help="slice feature size")
    parser.add_argument("--hidden", type=int, default=32, help="BiLSTM units (the paper: 512, with --feature-dim 512)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--rows", nargs="+", choices=[r[0] for r in ROWS], default=[r[0] for r in ROWS])
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (less sensitive to other jobs; use with --threads 1)")
    parser.add_argument("--progress-bar", action="store_true", help="the ich3d Trainer with its progress bar")
    parser.add_argument("--profile", choices=[r[0] for r in ROWS], default=None,
                        help="print a cProfile of this row's ich3d epoch instead of the table")
    args = parser.parse_args(argv)

    import logging
    import warnings

    from ich3d.data.ingest import run_ingest
    from ich3d.synth import NO_DEFECTS, generate
    from ich3d.training.runner import quiet_lightning

    quiet_lightning()
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning_fabric", "ich3d"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate(root / "synth", patients=args.patients, size=args.size, slices=(12, 20), defects=NO_DEFECTS, progress=False)
        run_ingest(root / "synth" / "stage_2_train", root / "synth" / "stage_2_train.csv", root / "cache", progress=False)
        print(f"data: {args.patients} patients, {args.size} px, synth + ingest {time.perf_counter() - t0:.1f} s; "
              f"patel_cnn width {args.width}, {args.feature_dim}-d features, {args.hidden}-unit BiLSTM; "
              f"torch threads {args.threads}, {args.repeat} rounds, {args.clock} clock")
        config = _config(root / "cache", root, args.samples, args.progress_bar, args.width, args.feature_dim,
                         args.hidden)
        # the cached row's steps are short: 4x the volumes (``samples``) for a steadier clock
        config_cached = _config(root / "cache", root, 4 * args.samples, args.progress_bar, args.width,
                                args.feature_dim, args.hidden)
        rows = {name: (stage, cached) for name, stage, cached in ROWS}
        if args.profile:
            stage, cached = rows[args.profile]
            profile_row(_Epoch(config_cached if cached else config, root, stage, cached))
            return results
        print(f"{'stage':<10}{'steps':>6}{'ich3d/s':>9}{'plain/s':>9}{'floor/s':>9}{'bare/s':>9}"
              f"{'ich3d/bare':>11}{'plain/bare':>11}{'floor/bare':>11}{'fixed ms':>9}{'floor ms':>9}{'bare ms':>9}")
        for name in args.rows:
            stage, cached = rows[name]
            cfg = config_cached if cached else config
            items = cfg.stages.get(stage).samples_per_epoch
            res = measure(_Epoch(cfg, root, stage, cached), args.repeat)
            results[name] = res
            rate = {k: items / statistics.median(res["seconds"][k]) for k in KINDS}
            print(f"{name:<10}{res['steps']:>6}{rate['ich3d']:>9.1f}{rate['plain']:>9.1f}{rate['floor']:>9.1f}"
                  f"{rate['bare']:>9.1f}{res['ratio_ich3d']:>11.2f}{res['ratio_plain']:>11.2f}"
                  f"{res['ratio_floor']:>11.2f}{res['ich3d_fixed_ms']:>9.2f}{res['floor_fixed_ms']:>9.2f}"
                  f"{res['bare_ms']:>9.2f}", flush=True)
    return results


if __name__ == "__main__":
    main()
