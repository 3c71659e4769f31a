"""Config values validated where they enter: ranges, finiteness, duplicate keys, encodings, disks."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import yaml

from ich3d.config import config_from_dict, dump_config, load_config, make_dirs, write_text
from ich3d.errors import UserError
from ich3d.typecheck import Range, in_range, range_problem


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        ({"stages": {"slice": {"lr": float("nan")}}}, r"'stages.slice.lr' must be a finite number > 0, got nan"),
        ({"stages": {"slice": {"lr": "inf"}}}, r"'stages.slice.lr' must be a finite number > 0, got inf"),
        ({"stages": {"slice": {"lr": 0}}}, r"'stages.slice.lr' must be > 0, got 0"),
        ({"stages": {"finetune": {"weight_decay": -1e-4}}}, r"'stages.finetune.weight_decay' must be >= 0"),
        ({"stages": {"sequence": {"gradient_clip_val": -1}}}, r"'stages.sequence.gradient_clip_val' must be >= 0, got -1"),
        ({"stages": {"slice": {"batch_size": 0}}}, r"'stages.slice.batch_size' must be >= 1, got 0"),
        ({"stages": {"direct": {"max_epochs": 0}}}, r"'stages.direct.max_epochs' must be >= 1"),
        ({"stages": {"slice": {"momentum": 1.5}}}, r"'stages.slice.momentum' must be in \[0, 1\), got 1.5"),
        ({"model": {"encoder_args": {"dropout": 1.0}}}, r"'model.encoder_args.dropout' must be in \[0, 1\), got 1.0"),
        ({"model": {"head_args": {"dropout": -0.1}}}, r"'model.head_args.dropout' must be in \[0, 1\)"),
        ({"model": {"encoder_args": {"scale": float("inf")}}}, r"'model.encoder_args.scale' must be a finite number"),
        ({"evaluation": {"confidence": 1.0}}, r"'evaluation.confidence' must be in \(0, 1\), got 1.0"),
        ({"evaluation": {"confidence": 0}}, r"'evaluation.confidence' must be in \(0, 1\), got 0"),
        ({"evaluation": {"target_sensitivity": 0}}, r"'evaluation.target_sensitivity' must be in \(0, 1\]"),
        ({"evaluation": {"target_sensitivity": 1.01}}, r"'evaluation.target_sensitivity' must be in \(0, 1\]"),
        ({"evaluation": {"percentile": 101}}, r"'evaluation.percentile' must be in \[0, 100\]"),
        ({"evaluation": {"svm_cs": [1.0, -1.0]}}, r"'evaluation.svm_cs' must be > 0, got -1.0"),
        ({"evaluation": {"batch_size": 0}}, r"'evaluation.batch_size' must be >= 1"),
        ({"data": {"split_fractions": [0.5, 0.6, -0.1]}}, r"'data.split_fractions' must be in \[0, 1\], got -0.1"),
        ({"data": {"split_fractions": [0.6, 0.2, 0.3]}}, r"'data.split_fractions' must be 3 non-negative numbers summing to 1"),
        ({"data": {"num_workers": -1}}, r"'data.num_workers' must be >= 0"),
        ({"trainer": {"limit_train_batches": 0}}, r"'trainer.limit_train_batches' must be > 0"),
        ({"trainer": {"log_every_n_steps": 0}}, r"'trainer.log_every_n_steps' must be >= 1"),
        ({"seed": -3}, r"'seed' must be >= 0, got -3"),
    ],
)
def test_out_of_range_and_non_finite_values_name_key_range_and_value(raw, pattern):
    with pytest.raises(UserError, match=pattern):
        config_from_dict(raw)


def test_values_in_range_pass_and_none_is_allowed():
    c = config_from_dict(
        {
            "stages": {"slice": {"gradient_clip_val": 0, "momentum": 0.9, "early_stopping_patience": None}},
            "evaluation": {"confidence": 0.99, "target_sensitivity": 1},
            "model": {"encoder_args": {"dropout": 0.5}},
        }
    )
    assert c.stages.slice.gradient_clip_val == 0 and c.evaluation.target_sensitivity == 1.0


def test_range_declaration_reads_as_words():
    assert str(Range(gt=0)) == "> 0" and str(Range(ge=0, lt=1)) == "in [0, 1)"
    assert str(Range(gt=0, le=1)) == "in (0, 1]" and str(Range(le=2.5)) == "<= 2.5"
    assert in_range(ge=1)["range"] == Range(ge=1)
    assert range_problem(2, Range(ge=1)) is None and range_problem(None, Range(ge=1)) is None
    assert range_problem(True, Range(ge=2)) is None  # booleans are the type check's business
    assert range_problem([1e-3, float("nan")], Range(gt=0)) == "must be a finite number > 0, got nan"
    assert range_problem(float("inf"), None) == "must be a finite number, got inf"


def test_non_finite_lr_from_yaml_and_override_is_refused_before_anything_is_written(tmp_path):
    from ich3d.cli.main import main

    path = tmp_path / "exp.yaml"
    path.write_text(f"data:\n  cache_dir: {tmp_path / 'c'}\nrun:\n  root: {tmp_path / 'runs'}\nstages:\n  slice:\n    lr: .nan\n")
    with pytest.raises(UserError, match=r"'stages.slice.lr' must be a finite number > 0, got nan"):
        load_config(path)
    assert main(["train", str(path), "--stage", "slice", "stages.slice.lr=.nan"]) == 2
    assert main(["train", str(path), "--stage", "slice", "stages.slice.lr=1e-3", "evaluation.confidence=1.5"]) == 2
    assert not (tmp_path / "runs").exists()


def test_duplicate_keys_are_refused_with_key_and_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\ndata:\n  cache_dir: a\n  split_seed: 2\n  cache_dir: b\n")
    with pytest.raises(UserError, match=r"dup.yaml: key 'cache_dir' is given twice \(lines 3 and 5\)"):
        load_config(path)
    top = tmp_path / "top.yaml"
    top.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(UserError, match=r"key 'seed' is given twice \(lines 1 and 2\)"):
        load_config(top)
    merged = tmp_path / "merge.yaml"  # YAML merge keys are not duplicates
    merged.write_text("x: &a {lr: 0.1}\n")
    with pytest.raises(UserError, match="unknown config key 'x'"):
        load_config(merged)
    tagged = tmp_path / "tag.yaml"
    tagged.write_text("seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tagged)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ("seed: 1\nexperiment: caf\u00e9\n".encode("utf-16"), r"not UTF-8 text \(it looks like UTF-16\): byte 0xff at offset 0"),
        ("seed: 1\nexperiment: caf\u00e9\n".encode("latin-1"), r"not UTF-8 text: byte 0xe9 at offset 23; save it as UTF-8"),
    ],
)
def test_config_in_another_encoding_is_one_error_line(tmp_path, data, pattern, capsys):
    from ich3d.cli.main import main

    path = tmp_path / "enc.yaml"
    path.write_bytes(data)
    with pytest.raises(UserError, match=pattern):
        load_config(path)
    assert main(["train", str(path), "--print-scale"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ich3d: error: config file") and err.count("\n") == 1 and "Traceback" not in err


def test_utf8_with_bom_and_non_ascii_values_are_read(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffexperiment: caf\u00e9\n".encode())
    assert load_config(path).experiment == "caf\u00e9"


def test_unwritable_folder_is_one_error_naming_the_path(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root writes into read-only folders: the kernel's answer for a user
        real_mkdir = Path.mkdir

        def refuse(path):
            if str(path).startswith(str(ro)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

        monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refuse(self) or real_mkdir(self, *a, **k))
        monkeypatch.setattr("builtins.open", _refusing_open(refuse))
    try:
        with pytest.raises(UserError, match=rf"cannot create run directory {ro}/runs/x: permission denied"):
            make_dirs(ro / "runs" / "x", "run directory")
        with pytest.raises(UserError, match=rf"cannot write config file {ro}/config.yaml: permission denied"):
            dump_config(config_from_dict({}), ro / "config.yaml")
    finally:
        ro.chmod(0o700)


def _refusing_open(refuse):
    import builtins

    real_open = builtins.open

    def opener(file, mode="r", *a, **k):
        if "w" in mode:
            refuse(file)
        return real_open(file, mode, *a, **k)

    return opener


def test_full_disk_is_one_error_naming_the_path_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    class FullFile:
        def __init__(self, fh):
            self._fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        return FullFile(fh) if "w" in mode else fh

    monkeypatch.setattr(builtins, "open", full_open)
    target = tmp_path / "config.yaml"
    with pytest.raises(UserError, match=rf"cannot write config file {target}: no space left on device"):
        dump_config(config_from_dict({}), target)
    with pytest.raises(UserError, match="no space left on device"):
        write_text(tmp_path / "result.json", "{}", "result file")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial or temporary file


def test_read_only_run_root_and_full_disk_through_train_cli(tmp_path, monkeypatch, capsys):
    """`ich3d train` on a run root it cannot create, or a disk that fills, prints one error line."""
    from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

    import ich3d.config.files as files

    cache = make_cache(tmp_path / "data", patients=12)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run root should be a folder")
    cfg = write_config(tmp_path / "tiny.yaml", tiny_raw_config(cache, tmp_path, run={"root": str(blocker / "runs")}))
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "r") == 2
    err = capsys.readouterr().err
    assert f"ich3d: error: cannot create run directory {blocker}/runs/tiny/r" in err and "Traceback" not in err

    def enospc(path, text, what="file"):
        raise UserError(f"cannot write {what} {path}: no space left on device")

    monkeypatch.setattr(files, "write_text", enospc)
    import ich3d.runs.run_dir as run_dir

    monkeypatch.setattr(run_dir, "write_text", enospc)
    cfg2 = write_config(tmp_path / "tiny2.yaml", tiny_raw_config(cache, tmp_path))
    assert run_cli("train", str(cfg2), "--stage", "slice", "--run-id", "full") == 2
    err = capsys.readouterr().err
    assert f"cannot write config file {tmp_path}/runs/tiny/full/config.yaml: no space left on device" in err
    assert not (tmp_path / "runs").exists()  # the failed start took its folder back


def test_resolved_config_roundtrips_through_safe_yaml(tmp_path):
    c = config_from_dict({"stages": {"slice": {"lr": "3e-4"}}})
    dump_config(c, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["stages"]["slice"]["lr"] == pytest.approx(3e-4)
    assert load_config(tmp_path / "c.yaml").stages.slice.lr == pytest.approx(3e-4)
