"""The RSNA winners' torchvision encoders: sizes, local weight files, never a download."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from ich3d.errors import UserError
from ich3d.models.registry import ENCODERS, build_encoder, count_parameters
from ich3d.models.torchvision_encoders import _WARNED_RANDOM, IMAGENET_MEAN, IMAGENET_STD

SIZE = 64

#: name -> (out_features, the torchvision output layer cut off, the first conv's kernel count)
CASES = {
    "resnet18": (512, "fc", 64 * 49),
    "resnet50": (2048, "fc", 64 * 49),
    "resnext50_32x4d": (2048, "fc", 64 * 49),
    "efficientnet_b0": (1280, "classifier", 32 * 9),
    "densenet121": (1024, "classifier", 64 * 49),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download weights fails the test."""

    def _refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ich3d tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _refuse)


@pytest.fixture
def hub_dir(tmp_path):  # noqa: ANN001, ANN201
    """An empty torch hub directory for the duration of the test."""
    old = torch.hub.get_dir()
    path = tmp_path / "hub"
    torch.hub.set_dir(str(path))
    yield path
    torch.hub.set_dir(old)


def _reference(name: str) -> nn.Module:
    """torchvision's network with non-trivial BN statistics (a skipped key would show)."""
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return ref


def _reference_features(name: str, ref: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the encoder must give: torchvision's forward up to the global pool."""
    if name.startswith("res"):
        head = ref.fc
        ref.fc = nn.Identity()
        out = ref(x)
        ref.fc = head
        return out
    if name.startswith("efficientnet"):
        return ref.avgpool(ref.features(x)).flatten(1)
    return torch.relu(ref.features(x)).mean(dim=(2, 3))  # DenseNet


@pytest.mark.parametrize("name", sorted(CASES))
def test_builds_at_64px_without_weights(name: str) -> None:
    out_features, head_attr, first_kernels = CASES[name]
    assert name in ENCODERS
    enc = build_encoder(name, in_channels=1).eval()
    assert enc.out_features == out_features
    assert enc.pretrained_from is None and enc.normalize is False
    assert not bool(enc.input_normalized)
    ref = getattr(torchvision.models, name)(weights=None)
    head = getattr(ref, head_attr)
    n_head = sum(p.numel() for p in head.parameters())
    # torchvision's total minus the 1000-class layer, first conv taking 1 channel instead of 3
    expected = sum(p.numel() for p in ref.parameters()) - n_head - 2 * first_kernels
    assert count_parameters(enc)["total"] == expected
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        y = enc(x)
        assert y.shape == (2, out_features) and torch.isfinite(y).all()
        torch.testing.assert_close(enc(x[1:]), y[1:], atol=1e-5, rtol=1e-4)  # eval: per sample
    projected = build_encoder(name, in_channels=3, feature_dim=16).eval()
    with torch.no_grad():
        assert projected(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 16)
    assert projected.out_features == 16


@pytest.mark.parametrize("name", ["resnext50_32x4d", "efficientnet_b0", "densenet121"])
def test_local_weights_file_loads_exactly(name: str, tmp_path) -> None:  # noqa: ANN001
    ref = _reference(name)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    enc = build_encoder(name, weights_path=str(path)).eval()
    assert enc.pretrained_from == path and enc.normalize is True
    own = {k: v for k, v in ref.state_dict().items() if not k.startswith(("fc.", "classifier."))}
    got = {k: v for k, v in enc.state_dict().items() if k.startswith(("features.", "proj."))}
    assert sum(v.numel() for v in got.values()) == sum(v.numel() for v in own.values())
    x = torch.rand(2, 3, SIZE, SIZE)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), _reference_features(name, ref, (x - mean) / std), atol=1e-5, rtol=1e-4)
    # one grey channel, no normalisation: the RGB network on the grey image in 3 channels
    grey_enc = build_encoder(name, weights_path=path, in_channels=1, normalize=False).eval()
    grey = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        expected = _reference_features(name, ref, grey.repeat(1, 3, 1, 1))
        torch.testing.assert_close(grey_enc(grey), expected, atol=1e-4, rtol=1e-4)


def test_pretrained_reads_the_hub_cache_v2_first_then_v1(hub_dir) -> None:  # noqa: ANN001
    ref = _reference("resnet50")
    folder = hub_dir / "checkpoints"
    folder.mkdir(parents=True)
    v1 = folder / "resnet50-0676ba61.pth"
    torch.save(ref.state_dict(), v1)
    enc = build_encoder("resnet50", pretrained=True).eval()
    assert enc.pretrained_from == v1
    torch.testing.assert_close(enc.features[0].weight, ref.conv1.weight, atol=0, rtol=0)
    v2 = folder / "resnet50-11ad3fa6.pth"
    torch.save(_reference("resnet50").state_dict(), v2)
    assert build_encoder("resnet50", pretrained="auto").pretrained_from == v2


