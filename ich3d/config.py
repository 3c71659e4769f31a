"""Experiment configuration: one YAML file per experiment, validated into frozen dataclasses.

A config file is read with :func:`yaml.safe_load` and checked key by key against the
dataclasses below: an unknown or mistyped key is a :class:`~ich3d.errors.UserError`
that names the key path, the allowed keys and the closest match; a value of the wrong
type names the key, the expected type and the value. Every key has a default except
``data.cache_dir``; the defaults are the method's (``docs/method.md`` section 1).

Overrides given on the command line as ``dotted.key=value`` are applied to the raw
YAML before validation; the value is parsed with :func:`yaml.safe_load` (so ``1e-4``,
``null``, ``[a, b]`` and ``true`` mean what they mean in YAML).

Relative paths (``data.*_dir``, ``data.labels_csv``, ``data.splits_file``, ``run.root``)
are resolved against the **current working directory** at load time, the way the
shell would read them, and stored absolute; the resolved config saved in a run
directory therefore works from anywhere.

Schema (section: keys)::

    experiment: str              # name; runs go to <run.root>/<experiment>/<run-id>/
    seed: int                    # global seed (Lightning seed_everything)
    data:       cache_dir, images_dir, labels_csv, windows, split_fractions, split_seed,
                splits_file, min_slices, ingest_workers, depth_pool, label, targets,
                target_weights, num_workers, pin_memory, persistent_workers, augment_on
    model:      encoder, encoder_args, head, head_args, slice_chunk, channels_last, compile,
                per_slice
    stages:     one section per declared stage (``ich3d train --list-stages``: slice,
                sequence, finetune, direct built in), each with optimizer, lr, weight_decay, momentum, batch_size, samples_per_epoch,
                max_epochs, early_stopping_patience, augment, precision,
                gradient_clip_val, accumulate_grad_batches, cached_features, feature_views,
                gradient_checkpointing, val_samples, select_by
    trainer:    accelerator, devices, strategy, num_nodes, precision, deterministic,
                benchmark, log_every_n_steps, enable_progress_bar, num_sanity_val_steps,
                limit_train_batches, limit_val_batches
    evaluation: split, percentile, target_sensitivity, confidence, svm_cs, svm_solver, batch_size,
                methods, slice_svm_cs, slice_svm_max_train, ae_code_dim, ae_hidden, ae_epochs, ae_lr
    tracking:   mode (offline|online|disabled), project, entity, group, tags
    run:        root
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ich3d.errors import UserError
from ich3d.stages.base import StageConfig
from ich3d.typecheck import Mismatch as _Mismatch
from ich3d.typecheck import convert

__all__ = [
    "DataConfig",
    "ModelConfig",
    "StageConfig",
    "StagesConfig",
    "TrainerConfig",
    "EvaluationConfig",
    "TrackingConfig",
    "RunConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "parse_overrides",
    "apply_overrides",
    "dump_config",
    "resolve_precision",
]

_PATH = {"path": True}


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split and loaded.

    Args:
        cache_dir: ingest cache folder (the volume tables and arrays). Required.
        images_dir: folder of RSNA-format DICOM; if given, the ingest runs into
            ``cache_dir`` before training (skipped when the cache is complete).
        labels_csv: RSNA label CSV (``ID,Label``); needed with ``images_dir``.
        windows: HU windows stacked as input channels, by name.
        split_fractions: train/val/test fractions of patients, summing to 1.
        split_seed: seed of the patient split.
        splits_file: an existing splits file to reuse instead of a new split.
        min_slices: volumes with fewer slices are skipped.
        ingest_workers: processes for the ingest.
        depth_pool: max-filter factor along z for the volume models (2 = 2x2x2 with
            the cache's 2x2 in-plane filter).
        label: label column the model learns (``any`` = any hemorrhage); with
            ``targets``, the label the balanced samplers and ``val/auc`` use.
        targets: ``null`` (default: one output, ``label``, the paper's binary method),
            ``all`` (the six RSNA labels) or a list of labels: one output per target
            and a weighted BCE (:mod:`ich3d.data.targets`).
        target_weights: per-target loss weights over the challenge's (``any`` 2,
            each subtype 1), e.g. ``{any: 1}``.
        num_workers: DataLoader workers per process.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers`` (needs num_workers > 0).
        augment_on: where training items are augmented and windowed: ``loader`` (the
            DataLoader workers, on the CPU), ``device`` (the loader only reads the HU;
            augmentation and windowing run after the batch is on the trainer's device,
            with the same per-sample seeds, so the same images) or ``auto`` (default:
            ``device`` when the trainer runs on a CUDA GPU, ``loader`` otherwise).
    """

    cache_dir: str | None = field(default=None, metadata=_PATH)
    images_dir: str | None = field(default=None, metadata=_PATH)
    labels_csv: str | None = field(default=None, metadata=_PATH)
    windows: tuple[str, ...] = ("brain", "subdural", "bone")
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    splits_file: str | None = field(default=None, metadata=_PATH)
    min_slices: int = 4
    ingest_workers: int = 1
    depth_pool: int = 2
    label: str = "any"
    targets: str | tuple[str, ...] | None = None
    target_weights: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    augment_on: Literal["auto", "loader", "device"] = "auto"


