"""``ich3d ensemble``: chosen methods of several evaluated runs averaged on the same test volumes.

The members are the columns ``<run>:<method>`` of the runs' ``predictions.csv``
(what ``ich3d evaluate`` wrote; runs labelled as ``ich3d compare`` labels them), for
every run that has the method: systems, seeds or folds. All runs must have evaluated
the same volumes with the same labels (the split hash ``compare`` checks); otherwise
one :class:`~ich3d.errors.UserError`.

The rule is the fold ensemble's (:func:`ich3d.stats.ensembles.ensemble_scores`):
the mean probability when every member is a probability, else the mean of the
members' rank-normalised scores (a ranking: AUC, no operating points). The
validation predictions are ensembled the same way when every member has them on the
same validation volumes, and the operating points are chosen on them.

The output folder is an evaluation folder (:func:`~ich3d.evaluation.report.build.build_report`):
``predictions.csv`` (``key, label``, each member, ``ensemble``),
``val_predictions.csv``, ``metrics.json`` (``experiment: ensemble``, ``run_id``: the
folder's name, and ``ensemble``: members, rule, split hash and the paired DeLong test
of the ensemble against each member) and ``report.md``, so ``ich3d compare`` and
``ich3d select`` take it as a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ich3d.errors import UserError
from ich3d.evaluation.comparison.compare import (
    EvaluatedRun,
    check_same_volumes,
    load_evaluated_run,
    run_labels,
    split_hash,
)
from ich3d.evaluation.report.build import EvaluationReport, build_report
from ich3d.stats.ensembles import ensemble_scores
from ich3d.stats.formatting import jsonable

__all__ = ["ENSEMBLE", "ensemble_runs", "member_columns"]

log = logging.getLogger(__name__)

#: the ensemble's column in ``predictions.csv``
ENSEMBLE = "ensemble"


def member_columns(
    runs: Sequence[EvaluatedRun], labels: Sequence[str], methods: Sequence[str]
) -> list[tuple[str, int, str]]:
    """``(column, run index, method)`` of every member: each run's methods among ``methods``.

    Raises:
        UserError: a method no run has, or a run with none of the methods.
    """
    for m in methods:
        if not any(m in r.methods for r in runs):
            raise UserError(f"--methods {m}: no run has it (their methods: {', '.join(sorted({c for r in runs for c in r.methods}))})")
    out = []
    for i, (r, lab) in enumerate(zip(runs, labels, strict=True)):
        mine = [m for m in methods if m in r.methods]
        if not mine:
            raise UserError(f"{lab} has none of the methods {', '.join(methods)} (it has {', '.join(r.methods)})")
        out += [(f"{lab}:{m}", i, m) for m in mine]
    return out


def _table(runs: Sequence[EvaluatedRun], members: Sequence[tuple[str, int, str]], role: str) -> pd.DataFrame | None:
    """``key, label, <member>...`` of ``role`` (``test`` / ``val``) merged by key; None when a member lacks it."""
    frames = [r.test if role == "test" else r.val for r in runs]
    if any(f is None for f in frames):
        return None
    ref = frames[members[0][1]]
    table = ref[["key", "label"]].sort_values("key").reset_index(drop=True)
    for col, i, m in members:
        f = frames[i]
        if m not in f.columns or split_hash(f) != split_hash(ref):
            return None
        table = table.merge(f[["key", m]].rename(columns={m: col}), on="key", how="left", validate="one_to_one")
    return table


def _paired_tests(report: EvaluationReport, members: Sequence[str]) -> list[dict[str, Any]]:
    """The paired DeLong test of the ensemble against each member (``diff`` = ensemble - member)."""
    out = []
    d = report.delong
    auc = dict(zip(d.names, d.aucs.tolist(), strict=True))
    for m in members:
        t = d.pair(ENSEMBLE, m)  # oriented ensemble - member
        out.append({
            "member": m, "auc_member": auc[m], "auc_ensemble": auc[ENSEMBLE], "diff": auc[ENSEMBLE] - auc[m],
            "diff_ci_lower": t.diff_ci_lower, "diff_ci_upper": t.diff_ci_upper, "p": t.p,
        })
    return out


def _p(p: float | None) -> str:
    return "n/a" if p is None or p != p else f"{p:.3g}"


def _section(summary: dict[str, Any], level: float) -> str:
    lines = [
        "",
        "## Ensemble",
        "",
        f"{len(summary['members'])} members, rule: {summary['rule']} (split hash {summary['split_hash']}).",
        "",
        f"| member | AUC | ensemble - member [{level:.0%} CI] | p |",
        "| --- | --- | --- | --- |",
    ]
    for t in summary["tests"]:
        lines.append(
            f"| {t['member']} | {t['auc_member']:.3f} | {t['diff']:+.3f} "
            f"[{t['diff_ci_lower']:+.3f}, {t['diff_ci_upper']:+.3f}] | {_p(t['p'])} |"
        )
    return "\n".join(lines) + "\n"


def ensemble_runs(
    run_dirs: Sequence[str | Path],
    methods: Sequence[str],
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    level: float = 0.95,
    target_sensitivity: float = 0.98,
) -> EvaluationReport:
    """Average ``methods`` of the evaluated runs and write an evaluation folder (module docstring).

    Args:
        run_dirs: evaluated run directories (or their ``evaluation/`` folders, or ensembles).
        methods: the methods to average (every run's that has it).
        out_dir: the output folder (its name is the ensemble's run id).
        names: one label per run instead of the automatic ones (as ``compare --names``).
        level: confidence level.
        target_sensitivity: validation sensitivity of the first operating point.

    Raises:
        UserError: no method, a method no run has, fewer than two members, or runs
            evaluated on other volumes / labels (split hashes differ).
    """
    if not methods:
        raise UserError("ich3d ensemble needs --methods (e.g. --methods finetune)")
    runs = [load_evaluated_run(p) for p in run_dirs]
    labels = run_labels(runs, names)
    hash_ = check_same_volumes(runs, labels)
    members = member_columns(runs, labels, list(dict.fromkeys(methods)))
    if len(members) < 2:
        raise UserError(f"an ensemble needs two members or more; {members[0][0]} is the only one")
    cols = [c for c, _, _ in members]
    test = _table(runs, members, "test")
    if test is None:  # the split hashes agree, so only a member column can be missing
        raise UserError(f"the runs' predictions.csv lack a member column of {', '.join(cols)}")
    test[ENSEMBLE], rule = ensemble_scores(test[cols].to_numpy())
    val = _table(runs, members, "val")
    notes = []
    if val is not None and rule == "mean probability":
        val[ENSEMBLE], _ = ensemble_scores(val[cols].to_numpy())
    else:
        val = None
        notes.append("no validation predictions of every member on the same volumes (or a rank ensemble): "
                     "no operating points")
    out = Path(out_dir)
    descriptions = {c: (runs[i].metrics.get("descriptions") or {}).get(m, m) for c, i, m in members}
    descriptions[ENSEMBLE] = f"{rule} of {len(cols)} members"
    summary: dict[str, Any] = {"members": cols, "rule": rule, "split_hash": hash_, "runs": labels}
    report = build_report(
        test, out, val=val, methods=[*cols, ENSEMBLE], target_sensitivity=target_sensitivity, level=level,
        notes=notes, title=f"ich3d ensemble: {out.name}", split=runs[0].split, descriptions=descriptions,
        extra={"experiment": "ensemble", "run_id": out.name, "ensemble": summary},
    )
    summary["tests"] = _paired_tests(report, cols)
    report.metrics["ensemble"] = jsonable(summary)
    report.files["metrics"].write_text(json.dumps(report.metrics, indent=2) + "\n")
    report.markdown += _section(summary, level)
    report.files["report"].write_text(report.markdown)
    return report
