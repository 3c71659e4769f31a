"""Experiment configs: validation messages, overrides, paths, defaults, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ich3d.config import (
    Config,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_overrides,
    resolve_precision,
)
from ich3d.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, raw: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_names_path_allowed_keys_and_suggestion(tmp_path):
    path = _write(tmp_path, {"data": {"cache_dri": "c"}})
    with pytest.raises(UserError) as err:
        load_config(path)
    msg = str(err.value)
    assert "'data.cache_dri'" in msg
    assert "did you mean 'data.cache_dir'" in msg
    assert "allowed keys in 'data':" in msg and "split_fractions" in msg and "windows" in msg


def test_unknown_top_level_and_stage_keys(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'trainr' \(did you mean 'trainer'\?\)"):
        config_from_dict({"trainr": {}})
    with pytest.raises(UserError, match=r"'stages.sequence.learning_rate'.*allowed keys in 'stages.sequence'.*lr"):
        config_from_dict({"stages": {"sequence": {"learning_rate": 1.0}}})
    with pytest.raises(UserError, match=r"'stages.stage2'.*allowed keys in 'stages': slice, sequence, finetune, direct"):
        config_from_dict({"stages": {"stage2": {}}})


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        ({"stages": {"slice": {"batch_size": "big"}}}, r"'stages.slice.batch_size' expects int, got 'big'"),
        ({"stages": {"slice": {"batch_size": 2.5}}}, r"expects int, got 2.5"),
        ({"trainer": {"deterministic": "yes"}}, r"'trainer.deterministic' expects bool, got 'yes'"),
        ({"tracking": {"mode": "online-ish"}}, r"'tracking.mode' expects one of 'offline', 'online', 'disabled'"),
        ({"data": {"split_fractions": [0.5, 0.5]}}, r"'data.split_fractions' expects list of"),
        ({"data": {"split_fractions": [0.5, 0.2, 0.2]}}, r"summing to 1"),
        ({"data": "cache"}, r"'data' must be a mapping"),
        ({"stages": {"sequence": {"lr": -1}}}, r"'stages.sequence.lr' must be > 0"),
    ],
)
def test_wrong_types_and_values(raw, pattern):
    with pytest.raises(UserError, match=pattern):
        config_from_dict(raw)


def test_method_defaults_per_stage():
    c = config_from_dict({})
    s = c.stages
    assert (s.slice.optimizer, s.slice.lr, s.slice.batch_size) == ("adam", 1e-4, 25)
    assert (s.sequence.optimizer, s.sequence.lr, s.sequence.batch_size) == ("rmsprop", 1e-3, 1)
    assert (s.finetune.optimizer, s.finetune.lr, s.finetune.batch_size) == ("rmsprop", 1e-4, 1)
    assert (s.direct.optimizer, s.direct.lr) == ("rmsprop", 1e-4)
    assert c.data.windows == ("brain", "subdural", "bone")
    assert c.tracking.mode == "offline"
    # a partial stage section keeps that stage's other defaults
    c2 = config_from_dict({"stages": {"sequence": {"max_epochs": 3}}})
    assert (c2.stages.sequence.optimizer, c2.stages.sequence.lr, c2.stages.sequence.max_epochs) == (
        "rmsprop",
        1e-3,
        3,
    )


def test_overrides_are_yaml_values():
    parsed = dict((".".join(k), v) for k, v in parse_overrides(["a.b=1e-4", "c=[x, y]", "d=null", "e=true", "f=2"]))
    # PyYAML reads 1e-4 (no dot) as a string; the float field accepts it at validation
    assert parsed == {"a.b": "1e-4", "c": ["x", "y"], "d": None, "e": True, "f": 2}
    raw = apply_overrides({"stages": {"slice": {"lr": 0.1}}}, ["stages.slice.lr=3e-4", "stages.sequence.max_epochs=7", "seed=5"])
    c = config_from_dict(raw)
    assert c.stages.slice.lr == pytest.approx(3e-4)  # "3e-4" (YAML 1.1 string) is accepted for a float
    assert c.stages.sequence.max_epochs == 7 and c.seed == 5
    assert c.stages.slice.batch_size == 25
    with pytest.raises(UserError, match="section.key=value"):
        parse_overrides(["stages.slice.lr"])
    with pytest.raises(UserError, match=r"'stages.slice.lrr'.*did you mean 'stages.slice.lr'"):
        config_from_dict(apply_overrides({}, ["stages.slice.lrr=1"]))
    with pytest.raises(UserError, match="is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_relative_paths_resolve_against_cwd_and_roundtrip(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    path = _write(sub, {"data": {"cache_dir": "data/cache", "labels_csv": "~/labels.csv"}})
    monkeypatch.chdir(tmp_path)
    c = load_config(path, ["run.root=out"])
    assert c.experiment == "exp"  # the file stem
    assert c.data.cache_dir == str(tmp_path / "data" / "cache")
    assert c.data.labels_csv == str(Path.home() / "labels.csv")
    assert c.run.root == str(tmp_path / "out")
    assert c.data.images_dir is None
    dumped = tmp_path / "resolved.yaml"
    dump_config(c, dumped)
    monkeypatch.chdir(sub)  # absolute now: loading elsewhere gives the same config
    again = load_config(dumped)
    assert again == c
    assert isinstance(again, Config)


def test_precision_auto_is_fp32_on_cpu_and_stage_override():
    c = config_from_dict({"trainer": {"accelerator": "cpu"}, "stages": {"finetune": {"precision": "bf16-mixed"}}})
    assert resolve_precision(c, "slice") == "32-true"
    assert resolve_precision(c, "finetune") == "bf16-mixed"
    c2 = config_from_dict({"trainer": {"precision": "16-mixed"}})
    assert resolve_precision(c2, "sequence") == "16-mixed"


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(lst)


@pytest.mark.parametrize("name", ["demo.yaml", "patel2019.yaml"])
def test_shipped_configs_load_and_build(name, monkeypatch):
    from ich3d.models.volume import build_volume_model
    from ich3d.training.runner import model_spec

    monkeypatch.chdir(REPO)
    c = load_config(REPO / "configs" / name)
    spec = model_spec(c)
    assert spec["encoder"]["in_channels"] == len(c.data.windows)
    model = build_volume_model(dict(spec["encoder"]), dict(spec["head"]))
    assert model.encoder.out_features == model.head.in_features
    if name == "patel2019.yaml":
        assert spec["head"]["hidden"] == 512 and spec["head"]["num_layers"] == 2
        assert spec["encoder"]["feature_dim"] == 512
        assert c.trainer.precision in ("auto", "bf16-mixed")
        assert (c.stages.sequence.optimizer, c.stages.sequence.lr) == ("rmsprop", 1e-3)


def test_print_run_dir_prints_the_path_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from ich3d.cli.main import main

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, {"experiment": "exp", "data": {"cache_dir": "c"}, "run": {"root": "out"}})
    assert main(["train", str(path), "--run-id", "r1", "--print-run-dir"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "exp" / "r1")
    assert not (tmp_path / "out").exists()
