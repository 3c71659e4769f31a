"""What a scoring method is, and the registry that holds the methods ``ich3d evaluate`` runs.

A scoring method turns a trained run into one score per volume (higher = more
likely positive). It declares its ``name`` (the column of ``predictions.csv`` and
the row of the report), a one-line ``description``, the stage whose ``best.ckpt``
it ``needs`` and an ``order`` (report columns are sorted by it), and scores a
*role* of an :class:`~ich3d.evaluation.inference.context.EvaluationContext`:

* ``"evaluated"``: the split the report is about (``evaluation.split`` of the run's
  cache, or every labelled volume of another cache with ``ich3d evaluate --data``);
* ``"val"``: the run's validation split, where the operating points are chosen;
* ``"train"``: the run's training split (for methods that fit something, like ``svm``).

The context computes shared work once (one stage-1 CNN pass per role for ``max``,
``p95``, ``svm``; each volume model loaded once), so a method only combines what
it asks for. Every module of :mod:`ich3d.evaluation.methods` is imported when the
list is first read; the volume models are one method per declared volume stage
(:func:`ich3d.stages.volume_stages`), so a new stage is a new column. A user's
method::

    import numpy as np
    from ich3d.evaluation.methods import SliceAggregation, register_method

    register_method(SliceAggregation("mean", "stage-1 slice CNN, mean slice probability", np.mean, order=25))

A method that needs more than the slice probabilities subclasses
:class:`ScoringMethod` and overrides :meth:`ScoringMethod.score`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ich3d.errors import UserError
from ich3d.plugins import discover_once
from ich3d.stages import slice_stage

__all__ = [
    "ROLES",
    "MethodScores",
    "MethodUnavailable",
    "ScoringMethod",
    "register_method",
    "unregister_method",
    "register_provider",
    "get_method",
    "all_methods",
    "method_names",
    "methods_for_stages",
    "slice_stage_name",
]

#: The roles a method scores (see the module docstring).
ROLES: tuple[str, ...] = ("evaluated", "val", "train")

_RESERVED = frozenset({"key", "label", "all"})


@dataclass
class MethodScores:
    """One method's scores of one role.

    Attributes:
        keys: volume keys (any order; every volume of the role must be scored).
        scores: one float per key (higher = more likely positive).
        seconds: average inference seconds per volume (forward pass, data already
            loaded), for the report's timing table; None = not reported.
        load_seconds: average seconds per volume spent loading and windowing.
        details: JSON-safe facts about the fit (e.g. the SVM's C), for ``metrics.json``.
        notes: lines for the report's notes (no identifiers).
        target_scores: with several targets (``data.targets``), ``(n, K)`` scores, one
            column per target of the run (``ctx.targets``); None = ``scores`` only.
        slice_scores: with per-slice outputs (``model.per_slice``), per volume (in
            ``keys`` order) the ``(T_i, K)`` probabilities of its depth-pooled slices.
        stage1_slice_scores: for a slice classifier on the stage-1 features, one array
            per key of a score for every slice of the volume in slice order (the stage-1
            pass's slices, no depth pooling); the evaluation's slice-level table
            (:mod:`ich3d.evaluation.inference.slice_level`) reads it.
    """

    keys: list[str]
    scores: np.ndarray
    seconds: float | None = None
    load_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    target_scores: np.ndarray | None = None
    slice_scores: list[np.ndarray] | None = None
    stage1_slice_scores: list[np.ndarray] | None = None


class MethodUnavailable(Exception):
    """Raised by :meth:`ScoringMethod.score` when the method cannot be computed for this run.

    The evaluation goes on without the method and reports the reason (e.g. the SVM
    when the training split lacks a class).
    """


class ScoringMethod:
    """A scoring method (subclass and override :meth:`score`, or pass ``score=``).

    Args:
        name: column name (an identifier other than ``key``, ``label``, ``all``).
        description: one line for the report and ``--help``.
        needs: the stage whose ``best.ckpt`` the method needs (``slice`` for the
            stage-1 baselines, the stage itself for a volume model).
        order: report column position (lower first): the built-in baselines use
            10-30, volume models ``100 + stage order``.
        score: ``(ctx, role) -> MethodScores``; default :meth:`score` of the subclass.
        default: evaluated when ``ich3d evaluate`` is given no ``--methods`` (default
            True); an opt-in method (``slice_svm``, ``ae_svm``) runs when named by
            ``--methods`` or by the config's ``evaluation.methods``.
    """

    def __init__(
        self,
        name: str,
        description: str,
        *,
        needs: str,
        order: int = 50,
        score: Callable[[Any, str], MethodScores] | None = None,
        default: bool = True,
    ) -> None:
        if not all(p.isidentifier() for p in name.split("+")) or name in _RESERVED:  # + : TTA variants
            raise ValueError(
                f"method name {name!r} must be an identifier other than {', '.join(sorted(_RESERVED))} "
                "(or identifiers joined by '+')"
            )
        self.name = name
        self.description = description
        self.needs = needs
        self.order = int(order)
        self._score = score
        self.default = bool(default)

    def describe(self, config: Any) -> str:
        """The description shown in the report for this run's ``config`` (default :attr:`description`)."""
        return self.description

    def score(self, ctx: Any, role: str) -> MethodScores:
        """Scores of every volume of ``role`` (``evaluated``, ``val``)."""
        if self._score is None:
            raise NotImplementedError(f"method {self.name!r} has no score function")
        return self._score(ctx, role)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, needs={self.needs!r}, order={self.order})"


def slice_stage_name() -> str:
    """The stage-1 slice CNN the baselines read (:func:`ich3d.stages.slice_stage`)."""
    return slice_stage().name


_METHODS: dict[str, ScoringMethod] = {}
_PROVIDERS: list[Callable[[], Iterable[ScoringMethod]]] = []


def _discover() -> None:
    """Import every module of :mod:`ich3d.evaluation.methods` once (each registers its entry)."""
    discover_once("ich3d.evaluation.methods")


def register_method(method: ScoringMethod) -> ScoringMethod:
    """Add ``method`` to the registry and return it.

    Raises:
        ValueError: a method of that name exists (built in, registered, or a volume stage's).
    """
    _discover()
    if method.name in method_names() and _METHODS.get(method.name) is not method:
        raise ValueError(f"a scoring method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a registered method (tests that register a toy method clean up with this)."""
    _METHODS.pop(name, None)


def register_provider(provider: Callable[[], Iterable[ScoringMethod]]) -> None:
    """Add a function that lists methods each time the registry is read.

    The volume models use it: one method per declared volume stage, so a stage
    registered later (a user's) is a method as soon as it exists.
    """
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)


def all_methods() -> list[ScoringMethod]:
    """Every method, by ``order`` (then name)."""
    _discover()
    found: dict[str, ScoringMethod] = dict(_METHODS)
    for provider in _PROVIDERS:
        for m in provider():
            found.setdefault(m.name, m)
    return sorted(found.values(), key=lambda m: (m.order, m.name))


def method_names() -> list[str]:
    """The names of :func:`all_methods`, in report order."""
    return [m.name for m in all_methods()]


def get_method(name: str) -> ScoringMethod:
    """The method called ``name``.

    Raises:
        UserError: no such method (the message lists the known ones).
    """
    for m in all_methods():
        if m.name == name:
            return m
    raise UserError(f"unknown scoring method {name!r}; expected one of {', '.join(method_names())}")


def methods_for_stages(stages: Iterable[str]) -> list[ScoringMethod]:
    """The methods that need one of ``stages`` (``--stages slice`` = ``max``, ``p95``, ``svm`` ...)."""
    wanted = set(stages)
    return [m for m in all_methods() if m.needs in wanted]
