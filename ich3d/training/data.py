"""The DataModules a stage trains on, by stage name, and the data checks before a run starts.

The translation of a config into the data layer's plain arguments is
:mod:`ich3d.runs.datamodules` (shared with evaluation); this module picks the
stage's settings and kind.

Public API::

    build_slice_datamodule(config, cache_dir=None, *, stage="slice", **overrides)
    build_volume_datamodule(config, cache_dir=None, *, stage="finetune", **overrides)
    build_datamodule(config, stage)   # the DataModule a declared stage trains on
    check_data_paths(config)          # before any run directory exists
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ich3d.config import Config
from ich3d.data.cache import is_complete
from ich3d.data.datamodule import SliceDataModule, VolumeDataModule
from ich3d.errors import UserError
from ich3d.runs.datamodules import slice_datamodule, volume_datamodule
from ich3d.stages import Stage, get_stage

__all__ = [
    "build_slice_datamodule",
    "build_volume_datamodule",
    "build_datamodule",
    "check_data_paths",
]


def build_slice_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, stage: str = "slice", **overrides: Any
) -> SliceDataModule:
    """The ``SliceDataModule`` of ``config`` and the slice stage ``stage``.

    Args:
        config: the experiment config.
        cache_dir: another ingest cache (see :func:`~ich3d.runs.datamodules.datamodule_kwargs`).
        stage: the stage whose settings apply.
        **overrides: any constructor keyword (``batch_size=4``, ``augment=False``).
    """
    return slice_datamodule(config, cache_dir, settings=config.stages.get(stage), **overrides)


def build_volume_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, stage: str | None = "finetune", **overrides: Any
) -> VolumeDataModule:
    """The ``VolumeDataModule`` of ``config`` and the volume stage ``stage``.

    Adds ``slice_targets`` (``model.per_slice``: the per-slice sequence outputs train
    on slice labels) for a stage, and what :func:`~ich3d.runs.datamodules.volume_datamodule`
    adds, unless overridden.

    Args:
        config: the experiment config.
        cache_dir: another ingest cache.
        stage: the stage whose settings apply; None for inference (no stage's settings).
        **overrides: any constructor keyword.
    """
    if stage is None:
        return volume_datamodule(config, cache_dir, **overrides)
    overrides.setdefault("slice_targets", config.model.per_slice)
    return volume_datamodule(config, cache_dir, settings=config.stages.get(stage), **overrides)


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
