"""Volume scores from slice outputs without a sequence model (the method's baselines).

All functions are pure and work on per-volume NumPy arrays produced by the
stage-1 slice CNN:

* ``max``: :func:`max_score`, the largest slice probability of a volume;
* ``p95``: :func:`percentile_score`, a percentile (default 95) of the slice
  probabilities;
* ``svm``: :func:`fit_linear_svm`, a linear SVM on the volume's N x F slice
  features, zero-padded at both ends (:func:`pad_features`) to one common length
  and flattened.

Slices are in patient-axis order (the order of the cache), which matters for
the SVM only.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ich3d.errors import UserError

__all__ = [
    "DEFAULT_CS",
    "volume_probs",
    "aggregate_volumes",
    "max_score",
    "percentile_score",
    "pad_features",
    "pad_and_flatten",
    "SVMBaseline",
    "PrimalLinearSVM",
    "LIBLINEAR_MAX_VALUES",
    "fit_linear_svm",
    "select_c_on_validation",
]

log = logging.getLogger(__name__)

#: C values tried by :func:`fit_linear_svm` (flattened features are high-dimensional,
#: so the grid leans towards strong regularisation).
DEFAULT_CS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def volume_probs(volumes: Sequence[ArrayLike]) -> list[np.ndarray]:
    """Each volume's slice probabilities as a 1-D float64 array.

    Raises:
        UserError: a volume without slices or with NaN.
    """
    out = []
    for i, v in enumerate(volumes):
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        if a.size == 0:
            raise UserError(f"volume {i} has no slice probability")
        if np.isnan(a).any():
            raise UserError(f"volume {i} has NaN slice probabilities")
        out.append(a)
    return out


def max_score(volumes: Sequence[ArrayLike]) -> np.ndarray:
    """``max`` baseline: the maximum slice probability of each volume.

    Args:
        volumes: one 1-D array of slice probabilities per volume.

    Returns:
        Scores, shape ``(n_volumes,)``, float64.

    Raises:
        UserError: a volume without slices or with NaN.
    """
    return aggregate_volumes(volumes, np.max)


def aggregate_volumes(volumes: Sequence[ArrayLike], aggregate: Callable[[np.ndarray], float]) -> np.ndarray:
    """One score per volume: ``aggregate`` of its slice probabilities.

    Args:
        volumes: one 1-D array of slice probabilities per volume.
        aggregate: slice probabilities (1-D float64) -> the volume's score.

    Returns:
        Scores, shape ``(n_volumes,)``, float64.

    Raises:
        UserError: a volume without slices or with NaN.
    """
    return np.array([float(aggregate(a)) for a in volume_probs(volumes)], dtype=np.float64)


def percentile_score(volumes: Sequence[ArrayLike], q: float = 95.0) -> np.ndarray:
    """``p95`` baseline: the q-th percentile of each volume's slice probabilities.

    NumPy's default ``"linear"`` method (R type 7): with the N probabilities
    sorted ascending as ``x[0] <= ... <= x[N-1]`` and ``h = (N - 1) q / 100``,
    the percentile is ``x[floor(h)] + (h - floor(h)) (x[floor(h) + 1] - x[floor(h)])``.
    E.g. N = 11 and q = 95 give h = 9.5: halfway between the second largest
    and the largest probability.

    Args:
        volumes: one 1-D array of slice probabilities per volume.
        q: percentile in [0, 100]; default 95.

    Returns:
        Scores, shape ``(n_volumes,)``, float64.

    Raises:
        UserError: q outside [0, 100], a volume without slices or with NaN.
    """
    if not 0.0 <= float(q) <= 100.0:
        raise UserError(f"percentile must be in [0, 100], got {q}")
    return aggregate_volumes(volumes, lambda a: np.percentile(a, q, method="linear"))


def pad_features(feats: ArrayLike, length: int) -> tuple[np.ndarray, bool]:
    """Zero-pad (both ends) or centre-crop a volume's slice features to ``length`` rows.

    Padding: ``length - N`` zero rows are split between the two ends,
    ``(length - N) // 2`` before the first slice and the rest after the last,
    so an odd extra row goes at the end. Cropping (``N > length``) keeps the
    ``length`` central rows, starting at ``(N - length) // 2``: an odd extra row
    is again removed from the end.

    Args:
        feats: features of one volume, shape ``(N, F)`` (N slices in order).
        length: number of rows wanted, >= 1.

    Returns:
        ``(array of shape (length, F) float64, cropped)`` where ``cropped`` is
        True when rows were removed.

    Raises:
        UserError: feats not 2-D, no slice, or length < 1.
    """
    a = np.asarray(feats, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise UserError(f"slice features must have shape (N >= 1, F), got {a.shape}")
    if length < 1:
        raise UserError(f"padding length must be >= 1, got {length}")
    n, f = a.shape
    if n > length:
        start = (n - length) // 2
        return a[start : start + length].copy(), True
    out = np.zeros((length, f), dtype=np.float64)
    before = (length - n) // 2
    out[before : before + n] = a
    return out, False


def pad_and_flatten(
    volumes: Sequence[ArrayLike], length: int, dtype: Any = np.float64
) -> tuple[np.ndarray, int]:
    """:func:`pad_features` every volume and flatten it to one row.

    The matrix is allocated once and filled in place (no per-volume copies), in
    ``dtype`` (float32 halves it for the ``lbfgs`` SVM solver).

    Args:
        volumes: one ``(N_i, F)`` feature array per volume (the same F for all).
        length: common number of slices.
        dtype: dtype of the matrix (default float64).

    Returns:
        ``(X of shape (n_volumes, length * F), number of cropped volumes)``.

    Raises:
        UserError: no volume, or feature widths that differ.
    """
    if len(volumes) == 0:
        raise UserError("no volume to pad")
    if length < 1:
        raise UserError(f"padding length must be >= 1, got {length}")
    first = np.asarray(volumes[0])
    if first.ndim != 2:
        raise UserError(f"slice features must have shape (N >= 1, F), got {first.shape}")
    width = int(first.shape[1])
    out = np.zeros((len(volumes), length * width), dtype=dtype)
    n_cropped = 0
    for i, v in enumerate(volumes):
        a = np.asarray(v)
        if a.ndim != 2 or a.shape[0] == 0:
            raise UserError(f"slice features must have shape (N >= 1, F), got {a.shape}")
        if a.shape[1] != width:
            raise UserError(f"volume {i} has {a.shape[1]} features per slice, volume 0 has {width}")
        n = a.shape[0]
        row = out[i].reshape(length, width)
        if n > length:  # centre crop, as pad_features
            start = (n - length) // 2
            row[:] = a[start : start + length]
            n_cropped += 1
        else:
            before = (length - n) // 2
            row[before : before + n] = a
    return out, n_cropped


class PrimalLinearSVM:
    """The objective of ``LinearSVC`` (L2 penalty, squared hinge, regularised intercept),
    minimised in the primal by L-BFGS on a float32 matrix.

    ``LinearSVC`` (liblinear) copies a dense float64 matrix and then builds a
    16-byte node per non-zero value, about 30 bytes per value in all; this solver
    reads a float32 matrix in place (4 bytes per value, plus vectors), so the
    ``svm`` baseline fits at RSNA scale. The optimum is the same convex problem's:
    decision values agree with ``LinearSVC``'s up to the solvers' tolerances
    (``tests/test_baselines.py``).

    Objective: ``0.5 * (|w|^2 + b^2) + C * sum(max(0, 1 - y_i (w.x_i + b))^2)``,
    ``y_i`` in {-1, +1} (``LinearSVC`` with ``intercept_scaling=1``).
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000, tol: float = 1e-5) -> None:
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0
        self.converged = False

    def fit(self, x: np.ndarray, y: ArrayLike) -> PrimalLinearSVM:
        from scipy.optimize import minimize

        x = np.asarray(x, dtype=np.float32)
        sign = np.where(np.asarray(y) == 1, 1.0, -1.0)
        d = x.shape[1]

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:d], theta[d]
            margin = (x @ w.astype(np.float32)).astype(np.float64) + b
            z = np.maximum(1.0 - sign * margin, 0.0)  # active rows: z > 0
            coefs = (2.0 * self.C) * sign * z  # d(loss)/d(margin) = -coefs; 0 where inactive
            f = 0.5 * (float(w @ w) + b * b) + self.C * float(z @ z)
            gw = w - (coefs.astype(np.float32) @ x).astype(np.float64)  # no copy of the active rows
            gb = b - float(coefs.sum())
            return f, np.concatenate([gw, [gb]])

        theta0 = np.zeros(d + 1)
        # relative stopping rule: the float32 products make an absolute gradient bound
        # unreachable on large problems
        gtol = self.tol * max(1.0, float(np.abs(objective(theta0)[1]).max()))
        res = minimize(
            objective, theta0, jac=True, method="L-BFGS-B",
            options={"maxiter": self.max_iter, "gtol": gtol, "ftol": 1e-12},
        )
        self.coef_ = res.x[:d]
        self.intercept_ = float(res.x[d])
        # float32 rounding can end the line search next to the optimum ("ABNORMAL"):
        # that counts as converged when the gradient is within 100x the tolerance
        self.converged = bool(res.success) or float(np.abs(res.jac).max()) <= 100 * gtol
        return self

    def decision_function(self, x: ArrayLike) -> np.ndarray:
        if self.coef_ is None:
            raise RuntimeError("fit first")
        x = np.asarray(x, dtype=np.float32)
        return (x @ self.coef_.astype(np.float32)).astype(np.float64) + self.intercept_


