"""What a training stage is: a declared, named object, and the registry that holds them.

A stage says *what* it trains and *from what*; :mod:`ich3d.training.runner` does the
training and :mod:`ich3d.evaluation` scores its checkpoint. Nothing here imports
torch or Lightning, so the config, the CLI and the SLURM scripts can read the
stage list cheaply (``ich3d train --list-stages``).

A new stage is one file in :mod:`ich3d.stages` (imported automatically) or in a
user's code::

    from ich3d.stages import Stage, StageConfig, register_stage

    register_stage(Stage(
        name="probe", kind="volume", order=50,
        description="frozen stage-1 CNN + a fresh head, a linear probe",
        starts_from="slice", loads="encoder", freeze_encoder=True,
        defaults=StageConfig(optimizer="adam", lr=1e-3, batch_size=1),
    ))

Its settings then live under ``stages.probe`` of a config, ``ich3d train --stage
probe`` trains it, and ``ich3d evaluate`` scores it as one more volume model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ich3d.errors import UserError
from ich3d.plugins import discover_once
from ich3d.typecheck import in_range

__all__ = [
    "StageConfig",
    "Stage",
    "register_stage",
    "unregister_stage",
    "get_stage",
    "all_stages",
    "stage_names",
    "chain",
    "volume_stages",
]


@dataclass(frozen=True)
class StageConfig:
    """Optimisation settings of one training stage (``stages.<name>`` in a config).

    Args:
        optimizer: ``adam``, ``adamw``, ``rmsprop`` or ``sgd``.
        lr: learning rate.
        weight_decay: L2 penalty (0 = none).
        momentum: momentum for ``rmsprop``/``sgd``.
        batch_size: samples per optimizer step over all processes (slices for a slice stage,
            volumes otherwise); each DDP process loads batch_size / world size.
        samples_per_epoch: samples drawn (balanced) per training epoch; ``null`` = one
            pass over the training split.
        max_epochs: epochs of ``samples_per_epoch`` samples.
        early_stopping_patience: stop after this many validations without a better
            validation AUC; ``null`` = no early stopping.
        augment: random rotation / mirroring / shift on training samples.
        precision: overrides ``trainer.precision`` for this stage.
        gradient_clip_val: clip the gradient norm to this value; ``null`` = no clipping.
        accumulate_grad_batches: optimizer step every this many batches.
        cached_features: for a stage with a frozen encoder, run the encoder once per
            volume and train the head on the stored slice features
            (:mod:`ich3d.data.features`). ``auto`` (default): on when it is exact,
            i.e. with ``augment`` off; ``true``: also with ``augment`` on
            (``feature_views`` fixed augmented views per training volume); ``false``:
            the encoder runs at every step. Ignored by stages that train their encoder.
        feature_views: augmented views cached per training volume (``augment`` on).
        val_samples: validation items scored at each validation of a slice stage: a
            fixed subset drawn once from the seed, stratified by label (``null`` = the
            whole split; ``ich3d evaluate`` always scores everything).
        gradient_checkpointing: for a volume stage whose encoder trains, recompute
            each chunk of slices' activations in the backward pass instead of keeping
            them (peak memory grows with ``model.slice_chunk``, not the volume).
        select_by: the validation metric that picks ``best.ckpt`` (and early
            stopping): ``auc`` (default, the AUC of ``data.label``, ``val/auc``),
            ``mean_auc`` (mean AUC over the targets, ``val/mean_auc``) or
            ``log_loss`` (the weighted log loss over the targets, ``val/log_loss``,
            lower is better).
    """

    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = field(default=1e-4, metadata=in_range(gt=0))
    weight_decay: float = field(default=0.0, metadata=in_range(ge=0))
    momentum: float = field(default=0.0, metadata=in_range(ge=0, lt=1))
    batch_size: int = field(default=1, metadata=in_range(ge=1))
    samples_per_epoch: int | None = field(default=None, metadata=in_range(ge=1))
    max_epochs: int = field(default=10, metadata=in_range(ge=1))
    early_stopping_patience: int | None = field(default=None, metadata=in_range(ge=1))
    augment: bool = True
    precision: str | None = None
    gradient_clip_val: float | None = field(default=None, metadata=in_range(ge=0))
    accumulate_grad_batches: int = field(default=1, metadata=in_range(ge=1))
    cached_features: bool | Literal["auto"] = "auto"
    feature_views: int = field(default=4, metadata=in_range(ge=1))
    gradient_checkpointing: bool = False
    val_samples: int | None = field(default=None, metadata=in_range(ge=2))
    select_by: Literal["auc", "mean_auc", "log_loss"] = "auc"

    def uses_cached_features(self, frozen_encoder: bool) -> bool:
        """Whether a stage with these settings trains on cached slice features."""
        if not frozen_encoder or self.cached_features is False:
            return False
        return self.cached_features is True or not self.augment


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Args:
        name: the stage's name (``--stage NAME``, ``stages.NAME``, the run sub-folder,
            the evaluation column of a volume stage).
        kind: ``slice`` (a slice classifier on slice labels, ``SliceDataModule``) or
            ``volume`` (a volume classifier on volume labels, ``VolumeDataModule``).
        description: one line for ``--help``, ``--list-stages`` and the report.
        order: position in listings and in the chain (lower first).
        defaults: the method's optimisation settings; a config's ``stages.NAME``
            overrides them key by key.
        starts_from: the stage whose ``best.ckpt`` initialises this one (``None`` =
            random initialisation).
        loads: what is taken from ``starts_from``: ``encoder`` (the slice encoder's
            weights) or ``model`` (the whole volume model, which must match).
        freeze_encoder: the encoder is frozen (no gradients, not in the optimizer,
            eval mode).
        in_chain: part of ``--stage all`` (and of ``slurm/submit.sh``'s chain).
        preference: for volume stages, rank as "the run's model" that ``predict``
            uses by default (lower is preferred); ``None`` = never the default.
    """

    name: str
    kind: Literal["slice", "volume"]
    description: str
    order: int
    defaults: StageConfig = field(default_factory=StageConfig)
    starts_from: str | None = None
    loads: Literal["encoder", "model"] | None = None
    freeze_encoder: bool = False
    in_chain: bool = False
    preference: int | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name == "all":
            raise ValueError(f"stage name {self.name!r} must be an identifier other than 'all'")
        if self.kind not in ("slice", "volume"):
            raise ValueError(f"stage {self.name!r}: kind must be 'slice' or 'volume', got {self.kind!r}")
        if (self.starts_from is None) != (self.loads is None):
            raise ValueError(f"stage {self.name!r}: starts_from and loads go together")
        if self.loads is not None and self.loads not in ("encoder", "model"):
            raise ValueError(f"stage {self.name!r}: loads must be 'encoder' or 'model'")
        if self.kind == "slice" and (self.loads == "model" or self.freeze_encoder):
            raise ValueError(f"stage {self.name!r}: a slice stage cannot load a volume model or freeze its encoder")

    @property
    def is_volume(self) -> bool:
        return self.kind == "volume"


