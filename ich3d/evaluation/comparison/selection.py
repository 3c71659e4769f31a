"""``ich3d select``: the best method, system or ensemble, chosen without looking at the test split.

Each input is an evaluated run (``ich3d evaluate``), an ensemble folder (``ich3d
ensemble``) or a cross-validation run (``ich3d evaluate`` of a ``data.folds`` run).
Its candidates are its methods, named ``<run>:<method>`` (runs labelled as ``ich3d
compare`` labels them), scored on:

* a cross-validation run: the out-of-fold predictions (``oof_predictions.csv``),
  every non-test volume once; its test score of a method is the fold ensemble
  (``<method>@ensemble`` of ``test_predictions.csv``);
* any other run: the validation predictions (``val_predictions.csv``); its test
  score is ``predictions.csv``'s column.

Every candidate is ranked on the same volumes (the selection tables' split hashes
must agree, as must the test tables'; otherwise one :class:`~ich3d.errors.UserError`)
by the declared criterion (:data:`CRITERIA`): ``auc`` (higher first) or
``log_loss`` (binary cross-entropy of probabilities, lower first; a candidate that
is not a probability is left out with its reason). Ties keep the input order. Only
then is the test split read, for the pick alone: its test AUC with the DeLong
interval, reported once. ``selection.json`` holds the criterion, the ranking and
that one test figure; nothing of the test split enters the choice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from ich3d.errors import UserError
from ich3d.evaluation.comparison.compare import (
    load_evaluated_run,
    read_run_csv,
    run_labels,
    split_hash,
)
from ich3d.stats.delong import delong_roc
from ich3d.stats.formatting import jsonable

__all__ = ["CRITERIA", "Candidates", "load_candidates", "select_best"]

log = logging.getLogger(__name__)

#: criterion -> (function of labels and scores, higher is better)
CRITERIA: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]] = {
    "auc": (lambda y, s: float(delong_roc(y, s).aucs[0]), True),
    "log_loss": (lambda y, s: float(log_loss(y, np.clip(s, 1e-7, 1 - 1e-7), labels=[0, 1])), False),
}

_SKIP = ("key", "label", "fold")


@dataclass
class Candidates:
    """One input's candidates: the table they are chosen on and their test table.

    Attributes:
        experiment: the experiment (for the run's label).
        run_id: the run id.
        on: ``out-of-fold`` or ``validation``.
        select: ``key, label, <method>...`` the choice is made on.
        test: ``key, label, <method>...`` of the test split (the same method names).
    """

    experiment: str
    run_id: str
    on: str
    select: pd.DataFrame
    test: pd.DataFrame

    @property
    def methods(self) -> list[str]:
        return [
            str(c) for c in self.select.columns
            if c not in _SKIP and c in self.test.columns and pd.api.types.is_numeric_dtype(self.select[c])
        ]


def _cv_folder(path: Path) -> Path | None:
    for folder in (path, path / "evaluation"):
        if (folder / "oof_predictions.csv").is_file() and (folder / "test_predictions.csv").is_file():
            return folder
    return None


def load_candidates(path: str | Path) -> Candidates:
    """The candidates of one input (see the module docstring).

    Raises:
        UserError: no evaluation, or an ordinary run without ``val_predictions.csv``.
    """
    path = Path(path)
    cv = _cv_folder(path)
    if cv is not None:
        run_dir = cv.parent if cv.name == "evaluation" else cv
        oof = read_run_csv(cv / "oof_predictions.csv", "out-of-fold predictions")
        raw = read_run_csv(cv / "test_predictions.csv", "test predictions")
        ens = {c: c.removesuffix("@ensemble") for c in raw.columns if str(c).endswith("@ensemble")}
        test = raw[["key", "label", *ens]].rename(columns=ens)
        return Candidates(run_dir.parent.name or "run", run_dir.name, "out-of-fold", oof, test)
    run = load_evaluated_run(path)
    if run.val is None:
        raise UserError(
            f"{run.eval_dir} has no val_predictions.csv: nothing to select on without the test split; "
            f"run `ich3d evaluate` on it again"
        )
    return Candidates(run.experiment, run.run_id, "validation", run.val, run.test)


def _check_same(tables: Sequence[pd.DataFrame], labels: Sequence[str], what: str) -> str:
    hashes = [split_hash(t) for t in tables]
    for lab, h, t in zip(labels, hashes, tables, strict=True):
        if h != hashes[0]:
            raise UserError(
                f"cannot rank {lab} beside {labels[0]}: their {what} volumes or labels differ (split hash {h} vs "
                f"{hashes[0]}, {len(t)} vs {len(tables[0])} volumes); select among runs of one cache and split, "
                "all cross-validation runs or none"
            )
    return hashes[0]


def _rank(cands: Sequence[Candidates], labels: Sequence[str], criterion: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every candidate's value on its selection table, best first, and those left out (why)."""
    fn, higher = CRITERIA[criterion]
    rows, skipped = [], {}
    for c, lab in zip(cands, labels, strict=True):
        y = c.select["label"].to_numpy(dtype=np.int64)
        for m in c.methods:
            s = c.select[m].to_numpy(dtype=np.float64)
            name = f"{lab}:{m}"
            if np.isnan(s).any():
                skipped[name] = "missing scores"
            elif criterion == "log_loss" and not np.all((s >= 0) & (s <= 1)):
                skipped[name] = "not a probability (no log loss)"
            else:
                rows.append({"candidate": name, "run": lab, "method": m, "value": fn(y, s)})
    if not rows:
        raise UserError(f"no candidate can be ranked by {criterion} ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    rows.sort(key=lambda r: -r["value"] if higher else r["value"])  # stable: ties keep the input order
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows, skipped


def select_best(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    criterion: str = "auc",
    names: Sequence[str] | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Rank every candidate on out-of-fold / validation predictions, pick the best, test it once.

    Args:
        run_dirs: evaluated runs, ensemble folders or cross-validation runs.
        out_dir: where ``selection.json`` goes.
        criterion: a key of :data:`CRITERIA`.
        names: one label per input instead of the automatic ones.
        level: confidence level of the pick's test AUC interval.

    Returns:
        The content of ``selection.json``: ``criterion``, ``on``, ``n_volumes``,
        ``split_hash``, ``ranking`` (candidate, run, method, value, rank), ``skipped``,
        ``pick`` and ``test`` (the pick's test AUC with its interval, ``n_volumes``).

    Raises:
        UserError: an unknown criterion, inputs on other volumes, or nothing to rank.
    """
    if criterion not in CRITERIA:
        raise UserError(f"unknown --criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    cands = [load_candidates(p) for p in run_dirs]
    labels = run_labels(cands, names)  # type: ignore[arg-type]  # experiment / run_id as EvaluatedRun
    ons = sorted({c.on for c in cands})
    hash_ = _check_same([c.select for c in cands], labels, " and ".join(ons))
    _check_same([c.test for c in cands], labels, "test")
    ranking, skipped = _rank(cands, labels, criterion)
    pick = ranking[0]
    test = cands[labels.index(pick["run"])].test  # the test split, read for the pick only
    result = delong_roc(test["label"].to_numpy(dtype=np.int64), test[pick["method"]].to_numpy(dtype=np.float64),
                        names=[pick["candidate"]], level=level)
    m = result.models[0]
    summary = {
        "criterion": criterion, "higher_is_better": CRITERIA[criterion][1], "on": " and ".join(ons),
        "n_volumes": int(len(cands[0].select)), "split_hash": hash_, "ranking": ranking, "skipped": skipped,
        "pick": pick["candidate"],
        "test": {"auc": m.auc, "ci_lower": m.ci_lower, "ci_upper": m.ci_upper, "level": level,
                 "n_volumes": int(len(test))},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    log.info("wrote %s", out / "selection.json")
    return summary
