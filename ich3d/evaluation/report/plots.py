"""ROC curves of several methods in one figure (matplotlib, no display needed).

The figure is drawn with the object-oriented matplotlib API on an Agg canvas,
so it neither needs a display nor touches pyplot's global state. Titles are
free text chosen by the caller: never put patient identifiers or file names
in them (use the hashed keys of :mod:`ich3d.data.schema` if a case must be named).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from ich3d.stats.delong import DeLongResult

__all__ = ["RocCurve", "roc_curves", "legend_label", "plot_roc", "plot_roc_scores"]

#: (false-positive rate, true-positive rate) of one method.
RocCurve = tuple[np.ndarray, np.ndarray]


def roc_curves(labels: ArrayLike, scores: ArrayLike) -> list[RocCurve]:
    """ROC curve points of each score column (``sklearn.metrics.roc_curve``).

    Args:
        labels: 0/1 labels, shape ``(n,)``.
        scores: scores ``(n,)`` or ``(n, k)``; higher = more likely positive.

    Returns:
        One ``(fpr, tpr)`` pair per column, each from (0, 0) to (1, 1).
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    curves: list[RocCurve] = []
    for c in range(s.shape[1]):
        fpr, tpr, _ = roc_curve(y, s[:, c], pos_label=1)
        curves.append((fpr, tpr))
    return curves


def legend_label(name: str, auc: float, lo: float, hi: float, digits: int = 3) -> str:
    """``"name AUC [lo, hi]"`` with ``digits`` decimals (default 3)."""
    return f"{name} {auc:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def plot_roc(
    curves: Sequence[RocCurve],
    result: DeLongResult,
    out_png: str | Path,
    title: str = "ROC curves",
    *,
    dpi: int = 150,
) -> Path:
    """Draw every method's ROC curve in one figure and save it as PNG.

    Args:
        curves: one ``(fpr, tpr)`` pair per method, in the column order of
            ``result`` (e.g. from :func:`roc_curves`, or gathered elsewhere).
        result: DeLong statistics of the same columns; gives the legend
            ``"name AUC [lo, hi]"`` (interval at ``result.level``).
        out_png: output file; parent folders are created.
        title: figure title; free text without identifiers. Default "ROC curves".
        dpi: resolution; default 150.

    Returns:
        The path written.

    Raises:
        ValueError: when the number of curves differs from the number of methods.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve_list = [(np.asarray(f, dtype=np.float64), np.asarray(t, dtype=np.float64)) for f, t in curves]
    if len(curve_list) != len(result.models):
        raise ValueError(f"{len(curve_list)} curves for {len(result.models)} methods in the DeLong result")

    fig = Figure(figsize=(6.0, 6.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for (fpr, tpr), m in zip(curve_list, result.models, strict=True):
        ax.plot(fpr, tpr, linewidth=1.6, label=legend_label(m.name, m.auc, m.ci_lower, m.ci_upper))
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(
        loc="lower right",
        fontsize="small",
        title=f"AUC [{result.level * 100:g}% CI]",
        title_fontsize="small",
    )
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    return out


def plot_roc_scores(
    labels: ArrayLike,
    scores: ArrayLike,
    result: DeLongResult,
    out_png: str | Path,
    title: str = "ROC curves",
    *,
    dpi: int = 150,
) -> Path:
    """:func:`plot_roc` from labels and the ``(n, k)`` scores ``result`` was computed on."""
    return plot_roc(roc_curves(labels, scores), result, out_png, title, dpi=dpi)
