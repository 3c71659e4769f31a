"""Patient splits: disjoint, seeded, stratified, written once, user file honoured."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _cache_helpers import write_fake_cache

from ich3d.data.schema import patient_key
from ich3d.data.splits import (
    SPLIT_NAMES,
    load_or_create_splits,
    make_splits,
    patient_labels,
    read_splits_file,
    validate_fractions,
)
from ich3d.errors import UserError


def _volumes(n_pos: int, n_neg: int, vols_per_patient: int = 2) -> pd.DataFrame:
    rows = []
    for p in range(n_pos + n_neg):
        for v in range(vols_per_patient):
            rows.append(
                {
                    "key": f"k{p:03d}{v}",
                    "patient_id": f"ID_p{p:03d}",
                    # a positive patient has one positive and one negative volume
                    "any": int(p < n_pos and v == 0),
                }
            )
    return pd.DataFrame(rows)


def test_disjoint_cover_and_keys_follow_patients() -> None:
    vols = _volumes(20, 20)
    sp = make_splits(vols, seed=3)
    sets = [set(sp.patients[s]) for s in SPLIT_NAMES]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set.union(*sets) == set(vols["patient_id"])
    for s in SPLIT_NAMES:
        expect = sorted(vols.loc[vols["patient_id"].isin(sp.patients[s]), "key"])
        assert sp.keys[s] == expect
    assert sum(len(sp.keys[s]) for s in SPLIT_NAMES) == len(vols)


def test_stratified_exact_counts() -> None:
    # 20 positive + 20 negative patients, 0.7/0.1/0.2 -> 14/2/4 of each class
    vols = _volumes(20, 20)
    labels = patient_labels(vols)
    assert labels.sum() == 20  # positive = any volume positive
    sp = make_splits(vols, seed=0)
    for s, n in zip(SPLIT_NAMES, (14, 2, 4), strict=True):
        pos = int(labels[sp.patients[s]].sum())
        assert (pos, len(sp.patients[s]) - pos) == (n, n)


def test_same_seed_same_splits_other_seed_differs() -> None:
    vols = _volumes(20, 20)
    a, b = make_splits(vols, seed=7), make_splits(vols.sample(frac=1.0, random_state=1), seed=7)
    assert a.patients == b.patients and a.keys == b.keys  # row order of the table is irrelevant
    c = make_splits(vols, seed=8)
    assert c.patients != a.patients


def test_tiny_dataset_every_split_has_both_classes() -> None:
    vols = _volumes(3, 4, vols_per_patient=1)
    labels = patient_labels(vols)
    for seed in range(10):
        sp = make_splits(vols, seed=seed)
        for s in SPLIT_NAMES:
            lab = labels[sp.patients[s]]
            assert lab.sum() >= 1 and (lab == 0).sum() >= 1, (seed, s)


def test_zero_fraction_split_is_empty() -> None:
    sp = make_splits(_volumes(5, 5), fractions=(0.8, 0.2, 0.0), seed=0)
    assert sp.patients["test"] == [] and len(sp.patients["train"]) == 8


@pytest.mark.parametrize(
    "fractions, msg",
    [
        ((0.7, 0.2, 0.2), "sum to"),
        ((0.7, -0.1, 0.4), "non-negative"),
        ((0.5, 0.5), "three"),
        ((0, 0.5, 0.5), "train"),
    ],
)
def test_bad_fractions(fractions, msg) -> None:
    with pytest.raises(UserError, match=msg):
        validate_fractions(fractions)


def test_unlabeled_cannot_stratify() -> None:
    vols = _volumes(2, 2)
    vols["any"] = -1
    with pytest.raises(UserError, match="labeled"):
        make_splits(vols)


def test_written_once_and_reused(tmp_path) -> None:
    vols = _volumes(10, 10)
    sp = load_or_create_splits(tmp_path, vols, seed=1)
    path = tmp_path / "splits.json"
    data = json.loads(path.read_text())
    assert data["seed"] == 1 and data["fractions"] == [0.7, 0.1, 0.2]
    assert {s: data[s] for s in SPLIT_NAMES} == sp.patients
    assert data["keys"] == sp.keys
    # edit the file by hand: a reuse must return the file's content, not recompute
    p = data["train"].pop()
    data["test"].append(p)
    path.write_text(json.dumps(data))
    again = load_or_create_splits(tmp_path, vols, seed=1)
    assert p in again.patients["test"] and p not in again.patients["train"]
    with pytest.raises(UserError, match="seed 1"):
        load_or_create_splits(tmp_path, vols, seed=2)
    with pytest.raises(UserError, match="fractions"):
        load_or_create_splits(tmp_path, vols, seed=1, fractions=(0.6, 0.2, 0.2))
    new = load_or_create_splits(tmp_path, vols, seed=2, overwrite=True)
    assert json.loads(path.read_text())["seed"] == 2
    assert new.patients == make_splits(vols, seed=2).patients


def test_user_file_honoured_ids_or_hashes(tmp_path) -> None:
    vols = _volumes(4, 4, vols_per_patient=1)
    pats = sorted(vols["patient_id"].unique())
    want = {"train": pats[:2], "val": pats[2:5], "test": pats[5:]}  # not stratified: as given
    f = tmp_path / "mine.json"
    f.write_text(
        json.dumps(
            {
                "train": want["train"],
                "val": [patient_key(p) for p in want["val"]],
                "test": want["test"],
            }
        )
    )
    sp = read_splits_file(f, vols)
    assert sp.patients == {s: sorted(v) for s, v in want.items()}
    assert sp.keys["val"] == sorted(vols.loc[vols["patient_id"].isin(want["val"]), "key"])


def test_user_file_errors(tmp_path) -> None:
    vols = _volumes(3, 3, vols_per_patient=1)
    pats = sorted(vols["patient_id"].unique())
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"train": pats[:3], "val": pats[3:4], "test": pats[4:5]}))
    with pytest.raises(UserError, match="leaves 1 of the cache's 6 patients"):
        read_splits_file(f, vols)
    f.write_text(json.dumps({"train": pats[:4], "val": pats[3:5], "test": pats[5:]}))
    with pytest.raises(UserError, match="both 'train' and 'val'"):
        read_splits_file(f, vols)
    f.write_text(
        json.dumps({"train": [*pats[:4], "ID_stranger"], "val": pats[4:5], "test": pats[5:]})
    )
    with pytest.raises(UserError, match="1 patient.*not in the cache"):
        read_splits_file(f, vols)
    f.write_text(json.dumps({"train": pats}))
    with pytest.raises(UserError, match="'train', 'val', 'test'"):
        read_splits_file(f, vols)
    f.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_splits_file(f, vols)


def test_datamodule_uses_cache_splits_and_user_file(tmp_path) -> None:
    from ich3d.data.datamodule import VolumeDataModule

    fc = write_fake_cache(tmp_path / "c", patients=12)
    dm = VolumeDataModule(fc.root, split_seed=5)
    dm.prepare_data()
    dm.setup("fit")
    on_disk = json.loads((fc.root / "splits.json").read_text())
    for s in SPLIT_NAMES:
        assert list(dm.split_table(s)["key"]) == on_disk["keys"][s]
    # no patient (hashed) in two splits of the DataModule's tables
    seen = [set(dm.split_table(s)["patient"]) for s in SPLIT_NAMES]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])

    pats = sorted(fc.volumes["patient_id"].unique())
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"train": pats[:8], "val": pats[8:10], "test": pats[10:]}))
    dm2 = VolumeDataModule(fc.root, splits_file=user, split_seed=99)  # seed ignored: file honoured
    dm2.prepare_data()
    dm2.setup("fit")
    want = sorted(fc.volumes.loc[fc.volumes["patient_id"].isin(pats[8:10]), "key"])
    assert list(dm2.split_table("val")["key"]) == want
    assert json.loads((fc.root / "splits.json").read_text()) == on_disk  # untouched
