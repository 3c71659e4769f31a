"""``p95``: a percentile (``evaluation.percentile``, default 95) of the stage-1 slice probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ich3d.evaluation.inference.baselines import percentile_score
from ich3d.evaluation.methods.aggregation import SliceAggregation
from ich3d.evaluation.methods.base import register_method

__all__ = ["PercentileSlice"]


class PercentileSlice(SliceAggregation):
    """The ``evaluation.percentile``-th percentile of the slice probabilities
    (:func:`~ich3d.evaluation.inference.baselines.percentile_score`)."""

    def describe(self, config: Any) -> str:
        return f"{self.description} ({config.evaluation.percentile:g}th)"

    def score_volumes(self, volumes: Sequence[np.ndarray], config: Any) -> np.ndarray:
        return percentile_score(volumes, config.evaluation.percentile)


register_method(PercentileSlice("p95", "stage-1 slice CNN, percentile of slice probabilities", order=20))