@dataclass(frozen=True)
class ModelConfig:
    """The networks, by registry name plus keyword arguments.

    ``encoder_args.in_channels`` defaults to the number of ``data.windows`` and
    ``head_args.in_features`` to the encoder's feature size.

    Args:
        encoder: slice encoder name in :mod:`ich3d.models.registry` (``patel_cnn``).
        encoder_args: keyword arguments of the encoder (``width``, ``feature_dim``,
            ``dropout`` ...).
        head: sequence head name (``bilstm``, ``bigru``).
        head_args: keyword arguments of the head (``hidden``, ``num_layers`` ...).
        slice_chunk: encode a volume's slices this many at a time (memory bound);
            ``null`` = all at once.
        channels_last: run the encoder in the ``channels_last`` memory format
            (faster convolutions on GPUs and CPUs; :mod:`ich3d.models.speed`).
        compile: ``torch.compile`` the encoder (training, evaluation, prediction).
        per_slice: the sequence head labels every slice from its neighbours (the RSNA
            2019 winners' recurrent labeller), trained on slice labels (max over the
            ``data.depth_pool`` slices pooled into one); the volume prediction is the
            maximum over slices. Default false (one pooled volume output, the method).
    """

    encoder: str = "patel_cnn"
    encoder_args: dict[str, Any] = field(default_factory=dict)
    head: str = "bilstm"
    head_args: dict[str, Any] = field(default_factory=dict)
    slice_chunk: int | None = None
    channels_last: bool = False
    compile: bool = False
    per_slice: bool = False


