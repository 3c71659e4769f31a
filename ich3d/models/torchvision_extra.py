"""The RSNA 2019 challenge winners' ImageNet CNNs from torchvision as slice encoders.

docs/method.md section 4: the 1st place used 2D DenseNets and SE-ResNeXts with a
bidirectional GRU over the slice features, the 2nd place a ResNeXt-101 with an
LSTM over slice embeddings, Nguyen et al. 2020 a ResNet-50 + LSTM. These
encoders give ich3d's slice classifier, sequence heads and SVM baseline the
same backbones (SE-ResNeXt is not in torchvision; ResNeXt is its closest kin):

========================  ===============  ====================================
name                      ``out_features``  torchvision builder
========================  ===============  ====================================
``resnet18``              512              ``resnet18``
``resnet34``              512              ``resnet34``
``resnet50``              2048             ``resnet50``
``resnet101``             2048             ``resnet101``
``resnext50_32x4d``       2048             ``resnext50_32x4d``
``resnext101_32x8d``      2048             ``resnext101_32x8d``
``efficientnet_b0``       1280             ``efficientnet_b0``
``densenet121``           1024             ``densenet121``
``densenet169``           1664             ``densenet169``
========================  ===============  ====================================

Each is cut before its 1000-class layer: the global average pool of the last
feature map (after DenseNet's final BN + ReLU). EfficientNet's stochastic depth
inside its blocks is kept (active in train mode only); its classifier dropout
is cut with the classifier.

Weights, input scaling and channels work exactly as in
:mod:`ich3d.models.torchvision_encoders`: built with ``weights=None``; ImageNet
weights only from a local file (``weights_path=``, or ``pretrained=True`` /
``"auto"`` reading ``torch.hub.get_dir()/checkpoints/<torchvision's file>``,
never downloading); the ImageNet normalisation applied inside when weights were
loaded; ``in_channels != 3`` replaces the first convolution (RGB kernel
averaged with weights, torchvision's initialisation without). For ResNets and
ResNeXts with two torchvision weight files (``IMAGENET1K_V2`` and ``_V1``)
``pretrained`` takes the V2 file when present, else the V1 file.

Input size: every network ends in a global pool, so any input of at least 32
px works (the tests use 64 px); ImageNet weights were trained at 224 px.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torchvision.models as tvm
from torch import nn

from ich3d.models.registry import ENCODERS
from ich3d.models.torchvision_encoders import (
    TorchvisionEncoder,
    _kaiming_fan_in,
    _kaiming_fan_out,
    _prepare,
    adapt_first_conv,
    register_weights,
)

__all__ = [
    "ResNetEncoder",
    "ResNet18Encoder",
    "ResNet34Encoder",
    "ResNet50Encoder",
    "ResNet101Encoder",
    "ResNeXt50Encoder",
    "ResNeXt101Encoder",
    "EfficientNetB0Encoder",
    "DenseNetEncoder",
    "DenseNet121Encoder",
    "DenseNet169Encoder",
]

register_weights("resnet18", tvm.ResNet18_Weights.IMAGENET1K_V1)
register_weights("resnet34", tvm.ResNet34_Weights.IMAGENET1K_V1)
register_weights("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V2, tvm.ResNet50_Weights.IMAGENET1K_V1)
register_weights("resnet101", tvm.ResNet101_Weights.IMAGENET1K_V2, tvm.ResNet101_Weights.IMAGENET1K_V1)
register_weights(
    "resnext50_32x4d", tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V2, tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V1
)
register_weights(
    "resnext101_32x8d",
    tvm.ResNeXt101_32X8D_Weights.IMAGENET1K_V2,
    tvm.ResNeXt101_32X8D_Weights.IMAGENET1K_V1,
)
register_weights("efficientnet_b0", tvm.EfficientNet_B0_Weights.IMAGENET1K_V1)
register_weights("densenet121", tvm.DenseNet121_Weights.IMAGENET1K_V1)
register_weights("densenet169", tvm.DenseNet169_Weights.IMAGENET1K_V1)

_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _global_pool() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class ResNetEncoder(TorchvisionEncoder):
    """A torchvision ResNet / ResNeXt up to the global average pool (``arch`` names it).

    Args:
        in_channels: Input channels. Default 3.
        pretrained: Load ImageNet weights from the torch hub cache (never downloads);
            ``"auto"``: only if the file is there. Default False.
        weights_path: Load weights from this torchvision-format file instead. Default None.
        feature_dim: Optional ``Linear`` projection size (= ``out_features``). Default None.
        normalize: Apply ImageNet normalisation; None: iff weights were loaded. Default None.
    """

    arch = ""

    def __init__(
        self,
        in_channels: int = 3,
        pretrained: bool | Literal["auto"] = False,
        weights_path: str | Path | None = None,
        feature_dim: int | None = None,
        normalize: bool | None = None,
    ) -> None:
        builder: Callable[..., nn.Module] = getattr(tvm, self.arch)
        needed = tuple(f"{part}." for part in _RESNET_PARTS if part not in ("relu", "maxpool"))
        net, path, norm = _prepare(
            self.arch, lambda: builder(weights=None), needed, pretrained, weights_path, normalize
        )
        net.conv1 = adapt_first_conv(net.conv1, in_channels, path is not None, _kaiming_fan_out)
        features = nn.Sequential(*(getattr(net, part) for part in _RESNET_PARTS))
        out = net.fc.in_features
        super().__init__(
            features, _global_pool(), nn.Identity(), out, in_channels, norm, feature_dim, path
        )


@ENCODERS.register("resnet18")
class ResNet18Encoder(ResNetEncoder):
    """ResNet-18, 512 features."""

    arch = "resnet18"


@ENCODERS.register("resnet34")
class ResNet34Encoder(ResNetEncoder):
    """ResNet-34, 512 features."""

    arch = "resnet34"


@ENCODERS.register("resnet50")
class ResNet50Encoder(ResNetEncoder):
    """ResNet-50 (Nguyen et al. 2020), 2048 features."""

    arch = "resnet50"


@ENCODERS.register("resnet101")
class ResNet101Encoder(ResNetEncoder):
    """ResNet-101, 2048 features."""

    arch = "resnet101"


@ENCODERS.register("resnext50_32x4d")
class ResNeXt50Encoder(ResNetEncoder):
    """ResNeXt-50 32x4d, 2048 features."""

    arch = "resnext50_32x4d"


@ENCODERS.register("resnext101_32x8d")
class ResNeXt101Encoder(ResNetEncoder):
    """ResNeXt-101 32x8d (RSNA 2019 2nd place), 2048 features."""

    arch = "resnext101_32x8d"


@ENCODERS.register("efficientnet_b0")
class EfficientNetB0Encoder(TorchvisionEncoder):
    """EfficientNet-B0 up to the global average pool, 1280 features.

    Args:
        in_channels: Input channels. Default 3.
        pretrained: Load ImageNet weights from the torch hub cache (never downloads);
            ``"auto"``: only if the file is there. Default False.
        weights_path: Load weights from this torchvision-format file instead. Default None.
        feature_dim: Optional ``Linear`` projection size (= ``out_features``). Default None.
        normalize: Apply ImageNet normalisation; None: iff weights were loaded. Default None.
    """

    arch = "efficientnet_b0"

    def __init__(
        self,
        in_channels: int = 3,
        pretrained: bool | Literal["auto"] = False,
        weights_path: str | Path | None = None,
        feature_dim: int | None = None,
        normalize: bool | None = None,
    ) -> None:
        net, path, norm = _prepare(
            self.arch,
            lambda: tvm.efficientnet_b0(weights=None),
            ("features.",),
            pretrained,
            weights_path,
            normalize,
        )
        stem = net.features[0]  # Conv2dNormActivation: conv, BN, SiLU
        stem[0] = adapt_first_conv(stem[0], in_channels, path is not None, _kaiming_fan_out)
        out = net.classifier[-1].in_features
        super().__init__(
            net.features, _global_pool(), nn.Identity(), out, in_channels, norm, feature_dim, path
        )


class DenseNetEncoder(TorchvisionEncoder):
    """A torchvision DenseNet: global average of the final features after BN + ReLU.

    Args:
        in_channels: Input channels. Default 3.
        pretrained: Load ImageNet weights from the torch hub cache (never downloads);
            ``"auto"``: only if the file is there. Default False.
        weights_path: Load weights from this torchvision-format file instead. Default None.
        feature_dim: Optional ``Linear`` projection size (= ``out_features``). Default None.
        normalize: Apply ImageNet normalisation; None: iff weights were loaded. Default None.
    """

    arch = ""

    def __init__(
        self,
        in_channels: int = 3,
        pretrained: bool | Literal["auto"] = False,
        weights_path: str | Path | None = None,
        feature_dim: int | None = None,
        normalize: bool | None = None,
    ) -> None:
        builder: Callable[..., nn.Module] = getattr(tvm, self.arch)
        net, path, norm = _prepare(
            self.arch, lambda: builder(weights=None), ("features.",), pretrained, weights_path, normalize
        )
        net.features.conv0 = adapt_first_conv(
            net.features.conv0, in_channels, path is not None, _kaiming_fan_in
        )
        pool = nn.Sequential(nn.ReLU(inplace=False), _global_pool())
        out = net.classifier.in_features
        super().__init__(net.features, pool, nn.Identity(), out, in_channels, norm, feature_dim, path)


@ENCODERS.register("densenet121")
class DenseNet121Encoder(DenseNetEncoder):
    """DenseNet-121 (RSNA 2019 1st place), 1024 features."""

    arch = "densenet121"


@ENCODERS.register("densenet169")
class DenseNet169Encoder(DenseNetEncoder):
    """DenseNet-169 (RSNA 2019 1st place), 1664 features."""

    arch = "densenet169"
