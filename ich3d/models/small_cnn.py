"""The small CNN trained from scratch of Dawud et al. (2019), as a slice encoder.

docs/method.md section 2: four blocks of a 3x3 convolution with batch norm and
dropout (10, 20, 30, 40 feature maps), each followed by 2x2 max pooling, then
two fully connected layers of 300 units with batch norm and dropout; the
paper's softmax is the :class:`~ich3d.models.slice_cnn.SliceClassifier` on top.

Block order: ``Conv3x3(pad 1) -> BatchNorm -> ReLU -> Dropout -> MaxPool2x2``;
dense: ``Linear -> BatchNorm1d -> ReLU -> Dropout``, twice. The dropout rates
and the activation are not given in the source; they are parameters.

The flattened size of a fully connected input layer depends on the image size.
Here the last block's maps are adaptively average-pooled to
``input_size // 16`` squared (the identity at the nominal ``input_size``), so
the parameter count is fixed by ``input_size`` and any input of at least 16 px
runs. At the default 256 px the first dense layer reads 40 x 16 x 16 = 10,240
values.
"""

from __future__ import annotations

from torch import Tensor, nn

from ich3d.errors import UserError
from ich3d.models.registry import ENCODERS

__all__ = ["DawudSmallCNN"]

_MAPS = (10, 20, 30, 40)


@ENCODERS.register("small_cnn")
class DawudSmallCNN(nn.Module):
    """Small CNN of Dawud et al. (2019): ``(N, C, H, W) -> (N, 300)``.

    Args:
        in_channels: Input channels. Default 3.
        maps: Feature maps of the four conv blocks. Default (10, 20, 30, 40).
        fc_units: Units of each of the two dense layers (= ``out_features``). Default 300.
        conv_dropout: Dropout after each conv block. Default 0.1.
        fc_dropout: Dropout after each dense layer. Default 0.5.
        input_size: Nominal input side in pixels; fixes the dense input
            ``maps[-1] * (input_size // 16) ** 2``. Default 256.
    """

    def __init__(
        self,
        in_channels: int = 3,
        maps: tuple[int, ...] | list[int] = _MAPS,
        fc_units: int = 300,
        conv_dropout: float = 0.1,
        fc_dropout: float = 0.5,
        input_size: int = 256,
    ) -> None:
        super().__init__()
        maps = tuple(int(m) for m in maps)
        if len(maps) < 1 or min(maps) < 1:
            raise UserError(f"maps must be positive integers, got {maps}")
        grid = input_size // 2 ** len(maps)
        if grid < 1:
            raise UserError(
                f"input_size {input_size} is too small for {len(maps)} poolings (need >= {2 ** len(maps)})"
            )
        blocks: list[nn.Module] = []
        channels = in_channels
        for m in maps:
            blocks += [
                nn.Conv2d(channels, m, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(m),
                nn.ReLU(inplace=True),
                nn.Dropout2d(conv_dropout) if conv_dropout > 0 else nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
            channels = m
        self.in_channels = in_channels
        self.input_size = input_size
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        dense: list[nn.Module] = [nn.Flatten(1)]
        width = channels * grid * grid
        for _ in range(2):
            dense += [
                nn.Linear(width, fc_units, bias=False),
                nn.BatchNorm1d(fc_units),
                nn.ReLU(inplace=True),
                nn.Dropout(fc_dropout) if fc_dropout > 0 else nn.Identity(),
            ]
            width = fc_units
        self.dense = nn.Sequential(*dense)
        self.out_features = fc_units
        self._min_size = 2 ** len(maps)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` -> ``(N, fc_units)``; ``H, W >= 16``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self._min_size:
            raise ValueError(
                f"slices must be at least {self._min_size} px on each side, got {tuple(x.shape[-2:])}"
            )
        return self.dense(self.pool(self.features(x)))
