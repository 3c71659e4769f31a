"""Read a predictions CSV, compute DeLong statistics and render them as Markdown.

The CSV format is the one ``ich3d evaluate`` writes (``predictions.csv``) and
``ich3d roc`` reads: one row per case, a 0/1 label column and one numeric score
column per method (higher = more likely positive). The score columns are declared
(``score_cols``: ``ich3d roc --scores``, or the writer's own list, such as
``predict.json``'s ``score_columns``); without a declaration they are the numeric
columns other than the label and the known non-score columns
(:data:`NON_SCORE_COLUMNS`: ``n_slices``, ``slice_index``, ``split`` ...).
Non-numeric columns (such as the hashed volume ``key``) are ignored.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ich3d.errors import UserError
from ich3d.stats.delong import DeLongResult, delong_roc
from ich3d.stats.multiplicity import holm_adjust

__all__ = [
    "Predictions",
    "read_predictions",
    "validate_predictions",
    "roc_table",
    "format_p",
    "render_markdown",
    "slice_level_auc",
    "MULTIPLICITY_NOTE",
    "NON_SCORE_COLUMNS",
]

log = logging.getLogger(__name__)

#: Columns that the project's tables carry beside the scores and that are never scores.
NON_SCORE_COLUMNS: frozenset[str] = frozenset(
    {"key", "label", "split", "n_slices", "slice_index", "series_uid", "study_uid", "patient_id", "image_id"}
)

#: The sentence under every table of paired tests (``{n}``: the number of tests).
MULTIPLICITY_NOTE = (
    "{n} paired tests on the same cases: the raw p-values are per comparison; "
    "p (Holm) is Holm-Bonferroni adjusted over the {n}, and only it keeps the chance of any "
    "false difference at alpha across the table."
)


@dataclass(frozen=True)
class Predictions:
    """Labels and score columns of a predictions table.

    Attributes:
        labels: 0/1 labels, shape ``(n,)``, int64.
        scores: scores, shape ``(n, k)``, float64.
        names: score column names, in file order.
        source: where the table came from (for messages).
    """

    labels: np.ndarray
    scores: np.ndarray
    names: list[str]
    source: str = "predictions"


def validate_predictions(
    labels: np.ndarray, scores: np.ndarray, names: Sequence[str], source: str = "predictions"
) -> Predictions:
    """Check labels and scores and return them as a :class:`Predictions`.

    Args:
        labels: label per case (must be 0 or 1, no missing value).
        scores: score matrix ``(n, k)`` (no NaN).
        names: one name per score column.
        source: name of the table for error messages.

    Raises:
        UserError: labels other than 0/1, NaN scores, no score column, or a
            single class; the message names the column and the first bad row
            (1-based data row, header excluded).
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.shape[1] == 0:
        raise UserError(f"{source}: no numeric score column besides the label column")
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        values = sorted({str(v) for v in np.asarray(labels)[bad]})[:5]
        raise UserError(
            f"{source}: labels must be 0 or 1, found {int(bad.sum())} other value(s) "
            f"({', '.join(values)}), first at data row {row + 1}"
        )
    for c, name in enumerate(names):
        nan = np.isnan(s[:, c])
        if nan.any():
            row = int(np.nonzero(nan)[0][0])
            raise UserError(
                f"{source}: score column {name!r} has {int(nan.sum())} missing/NaN value(s), "
                f"first at data row {row + 1}"
            )
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        only = "positive (1)" if n_neg == 0 else "negative (0)"
        raise UserError(f"{source}: all {len(y)} labels are {only}; a ROC needs both classes")
    return Predictions(y.astype(np.int64), s, [str(n) for n in names], source)