class StagesConfig(Mapping[str, StageConfig]):
    """The ``stages`` section: one :class:`~ich3d.stages.StageConfig` per declared stage.

    The keys are the registered stages (:mod:`ich3d.stages`); each stage's settings
    are its declared defaults overridden key by key by the config. A stage the config
    does not mention (or one registered after the config was read) has its defaults.
    ``config.stages.get("slice")`` and ``config.stages.slice`` are the same.
    """

    def __init__(self, given: Mapping[str, StageConfig] | None = None) -> None:
        self._given = dict(given or {})

    def get(self, stage: str) -> StageConfig:  # type: ignore[override]
        """Return the settings of ``stage``.

        Raises:
            UserError: ``stage`` is not a registered stage.
        """
        from ich3d.stages import get_stage

        if stage in self._given:
            return self._given[stage]
        return get_stage(stage).defaults

    def __getattr__(self, name: str) -> StageConfig:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.get(name)
        except UserError as exc:
            raise AttributeError(str(exc)) from None

    def __getitem__(self, stage: str) -> StageConfig:
        return self.get(stage)

    def __iter__(self):  # type: ignore[no-untyped-def]
        from ich3d.stages import stage_names

        return iter(stage_names())

    def __len__(self) -> int:
        from ich3d.stages import stage_names

        return len(stage_names())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StagesConfig) and dict(self.items()) == dict(other.items())

    def __hash__(self) -> int:
        return hash(tuple(self.items()))

    def __repr__(self) -> str:
        return f"StagesConfig({dict(self.items())!r})"


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning ``Trainer`` settings shared by all stages.

    Args:
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda``, ``mps``.
        devices: devices per node (``auto``, a count or a list of indices).
        strategy: ``auto``, ``ddp``, ``ddp_spawn``, ``ddp_find_unused_parameters_true`` ...
        num_nodes: nodes (match ``#SBATCH --nodes``).
        precision: ``auto`` = ``bf16-mixed`` on CUDA, ``32-true`` otherwise; or any
            Lightning precision string.
        deterministic: ``Trainer(deterministic=...)``.
        benchmark: cuDNN benchmark mode.
        log_every_n_steps: logging interval of step metrics.
        enable_progress_bar: show the progress bar.
        num_sanity_val_steps: validation batches run before training.
        limit_train_batches: cap on training batches per epoch (tests, debugging).
        limit_val_batches: cap on validation batches (tests, debugging).
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    deterministic: bool = False
    benchmark: bool = False
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 0
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings read by ``ich3d evaluate``.

    Args:
        split: split evaluated (``test``).
        percentile: percentile of slice probabilities for the ``p95`` baseline.
        target_sensitivity: sensitivity of the reported operating point.
        confidence: level of the DeLong confidence intervals.
        svm_cs: regularisation values tried for the linear SVM baseline.
        svm_solver: ``auto`` (liblinear's ``LinearSVC`` for small problems, the
            float32 L-BFGS primal solver of the same objective beyond 2e7 training
            values, e.g. at RSNA scale), ``liblinear`` or ``lbfgs``.
        batch_size: volumes per inference batch.
        methods: opt-in scoring methods evaluated besides the default ones (``slice_svm``,
            ``ae_svm``); ``ich3d evaluate --methods`` overrides.
        slice_svm_cs: regularisation values tried for the slice SVM (``slice_svm``,
            ``ae_svm``), chosen by validation slice AUC.
        slice_svm_max_train: at most this many training slices (and as many validation
            slices) fit the slice SVM and the autoencoder: a seeded stratified subset.
        ae_code_dim: code size of the ``ae_svm`` feature autoencoder.
        ae_hidden: hidden width of its encoder and decoder (one layer each).
        ae_epochs: autoencoder training epochs over the training slices.
        ae_lr: its Adam learning rate.
    """

    split: str = "test"
    percentile: float = 95.0
    target_sensitivity: float = 0.98
    confidence: float = 0.95
    svm_cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    svm_solver: Literal["auto", "liblinear", "lbfgs"] = "auto"
    batch_size: int = 1
    methods: tuple[str, ...] = ()
    slice_svm_cs: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    slice_svm_max_train: int = 20000
    ae_code_dim: int = 64
    ae_hidden: int = 512
    ae_epochs: int = 30
    ae_lr: float = 1e-3


@dataclass(frozen=True)
class TrackingConfig:
    """Weights & Biases settings (a CSV logger always runs as well).

    Args:
        mode: ``offline`` (default; no network, ``wandb sync`` later), ``online`` or
            ``disabled``.
        project: W&B project.
        entity: W&B entity (team or user); ``null`` = the default.
        group: W&B group; ``null`` = the run id, so all stages of a run group together.
        tags: W&B tags.
    """

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "ich3d"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    """Where run directories go.

    Args:
        root: runs are written to ``<root>/<experiment>/<run-id>/``.
    """

    root: str = field(default="runs", metadata=_PATH)


@dataclass(frozen=True)
class Config:
    """A whole experiment. Build it with :func:`load_config` or :func:`config_from_dict`."""

    experiment: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain dicts, lists, strings and numbers (YAML-safe)."""
        return _plain(self)


# --------------------------------------------------------------------------- parsing


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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


def _build(cls: Any, raw: Any, path: str, base: Any, resolve_from: Path | None) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise UserError(
            f"config key {path or '<top>'!r} must be a mapping of keys, got {raw!r}"
        )
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
            continue
        if tp is StagesConfig:
            values[key] = _build_stages(value, where, resolve_from)
            continue
        try:
            converted = convert(value, tp)
        except _Mismatch:
            raise UserError(
                f"config key {where!r} expects {_type_name(tp)}, got {value!r}"
            ) from None
        values[key] = converted
    for key, tp in hints.items():  # sections absent from ``raw`` still resolve their paths
        if key not in values and dataclasses.is_dataclass(tp):
            values[key] = _build(tp, {}, f"{path}.{key}" if path else key, getattr(base, key), resolve_from)
    out = dataclasses.replace(base, **values)
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
    from ich3d.stages import get_stage, stage_names

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


def _check(config: Config) -> Config:
    """Cross-field checks that types alone cannot express."""
    if not config.experiment or "/" in config.experiment or config.experiment in (".", ".."):
        raise UserError(
            f"config key 'experiment' must be a non-empty name without '/', got {config.experiment!r}"
        )
    fr = config.data.split_fractions
    if any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise UserError(f"config key 'data.split_fractions' must be 3 non-negative numbers summing to 1, got {list(fr)}")
    if not config.data.windows:
        raise UserError("config key 'data.windows' needs at least one window name")
    for name in ("min_slices", "ingest_workers", "depth_pool"):
        if getattr(config.data, name) < 1:
            raise UserError(f"config key 'data.{name}' must be >= 1, got {getattr(config.data, name)}")
    from ich3d.data.targets import resolve_targets, target_weights

    targets = resolve_targets(config.data.targets)
    if targets is None and config.data.target_weights:
        raise UserError("config key 'data.target_weights' needs 'data.targets' (the binary default has one output)")
    if targets is not None:
        target_weights(targets, config.data.target_weights)
    if config.data.num_workers < 0:
        raise UserError(f"config key 'data.num_workers' must be >= 0, got {config.data.num_workers}")
    for stage, s in config.stages.items():
        where = f"stages.{stage}"
        if s.lr <= 0:
            raise UserError(f"config key '{where}.lr' must be > 0, got {s.lr}")
        if s.batch_size < 1:
            raise UserError(f"config key '{where}.batch_size' must be >= 1, got {s.batch_size}")
        if s.max_epochs < 1:
            raise UserError(f"config key '{where}.max_epochs' must be >= 1, got {s.max_epochs}")
        if s.samples_per_epoch is not None and s.samples_per_epoch < 1:
            raise UserError(f"config key '{where}.samples_per_epoch' must be >= 1 or null, got {s.samples_per_epoch}")
        if s.val_samples is not None and s.val_samples < 2:
            raise UserError(f"config key '{where}.val_samples' must be >= 2 or null, got {s.val_samples}")
        if s.feature_views < 1:
            raise UserError(f"config key '{where}.feature_views' must be >= 1, got {s.feature_views}")
        if s.early_stopping_patience is not None and s.early_stopping_patience < 1:
            raise UserError(f"config key '{where}.early_stopping_patience' must be >= 1 or null")
        if s.select_by != "auc" and targets is None:
            raise UserError(
                f"config key '{where}.select_by: {s.select_by}' needs 'data.targets' (the binary "
                "default selects by the AUC of data.label)"
            )
    if config.model.slice_chunk is not None and config.model.slice_chunk < 1:
        raise UserError("config key 'model.slice_chunk' must be >= 1 or null")
    if config.trainer.num_nodes < 1:
        raise UserError("config key 'trainer.num_nodes' must be >= 1")
    ev = config.evaluation
    for name in ("slice_svm_max_train", "ae_code_dim", "ae_hidden", "ae_epochs"):
        if getattr(ev, name) < (2 if name == "slice_svm_max_train" else 1):
            raise UserError(f"config key 'evaluation.{name}' is too small: {getattr(ev, name)}")
    if not ev.slice_svm_cs or min(ev.slice_svm_cs) <= 0 or ev.ae_lr <= 0:
        raise UserError("config keys 'evaluation.slice_svm_cs' and 'evaluation.ae_lr' must be positive")
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
        UserError: unknown key, wrong type or inconsistent values.
    """
    base = Config(experiment=default_experiment)
    folder = Path(resolve_from) if resolve_from is not None else None
    return _check(_build(Config, raw or {}, "", base, folder))


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``dotted.key=value`` strings; values are read with :func:`yaml.safe_load`.

    Raises:
        UserError: an override without ``=`` or with an empty key.
    """
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise UserError(f"override {item!r} must look like 'section.key=value'")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(f"override {item!r}: value is not valid YAML ({exc})") from None
        parsed.append((parts, value))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``dotted.key=value`` overrides applied.

    Intermediate sections are created as needed; key validity is checked later by
    :func:`config_from_dict`, which names the bad key.
    """
    out = _copy(raw)
    for parts, value in parse_overrides(overrides):
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise UserError(
                    f"override {'.'.join(parts)!r}: {'.'.join(parts[: i + 1])!r} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def _copy(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: _copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_copy(v) for v in raw]
    return raw


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load and validate an experiment YAML file.

    Args:
        path: the YAML file. The experiment name defaults to its stem.
        overrides: ``dotted.key=value`` strings applied before validation.

    Returns:
        The validated config, relative paths resolved against the current directory.

    Raises:
        UserError: missing/unreadable file, invalid YAML, unknown key, wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, resolve_from=Path.cwd(), default_experiment=path.stem)


def dump_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML (the resolved form that :func:`load_config` reads back)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


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
        import torch

        if torch.cuda.is_available():
            return "bf16-mixed"
    return "32-true"
