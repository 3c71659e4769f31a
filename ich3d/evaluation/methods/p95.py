"""``p95``: a percentile (``evaluation.percentile``, default 95) of the stage-1 slice probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np

from ich3d.evaluation.methods.base import (
    MethodScores,
    ScoringMethod,
    register_method,
    slice_stage_name,
)

__all__ = ["PercentileSlice"]


class PercentileSlice(ScoringMethod):
    """The ``evaluation.percentile``-th percentile of the slice probabilities
    (:func:`~ich3d.evaluation.baselines.percentile_score`)."""

    def describe(self, config: Any) -> str:
        return f"{self.description} ({config.evaluation.percentile:g}th)"

    def score(self, ctx: Any, role: str) -> MethodScores:
        from ich3d.evaluation.baselines import percentile_score

        out = ctx.slice_outputs(role)
        q = ctx.config.evaluation.percentile
        per_target = None
        if out.target_probs:  # one percentile per target
            per_target = np.stack(
                [percentile_score([p[:, k] for p in out.target_probs], q) for k in range(len(ctx.targets))], 1
            )
        return MethodScores(
            out.keys,
            percentile_score(out.probs, q),
            seconds=ctx.slice_seconds(role),
            load_seconds=ctx.slice_load_seconds(role),
            target_scores=per_target,
        )


register_method(
    PercentileSlice("p95", "stage-1 slice CNN, percentile of slice probabilities", needs=slice_stage_name(), order=20)
)
