"""A tiny run directory for the evaluate / predict tests, built without training.

Synthetic RSNA-format DICOM (64 x 64 slices, 8-12 slices per series, one series
per patient) is ingested with labels into a cache; a run directory gets the
config and, per stage, a ``best.ckpt`` in the trainer's checkpoint format holding
a freshly (seeded) initialised tiny model (width-2 Patel CNN, 16 features, an
8-unit BiLSTM) with the inputs it was "trained" on recorded (as the trainer's
callback records them), and the stage's ``result.json`` (a finished stage).
``load_volume_model`` / ``load_slice_model`` read them like trained checkpoints.
``make_tiny_cache`` makes a second labelled cache (another seed), e.g. an
external test set. The session builds one run (``tests/conftest.py``'s
``tiny_run``, every stage of :data:`TINY_STAGES`); a test that evaluates,
predicts or edits it works on :func:`copy_tiny_run`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["TinyRun", "make_tiny_run", "make_tiny_cache", "copy_tiny_run", "tiny_raw_config", "plain", "TINY_STAGES"]


#: the stages of the session's tiny run (``tests/conftest.py``)
TINY_STAGES: tuple[str, ...] = ("slice", "sequence", "finetune", "direct")


@dataclass
class TinyRun:
    root: Path
    images: Path  # folder of DICOM files
    labels_csv: Path
    cache: Path  # labeled ingest cache of the run
    run_dir: Path


def plain(obj: Any) -> Any:
    """Lightning ``AttributeDict`` and tuples -> plain dicts/lists (``weights_only`` loadable)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def tiny_raw_config(cache: Path, root: Path, tracking: str = "disabled", **evaluation: Any) -> dict[str, Any]:
    return {
        "experiment": "tiny",
        "seed": 0,
        "data": {"cache_dir": str(cache), "split_fractions": [0.4, 0.3, 0.3]},
        "model": {
            "encoder": "patel_cnn",
            "encoder_args": {"width": 2, "feature_dim": 16, "dropout": 0.5},
            "head": "bilstm",
            "head_args": {"hidden": 8},
        },
        "evaluation": {"svm_cs": [0.01, 1.0], **evaluation},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
        "tracking": {"mode": tracking},
        "run": {"root": str(root / "runs")},
    }


def make_tiny_cache(
    root: Path, *, patients: int = 14, seed: int = 0, size: int = 64, slices: tuple[int, int] = (8, 12)
) -> Path:
    """Synthetic ``size`` x ``size`` DICOM (one series per patient) ingested with labels into ``root/cache``.

    Returns the cache folder; the DICOM is in ``root/synth``.
    """
    from ich3d.data.ingest import run_ingest
    from ich3d.synth import NO_DEFECTS, generate

    root = Path(root)
    synth = root / "synth"
    generate(synth, patients=patients, size=size, slices=slices, studies=(1, 1), seed=seed, defects=NO_DEFECTS,
             progress=False)
    cache = root / "cache"
    run_ingest(synth / "stage_2_train", synth / "stage_2_train.csv", cache, progress=False)
    return cache


def make_tiny_run(
    root: Path,
    *,
    stages: Sequence[str] = ("slice", "sequence", "finetune"),
    patients: int = 14,
    evaluation: Mapping[str, Any] | None = None,
    tracking: str = "disabled",
    unfinished: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
) -> TinyRun:
    """Synthetic DICOM, its labeled cache and a run directory with ``best.ckpt`` per stage.

    ``data`` overrides keys of the config's ``data`` section (``{"targets": "all"}``: six labels).

    Every stage gets its ``result.json`` except those in ``unfinished`` (a stage
    that crashed after writing a ``best.ckpt``).
    """
    from ich3d.config import config_from_dict, dump_config
    from ich3d.runs.inputs import input_signature
    from ich3d.runs.run_dir import RunDir
    from ich3d.training.runner import build_module

    root = Path(root)
    cache = make_tiny_cache(root, patients=patients)
    synth = root / "synth"
    images, labels = synth / "stage_2_train", synth / "stage_2_train.csv"
    raw = tiny_raw_config(cache, root, tracking, **dict(evaluation or {}))
    raw["data"].update(dict(data or {}))
    config = config_from_dict(raw)
    # not create_run_dir: it exports ICH3D_RUN_ID, which would leak into other tests
    run = RunDir(root / "runs" / "tiny" / "r1")
    run.path.mkdir(parents=True)
    dump_config(config, run.config_path)
    for i, stage in enumerate(stages):
        torch.manual_seed(100 + i)
        module = build_module(config, stage)
        path = run.best_ckpt(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state_dict": module.state_dict(),
                "hyper_parameters": plain(module.hparams),
                "ich3d": {"val_auc": 0.5, "epoch": 0, "inputs": input_signature(config.data)},
                "global_step": 0,
                "epoch": 0,
            },
            path,
        )
        if stage not in unfinished:
            run.write_result(stage, {"stage": stage, "best_val_auc": 0.5, "global_step": 0})
    return TinyRun(root=root, images=images, labels_csv=labels, cache=cache, run_dir=run.path)


def copy_tiny_run(
    tiny: TinyRun,
    dest: Path,
    *,
    stages: Sequence[str] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    tracking: str | None = None,
    unfinished: Sequence[str] = (),
    run_id: str = "r1",
) -> TinyRun:
    """A private copy of a tiny run's directory (the DICOM and the cache stay shared, read-only).

    Tests that evaluate, predict or edit a run work on a copy of the session's run
    (``tests/conftest.py``'s ``tiny_run``). Args: ``stages`` keeps only these stages'
    checkpoints; ``evaluation`` overrides keys of the config's ``evaluation`` section;
    ``tracking`` sets ``tracking.mode``; ``unfinished`` removes those stages'
    ``result.json`` (a stage that crashed after its ``best.ckpt``).
    """
    import shutil

    import yaml

    dest = Path(dest)
    run_dir = dest / "runs" / "tiny" / run_id
    shutil.copytree(tiny.run_dir, run_dir)
    for sub in run_dir.iterdir():
        if sub.is_dir() and (sub / "best.ckpt").is_file() and stages is not None and sub.name not in stages:
            shutil.rmtree(sub)
    for stage in unfinished:
        (run_dir / stage / "result.json").unlink()
    config_path = run_dir / "config.yaml"
    cfg = yaml.safe_load(config_path.read_text())
    cfg["run"]["root"] = str(dest / "runs")
    if evaluation:
        cfg["evaluation"] = {**cfg.get("evaluation", {}), **dict(evaluation)}
    if tracking is not None:
        cfg["tracking"]["mode"] = tracking
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return TinyRun(root=dest, images=tiny.images, labels_csv=tiny.labels_csv, cache=tiny.cache, run_dir=run_dir)
