"""Cross-validation folds: K patient-disjoint folds over the non-test patients.

Rules (``data.folds: K``, K > 1; K = 1 is the single split of :mod:`ich3d.data.splits`):

- The test split is the fixed one of ``splits.json``; the folds cover its ``train``
  and ``val`` patients, every one in exactly one fold. Fold ``k`` validates on fold
  ``k`` and trains on the others (:func:`fold_view`).
- Stratified as the single split: by the patient's label (``any``), and with subtype
  targets by the rarest subtype too (:func:`~ich3d.data.splits.make_splits`). Each
  stratum is shuffled with ``numpy.random.default_rng([seed, K])`` and dealt to the
  folds in turn, continuing where the previous stratum stopped: the folds' sizes
  differ by at most one patient, and so do their counts in every stratum.
- Written once into ``CACHE/splits.json`` (``"folds"``: K lists of patient ids,
  ``keys.folds``: their volume keys), beside the unchanged ``train``, ``val`` and
  ``test`` lists: a K = 1 run on the same cache reads the same single split. A file
  holding another number of folds is refused (the error names ``data.folds``).
- A user's splits file (``data.splits_file``) may give its own ``"folds"`` (lists of
  patient ids or hashes); they must cover its ``train`` and ``val`` patients exactly
  once. Without them the folds are made as above and kept in memory; the user's file
  is never written.

Public API::

    make_folds(volumes, splits, k, seed=0, subtypes=False) -> list[list[str]]
    check_folds(folds, splits, where) -> None
    with_folds(splits, folds, volumes) -> Splits
    ensure_folds(splits, volumes, k, seed=0, subtypes=False) -> (Splits, made_now)
    fold_view(splits, fold) -> Splits
    load_splits(cache_dir, volumes, *, splits_file, fractions, seed, ..., folds=1, fold=None) -> Splits
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ich3d.data.splits import (
    DEFAULT_FRACTIONS,
    SPLITS_FILE,
    Splits,
    fold_keys,
    load_or_create_splits,
    patient_labels,
    read_splits_file,
    subtype_strata,
    write_splits,
)
from ich3d.errors import UserError

__all__ = ["make_folds", "check_folds", "with_folds", "ensure_folds", "fold_view", "fold_keys", "load_splits"]


def make_folds(
    volumes: pd.DataFrame, splits: Splits, k: int, *, seed: int = 0, subtypes: bool = False
) -> list[list[str]]:
    """K stratified patient folds over the ``train`` and ``val`` patients of ``splits``.

    Args:
        volumes: the cache's volume table (``patient_id``, ``any`` and the subtypes).
        splits: the single split whose test patients stay out of every fold.
        k: the number of folds (>= 2).
        seed: the split seed; the folds use ``default_rng([seed, k])``.
        subtypes: stratify positive patients by their rarest subtype too.

    Returns:
        K sorted lists of patient ids.

    Raises:
        UserError: fewer non-test patients than folds.
    """
    pool = sorted(set(splits.patients["train"]) | set(splits.patients["val"]))
    if k < 2 or len(pool) < k:
        raise UserError(
            f"data.folds={k}: {len(pool)} non-test patient(s) cannot make {k} folds "
            "(folds need >= 2 and at least one patient each); lower data.folds"
        )
    labels = patient_labels(volumes)
    strata = (subtype_strata(volumes, labels) if subtypes else labels).loc[pool]
    rng = np.random.default_rng([int(seed), int(k)])
    folds: list[list[str]] = [[] for _ in range(k)]
    turn = 0
    for cls in sorted(set(strata.tolist())):
        members = np.array(sorted(strata.index[strata.to_numpy() == cls]), dtype=object)
        for pid in members[rng.permutation(len(members))]:
            folds[turn % k].append(str(pid))
            turn += 1
    return [sorted(f) for f in folds]


def check_folds(folds: Sequence[Sequence[str]], splits: Splits, where: str) -> None:
    """Refuse folds that do not cover the ``train`` + ``val`` patients exactly once.

    Raises:
        UserError: a patient in two folds, a test patient in a fold, a non-test
            patient in none, or an empty fold.
    """
    pool = set(splits.patients["train"]) | set(splits.patients["val"])
    seen: dict[str, int] = {}
    for i, fold in enumerate(folds):
        if not fold:
            raise UserError(f"{where}: fold {i} is empty")
        for pid in fold:
            if pid in seen:
                raise UserError(f"{where}: a patient is in folds {seen[pid]} and {i}")
            if pid not in pool:
                raise UserError(f"{where}: fold {i} holds a patient of the test split (or unknown)")
            seen[pid] = i
    if len(seen) != len(pool):
        raise UserError(
            f"{where}: the folds leave {len(pool) - len(seen)} of the {len(pool)} train/val "
            "patients in no fold; every non-test patient must be in exactly one fold"
        )


def with_folds(splits: Splits, folds: Sequence[Sequence[str]], volumes: pd.DataFrame) -> Splits:
    """``splits`` with ``folds`` (patient ids, checked) and their volume keys added."""
    check_folds(folds, splits, str(splits.source or "splits"))
    patients = [sorted(map(str, f)) for f in folds]
    return dataclasses.replace(splits, folds=patients, fold_keys=fold_keys(volumes, patients))


def ensure_folds(
    splits: Splits, volumes: pd.DataFrame, k: int, *, seed: int = 0, subtypes: bool = False
) -> tuple[Splits, bool]:
    """``splits`` with K folds: its own when it has K, else new ones (see the module rules).

    Returns:
        ``(splits, made_now)``: ``made_now`` is True when the folds were made here
        (the caller writes them into the cache's ``splits.json``).

    Raises:
        UserError: the splits hold another number of folds.
    """
    if splits.folds is not None:
        if len(splits.folds) != k:
            raise UserError(
                f"{splits.source or 'the splits'} holds {len(splits.folds)} folds, not data.folds={k}: "
                f"use data.folds={len(splits.folds)} (every CV run on this cache shares its folds), "
                "or remove the file's \"folds\" entry to make new ones"
            )
        return splits, False
    return with_folds(splits, make_folds(volumes, splits, k, seed=seed, subtypes=subtypes), volumes), True


def fold_view(splits: Splits, fold: int) -> Splits:
    """The single split of fold ``fold``: validate on it, train on the other folds, same test.

    Raises:
        UserError: no folds, or ``fold`` out of range.
    """
    if splits.folds is None or splits.fold_keys is None:
        raise UserError("data.fold needs data.folds > 1 (the splits hold no folds)")
    k = len(splits.folds)
    if not 0 <= fold < k:
        raise UserError(f"data.fold={fold} is out of range: data.folds={k} gives folds 0 to {k - 1}")
    train = sorted(p for i, f in enumerate(splits.folds) if i != fold for p in f)
    train_keys = sorted(key for i, f in enumerate(splits.fold_keys) if i != fold for key in f)
    return dataclasses.replace(
        splits,
        patients={"train": train, "val": list(splits.folds[fold]), "test": list(splits.patients["test"])},
        keys={"train": train_keys, "val": list(splits.fold_keys[fold]), "test": list(splits.keys["test"])},
    )


def load_splits(
    cache_dir: str | Path,
    volumes: pd.DataFrame,
    *,
    splits_file: str | Path | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    overwrite: bool = False,
    subtypes: bool = False,
    write: bool = True,
    folds: int = 1,
    fold: int | None = None,
) -> Splits:
    """The splits a DataModule uses: a user's file or ``CACHE/splits.json``, with K folds.

    Args:
        cache_dir: the cache folder.
        volumes: its volume table.
        splits_file: a user's splits file, honoured as is (never written).
        fractions: (train, val, test) fractions of a new single split.
        seed: the split seed (also of new folds).
        overwrite: replace a ``splits.json`` made with another seed or fractions.
        subtypes: stratify new splits and folds by the rarest subtype too.
        write: write a new ``splits.json`` (or the folds added to it); False for ``setup``.
        folds: the number of folds (1: the single split only).
        fold: return fold ``fold``'s view (:func:`fold_view`) instead of the single split.

    Raises:
        UserError: see :func:`~ich3d.data.splits.load_or_create_splits`,
            :func:`~ich3d.data.splits.read_splits_file`, :func:`ensure_folds`, :func:`fold_view`.
    """
    if splits_file is not None:
        splits = read_splits_file(splits_file, volumes)
    else:
        splits = load_or_create_splits(
            cache_dir, volumes, fractions=fractions, seed=seed, overwrite=overwrite, write=write, subtypes=subtypes
        )
    if splits.folds is not None:
        check_folds(splits.folds, splits, str(splits.source or "splits"))
    if folds > 1:
        splits, made = ensure_folds(splits, volumes, folds, seed=seed, subtypes=subtypes)
        if made and write and splits_file is None:
            path = Path(cache_dir) / SPLITS_FILE
            write_splits(splits, path)  # the single split unchanged, the folds added
            splits = dataclasses.replace(splits, source=path)
    if fold is not None:
        if folds < 2:
            raise UserError(f"data.fold={fold} needs data.folds > 1 (data.folds is {folds})")
        splits = fold_view(splits, fold)
    return splits
