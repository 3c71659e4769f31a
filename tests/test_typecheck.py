"""The one YAML value checker shared by the config loader and the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from torch import nn

from ich3d.config import config_from_dict
from ich3d.errors import UserError
from ich3d.models.registry import build_encoder
from ich3d.typecheck import Mismatch, convert, matches


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (3, float, 3.0),
        ("1e-4", float, 1e-4),
        ([1, 2], tuple[int, ...], (1, 2)),
        ([1, 2], tuple[int, int], (1, 2)),
        ((1, 2), list[int], [1, 2]),
        (None, int | None, None),
        ("a", Literal["a", "b"], "a"),
        ({"k": (1, 2)}, dict[str, Any], {"k": [1, 2]}),
        ("x.pt", str | Path | None, "x.pt"),
    ],
)
def test_convert_accepts_and_converts(value: Any, hint: Any, expected: Any) -> None:
    out = convert(value, hint)
    assert out == expected and type(out) is type(expected)
    assert matches(value, hint)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (True, int),
        (2.5, int),
        ("16", int),
        ("fast", float),
        ("yes", bool),
        ([1, 2, 3], tuple[int, int]),
        ([1, "x"], tuple[int, ...]),
        (3, str | Path | None),
        ("c", Literal["a", "b"]),
        ({1: 2}, dict[str, Any]),
    ],
)
def test_convert_refuses(value: Any, hint: Any) -> None:
    with pytest.raises(Mismatch):
        convert(value, hint)
    assert not matches(value, hint)


def test_config_and_registry_apply_the_same_rules() -> None:
    # a string exponent is a float for a config field and for an encoder option alike
    config = config_from_dict({"stages": {"slice": {"lr": "1e-3"}}})
    assert config.stages.slice.lr == 1e-3
    enc = build_encoder(
        "patel_cnn", in_channels=1, width=4, feature_dim=8, dropout="2e-1", input_size=32
    )
    drops = [m.p for m in enc.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(p == pytest.approx(0.2) for p in drops)
    # a bool is not an int in either
    with pytest.raises(UserError, match="expects int, got True"):
        config_from_dict({"stages": {"slice": {"batch_size": True}}})
    with pytest.raises(UserError, match="option width must be int, got bool"):
        build_encoder("patel_cnn", width=True)
