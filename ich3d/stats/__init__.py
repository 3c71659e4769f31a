"""Pure statistics (numpy/scipy, no torch, no ich3d layer above :mod:`ich3d.errors`).

* :mod:`.delong`: ROC AUC with DeLong intervals and paired tests (pROC conventions);
* :mod:`.roc_table`: predictions tables -> DeLong statistics -> Markdown;
* :mod:`.operating_points`: thresholds chosen on validation, Wilson intervals;
* :mod:`.log_loss`: the RSNA challenge's weighted multi-label log loss;
* :mod:`.multiplicity`: Holm-Bonferroni adjusted p-values;
* :mod:`.formatting`: JSON-safe numbers and the shared table formats.
"""

from __future__ import annotations

from ich3d.stats.delong import DeLongResult, ModelAUC, PairTest, delong_roc, normal_quantile
from ich3d.stats.log_loss import per_target_log_loss, weighted_log_loss
from ich3d.stats.multiplicity import holm_adjust
from ich3d.stats.operating_points import (
    OperatingPoint,
    Proportion,
    apply_threshold,
    operating_point_entries,
    operating_points,
    wilson_interval,
)

__all__ = [
    "DeLongResult",
    "ModelAUC",
    "PairTest",
    "delong_roc",
    "normal_quantile",
    "per_target_log_loss",
    "weighted_log_loss",
    "holm_adjust",
    "OperatingPoint",
    "Proportion",
    "apply_threshold",
    "operating_point_entries",
    "operating_points",
    "wilson_interval",
]
