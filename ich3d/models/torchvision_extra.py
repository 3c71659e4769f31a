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

import torchvision.models as tvm
from torch import nn

from ich3d.models.registry import ENCODERS
from ich3d.models.torchvision_encoders import (
    DenseNetEncoder,
    EncoderParts,
    TorchvisionEncoder,
    global_pool,
    kaiming_fan_out,
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



class ResNetEncoder(TorchvisionEncoder):
    """A torchvision ResNet / ResNeXt (``arch`` names it) up to the global average pool.
    Options: :class:`~ich3d.models.torchvision_encoders.TorchvisionEncoder`."""

    first_conv = "conv1"
    init_first_conv = staticmethod(kaiming_fan_out)

    def needed(self, layer: str) -> tuple[str, ...]:
        return tuple(f"{part}." for part in _RESNET_PARTS if part not in ("relu", "maxpool"))

    def cut(self, net: nn.Module, layer: str) -> EncoderParts:
        features = nn.Sequential(*(getattr(net, part) for part in _RESNET_PARTS))
        return EncoderParts(features, global_pool(), nn.Identity(), net.fc.in_features)


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
    Options: :class:`~ich3d.models.torchvision_encoders.TorchvisionEncoder`."""

    arch = "efficientnet_b0"
    first_conv = "features.0.0"  # the stem: Conv2dNormActivation (conv, BN, SiLU)
    init_first_conv = staticmethod(kaiming_fan_out)

    def cut(self, net: nn.Module, layer: str) -> EncoderParts:
        return EncoderParts(net.features, global_pool(), nn.Identity(), net.classifier[-1].in_features)


@ENCODERS.register("densenet121")
class DenseNet121Encoder(DenseNetEncoder):
    """DenseNet-121 (RSNA 2019 1st place), 1024 features."""

    arch = "densenet121"


@ENCODERS.register("densenet169")
class DenseNet169Encoder(DenseNetEncoder):
    """DenseNet-169 (RSNA 2019 1st place), 1664 features."""

    arch = "densenet169"
