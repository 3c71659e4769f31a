"""Tests of ich3d.models: shapes, parameter counts, initialisation, padding, freezing, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ich3d.errors import UserError
from ich3d.models import (
    ENCODERS,
    HEADS,
    BiGRUHead,
    BiLSTMHead,
    PatelSliceCNN,
    SliceClassifier,
    VolumeClassifier,
    build_encoder,
    build_head,
    build_slice_classifier,
    build_volume_model,
    count_parameters,
)
from ich3d.models.slice_cnn import patel_cnn_num_parameters

SIZE = 64
WIDTH = 4
HIDDEN = 16


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202
    """Tiny CPU convolutions run faster on one thread on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_cnn(in_channels: int = 1, feature_dim: int = 32) -> PatelSliceCNN:
    return PatelSliceCNN(
        in_channels=in_channels, width=WIDTH, feature_dim=feature_dim, input_size=SIZE
    )


# --------------------------------------------------------------------------- slice CNN
def test_patel_cnn_feature_map_sizes_per_unit() -> None:
    cnn = _tiny_cnn(in_channels=3)
    shapes = cnn.feature_map_shapes()
    assert shapes == [
        (3, 64, 64),
        (4, 32, 32),
        (8, 16, 16),
        (16, 8, 8),
        (32, 4, 4),
        (64, 2, 2),
        (128, 1, 1),
    ]
    # the same through forward hooks on a real forward pass
    seen: list[tuple[int, ...]] = []
    hooks = [
        u.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape))) for u in cnn.units
    ]
    cnn.eval()
    out = cnn(torch.rand(2, 3, SIZE, SIZE))
    for h in hooks:
        h.remove()
    assert seen == [(2, c, h, w) for c, h, w in shapes[1:]]
    assert out.shape == (2, 32) and cnn.out_features == 32


def test_patel_cnn_paper_size_pools_256_to_1x1() -> None:
    cnn = PatelSliceCNN(in_channels=1, width=2, feature_dim=8)
    assert [s[1] for s in cnn.feature_map_shapes(256)] == [256, 128, 64, 32, 16, 8, 1]


@pytest.mark.parametrize(
    ("in_channels", "width", "feature_dim"), [(1, 4, 32), (3, 16, 512), (2, 5, 7)]
)
def test_patel_cnn_parameter_count_is_analytic(
    in_channels: int, width: int, feature_dim: int
) -> None:
    cnn = PatelSliceCNN(in_channels=in_channels, width=width, feature_dim=feature_dim)
    # by hand for width w, in c: convs (9*c*w + w) + (9*w*w + w) + ... + sixth (9*16w*32w + 32w),
    # dense (32w*F + F) + (F*F + F)
    w, c, f = width, in_channels, feature_dim
    expected = 0
    cin = c
    for k in range(5):
        cout = w * 2**k
        expected += 9 * cin * cout + cout + 9 * cout * cout + cout
        cin = cout
    expected += 9 * cin * 32 * w + 32 * w + 32 * w * f + f + f * f + f
    assert patel_cnn_num_parameters(in_channels, width, feature_dim) == expected
    assert count_parameters(cnn) == {"total": expected, "trainable": expected}


def test_patel_cnn_paper_default_count() -> None:
    # width 16, 3 channels, 512 features: 2,358,928 in the 11 convolutions
    # (448 + 2,320 + 4,640 + ... + 1,180,160) + 2 x 262,656 in the dense layers
    cnn = PatelSliceCNN()
    assert sum(p.numel() for p in cnn.parameters()) == patel_cnn_num_parameters() == 2_884_240


