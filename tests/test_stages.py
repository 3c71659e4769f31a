"""Declared stages: the registry drives config, chain, CLI and checkpoints; inputs are pinned.

The toy stage here is docs/extending.md's example: one declaration,
registered from this test file, trains end to end and is evaluated as a volume model.
"""

from __future__ import annotations

import json

import pytest
import torch
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

from ich3d.config import config_from_dict
from ich3d.errors import UserError
from ich3d.runs.checkpoints import best_volume_stage, load_checkpoint, sub_state_dict
from ich3d.runs.inputs import check_inputs, input_signature, recorded_inputs
from ich3d.runs.run_dir import open_run_dir
from ich3d.stages import (
    Stage,
    StageConfig,
    all_stages,
    chain,
    get_stage,
    register_stage,
    stage_names,
    unregister_stage,
    volume_stages,
)

PROBE = Stage(
    name="probe",
    kind="volume",
    order=50,
    description="frozen stage-1 CNN + a fresh BiLSTM (a probe of the slice features)",
    defaults=StageConfig(optimizer="adam", lr=1e-3, batch_size=1, max_epochs=1, samples_per_epoch=6),
    starts_from="slice",
    loads="encoder",
    freeze_encoder=True,
)


@pytest.fixture
def probe_stage():
    register_stage(PROBE)
    yield PROBE
    unregister_stage(PROBE.name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("data"), patients=12)


@pytest.fixture(scope="module")
def slice_run(cache, tmp_path_factory):
    """A run with only its slice stage trained."""
    root = tmp_path_factory.mktemp("slice")
    cfg = write_config(root / "tiny.yaml", tiny_raw_config(cache, root))
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "s1") == 0
    return cfg, open_run_dir(root / "runs" / "tiny" / "s1")


def test_builtin_stages_as_the_method_declares_them():
    assert stage_names() == ["slice", "sequence", "finetune", "direct"]
    assert [s.name for s in chain()] == ["slice", "sequence", "finetune"]
    assert [s.name for s in volume_stages()] == ["finetune", "sequence", "direct"]
    seq, fin, direct = get_stage("sequence"), get_stage("finetune"), get_stage("direct")
    assert (seq.starts_from, seq.loads, seq.freeze_encoder) == ("slice", "encoder", True)
    assert (fin.starts_from, fin.loads, fin.freeze_encoder) == ("sequence", "model", False)
    assert (direct.starts_from, direct.in_chain) == (None, False)
    assert (get_stage("slice").defaults.optimizer, get_stage("slice").defaults.batch_size) == ("adam", 25)
    assert (seq.defaults.optimizer, seq.defaults.lr) == ("rmsprop", 1e-3)
    assert (fin.defaults.optimizer, fin.defaults.lr) == ("rmsprop", 1e-4)
    with pytest.raises(UserError, match="unknown stage 'stage4'; expected one of " + ", ".join(stage_names())):
        get_stage("stage4")


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="starts from unknown stage"):
        register_stage(Stage(name="orphan", kind="volume", order=99, description="x", starts_from="nope", loads="model"))
    with pytest.raises(ValueError, match="already registered"):
        register_stage(Stage(name="slice", kind="volume", order=1, description="another"))
    with pytest.raises(ValueError, match="go together"):
        Stage(name="half", kind="volume", order=1, description="x", starts_from="slice")
    with pytest.raises(ValueError, match="slice stage"):
        register_stage(Stage(name="bad", kind="volume", order=1, description="x", starts_from="slice", loads="model"))
    assert "orphan" not in stage_names() and "bad" not in stage_names()


def test_list_stages_is_what_submit_sh_reads(capsys):
    assert run_cli("train", "--list-stages") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t")[:6] == ["name", "kind", "starts_from", "loads", "frozen_encoder", "in_chain"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == stage_names()
    assert [r[0] for r in rows if r[5] == "yes"] == [s.name for s in chain()]
    assert rows[1][:5] == ["sequence", "volume", "slice", "encoder", "yes"]


def test_config_stage_section_follows_the_registry(probe_stage):
    c = config_from_dict({"stages": {"probe": {"lr": 0.5}, "sequence": {"max_epochs": 3}}})
    assert c.stages.probe.lr == 0.5 and c.stages.probe.optimizer == "adam"  # declared default kept
    assert c.stages.get("sequence").max_epochs == 3 and c.stages.sequence.lr == 1e-3
    assert c.stages.finetune == get_stage("finetune").defaults  # not mentioned: declared defaults
    assert list(c.to_dict()["stages"]) == stage_names()
    with pytest.raises(UserError, match=r"unknown config key 'stages.prob'.*did you mean 'stages.probe'"):
        config_from_dict({"stages": {"prob": {}}})
    with pytest.raises(UserError, match=r"'stages.probe.lr' must be > 0"):
        config_from_dict({"stages": {"probe": {"lr": 0}}})
    # round trip through YAML: the saved config reads back equal
    assert config_from_dict(c.to_dict()) == c


