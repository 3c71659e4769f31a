"""2.5D input: each slice with its neighbours above and below, per window, as channels.

``data.context_slices: k`` gives every slice the ``2k + 1`` slices ``i - k .. i + k``
of its own volume (the RSNA 2019 winners' "2.5D" input). The channels are
**window-major**: for windows ``w_0 .. w_{C-1}`` and offsets ``-k .. k``, channel
``c * (2k + 1) + (o + k)`` is window ``w_c`` of slice ``i + o``; with three windows
and ``k = 1`` the nine channels are brain(i-1), brain(i), brain(i+1), subdural(i-1),
..., bone(i+1). ``k = 0`` is the plain input (``C`` channels, slice ``i`` only).

Edges repeat the edge slice: the neighbour ``i + o`` is clamped into ``0 .. T - 1``
(the first slice's "slice above" is the first slice itself), where ``T`` is the
volume's true number of slices (never the padding of a batch).

Which slices are neighbours is decided on the slices the model sees: stage 1 and
the slice baselines read every cached slice, so there the neighbours are the
adjacent cached slices; the volume models read the depth-pooled volume
(``data.depth_pool``), so there they are the adjacent pooled slices (``depth_pool:
1`` makes both the same).

Windowing is per voxel, so windowing the neighbours and gathering the windowed
slices give the same values; the data modules window first and gather after
(:func:`stack_context`), or read the neighbours' HU for one slice
(:func:`neighbour_indices`) and window them together (:func:`window_major`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ich3d.data.windows import WindowSpec, apply_windows
from ich3d.errors import UserError

__all__ = [
    "check_context",
    "context_width",
    "neighbour_indices",
    "stack_context",
    "window_major",
    "center_channel",
    "window_batch",
]


def check_context(context_slices: int) -> int:
    """``context_slices`` as an int >= 0.

    Raises:
        UserError: a negative or non-integer value.
    """
    if isinstance(context_slices, bool) or int(context_slices) != context_slices or context_slices < 0:
        raise UserError(f"data.context_slices must be an integer >= 0, got {context_slices!r}")
    return int(context_slices)


def context_width(context_slices: int) -> int:
    """Slices per input: ``2 * context_slices + 1``."""
    return 2 * check_context(context_slices) + 1


def center_channel(window: int, context_slices: int) -> int:
    """The input channel of window ``window`` on the slice itself (offset 0)."""
    return int(window) * context_width(context_slices) + check_context(context_slices)


def neighbour_indices(index: int, length: int, context_slices: int) -> np.ndarray:
    """The slices ``index - k .. index + k`` of a volume of ``length`` slices, edges repeated.

    Returns:
        int64 array of ``2k + 1`` indices in ``0 .. length - 1``.
    """
    k = check_context(context_slices)
    if not 0 <= index < length:
        raise ValueError(f"slice {index} outside a volume of {length} slices")
    return np.clip(np.arange(index - k, index + k + 1, dtype=np.int64), 0, length - 1)


def window_major(windowed: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """Merge a window axis and the slice-offset axis right after it into one channel axis.

    ``windowed`` has the windows at ``channel_axis`` and the ``2k + 1`` neighbours
    at ``channel_axis + 1`` (as :func:`~ich3d.data.windows.apply_windows` gives for
    HU ``(2k + 1, H, W)`` with ``channel_axis=0``); the result has ``C * (2k + 1)``
    window-major channels at ``channel_axis``.
    """
    shape = list(windowed.shape)
    merged = shape[:channel_axis] + [shape[channel_axis] * shape[channel_axis + 1]] + shape[channel_axis + 2 :]
    return windowed.reshape(merged)


def stack_context(
    volume: torch.Tensor,
    context_slices: int,
    lengths: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """Give every slice of windowed volumes its neighbours as channels (module docstring).

    Args:
        volume: windowed ``(T, C, H, W)`` or a batch ``(B, T, C, H, W)`` (padded
            along T after each volume's true length).
        context_slices: ``k``; 0 returns ``volume`` itself.
        lengths: true lengths of a batch's volumes (None: every volume whole). The
            neighbours of a real slice are clamped into its volume's true length;
            a padding slice keeps its own (padding) values in every channel.

    Returns:
        ``(T, C * (2k + 1), H, W)`` or ``(B, T, C * (2k + 1), H, W)``, window-major.
    """
    k = check_context(context_slices)
    if k == 0:
        return volume
    if volume.ndim == 4:
        return stack_context(volume[None], k, lengths)[0]
    if volume.ndim != 5:
        raise ValueError(f"expected (T, C, H, W) or (B, T, C, H, W), got {tuple(volume.shape)}")
    b, t = volume.shape[:2]
    given = lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths
    ends = [t] * b if given is None else [int(n) for n in given]
    if len(ends) != b:
        raise ValueError(f"{len(ends)} lengths for a batch of {b}")
    own = torch.arange(t)[:, None]
    pos = own + torch.arange(-k, k + 1)[None, :]  # (T, S)
    # a real slice's neighbours are clamped into its volume; a padding slice repeats itself
    index = torch.stack([torch.where(own < n, pos.clamp(0, max(n - 1, 0)), own.expand_as(pos)) for n in ends])
    flat = index.reshape(b, -1).to(volume.device)
    gathered = volume[torch.arange(b, device=volume.device)[:, None], flat]  # (B, T*S, C, H, W)
    gathered = gathered.reshape(b, t, 2 * k + 1, *volume.shape[2:])  # (B, T, S, C, H, W)
    return window_major(gathered.transpose(2, 3), 2)


def window_batch(
    hu: torch.Tensor,
    windows: Sequence[WindowSpec],
    context_slices: int,
    *,
    lengths: torch.Tensor | list[int] | None = None,
) -> torch.Tensor:
    """Window a batch of float HU into the model's input, 2.5D neighbours included.

    Args:
        hu: slices ``(B, H, W)``, slices with their neighbours ``(B, 2k + 1, H, W)``
            (``context_slices`` k > 0), or volumes ``(B, T, H, W)`` (``lengths`` given).
        windows: the windows, one channel each.
        context_slices: ``k``.
        lengths: true lengths of padded volumes; None for a slice batch.

    Returns:
        ``image`` ``(B, C * (2k + 1), H, W)`` or ``volume`` ``(B, T, C * (2k + 1), H, W)``.
    """
    if lengths is not None:
        return stack_context(apply_windows(hu, windows, channel_axis=2), context_slices, lengths)
    if check_context(context_slices):
        return window_major(apply_windows(hu, windows, channel_axis=1), 1)
    return apply_windows(hu, windows, channel_axis=1)
