"""A linear SVM slice classifier on frozen slice features (Dawud et al. 2019's AlexNet-SVM).

:func:`fit_slice_svm` fits ``StandardScaler`` + ``sklearn.svm.LinearSVC``
(squared hinge, L2, ``class_weight="balanced"``: each class weighs as much as the
other, the counterpart of stage 1's balanced sampling) on training slice features
for each C, scores the validation slices with ``decision_function`` and keeps
the C of the best validation slice AUC (ties: the smallest C). The model is not
refitted on train + validation. :func:`bounded_subset` draws the seeded,
stratified subset of slices that bounds the fit.

Pure NumPy / scikit-learn; the scoring methods ``slice_svm`` and ``ae_svm``
(:mod:`ich3d.evaluation.methods`) feed it the stage-1 encoder's features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ich3d.errors import UserError
from ich3d.evaluation.inference.baselines import select_c_on_validation

__all__ = ["SliceSVM", "fit_slice_svm", "bounded_subset"]

log = logging.getLogger(__name__)


def bounded_subset(labels: ArrayLike, n: int, seed: int) -> np.ndarray:
    """Sorted row indices of at most ``n`` of ``labels``, stratified by class, drawn from ``seed``.

    Each class keeps its share of ``n`` (at least one row of each class present).
    ``n`` >= the rows: every row.
    """
    y = np.asarray(labels)
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng([int(seed), 0x51C3])
    keep = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        share = max(1, round(n * len(rows) / len(y)))
        keep.append(rng.choice(rows, size=min(share, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


@dataclass
class SliceSVM:
    """A fitted slice SVM.

    Attributes:
        model: the fitted scikit-learn pipeline (``StandardScaler``, ``LinearSVC``).
        C: the chosen regularisation parameter.
        n_features: features per slice.
        val_auc: validation slice AUC per C tried.
        n_train: training slices (positive, negative).
        n_val: validation slices (positive, negative).
    """

    model: Any
    C: float
    n_features: int
    val_auc: dict[float, float] = field(default_factory=dict)
    n_train: tuple[int, int] = (0, 0)
    n_val: tuple[int, int] = (0, 0)

    def decision_function(self, x: ArrayLike) -> np.ndarray:
        """Signed distance of each slice ``(n, F)`` to the hyperplane (higher = more likely positive)."""
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.n_features:
            raise UserError(f"slice features of shape {a.shape}; the slice SVM was fitted on {self.n_features}")
        if len(a) == 0:
            return np.zeros(0)
        return np.asarray(self.model.decision_function(a), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no weights)."""
        return {
            "C": self.C,
            "n_features": self.n_features,
            "val_slice_auc": {repr(c): a for c, a in self.val_auc.items()},
            "n_train_pos": self.n_train[0],
            "n_train_neg": self.n_train[1],
            "n_val_pos": self.n_val[0],
            "n_val_neg": self.n_val[1],
            "class_weight": "balanced",
        }


def _xy(x: ArrayLike, y: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y)
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise UserError(f"{what}: features (n, F) and n labels needed, got {a.shape} and {b.shape}")
    if not np.isin(b, (0, 1)).all():
        raise UserError(f"{what}: slice labels must be 0 or 1")
    if (b == 1).sum() == 0 or (b == 0).sum() == 0:
        raise UserError(f"{what}: needs both positive and negative slices")
    return a, b.astype(np.int64)


def fit_slice_svm(
    train_x: ArrayLike,
    train_y: ArrayLike,
    val_x: ArrayLike,
    val_y: ArrayLike,
    Cs: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2),
    *,
    max_iter: int = 2000,
    random_state: int = 0,
) -> SliceSVM:
    """Fit the slice SVM for each C on the training slices, keep the best validation slice AUC.

    Args:
        train_x: training slice features ``(n, F)``.
        train_y: their 0/1 slice labels.
        val_x: validation slice features ``(m, F)``.
        val_y: their 0/1 slice labels.
        Cs: C values to try.
        max_iter: liblinear iterations; default 2000 (thousands of standardised features
            converge slowly at large C: the default grid stops at 1e-2).
        random_state: liblinear seed; default 0.

    Returns:
        The :class:`SliceSVM`.

    Raises:
        UserError: empty or non-positive Cs, a set without both classes, widths that differ.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    cs = sorted(float(c) for c in Cs)
    if not cs or cs[0] <= 0:
        raise UserError(f"Cs must be positive numbers, got {list(Cs)}")
    xtr, ytr = _xy(train_x, train_y, "slice SVM training slices")
    xva, yva = _xy(val_x, val_y, "slice SVM validation slices")
    if xtr.shape[1] != xva.shape[1]:
        raise UserError(f"validation slices have {xva.shape[1]} features, training slices {xtr.shape[1]}")

    def make(c: float) -> Any:
        return make_pipeline(
            StandardScaler(),
            LinearSVC(C=c, class_weight="balanced", max_iter=max_iter, random_state=random_state, dual="auto"),  # primal when n > d
        )

    best_c, _, best_model, val_auc = select_c_on_validation(make, cs, xtr, ytr, xva, yva, what="slice SVM")
    return SliceSVM(
        model=best_model,
        C=best_c,
        n_features=xtr.shape[1],
        val_auc=val_auc,
        n_train=(int((ytr == 1).sum()), int((ytr == 0).sum())),
        n_val=(int((yva == 1).sum()), int((yva == 0).sum())),
    )
