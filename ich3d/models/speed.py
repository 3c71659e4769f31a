"""Speed options for the convolutional encoders: ``channels_last`` memory format and ``torch.compile``.

Both leave the weights, the ``state_dict`` keys and the outputs as they are (up to
floating-point reordering), so checkpoints stay interchangeable with models that
use neither. Measured on a 2-core CPU with one thread (``python -m
benchmarks.bench_inference``; ``benchmarks/bench_gpu.py`` on a GPU): the paper's
30-slice volume through ``patel_cnn`` width 32 at 256 px and the 2 x 512 BiLSTM took
0.66-0.71x the eager time with ``channels_last`` and 0.66-0.69x with
``torch.compile`` as well (two runs; docs/performance.md has the table).

Config: ``model.channels_last`` and ``model.compile`` (both off by default;
``torch.compile`` needs a C++ compiler on a CPU and costs a compilation at the
first batch of each input shape).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

__all__ = ["speed_up"]

log = logging.getLogger(__name__)


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if isinstance(x, Tensor) and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *args[1:])


def speed_up(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Apply the speed options to ``model.encoder`` (or ``model`` itself without one), in place.

    Args:
        model: a :class:`~ich3d.models.volume.VolumeClassifier`, a
            :class:`~ich3d.models.slice_cnn.SliceClassifier` or an encoder.
        channels_last: convert the encoder's weights and its 4D input to the
            ``channels_last`` (NHWC) memory format, which cuDNN and oneDNN
            convolutions run faster.
        compile: ``torch.compile`` the encoder (``nn.Module.compile``: the module's
            call is compiled, its parameters and ``state_dict`` keys unchanged).

    Returns:
        ``model``.
    """
    encoder = getattr(model, "encoder", model)
    if channels_last and not getattr(encoder, "_ich3d_channels_last", False):
        encoder.to(memory_format=torch.channels_last)
        encoder.register_forward_pre_hook(_to_channels_last)
        encoder._ich3d_channels_last = True
    if compile and not getattr(encoder, "_ich3d_compiled", False):
        encoder.compile()
        encoder._ich3d_compiled = True
        log.info("encoder %s compiled with torch.compile", type(encoder).__name__)
    return model
