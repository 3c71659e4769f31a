"""``compare.md``: the Markdown of :func:`~ich3d.evaluation.comparison.compare.compare_runs`'s summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ich3d.stats.formatting import fmt_num
from ich3d.stats.roc_table import MULTIPLICITY_NOTE, format_p

__all__ = ["render_compare"]


def _auc_ci(d: Mapping[str, Any]) -> tuple[str, str]:
    if d.get("auc") is None:
        return "n/a", "n/a"
    if d.get("ci_lower") is None:
        return f"{d['auc']:.3f}", "n/a"
    return f"{d['auc']:.3f}", f"{d['ci_lower']:.3f} - {d['ci_upper']:.3f}"


def _p(x: Any) -> str:
    return "n/a" if x is None else format_p(float(x))


def _diff(t: Mapping[str, Any]) -> str:
    if t.get("diff_ci_lower") is None:
        return f"{fmt_num(t.get('diff'))} (no CI)"
    return f"{t['diff']:+.3f} ({t['diff_ci_lower']:+.3f} to {t['diff_ci_upper']:+.3f})"


def _holm_row(t: Mapping[str, Any]) -> str:
    return (
        f"| {t['a']} | {t['b']} | {_diff(t)} | {fmt_num(t.get('z'), 2)} | {_p(t.get('p'))} | "
        f"{_p(t.get('p_holm'))} |"
    )


def render_compare(summary: Mapping[str, Any]) -> str:
    """``compare.md`` from the content of ``compare.json``."""
    pct = f"{summary['level'] * 100:g}%"
    best = summary["best"]
    lines = [
        "# ich3d compare",
        "",
        f"{len(summary['runs'])} runs on the same {summary['split']} split: {summary['n_volumes']} volumes "
        f"({summary['n_pos']} positive, {summary['n_neg']} negative; split hash `{summary['split_hash']}`). "
        f"AUCs with {pct} DeLong confidence intervals; p-values from paired DeLong tests "
        "(every column is scored on the same volumes).",
        "",
        "| run | experiment | run id | methods |",
        "| --- | --- | --- | --- |",
    ]
    for r in summary["runs"]:
        lines.append(f"| {r['label']} | {r['experiment']} | {r['run_id']} | {', '.join(r['methods'])} |")
    lines += [
        "",
        "## Volume level",
        "",
        f"| column | AUC | {pct} CI | p vs best ({best}) | sens / spec at target sensitivity |",
        "| --- | --- | --- | --- | --- |",
    ]
    for col, d in summary["columns"].items():
        auc, ci = _auc_ci(d)
        p = "best" if col == best else _p(d.get("p_vs_best"))
        op = d.get("at_target_sensitivity") or {}
        ops = f"{fmt_num(op.get('sensitivity'))} / {fmt_num(op.get('specificity'))}" if op else "n/a"
        lines.append(f"| {col} | {auc} | {ci} | {p} | {ops} |")
    lines.append("")
    lines.append("Operating points: each run's threshold for its target sensitivity, chosen on its validation split.")
    across = summary["across_runs"]
    if across:
        cols = summary["columns"]
        same = [t for t in across if cols[t["a"]]["method"] == cols[t["b"]]["method"]]
        lines += [
            "",
            "### Paired DeLong tests, same method across runs",
            "",
            f"| a | b | AUC a - b ({pct} CI) | z | p | p (Holm) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [_holm_row(t) for t in same]
        if not same:
            lines.append("| (no method is in two runs) | | | | | |")
        others = [t for t in across if t not in same]
        if others:
            lines += [
                "",
                "### Paired DeLong tests, every other pair of columns of two runs",
                "",
                f"| a | b | AUC a - b ({pct} CI) | z | p | p (Holm) |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            lines += [_holm_row(t) for t in others]
        lines += ["", MULTIPLICITY_NOTE.format(n=len(across))]
    lines += ["", "![ROC curves of every column](roc.png)", ""]
    sl = summary.get("slice")
    if sl:
        lines += [
            "## Slice level (stage-1 CNN, every labeled slice)",
            "",
            f"{sl['n_slices']} slices ({sl['n_pos']} positive, {sl['n_neg']} negative).",
            "",
            f"| column | AUC | {pct} CI |",
            "| --- | --- | --- |",
        ]
        for col, d in sl["columns"].items():
            auc, ci = _auc_ci(d)
            lines.append(f"| {col} | {auc} | {ci} |")
        if sl["pairs"]:
            lines += ["", f"| a | b | AUC a - b ({pct} CI) | z | p |", "| --- | --- | --- | --- | --- |"]
            for t in sl["pairs"]:
                lines.append(f"| {t['a']} | {t['b']} | {_diff(t)} | {fmt_num(t.get('z'), 2)} | {_p(t.get('p'))} |")
        lines.append("")
    if summary.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in summary["notes"]] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


