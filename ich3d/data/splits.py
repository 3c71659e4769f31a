"""Train / validation / test splits by patient, stratified, seeded, written once.

Rules:

- A patient belongs to exactly one split; all its volumes follow it (splitting by
  image or study leaks, docs/method.md section 3). A file without a PatientID has
  ``patient_id = "study:<StudyInstanceUID>"`` (the ingest's rule,
  :data:`~ich3d.data.schema.PATIENT_FROM_STUDY_PREFIX`): its study stands in for
  the patient, so the study's volumes stay together.
- Stratified by the patient's label: a patient is positive when any of its
  volumes is positive on ``any``. Each class is shuffled with the seed and cut
  by the fractions (largest-remainder rounding).
- With subtype targets (``data.targets`` naming a subtype, :mod:`ich3d.data.targets`)
  a new split is stratified by subtype too: positive patients are grouped by the
  rarest subtype they have (over the cache's patients; ``any`` without a subtype
  label is a group of its own) and each group is cut by the fractions, so every
  split holds each subtype when there are enough patients. ``splits.json`` then
  records ``"stratified_by": "subtypes"``. An existing ``splits.json`` is reused
  whatever it was stratified on, so binary and six-label runs on one cache share
  their test set.
- Small datasets: when a class has at least as many patients as there are
  splits with a non-zero fraction, every such split gets at least one patient
  of that class (taken from the largest split). So with >= 3 positive and >= 3
  negative patients, train, val and test each hold both classes.
- Written once to ``CACHE/splits.json`` and reused when it exists with the same
  seed and fractions; other values raise :class:`UserError` unless
  ``overwrite=True``.
- A user's splits file (JSON with ``train``, ``val``, ``test`` lists of patient
  ids, or of :func:`~ich3d.data.schema.patient_key` hashes) is honoured as is:
  every patient of the cache must be in exactly one split and no unknown
  patient may appear.

``splits.json``: ``{"seed", "fractions", "train": [patient ids], "val": [...],
"test": [...], "keys": {"train": [volume keys], "val": [...], "test": [...]}}``.
With cross-validation folds (``data.folds > 1``, :mod:`ich3d.data.folds`) it also
holds ``"folds"`` (K lists of patient ids over ``train`` + ``val``) and
``keys.folds``; without them the file is exactly as above.
Patient ids stay on the local machine; never log them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.data.cache import atomic_write_text
from ich3d.data.schema import SUBTYPES, UNLABELED, patient_key
from ich3d.errors import UserError

__all__ = [
    "SPLIT_NAMES",
    "DEFAULT_FRACTIONS",
    "SPLITS_FILE",
    "Splits",
    "validate_fractions",
    "patient_labels",
    "subtype_strata",
    "make_splits",
    "fold_keys",
    "read_splits_file",
    "write_splits",
    "load_or_create_splits",
]

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
SPLITS_FILE = "splits.json"


@dataclass
class Splits:
    """Patients and volume keys of each split.

    Attributes:
        patients: split name -> sorted patient ids.
        keys: split name -> sorted volume keys.
        seed: seed used to make the splits (None for a user's file).
        fractions: fractions used (None for a user's file).
        source: the file they were read from, if any.
        stratified_by: ``"subtypes"`` when stratified by the rarest subtype too.
        folds: cross-validation folds (K lists of patient ids over train + val), if any.
        fold_keys: the volume keys of each fold.
    """

    patients: dict[str, list[str]]
    keys: dict[str, list[str]]
    seed: int | None = None
    fractions: tuple[float, float, float] | None = None
    source: Path | None = field(default=None, compare=False)
    stratified_by: str | None = None
    folds: list[list[str]] | None = None
    fold_keys: list[list[str]] | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``splits.json`` content."""
        out: dict[str, Any] = {
            "seed": self.seed,
            "fractions": list(self.fractions) if self.fractions is not None else None,
        }
        if self.stratified_by is not None:
            out["stratified_by"] = self.stratified_by
        out.update({s: list(self.patients[s]) for s in SPLIT_NAMES})
        keys: dict[str, Any] = {s: list(self.keys[s]) for s in SPLIT_NAMES}
        if self.folds is not None:
            out["folds"] = [list(f) for f in self.folds]
            keys["folds"] = [list(f) for f in self.fold_keys or []]
        out["keys"] = keys
        return out


def validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Check three non-negative fractions summing to 1 (within 1e-6) and return them.

    Raises:
        UserError: wrong count, negative value, no train fraction, or a sum other than 1.
    """
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise UserError(
            f"split fractions {fractions!r} must be three numbers (train, val, test)"
        ) from None
    if len(fr) != 3:
        raise UserError(f"split fractions {fractions!r}: expected three numbers (train, val, test)")
    if any(not math.isfinite(f) or f < 0 for f in fr):
        raise UserError(f"split fractions {fractions!r} must be non-negative")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise UserError(f"split fractions {fractions!r} sum to {sum(fr):g}; they must sum to 1")
    if fr[0] <= 0:
        raise UserError(f"split fractions {fractions!r}: the train fraction must be positive")
    return fr  # type: ignore[return-value]


def patient_labels(volumes: pd.DataFrame, label: str = "any") -> pd.Series:
    """Patient id -> 0/1: positive when any of the patient's volumes is positive on ``label``.

    Raises:
        UserError: the table is unlabeled (``-1``) for ``label``.
    """
    if (volumes[label] == UNLABELED).any():
        raise UserError(
            f"the cache has volumes without a {label!r} label; stratified splits need a labeled ingest"
        )
    return (volumes.groupby("patient_id")[label].max() > 0).astype(int).sort_index()


def _allocate(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``n`` items by fractions: largest remainder, then >= 1 per non-zero split if possible."""
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r + 1e-9)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    nonzero = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(nonzero):
        for i in nonzero:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _keys_by_split(volumes: pd.DataFrame, patients: dict[str, list[str]]) -> dict[str, list[str]]:
    where = {p: s for s in SPLIT_NAMES for p in patients[s]}
    split_of = volumes["patient_id"].map(where)
    return {s: sorted(volumes.loc[split_of == s, "key"].tolist()) for s in SPLIT_NAMES}


def subtype_strata(volumes: pd.DataFrame, labels: pd.Series) -> pd.Series:
    """Patient id -> stratum: 0 negative, 1 + index of its rarest subtype, 6 ``any`` only."""
    bleeds = [t for t in SUBTYPES if t != "any" and t in volumes.columns]
    per_patient = volumes.groupby("patient_id")[bleeds].max().reindex(labels.index) > 0
    counts = per_patient.sum(axis=0)
    rarest_first = sorted(bleeds, key=lambda t: (int(counts[t]), SUBTYPES.index(t)))
    strata = pd.Series(0, index=labels.index)
    for pid in labels.index[labels.to_numpy() == 1]:
        have = [t for t in rarest_first if per_patient.loc[pid, t]]
        strata[pid] = 1 + SUBTYPES.index(have[0]) if have else len(SUBTYPES)
    return strata


def make_splits(
    volumes: pd.DataFrame,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    subtypes: bool = False,
) -> Splits:
    """Make stratified patient splits from the volume table.

    Args:
        volumes: ``volumes.csv`` as a DataFrame (needs ``patient_id``, ``key``, ``any``).
        fractions: (train, val, test) fractions of the patients, default 0.7/0.1/0.2.
        seed: RNG seed (numpy ``default_rng``); same seed and table, same splits.
        subtypes: stratify the positive patients by their rarest subtype too (module
            docstring); default False (by ``any`` only, the method).

    Returns:
        The :class:`Splits`.
    """
    fr = validate_fractions(fractions)
    labels = patient_labels(volumes)
    strata = subtype_strata(volumes, labels) if subtypes else labels
    rng = np.random.default_rng(seed)
    patients: dict[str, list[str]] = {s: [] for s in SPLIT_NAMES}
    for cls in sorted(set(strata.tolist()) | {0, 1}) if subtypes else (0, 1):
        members = np.array(sorted(strata.index[strata.to_numpy() == cls]), dtype=object)
        members = members[rng.permutation(len(members))]
        start = 0
        for s, c in zip(SPLIT_NAMES, _allocate(len(members), fr), strict=True):
            patients[s].extend(members[start : start + c].tolist())
            start += c
    patients = {s: sorted(p) for s, p in patients.items()}
    return Splits(
        patients,
        _keys_by_split(volumes, patients),
        seed=int(seed),
        fractions=fr,
        stratified_by="subtypes" if subtypes else None,
    )


def read_splits_file(path: str | Path, volumes: pd.DataFrame) -> Splits:
    """Read and validate a splits JSON against the cache's volume table.

    Entries may be patient ids or their :func:`~ich3d.data.schema.patient_key`
    hashes. The ``keys`` in the file, if any, are ignored: volume keys are
    recomputed from the patients.

    Raises:
        UserError: unreadable file, missing split lists, a patient in two splits,
            patients unknown to the cache, or cache patients missing from the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read splits file {path}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"splits file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(s), list) for s in SPLIT_NAMES):
        raise UserError(
            f"splits file {path} must be a JSON object with lists 'train', 'val', 'test'"
        )
    known = set(volumes["patient_id"].unique())
    hashed = {patient_key(p): p for p in known}
    patients: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    unknown: list[str] = []
    for s in SPLIT_NAMES:
        resolved = []
        for entry in data[s]:
            entry = str(entry)
            pid = entry if entry in known else hashed.get(entry)
            if pid is None:
                unknown.append(entry)
                continue
            if pid in seen:
                raise UserError(
                    f"splits file {path}: a patient is in both {seen[pid]!r} and {s!r} "
                    f"(patient key {patient_key(pid)})"
                )
            seen[pid] = s
            resolved.append(pid)
        patients[s] = sorted(resolved)
    if unknown:
        raise UserError(
            f"splits file {path} names {len(unknown)} patient(s) that are not in the cache "
            f"(first: {unknown[0]!r})"
        )
    missing = known - set(seen)
    if missing:
        raise UserError(
            f"splits file {path} leaves {len(missing)} of the cache's {len(known)} patients "
            "in no split; every patient must be in exactly one of train, val, test"
        )
    seed = data.get("seed")
    fr = data.get("fractions")
    by = data.get("stratified_by")
    folds = _read_folds(path, data.get("folds"), known, hashed)
    return Splits(
        patients,
        _keys_by_split(volumes, patients),
        seed=int(seed) if isinstance(seed, int) else None,
        fractions=tuple(fr) if isinstance(fr, list) and len(fr) == 3 else None,  # type: ignore[arg-type]
        source=path,
        stratified_by=by if isinstance(by, str) else None,
        folds=folds,
        fold_keys=None if folds is None else fold_keys(volumes, folds),
    )


def fold_keys(volumes: pd.DataFrame, folds: Sequence[Sequence[str]]) -> list[list[str]]:
    """The sorted volume keys of each fold's patients."""
    return [sorted(volumes.loc[volumes["patient_id"].isin(set(f)), "key"].tolist()) for f in folds]


def _read_folds(path: Path, raw: Any, known: set[str], hashed: dict[str, str]) -> list[list[str]] | None:
    """The ``"folds"`` of a splits file as patient ids (None when absent); coverage is checked
    by :func:`ich3d.data.folds.check_folds`."""
    if raw is None:
        return None
    if not isinstance(raw, list) or any(not isinstance(f, list) for f in raw):
        raise UserError(f"splits file {path}: 'folds' must be a list of lists of patient ids")
    folds = []
    for i, fold in enumerate(raw):
        resolved = []
        for entry in map(str, fold):
            pid = entry if entry in known else hashed.get(entry)
            if pid is None:
                raise UserError(f"splits file {path}: fold {i} names a patient that is not in the cache")
            resolved.append(pid)
        folds.append(sorted(resolved))
    return folds


def write_splits(splits: Splits, path: str | Path) -> None:
    """Write ``splits.json`` atomically."""
    atomic_write_text(path, json.dumps(splits.to_json(), indent=1) + "\n")


def load_or_create_splits(
    cache_dir: str | Path,
    volumes: pd.DataFrame,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    overwrite: bool = False,
    write: bool = True,
    subtypes: bool = False,
) -> Splits:
    """Reuse ``CACHE/splits.json`` or make and write it.

    Args:
        cache_dir: the cache folder.
        volumes: its volume table.
        fractions: (train, val, test) fractions, default 0.7/0.1/0.2.
        seed: split seed (default 0).
        overwrite: replace an existing file made with another seed/fractions.
        write: write a new file (False: return the splits only; for ``setup``).
        subtypes: a new split is stratified by subtype too (:func:`make_splits`); an
            existing file is reused as it is.

    Raises:
        UserError: the existing file was made with other parameters (and not
            ``overwrite``), or it no longer matches the cache's patients.
    """
    fr = validate_fractions(fractions)
    path = Path(cache_dir) / SPLITS_FILE
    if path.is_file() and not overwrite:
        existing = read_splits_file(path, volumes)
        same_fr = existing.fractions is not None and np.allclose(existing.fractions, fr, atol=1e-9)
        if existing.seed != int(seed) or not same_fr:
            raise UserError(
                f"{path} was made with seed {existing.seed} and fractions {existing.fractions}, "
                f"not seed {seed} and fractions {fr}: the split belongs to the cache, and every "
                "config on this cache shares it; use the cache's values (data.split_seed="
                f"{existing.seed} data.split_fractions=[{','.join(f'{f:g}' for f in existing.fractions or ())}]), give "
                "another split with data.splits_file=FILE, or delete the file to split anew "
                "(new splits change every result)"
            )
        existing.fractions = fr
        return existing
    splits = make_splits(volumes, fractions=fr, seed=seed, subtypes=subtypes)
    if write:
        write_splits(splits, path)
        splits.source = path
    return splits
