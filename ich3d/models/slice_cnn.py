"""The 2D slice CNN of Patel et al. (2019) and the one-logit slice classifier of stage 1.

Architecture (docs/method.md section 1, "Network"), for first-layer width ``w``:

* units 1-5: ``Conv3x3(pad 1) + ReLU + Conv3x3(pad 1) + ReLU + MaxPool2x2(stride 2)``
  with ``w, 2w, 4w, 8w, 16w`` filters (the filter count doubles each unit);
* unit 6: ``Conv3x3(pad 1, 32w filters) + ReLU + global max pool`` to ``1x1``;
* ``Dropout(p) -> Linear(32w, feature_dim) -> ReLU -> Dropout(p) -> Linear(feature_dim, feature_dim)``
  gives the per-slice feature vector (512 in the paper). The feature is the
  output of the last dense layer, without an activation (``feature_activation``
  adds a ReLU).

The paper's input is a 256 x 256 slice (512 max-filtered 2x2), for which the
sixth unit's pooling is an 8 x 8 max pool. Here it is an adaptive max pool to
``1x1``, which is the same operation at 256 px and lets any input of at least
32 px work (the tests use 64 px: 64 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1). Sizes that
are not multiples of 32 are floored by each pooling, as in any CNN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ich3d.errors import UserError
from ich3d.models.registry import ENCODERS

__all__ = ["PatelSliceCNN", "SliceClassifier", "patel_cnn_num_parameters"]

#: Number of pooling units before the sixth unit; the input must be >= 2**_NUM_UNITS px.
_NUM_UNITS = 5


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


@ENCODERS.register("patel_cnn")
class PatelSliceCNN(nn.Module):
    """Slice encoder of Patel et al. (2019): ``(N, C, H, W) -> (N, feature_dim)``.

    Args:
        in_channels: Channels of the input slice (e.g. 1 for one HU window,
            3 for three windows). Default 3.
        width: Filters of the first unit; unit ``k`` (1-based) has
            ``width * 2**(k-1)`` filters and the sixth unit ``32 * width``.
            Not given in the paper. Default 16.
        feature_dim: Size of the per-slice feature (both dense layers). Default 512.
        dropout: Dropout probability before each of the two dense layers. Default 0.5.
        input_size: Nominal input side in pixels (256 in the paper). Only used by
            :meth:`feature_map_shapes` and recorded for configs; any input side
            of at least 32 px works. Default 256.
        feature_activation: Apply a ReLU to the feature vector. Default False.
        init: ``"kaiming"`` (He normal weights, zero biases; see
            :meth:`reset_parameters`) or ``"torch"`` (PyTorch's layer defaults).
            The paper does not say. Default ``"kaiming"``.

    Attributes:
        out_features: ``feature_dim``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 16,
        feature_dim: int = 512,
        dropout: float = 0.5,
        input_size: int = 256,
        feature_activation: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if init not in ("kaiming", "torch"):
            raise UserError(f"init must be 'kaiming' or 'torch', got {init!r}")
        if in_channels < 1 or width < 1 or feature_dim < 1:
            raise UserError(
                f"in_channels, width and feature_dim must be >= 1, got {in_channels}, {width}, {feature_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.width = width
        self.feature_dim = feature_dim
        self.input_size = input_size
        self.out_features = feature_dim

        units: list[nn.Module] = []
        channels = in_channels
        for k in range(_NUM_UNITS):
            filters = width * 2**k
            units.append(
                nn.Sequential(
                    _conv(channels, filters),
                    nn.ReLU(inplace=True),
                    _conv(filters, filters),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(kernel_size=2, stride=2),
                )
            )
            channels = filters
        top = width * 2**_NUM_UNITS
        units.append(
            nn.Sequential(_conv(channels, top), nn.ReLU(inplace=True), nn.AdaptiveMaxPool2d(1))
        )
        self.units = nn.ModuleList(units)
        layers: list[nn.Module] = [
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(top, feature_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(feature_dim, feature_dim),
        ]
        if feature_activation:
            layers.append(nn.ReLU(inplace=True))
        self.dense = nn.Sequential(*layers)
        if init == "kaiming":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming) normal weights for the ReLU network, zero biases.

        PyTorch's default layer initialisation shrinks the signal about six-fold
        per layer; through eleven convolutions the features of different slices
        become almost identical (between-slice std ~1e-6 at 64 px, width 16)
        and training starts very slowly. He initialisation keeps the activation
        scale roughly constant (feature std ~1).
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Encode slices.

        Args:
            x: ``(N, in_channels, H, W)`` float slices, ``H, W >= 32``.

        Returns:
            ``(N, feature_dim)`` features.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 2**_NUM_UNITS:
            raise ValueError(
                f"slices must be at least {2**_NUM_UNITS} px on each side, got {tuple(x.shape[-2:])}"
            )
        for unit in self.units:
            x = unit(x)
        # the dense layers (cheap) in float32 even under bf16 autocast: bf16 features would
        # quantise every score computed from them (the slice probabilities, the SVM's input)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.dense(x.float())

    def feature_map_shapes(self, input_size: int | None = None) -> list[tuple[int, int, int]]:
        """``(channels, height, width)`` of the input and after each of the six units.

        Args:
            input_size: Square input side in pixels; default ``self.input_size``.
        """
        size = self.input_size if input_size is None else input_size
        shapes = [(self.in_channels, size, size)]
        x = torch.zeros(1, self.in_channels, size, size, device=self._device())
        with torch.no_grad():
            for unit in self.units:
                x = unit(x)
                shapes.append((int(x.shape[1]), int(x.shape[2]), int(x.shape[3])))
        return shapes

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def patel_cnn_num_parameters(in_channels: int = 3, width: int = 16, feature_dim: int = 512) -> int:
    """Analytic parameter count of :class:`PatelSliceCNN` (weights + biases).

    Args:
        in_channels: Input channels. Default 3.
        width: First-unit filters. Default 16.
        feature_dim: Feature size. Default 512.
    """
    total = 0
    channels = in_channels
    for k in range(_NUM_UNITS):
        filters = width * 2**k
        total += 9 * channels * filters + filters  # first conv of the unit
        total += 9 * filters * filters + filters  # second conv
        channels = filters
    top = width * 2**_NUM_UNITS
    total += 9 * channels * top + top
    total += top * feature_dim + feature_dim
    total += feature_dim * feature_dim + feature_dim
    return total


class SliceClassifier(nn.Module):
    """A slice encoder plus one dense layer to one logit (stage 1 of the method).

    The paper's 2-class softmax is equivalent to one sigmoid logit with binary
    cross-entropy; ``forward`` returns that logit.

    Args:
        encoder: Any registered slice encoder (has ``out_features``).
        dropout: Dropout before the classification layer. Default 0 (the
            Patel CNN already ends in dropout + dense).
        num_outputs: Logits per slice: 1 (hemorrhage, the method) or e.g. 6
            for the RSNA subtypes + any with a multi-label loss. Default 1.

    Attributes:
        encoder: The encoder; its ``state_dict`` initialises the volume model in stage 2.
        classifier: ``Linear(encoder.out_features, num_outputs)``.
    """

    def __init__(self, encoder: nn.Module, dropout: float = 0.0, num_outputs: int = 1) -> None:
        super().__init__()
        out_features = getattr(encoder, "out_features", None)
        if not isinstance(out_features, int):
            raise TypeError(f"encoder {type(encoder).__name__} has no integer `out_features`")
        if num_outputs < 1:
            raise UserError(f"num_outputs must be >= 1, got {num_outputs}")
        self.encoder = encoder
        self.num_outputs = num_outputs
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(out_features, num_outputs)

    def features(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, F)`` encoder features."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N,)`` slice logits (``(N, num_outputs)`` if ``num_outputs > 1``).

        The classification layer runs in float32 with autocast off, so under bf16
        autocast (CUDA) the logits, the probabilities and every AUC, percentile and
        model selection computed from them are not quantised to bf16's 8-bit
        mantissa (2,000 distinct float32 probabilities fell to 85 values).
        """
        feats = self.encoder(x)
        with torch.autocast(device_type=feats.device.type, enabled=False):
            logits = self.classifier(self.dropout(feats.float()))
        return logits.squeeze(-1) if self.num_outputs == 1 else logits
