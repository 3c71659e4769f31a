"""ImageNet CNNs from torchvision as slice encoders: AlexNet, VGG-16, DenseNet-201.

These are the transfer-learning systems of docs/method.md section 2 (AlexNet and
AlexNet-SVM of Dawud et al. 2019, VGG-16 of Soni 2025, DenseNet-201 of Kumar et
al. 2022), cut at a feature layer so that each is an encoder
``(N, C, H, W) -> (N, out_features)`` for the slice classifier, the sequence
heads and the SVM baseline.

Weights (never downloaded)
    The network is built with ``weights=None``. ImageNet weights are loaded only
    from a local file:

    * ``weights_path="/path/to/file.pth"``: a torchvision-format state dict (or
      a checkpoint holding one under ``"state_dict"``) of the same architecture;
    * ``pretrained=True``: the file torchvision itself would cache,
      ``torch.hub.get_dir()/checkpoints/<name>`` (``alexnet-owt-7be5be79.pth``,
      ``vgg16-397923af.pth``, ``densenet201-c1103571.pth``). If it is not there a
      ``UserError`` says where to put it; ich3d never opens a network connection.
    * ``pretrained="auto"``: that file when it is there, otherwise random
      initialisation with one warning per architecture and process (the
      published-system configs use this, so they run with or without the file).

    Whether the ImageNet normalisation is on is saved in the state dict (the
    buffer ``input_normalized``), so a checkpoint rebuilt where the weights file
    is absent (``"auto"``) still normalises as it did in training.

    Files are read with ``torch.load(weights_only=True)``. Keys the encoder
    does not use (the 1000-class output layer) are ignored; a missing or
    mis-shaped key it does use is a ``UserError``.

Input scaling
    ich3d feeds windowed HU scaled to ``[0, 1]``. With pretrained weights the
    encoder applies the ImageNet normalisation ``(x - mean) / std`` itself
    (``normalize=None`` means "only when pretrained weights were loaded"), so
    callers never normalise. For ``in_channels != 3`` every channel uses the
    average of the ImageNet means (0.449) and standard deviations (0.226).

Input channels
    ``in_channels != 3`` replaces the first convolution. With pretrained
    weights its kernel is the average of the RGB kernels, repeated over the
    ``in_channels`` inputs and scaled by ``3 / in_channels``, so a grey image
    in ``c`` identical channels gives the same activation as its RGB copy did
    (for ``c = 1`` this is the sum of the RGB kernels). Without pretrained
    weights the new convolution is initialised as torchvision initialises that
    architecture.

Feature layers (``layer``)
    * AlexNet: ``"fc6"`` (default, 4096, after ReLU: the AlexNet-SVM feature) or
      ``"fc7"`` (4096, after ReLU: what the fine-tuned AlexNet's new last layer reads).
      torchvision's dropout before fc6/fc7 is kept (active in train mode only).
    * VGG-16: ``"fc7"`` (default, 4096), ``"fc6"`` (4096) or ``"pool"`` (512,
      global average of the last conv block; 14.7 M instead of 134 M parameters).
    * DenseNet-201: ``"pool"`` (1920, global average after the final BN + ReLU).

    ``feature_dim`` adds a ``Linear(out, feature_dim)`` projection (e.g. to feed a
    512-unit LSTM with a smaller input); ``out_features`` then equals it.

Input size: AlexNet and VGG-16 end in an adaptive average pool, DenseNet-201 in
a global pool, so any input of at least 32 px (AlexNet: 63 px) works; the
tests use 64 px. ImageNet weights were trained at 224 px.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from ich3d.errors import UserError
from ich3d.models.registry import ENCODERS

__all__ = [
    "TorchvisionEncoder",
    "EncoderParts",
    "DenseNetEncoder",
    "global_pool",
    "kaiming_fan_in",
    "kaiming_fan_out",
    "AlexNetEncoder",
    "VGG16Encoder",
    "DenseNet201Encoder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "hub_weights_path",
    "register_weights",
    "load_torchvision_state_dict",
    "adapt_first_conv",
]

logger = logging.getLogger(__name__)

#: ImageNet channel statistics of torchvision's weights (inputs in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: torchvision weight entries per architecture, for the standard file names and URLs
#: (metadata only: nothing is fetched); ``pretrained`` takes the first file present.
_WEIGHTS: dict[str, tuple[tvm.WeightsEnum, ...]] = {
    "alexnet": (tvm.AlexNet_Weights.IMAGENET1K_V1,),
    "vgg16": (tvm.VGG16_Weights.IMAGENET1K_V1,),
    "densenet201": (tvm.DenseNet201_Weights.IMAGENET1K_V1,),
}
#: architectures whose missing ``pretrained="auto"`` file was already warned about
_WARNED_RANDOM: set[str] = set()

# Old DenseNet checkpoints (including torchvision's own file) name layers "norm.1"
# where the module is now "norm1"; torchvision renames them the same way.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def register_weights(arch: str, *weights: tvm.WeightsEnum) -> None:
    """Declare the torchvision weight entries of ``arch``, preferred file first."""
    if not weights:
        raise ValueError(f"register_weights({arch!r}) needs at least one weight entry")
    _WEIGHTS[arch] = tuple(weights)


def _hub_files(arch: str) -> list[Path]:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / Path(w.url).name for w in _WEIGHTS[arch]]


def hub_weights_path(arch: str) -> Path:
    """Where torchvision caches the (preferred) ImageNet weights of ``arch``:
    ``<hub dir>/checkpoints/<file>``."""
    return _hub_files(arch)[0]


def _resolve_weights(
    arch: str, pretrained: bool | str, weights_path: str | Path | None
) -> Path | None:
    """The weights file to load, or None for random initialisation."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"weights file for {arch} not found: {path}")
        return path
    if pretrained not in (True, False, "auto"):
        raise UserError(f"pretrained must be true, false or 'auto', got {pretrained!r}")
    if pretrained is False:
        return None
    files = _hub_files(arch)
    for path in files:
        if path.is_file():
            return path
    path = files[0]
    where = (
        f"copy torchvision's file {path.name} (from {_WEIGHTS[arch][0].url}"
        + "".join(f", or {f.name}" for f in files[1:])
        + f") to {path.parent}/, set TORCH_HOME, or give the file with weights_path"
    )
    if pretrained == "auto":
        if arch not in _WARNED_RANDOM:
            _WARNED_RANDOM.add(arch)
            logger.warning(
                "no ImageNet weights for %s at %s: random initialisation (a checkpoint loaded "
                "afterwards replaces it; ich3d never downloads; for transfer learning %s)",
                arch,
                path,
                where,
            )
        return None
    raise UserError(
        f"pretrained ImageNet weights for {arch} not found at {path}; ich3d never downloads: {where}"
    )


