"""Cross-validation folds: patient-disjoint, covering, stratified, written once; fold runs train."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from _cache_helpers import write_fake_cache
from _train_helpers import (
    crash_after_step,
    make_cache,
    row_keys,
    run_cli,
    tiny_raw_config,
    write_config,
)

from ich3d.config import config_from_dict
from ich3d.data.folds import fold_view, load_splits, make_folds
from ich3d.data.schema import patient_key
from ich3d.data.splits import SPLIT_NAMES, make_splits, patient_labels, subtype_strata
from ich3d.errors import UserError
from ich3d.runs.checkpoints import load_checkpoint
from ich3d.runs.datamodules import volume_datamodule
from ich3d.runs.run_dir import open_run_dir


def _volumes(n_pos: int, n_neg: int, vols_per_patient: int = 2) -> pd.DataFrame:
    rows = []
    for p in range(n_pos + n_neg):
        for v in range(vols_per_patient):
            rows.append({"key": f"k{p:03d}{v}", "patient_id": f"ID_p{p:03d}", "any": int(p < n_pos and v == 0)})
    return pd.DataFrame(rows)


def _subtype_volumes() -> pd.DataFrame:
    """60 patients: 30 negative, 30 positive of three subtypes (18 subdural, 8 epidural, 4 intraventricular)."""
    rows = []
    kinds = ["subdural"] * 18 + ["epidural"] * 8 + ["intraventricular"] * 4 + [None] * 30
    for p, kind in enumerate(kinds):
        row = {"key": f"k{p:03d}", "patient_id": f"ID_p{p:03d}", "any": int(kind is not None)}
        row.update({t: int(t == kind) for t in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")})
        rows.append(row)
    return pd.DataFrame(rows)


def _spread(values) -> int:
    return max(values) - min(values)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_disjoint_cover_the_non_test_patients_once_and_are_stratified(k) -> None:
    vols = _volumes(23, 31)
    sp = make_splits(vols, seed=4)
    folds = make_folds(vols, sp, k, seed=4)
    assert len(folds) == k
    pool = set(sp.patients["train"]) | set(sp.patients["val"])
    flat = [p for f in folds for p in f]
    assert len(flat) == len(set(flat)) == len(pool) and set(flat) == pool  # each exactly once
    assert not set(flat) & set(sp.patients["test"])
    labels = patient_labels(vols)
    assert _spread([len(f) for f in folds]) <= 1
    assert _spread([int(labels[f].sum()) for f in folds]) <= 1  # positives balanced
    assert _spread([int((1 - labels[f]).sum()) for f in folds]) <= 1  # negatives balanced
    assert make_folds(vols, sp, k, seed=4) == folds  # seeded
    assert make_folds(vols, sp, k, seed=5) != folds


def test_folds_stratified_by_the_rarest_subtype() -> None:
    vols = _subtype_volumes()
    sp = make_splits(vols, seed=0, subtypes=True)
    folds = make_folds(vols, sp, 3, seed=0, subtypes=True)
    strata = subtype_strata(vols, patient_labels(vols))
    pool = sorted(p for f in folds for p in f)
    for stratum in sorted(set(strata[pool])):
        per_fold = [int((strata[f] == stratum).sum()) for f in folds]
        assert _spread(per_fold) <= 1, (stratum, per_fold)
    # intraventricular (the rarest) is in the pool and spread over the folds
    ivh = [int((strata[f] == strata[strata.index[26]]).sum()) for f in folds]
    assert sum(ivh) >= 3 and min(ivh) >= 1


def test_k1_writes_todays_splits_json_byte_for_byte(tmp_path) -> None:
    vols = _volumes(10, 12)
    sp = load_splits(tmp_path, vols, seed=3)
    text = (tmp_path / "splits.json").read_text()
    old = {"seed": 3, "fractions": [0.7, 0.1, 0.2]}  # the format before folds, written by hand
    old.update({s: sp.patients[s] for s in SPLIT_NAMES})
    old["keys"] = {s: sp.keys[s] for s in SPLIT_NAMES}
    assert text == json.dumps(old, indent=1) + "\n"
    assert sp.folds is None and "folds" not in text


def test_folds_are_added_once_beside_the_unchanged_single_split(tmp_path) -> None:
    vols = _volumes(10, 12)
    single = load_splits(tmp_path, vols, seed=3)
    before = json.loads((tmp_path / "splits.json").read_text())
    cv = load_splits(tmp_path, vols, seed=3, folds=4)
    data = json.loads((tmp_path / "splits.json").read_text())
    assert {k: v for k, v in data.items() if k != "folds" and k != "keys"} == {
        k: v for k, v in before.items() if k != "keys"
    }
    assert {s: data["keys"][s] for s in SPLIT_NAMES} == before["keys"]
    assert data["folds"] == cv.folds == make_folds(vols, single, 4, seed=3)
    assert data["keys"]["folds"] == [
        sorted(vols.loc[vols["patient_id"].isin(f), "key"]) for f in data["folds"]
    ]
    text = (tmp_path / "splits.json").read_text()
    assert load_splits(tmp_path, vols, seed=3, folds=4).folds == cv.folds  # reused
    assert load_splits(tmp_path, vols, seed=3).patients == single.patients  # K=1 reads its split
    assert (tmp_path / "splits.json").read_text() == text  # neither rewrote it
    with pytest.raises(UserError, match=r"holds 4 folds, not data.folds=3.*data.folds=4"):
        load_splits(tmp_path, vols, seed=3, folds=3)


def test_fold_view_validates_on_its_fold_and_trains_on_the_others(tmp_path) -> None:
    vols = _volumes(9, 9)
    cv = load_splits(tmp_path, vols, seed=1, folds=3)
    for k in range(3):
        view = load_splits(tmp_path, vols, seed=1, folds=3, fold=k, write=False)
        assert view.patients["val"] == cv.folds[k]
        assert set(view.patients["train"]) == {p for i, f in enumerate(cv.folds) if i != k for p in f}
        assert view.patients["test"] == cv.patients["test"] and view.keys["test"] == cv.keys["test"]
        assert view.keys["val"] == cv.fold_keys[k]
        assert sorted(view.keys["train"] + view.keys["val"]) == sorted(cv.keys["train"] + cv.keys["val"])
    with pytest.raises(UserError, match="out of range"):
        fold_view(cv, 3)
    with pytest.raises(UserError, match="needs data.folds > 1"):
        load_splits(tmp_path, vols, seed=1, fold=0)


def test_user_file_folds_honoured_and_checked(tmp_path) -> None:
    vols = _volumes(4, 4, vols_per_patient=1)
    pats = sorted(vols["patient_id"].unique())
    user = {"train": pats[:4], "val": pats[4:6], "test": pats[6:]}
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({**user, "folds": [pats[:3], [patient_key(p) for p in pats[3:6]]]}))
    sp = load_splits(tmp_path, vols, splits_file=f, folds=2, fold=1)
    assert sp.patients["val"] == pats[3:6] and sp.patients["train"] == pats[:3]
    assert not (tmp_path / "splits.json").exists()
    bad = {
        "folds 0 and 1": [pats[:3], pats[2:6]],
        "test split": [pats[:3], pats[3:7]],
        "in no fold": [pats[:3], pats[3:5]],
    }
    for message, folds in bad.items():
        f.write_text(json.dumps({**user, "folds": folds}))
        with pytest.raises(UserError, match=message):
            load_splits(tmp_path, vols, splits_file=f, folds=2)
    # a user's file without folds: folds made in memory over its train + val, the file untouched
    f.write_text(json.dumps(user))
    sp = load_splits(tmp_path, vols, splits_file=f, folds=2, seed=7)
    assert sorted(p for fold in sp.folds for p in fold) == sorted(user["train"] + user["val"])
    assert json.loads(f.read_text()) == user


def test_datamodule_trains_on_the_other_folds(tmp_path) -> None:
    from ich3d.data.datamodule import VolumeDataModule

    fc = write_fake_cache(tmp_path / "c", patients=12)
    dm = VolumeDataModule(fc.root, split_seed=2, folds=3, fold=2)
    dm.prepare_data()
    dm.setup("fit")
    on_disk = json.loads((fc.root / "splits.json").read_text())
    assert list(dm.split_table("val")["key"]) == on_disk["keys"]["folds"][2]
    assert list(dm.split_table("train")["key"]) == sorted(on_disk["keys"]["folds"][0] + on_disk["keys"]["folds"][1])
    assert list(dm.split_table("test")["key"]) == on_disk["keys"]["test"]
    with pytest.raises(UserError, match="fold 3 of 3"):
        VolumeDataModule(fc.root, folds=3, fold=3)


def test_config_fold_keys() -> None:
    raw = {"data": {"cache_dir": "/c", "folds": 5, "fold": 4}}
    assert config_from_dict(raw).data.fold == 4
    with pytest.raises(UserError, match=r"'data.fold' is 5, but data.folds=5 gives folds 0 to 4"):
        config_from_dict({"data": {"cache_dir": "/c", "folds": 5, "fold": 5}})
    with pytest.raises(UserError, match=r"no folds \(set data.folds > 1\)"):
        config_from_dict({"data": {"cache_dir": "/c", "fold": 0}})
    with pytest.raises(UserError, match="data.folds"):
        config_from_dict({"data": {"cache_dir": "/c", "folds": 0}})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("foldcache"), patients=16)


def _cv_config(cache, root):
    raw = tiny_raw_config(cache, root)
    raw["data"].update({"folds": 2, "split_fractions": [0.5, 0.25, 0.25]})
    return write_config(root / "cv.yaml", raw)


def test_fold_run_trains_its_chain_in_its_folder(cache, tmp_path, capsys) -> None:
    cfg = _cv_config(cache, tmp_path)
    assert run_cli("train", str(cfg), "--fold", "1", "--run-id", "cv") == 0
    top = tmp_path / "runs" / "tiny" / "cv"
    run = open_run_dir(top / "fold1")
    assert all(run.is_done(s) for s in ("slice", "sequence", "finetune"))
    assert not (top / "fold0").exists() and not (top / "slice").exists()
    assert yaml.safe_load((top / "config.yaml").read_text())["data"]["fold"] is None
    config = run.load_config()
    assert (config.data.folds, config.data.fold) == (2, 1)
    # the fold's model validated on fold 1 and trained on fold 0 (the cache's splits.json)
    on_disk = json.loads((cache / "splits.json").read_text())
    dm = volume_datamodule(config)
    dm.setup("fit")
    assert list(dm.split_table("val")["key"]) == on_disk["keys"]["folds"][1]
    assert list(dm.split_table("train")["key"]) == on_disk["keys"]["folds"][0]
    # the checkpoints pin the fold: another fold's chain cannot start from them
    pinned = load_checkpoint(run.best_ckpt("finetune"))["ich3d"]["inputs"]["splits"]
    other = config_from_dict({**config.to_dict(), "data": {**config.to_dict()["data"], "fold": 0}})
    from ich3d.runs.inputs import input_signature

    assert pinned == input_signature(config.data)["splits"] != input_signature(other.data)["splits"]
    assert f"ich3d: run directory {run.path}" in capsys.readouterr().out
    # the out-of-fold evaluation of the whole run needs every fold, and says how to train them
    assert run_cli("evaluate", str(top)) == 2
    assert f"fold0 not trained; out-of-fold evaluation needs every fold (ich3d train --resume {top} --folds all)" in capsys.readouterr().err


def test_fold_options_refused_with_advice(cache, tmp_path, capsys) -> None:
    cfg = _cv_config(cache, tmp_path)
    assert run_cli("train", str(cfg), "--run-id", "x") == 2
    assert "--fold K (0 to 1) or every fold with --folds all" in capsys.readouterr().err
    assert run_cli("train", str(cfg), "--fold", "2", "--run-id", "x") == 2
    assert "fold 2 is out of range: data.folds=2 gives folds 0 to 1" in capsys.readouterr().err
    assert run_cli("train", str(cfg), "--folds", "all", "--run-id", "x", "data.folds=1") == 2
    assert "set data.folds=K" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert run_cli("train", str(cfg), "--fold", "1", "--run-id", "x", "--print-run-dir") == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "runs" / "tiny" / "x" / "fold1")


def test_fold_interrupted_and_continued_ends_as_an_uninterrupted_one(cache, tmp_path, monkeypatch) -> None:
    from ich3d.training.preemption import newest_checkpoint

    def config(root):
        raw = tiny_raw_config(cache, root)
        raw["data"].update({"folds": 2, "split_fractions": [0.5, 0.25, 0.25]})
        raw["stages"]["slice"].update({"max_epochs": 3, "samples_per_epoch": 40})  # 4 steps per epoch
        raw["trainer"]["log_every_n_steps"] = 1
        return write_config(root / "cv.yaml", raw)

    reference = tmp_path / "reference"
    reference.mkdir()
    assert run_cli("train", str(config(reference)), "--fold", "0", "--stage", "slice", "--run-id", "ref") == 0
    ref = open_run_dir(reference / "runs" / "tiny" / "ref" / "fold0")
    expected = row_keys(ref.stage_dir("slice") / "metrics.csv")

    cfg = config(tmp_path)
    with crash_after_step(monkeypatch, 6), pytest.raises(RuntimeError, match="node lost"):
        run_cli("train", str(cfg), "--folds", "all", "--stage", "slice", "--run-id", "crash")
    top = tmp_path / "runs" / "tiny" / "crash"
    fold0 = open_run_dir(top / "fold0")
    assert newest_checkpoint(fold0.stage_dir("slice")) == fold0.last_ckpt("slice")
    assert not fold0.is_done("slice") and not (top / "fold1").exists()
    # the whole run resumed: fold 0 continues from its last.ckpt, fold 1 starts
    assert run_cli("train", "--resume", str(top), "--folds", "all", "--stage", "slice") == 0
    assert load_checkpoint(fold0.last_ckpt("slice"))["global_step"] == 12
    assert row_keys(fold0.stage_dir("slice") / "metrics.csv") == expected
    assert open_run_dir(top / "fold1").is_done("slice")
    # one fold's directory resumes alone, and refuses another fold
    assert run_cli("train", "--resume", str(top / "fold1"), "--stage", "sequence") == 0
    assert open_run_dir(top / "fold1").is_done("sequence") and not fold0.is_done("sequence")
    assert run_cli("train", "--resume", str(top / "fold1"), "--fold", "0") == 2


def test_fold_wandb_run_named_and_grouped_by_the_run(tmp_path) -> None:
    from ich3d.tracking.loggers import StageWandbLogger, build_loggers, wandb_run_id

    raw = {"data": {"cache_dir": "/c", "folds": 3, "fold": 2}, "tracking": {"mode": "offline", "project": "p"}}
    config = config_from_dict(raw, default_experiment="tiny")
    (wb,) = [lg for lg in build_loggers(config, tmp_path / "cv" / "fold2", "slice") if isinstance(lg, StageWandbLogger)]
    init = wb._wandb_init
    assert init["name"] == "tiny/cv/fold2/slice" and init["group"] == "cv"
    assert init["id"] == wandb_run_id("tiny", "cv/fold2", "slice") != wandb_run_id("tiny", "fold2", "slice")
    assert init["config"]["config"]["data"]["fold"] == 2
    assert (init["config"]["fold"], init["config"]["folds"]) == (2, 3)
