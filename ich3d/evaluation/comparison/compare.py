"""``ich3d compare``: every method of several evaluated runs in one report, paired by volume.

Each run is read from its evaluation folder (``RUN_DIR/evaluation/``, what ``ich3d
evaluate`` writes; a path to the folder itself works too):

* ``predictions.csv`` (``key, label, <method>...``, one row per test volume): the
  volume-level statistics are computed from it;
* ``val_predictions.csv``: its key set is compared too (a note when it differs;
  operating points were chosen on it);
* ``metrics.json``: the experiment, run id and evaluated split, and the operating
  point at the target sensitivity per method (reported as the run measured it);
* ``slice_predictions.csv`` (``key, slice_index, label, probability``), when the run
  had a stage-1 CNN: the slice-level statistics.

All runs must have evaluated the same volumes with the same labels: the set of
``(key, label)`` pairs is hashed (SHA-256) per run and a run whose hash differs is
refused with a :class:`~ich3d.errors.UserError` (one line, exit 2). Because the
volumes are the same, every score column of every run goes into one DeLong
computation (:func:`~ich3d.stats.delong.delong_roc`) on the table merged by
key: the AUC and interval of each column are those the run's own ``ich3d
evaluate`` reported, and any two columns, of one run or of two, have a paired test.
Slice level likewise: the stage-1 slice probabilities of the runs merged by
``(key, slice_index)`` (paired when every run scored the same labeled slices).

Columns are named ``<label>:<method>``, the run label being the shortest unique
one of ``<experiment>``, ``<run-id>`` and ``<experiment>/<run-id>`` (or given).

Outputs (``out_dir``): ``compare.md`` (tables), ``compare.json`` (see
:func:`compare_runs`), ``roc.png`` (every compared column in one figure) and, if the
runs have slice tables, ``slice_roc.png``. :func:`ich3d.evaluation.comparison.wandb.log_compare_to_wandb` sends the
tables and summary AUCs (no keys, no per-volume rows) to a W&B run of job type
``compare``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ich3d.errors import UserError
from ich3d.evaluation.comparison.render import render_compare
from ich3d.evaluation.report.plots import plot_roc_scores
from ich3d.stats.delong import DeLongResult, delong_roc
from ich3d.stats.formatting import jsonable
from ich3d.stats.multiplicity import holm_adjust

__all__ = [
    "EvaluatedRun",
    "ComparisonResult",
    "load_evaluated_run",
    "split_hash",
    "run_labels",
    "compare_runs",
    "render_compare",
    "check_same_volumes",
    "read_run_csv",
]

log = logging.getLogger(__name__)

_ID_COLUMNS = ("key", "label")


@dataclass
class EvaluatedRun:
    """One run's evaluation folder, read.

    Attributes:
        eval_dir: the evaluation folder.
        experiment: experiment name (``metrics.json``, else the run's parent folder).
        run_id: run id (``metrics.json``, else the run folder's name).
        split: evaluated split (``metrics.json``; ``test`` if absent).
        test: ``predictions.csv``: ``key`` (str), ``label`` (0/1) and score columns.
        methods: the score columns of ``test``, in file order.
        val: ``val_predictions.csv`` or None.
        slices: ``slice_predictions.csv`` or None.
        metrics: ``metrics.json`` (``{}`` if absent).
    """

    eval_dir: Path
    experiment: str
    run_id: str
    split: str
    test: pd.DataFrame
    methods: list[str]
    val: pd.DataFrame | None = None
    slices: pd.DataFrame | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComparisonResult:
    """What :func:`compare_runs` computed and wrote.

    Attributes:
        summary: the content of ``compare.json``.
        volume: DeLong statistics of every compared column on the test volumes.
        slice: DeLong statistics at slice level (None without slice tables).
        markdown: the content of ``compare.md``.
        files: name -> path of every file written.
    """

    summary: dict[str, Any]
    volume: DeLongResult
    slice: DeLongResult | None
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading


def _eval_folder(path: Path) -> Path:
    if (path / "predictions.csv").is_file():
        return path
    if (path / "evaluation" / "predictions.csv").is_file():
        return path / "evaluation"
    raise UserError(
        f"{path} has no evaluation (no predictions.csv in it or in {path / 'evaluation'}); "
        f"run `ich3d evaluate {path}` first"
    )


def read_run_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={"key": str})
    except Exception as exc:  # unreadable, empty or malformed
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    for c in _ID_COLUMNS:
        if c not in frame.columns:
            raise UserError(f"{what} {path} has no {c!r} column (columns: {', '.join(map(str, frame.columns))})")
    return frame


def load_evaluated_run(path: str | Path) -> EvaluatedRun:
    """Read the evaluation folder of a run (``RUN_DIR`` or ``RUN_DIR/evaluation``).

    Raises:
        UserError: no ``predictions.csv``, unreadable files, duplicate keys, labels
            other than 0/1 or NaN scores.
    """
    folder = _eval_folder(Path(path))
    run_dir = folder.parent if folder.name == "evaluation" else folder
    metrics: dict[str, Any] = {}
    if (folder / "metrics.json").is_file():
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {folder / 'metrics.json'}: {exc}") from None
    test = read_run_csv(folder / "predictions.csv", "predictions")
    if test["key"].duplicated().any():
        raise UserError(f"{folder / 'predictions.csv'} lists a volume more than once")
    if not test["label"].isin([0, 1]).all():
        raise UserError(f"{folder / 'predictions.csv'}: labels must be 0 or 1")
    test["label"] = test["label"].astype(np.int64)
    methods = [
        str(c)
        for c in test.columns
        if c not in _ID_COLUMNS and pd.api.types.is_numeric_dtype(test[c]) and not pd.api.types.is_bool_dtype(test[c])
    ]
    if not methods:
        raise UserError(f"{folder / 'predictions.csv'} has no score column besides key and label")
    if test[methods].isna().any().any():
        raise UserError(f"{folder / 'predictions.csv'} has missing scores")
    val = read_run_csv(folder / "val_predictions.csv", "validation predictions") if (folder / "val_predictions.csv").is_file() else None
    slices = None
    if (folder / "slice_predictions.csv").is_file():
        slices = read_run_csv(folder / "slice_predictions.csv", "slice predictions")
        for c in ("slice_index", "probability"):
            if c not in slices.columns:
                raise UserError(f"slice predictions {folder / 'slice_predictions.csv'} have no {c!r} column")
    return EvaluatedRun(
        eval_dir=folder,
        experiment=str(metrics.get("experiment") or run_dir.parent.name or "run"),
        run_id=str(metrics.get("run_id") or run_dir.name),
        split=str(metrics.get("split") or "test"),
        test=test,
        methods=methods,
        val=val,
        slices=slices,
        metrics=metrics,
    )


def split_hash(frame: pd.DataFrame) -> str:
    """SHA-256 (16 hex) of the sorted ``key,label`` pairs of a predictions table."""
    pairs = sorted(zip(frame["key"].astype(str), frame["label"].astype(np.int64), strict=True))
    digest = hashlib.sha256("\n".join(f"{k},{int(y)}" for k, y in pairs).encode())
    return digest.hexdigest()[:16]


def run_labels(runs: Sequence[EvaluatedRun], names: Sequence[str] | None = None) -> list[str]:
    """The shortest unique labels: ``experiment``, else ``run-id``, else ``experiment/run-id``.

    Raises:
        UserError: ``names`` of the wrong length, not unique, or holding ``:``.
    """
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(runs):
            raise UserError(f"--names gives {len(names)} label(s) for {len(runs)} run(s)")
        if len(set(names)) != len(names) or any(":" in n or not n for n in names):
            raise UserError("--names must be unique, non-empty and without ':'")
        return names
    for labels in (
        [r.experiment for r in runs],
        [r.run_id for r in runs],
        [f"{r.experiment}/{r.run_id}" for r in runs],
    ):
        if len(set(labels)) == len(labels):
            return labels
    # the same run given twice (or two copies): number them
    return [f"{r.experiment}/{r.run_id}#{i + 1}" for i, r in enumerate(runs)]


def check_same_volumes(runs: Sequence[EvaluatedRun], labels: Sequence[str]) -> str:
    hashes = [split_hash(r.test) for r in runs]
    for r, lab, h in zip(runs, labels, hashes, strict=True):
        if h != hashes[0]:
            ref = runs[0]
            a, b = set(ref.test["key"]), set(r.test["key"])
            if a == b:
                why = "the same volumes with different labels"
            else:
                why = f"{len(a - b)} volume(s) only in {labels[0]}, {len(b - a)} only in {lab}"
            raise UserError(
                f"cannot compare {lab} with {labels[0]}: their {r.split}/{ref.split} volumes differ "
                f"({why}; split hash {h} vs {hashes[0]}, {len(b)} vs {len(a)} volumes); "
                "compare runs evaluated on the same cache, split and evaluation.split"
            )
    return hashes[0]


# ----------------------------------------------------------------------------- statistics


def _merge(
    runs: Sequence[EvaluatedRun], labels: Sequence[str], methods: Sequence[str] | None
) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """The test tables merged by key: ``key, label, <label>:<method>...``, and (column, run, method)."""
    merged = runs[0].test[["key", "label"]].sort_values("key").reset_index(drop=True)
    columns: list[tuple[str, str, str]] = []
    for r, lab in zip(runs, labels, strict=True):
        use = [m for m in r.methods if methods is None or m in methods]
        part = r.test[["key", *use]].rename(columns={m: f"{lab}:{m}" for m in use})
        merged = merged.merge(part, on="key", how="left", validate="one_to_one")
        columns += [(f"{lab}:{m}", lab, m) for m in use]
    if not columns:
        raise UserError(f"none of the runs has the method(s) {', '.join(methods or [])}")
    return merged, columns


def _merge_slices(
    runs: Sequence[EvaluatedRun], labels: Sequence[str]
) -> tuple[pd.DataFrame | None, list[str], list[str]]:
    """Labeled slices of every run with a slice table, merged by ``(key, slice_index)``.

    Returns:
        ``(table with key, slice_index, label, <label>:slice..., column names, notes)``;
        the table is None when no run has slices or they are not the same slices.
    """
    notes: list[str] = []
    have = [(r, lab) for r, lab in zip(runs, labels, strict=True) if r.slices is not None]
    for r, lab in zip(runs, labels, strict=True):
        if r.slices is None:
            notes.append(f"{lab}: no slice_predictions.csv (no stage-1 CNN): no slice-level AUC")
    if not have:
        return None, [], notes
    tables = []
    for r, lab in have:
        s = r.slices
        s = s[s["label"].isin([0, 1])][["key", "slice_index", "label", "probability"]].copy()
        s["label"] = s["label"].astype(np.int64)
        tables.append((lab, s.rename(columns={"probability": f"{lab}:slice"})))
    ref_lab, merged = tables[0]
    merged = merged.sort_values(["key", "slice_index"]).reset_index(drop=True)
    ref_index = set(zip(merged["key"], merged["slice_index"], merged["label"], strict=True))
    for lab, s in tables[1:]:
        if set(zip(s["key"], s["slice_index"], s["label"], strict=True)) != ref_index:
            notes.append(
                f"slice level: {lab} scored other labeled slices than {ref_lab}; "
                "slice-level tests are not paired and not computed"
            )
            return None, [], notes
        merged = merged.merge(s.drop(columns="label"), on=["key", "slice_index"], how="left", validate="one_to_one")
    return merged, [f"{lab}:slice" for lab, _ in tables], notes


def _op_at_target(run: EvaluatedRun, method: str) -> dict[str, Any]:
    """Sensitivity / specificity at the run's target-sensitivity operating point, if recorded."""
    pm = (run.metrics.get("per_method") or {}).get(method) or {}
    op = (pm.get("operating_points") or {}).get("sensitivity") or {}
    out: dict[str, Any] = {}
    for what in ("sensitivity", "specificity", "accuracy"):
        value = (op.get(what) or {}).get("value")
        if value is not None:
            out[what] = float(value)
    if op.get("threshold") is not None:
        out["threshold"] = float(op["threshold"])
    return out


def _pair_dict(result: DeLongResult, a: str, b: str) -> dict[str, Any]:
    t = result.pair(a, b)
    return {"a": a, "b": b, "diff": t.diff, "diff_ci_lower": t.diff_ci_lower, "diff_ci_upper": t.diff_ci_upper, "z": t.z, "p": t.p}


def _column_entries(
    columns: Sequence[tuple[str, str, str]], vol: DeLongResult, by_run: Mapping[str, EvaluatedRun]
) -> dict[str, dict[str, Any]]:
    """``compare.json``'s ``columns``: each column's AUC, interval, p vs the best and its operating point."""
    best = vol.names[vol.best]
    per_col: dict[str, dict[str, Any]] = {}
    for (col, lab, method), m in zip(columns, vol.models, strict=True):
        entry: dict[str, Any] = {
            "run": lab,
            "method": method,
            "auc": m.auc,
            "ci_lower": m.ci_lower,
            "ci_upper": m.ci_upper,
            "var": m.var,
            "p_vs_best": None if col == best else vol.pair(col, best).p,
        }
        op = _op_at_target(by_run[lab], method)
        if op:
            entry["at_target_sensitivity"] = op
        per_col[col] = entry
    return per_col


def _slice_comparison(
    runs: Sequence[EvaluatedRun],
    labels: Sequence[str],
    level: float,
    out: Path,
    files: dict[str, Path],
    notes: list[str],
) -> tuple[DeLongResult | None, dict[str, Any] | None]:
    """The slice-level DeLong comparison of the runs' stage-1 CNNs (and ``slice_roc.png``), or None."""
    slices, slice_cols, slice_notes = _merge_slices(runs, labels)
    notes += slice_notes
    if slices is None:
        return None, None
    sy = slices["label"].to_numpy(dtype=np.int64)
    ss = slices[slice_cols].to_numpy(dtype=np.float64)
    res = delong_roc(sy, ss, names=slice_cols, level=level, strict=False)
    summary = {
        "n_slices": int(len(sy)),
        "n_pos": int(res.n_pos),
        "n_neg": int(res.n_neg),
        "columns": {m.name: {"auc": m.auc, "ci_lower": m.ci_lower, "ci_upper": m.ci_upper, "var": m.var} for m in res.models},
        "pairs": [_pair_dict(res, t.a, t.b) for t in res.pairs],
    }
    if res.n_pos >= 2 and res.n_neg >= 2:
        files["slice_roc"] = out / "slice_roc.png"
        plot_roc_scores(sy, ss, res, files["slice_roc"], title=f"slice-level ROC, {len(slice_cols)} runs ({len(sy)} slices)")
    return res, summary


def compare_runs(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path = "compare",
    *,
    names: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    level: float = 0.95,
) -> ComparisonResult:
    """Compare the evaluated runs ``run_dirs`` and write the report to ``out_dir``.

    Args:
        run_dirs: run directories (or their evaluation folders), at least one.
        out_dir: output folder (created); default ``./compare``.
        names: one label per run instead of the automatic ones.
        methods: only these methods of each run (e.g. ``["finetune", "svm"]``); default all.
        level: confidence level of every interval; default 0.95.

    Returns:
        The :class:`ComparisonResult`. ``compare.json`` holds ``level``, ``split``,
        ``split_hash``, ``n_volumes``, ``n_pos``, ``n_neg``, ``runs`` (label, experiment,
        run id, methods, validation hash), ``columns`` (name -> run, method, auc,
        ci_lower, ci_upper, var, p_vs_best, operating point at the run's target
        sensitivity), ``best``, ``across_runs`` (every paired test of two columns of
        different runs: diff, its interval, z, p and its Holm-adjusted p_holm), ``delong`` (all columns, the ``ich3d
        roc --json`` schema), ``slice`` (the same per run at slice level, or null) and
        ``notes``.

    Raises:
        UserError: a run without evaluation, runs evaluated on different volumes or
            labels, an unknown method, or fewer than 2 cases of a class.
    """
    if not run_dirs:
        raise UserError("compare needs at least one evaluated run directory")
    runs = [load_evaluated_run(p) for p in run_dirs]
    labels = run_labels(runs, names)
    if methods is not None:
        unknown = [m for m in methods if not any(m in r.methods for r in runs)]
        if unknown:
            known = sorted({m for r in runs for m in r.methods})
            raise UserError(f"no run has method {unknown[0]!r}; the runs have {', '.join(known)}")
    shash = check_same_volumes(runs, labels)
    notes: list[str] = []
    val_hashes = [split_hash(r.val) if r.val is not None else None for r in runs]
    if len({h for h in val_hashes if h is not None}) > 1:
        notes.append("the runs' validation volumes differ: their operating points were chosen on different cases")

    merged, columns = _merge(runs, labels, methods)
    names_v = [c for c, _, _ in columns]
    y = merged["label"].to_numpy(dtype=np.int64)
    scores = merged[names_v].to_numpy(dtype=np.float64)
    vol = delong_roc(y, scores, names=names_v, level=level)
    best = vol.names[vol.best]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["roc"] = out / "roc.png"
    plot_roc_scores(y, scores, vol, files["roc"], title=f"{runs[0].split} ROC, {len(runs)} runs ({len(y)} volumes)")

    per_col = _column_entries(columns, vol, dict(zip(labels, runs, strict=True)))
    across = [
        _pair_dict(vol, t.a, t.b) for t in vol.pairs if per_col[t.a]["run"] != per_col[t.b]["run"]
    ]
    for t, q in zip(across, holm_adjust([t["p"] for t in across]), strict=True):
        t["p_holm"] = float(q)  # one family: every test across runs
    slice_res, slice_summary = _slice_comparison(runs, labels, level, out, files, notes)

    summary: dict[str, Any] = {
        "level": float(level),
        "split": runs[0].split,
        "split_hash": shash,
        "n_volumes": int(len(y)),
        "n_pos": int(vol.n_pos),
        "n_neg": int(vol.n_neg),
        "runs": [
            {
                "label": lab,
                "experiment": r.experiment,
                "run_id": r.run_id,
                "methods": [m for m in r.methods if methods is None or m in methods],
                "val_hash": vh,
            }
            for r, lab, vh in zip(runs, labels, val_hashes, strict=True)
        ],
        "columns": per_col,
        "best": best,
        "across_runs": across,
        "delong": vol.to_dict(),
        "slice": slice_summary,
        "notes": notes,
    }
    summary = jsonable(summary)
    markdown = render_compare(summary)
    files["json"] = out / "compare.json"
    files["json"].write_text(json.dumps(summary, indent=2) + "\n")
    files["markdown"] = out / "compare.md"
    files["markdown"].write_text(markdown)
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return ComparisonResult(summary=summary, volume=vol, slice=slice_res, markdown=markdown, files=files)