def test_patel_cnn_he_init_keeps_slices_apart() -> None:
    cnn = PatelSliceCNN(in_channels=1, width=16, feature_dim=64).eval()
    conv = cnn.units[4][2]  # 256 -> 256 filters, fan_in 2304
    assert torch.equal(conv.bias, torch.zeros(256))
    assert abs(conv.weight.std().item() - math.sqrt(2 / (9 * 256))) < 0.02 * math.sqrt(2 / 2304)
    x = torch.rand(8, 1, SIZE, SIZE)
    with torch.no_grad():
        he = cnn(x).std(dim=0).mean().item()
        torch_default = PatelSliceCNN(1, 16, 64, init="torch").eval()(x).std(dim=0).mean().item()
    # PyTorch's default init collapses the slices onto one feature vector; He init does not
    assert he > 1e-2 and torch_default < 1e-4


def test_patel_cnn_eval_is_deterministic_and_train_uses_dropout() -> None:
    cnn = _tiny_cnn()
    x = torch.rand(4, 1, SIZE, SIZE)
    cnn.eval()
    a, b = cnn(x), cnn(x)
    assert torch.equal(a, b)
    cnn.train()
    assert not torch.allclose(cnn(x), a)


def test_patel_cnn_rejects_wrong_input() -> None:
    cnn = _tiny_cnn(in_channels=1)
    with pytest.raises(ValueError, match="expected input"):
        cnn(torch.rand(1, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="at least 32"):
        cnn(torch.rand(1, 1, 16, 16))


def test_slice_classifier_logits_are_linear_on_features() -> None:
    clf = SliceClassifier(_tiny_cnn()).eval()
    x = torch.rand(3, 1, SIZE, SIZE)
    logits = clf(x)
    assert logits.shape == (3,)
    expected = clf.encoder(x) @ clf.classifier.weight[0] + clf.classifier.bias[0]
    torch.testing.assert_close(logits, expected)
    multi = build_slice_classifier(clf.encoder, num_outputs=6).eval()
    out = multi(x)
    assert out.shape == (3, 6)
    torch.testing.assert_close(out, multi.classifier(clf.encoder(x)))


# --------------------------------------------------------------------------- heads
def test_bilstm_init_matches_method() -> None:
    in_f = 24
    head = BiLSTMHead(in_features=in_f, hidden=HIDDEN, num_layers=2)
    h = HIDDEN
    eye = torch.eye(h)
    names = {n for n, _ in head.rnn.named_parameters()}
    assert len(names) == 2 * 2 * 4  # 2 layers x 2 directions x (w_ih, w_hh, b_ih, b_hh)
    for name, p in head.rnn.named_parameters():
        p = p.detach()
        if name.startswith("bias_ih"):
            total = p + getattr(head.rnn, name.replace("bias_ih", "bias_hh")).detach()
            assert torch.equal(total[h : 2 * h], torch.ones(h)), name  # forget gate
            assert torch.equal(total[:h], torch.zeros(h))
            assert torch.equal(total[2 * h :], torch.zeros(2 * h))
        elif name.startswith("weight_hh"):
            assert p.shape == (4 * h, h)
            for k in range(4):
                block = p[k * h : (k + 1) * h]
                torch.testing.assert_close(block @ block.T, eye, atol=1e-5, rtol=0)
        elif name.startswith("weight_ih"):
            fan_in = p.shape[1]  # in_f for layer 0, 2h for layer 1
            bound = math.sqrt(6.0 / (fan_in + 4 * h))
            assert p.abs().max() <= bound
            # uniform on [-bound, bound]: std = bound / sqrt(3) (loose, 64 x 24+ samples)
            assert abs(p.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    # the bias split: forget gate's 1 sits in bias_ih, bias_hh is all zeros
    assert torch.equal(head.rnn.bias_hh_l0, torch.zeros(4 * h))


def test_bigru_init_biases_zero_recurrent_orthogonal() -> None:
    head = BiGRUHead(in_features=8, hidden=HIDDEN)
    h = HIDDEN
    for name, p in head.rnn.named_parameters():
        if name.startswith("bias"):
            assert torch.equal(p.detach(), torch.zeros(3 * h))
        elif name.startswith("weight_hh"):
            for k in range(3):
                block = p.detach()[k * h : (k + 1) * h]
                torch.testing.assert_close(block @ block.T, torch.eye(h), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["bilstm", "bigru", "lstm", "gru"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_head_padding_never_changes_a_volume_logit(name: str, pooling: str) -> None:
    head = build_head(name, in_features=8, hidden=HIDDEN, num_layers=2, pooling=pooling).eval()
    short = torch.randn(1, 5, 8)
    other = torch.randn(1, 9, 8)
    alone = head(short, torch.tensor([5]))
    padded = torch.cat([torch.cat([short, torch.full((1, 4, 8), 7.0)], dim=1), other])
    in_batch = head(padded, torch.tensor([5, 9]))
    torch.testing.assert_close(in_batch[0], alone[0], atol=1e-5, rtol=0)
    # changing the padding values does not change anything either
    padded2 = padded.clone()
    padded2[0, 5:] = -100.0
    torch.testing.assert_close(head(padded2, torch.tensor([5, 9])), in_batch, atol=0, rtol=0)
    # and the long volume is still sensitive to its own last slice
    padded3 = padded.clone()
    padded3[1, 8] += 1.0
    assert not torch.allclose(head(padded3, torch.tensor([5, 9]))[1], in_batch[1])


def test_bilstm_last_pooling_is_last_forward_and_first_backward_state() -> None:
    head = BiLSTMHead(in_features=8, hidden=HIDDEN).eval()
    feats = torch.randn(1, 6, 8)
    out, _ = head.rnn(feats)  # unpadded, full-length: (1, 6, 2H)
    expected = torch.cat([out[0, -1, :HIDDEN], out[0, 0, HIDDEN:]])
    torch.testing.assert_close(head.volume_features(feats, torch.tensor([6]))[0], expected)


def test_head_runs_in_float32_under_bf16_autocast() -> None:
    head = BiLSTMHead(in_features=8, hidden=HIDDEN).eval()
    feats = torch.randn(2, 5, 8)
    lengths = torch.tensor([5, 3])
    reference = head(feats, lengths)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = head(feats.to(torch.bfloat16), lengths)
    assert mixed.dtype == torch.float32
    # only the bf16 rounding of the input features differs
    torch.testing.assert_close(mixed, head(feats.to(torch.bfloat16).float(), lengths))
    torch.testing.assert_close(mixed, reference, atol=0.05, rtol=0.05)


def test_head_rejects_bad_lengths() -> None:
    head = BiLSTMHead(in_features=8, hidden=HIDDEN)
    with pytest.raises(ValueError, match="lengths"):
        head(torch.randn(2, 4, 8), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="lengths"):
        head(torch.randn(2, 4, 8), torch.tensor([5, 4]))


# --------------------------------------------------------------------------- volume model
class _CountingEncoder(nn.Module):
    """Mean of each slice times a learnable vector; records how many slices it saw."""

    def __init__(self, out_features: int = 8) -> None:
        super().__init__()
        self.out_features = out_features
        self.scale = nn.Parameter(torch.arange(1.0, out_features + 1))
        self.drop = nn.Dropout(0.5)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.drop(x.mean(dim=(1, 2, 3))[:, None] * self.scale)


def test_encode_uses_only_valid_slices_and_zero_pads() -> None:
    enc = _CountingEncoder()
    model = VolumeClassifier(enc, BiLSTMHead(in_features=8, hidden=HIDDEN), slice_chunk=3).eval()
    vols = torch.rand(2, 5, 1, 4, 4) + 1.0
    vols[0, 2:] = float("nan")  # padding content must never reach the encoder
    lengths = torch.tensor([2, 5])
    feats = model.encode(vols, lengths)
    assert feats.shape == (2, 5, 8)
    assert sum(enc.calls) == 7 and enc.calls == [3, 2, 2]
    assert torch.equal(feats[0, 2:], torch.zeros(3, 8))
    expected = vols[1, 4].mean() * enc.scale
    torch.testing.assert_close(feats[1, 4], expected)
    torch.testing.assert_close(feats[0, 1], vols[0, 1].mean() * enc.scale)
    logits = model(vols, lengths)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    # unpadded batch (the no-copy path) gives the same features as the masked path
    enc.calls.clear()
    full = model.encode(vols[1:], torch.tensor([5]))
    assert enc.calls == [3, 2]
    torch.testing.assert_close(full[0], feats[1], atol=0, rtol=0)
    torch.testing.assert_close(model.encode(vols[1:]), full, atol=0, rtol=0)


def test_volume_logit_alone_equals_logit_in_padded_batch() -> None:
    for head in ("bilstm", "bigru"):
        model = build_volume_model(
            {"name": "patel_cnn", "in_channels": 1, "width": WIDTH, "feature_dim": 16},
            {"name": head, "hidden": HIDDEN},
            slice_chunk=4,
        ).eval()
        short = torch.rand(1, 3, 1, SIZE, SIZE)
        long = torch.rand(1, 6, 1, SIZE, SIZE)
        alone = model(short, torch.tensor([3]))
        batch = torch.cat([torch.cat([short, torch.zeros(1, 3, 1, SIZE, SIZE)], 1), long])
        torch.testing.assert_close(
            model(batch, torch.tensor([3, 6]))[0], alone[0], atol=1e-5, rtol=0
        )


def test_freeze_encoder_keeps_eval_mode_and_blocks_gradients() -> None:
    enc = _CountingEncoder()
    model = VolumeClassifier(enc, BiLSTMHead(in_features=8, hidden=HIDDEN))
    before = enc.scale.detach().clone()
    model.freeze_encoder()
    model.train()
    assert model.training and model.head.training
    assert not enc.training and not enc.drop.training
    assert model.encoder_frozen
    vols = torch.rand(2, 4, 1, 4, 4)
    lengths = torch.tensor([4, 2])
    f1 = model.encode(vols, lengths)
    f2 = model.encode(vols, lengths)
    assert torch.equal(f1, f2)  # no dropout in the frozen encoder
    model(vols, lengths).sum().backward()
    assert enc.scale.grad is None
    assert model.head.fc.weight.grad is not None and model.head.fc.weight.grad.abs().sum() > 0
    opt = torch.optim.RMSprop([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.step()
    assert torch.equal(enc.scale.detach(), before)
    counts = count_parameters(model)
    assert counts["total"] - counts["trainable"] == 8
    model.unfreeze_encoder()
    assert enc.training and enc.scale.requires_grad
    model.zero_grad()
    model(vols, lengths).sum().backward()
    assert enc.scale.grad is not None and enc.scale.grad.abs().sum() > 0


def test_slice_classifier_encoder_state_loads_into_volume_model() -> None:
    spec = {"name": "patel_cnn", "in_channels": 1, "width": WIDTH, "feature_dim": 16}
    clf = build_slice_classifier(spec)
    vol = build_volume_model(spec, "bilstm")
    assert vol.head.in_features == 16
    vol.encoder.load_state_dict(clf.encoder.state_dict())
    x = torch.rand(2, 1, SIZE, SIZE)
    clf.eval()
    vol.eval()
    torch.testing.assert_close(vol.encode(x[None], torch.tensor([2]))[0], clf.features(x))


# --------------------------------------------------------------------------- registry
def test_registry_unknown_names_and_options_are_user_errors() -> None:
    assert "patel_cnn" in ENCODERS.names()
    assert {"bilstm", "bigru", "lstm", "gru"} <= set(HEADS.names())
    with pytest.raises(UserError, match="unknown encoder 'resnet9000'.*patel_cnn"):
        build_encoder("resnet9000")
    with pytest.raises(UserError, match="unknown head 'transformer'.*bigru, bilstm"):
        build_head("transformer")
    with pytest.raises(UserError, match="unknown option.*widht.*allowed:.*width"):
        build_encoder("patel_cnn", widht=4)
    with pytest.raises(UserError, match="'name'"):
        build_volume_model({"width": 4}, "bilstm")


@pytest.mark.parametrize(
    ("kind", "name", "kwargs", "message"),
    [
        ("encoder", "patel_cnn", {"width": "16"}, "option width must be int, got str '16'"),
        ("encoder", "patel_cnn", {"width": True}, "option width must be int, got bool"),
        ("encoder", "patel_cnn", {"dropout": 1}, r"dropout must be in \[0, 1\)"),
        ("encoder", "patel_cnn", {"feature_activation": 1}, "must be bool"),
        ("encoder", "alexnet", {"weights_path": 3}, "weights_path must be str or Path or None"),
        ("encoder", "vgg16", {"layer": "fc8"}, "layer must be one of fc7, fc6, pool"),
        ("encoder", "small_cnn", {"maps": [10, "x"]}, "maps must be a list"),
        ("head", "bilstm", {"pooling": "avg"}, "pooling must be one of 'last', 'mean', 'max'"),
        ("head", "bigru", {"num_layers": 0}, "num_layers must be >= 1"),
        ("head", "gru", {"hidden": 1.5}, "hidden must be int"),
    ],
)
def test_registry_bad_option_values_are_user_errors(
    kind: str, name: str, kwargs: dict, message: str
) -> None:
    build = build_encoder if kind == "encoder" else build_head
    with pytest.raises(UserError, match=message):
        build(name, **kwargs)


def test_registry_accepts_yaml_typed_values() -> None:
    # YAML gives ints for floats, lists for tuples and null for None
    enc = build_encoder("small_cnn", in_channels=1, maps=[4, 6], conv_dropout=0, input_size=32)
    assert enc.features[0].out_channels == 4
    head = build_head("bilstm", in_features=8, hidden=4, dropout=0)
    assert head.rnn.hidden_size == 4
    with pytest.raises(UserError, match="encoder gives 300 features but the head expects 8"):
        VolumeClassifier(enc, head)


def test_registry_register_and_duplicate() -> None:
    from ich3d.models.registry import Registry

    reg = Registry("thing")

    @reg.register("a")
    class A(nn.Module):
        def __init__(self, k: int = 1) -> None:
            super().__init__()
            self.k = k

    assert reg.build("a", k=3).k == 3
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(nn.Identity)


# --------------------------------------------------------------------------- torchvision encoders
@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download weights fails the test."""

    def _refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ich3d tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", _refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _refuse)


@pytest.fixture
def hub_dir(tmp_path, no_network):  # noqa: ANN001, ANN201
    """An empty torch hub directory for the duration of the test."""
    old = torch.hub.get_dir()
    path = tmp_path / "hub"
    torch.hub.set_dir(str(path))
    yield path
    torch.hub.set_dir(old)


def _old_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``denselayer1.norm1.weight`` -> ``denselayer1.norm.1.weight`` and drop the BN
    counters, as in torchvision's file."""
    import re

    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    return {
        pattern.sub(r"\1.\2.", k): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }


@pytest.mark.parametrize(
    ("name", "kwargs", "out_features", "expected_params"),
    [
        # torchvision totals (61,100,840 / 138,357,544 / 20,013,928) minus the layers cut off,
        # with the first conv taking 1 channel instead of 3 (-2 x its kernel count)
        (
            "alexnet",
            {},
            4096,
            61_100_840 - (4096 * 4096 + 4096) - (4096 * 1000 + 1000) - 2 * 64 * 121,
        ),
        ("alexnet", {"layer": "fc7"}, 4096, 61_100_840 - (4096 * 1000 + 1000) - 2 * 64 * 121),
        # VGG-16 builds its 138 M parameters before the cut: several seconds on CPU
        pytest.param(
            "vgg16", {"layer": "pool"}, 512, 14_714_688 - 2 * 64 * 9, marks=pytest.mark.slow
        ),
        (
            "densenet201",
            {"feature_dim": 32},
            32,
            20_013_928 - 1_921_000 - 2 * 64 * 49 + 1920 * 32 + 32,
        ),
    ],
)
def test_torchvision_encoders_build_without_weights(
    no_network: None, name: str, kwargs: dict, out_features: int, expected_params: int
) -> None:
    enc = build_encoder(name, in_channels=1, **kwargs).eval()
    assert enc.out_features == out_features
    assert enc.pretrained_from is None and enc.normalize is False
    assert count_parameters(enc)["total"] == expected_params
    if name == "densenet201":
        assert enc.proj.in_features == 1920  # the pooled DenseNet feature, then the projection
    size = 32 if name == "densenet201" else SIZE  # DenseNet-201 is slow on CPU: smallest input
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        y = enc(x)
    assert y.shape == (2, out_features) and torch.isfinite(y).all()
    with torch.no_grad():
        torch.testing.assert_close(enc(x[1:]), y[1:], atol=1e-5, rtol=1e-4)  # eval: per-sample


@pytest.mark.slow
def test_vgg16_fc7_at_224(no_network: None) -> None:
    enc = build_encoder("vgg16").eval()  # 134 M parameters
    assert enc.out_features == 4096
    assert count_parameters(enc)["total"] == 138_357_544 - (4096 * 1000 + 1000)
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 224, 224)).shape == (1, 4096)


def test_adapt_first_conv_preserves_a_grey_image_response() -> None:
    from ich3d.models.torchvision_encoders import adapt_first_conv

    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
    grey = torch.rand(2, 1, 8, 8)
    for c in (1, 2, 5):
        new = adapt_first_conv(conv, c, pretrained=True)
        assert new.in_channels == c and new.out_channels == 4
        torch.testing.assert_close(new(grey.repeat(1, c, 1, 1)), conv(grey.repeat(1, 3, 1, 1)))
    torch.testing.assert_close(
        adapt_first_conv(conv, 1, pretrained=True).weight, conv.weight.sum(1, keepdim=True)
    )
    assert adapt_first_conv(conv, 3, pretrained=True) is conv


def test_pretrained_refused_without_local_file(hub_dir) -> None:  # noqa: ANN001
    expected = hub_dir / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(UserError, match="never downloads") as err:
        build_encoder("alexnet", pretrained=True)
    assert str(expected) in str(err.value)
    with pytest.raises(UserError, match="not found"):
        build_encoder("densenet201", weights_path=hub_dir / "nope.pth")
    bad = hub_dir.parent / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        build_encoder("densenet201", weights_path=bad)
    wrong = hub_dir.parent / "wrong.pth"
    torch.save({"foo": torch.zeros(3)}, wrong)
    with pytest.raises(UserError, match="lacks"):
        build_encoder("alexnet", weights_path=wrong)
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(UserError, match="lacks"):
        build_encoder("alexnet", weights_path=wrong)
    with pytest.raises(UserError, match="layer must be one of"):
        build_encoder("vgg16", layer="fc8")


def test_pretrained_weights_load_from_local_files(hub_dir) -> None:  # noqa: ANN001
    import torchvision

    from ich3d.models.torchvision_encoders import IMAGENET_MEAN, IMAGENET_STD

    ref = torchvision.models.densenet201(weights=None).eval()
    with torch.no_grad():  # make BN statistics non-trivial, so a skipped key would show
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = hub_dir / "checkpoints" / "densenet201-c1103571.pth"
    path.parent.mkdir(parents=True)
    torch.save(_old_densenet_keys(ref.state_dict()), path)  # the hub file uses the old key names

    enc = build_encoder("densenet201", pretrained=True).eval()
    assert enc.pretrained_from == path and enc.normalize is True
    torch.testing.assert_close(enc.features.conv0.weight, ref.features.conv0.weight, atol=0, rtol=0)
    last_bn = ref.features.denseblock4.denselayer32.norm2
    torch.testing.assert_close(
        enc.features.denseblock4.denselayer32.norm2.running_var, last_bn.running_var, atol=0, rtol=0
    )
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.relu(ref.features((x - mean) / std)).mean(dim=(2, 3))
        torch.testing.assert_close(enc(x), expected, atol=1e-5, rtol=1e-4)

    # the same file by path, one grey channel, no normalisation: equals the RGB network on
    # the grey image repeated in three channels
    grey_enc = build_encoder(
        "densenet201", weights_path=str(path), in_channels=1, normalize=False
    ).eval()
    assert grey_enc.pretrained_from == path and grey_enc.normalize is False
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = torch.relu(ref.features(grey.repeat(1, 3, 1, 1))).mean(dim=(2, 3))
        torch.testing.assert_close(grey_enc(grey), expected, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- small CNN
def test_small_cnn_shapes_and_parameter_count() -> None:
    enc = build_encoder("small_cnn", in_channels=1, input_size=SIZE)
    assert enc.out_features == 300
    maps = (10, 20, 30, 40)
    convs = sum(
        9 * cin * cout + 2 * cout for cin, cout in zip((1, *maps[:-1]), maps, strict=True)
    )  # + BN
    grid = SIZE // 16
    dense = 40 * grid * grid * 300 + 2 * 300 + 300 * 300 + 2 * 300
    assert count_parameters(enc)["total"] == convs + dense == 301_490
    enc.eval()
    y = enc(torch.rand(3, 1, SIZE, SIZE))
    assert y.shape == (3, 300) and (y >= 0).all()  # ends in ReLU (+ dropout)
    # a larger slice than nominal runs and gives the same feature size
    assert enc(torch.rand(1, 1, 2 * SIZE, 2 * SIZE)).shape == (1, 300)


def test_frozen_batchnorm_encoder_keeps_statistics_in_volume_model() -> None:
    enc = build_encoder("small_cnn", in_channels=1, input_size=SIZE)
    model = VolumeClassifier(
        enc, build_head("bigru", in_features=300, hidden=HIDDEN), slice_chunk=4
    )
    vols = torch.rand(2, 5, 1, SIZE, SIZE)
    lengths = torch.tensor([5, 4])
    model.train()
    model(vols, lengths)  # unfrozen, train: 9 slices in chunks 3,3,3, statistics move
    moved = enc.features[1].running_mean.clone()
    assert not torch.equal(moved, torch.zeros(10))
    model.freeze_encoder().train()
    model(vols, lengths).sum().backward()
    assert torch.equal(enc.features[1].running_mean, moved)
    assert all(p.grad is None for p in enc.parameters())


def test_slice_scores_are_float32_under_bf16_autocast():
    """bf16 autocast (CUDA in production, emulated on the CPU here) must not tie the slice scores."""
    from ich3d.models.volume import build_slice_classifier

    torch.manual_seed(0)
    model = build_slice_classifier({"name": "patel_cnn", "in_channels": 3, "width": 4, "feature_dim": 32}).eval()
    x = torch.rand(400, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        feats = model.encoder(x)
        tied = model.classifier(feats.bfloat16()).squeeze(-1)  # what a bf16 last layer gives
    with torch.no_grad():
        exact = model(x)
    assert logits.dtype == torch.float32 and feats.dtype == torch.float32
    probs = torch.sigmoid(logits.double())
    assert len(torch.unique(probs)) == 400  # no ties
    assert len(torch.unique(torch.sigmoid(tied.double()))) < 200  # the ties the fp32 layer avoids
    # the bf16 convolutions move the scores a little, not the ranking
    assert torch.corrcoef(torch.stack([logits, exact]))[0, 1] > 0.99


# slice_chunk None: checkpointing chunks by 8 slices, so only dropout-free outputs can match
@pytest.mark.parametrize("slice_chunk,dropout", [(None, 0.0), (3, 0.3)])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(slice_chunk, dropout):
    from ich3d.models.volume import build_volume_model

    def build(ckpt: bool):
        torch.manual_seed(0)
        return build_volume_model(
            {"name": "patel_cnn", "in_channels": 3, "width": 4, "feature_dim": 16, "dropout": dropout},
            {"name": "bilstm", "hidden": 8},
            slice_chunk=slice_chunk,
            checkpoint_chunks=ckpt,
        ).train()

    x = torch.rand(2, 11, 3, 32, 32)
    lengths = torch.tensor([11, 7])
    grads, outs = [], []
    for ckpt in (False, True):
        model = build(ckpt)
        torch.manual_seed(1)  # the same dropout masks (checkpointing replays the RNG state)
        out = model(x, lengths)
        out.sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6, msg=n)


def test_channels_last_keeps_outputs_and_state_dict():
    from ich3d.models.speed import speed_up
    from ich3d.models.volume import build_volume_model

    torch.manual_seed(0)
    spec = ({"name": "patel_cnn", "in_channels": 3, "width": 4, "feature_dim": 16}, {"name": "bilstm", "hidden": 8})
    plain = build_volume_model(*spec).eval()
    fast = build_volume_model(*spec).eval()
    fast.load_state_dict(plain.state_dict())
    speed_up(fast, channels_last=True)
    conv = next(m for m in fast.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x, lengths = torch.rand(2, 5, 3, 32, 32), torch.tensor([5, 3])
    with torch.no_grad():
        torch.testing.assert_close(fast(x, lengths), plain(x, lengths), rtol=1e-5, atol=1e-5)
    plain.load_state_dict(fast.state_dict())  # checkpoints stay interchangeable


@pytest.mark.slow
def test_compiled_encoder_keeps_outputs():
    from ich3d.models.speed import speed_up
    from ich3d.models.volume import build_slice_classifier

    torch.manual_seed(0)
    plain = build_slice_classifier({"name": "patel_cnn", "in_channels": 3, "width": 4, "feature_dim": 16}).eval()
    fast = build_slice_classifier({"name": "patel_cnn", "in_channels": 3, "width": 4, "feature_dim": 16}).eval()
    fast.load_state_dict(plain.state_dict())
    speed_up(fast, channels_last=True, compile=True)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
    assert fast.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize(
    ("name", "cell", "bidirectional"),
    [
        ("bilstm", nn.LSTM, True),
        ("bigru", nn.GRU, True),
        ("lstm", nn.LSTM, False),
        ("gru", nn.GRU, False),
    ],
)
def test_registered_heads_are_one_class_with_checkpoint_keys(name, cell, bidirectional) -> None:
    from ich3d.models.sequence import RecurrentHead

    head = build_head(name, in_features=8, hidden=4)
    assert type(head) is RecurrentHead and type(head.rnn) is cell
    assert head.rnn.bidirectional is bidirectional
    keys = ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"]
    if bidirectional:
        keys += [k + "_reverse" for k in keys]
    assert list(head.state_dict()) == [*keys, "fc.weight", "fc.bias"]  # checkpoints still load
    with pytest.raises(UserError, match="unknown option.*cell"):
        build_head(name, in_features=8, cell="gru")  # cell and direction are the name's


def test_recurrent_heads_are_variants_whose_options_are_derived_not_repeated() -> None:
    import inspect

    from ich3d.models.sequence import RecurrentHead

    base = [n for n in inspect.signature(RecurrentHead).parameters if n not in ("cell", "bidirectional")]
    expected = {"bilstm": ("lstm", True), "bigru": ("gru", True), "lstm": ("lstm", False), "gru": ("gru", False)}
    for name, (cell, bidirectional) in expected.items():
        assert list(inspect.signature(HEADS.get(name)).parameters) == base
        head = build_head(name, in_features=8, hidden=HIDDEN, pooling="mean")
        assert (head.cell, head.bidirectional, head.pooling) == (cell, bidirectional, "mean")
    with pytest.raises(UserError, match="head 'bigru' got unknown option.*cell"):
        build_head("bigru", in_features=8, cell="lstm")