def load_torchvision_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a torchvision-format state dict with ``torch.load(weights_only=True)``.

    Accepts a bare state dict or a checkpoint with a ``"state_dict"`` entry;
    strips a ``"module."`` prefix (DataParallel / DDP) and renames old
    DenseNet keys (``norm.1`` -> ``norm1``).

    Raises:
        UserError: the file cannot be read or holds no tensors.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip or weights_only refusal
        raise UserError(f"cannot read weights file {path}: {err}") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} does not hold a state dict of tensors")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            continue
        key = key[len("module.") :] if key.startswith("module.") else key
        match = _DENSENET_OLD_KEY.match(key)
        if match:
            key = match.group(1) + match.group(2)
        state[key] = value
    return state


def _load_into(
    model: nn.Module, state: dict[str, Tensor], needed: tuple[str, ...], path: Path
) -> None:
    """Load ``state`` into ``model``: every key under the ``needed`` prefixes must be present."""
    own = model.state_dict()
    required = [k for k in own if k.startswith(needed)]
    # BN counters are absent from old checkpoints (torchvision's own files) and unused in eval
    missing = [k for k in required if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise UserError(
            f"weights file {path} lacks {len(missing)} tensor(s) the encoder needs, e.g. "
            f"{', '.join(missing[:3])}; expected a torchvision {type(model).__name__} state dict"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in required
        if k in state and state[k].shape != own[k].shape
    ]
    if wrong:
        raise UserError(f"weights file {path} has mis-shaped tensors: {'; '.join(wrong[:3])}")
    model.load_state_dict({k: state[k] for k in required if k in state}, strict=False)


def adapt_first_conv(
    conv: nn.Conv2d,
    in_channels: int,
    pretrained: bool,
    init: Callable[[nn.Conv2d], None] | None = None,
) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs (see module docstring).

    Args:
        conv: The first convolution (3 input channels).
        in_channels: New number of input channels.
        pretrained: Derive the kernel from the RGB kernel (average, repeat, scale
            by ``3 / in_channels``); otherwise initialise afresh.
        init: Initialiser for the fresh convolution (default: PyTorch's own).
    """
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        if pretrained:
            mean = conv.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (conv.in_channels / in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)  # type: ignore[union-attr]
        elif init is not None:
            init(new)
    return new


def kaiming_fan_out(conv: nn.Conv2d) -> None:
    """torchvision's initialisation of a fresh first convolution (VGG, ResNet, EfficientNet)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def kaiming_fan_in(conv: nn.Conv2d) -> None:
    """torchvision DenseNet's initialisation of a fresh first convolution."""
    nn.init.kaiming_normal_(conv.weight)


def global_pool() -> nn.Module:
    """Global average pool to ``(N, C)``."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


@dataclass
class EncoderParts:
    """Where a torchvision network is cut: ``fc(pool(features(x)))`` gives ``out_features``."""

    features: nn.Module
    pool: nn.Module
    fc: nn.Module
    out_features: int


class TorchvisionEncoder(nn.Module):
    """The public base of the torchvision slice encoders: weights, channels, normalisation, cut.

    A new torchvision encoder is a subclass that names the architecture and says
    where to cut it; weights (never downloaded), the first convolution for
    ``in_channels``, the ImageNet normalisation and the ``feature_dim``
    projection come from here (module docstring)::

        @ENCODERS.register("mobilenet_v3_small")
        class MobileNetV3Small(TorchvisionEncoder):
            arch = "mobilenet_v3_small"      # torchvision builder (and weights) name
            first_conv = "features.0.0"      # the convolution that reads the input
            init_first_conv = staticmethod(kaiming_fan_out)

            def cut(self, net, layer):
                return EncoderParts(net.features, global_pool(), nn.Identity(), 576)

    (with ``register_weights(arch, ...)`` for ``pretrained`` when ``arch`` has no
    entry yet). Its options are those of this ``__init__``.

    Args:
        in_channels: Input channels. Default 3.
        layer: The feature layer, one of the class's ``layers`` (default the first).
        pretrained: Load ImageNet weights from the torch hub cache (never downloads);
            ``"auto"``: only if the file is there. Default False.
        weights_path: Load weights from this torchvision-format file instead. Default None.
        feature_dim: Optional ``Linear`` projection size (= ``out_features``). Default None.
        normalize: Apply ImageNet normalisation; None: iff weights were loaded. Default None.

    Attributes:
        out_features: Feature size.
        pretrained_from: The weights file loaded, or None.
        normalize: Whether the ImageNet normalisation is applied in ``forward``
            (mirrors the persistent buffer ``input_normalized``, which a loaded
            state dict sets).
    """

    #: torchvision's builder name (``torchvision.models.<arch>``) and the weights' key.
    arch: str = ""
    #: The feature layers :meth:`cut` knows, the default first.
    layers: tuple[str, ...] = ("pool",)
    #: Dotted path of the first convolution (replaced for ``in_channels != 3``).
    first_conv: str = "features.0"
    #: Initialiser of a fresh first convolution (None: PyTorch's own).
    init_first_conv: Callable[[nn.Conv2d], None] | None = None

    def __init__(
        self,
        in_channels: int = 3,
        layer: str | None = None,
        pretrained: bool | Literal["auto"] = False,
        weights_path: str | Path | None = None,
        feature_dim: int | None = None,
        normalize: bool | None = None,
    ) -> None:
        super().__init__()
        layer = self.layers[0] if layer is None else layer
        if layer not in self.layers:
            raise UserError(f"{self.arch} layer must be one of {', '.join(self.layers)}, got {layer!r}")
        # the weights file is found and read before the network is built: a bad file fails fast
        path = _resolve_weights(self.arch, pretrained, weights_path)
        state = load_torchvision_state_dict(path) if path is not None else None
        net = self.network()
        if state is not None and path is not None:
            _load_into(net, state, self.needed(layer), path)
            logger.info("loaded %s weights from %s", self.arch, path)
        parent_name, _, conv_name = self.first_conv.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        conv = adapt_first_conv(
            parent.get_submodule(conv_name), in_channels, path is not None, type(self).init_first_conv
        )
        setattr(parent, conv_name, conv)  # in place: a Sequential keeps its order
        parts = self.cut(net, layer)
        self._assemble(parts, in_channels, (path is not None) if normalize is None else normalize, feature_dim)
        self.pretrained_from = path
        self.layer = layer

    # ------------------------------------------------------------------ subclass hooks
    def network(self) -> nn.Module:
        """The torchvision network, randomly initialised (``weights=None``)."""
        builder: Callable[..., nn.Module] = getattr(tvm, self.arch)
        return builder(weights=None)

    def needed(self, layer: str) -> tuple[str, ...]:
        """State-dict prefixes a weights file must provide for ``layer``."""
        return ("features.",)

    def cut(self, net: nn.Module, layer: str) -> EncoderParts:
        """The parts of ``net`` up to ``layer``."""
        raise NotImplementedError(f"{type(self).__name__} must say where to cut {self.arch}")

    # ------------------------------------------------------------------ common part
    def _assemble(self, parts: EncoderParts, in_channels: int, normalize: bool, feature_dim: int | None) -> None:
        self.in_channels = in_channels
        self.features = parts.features
        self.pool = parts.pool
        self.fc = parts.fc
        self.normalize = normalize
        if in_channels == 3:
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        else:
            mean = torch.full((in_channels,), sum(IMAGENET_MEAN) / 3)
            std = torch.full((in_channels,), sum(IMAGENET_STD) / 3)
        # not persistent: state dicts do not depend on the normalisation choice
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        # persistent: a checkpoint keeps the normalisation it was trained with
        self.register_buffer("input_normalized", torch.tensor(bool(normalize)))
        out_features = parts.out_features
        if feature_dim is not None:
            if feature_dim < 1:
                raise UserError(f"feature_dim must be >= 1, got {feature_dim}")
            self.proj: nn.Module = nn.Linear(out_features, feature_dim)
            out_features = feature_dim
        else:
            self.proj = nn.Identity()
        self.out_features = out_features

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key = prefix + "input_normalized"
        if key not in state_dict:  # a state dict from before the flag: keep the built value
            state_dict[key] = self.input_normalized.clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self.normalize = bool(state_dict[key])

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` in ``[0, 1]`` -> ``(N, out_features)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.proj(self.fc(self.pool(self.features(x))))


@ENCODERS.register("alexnet")
class AlexNetEncoder(TorchvisionEncoder):
    """AlexNet (Dawud et al. 2019) cut at ``layer`` ``"fc6"`` (default, the AlexNet-SVM
    feature) or ``"fc7"``; both 4096. Options: :class:`TorchvisionEncoder`."""

    arch = "alexnet"
    layers = ("fc6", "fc7")

    @staticmethod
    def _n_fc(layer: str) -> int:
        return 3 if layer == "fc6" else 6  # Dropout, Linear, ReLU (, Dropout, Linear, ReLU)

    def needed(self, layer: str) -> tuple[str, ...]:
        return ("features.",) + tuple(f"classifier.{i}." for i in range(self._n_fc(layer)))

    def cut(self, net: nn.Module, layer: str) -> EncoderParts:
        pool = nn.Sequential(net.avgpool, nn.Flatten(1))
        return EncoderParts(net.features, pool, net.classifier[: self._n_fc(layer)], 4096)


@ENCODERS.register("vgg16")
class VGG16Encoder(TorchvisionEncoder):
    """VGG-16 (Soni 2025) cut at ``layer`` ``"fc7"`` (default, 4096), ``"fc6"`` (4096) or
    ``"pool"`` (512, the global-average-pooled last conv block). Options: :class:`TorchvisionEncoder`."""

    arch = "vgg16"
    layers = ("fc7", "fc6", "pool")
    init_first_conv = staticmethod(kaiming_fan_out)
    _N_FC = {"fc7": 5, "fc6": 2, "pool": 0}  # Linear, ReLU (, Dropout, Linear, ReLU)

    def needed(self, layer: str) -> tuple[str, ...]:
        return ("features.",) + tuple(f"classifier.{i}." for i in range(self._N_FC[layer]))

    def cut(self, net: nn.Module, layer: str) -> EncoderParts:
        if layer == "pool":
            return EncoderParts(net.features, global_pool(), nn.Identity(), 512)
        pool = nn.Sequential(net.avgpool, nn.Flatten(1))
        return EncoderParts(net.features, pool, net.classifier[: self._N_FC[layer]], 4096)


class DenseNetEncoder(TorchvisionEncoder):
    """A torchvision DenseNet (``arch`` names it): global average of the final features
    after BN + ReLU. Options: :class:`TorchvisionEncoder`."""

    first_conv = "features.conv0"
    init_first_conv = staticmethod(kaiming_fan_in)

    def cut(self, net: nn.Module, layer: str) -> EncoderParts:
        pool = nn.Sequential(nn.ReLU(inplace=False), global_pool())
        return EncoderParts(net.features, pool, nn.Identity(), net.classifier.in_features)


@ENCODERS.register("densenet201")
class DenseNet201Encoder(DenseNetEncoder):
    """DenseNet-201 (Kumar et al. 2022): global average of the final features, 1920."""

    arch = "densenet201"