def test_missing_file_says_where_to_put_it(hub_dir) -> None:  # noqa: ANN001
    expected = hub_dir / "checkpoints" / "densenet121-a639ec97.pth"
    with pytest.raises(UserError, match="never downloads") as err:
        build_encoder("densenet121", pretrained=True)
    assert str(expected) in str(err.value) and "weights_path" in str(err.value)
    with pytest.raises(UserError, match="resnet50-11ad3fa6.pth.*resnet50-0676ba61.pth"):
        build_encoder("resnet50", pretrained=True)
    with pytest.raises(UserError, match="not found"):
        build_encoder("efficientnet_b0", weights_path=hub_dir / "nope.pth")
    wrong = hub_dir.parent / "wrong.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(UserError, match="mis-shaped|lacks"):
        build_encoder("resnet50", weights_path=wrong)
    with pytest.raises(UserError, match="pretrained must be"):
        build_encoder("resnet18", pretrained="yes")


def test_auto_without_file_warns_once_and_a_checkpoint_keeps_its_normalisation(
    hub_dir, tmp_path, caplog  # noqa: ANN001
) -> None:
    _WARNED_RANDOM.discard("efficientnet_b0")
    with caplog.at_level(logging.WARNING, logger="ich3d.models.torchvision_encoders"):
        a = build_encoder("efficientnet_b0", pretrained="auto")
        build_encoder("efficientnet_b0", pretrained="auto")
    warnings = [r for r in caplog.records if "random initialisation" in r.getMessage()]
    assert len(warnings) == 1
    assert str(hub_dir / "checkpoints" / "efficientnet_b0_rwightman-7f5810bc.pth") in warnings[0].getMessage()
    assert a.pretrained_from is None and a.normalize is False

    # trained with weights (normalised), rebuilt where the file is absent ("auto"): the
    # state dict restores the normalisation, so the outputs agree
    ref = _reference("efficientnet_b0")
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    trained = build_encoder("efficientnet_b0", weights_path=path).eval()
    rebuilt = build_encoder("efficientnet_b0", pretrained="auto").eval()
    assert rebuilt.normalize is False
    rebuilt.load_state_dict(trained.state_dict())
    assert rebuilt.normalize is True
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x), atol=0, rtol=0)
    # a state dict from before the flag existed still loads (the built value stays)
    old = {k: v for k, v in trained.state_dict().items() if k != "input_normalized"}
    rebuilt.load_state_dict(old)
    assert rebuilt.normalize is True


def test_a_new_torchvision_encoder_is_one_subclass_of_the_public_base(tmp_path) -> None:
    """An encoder added from this file: no private helper, weights and channels from the base."""
    from ich3d.models.registry import ENCODERS as registry
    from ich3d.models.torchvision_encoders import (
        EncoderParts,
        TorchvisionEncoder,
        global_pool,
        kaiming_fan_out,
    )

    class MobileNetV3Small(TorchvisionEncoder):
        arch = "mobilenet_v3_small"
        first_conv = "features.0.0"
        init_first_conv = staticmethod(kaiming_fan_out)

        def cut(self, net: nn.Module, layer: str) -> EncoderParts:
            return EncoderParts(net.features, global_pool(), nn.Identity(), 576)

    registry.register("test_mobilenet_v3_small")(MobileNetV3Small)
    try:
        torch.manual_seed(0)
        reference = torchvision.models.mobilenet_v3_small(weights=None).eval()
        weights = tmp_path / "mobilenet.pth"
        torch.save(reference.state_dict(), weights)
        enc = build_encoder("test_mobilenet_v3_small", weights_path=str(weights), feature_dim=16).eval()
        assert enc.out_features == 16 and enc.pretrained_from == weights and enc.normalize
        x = torch.rand(2, 3, SIZE, SIZE)
        with torch.no_grad():
            normalized = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            expected = reference.avgpool(reference.features(normalized)).flatten(1)
            torch.testing.assert_close(enc.pool(enc.features(normalized)), expected)
            assert enc(x).shape == (2, 16)
        grey = build_encoder("test_mobilenet_v3_small", in_channels=1).eval()
        assert grey.features[0][0].in_channels == 1 and not grey.normalize and grey.out_features == 576
        assert grey(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 576)
        with pytest.raises(UserError, match="mobilenet_v3_small layer must be one of pool, got 'fc7'"):
            build_encoder("test_mobilenet_v3_small", layer="fc7")
        with pytest.raises(UserError, match="option feature_dim must be int or None"):
            build_encoder("test_mobilenet_v3_small", feature_dim="16")
    finally:
        registry.unregister("test_mobilenet_v3_small")


def test_densenet201_is_the_densenet_encoder_with_its_name() -> None:
    from ich3d.models.torchvision_encoders import DenseNet201Encoder, DenseNetEncoder

    assert issubclass(DenseNet201Encoder, DenseNetEncoder)
    assert DenseNet201Encoder.__init__ is DenseNetEncoder.__init__
    assert ENCODERS.get("densenet121").__init__ is ENCODERS.get("densenet201").__init__
