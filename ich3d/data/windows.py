"""CT intensity windows: Hounsfield units to [0, 1] channels.

A window ``(center, width)`` maps HU linearly onto [0, 1]: values at or below
``center - width / 2`` become 0, values at or above ``center + width / 2``
become 1. Several windows stacked give a multi-channel image (the usual input of
ImageNet-style encoders: brain, subdural, bone).

Every built-in window's lower edge lies above air (-1024 HU), so air maps to 0
in every built-in channel; :func:`air_values` gives the value for any window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ich3d.data.schema import HU_MIN
from ich3d.errors import UserError

__all__ = ["WINDOWS", "WindowSpec", "resolve_windows", "apply_windows", "air_values"]

#: Named windows, ``name -> (center, width)`` in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (40.0, 380.0),
    "bone_wide": (600.0, 2800.0),
}

#: A window given by name or as a ``(center, width)`` pair in HU.
WindowSpec = str | Sequence[float]


def resolve_windows(windows: Sequence[WindowSpec]) -> list[tuple[float, float]]:
    """Turn window names and ``[center, width]`` pairs into ``(center, width)`` tuples.

    Args:
        windows: names from :data:`WINDOWS` or pairs ``(center, width)`` in HU
            (width > 0). At least one.

    Returns:
        One ``(center, width)`` tuple per requested window, in order.

    Raises:
        UserError: unknown name, malformed pair, non-positive width or empty list.
    """
    if isinstance(windows, str):
        windows = [windows]
    out: list[tuple[float, float]] = []
    for w in windows:
        if isinstance(w, str):
            if w not in WINDOWS:
                raise UserError(
                    f"unknown window {w!r}; expected one of {', '.join(sorted(WINDOWS))} "
                    "or a [center, width] pair in HU"
                )
            out.append(WINDOWS[w])
            continue
        try:
            center, width = (float(v) for v in w)
        except (TypeError, ValueError):
            raise UserError(
                f"window {w!r} is neither a name ({', '.join(sorted(WINDOWS))}) "
                "nor a [center, width] pair of numbers"
            ) from None
        if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
            raise UserError(f"window {w!r}: width must be a positive number of HU")
        out.append((center, width))
    if not out:
        raise UserError("at least one window is needed")
    return out


def apply_windows(
    hu: torch.Tensor | np.ndarray,
    windows: Sequence[WindowSpec],
    *,
    channel_axis: int = 0,
) -> torch.Tensor | np.ndarray:
    """Window an HU array into float32 channels in [0, 1].

    Each channel is ``clip((hu - (center - width / 2)) / width, 0, 1)``.

    Args:
        hu: array of HU values, any shape (e.g. ``(H, W)`` or ``(T, H, W)``);
            a torch tensor or a numpy array.
        windows: window names or ``(center, width)`` pairs in HU, see
            :func:`resolve_windows`.
        channel_axis: where the new channel axis goes in the output
            (default 0: ``(H, W) -> (C, H, W)``; use 1 for ``(T, H, W) -> (T, C, H, W)``).

    Returns:
        float32 array of the input's type with one more axis of length
        ``len(windows)`` at ``channel_axis``.
    """
    spec = resolve_windows(windows)
    lo = [c - w / 2.0 for c, w in spec]
    width = [w for _, w in spec]
    if isinstance(hu, torch.Tensor):
        x = hu.float().unsqueeze(channel_axis)
        shape = [1] * x.ndim
        shape[channel_axis] = len(spec)
        lo_t = torch.tensor(lo, dtype=torch.float32, device=x.device).view(shape)
        w_t = torch.tensor(width, dtype=torch.float32, device=x.device).view(shape)
        return ((x - lo_t) / w_t).clamp_(0.0, 1.0)
    x_np = np.expand_dims(np.asarray(hu, dtype=np.float32), channel_axis)
    shape = [1] * x_np.ndim
    shape[channel_axis] = len(spec)
    lo_np = np.asarray(lo, dtype=np.float32).reshape(shape)
    w_np = np.asarray(width, dtype=np.float32).reshape(shape)
    out = (x_np - lo_np) / w_np
    np.clip(out, 0.0, 1.0, out=out)
    return out


def air_values(windows: Sequence[WindowSpec]) -> np.ndarray:
    """Return the windowed value of air (``HU_MIN``, -1024 HU) per channel, float32 ``(C,)``."""
    return apply_windows(np.array([HU_MIN], dtype=np.float32), windows, channel_axis=0)[:, 0]
