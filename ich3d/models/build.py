"""The one builder from a model spec to the networks, and the registry of model options.

A *model spec* is the plain data a run's modules save in every checkpoint
(``hyper_parameters["model"]``) and that :func:`ich3d.training.specs.model_spec`
makes from a config::

    {"encoder": {"name": "patel_cnn", "in_channels": 3, ...},
     "head": {"name": "bilstm", "hidden": 512, ...},
     "slice_chunk": None,            # model.slice_chunk
     "targets": ["any", ...],        # data.targets (absent: binary)
     "per_slice": True}              # model.per_slice (absent: off)

:func:`build` turns it into a :class:`~ich3d.models.volume.VolumeClassifier`
and :func:`build_slice` into the stage-1
:class:`~ich3d.models.slice_cnn.SliceClassifier`; training, resume, the
checkpoint loaders and hence evaluation and prediction all call these two, so a
spec builds the same network everywhere.

Every key besides ``encoder`` and ``head`` is a :class:`ModelOption`: a name and
a function that applies the value to the built model. A new ``model.*`` key is
one :func:`register_option` call (plus its config field); since every path to
logits (whole volumes, cached features, per-slice outputs) goes through the
model's own methods, an option that changes the model changes all of them::

    from ich3d.models.build import ModelOption, register_option

    register_option(ModelOption(
        "temperature", default=1.0,
        apply=lambda model, t: model.add_logit_transform(lambda z: z / t),
        description="divide every logit by this (calibration)",
    ))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ich3d.errors import UserError
from ich3d.models.slice_cnn import SliceClassifier
from ich3d.models.volume import VolumeClassifier, build_slice_classifier, build_volume_model

__all__ = [
    "ModelOption",
    "register_option",
    "unregister_option",
    "model_options",
    "build",
    "build_slice",
    "num_outputs",
]


@dataclass(frozen=True)
class ModelOption:
    """One key of a model spec besides ``encoder`` and ``head``.

    Args:
        name: the spec key (and, for a config option, the ``model.<name>`` key).
        apply: ``apply(model, value)`` changes a built ``VolumeClassifier`` in place.
        default: the value that changes nothing; the spec of a config omits an
            option at its default unless ``always``.
        description: one line for the documentation.
        always: store the value in every spec, also at the default (keeps the
            specs of older checkpoints equal to new ones).
        from_config: the value is the config's ``model.<name>``; False for an option
            derived from other sections (``targets`` from ``data.targets``, which
            :func:`ich3d.training.specs.model_spec` reads itself).
    """

    name: str
    apply: Callable[[VolumeClassifier, Any], Any]
    default: Any = None
    description: str = ""
    always: bool = False
    from_config: bool = True


_OPTIONS: dict[str, ModelOption] = {}

#: The spec keys that are not options.
_PARTS = ("encoder", "head")


def register_option(option: ModelOption) -> ModelOption:
    """Add ``option`` (applied after the options registered before it) and return it.

    Raises:
        ValueError: another option of that name is registered, or the name is a part.
    """
    if option.name in _PARTS:
        raise ValueError(f"{option.name!r} is a part of the model spec, not an option")
    if option.name in _OPTIONS and _OPTIONS[option.name] != option:
        raise ValueError(f"model option {option.name!r} is already registered")
    _OPTIONS[option.name] = option
    return option


def unregister_option(name: str) -> None:
    """Remove an option (tests that register one clean up with this)."""
    _OPTIONS.pop(name, None)


def model_options() -> list[ModelOption]:
    """The registered options, in the order they are applied."""
    return list(_OPTIONS.values())


def num_outputs(spec: Mapping[str, Any]) -> int:
    """Logits per sample of a spec: one per target, 1 when binary."""
    return len(spec.get("targets") or [None])


def _check(spec: Mapping[str, Any]) -> None:
    if not isinstance(spec, Mapping) or any(part not in spec for part in _PARTS):
        raise UserError(f"a model spec needs 'encoder' and 'head' entries, got {spec!r}")
    unknown = sorted(set(spec) - set(_PARTS) - set(_OPTIONS))
    if unknown:
        raise UserError(
            f"unknown model option(s) {', '.join(unknown)}; registered: "
            f"{', '.join(_OPTIONS) or 'none'} (ich3d.models.build.register_option)"
        )


def build(spec: Mapping[str, Any], *, checkpoint_chunks: bool = False) -> VolumeClassifier:
    """The :class:`VolumeClassifier` of a model spec, freshly initialised.

    Args:
        spec: a model spec (module docstring).
        checkpoint_chunks: gradient checkpointing per chunk of slices (a stage's
            ``gradient_checkpointing``, not part of the network).

    Raises:
        UserError: an unknown encoder, head, option or option value.
    """
    _check(spec)
    model = build_volume_model(dict(spec["encoder"]), dict(spec["head"]), checkpoint_chunks=checkpoint_chunks)
    for option in model_options():
        if option.name in spec:
            option.apply(model, spec[option.name])
    return model


def build_slice(spec: Mapping[str, Any]) -> SliceClassifier:
    """The stage-1 :class:`SliceClassifier` of a model spec (its encoder, one logit per target)."""
    _check(spec)
    return build_slice_classifier(dict(spec["encoder"]), num_outputs=num_outputs(spec))


register_option(ModelOption(
    "targets", apply=lambda model, targets: model.set_num_outputs(len(targets or [None])),
    description="one output per target (data.targets)", from_config=False,
))
register_option(ModelOption(
    "per_slice", default=False, apply=lambda model, on: model.set_per_slice(bool(on)),
    description="the head labels every slice; the volume logit is their maximum",
))
register_option(ModelOption(
    "slice_chunk", apply=lambda model, chunk: model.set_slice_chunk(chunk), always=True,
    description="encode at most this many slices per encoder call",
))
