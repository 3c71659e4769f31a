"""From a config to the plain-data specs the modules take, and the modules themselves.

The specs are what every checkpoint stores (``hyper_parameters``), so a network is
rebuilt from a checkpoint alone by :func:`ich3d.models.build.build`.

Public API::

    model_spec(config) -> dict
    target_spec(config) -> dict
    optimizer_spec(stage_config) -> dict
    selection_metric(stage_config) -> (monitor, mode)
    check_model(config)
    build_module(config, stage) -> SliceModule | VolumeModule
"""

from __future__ import annotations

from typing import Any

from ich3d.config import Config, StageConfig
from ich3d.data.context import context_width
from ich3d.data.targets import primary_index, resolve_targets, target_weights
from ich3d.errors import UserError
from ich3d.models.build import build, model_options
from ich3d.models.speed import speed_up
from ich3d.stages import Stage, get_stage
from ich3d.training.modules import SliceModule, VolumeModule

__all__ = [
    "model_spec",
    "target_spec",
    "optimizer_spec",
    "selection_metric",
    "check_model",
    "build_module",
]


def model_spec(config: Config) -> dict[str, Any]:
    """The plain-data model spec the modules take (and checkpoints store).

    ``encoder.in_channels`` defaults to the number of windows times the 2.5D
    slices per input (``2 * data.context_slices + 1``); a different explicit value
    is an error. Every registered model option (:mod:`ich3d.models.build`) is
    read from ``model.<name>`` (``targets`` from ``data.targets``) and stored when
    it differs from its default.
    """
    encoder = {"name": config.model.encoder, **config.model.encoder_args}
    n_windows = len(config.data.windows)
    k = getattr(config.data, "context_slices", 0)
    n_channels = n_windows * context_width(k)
    if encoder.setdefault("in_channels", n_channels) != n_channels:
        gives = f"data.windows gives {n_windows}" if not k else (
            f"data.windows x data.context_slices give {n_windows} x {context_width(k)} = {n_channels}"
        )
        raise UserError(
            f"model.encoder_args.in_channels is {encoder['in_channels']} but {gives} channels; "
            "drop in_channels or make them agree"
        )
    spec: dict[str, Any] = {"encoder": encoder, "head": {"name": config.model.head, **config.model.head_args}}
    targets = resolve_targets(config.data.targets)
    derived = {"targets": list(targets) if targets is not None else None}  # from data.*, not model.*
    for option in model_options():
        value = getattr(config.model, option.name, option.default) if option.from_config else derived.get(option.name)
        if option.always or value != option.default:
            spec[option.name] = value
    return spec


def target_spec(config: Config) -> dict[str, Any]:
    """``{"target_weights", "primary"}`` of the modules with ``data.targets`` (``{}`` when binary)."""
    targets = resolve_targets(config.data.targets)
    if targets is None:
        return {}
    return {
        "target_weights": list(target_weights(targets, config.data.target_weights)),
        "primary": primary_index(targets, config.data.label),
    }


def optimizer_spec(stage_cfg: StageConfig) -> dict[str, Any]:
    """``{"name", "lr", "weight_decay", "momentum"}`` of a stage."""
    return {
        "name": stage_cfg.optimizer,
        "lr": stage_cfg.lr,
        "weight_decay": stage_cfg.weight_decay,
        "momentum": stage_cfg.momentum,
    }


def selection_metric(stage_cfg: StageConfig) -> tuple[str, str]:
    """``(monitor, mode)`` of a stage's ``select_by``: the logged metric and ``max``/``min``."""
    return {
        "auc": ("val/auc", "max"),
        "mean_auc": ("val/mean_auc", "max"),
        "log_loss": ("val/log_loss", "min"),
    }[stage_cfg.select_by]


def check_model(config: Config) -> None:
    """Build the networks once (CPU, cheap) so a bad name or option fails before any run dir exists."""
    build(model_spec(config))


def build_module(config: Config, stage: str | Stage) -> SliceModule | VolumeModule:
    """A freshly initialised LightningModule for ``stage`` (no weights loaded)."""
    st = stage if isinstance(stage, Stage) else get_stage(stage)
    stage_cfg = config.stages.get(st.name)
    spec = model_spec(config)
    module: SliceModule | VolumeModule
    if not st.is_volume:
        module = SliceModule(model=spec, optimizer=optimizer_spec(stage_cfg), **target_spec(config))
    else:
        module = VolumeModule(
            model=spec,
            optimizer=optimizer_spec(stage_cfg),
            freeze_encoder=st.freeze_encoder,
            gradient_checkpointing=stage_cfg.gradient_checkpointing,
            **target_spec(config),
        )
    speed_up(module.model, channels_last=config.model.channels_last, compile=config.model.compile)
    return module
