"""The one model builder: a new ``model.*`` key added from this file reaches every path to logits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ich3d.errors import UserError
from ich3d.models.build import ModelOption, build, build_slice, register_option, unregister_option
from ich3d.training.modules import SliceModule, VolumeModule
from ich3d.training.runner import model_spec

SIZE = 32
SPEC = {
    "encoder": {"name": "patel_cnn", "in_channels": 1, "width": 2, "feature_dim": 8, "dropout": 0.0},
    "head": {"name": "bilstm", "hidden": 4},
    "slice_chunk": None,
}
OPTIMIZER = {"name": "adam", "lr": 1e-3}


@pytest.fixture
def temperature():
    """A user's ``model.temperature``: divides every logit (one registration, nothing else)."""
    option = register_option(ModelOption(
        "temperature", default=1.0,
        apply=lambda model, t: model.add_logit_transform(lambda z: z / t),
        description="divide every logit by this",
    ))
    yield option
    unregister_option("temperature")


def _pair(spec: dict, value: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    plain = build(spec).eval()
    torch.manual_seed(0)
    scaled = build({**spec, "temperature": value}).eval()
    return plain, scaled


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(2, 5, 1, SIZE, SIZE), torch.tensor([5, 3])


def test_new_model_key_takes_effect_on_the_full_and_cached_feature_paths(temperature) -> None:
    plain, scaled = _pair(SPEC, 4.0)
    vols, lengths = _batch()
    with torch.no_grad():
        expected = plain(vols, lengths) / 4.0
        torch.testing.assert_close(scaled(vols, lengths), expected)
        feats = plain.encode(vols, lengths)
        torch.testing.assert_close(scaled.head_logits(feats, lengths), expected)
    # the training module: whole volumes (stage 3) and cached features (stage 2)
    torch.manual_seed(0)
    full = VolumeModule(model={**SPEC, "temperature": 4.0}, optimizer=OPTIMIZER).eval()
    torch.manual_seed(0)
    frozen = VolumeModule(model={**SPEC, "temperature": 4.0}, optimizer=OPTIMIZER, freeze_encoder=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(full._logits({"volume": vols, "length": lengths}), expected)
        torch.testing.assert_close(frozen._logits({"features": feats, "length": lengths}), expected)


def test_new_model_key_takes_effect_on_the_per_slice_path(temperature) -> None:
    spec = {**SPEC, "per_slice": True}
    plain, scaled = _pair(spec, 2.0)
    vols, lengths = _batch()
    with torch.no_grad():
        expected = plain.slice_logits(vols, lengths) / 2.0
        got = scaled.slice_logits(vols, lengths)
        assert torch.isinf(got[1, 3:]).all() and torch.isfinite(got[1, :3]).all()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(scaled(vols, lengths), expected.amax(dim=1))
        torch.manual_seed(0)
        module = VolumeModule(model={**spec, "temperature": 2.0}, optimizer=OPTIMIZER).eval()
        volume_logits = module._logits({"volume": vols, "length": lengths})
        torch.testing.assert_close(module._slice_logits, expected)
        torch.testing.assert_close(volume_logits, expected.amax(dim=1))


def test_new_model_key_is_read_from_the_config_and_stored_only_when_set(temperature) -> None:
    model = SimpleNamespace(
        encoder="patel_cnn", encoder_args={"width": 2}, head="bilstm", head_args={},
        slice_chunk=None, per_slice=False, temperature=3.0,
    )
    config = SimpleNamespace(model=model, data=SimpleNamespace(windows=["brain"], targets=None))
    spec = model_spec(config)
    assert spec == {
        "encoder": {"name": "patel_cnn", "width": 2, "in_channels": 1},
        "head": {"name": "bilstm"},
        "slice_chunk": None,
        "temperature": 3.0,
    }
    model.temperature = 1.0  # the default: the spec (and old checkpoints) do not carry it
    assert "temperature" not in model_spec(config)


def test_spec_with_an_unknown_option_is_a_user_error_naming_the_registry() -> None:
    with pytest.raises(UserError, match=r"unknown model option\(s\) temprature; registered: .*per_slice"):
        build({**SPEC, "temprature": 2.0})
    with pytest.raises(UserError, match="needs 'encoder' and 'head'"):
        build_slice({"encoder": SPEC["encoder"]})


def test_modules_and_builder_give_the_same_network() -> None:
    spec = {**SPEC, "targets": ["any", "epidural"]}
    torch.manual_seed(0)
    built = build(spec)
    torch.manual_seed(0)
    module = VolumeModule(model=spec, optimizer=OPTIMIZER, target_weights=[1.0, 1.0])
    assert built.head.num_outputs == 2
    for (name, a), (_, b) in zip(built.state_dict().items(), module.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    torch.manual_seed(0)
    slice_model = SliceModule(model=spec, optimizer=OPTIMIZER, target_weights=[1.0, 1.0]).model
    assert slice_model.num_outputs == 2 and slice_model.classifier.out_features == 2