def read_predictions(
    path: str | Path, label_col: str = "label", score_cols: Sequence[str] | None = None
) -> Predictions:
    """Read and validate a predictions CSV.

    Args:
        path: CSV file with a header row.
        label_col: name of the 0/1 label column; default ``"label"``.
        score_cols: the score columns, in this order; default every numeric column
            except ``label_col`` and :data:`NON_SCORE_COLUMNS`, in file order.

    Returns:
        The validated :class:`Predictions`.

    Raises:
        UserError: unreadable file, no label column, a declared score column missing
            or not numeric, no score column, labels other than 0/1, NaN scores, or a
            single class.
    """
    import pandas as pd

    path = Path(path)
    source = path.name
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if label_col not in df.columns:
        cols = ", ".join(map(str, df.columns[:10]))
        raise UserError(f"{source}: no label column {label_col!r} (columns: {cols}); use --label-col")
    if score_cols is not None:
        absent = [c for c in score_cols if c not in df.columns or c == label_col]
        if absent:
            cols = ", ".join(map(str, df.columns[:10]))
            raise UserError(f"{source}: no score column {absent[0]!r} (columns: {cols}); see --scores")
    names: list[str] = []
    ignored: list[str] = []
    for c in score_cols if score_cols is not None else df.columns:
        if c == label_col or (score_cols is None and str(c) in NON_SCORE_COLUMNS):
            continue
        col = df[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            names.append(str(c))
            continue
        # A score column with a stray text cell is read as text: refuse it
        # rather than silently dropping a method from the comparison.
        present = col.dropna()
        numeric = pd.to_numeric(present, errors="coerce")
        if len(present) and numeric.notna().mean() >= 0.5:
            row = int(np.nonzero((pd.to_numeric(col, errors="coerce").isna() & col.notna()).to_numpy())[0][0])
            raise UserError(
                f"{source}: column {str(c)!r} is mostly numbers but has a non-numeric value "
                f"({col.iloc[row]!r}) at data row {row + 1}"
            )
        ignored.append(str(c))
    if ignored and score_cols is not None:
        raise UserError(f"{source}: score column {ignored[0]!r} is not numeric")
    if ignored:
        log.debug("%s: ignoring non-numeric column(s): %s", source, ", ".join(ignored))
    if not names:
        raise UserError(f"{source}: no numeric score column besides the label column {label_col!r}")
    labels = df[label_col]
    if pd.api.types.is_bool_dtype(labels):
        labels = labels.astype(np.int64)
    elif not pd.api.types.is_numeric_dtype(labels):
        # e.g. "yes"/"no" labels are read as text
        converted = pd.to_numeric(labels, errors="coerce")
        bad = ~converted.isin([0, 1])
        if bad.any():
            row = int(np.nonzero(bad.to_numpy())[0][0])
            shown = sorted({str(v) for v in labels[bad]})[:5]
            raise UserError(
                f"{source}: labels must be 0 or 1, found {int(bad.sum())} other value(s) "
                f"({', '.join(shown)}), first at data row {row + 1}"
            )
        labels = converted
    return validate_predictions(
        labels.to_numpy(dtype=np.float64), df[names].to_numpy(dtype=np.float64), names, source
    )


def roc_table(preds: Predictions, level: float = 0.95) -> DeLongResult:
    """DeLong statistics of every score column of ``preds`` (strict: raises on < 2 per class)."""
    return delong_roc(preds.labels, preds.scores, names=preds.names, level=level)


def format_p(p: float) -> str:
    """p-value for a table: 3 decimals, or 2 significant digits below 0.001."""
    if math.isnan(p):
        return "n/a"
    if p >= 0.001:
        return f"{p:.3f}"
    if p == 0.0:
        return "<1e-300"
    return f"{p:.1e}"


def _ci(lo: float, hi: float, digits: int = 3) -> str:
    return f"{lo:.{digits}f} - {hi:.{digits}f}"


def render_markdown(result: DeLongResult, digits: int = 3) -> str:
    """Markdown tables: per-method AUC, CI and p vs the best method; then every pair.

    The first table keeps the input column order; the best method (highest
    AUC, the first on ties) shows ``best`` in the p column. The second table
    lists each unordered pair once, ``a`` before ``b`` in column order, with
    ``AUC_a - AUC_b``, its (unclipped) interval, z and the two-sided p.

    Args:
        result: DeLong statistics.
        digits: decimals of AUCs and intervals; default 3.
    """
    pct = f"{result.level * 100:g}%"
    best = result.names[result.best]
    lines = [
        f"ROC AUC with {pct} DeLong confidence intervals "
        f"({result.n_pos} positive, {result.n_neg} negative cases)",
        "",
        f"| method | AUC | {pct} CI | p vs best ({best}) |",
        "| --- | --- | --- | --- |",
    ]
    for m in result.models:
        p = "best" if m.name == best else format_p(result.pair(m.name, best).p)
        lines.append(f"| {m.name} | {m.auc:.{digits}f} | {_ci(m.ci_lower, m.ci_upper, digits)} | {p} |")
    if result.pairs:
        holm = holm_adjust([t.p for t in result.pairs])
        lines += [
            "",
            "Paired DeLong tests",
            "",
            f"| a | b | AUC a - b | {pct} CI of difference | z | p | p (Holm) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for t, q in zip(result.pairs, holm, strict=True):
            lines.append(
                f"| {t.a} | {t.b} | {t.diff:+.{digits}f} | "
                f"{t.diff_ci_lower:+.{digits}f} to {t.diff_ci_upper:+.{digits}f} | "
                f"{t.z:.2f} | {format_p(t.p)} | {format_p(float(q))} |"
            )
        lines += ["", MULTIPLICITY_NOTE.format(n=len(result.pairs))]
    return "\n".join(lines) + "\n"


def slice_level_auc(labels: ArrayLike, probs: ArrayLike, level: float = 0.95) -> dict[str, Any]:
    """One score's AUC with its DeLong interval, non-strict (the slice-level tables).

    Args:
        labels: 0/1 labels (slices).
        probs: scores.
        level: confidence level; default 0.95.

    Returns:
        ``{"n_slices", "n_pos", "n_neg", "auc", "ci_lower", "ci_upper", "var", "level"}``;
        AUC and interval are NaN (with a warning) when a class has fewer than 2 cases.
    """
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = delong_roc(y, p, names=["slice"], level=level, strict=False)
    m = res.models[0]
    if res.n_pos < 2 or res.n_neg < 2:
        log.warning("slice-level AUC: %d positive and %d negative slices; not enough for DeLong", res.n_pos, res.n_neg)
    return {
        "n_slices": int(y.size),
        "n_pos": int(res.n_pos),
        "n_neg": int(res.n_neg),
        "auc": m.auc,
        "ci_lower": m.ci_lower,
        "ci_upper": m.ci_upper,
        "var": m.var,
        "level": float(level),
    }