_STAGES: dict[str, Stage] = {}
def _discover() -> None:
    """Import every module of :mod:`ich3d.stages` once (each registers its entry)."""
    discover_once("ich3d.stages")


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` to the registry and return it.

    Raises:
        ValueError: a stage of that name exists, or ``starts_from`` names an unknown
            stage (register the stage it starts from first).
    """
    if stage.name in _STAGES and _STAGES[stage.name] != stage:
        raise ValueError(f"a stage named {stage.name!r} is already registered")
    if stage.starts_from is not None:
        if stage.starts_from not in _STAGES:
            _discover()  # a user's stage may start from a built-in one
        prev = _STAGES.get(stage.starts_from)
        if prev is None:
            raise ValueError(f"stage {stage.name!r} starts from unknown stage {stage.starts_from!r}")
        if stage.loads == "model" and not prev.is_volume:
            raise ValueError(f"stage {stage.name!r} loads the volume model of {prev.name!r}, a slice stage")
    _STAGES[stage.name] = stage
    return stage


def unregister_stage(name: str) -> None:
    """Remove a stage (tests that register a toy stage clean up with this)."""
    _STAGES.pop(name, None)


def _all() -> dict[str, Stage]:
    _discover()
    return _STAGES


def get_stage(name: str) -> Stage:
    """The stage called ``name``.

    Raises:
        UserError: no such stage (the message lists the known ones).
    """
    stages = _all()
    if name not in stages:
        raise UserError(f"unknown stage {name!r}; expected one of {', '.join(stage_names())}")
    return stages[name]


def all_stages() -> list[Stage]:
    """Every registered stage, by ``order``."""
    return sorted(_all().values(), key=lambda s: (s.order, s.name))


def stage_names() -> list[str]:
    """The names of :func:`all_stages`."""
    return [s.name for s in all_stages()]


def chain() -> list[Stage]:
    """What ``--stage all`` runs, in order (the stages with ``in_chain``)."""
    return [s for s in all_stages() if s.in_chain]


def volume_stages() -> list[Stage]:
    """The volume stages, the preferred default model first, then by ``order``."""
    vols = [s for s in all_stages() if s.is_volume]
    return sorted(vols, key=lambda s: (s.preference is None, s.preference or 0, s.order))


def slice_stage() -> Stage:
    """The stage-1 slice classifier: the first declared stage of kind ``slice``.

    Raises:
        RuntimeError: no slice stage is declared.
    """
    for s in all_stages():
        if not s.is_volume:
            return s
    raise RuntimeError("no slice stage is declared")


def final_volume_stage() -> Stage:
    """The volume model's final stage: the last volume stage of the ``--stage all`` chain.

    Its ``stages.<name>`` settings (workers, batch size) are the volume model's
    defaults outside training (evaluation and prediction loaders). Without a
    volume stage in the chain, the preferred volume stage (:func:`volume_stages`).

    Raises:
        RuntimeError: no volume stage is declared.
    """
    in_chain = [s for s in chain() if s.is_volume]
    if in_chain:
        return in_chain[-1]
    vols = volume_stages()
    if not vols:
        raise RuntimeError("no volume stage is declared")
    return vols[0]
