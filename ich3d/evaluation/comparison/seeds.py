"""Ranges over seeds: the same experiments trained with several seeds, evaluated on one test set.

A trained AUC moves between seeds (initialisation, the order of the training
draws, augmentation); one run's figure says little. :func:`seed_ranges` reads
several evaluated runs (``ich3d evaluate``), groups them by experiment, and
for every method gives the AUC of each seed, its minimum, median and maximum,
and the widest DeLong interval; for every paired test the evaluation made
(``metrics.json``'s ``delong.pairs``) the range of its p-values and how many
seeds found the difference at ``alpha``; and, from ``slice_level_systems``, the
same for the slice classifiers. It refuses runs of one experiment that share a
seed (the range would count one seed twice) and runs evaluated on other
volumes or labels (seeds vary the training, not the test set).

Writes ``seeds.md`` and ``seeds.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ich3d.errors import UserError
from ich3d.evaluation.comparison.compare import EvaluatedRun, load_evaluated_run, split_hash
from ich3d.stats.formatting import fmt_num

__all__ = ["SeedRanges", "seed_ranges", "render_seed_ranges"]

log = logging.getLogger(__name__)


@dataclass
class SeedRanges:
    """What :func:`seed_ranges` found.

    Attributes:
        summary: the content of ``seeds.json``.
        markdown: the content of ``seeds.md``.
        files: name -> path of every file written.
    """

    summary: dict[str, Any]
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)


def _run_seed(run: EvaluatedRun) -> int:
    """The seed the run trained with: its ``config.yaml``'s ``seed``."""
    run_dir = run.eval_dir.parent if run.eval_dir.name == "evaluation" else run.eval_dir
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} has no config.yaml: cannot tell which seed it trained with")
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {cfg_path}: {exc}") from None
    if "seed" not in cfg:
        raise UserError(f"{cfg_path} has no 'seed'")
    return int(cfg["seed"])


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def _experiment_ranges(runs: list[EvaluatedRun], seeds: list[int], alpha: float) -> dict[str, Any]:
    order = np.argsort(seeds, kind="stable")
    runs = [runs[i] for i in order]
    seeds = [seeds[i] for i in order]
    methods: dict[str, Any] = {}
    for name in runs[0].methods:
        per = []
        for r in runs:
            models = {m["name"]: m for m in r.metrics.get("delong", {}).get("models", [])}
            if name not in models:
                break
            per.append(models[name])
        if len(per) != len(runs):
            log.warning("method %s is not in every seed's metrics.json; left out of the ranges", name)
            continue
        aucs = [float(m["auc"]) for m in per]
        methods[name] = {
            "auc": aucs,
            **{f"auc_{k}": v for k, v in _stats(aucs).items()},
            "ci_lower_min": float(min(m["ci_lower"] for m in per)),
            "ci_upper_max": float(max(m["ci_upper"] for m in per)),
        }
    pairs: dict[str, Any] = {}
    for r in runs:
        for p in r.metrics.get("delong", {}).get("pairs", []):
            pairs.setdefault(f"{p['a']} vs {p['b']}", []).append(p)
    pair_rows = {}
    for key, ps in pairs.items():
        if len(ps) != len(runs):
            continue
        pv = [float(p["p"]) for p in ps]
        a, b = key.split(" vs ")
        a_better = [methods[a]["auc"][i] > methods[b]["auc"][i] for i in range(len(runs))] if a in methods and b in methods else []
        pair_rows[key] = {
            "p": pv,
            **{f"p_{k}": v for k, v in _stats(pv).items()},
            "significant": int(sum(x < alpha for x in pv)),
            "first_better": int(sum(a_better)),
        }
    slice_systems: dict[str, Any] = {}
    names = set.intersection(*(set((r.metrics.get("slice_level_systems") or {}).keys()) for r in runs))
    for name in sorted(names):
        aucs = [float(r.metrics["slice_level_systems"][name]["auc"]) for r in runs]
        slice_systems[name] = {"auc": aucs, **{f"auc_{k}": v for k, v in _stats(aucs).items()}}
    r0 = runs[0]
    return {
        "seeds": seeds,
        "run_ids": [r.run_id for r in runs],
        "n_volumes": int(len(r0.test)),
        "n_pos": int(r0.test["label"].sum()),
        "methods": methods,
        "pairs": pair_rows,
        "slice_systems": slice_systems,
    }


