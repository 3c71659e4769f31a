"""The volume models: one scoring method per declared volume stage (:func:`ich3d.stages.volume_stages`).

A method is named after its stage, described by the stage's description and
needs that stage's ``best.ckpt``; it scores depth-pooled volumes
(``data.depth_pool``) with the stage's model. Report columns follow the stages'
``order`` after the slice baselines, so a stage registered in ``ich3d.stages`` (or
by a user) is a column of ``ich3d evaluate`` without a line here.
"""

from __future__ import annotations

from typing import Any

from ich3d.evaluation.inference.passes import VolumeScores, predict_volumes
from ich3d.evaluation.methods.base import MethodScores, ScoringMethod, register_provider
from ich3d.stages import volume_stages

__all__ = ["VolumeModelMethod", "method_scores", "volume_methods"]

#: Volume models come after the slice baselines in the report.
ORDER_OFFSET = 100


class VolumeModelMethod(ScoringMethod):
    """The trained volume model of one stage: ``sigmoid(model(volume))``."""

    def __init__(self, stage: Any) -> None:
        super().__init__(stage.name, stage.description, needs=stage.name, order=ORDER_OFFSET + stage.order)

    def volume_scores(self, ctx: Any, role: str) -> VolumeScores:
        """The model's plain pass over ``role`` (once per evaluation: TTA variants reuse it)."""

        def run() -> VolumeScores:
            return predict_volumes(
                ctx.volume_model(self.needs),
                ctx.loader(role, depth_pool=ctx.config.data.depth_pool),
                ctx.device,
                progress=ctx.progress,
                desc=f"{self.name} {ctx.role_name(role)}",
                primary=ctx.primary,
            )

        return ctx.memo(("volume_scores", self.needs, role), run)

    def score(self, ctx: Any, role: str) -> MethodScores:
        return method_scores(self.volume_scores(ctx, role))


def method_scores(scores: VolumeScores) -> MethodScores:
    """A volume pass's :class:`VolumeScores` as a method's :class:`MethodScores`."""
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
