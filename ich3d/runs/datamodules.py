"""DataModules of a run's config: ``data.*`` (and a stage's settings) -> the data layer's arguments.

:mod:`ich3d.data.datamodule` takes plain typed arguments and never reads a
config; this module translates a config's ``data`` section (cache, ingest,
windows, splits, loaders, labels) and optionally one stage's settings
(``batch_size``, ``samples_per_epoch``, ``augment``, ``val_samples``) into them.
Training (:mod:`ich3d.training.data`, by stage name) and evaluation (inference
on a run's cache or another, no stage settings) both build their DataModules here.

Public API::

    datamodule_kwargs(data, seed, stage=None, *, cache_dir=None) -> (cache_root, kwargs)
    slice_datamodule(config, cache_dir=None, *, settings=None, **overrides) -> SliceDataModule
    volume_datamodule(config, cache_dir=None, *, settings=None, **overrides) -> VolumeDataModule
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ich3d.config import Config, DataConfig, StageConfig
from ich3d.data.datamodule import SliceDataModule, VolumeDataModule
from ich3d.data.targets import resolve_targets
from ich3d.errors import UserError

__all__ = ["datamodule_kwargs", "slice_datamodule", "volume_datamodule"]


def datamodule_kwargs(
    data: DataConfig, seed: int, stage: StageConfig | None = None, *, cache_dir: str | Path | None = None
) -> tuple[str | Path, dict[str, Any]]:
    """The cache folder and the DataModule keywords of a config's ``data`` section.

    Args:
        data: the config's ``data`` section.
        seed: the experiment seed (training draws, augmentation).
        stage: the settings of the stage whose ``batch_size``, ``samples_per_epoch``,
            ``augment`` and ``val_samples`` apply; None for inference (the
            DataModule's defaults).
        cache_dir: another ingest cache (prediction, evaluation elsewhere); it is
            never re-ingested from ``data.images_dir``. Default ``data.cache_dir``
            (ingested from ``data.images_dir`` when that is set).

    Raises:
        UserError: no cache folder.
    """
    own_cache = cache_dir is None
    root = data.cache_dir if own_cache else cache_dir
    if root is None:
        raise UserError("config key 'data.cache_dir' is required (the ingest cache folder)")
    kwargs: dict[str, Any] = {
        "images_dir": data.images_dir if own_cache else None,
        "labels_csv": data.labels_csv if own_cache else None,
        "ingest_workers": data.ingest_workers,
        "min_slices": data.min_slices,
        "windows": list(data.windows),
        "split_fractions": tuple(data.split_fractions),
        "split_seed": data.split_seed,
        "splits_file": data.splits_file,
        "folds": data.folds,
        "fold": data.fold,
        "num_workers": data.num_workers,
        "pin_memory": data.pin_memory,
        "persistent_workers": data.persistent_workers,
        "seed": seed,
        "label": data.label,
        "targets": resolve_targets(data.targets),
        "augment_on": data.augment_on,
        "context_slices": data.context_slices,
    }
    if stage is not None:
        kwargs.update(
            batch_size=stage.batch_size,
            samples_per_epoch=stage.samples_per_epoch,
            augment=stage.augment,
            val_samples=stage.val_samples,
        )
    return root, kwargs


def slice_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, settings: StageConfig | None = None, **overrides: Any
) -> SliceDataModule:
    """The ``SliceDataModule`` of ``config`` (with a slice stage's ``settings``).

    Args:
        config: the run's config.
        cache_dir: another ingest cache (see :func:`datamodule_kwargs`).
        settings: the stage's settings, or None (inference).
        **overrides: any constructor keyword (``batch_size=4``, ``augment=False``).
    """
    root, kwargs = datamodule_kwargs(config.data, config.seed, settings, cache_dir=cache_dir)
    return SliceDataModule(root, **{**kwargs, **overrides})


def volume_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, settings: StageConfig | None = None, **overrides: Any
) -> VolumeDataModule:
    """The ``VolumeDataModule`` of ``config`` (volume stages, evaluation, prediction).

    Adds ``depth_pool`` (``data.depth_pool``) and ``pad_batches`` (True when the
    batch is above 1) unless overridden.

    Args:
        config: the run's config.
        cache_dir: another ingest cache (see :func:`datamodule_kwargs`).
        settings: the stage's settings, or None (inference: evaluation passes its
            own batch size and ``augment=False``).
        **overrides: any constructor keyword.
    """
    root, kwargs = datamodule_kwargs(config.data, config.seed, settings, cache_dir=cache_dir)
    kwargs["depth_pool"] = config.data.depth_pool
    kwargs.update(overrides)
    kwargs.setdefault("pad_batches", int(kwargs.get("batch_size", 1)) > 1)
    return VolumeDataModule(root, **kwargs)
