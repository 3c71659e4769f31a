"""DataModules from a config: the one place where ``data.*`` and ``stages.<name>.*`` meet the data layer.

:mod:`ich3d.data.datamodule` takes plain typed arguments and never reads a
config; these functions translate a config's ``data`` section (cache, ingest,
windows, splits, loaders, labels) and, for training, one stage's settings
(``batch_size``, ``samples_per_epoch``, ``augment``, ``val_samples``) into them.

Public API::

    datamodule_kwargs(data, seed, stage=None, *, cache_dir=None) -> (cache_root, kwargs)
    build_slice_datamodule(config, cache_dir=None, *, stage="slice", **overrides)
    build_volume_datamodule(config, cache_dir=None, *, stage="finetune", **overrides)
    build_datamodule(config, stage)   # the DataModule a declared stage trains on
    check_data_paths(config)          # before any run directory exists
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ich3d.config import Config, DataConfig, StageConfig
from ich3d.data.cache import is_complete
from ich3d.data.datamodule import SliceDataModule, VolumeDataModule
from ich3d.data.targets import resolve_targets
from ich3d.errors import UserError
from ich3d.stages import Stage, get_stage

__all__ = [
    "datamodule_kwargs",
    "build_slice_datamodule",
    "build_volume_datamodule",
    "build_datamodule",
    "check_data_paths",
]


def datamodule_kwargs(
    data: DataConfig, seed: int, stage: StageConfig | None = None, *, cache_dir: str | Path | None = None
) -> tuple[str | Path, dict[str, Any]]:
    """The cache folder and the DataModule keywords of a config's ``data`` section.

    Args:
        data: the config's ``data`` section.
        seed: the experiment seed (training draws, augmentation).
        stage: the stage whose ``batch_size``, ``samples_per_epoch``, ``augment`` and
            ``val_samples`` apply; None for inference (the DataModule's defaults).
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
        "num_workers": data.num_workers,
        "pin_memory": data.pin_memory,
        "persistent_workers": data.persistent_workers,
        "seed": seed,
        "label": data.label,
        "targets": resolve_targets(data.targets),
        "augment_on": data.augment_on,
    }
    if stage is not None:
        kwargs.update(
            batch_size=stage.batch_size,
            samples_per_epoch=stage.samples_per_epoch,
            augment=stage.augment,
            val_samples=stage.val_samples,
        )
    return root, kwargs


def build_slice_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, stage: str = "slice", **overrides: Any
) -> SliceDataModule:
    """The ``SliceDataModule`` of ``config`` and the slice stage ``stage``.

    Args:
        config: the experiment config.
        cache_dir: another ingest cache (see :func:`datamodule_kwargs`).
        stage: the stage whose settings apply.
        **overrides: any constructor keyword (``batch_size=4``, ``augment=False``).
    """
    root, kwargs = datamodule_kwargs(config.data, config.seed, config.stages.get(stage), cache_dir=cache_dir)
    return SliceDataModule(root, **{**kwargs, **overrides})


def build_volume_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, stage: str | None = "finetune", **overrides: Any
) -> VolumeDataModule:
    """The ``VolumeDataModule`` of ``config`` (volume stages, evaluation, prediction).

    Adds ``depth_pool`` (``data.depth_pool``), ``pad_batches`` (True when the batch is
    above 1) and, for a stage, ``slice_targets`` (``model.per_slice``) unless overridden.

    Args:
        config: the experiment config.
        cache_dir: another ingest cache (see :func:`datamodule_kwargs`).
        stage: the stage whose settings apply; None for inference (no augmentation
            settings of any stage: evaluation passes its own batch size).
        **overrides: any constructor keyword.
    """
    stage_cfg = config.stages.get(stage) if stage is not None else None
    root, kwargs = datamodule_kwargs(config.data, config.seed, stage_cfg, cache_dir=cache_dir)
    kwargs["depth_pool"] = config.data.depth_pool
    if stage_cfg is not None:
        kwargs["slice_targets"] = config.model.per_slice  # per-slice sequence outputs
    kwargs.update(overrides)
    kwargs.setdefault("pad_batches", int(kwargs.get("batch_size", 1)) > 1)
    return VolumeDataModule(root, **kwargs)


def build_datamodule(
    config: Config, stage: str | Stage, **overrides: Any
) -> SliceDataModule | VolumeDataModule:
    """The DataModule a declared stage trains on (slice or volume, as the stage declares)."""
    st = stage if isinstance(stage, Stage) else get_stage(stage)
    if st.is_volume:
        return build_volume_datamodule(config, stage=st.name, **overrides)
    return build_slice_datamodule(config, stage=st.name, **overrides)


def check_data_paths(config: Config) -> None:
    """Fail early (before any run directory exists) when the data cannot be found.

    With ``data.images_dir`` the images folder (and ``labels_csv``, if given) must exist;
    otherwise ``data.cache_dir`` must be a complete ingest cache.
    """
    d = config.data
    if d.cache_dir is None:
        raise UserError("config key 'data.cache_dir' is required (the ingest cache folder)")
    if d.images_dir is not None:
        if not Path(d.images_dir).is_dir():
            raise UserError(f"data.images_dir not found: {d.images_dir}")
        if d.labels_csv is None:
            raise UserError("data.labels_csv is required with data.images_dir to train (labels)")
        if not Path(d.labels_csv).is_file():
            raise UserError(f"data.labels_csv not found: {d.labels_csv}")
    elif not is_complete(d.cache_dir):
        raise UserError(
            f"data.cache_dir {d.cache_dir} is not a complete ingest cache; run "
            "`ich3d ingest` first or set data.images_dir and data.labels_csv"
        )
    if d.splits_file is not None and not Path(d.splits_file).is_file():
        raise UserError(f"data.splits_file not found: {d.splits_file}")
