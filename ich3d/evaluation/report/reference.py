"""The published figures the report shows beside a run's: Patel et al. 2019, volume-level AUC.

Patel, Manniesing et al., "Intracranial hemorrhage detection in 3D head CT", IEEE
Access 2019 (the method ich3d implements): maximum slice probability 0.60, 95th
percentile 0.65, stage 2 (BiLSTM on the frozen CNN's features) 0.87, linear SVM on
the padded slice features 0.90, fine-tuned end to end 0.96. Keyed by the scoring
method that reproduces each figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["PATEL2019", "reference_for"]

#: method -> (how the paper names it, its published volume-level AUC)
PATEL2019: dict[str, tuple[str, float]] = {
    "max": ("maximum slice probability", 0.60),
    "p95": ("95th percentile of slice probabilities", 0.65),
    "sequence": ("stage 2: BiLSTM on frozen CNN features", 0.87),
    "svm": ("linear SVM on padded slice features", 0.90),
    "finetune": ("stage 3: fine-tuned end to end", 0.96),
}

SOURCE = "Patel et al., IEEE Access 2019"


def reference_for(methods: Sequence[str]) -> dict[str, Any]:
    """``metrics.json``'s ``reference`` entry for the evaluated ``methods`` (empty when none has a figure)."""
    rows = [m for m in methods if m in PATEL2019]
    if not rows:
        return {}
    return {
        "source": SOURCE,
        "auc": {m: PATEL2019[m][1] for m in rows},
        "labels": {m: PATEL2019[m][0] for m in rows},
    }
