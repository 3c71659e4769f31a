"""Test-time augmentation variants of the volume models (``evaluation.tta``).

With ``evaluation.tta: [flip_lr]`` every evaluated volume model (``finetune``, ...)
gets a second column, ``finetune+flip_lr``: its probability averaged over the plain
input and the listed transforms (:mod:`ich3d.evaluation.inference.tta`). The plain
pass is shared with the plain method, so a variant costs one forward pass per
transform. The report's paired DeLong test of each variant against its plain method
is ``metrics.json``'s ``tta_tests``.

Variants are not registered methods (their names hold ``+``, and they exist only for
a config that asks for them): :func:`with_tta` adds them to an evaluation's list,
each right after its plain method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ich3d.evaluation.inference.tta import check_tta, predict_volumes_tta, tta_name
from ich3d.evaluation.methods.base import MethodScores, ScoringMethod
from ich3d.evaluation.methods.volume import VolumeModelMethod, method_scores

__all__ = ["TTAMethod", "with_tta"]


class TTAMethod(ScoringMethod):
    """A volume model's probabilities averaged over the plain input and ``transforms``."""

    def __init__(self, plain: VolumeModelMethod, transforms: Sequence[str]) -> None:
        self.plain = plain
        self.transforms = check_tta(transforms)
        super().__init__(
            tta_name(plain.name, self.transforms),
            f"{plain.description}; test-time mean over plain + {', '.join(self.transforms)}",
            needs=plain.needs,
            order=plain.order,
            default=False,
        )

    def describe(self, config: Any) -> str:
        return f"{self.plain.describe(config)}; test-time mean over plain + {', '.join(self.transforms)}"

    def score(self, ctx: Any, role: str) -> MethodScores:
        scores = predict_volumes_tta(
            ctx.volume_model(self.needs),
            ctx.loader(role, depth_pool=ctx.config.data.depth_pool),
            ctx.device,
            self.transforms,
            plain=self.plain.volume_scores(ctx, role),
            progress=ctx.progress,
            desc=f"{self.name} {ctx.role_name(role)}",
            primary=ctx.primary,
        )
        return method_scores(scores)


def with_tta(methods: Sequence[ScoringMethod], transforms: Sequence[str]) -> list[ScoringMethod]:
    """``methods`` with each volume model followed by its TTA variant (``transforms`` empty: as is).

    Raises:
        UserError: an unknown transform in ``transforms`` (``evaluation.tta``).
    """
    names = check_tta(transforms)
    out: list[ScoringMethod] = []
    for m in methods:
        out.append(m)
        if names and isinstance(m, VolumeModelMethod):
            out.append(TTAMethod(m, names))
    return out
