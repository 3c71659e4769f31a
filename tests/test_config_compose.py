"""Composed configs: `base:` files, and the shipped configs resolving exactly as before composition."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from ich3d.config import compose, dump_config, load_config
from ich3d.errors import UserError

REPO = Path(__file__).resolve().parents[1]
#: the resolved configs of the flat files and `make compare`'s .args overrides before
#: composition (configs/demo.yaml is tuned separately and not pinned here)
BEFORE = json.loads((REPO / "tests" / "data" / "resolved_configs.json").read_text())
_STAGE = re.compile(r"^# compare-stage: ([a-z_]*)", re.MULTILINE)  # the Makefile's sed
#: keys added to the schema since the fixture was made, with the default every config has
ADDED = {("tracking", "log_model"): False, ("data", "folds"): 1, ("data", "fold"): None, ("evaluation", "tta"): [],
         ("data", "context_slices"): 0}


def _as_before(resolved: dict) -> dict:
    """The resolved dict without the keys added since (asserting they hold their default)."""
    for (section, key), default in ADDED.items():
        assert resolved[section].pop(key) == default
    return _relative(resolved)


def _relative(node):
    if isinstance(node, dict):
        return {k: _relative(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_relative(v) for v in node]
    if isinstance(node, str) and node.startswith(str(REPO)):
        return "<repo>" + node[len(str(REPO)) :]
    return node


@pytest.mark.parametrize("key", sorted(k for k in BEFORE if k.startswith("configs/")))
def test_shipped_configs_resolve_as_before(key, monkeypatch):
    monkeypatch.chdir(REPO)
    assert _as_before(load_config(REPO / key).to_dict()) == BEFORE[key]


@pytest.mark.parametrize("system", sorted(BEFORE["compare_stages"]))
def test_compare_configs_resolve_as_the_args_files_did(system, monkeypatch):
    monkeypatch.chdir(REPO)
    path = REPO / "configs" / "compare" / f"{system}.yaml"
    config = load_config(path)
    assert _as_before(config.to_dict()) == BEFORE[f"compare/{system}"]
    assert config.experiment == system  # runs/compare/<system>/<run-id>, as the Makefile reads them
    assert _STAGE.findall(path.read_text()) == [BEFORE["compare_stages"][system]]


def test_every_compare_system_of_the_makefile_has_a_config():
    makefile = (REPO / "Makefile").read_text()
    systems = re.search(r"COMPARE_SYSTEMS \?= (.*?)\n(?!\t)", makefile, re.DOTALL).group(1).replace("\\\n", " ").split()
    assert sorted(systems) == sorted(BEFORE["compare_stages"])
    assert "configs/compare/$$s.yaml" in makefile and ".args" not in makefile
    # the RSNA 2019 winners: opt-in (`make compare COMPARE_WINNERS=1`), three stages each
    extra = re.search(r"COMPARE_EXTRA := (.*)\n", makefile).group(1).split()
    assert extra == ["rsna2019_1st", "rsna2019_2nd"] and "COMPARE_SYSTEMS += $(COMPARE_EXTRA)" in makefile
    for system in extra:
        path = REPO / "configs" / "compare" / f"{system}.yaml"
        assert load_config(path).experiment == system and _STAGE.findall(path.read_text()) == ["all"]
    found = sorted(p.stem for p in (REPO / "configs" / "compare").glob("*.yaml"))
    assert found == sorted([*systems, *extra, "common"])


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_is_relative_to_the_file_and_merges_key_by_key(tmp_path, monkeypatch):
    _write(tmp_path / "family" / "base.yaml", "seed: 1\nmodel:\n  encoder_args: {width: 8, dropout: 0.2}\n  head: bilstm\n"
           "stages:\n  slice: {lr: 0.01, batch_size: 4}\n")
    _write(tmp_path / "family" / "shrink.yaml", "stages:\n  slice: {batch_size: 2}\ntracking: {mode: disabled}\n")
    exp = _write(tmp_path / "exps" / "exp.yaml", "base: [../family/base.yaml, ../family/shrink.yaml]\n"
                 "model:\n  encoder_args: {width: 16}\ndata:\n  cache_dir: cache\n")
    monkeypatch.chdir(tmp_path / "exps")
    c = load_config(exp, ["stages.slice.lr=0.02"])
    assert c.experiment == "exp"  # the file's stem, not the base's
    assert c.seed == 1 and c.model.head == "bilstm"
    assert c.model.encoder_args == {"width": 16, "dropout": 0.2}  # mappings merge
    assert (c.stages.slice.lr, c.stages.slice.batch_size) == (0.02, 2)  # later bases, then overrides win
    assert c.tracking.mode == "disabled"
    assert c.data.cache_dir == str(tmp_path / "exps" / "cache")  # paths: against the current directory
    dump_config(c, tmp_path / "resolved.yaml")  # the resolved config: no base left
    resolved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert "base" not in resolved and resolved["model"]["encoder_args"] == {"width": 16, "dropout": 0.2}
    assert load_config(tmp_path / "resolved.yaml", []).to_dict() == {**c.to_dict(), "experiment": "exp"}


def test_base_cycles_missing_files_and_bad_values_are_refused(tmp_path):
    a = _write(tmp_path / "a.yaml", "base: b.yaml\nseed: 1\n")
    _write(tmp_path / "b.yaml", "base: sub/c.yaml\n")
    _write(tmp_path / "sub" / "c.yaml", "base: ../a.yaml\n")
    with pytest.raises(UserError, match=r"name each other as 'base' in a cycle: .*a.yaml -> .*b.yaml -> .*c.yaml -> .*a.yaml"):
        compose(a)
    me = _write(tmp_path / "me.yaml", "base: me.yaml\n")
    with pytest.raises(UserError, match="in a cycle"):
        compose(me)
    lost = _write(tmp_path / "lost.yaml", "base: nowhere.yaml\n")
    with pytest.raises(UserError, match=r"config file not found: .*nowhere.yaml \(named as 'base' by .*lost.yaml\)"):
        compose(lost)
    bad = _write(tmp_path / "bad.yaml", "base: {x: 1}\n")
    with pytest.raises(UserError, match=r"'base' in .*bad.yaml must be a file path or a list of paths"):
        compose(bad)
    _write(tmp_path / "dup_base.yaml", "seed: 1\nseed: 2\n")
    top = _write(tmp_path / "top.yaml", "base: dup_base.yaml\n")
    with pytest.raises(UserError, match=r"dup_base.yaml: key 'seed' is given twice"):
        compose(top)
    diamond = _write(tmp_path / "d.yaml", "base: [shared.yaml, shared.yaml]\n")  # the same base twice is no cycle
    _write(tmp_path / "shared.yaml", "seed: 3\n")
    assert compose(diamond) == {"seed": 3}
