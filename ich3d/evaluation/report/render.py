"""``report.md`` from ``metrics.json``: one function per section, each a list of Markdown lines.

Everything here reads the metrics :func:`~ich3d.evaluation.report.build.build_report`
computed (and the DeLong result for the main table); nothing is computed but text.
Sections, in order: header (split, cautions, synthetic data, unfinished stages),
provenance, the volume-level AUC table with the paired tests (raw and
Holm-adjusted p), the ROC figure, the published figures beside the run's, the
methods, operating points, inference time, slice level, every slice classifier,
the SVM baseline, per target, training curves, and what was not evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ich3d.evaluation.report.per_target import render_per_target
from ich3d.stats.delong import DeLongResult
from ich3d.stats.formatting import fmt_auc, fmt_prop, pct
from ich3d.stats.roc_table import render_markdown

__all__ = ["render_report", "render_slice_systems", "render_provenance", "render_reference"]

Metrics = Mapping[str, Any]


def render_report(metrics: Metrics, result: DeLongResult) -> str:
    """``report.md`` from the metrics of :func:`~ich3d.evaluation.report.build.build_report` and the DeLong result."""
    lines = _header(metrics)
    lines += render_provenance(metrics)
    lines += ["## Volume-level ROC AUC", "", render_markdown(result).rstrip("\n")]
    lines += ["", "![ROC curves of all methods](roc.png)", ""]
    sections: list[Callable[[Metrics], list[str]]] = [
        render_reference,
        _methods,
        _tta,
        _operating_points,
        _timing,
        _slice_level,
        render_slice_systems,
        _svm,
        _per_target,
        _training_curves,
        _missing,
    ]
    for section in sections:
        lines += section(metrics)
    return "\n".join(lines).rstrip("\n") + "\n"


def _header(metrics: Metrics) -> list[str]:
    lines: list[str] = [f"# {metrics['title']}", ""]
    lines.append(
        f"Split `{metrics['split']}`: {metrics['n_volumes']} volumes "
        f"({metrics['n_pos']} positive, {metrics['n_neg']} negative). "
        f"Intervals: {pct(float(metrics['level']))} (AUC: DeLong, pROC conventions; proportions: Wilson)."
    )
    data = metrics.get("data_origin") or {}
    if data.get("synthetic"):
        lines += ["", f"**Synthetic data**: {data.get('reason', 'the cache was made by `ich3d synth`')}. "
                  "These figures measure the pipeline on a phantom, not diagnostic performance on real CT."]
    for caution in metrics.get("cautions") or []:
        lines += ["", f"**Caution**: {caution}."]
    unfinished = metrics.get("unfinished") or {}
    if unfinished:
        stages = ", ".join(f"`{s}`" for s in dict.fromkeys(unfinished.values()))
        lines += [
            "",
            f"**Unfinished**: {', '.join(f'`{m}`' for m in unfinished)} scored from the best.ckpt of "
            f"stage(s) {stages}, which did not finish training (no result.json); not a final result.",
        ]
    return [*lines, ""]


def render_provenance(metrics: Metrics) -> list[str]:
    """Where the figures came from (``metrics["provenance"]``); no lines when absent."""
    prov = metrics.get("provenance") or {}
    if not prov:
        return []
    names = {
        "experiment": "experiment",
        "run_id": "run id",
        "seed": "seed",
        "config_sha256": "config digest (sha256 of config.yaml)",
        "ich3d_version": "ich3d version",
        "git_commit": "git commit",
        "data_fingerprint": "data fingerprint (ingest input)",
        "split_hash": "split hash",
        "torch_threads": "torch threads",
        "device": "device",
    }
    lines = ["## Provenance", "", "| item | value |", "| --- | --- |"]
    for k, name in names.items():
        if k in prov:
            v = prov[k]
            lines.append(f"| {name} | `{'unknown' if v is None else v}` |")
    return [*lines, ""]


def render_reference(metrics: Metrics) -> list[str]:
    """The published figures beside the run's (``metrics["reference"]``); no lines when absent."""
    ref = metrics.get("reference") or {}
    published = ref.get("auc") or {}
    per_method = metrics.get("per_method") or {}
    rows = [m for m in metrics["methods"] if m in published]
    if not rows:
        return []
    lines = [
        "## Published figures",
        "",
        f"{ref.get('source', 'published')}: volume-level AUC beside this run's. Different data "
        "(and, for a synthetic cache, a phantom), so a guide to the ordering, not a target to match.",
        "",
        f"| method | published as | published AUC | this run, AUC [{pct(float(metrics['level']))} CI] |",
        "| --- | --- | --- | --- |",
    ]
    labels = ref.get("labels") or {}
    for m in rows:
        lines.append(f"| {m} | {labels.get(m, m)} | {published[m]:.2f} | {fmt_auc(per_method.get(m))} |")
    return [*lines, ""]


