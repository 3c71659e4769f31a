"""``max``: the stage-1 slice CNN's largest slice probability of a volume."""

from __future__ import annotations

from typing import Any

import numpy as np

from ich3d.evaluation.methods.base import (
    MethodScores,
    ScoringMethod,
    register_method,
    slice_stage_name,
)

__all__ = ["MaxSlice"]


class MaxSlice(ScoringMethod):
    """The maximum slice probability (:func:`~ich3d.evaluation.baselines.max_score`)."""

    def score(self, ctx: Any, role: str) -> MethodScores:
        from ich3d.evaluation.baselines import max_score

        out = ctx.slice_outputs(role)
        per_target = None
        if out.target_probs:  # one maximum per target
            per_target = np.stack([max_score([p[:, k] for p in out.target_probs]) for k in range(len(ctx.targets))], 1)
        return MethodScores(
            out.keys,
            max_score(out.probs),
            seconds=ctx.slice_seconds(role),
            load_seconds=ctx.slice_load_seconds(role),
            target_scores=per_target,
        )


register_method(
    MaxSlice("max", "stage-1 slice CNN, maximum slice probability", needs=slice_stage_name(), order=10)
)
