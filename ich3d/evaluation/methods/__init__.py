"""The scoring methods of ``ich3d evaluate``, one module per method (see :mod:`.base`).

Built in: ``max`` and ``p95`` (the stage-1 CNN's maximum / percentile slice
probability), ``svm`` (a linear SVM on the padded stage-1 slice features) and one
volume model per declared volume stage (:mod:`.volume`). Every module of this
package is imported when the method list is first read, so a new method is one
new file here, or :func:`register_method` in a user's code.
"""

from __future__ import annotations

from ich3d.evaluation.methods.aggregation import SliceAggregation
from ich3d.evaluation.methods.base import (
    ROLES,
    MethodScores,
    MethodUnavailable,
    ScoringMethod,
    all_methods,
    get_method,
    method_names,
    methods_for_stages,
    register_method,
    register_provider,
    slice_stage_name,
    unregister_method,
)

__all__ = [
    "ROLES",
    "MethodScores",
    "MethodUnavailable",
    "ScoringMethod",
    "SliceAggregation",
    "all_methods",
    "get_method",
    "method_names",
    "methods_for_stages",
    "register_method",
    "register_provider",
    "slice_stage_name",
    "unregister_method",
]
