"""The label targets a model learns: the binary ``any`` of the method, or the six RSNA labels.

``data.targets`` in a config selects them:

* ``null`` (default): one output, the ``data.label`` column (``any``), exactly the
  binary method of the paper (one logit, plain BCE);
* ``all``: the six RSNA 2019 labels in the challenge's order (:data:`RSNA_TARGETS`:
  ``epidural, intraparenchymal, intraventricular, subarachnoid, subdural, any``);
* a list of label names, e.g. ``[subdural, any]``.

With targets, every stage has one output per target and the loss is the weighted
BCE of the challenge: the mean over samples of ``sum_k w_k * BCE_k / sum_k w_k``,
with ``w = 2`` for ``any`` and 1 for each subtype unless ``data.target_weights``
says otherwise. The balanced samplers (stage 1 slices, the volume stages) stay
defined on ``data.label`` (``any``): a positive is a slice/volume with any
hemorrhage, whatever its subtypes.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ich3d.data.schema import LABEL_COLUMNS, SUBTYPES
from ich3d.errors import UserError

__all__ = [
    "RSNA_TARGETS",
    "CHALLENGE_WEIGHTS",
    "resolve_targets",
    "target_weights",
    "model_targets",
    "primary_index",
]

#: The six labels of the RSNA 2019 challenge, in its order (``ID_<image>_<subtype>``).
RSNA_TARGETS: tuple[str, ...] = SUBTYPES

#: The challenge's weights of its weighted log loss: ``any`` 2, each subtype 1.
CHALLENGE_WEIGHTS: Mapping[str, float] = {name: (2.0 if name == "any" else 1.0) for name in SUBTYPES}


def resolve_targets(targets: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``data.targets`` -> the target names (``None`` = the binary default).

    Raises:
        UserError: an unknown name, a repeated one or an empty list.
    """
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets in ("all", "six", "rsna"):
            return RSNA_TARGETS
        names: tuple[str, ...] = (targets,)
    else:
        names = tuple(targets)
    if not names:
        raise UserError("config key 'data.targets' must name at least one label (or be null / 'all')")
    bad = [n for n in names if n not in LABEL_COLUMNS]
    if bad:
        raise UserError(
            f"config key 'data.targets': unknown label {bad[0]!r}; expected 'all' or names from "
            f"{', '.join(LABEL_COLUMNS)}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"config key 'data.targets' repeats a label: {list(names)}")
    return names


def target_weights(targets: Sequence[str], overrides: Mapping[str, Any] | None = None) -> tuple[float, ...]:
    """Loss/metric weight of each target: the challenge's unless ``overrides`` names it.

    Raises:
        UserError: an override for a label that is not a target, or a weight < 0 /
            all weights 0.
    """
    overrides = dict(overrides or {})
    extra = [k for k in overrides if k not in targets]
    if extra:
        raise UserError(
            f"config key 'data.target_weights' names {extra[0]!r}, which is not a target "
            f"({', '.join(targets)})"
        )
    weights = []
    for name in targets:
        value = overrides.get(name, CHALLENGE_WEIGHTS[name])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"config key 'data.target_weights.{name}' must be a number >= 0, got {value!r}")
        weights.append(float(value))
    if sum(weights) <= 0:
        raise UserError("config key 'data.target_weights': the weights sum to 0")
    return tuple(weights)


def model_targets(data: Any) -> list[str]:
    """The labels a model of the ``data`` config section outputs (``[data.label]`` when binary)."""
    names = resolve_targets(getattr(data, "targets", None))
    return list(names) if names is not None else [data.label]


def primary_index(targets: Sequence[str], label: str = "any") -> int:
    """Position of the label ``val/auc`` and the samplers are defined on (else the first target)."""
    return list(targets).index(label) if label in targets else 0
