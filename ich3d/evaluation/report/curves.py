"""Training curves of a run: validation metric and losses per epoch of each stage, as one PNG.

Read from each stage's ``metrics.csv`` (the trainer's CSV logger): per epoch, the
last logged value of ``val/<metric>`` (the stage's selection metric, ``val/auc`` by
default), ``val/loss`` and ``train/loss_epoch``. One row of panels per stage: the
losses on the left, the validation metric on the right.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["read_stage_curves", "plot_training_curves", "training_curves"]

log = logging.getLogger(__name__)

LOSSES: tuple[str, ...] = ("train/loss_epoch", "val/loss")


def read_stage_curves(metrics_csv: str | Path, metric: str = "auc") -> pd.DataFrame | None:
    """``epoch, <loss>..., val/<metric>`` per epoch of one stage (None when nothing per epoch was logged)."""
    frame = pd.read_csv(metrics_csv)
    if "epoch" not in frame.columns:
        return None
    cols = [c for c in (*LOSSES, f"val/{metric}") if c in frame.columns]
    if not cols:
        return None
    per_epoch = frame.dropna(subset=cols, how="all").groupby("epoch")[cols].last().reset_index()
    return per_epoch if len(per_epoch) else None


def plot_training_curves(curves: dict[str, pd.DataFrame], out_png: str | Path, metric: str = "auc") -> Path:
    """Draw every stage's curves (:func:`read_stage_curves`) into ``out_png``."""
    # matplotlib's object API on an Agg canvas: no display, no pyplot state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.6 * len(curves)), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for row, (stage, frame) in enumerate(curves.items()):
        left, right = axes[row]
        for c in LOSSES:
            if c in frame.columns and frame[c].notna().any():
                left.plot(frame["epoch"], frame[c], marker="o", label=c)
        left.set_title(f"{stage}: loss")
        left.set_xlabel("epoch")
        if left.lines:
            left.legend(fontsize=8)
        col = f"val/{metric}"
        if col in frame.columns and frame[col].notna().any():
            right.plot(frame["epoch"], frame[col], marker="o", color="tab:green")
        right.set_title(f"{stage}: {col}")
        right.set_xlabel("epoch")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def training_curves(run: Any, stages: Sequence[str], out_dir: Path, metric: str = "auc") -> dict[str, Any]:
    """``training_curves.png`` in ``out_dir`` for the ``stages`` of ``run`` with a ``metrics.csv``.

    Returns:
        ``metrics.json``'s ``training_curves`` entry: ``{"file", "stages"}``, empty when no
        stage has per-epoch metrics.
    """
    curves: dict[str, pd.DataFrame] = {}
    for stage in stages:
        path = run.stage_dir(stage) / "metrics.csv"
        if path.is_file():
            try:
                frame = read_stage_curves(path, metric)
            except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                log.warning("training curves: %s unreadable (%s)", path.name, exc)
                continue
            if frame is not None:
                curves[stage] = frame
    if not curves:
        return {}
    plot_training_curves(curves, out_dir / "training_curves.png", metric)
    return {"file": "training_curves.png", "stages": list(curves)}
