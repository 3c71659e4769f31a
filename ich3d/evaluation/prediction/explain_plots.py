"""The PNGs of ``ich3d predict --explain``: a key slice with its heat map, and a volume's contact sheet.

Drawn with matplotlib's object API (a ``Figure`` on the Agg canvas: no display, no
global pyplot state). Titles name the slice index, rank and scores only: never a
patient identifier (:mod:`ich3d.evaluation.prediction.explain`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["overlay_png", "contact_sheet"]

#: opacity of the heat map over the brain window
ALPHA = 0.45
#: map values below this are not drawn
FLOOR = 0.2


def _title(row: Mapping[str, Any]) -> str:
    return (f"slice {row['slice_index']} (key #{row['rank']})\n{row['score_kind']} {row['score']:.3f}, "
            f"slice CNN p={row['slice_probability']:.3f}")


def _draw(ax: Any, brain: np.ndarray, cam: np.ndarray | None, row: Mapping[str, Any] | None) -> None:
    ax.imshow(brain, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if cam is not None:
        # the map where it is above FLOOR only: the anatomy stays readable under a weak map
        ax.imshow(np.ma.masked_less(cam, FLOOR), cmap="jet", vmin=0.0, vmax=1.0, alpha=ALPHA, interpolation="bilinear")
        if row is not None and row.get("cam_row") is not None:
            ax.plot([row["cam_col"]], [row["cam_row"]], marker="+", color="white", markersize=10, mew=1.5)
    if row is not None:
        ax.set_title(_title(row), fontsize=8)
    ax.set_axis_off()


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def overlay_png(path: str | Path, brain: np.ndarray, cam: np.ndarray, row: Mapping[str, Any]) -> None:
    """One key slice: the brain window beside the same window with the CAM overlaid (its peak marked).

    Args:
        path: the PNG to write.
        brain: ``(H, W)`` the brain-window channel in [0, 1].
        cam: ``(H, W)`` the class-activation map in [0, 1].
        row: the slice's ``key_slices.csv`` row (title, peak).
    """
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    _draw(left, brain, None, None)
    left.set_title("brain window", fontsize=8)
    _draw(right, brain, cam, row)
    _save(fig, Path(path))


def contact_sheet(path: str | Path, brains: np.ndarray, cams: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> None:
    """Every key slice of a volume: the brain window (top row) and the CAM overlay (bottom row).

    Args:
        path: the PNG to write.
        brains: ``(N, H, W)`` brain-window channels in [0, 1], in key order.
        cams: ``(N, H, W)`` their maps.
        rows: their ``key_slices.csv`` rows.
    """
    n = len(rows)
    fig = Figure(figsize=(2.4 * n + 0.4, 5.4), layout="constrained")
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for j, row in enumerate(rows):
        _draw(axes[0, j], brains[j], None, None)
        axes[0, j].set_title(f"slice {row['slice_index']} (key #{row['rank']})", fontsize=8)
        _draw(axes[1, j], brains[j], cams[j], row)
    fig.suptitle(f"key slices ({rows[0]['score_kind'] if rows else ''}) and Grad-CAM of the slice CNN", fontsize=9)
    _save(fig, Path(path))
