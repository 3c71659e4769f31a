"""Validation of a raw (YAML-loaded) mapping into a :class:`~ich3d.config.schema.Config`.

Checked where the values enter, before anything is written anywhere: unknown keys
(named with the allowed ones and the closest match), types
(:func:`ich3d.typecheck.convert`), the declared range and finiteness of every
numeric setting (:func:`check_ranges`, from the fields' ``in_range`` metadata) and
the cross-field rules that one field alone cannot express (:func:`check_consistency`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ich3d.config.schema import Config, StagesConfig
from ich3d.data.targets import resolve_targets, target_weights
from ich3d.errors import UserError
from ich3d.stages import get_stage, stage_names
from ich3d.stages.base import StageConfig
from ich3d.typecheck import Mismatch, convert, range_problem

__all__ = ["config_from_dict", "check_ranges", "check_consistency", "resolve_precision"]

#: keys of the free-form model argument sections whose values have a fixed range
_ARG_RANGES: dict[str, tuple[float, float]] = {"dropout": (0.0, 1.0)}  # [low, high)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = _type_name(args[0]) if args else "value"
        return f"list of {inner}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp) or tp is StagesConfig:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _unknown_key_error(path: str, key: str, allowed: Sequence[str]) -> UserError:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {(path + '.' if path else '') + close[0]!r}?)" if close else ""
    section = f"in {path!r}" if path else "at the top level"
    return UserError(
        f"unknown config key {where!r}{hint}; allowed keys {section}: {', '.join(allowed)}"
    )


def _walk_numbers(value: Any, where: str) -> None:
    """Refuse a non-finite number anywhere inside a free-form value (model arguments, weights)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _walk_numbers(v, f"{where}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _walk_numbers(v, where)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {where!r} must be a finite number, got {value}")
    key = where.rsplit(".", 1)[-1]
    if key in _ARG_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = _ARG_RANGES[key]
        if not low <= value < high:
            raise UserError(f"config key {where!r} must be in [{low:g}, {high:g}), got {value}")


def check_ranges(section: Any, path: str) -> None:
    """Check every field of a config section against its declared range (and finiteness).

    Args:
        section: a section dataclass (``DataConfig``, a ``StageConfig`` ...).
        path: its dotted key (``stages.slice``), for the message.

    Raises:
        UserError: naming the key, the allowed range and the value, e.g. ``config key
            'stages.slice.lr' must be > 0, got -1.0``.
    """
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if isinstance(value, Mapping):
            _walk_numbers(value, where)
            continue
        problem = range_problem(value, f.metadata.get("range"))
        if problem is not None:
            raise UserError(f"config key {where!r} {problem}")


def _convert(value: Any, tp: Any, where: str) -> Any:
    try:
        return convert(value, tp)
    except Mismatch:
        raise UserError(f"config key {where!r} expects {_type_name(tp)}, got {value!r}") from None


def _build(cls: Any, raw: Any, path: str, base: Any, resolve_from: Path | None) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise UserError(f"config key {path or '<top>'!r} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            raise _unknown_key_error(path, str(key), list(fields))
        where = f"{path}.{key}" if path else key
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, where, getattr(base, key), resolve_from)
        elif tp is StagesConfig:
            values[key] = _build_stages(value, where, resolve_from)
        else:
            values[key] = _convert(value, tp, where)
    for key, tp in hints.items():  # sections absent from ``raw`` still resolve their paths
        if key not in values and dataclasses.is_dataclass(tp):
            values[key] = _build(tp, {}, f"{path}.{key}" if path else key, getattr(base, key), resolve_from)
    out = dataclasses.replace(base, **values)
    check_ranges(out, path)
    if resolve_from is not None:  # every path field, given or default
        paths = {}
        for name, f in fields.items():
            value = getattr(out, name)
            if f.metadata.get("path") and isinstance(value, str):
                paths[name] = str((resolve_from / os.path.expanduser(value)).resolve())
        out = dataclasses.replace(out, **paths)
    return out


def _build_stages(raw: Any, path: str, resolve_from: Path | None) -> StagesConfig:
    """The ``stages`` section: each key a registered stage, over that stage's defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise UserError(f"config key {path!r} must be a mapping of keys, got {raw!r}")
    names = stage_names()
    given = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in names:
            raise _unknown_key_error(path, str(key), names)
        given[key] = _build(StageConfig, value, f"{path}.{key}", get_stage(key).defaults, resolve_from)
    return StagesConfig(given)


def check_consistency(config: Config) -> Config:
    """Cross-field checks that one field's type and range cannot express.

    Raises:
        UserError: naming the keys involved.
    """
    if not config.experiment or "/" in config.experiment or config.experiment in (".", ".."):
        raise UserError(
            f"config key 'experiment' must be a non-empty name without '/', got {config.experiment!r}"
        )
    fr = config.data.split_fractions
    if abs(sum(fr) - 1.0) > 1e-6:
        raise UserError(
            f"config key 'data.split_fractions' must be 3 non-negative numbers summing to 1, got {list(fr)}"
        )
    if config.data.fold is not None and (config.data.folds < 2 or config.data.fold >= config.data.folds):
        raise UserError(
            f"config key 'data.fold' is {config.data.fold}, but data.folds={config.data.folds} gives "
            + (f"folds 0 to {config.data.folds - 1}" if config.data.folds > 1 else "no folds (set data.folds > 1)")
        )
    if not config.data.windows:
        raise UserError("config key 'data.windows' needs at least one window name")
    targets = resolve_targets(config.data.targets)
    if targets is None and config.data.target_weights:
        raise UserError("config key 'data.target_weights' needs 'data.targets' (the binary default has one output)")
    if targets is not None:
        target_weights(targets, config.data.target_weights)
    for stage, s in config.stages.items():
        if s.select_by != "auc" and targets is None:
            raise UserError(
                f"config key 'stages.{stage}.select_by: {s.select_by}' needs 'data.targets' (the binary "
                "default selects by the AUC of data.label)"
            )
    if not config.evaluation.slice_svm_cs or not config.evaluation.svm_cs:
        raise UserError("config keys 'evaluation.svm_cs' and 'evaluation.slice_svm_cs' need at least one value")
    return config


def config_from_dict(
    raw: Mapping[str, Any] | None,
    *,
    resolve_from: str | Path | None = None,
    default_experiment: str = "experiment",
) -> Config:
    """Validate a raw (YAML-loaded) mapping into a :class:`Config`.

    Args:
        raw: the mapping; missing keys take their defaults.
        resolve_from: folder against which relative paths are resolved; ``None``
            keeps paths as written.
        default_experiment: experiment name when ``raw`` has none.

    Raises:
        UserError: unknown key, wrong type, a value out of its range or not finite,
            inconsistent values.
    """
    base = Config(experiment=default_experiment)
    folder = Path(resolve_from) if resolve_from is not None else None
    return check_consistency(_build(Config, raw or {}, "", base, folder))


def resolve_precision(config: Config, stage: str | None = None) -> str:
    """Return the Lightning precision string for ``stage``.

    ``auto`` becomes ``bf16-mixed`` when CUDA is available and the accelerator
    allows it, else ``32-true``. A stage's ``precision`` overrides the trainer's.
    """
    precision = config.trainer.precision
    if stage is not None and config.stages.get(stage).precision is not None:
        precision = config.stages.get(stage).precision
    if precision != "auto":
        return precision
    if config.trainer.accelerator in ("auto", "gpu", "cuda"):
        import torch  # heavy: kept off the config's import path (``ich3d --help``)

        if torch.cuda.is_available():
            return "bf16-mixed"
    return "32-true"
