"""The model registry finds every encoder and head module by itself (no list to keep)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import ich3d.models
from ich3d.models.registry import ENCODERS, HEADS, MODELS_PACKAGE
from ich3d.plugins import import_submodules


def test_every_registering_module_of_the_package_is_imported() -> None:
    folder = Path(ich3d.models.__file__).parent
    registering = {
        f"ich3d.models.{p.stem}"
        for p in folder.glob("*.py")
        if re.search(r"\b(ENCODERS|HEADS)\.register\(", p.read_text())
    }
    assert {"ich3d.models.slice_cnn", "ich3d.models.sequence"} <= registering
    assert {"patel_cnn", "small_cnn", "alexnet"} <= set(ENCODERS.names())  # the discovery ran
    assert all(name in sys.modules for name in registering)
    found = set(import_submodules(MODELS_PACKAGE, skip=("registry",)))
    assert registering - {"ich3d.models.registry"} <= found
    assert {"bilstm", "bigru", "lstm", "gru"} <= set(HEADS.names())


def test_a_new_module_file_is_found(tmp_path: Path, monkeypatch) -> None:
    pkg = tmp_path / "plugin_models_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny_encoder.py").write_text(
        "from torch import nn\n"
        "from ich3d.models.registry import Registry\n"
        "REG = Registry('encoder')\n"
        "@REG.register('tiny')\n"
        "class Tiny(nn.Module):\n"
        "    def __init__(self, in_channels: int = 3) -> None:\n"
        "        super().__init__()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert import_submodules("plugin_models_pkg") == ["plugin_models_pkg.tiny_encoder"]
        assert sys.modules["plugin_models_pkg.tiny_encoder"].REG._builders.keys() == {"tiny"}
    finally:
        for name in ("plugin_models_pkg", "plugin_models_pkg.tiny_encoder"):
            sys.modules.pop(name, None)
