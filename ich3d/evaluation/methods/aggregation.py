"""Slice aggregations: a volume score that is a function of the stage-1 slice probabilities.

``max``, ``p95`` and a user's ``mean`` are each a name and a function::

    import numpy as np
    from ich3d.evaluation.methods import SliceAggregation, register_method

    register_method(SliceAggregation("mean", "stage-1 slice CNN, mean slice probability", np.mean, order=25))

The stage-1 pass is the context's (one per role, shared with ``max``, ``p95``,
``svm``); with several targets (``data.targets``) the same function scores each
target's slice probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ich3d.evaluation.inference.baselines import aggregate_volumes
from ich3d.evaluation.methods.base import MethodScores, ScoringMethod, slice_stage_name

__all__ = ["SliceAggregation"]


class SliceAggregation(ScoringMethod):
    """A volume score from the volume's stage-1 slice probabilities alone.

    Args:
        name: the method's name (column of ``predictions.csv``).
        description: one line for the report and ``--help``.
        aggregate: slice probabilities of one volume (1-D float64, slice order) -> its
            score; default :meth:`aggregate` of a subclass.
        order: report column position (the built-in aggregations use 10-25).
        default: evaluated without ``--methods`` (default True).
    """

    def __init__(
        self,
        name: str,
        description: str,
        aggregate: Callable[[np.ndarray], float] | None = None,
        *,
        order: int = 25,
        default: bool = True,
    ) -> None:
        super().__init__(name, description, needs=slice_stage_name(), order=order, default=default)
        self._aggregate = aggregate

    def aggregate(self, probs: np.ndarray) -> float:
        """One volume's score from its slice probabilities (override, or pass ``aggregate=``)."""
        if self._aggregate is None:
            raise NotImplementedError(f"slice aggregation {self.name!r} has no aggregate function")
        return float(self._aggregate(probs))

    def score_volumes(self, volumes: Sequence[np.ndarray], config: Any) -> np.ndarray:
        """Scores of ``volumes`` (one array of slice probabilities each) for the run's ``config``."""
        return aggregate_volumes(volumes, self.aggregate)

    def score(self, ctx: Any, role: str) -> MethodScores:
        out = ctx.slice_outputs(role)
        per_target = None
        if out.target_probs:  # one score per target, from that target's slice probabilities
            per_target = np.stack(
                [self.score_volumes([p[:, k] for p in out.target_probs], ctx.config) for k in range(len(ctx.targets))],
                1,
            )
        return MethodScores(
            out.keys,
            self.score_volumes(out.probs, ctx.config),
            seconds=ctx.slice_seconds(role),
            load_seconds=ctx.slice_load_seconds(role),
            target_scores=per_target,
        )
