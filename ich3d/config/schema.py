"""The config schema: one frozen dataclass per section, with defaults and ranges.

Every numeric setting declares its allowed range once, as field metadata
(:func:`ich3d.typecheck.in_range`), checked where the config is read
(:mod:`ich3d.config.validate`); path settings carry ``metadata={"path": True}``
and are resolved against the current directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ich3d.errors import UserError
from ich3d.stages import get_stage, stage_names
from ich3d.stages.base import StageConfig
from ich3d.typecheck import in_range

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
    "plain",
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
        folds: cross-validation folds K over the non-test patients (1 = the single
            train/val split); with K > 1 ``ich3d train --fold k`` / ``--folds all``
            trains fold k on the other folds, validating on fold k (``RUN/fold<k>/``).
        fold: the fold this run validates on (0 to folds - 1); set by ``ich3d train
            --fold`` / ``--folds all`` and recorded in each fold's config, null otherwise.
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
        context_slices: 2.5D input: each slice with its ``k`` neighbours above and
            below, per window, as channels (``len(windows) * (2k + 1)``, window-major;
            edge slices repeat the edge slice), in every stage, evaluation, prediction
            and export. The volume stages' neighbours are the adjacent depth-pooled
            slices. 0 (default): the slice alone. The RSNA 2019 1st place used 1.
    """

    cache_dir: str | None = field(default=None, metadata=_PATH)
    images_dir: str | None = field(default=None, metadata=_PATH)
    labels_csv: str | None = field(default=None, metadata=_PATH)
    windows: tuple[str, ...] = ("brain", "subdural", "bone")
    split_fractions: tuple[float, float, float] = field(default=(0.7, 0.1, 0.2), metadata=in_range(ge=0, le=1))
    split_seed: int = field(default=0, metadata=in_range(ge=0))
    splits_file: str | None = field(default=None, metadata=_PATH)
    folds: int = field(default=1, metadata=in_range(ge=1))
    fold: int | None = field(default=None, metadata=in_range(ge=0))
    min_slices: int = field(default=4, metadata=in_range(ge=1))
    ingest_workers: int = field(default=1, metadata=in_range(ge=1))
    depth_pool: int = field(default=2, metadata=in_range(ge=1))
    label: str = "any"
    targets: str | tuple[str, ...] | None = None
    target_weights: dict[str, Any] = field(default_factory=dict)
    num_workers: int = field(default=0, metadata=in_range(ge=0))
    pin_memory: bool = False
    persistent_workers: bool = False
    augment_on: Literal["auto", "loader", "device"] = "auto"
    context_slices: int = field(default=0, metadata=in_range(ge=0))


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
    slice_chunk: int | None = field(default=None, metadata=in_range(ge=1))
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

    def __iter__(self) -> Iterator[str]:
        return iter(stage_names())

    def __len__(self) -> int:
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
        limit_val_batches: cap on validation batches (tests, debugging; 0 = no
            validation, e.g. for timing, but then a stage writes no best.ckpt).
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    num_nodes: int = field(default=1, metadata=in_range(ge=1))
    precision: str = "auto"
    deterministic: bool = False
    benchmark: bool = False
    log_every_n_steps: int = field(default=10, metadata=in_range(ge=1))
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = field(default=0, metadata=in_range(ge=-1))
    limit_train_batches: int | float | None = field(default=None, metadata=in_range(gt=0))
    limit_val_batches: int | float | None = field(default=None, metadata=in_range(ge=0))


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
        tta: test-time augmentation of the volume models: transforms (``flip_lr``, the
            left-right mirror; ``flip_ap``, the anterior-posterior one) whose
            probabilities are averaged with the plain input's, reported as their own
            methods (``finetune+flip_lr``) with a paired DeLong test against the plain
            one; empty (default) = none.
    """

    split: str = "test"
    percentile: float = field(default=95.0, metadata=in_range(ge=0, le=100))
    target_sensitivity: float = field(default=0.98, metadata=in_range(gt=0, le=1))
    confidence: float = field(default=0.95, metadata=in_range(gt=0, lt=1))
    svm_cs: tuple[float, ...] = field(default=(1e-3, 1e-2, 1e-1, 1.0), metadata=in_range(gt=0))
    svm_solver: Literal["auto", "liblinear", "lbfgs"] = "auto"
    batch_size: int = field(default=1, metadata=in_range(ge=1))
    methods: tuple[str, ...] = ()
    slice_svm_cs: tuple[float, ...] = field(default=(1e-5, 1e-4, 1e-3, 1e-2), metadata=in_range(gt=0))
    slice_svm_max_train: int = field(default=20000, metadata=in_range(ge=2))
    ae_code_dim: int = field(default=64, metadata=in_range(ge=1))
    ae_hidden: int = field(default=512, metadata=in_range(ge=1))
    ae_epochs: int = field(default=30, metadata=in_range(ge=1))
    ae_lr: float = field(default=1e-3, metadata=in_range(gt=0))
    tta: tuple[str, ...] = ()


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
        log_model: add each finished stage's ``best.ckpt`` to its W&B run as a
            ``model`` artifact (off by default: checkpoints can be large).
    """

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "ich3d"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    log_model: bool = False


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
    seed: int = field(default=0, metadata=in_range(ge=0))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain dicts, lists, strings and numbers (YAML-safe)."""
        return plain(self)


def plain(value: Any) -> Any:
    """``value`` (a config or section) as plain dicts, lists, strings and numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