def _methods(metrics: Metrics) -> list[str]:
    descriptions = metrics.get("descriptions") or {}
    unfinished = metrics.get("unfinished") or {}
    described = [m for m in metrics["methods"] if m in descriptions or m in unfinished]
    if not described:
        return []
    lines = ["Methods:", ""]
    for m in described:
        desc = descriptions.get(m, "")
        if m in unfinished:
            desc += f" (**unfinished**: {unfinished[m]} did not finish)"
        lines.append(f"- `{m}`: {desc.strip()}")
    return [*lines, ""]


def _tta(metrics: Metrics) -> list[str]:
    tests = metrics.get("tta_tests") or []
    if not tests:
        return []
    lines = [
        "## Test-time augmentation",
        "",
        "Each variant's probability is the mean over the plain input and its transforms "
        "(`evaluation.tta`); paired DeLong test against the plain model.",
        "",
        f"| variant | AUC | plain AUC | difference [{pct(float(metrics['level']))} CI] | p |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in tests:
        lines.append(
            f"| {t['method']} | {t['auc']:.3f} | {t['auc_plain']:.3f} | {t['diff']:+.3f} "
            f"[{t['diff_ci_lower']:+.3f}, {t['diff_ci_upper']:+.3f}] | {_p(t['p'])} |"
        )
    return [*lines, ""]


def _p(p: float | None) -> str:
    return "n/a" if p is None or p != p else f"{p:.3g}"


def _operating_points(metrics: Metrics) -> list[str]:
    ops = metrics.get("operating_points") or {}
    lines = ["## Operating points", ""]
    if not ops:
        return [*lines, "Not computed (no validation predictions with both classes).", ""]
    lines.append(
        f"Thresholds chosen on the validation split (target sensitivity "
        f"{metrics['target_sensitivity']:g}; Youden's J), applied to `{metrics['split']}`. "
        f"Values: estimate [{pct(float(metrics['level']))} Wilson interval] (k/n)."
    )
    lines += [
        "",
        "| method | rule | threshold | val. sensitivity | sensitivity | specificity | accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, rules in ops.items():
        for rule, d in rules.items():
            name = f"sens >= {d['target']:g}" if rule == "sensitivity" else "Youden"
            vs = d["validation"]["sensitivity"]
            lines.append(
                f"| {m} | {name} | {d['threshold']:.4g} | {vs['value']:.3f} | "
                f"{fmt_prop(d['sensitivity'])} | {fmt_prop(d['specificity'])} | {fmt_prop(d['accuracy'])} |"
            )
    return [*lines, ""]


def _timing(metrics: Metrics) -> list[str]:
    timing = metrics.get("timing") or {}
    hw = metrics.get("hardware") or {}
    if not (timing or hw):
        return []
    lines = ["## Inference time", ""]
    if hw:
        lines += [f"Hardware: {hw.get('summary') or ', '.join(f'{k} {v}' for k, v in hw.items())}.", ""]
    if timing:
        lines += ["| method | seconds per volume |", "| --- | --- |"]
        lines += [f"| {m} | {timing[m]:.4f} |" for m in metrics["methods"] if m in timing]
        lines += [
            "",
            "Average over the evaluated volumes of the model's forward time (input already "
            "loaded and windowed; transfer to the device included). `max`/`p95`/`svm` share "
            "the slice CNN's time; `svm` adds the SVM's decision time.",
            "",
        ]
    return lines


def _slice_level(metrics: Metrics) -> list[str]:
    sl = metrics.get("slice_level") or {}
    if not sl:
        return []
    lines = ["## Slice level (stage-1 CNN)", ""]
    lines += [
        f"| slices | n | positive | negative | AUC [{pct(float(metrics['level']))} CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"cavity": "cranial-cavity slices", "all": "all slices"}
    for k, d in sl.items():
        lines.append(f"| {names.get(k, k)} | {d['n_slices']} | {d['n_pos']} | {d['n_neg']} | {fmt_auc(d)} |")
    return [*lines, ""]


def render_slice_systems(metrics: Metrics) -> list[str]:
    """The ``report.md`` section of ``metrics["slice_level_systems"]`` (no lines when absent)."""
    systems = metrics.get("slice_level_systems") or {}
    if not systems:
        return []
    level = pct(float(metrics.get("level", 0.95)))
    lines = [
        "## Slice level (every slice classifier)",
        "",
        f"Cranial-cavity slices of `{metrics.get('split', 'test')}` with a 0/1 slice label (what the slice "
        f"papers report). AUC: DeLong {level} interval; thresholds chosen on the validation split's "
        f"cranial-cavity slices (Youden's J; validation sensitivity >= target), accuracy, sensitivity and "
        f"specificity with {level} Wilson intervals.",
        "",
        "| system | slices (pos/neg) | AUC | rule | threshold | accuracy | sensitivity | specificity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, d in systems.items():
        auc = fmt_auc(d)
        ops = d.get("operating_points") or {}
        first = True
        for rule, op in ops.items():
            label = "Youden" if rule == "youden" else f"sens >= {op['target']:g}"
            lead = f"| {name} | {d['n_slices']} ({d['n_pos']}/{d['n_neg']}) | {auc} " if first else "| | | "
            cells = " | ".join(fmt_prop(op[k], counts=False) for k in ("accuracy", "sensitivity", "specificity"))
            lines.append(f"{lead}| {label} | {op['threshold']:.4g} | {cells} |")
            first = False
        if not ops:
            lines.append(f"| {name} | {d['n_slices']} ({d['n_pos']}/{d['n_neg']}) | {auc} | - | - | - | - | - |")
    lines += ["", "Systems: " + "; ".join(f"`{n}`: {d.get('description', '')}" for n, d in systems.items()) + ".", ""]
    return lines


def _svm(metrics: Metrics) -> list[str]:
    svm = metrics.get("svm") or {}
    if not svm:
        return []
    lines = ["## SVM baseline", ""]
    lines.append(
        f"Linear SVM on slice features zero-padded at both ends to {svm.get('length')} slices "
        f"x {svm.get('n_features')} features; C = {svm.get('C')} chosen on validation "
        f"(validation AUC per C: "
        + ", ".join(f"{c}: {a:.3f}" for c, a in (svm.get("val_auc") or {}).items() if a is not None)
        + ")."
    )
    crop = [
        f"{svm[k]} {name}"
        for k, name in (("n_cropped_train", "training"), ("n_cropped_val", "validation"), ("n_cropped_test", "test"))
        if k in svm
    ]
    if crop:
        lines.append(f"Volumes longer than {svm.get('length')} slices, centre-cropped: " + ", ".join(crop) + ".")
    return [*lines, ""]


def _per_target(metrics: Metrics) -> list[str]:
    if not metrics.get("per_target"):  # a run trained on several targets (data.targets)
        return []
    return [render_per_target(metrics["per_target"])]


def _training_curves(metrics: Metrics) -> list[str]:
    curves = metrics.get("training_curves") or {}
    if not curves.get("file"):
        return []
    stages = ", ".join(f"`{s}`" for s in curves.get("stages", []))
    return [
        "## Training curves",
        "",
        f"Validation metric and losses per epoch of each stage ({stages}), from each stage's `metrics.csv`.",
        "",
        f"![Training curves]({curves['file']})",
        "",
    ]


def _missing(metrics: Metrics) -> list[str]:
    missing = metrics.get("missing") or {}
    notes = metrics.get("notes") or []
    if not (missing or notes):
        return []
    lines = ["## Not evaluated / notes", ""]
    lines += [f"- `{m}`: {why}" for m, why in missing.items()]
    lines += [f"- {n}" for n in notes]
    return [*lines, ""]
