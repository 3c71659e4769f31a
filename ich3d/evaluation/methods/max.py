"""``max``: the stage-1 slice CNN's largest slice probability of a volume."""

from __future__ import annotations

import numpy as np

from ich3d.evaluation.methods.aggregation import SliceAggregation
from ich3d.evaluation.methods.base import register_method

__all__ = ["MAX"]

#: the maximum slice probability (:func:`~ich3d.evaluation.inference.baselines.max_score`)
MAX = register_method(SliceAggregation("max", "stage-1 slice CNN, maximum slice probability", np.max, order=10))