def select_c_on_validation(
    make: Any, cs: Sequence[float], xtr: Any, ytr: np.ndarray, xva: Any, yva: np.ndarray, *, what: str
) -> tuple[float, float, Any, dict[float, float]]:
    """Fit ``make(C)`` on train for each C (ascending), keep the best validation AUC.

    Ties go to the smallest C (strongest regularisation). A liblinear fit that does
    not converge, or an L-BFGS one (``converged`` False), is logged as a warning.

    Returns:
        ``(C, validation AUC, fitted model, {C: validation AUC})``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import roc_auc_score

    val_auc: dict[float, float] = {}
    best: tuple[float, float, Any] | None = None
    for c in cs:
        model = make(c)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(xtr, ytr)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught) or getattr(model, "converged", True) is False:
            log.warning("%s with C=%g did not converge", what, c)
        auc = float(roc_auc_score(yva, model.decision_function(xva)))
        val_auc[c] = auc
        log.info("%s C=%g: validation AUC %.4f", what, c, auc)
        if best is None or auc > best[1]:
            best = (c, auc, model)
    assert best is not None
    return best[0], best[1], best[2], val_auc


#: ``svm_solver="auto"`` uses liblinear up to this many training values (n x length x F).
LIBLINEAR_MAX_VALUES = 20_000_000


@dataclass
class SVMBaseline:
    """A linear SVM on zero-padded, flattened slice features.

    Attributes:
        model: the fitted ``sklearn.svm.LinearSVC`` (C chosen on validation).
        C: the chosen regularisation parameter.
        length: common number of slices (the longest training volume by default).
        n_features: features per slice (F).
        val_auc: validation AUC for each C tried, in the order tried.
        n_cropped_train: training volumes cropped to ``length`` (0 with the default length).
        n_cropped_val: validation volumes cropped to ``length``.
        solver: ``liblinear`` or ``lbfgs`` (see :func:`fit_linear_svm`).
    """

    model: Any
    C: float
    length: int
    n_features: int
    val_auc: dict[float, float] = field(default_factory=dict)
    n_cropped_train: int = 0
    n_cropped_val: int = 0
    solver: str = "liblinear"

    def decision_function(self, volumes: Sequence[ArrayLike]) -> tuple[np.ndarray, int]:
        """Signed distance to the hyperplane of each volume (higher = more likely positive).

        Args:
            volumes: one ``(N_i, F)`` feature array per volume.

        Returns:
            ``(scores (n_volumes,) float64, number of volumes cropped to length)``.
        """
        dtype = np.float32 if self.solver == "lbfgs" else np.float64
        x, n_cropped = pad_and_flatten(volumes, self.length, dtype=dtype)
        if x.shape[1] != self.length * self.n_features:
            raise UserError(
                f"volumes have {x.shape[1] // self.length} features per slice, the SVM was fitted on {self.n_features}"
            )
        return np.asarray(self.model.decision_function(x), dtype=np.float64), n_cropped

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no model weights)."""
        return {
            "C": self.C,
            "length": self.length,
            "n_features": self.n_features,
            "val_auc": {repr(c): a for c, a in self.val_auc.items()},
            "n_cropped_train": self.n_cropped_train,
            "n_cropped_val": self.n_cropped_val,
            "solver": self.solver,
        }


