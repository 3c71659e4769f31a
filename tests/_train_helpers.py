"""Helpers for the training tests: a tiny fake cache and a tiny config that trains in seconds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from _cache_helpers import write_fake_cache

__all__ = ["make_cache", "tiny_raw_config", "write_config", "run_cli"]


def make_cache(root: Path, *, patients: int = 12, seed: int = 0) -> Path:
    """A labeled fake ingest cache (32 x 32 slices, 6-10 slices per volume)."""
    cache = Path(root) / "cache"
    write_fake_cache(cache, patients=patients, size=32, slices=(6, 10), seed=seed)
    return cache


def tiny_raw_config(cache: Path, root: Path, **sections: Any) -> dict[str, Any]:
    """A raw config dict: width-4 CNN, 16-unit BiLSTM, a few samples per stage, no W&B."""
    raw: dict[str, Any] = {
        "experiment": "tiny",
        "seed": 0,
        "data": {"cache_dir": str(cache), "split_fractions": [0.4, 0.3, 0.3]},
        "model": {
            "encoder": "patel_cnn",
            "encoder_args": {"width": 4, "feature_dim": 32, "dropout": 0.0},
            "head": "bilstm",
            "head_args": {"hidden": 16},
        },
        "stages": {
            "slice": {"batch_size": 10, "samples_per_epoch": 40, "max_epochs": 1},
            "sequence": {"samples_per_epoch": 6, "max_epochs": 1},
            "finetune": {"samples_per_epoch": 6, "max_epochs": 1},
            "direct": {"samples_per_epoch": 6, "max_epochs": 1},
        },
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
        "tracking": {"mode": "disabled"},
        "run": {"root": str(Path(root) / "runs")},
    }
    for name, values in sections.items():
        raw.setdefault(name, {})
        if isinstance(values, dict):
            for k, v in values.items():
                if isinstance(v, dict) and isinstance(raw[name].get(k), dict):
                    raw[name][k] = {**raw[name][k], **v}
                else:
                    raw[name][k] = v
        else:
            raw[name] = values
    return raw


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_cli(*argv: str) -> int:
    from ich3d.cli.main import main

    return main(list(argv))


def read_finished_offline_run(folder: Path, summary_key: str, timeout: float = 30.0) -> dict:
    """An offline W&B run read back once ``summary_key`` is in its summary (wandb-core may
    still be writing the run file when ``finish()`` returns), waiting up to ``timeout`` s."""
    import time

    from ich3d.tracking.offline import read_offline_run

    deadline = time.monotonic() + timeout
    while summary_key not in (logged := read_offline_run(folder))["summary"] and time.monotonic() < deadline:
        time.sleep(0.2)
    return logged


def offline_table(folder: Path, name: str) -> dict:
    """The JSON of the W&B table ``<prefix>/<name>`` an offline run logged (``media/table/<name>_*.table.json``)."""
    import json

    (path,) = folder.rglob(f"{name}_*.table.json")
    return json.loads(path.read_text())


def row_keys(path: str | Path) -> Any:
    """Each row of a stage's ``metrics.csv`` as (step, the metrics it holds), counted."""
    import collections

    import pandas as pd

    frame = pd.read_csv(path)
    keys: collections.Counter = collections.Counter()
    for _, row in frame.iterrows():
        names = tuple(sorted(k for k, v in row.items() if k != "step" and pd.notna(v)))
        keys[(int(row["step"]), names)] += 1
    return keys


@contextlib.contextmanager
def crash_after_step(monkeypatch: Any, step: int) -> Iterator[None]:
    """Inside the block every trainer ich3d builds raises ``RuntimeError("node lost")`` after
    ``step`` (no checkpoint of its own: a resume is from ``last.ckpt``); restored afterwards."""
    import pytorch_lightning as pl

    import ich3d.training.trainer as trainer_lib

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == step:
                raise RuntimeError("node lost")

    real = trainer_lib.build_trainer

    def build(*args: Any, **kwargs: Any) -> Any:
        trainer = real(*args, **kwargs)
        trainer.callbacks.append(Crash())
        return trainer

    monkeypatch.setattr(trainer_lib, "build_trainer", build)
    try:
        yield
    finally:
        monkeypatch.setattr(trainer_lib, "build_trainer", real)