def test_toy_stage_trains_end_to_end_and_is_evaluated(cache, tmp_path, probe_stage, capsys):
    assert "probe" in [s.name for s in all_stages()]
    cfg = write_config(tmp_path / "tiny.yaml", tiny_raw_config(cache, tmp_path))
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "p1") == 0
    assert run_cli("train", str(cfg), "--stage", "probe", "--run-id", "p1") == 0
    run = open_run_dir(tmp_path / "runs" / "tiny" / "p1")
    # the run's config now has a stages.probe section: reading it needs the stage registered
    assert run.load_config().stages.probe.optimizer == "adam"
    assert run.is_done("probe")
    # frozen encoder: bit-identical to stage 1's
    slice_enc = sub_state_dict(load_checkpoint(run.best_ckpt("slice"))["state_dict"], "model.encoder.")
    probe = load_checkpoint(run.best_ckpt("probe"))
    for k, v in sub_state_dict(probe["state_dict"], "model.encoder.").items():
        assert torch.equal(v, slice_enc[k]), k
    assert probe["hyper_parameters"]["optimizer"]["name"] == "adam"  # the declared default
    # the only volume model of the run is the toy one, so it is the run's model
    assert best_volume_stage(run) == "probe"
    from ich3d.evaluation.evaluate import evaluate_run

    result = evaluate_run(run.path, progress=False, tracking=False, device="cpu")
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert "probe" in json.dumps(metrics)
    header = (result.out_dir / "predictions.csv").read_text().splitlines()[0].split(",")
    assert "probe" in header and "max" in header


def test_checkpoints_record_their_inputs(slice_run):
    cfg, run = slice_run
    inputs = recorded_inputs(load_checkpoint(run.best_ckpt("slice")))
    config = run.load_config()
    assert inputs == input_signature(config.data)
    assert inputs["windows"] == ["brain", "subdural", "bone"] and inputs["image_size"] == [32, 32]
    assert inputs["depth_pool"] == 2 and inputs["label"] == "any"
    assert len(inputs["cache"]) == 16 and len(inputs["splits"]) == 16


def test_stage_refuses_a_start_trained_on_other_windows(slice_run, capsys):
    cfg, run = slice_run
    before = sorted(p.name for p in run.path.rglob("*"))
    code = run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "s1", "data.windows=[brain,subdural,bone_wide]")
    assert code == 2
    err = capsys.readouterr().err
    assert "slice/best.ckpt (which stage sequence starts from) was trained on other inputs" in err
    assert "windows: trained on ['brain', 'subdural', 'bone'], now ['brain', 'subdural', 'bone_wide']" in err
    assert sorted(p.name for p in run.path.rglob("*")) == before  # nothing written, config.yaml kept
    code = run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "s1", "data.depth_pool=1")
    assert code == 2 and "depth_pool: trained on 2, now 1" in capsys.readouterr().err


def test_check_inputs_compares_only_what_both_sides_know():
    rec = {"windows": ["brain"], "depth_pool": 2, "cache": "a" * 16, "splits": None}
    check_inputs(None, rec, what="old.ckpt")  # older checkpoint: nothing to compare
    check_inputs(rec, {**rec, "splits": "b" * 16}, what="x")  # unknown on one side: not compared
    check_inputs(rec, {**rec, "cache": "c" * 16}, what="x", keys=["windows", "depth_pool"])
    with pytest.raises(UserError, match=r"x was trained on other inputs \(cache: trained on 'aaaa"):
        check_inputs(rec, {**rec, "cache": "c" * 16}, what="x")


def test_resume_refuses_other_inputs(slice_run, capsys):
    cfg, run = slice_run
    config_before = run.config_path.read_text()
    code = run_cli("train", "--resume", str(run.path), "--stage", "slice", "data.windows=[brain]")
    assert code == 2
    err = capsys.readouterr().err
    assert "slice/last.ckpt (the stage being resumed) was trained on other inputs" in err
    assert "windows: trained on ['brain', 'subdural', 'bone'], now ['brain']" in err
    assert run.config_path.read_text() == config_before