def _labels(y: ArrayLike, n: int, what: str) -> np.ndarray:
    a = np.asarray(y)
    if a.shape != (n,):
        raise UserError(f"{what}: {a.shape[0] if a.ndim else 0} labels for {n} volumes")
    if not np.isin(a, (0, 1)).all():
        raise UserError(f"{what}: labels must be 0 or 1")
    if a.min() == a.max():
        raise UserError(f"{what}: needs both positive and negative volumes")
    return a.astype(np.int64)


def fit_linear_svm(
    train_feats: Sequence[ArrayLike],
    train_y: ArrayLike,
    val_feats: Sequence[ArrayLike],
    val_y: ArrayLike,
    Cs: Sequence[float] = DEFAULT_CS,
    *,
    length: int | None = None,
    class_weight: str | None = None,
    max_iter: int = 10_000,
    random_state: int = 0,
    solver: str = "auto",
) -> SVMBaseline:
    """``svm`` baseline: fit a linear SVM per C on train, keep the best validation AUC.

    Every volume's ``(N, F)`` features are zero-padded at both ends (or
    centre-cropped) to ``length`` slices and flattened to ``length * F`` values;
    ``sklearn.svm.LinearSVC`` (squared hinge, L2) is fitted on the training
    volumes for each C, scored on validation with ``decision_function`` and
    ranked by ROC AUC. Ties go to the smallest C (strongest regularisation).
    The returned model is the one fitted on train with the chosen C (it is not
    refitted on train + validation).

    Args:
        train_feats: one ``(N_i, F)`` feature array per training volume.
        train_y: 0/1 volume labels of the training volumes.
        val_feats: one ``(N_i, F)`` feature array per validation volume.
        val_y: 0/1 volume labels of the validation volumes.
        Cs: C values to try; default :data:`DEFAULT_CS`.
        length: common slice count; default the longest training volume.
        class_weight: passed to ``LinearSVC`` (``None`` or ``"balanced"``); default None.
        max_iter: liblinear iterations; default 10000.
        random_state: liblinear seed; default 0.
        solver: ``liblinear`` (``sklearn.svm.LinearSVC``), ``lbfgs``
            (:class:`PrimalLinearSVM`: the same objective on a float32 matrix, for
            large problems) or ``auto`` (default): liblinear up to
            :data:`LIBLINEAR_MAX_VALUES` training values, lbfgs beyond.

    Returns:
        The :class:`SVMBaseline`.

    Raises:
        UserError: empty Cs, non-positive C, label problems, or feature widths that differ.
    """
    from sklearn.svm import LinearSVC

    cs = sorted(float(c) for c in Cs)
    if not cs or cs[0] <= 0:
        raise UserError(f"Cs must be positive numbers, got {list(Cs)}")
    if len(train_feats) == 0 or len(val_feats) == 0:
        raise UserError("fit_linear_svm needs training and validation volumes")
    ytr = _labels(train_y, len(train_feats), "SVM training set")
    yva = _labels(val_y, len(val_feats), "SVM validation set")
    if solver not in ("auto", "liblinear", "lbfgs"):
        raise UserError(f"svm solver must be auto, liblinear or lbfgs, got {solver!r}")
    if length is None:
        length = max(int(np.shape(v)[0]) for v in train_feats)
    n_values = len(train_feats) * length * int(np.shape(train_feats[0])[1])
    if solver == "auto":
        solver = "liblinear" if n_values <= LIBLINEAR_MAX_VALUES else "lbfgs"
    dtype = np.float64 if solver == "liblinear" else np.float32
    xtr, n_crop_tr = pad_and_flatten(train_feats, length, dtype=dtype)
    xva, n_crop_va = pad_and_flatten(val_feats, length, dtype=dtype)
    if xtr.shape[1] != xva.shape[1]:
        raise UserError(
            f"validation volumes have {xva.shape[1] // length} features per slice, "
            f"training volumes {xtr.shape[1] // length}"
        )

    if solver == "lbfgs" and class_weight is not None:
        raise UserError("the lbfgs SVM solver has no class_weight; set evaluation.svm_solver=liblinear")
    log.info("SVM: %d training volumes x %d values, solver %s", len(train_feats), xtr.shape[1], solver)

    def make(c: float) -> Any:
        if solver == "lbfgs":
            return PrimalLinearSVM(C=c)
        # dual="auto": liblinear's primal solver when volumes outnumber values per volume (the same
        # objective; its cost grows linearly with the volumes where the dual's grows faster)
        return LinearSVC(C=c, class_weight=class_weight, max_iter=max_iter, random_state=random_state, dual="auto")

    best_c, _, best_model, val_auc = select_c_on_validation(make, cs, xtr, ytr, xva, yva, what="SVM")
    if n_crop_tr or n_crop_va:
        log.info("SVM: cropped %d training and %d validation volumes to %d slices", n_crop_tr, n_crop_va, length)
    return SVMBaseline(
        model=best_model,
        C=best_c,
        length=int(length),
        n_features=xtr.shape[1] // length,
        val_auc=val_auc,
        n_cropped_train=n_crop_tr,
        n_cropped_val=n_crop_va,
        solver=solver,
    )