def seed_ranges(
    run_dirs: Sequence[str | Path], out: str | Path, *, alpha: float = 0.05
) -> SeedRanges:
    """Ranges over seeds of every method of every experiment among ``run_dirs``.

    Args:
        run_dirs: evaluated run directories (or their ``evaluation/`` folders).
        out: folder for ``seeds.md`` and ``seeds.json``.
        alpha: the level at which a paired test's difference is counted.

    Raises:
        UserError: an unevaluated run, two runs of one experiment with one seed, runs
            evaluated on other volumes or labels.
    """
    if not run_dirs:
        raise UserError("seed ranges need at least one evaluated run")
    runs = [load_evaluated_run(p) for p in run_dirs]
    hashes = {split_hash(r.test) for r in runs}
    if len(hashes) > 1:
        raise UserError(
            "the runs were evaluated on different volumes or labels "
            f"({len(hashes)} different (key, label) sets): seeds must vary the training, not the test set"
        )
    groups: dict[str, list[tuple[EvaluatedRun, int]]] = {}
    for r in runs:
        groups.setdefault(r.experiment, []).append((r, _run_seed(r)))
    experiments = {}
    for exp, members in groups.items():
        seeds = [s for _, s in members]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            raise UserError(f"experiment {exp}: more than one run with seed {dup[0]}; pass one run per seed")
        experiments[exp] = _experiment_ranges([r for r, _ in members], seeds, alpha)
    summary = {"alpha": alpha, "split": runs[0].split, "experiments": experiments}
    markdown = render_seed_ranges(summary)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"seeds.json": out / "seeds.json", "seeds.md": out / "seeds.md"}
    files["seeds.json"].write_text(json.dumps(summary, indent=2) + "\n")
    files["seeds.md"].write_text(markdown)
    return SeedRanges(summary=summary, markdown=markdown, files=files)


def render_seed_ranges(summary: dict[str, Any]) -> str:
    """``seeds.md``: one table of AUC ranges per experiment, its paired tests, its slice classifiers."""
    lines = ["# AUC over seeds", ""]
    for exp, e in summary["experiments"].items():
        seeds = ", ".join(str(s) for s in e["seeds"])
        lines += [
            f"## {exp}",
            "",
            f"{len(e['seeds'])} seeds ({seeds}); {e['n_volumes']} {summary['split']} volumes "
            f"({e['n_pos']} positive).",
            "",
            "| method | AUC min - max | median | per seed | widest 95% CI |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, m in e["methods"].items():
            per = " / ".join(fmt_num(a) for a in m["auc"])
            lines.append(
                f"| {name} | {fmt_num(m['auc_min'])} - {fmt_num(m['auc_max'])} | {fmt_num(m['auc_median'])} | {per} "
                f"| {fmt_num(m['ci_lower_min'])} - {fmt_num(m['ci_upper_max'])} |"
            )
        if e["pairs"]:
            n = len(e["seeds"])
            lines += [
                "",
                f"| paired DeLong test | p min - max | seeds with p < {summary['alpha']} | seeds where the first is higher |",
                "| --- | --- | --- | --- |",
            ]
            for key, p in e["pairs"].items():
                lines.append(
                    f"| {key} | {p['p_min']:.3g} - {p['p_max']:.3g} | {p['significant']}/{n} | {p['first_better']}/{n} |"
                )
        if e["slice_systems"]:
            lines += ["", "| slice classifier (slice level) | AUC min - max | median |", "| --- | --- | --- |"]
            for name, s in e["slice_systems"].items():
                lines.append(f"| {name} | {fmt_num(s['auc_min'])} - {fmt_num(s['auc_max'])} | {fmt_num(s['auc_median'])} |")
        lines.append("")
    return "\n".join(lines)
