"""The volume models: one scoring method per declared volume stage (:func:`ich3d.stages.volume_stages`).

A method is named after its stage, described by the stage's description and
needs that stage's ``best.ckpt``; it scores depth-pooled volumes
(``data.depth_pool``) with the stage's model. Report columns follow the stages'
``order`` after the slice baselines, so a stage registered in ``ich3d.stages`` (or
by a user) is a column of ``ich3d evaluate`` without a line here.
"""

from __future__ import annotations

from typing import Any

from ich3d.evaluation.inference.passes import predict_volumes
from ich3d.evaluation.methods.base import MethodScores, ScoringMethod, register_provider
from ich3d.stages import volume_stages

__all__ = ["VolumeModelMethod", "volume_methods"]

#: Volume models come after the slice baselines in the report.
ORDER_OFFSET = 100


class VolumeModelMethod(ScoringMethod):
    """The trained volume model of one stage: ``sigmoid(model(volume))``."""

    def __init__(self, stage: Any) -> None:
        super().__init__(stage.name, stage.description, needs=stage.name, order=ORDER_OFFSET + stage.order)

    def score(self, ctx: Any, role: str) -> MethodScores:
        model = ctx.volume_model(self.needs)
        scores = predict_volumes(
            model,
            ctx.loader(role, depth_pool=ctx.config.data.depth_pool),
            ctx.device,
            progress=ctx.progress,
            desc=f"{self.name} {ctx.role_name(role)}",
            primary=ctx.primary,
        )
        return MethodScores(
            scores.keys,
            scores.probs,
            seconds=float(scores.seconds.mean()),
            load_seconds=scores.load_seconds / len(scores.keys),
            target_scores=scores.target_probs,
            slice_scores=scores.slice_probs or None,
        )


def volume_methods() -> list[VolumeModelMethod]:
    """One method per declared volume stage."""
    return [VolumeModelMethod(s) for s in volume_stages()]


register_provider(volume_methods)
