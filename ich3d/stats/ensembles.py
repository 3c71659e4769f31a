"""The ensemble rule shared by the fold ensemble and ``ich3d ensemble``: mean probability, else mean rank.

A set of member scores that are all probabilities (every value in [0, 1]) is
ensembled by the mean probability. Other scores (the ``svm`` baseline's decision
values, whose scale differs from member to member) by the mean of each member's
rank-normalised scores (average ranks divided by the number of volumes, in (0, 1]):
a ranking, not a calibrated score, so it has no operating points.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["ensemble_scores"]


def ensemble_scores(members: np.ndarray) -> tuple[np.ndarray, str]:
    """The ensemble of ``(n, K)`` member scores and its rule (module docstring).

    Returns:
        ``(scores (n,), "mean probability" | "mean rank")``.
    """
    members = np.asarray(members, dtype=float)
    if np.all((members >= 0) & (members <= 1)):
        return members.mean(axis=1), "mean probability"
    ranks = np.column_stack([rankdata(members[:, j]) / len(members) for j in range(members.shape[1])])
    return ranks.mean(axis=1), "mean rank"
