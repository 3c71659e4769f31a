"""A failed `ich3d train` start: advice that names what works, and nothing left behind."""

from __future__ import annotations

import re
import shlex

from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config

from ich3d.config import load_config
from ich3d.data.cache import open_cache
from ich3d.data.splits import load_or_create_splits


def test_second_config_on_a_cache_with_other_split_fractions(tmp_path, capsys):
    cache = make_cache(tmp_path / "data", patients=12)
    load_or_create_splits(cache, open_cache(cache).volumes, fractions=(0.4, 0.3, 0.3), seed=0)
    raw = tiny_raw_config(cache, tmp_path, data={"split_fractions": [0.5, 0.25, 0.25]}, tracking={"mode": "offline"})
    cfg = write_config(tmp_path / "other.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice") == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("ich3d: error:")]
    assert "the split belongs to the cache" in line and "data.splits_file=FILE" in line
    assert "overwrite" not in line  # no such train flag or key
    # a failed start leaves no run directory and no W&B run behind
    assert not (tmp_path / "runs").exists()
    # the advice works: the cache's values, as printed, train
    advice = re.search(r"\((data\.split_seed=\S+ data\.split_fractions=\S+)\)", line).group(1)
    overrides = shlex.split(advice)
    assert load_config(cfg, overrides).data.split_fractions == (0.4, 0.3, 0.3)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "ok", *overrides) == 0
    assert (tmp_path / "runs" / "tiny" / "ok" / "slice" / "result.json").is_file()


def test_demo_config_on_ones_own_cache_names_keys_that_exist(tmp_path, capsys):
    """`ich3d train demo.yaml data.cache_dir=/my/cache`: the config's images_dir is not the cache's input."""
    cache = make_cache(tmp_path / "data", patients=12)
    images = tmp_path / "demo-images"
    images.mkdir()
    (images / "ID_0000.dcm").write_bytes(b"\0" * 200)
    labels = tmp_path / "demo.csv"
    labels.write_text("ID,Label\n")
    raw = tiny_raw_config(cache, tmp_path, tracking={"mode": "offline"})
    raw["data"].update(images_dir=str(images), labels_csv=str(labels))
    cfg = write_config(tmp_path / "demo.yaml", raw)
    existing = tmp_path / "runs" / "tiny" / "kept"
    existing.mkdir(parents=True)
    assert run_cli("train", str(cfg), "--stage", "slice", f"data.cache_dir={cache}") == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ich3d: error:")]
    assert f"cache {cache}" in line and "data.images_dir=null data.labels_csv=null" in line
    assert "data.images_dir=DIR data.labels_csv=CSV" in line and "ich3d ingest --images DIR" in line
    assert "pass --overwrite (overwrite=True)" not in line
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["kept"]  # nothing new
    # the first suggestion works: train on the cache as it is
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "asis", "data.images_dir=null", "data.labels_csv=null") == 0


def test_failure_in_an_existing_run_keeps_it_and_drops_only_new_wandb_runs(tmp_path, capsys):
    cache = make_cache(tmp_path / "data", patients=12)
    cfg = write_config(tmp_path / "tiny.yaml", tiny_raw_config(cache, tmp_path, tracking={"mode": "offline"}))
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "r") == 0
    run = tmp_path / "runs" / "tiny" / "r"
    before = sorted(p.name for p in (run / "wandb").iterdir())
    (cache / "splits.json").write_text((cache / "splits.json").read_text().replace('"seed": 0', '"seed": 5'))
    assert run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "r") == 2
    assert "the split belongs to the cache" in capsys.readouterr().err
    assert (run / "slice" / "best.ckpt").is_file() and (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "wandb").iterdir()) == before
