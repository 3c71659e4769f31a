"""The full RSNA scale rehearsed: every phase at 1/16, 1/4 and full cardinality, with growth exponents.

Run from the repository root (``make bench-scale`` runs the three sizes)::

    python -m benchmarks.bench_scale [--fractions 0.0625 0.25 1] [--out runs/bench-scale]
                                     [--workers 2] [--keep]

At each ``fraction`` of RSNA 2019 stage 2 (21,744 series, 752,803 slices for
training; 3,518 series, 121,232 images for the test set) a synthetic cache is
written in the cache format (:mod:`benchmarks._scale_cache`, 32 x 32 slices),
and every phase runs through the code a user runs, with a tiny model
(``patel_cnn`` width 2, 16 features, an 8-unit BiLSTM; six targets):

* ``splits``: the patient split, stratified by subtype (``load_or_create_splits``);
* ``cavity``: the cranial-cavity statistics of every slice (``ensure_slice_stats``,
  ``--workers`` processes);
* ``datamodules``: ``prepare_data`` + ``setup("fit")`` of the slice and the volume
  DataModules as training builds them (:mod:`ich3d.runs.datamodules`);
* ``stage1``, ``stage2``, ``stage3``: ``ich3d train --stage slice`` (300 steps of 25
  slices, 10,000 validation slices per epoch), ``--stage sequence`` (cached
  features of every training and validation volume, then 3 epochs of 1,000
  volumes), ``--stage finetune`` (100 volumes);
* ``evaluate``: ``ich3d evaluate`` with every method (max, p95, the SVM on the
  full training split, slice_svm, ae_svm, both volume models; the slice level
  over every test slice; six targets); ``report`` is its ``build_report`` call;
* ``run2``: a second run (seed 1), trained and evaluated the same way;
* ``compare``, ``seeds``: ``ich3d compare`` and ``ich3d seeds`` of the two runs;
* ``predict``: ``ich3d predict RUN TEST_CACHE --format rsna`` over every test image.

Each phase runs in a fresh process (``OMP_NUM_THREADS=1``, one torch thread);
wall and CPU time (its own and its worker processes') are measured inside the
process after its imports, peak memory is the largest resident set of the
process and its workers. Growth exponent: the least-squares slope of log CPU
time against log slice count over the sizes. Prints the table and writes
``scale.json`` and ``scale.md`` to ``--out``; the caches and runs are deleted
unless ``--keep``. Each finished phase is also appended to
``<out>/size-<fraction>/phases.jsonl``, so a run stopped part-way keeps what it
measured: ``--collect DIR ...`` tabulates such folders (one per size) without
running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

#: (phase, what it runs): the table's rows, in pipeline order
PHASES: tuple[tuple[str, str], ...] = (
    ("cache", "write the synthetic training + test caches (benchmark set-up)"),
    ("splits", "patient split, stratified by subtype"),
    ("cavity", "cranial-cavity statistics of every slice"),
    ("datamodules", "slice + volume DataModule prepare_data and setup"),
    ("stage1", "ich3d train --stage slice (300 steps)"),
    ("stage2", "ich3d train --stage sequence (features of every volume + 3 epochs)"),
    ("stage3", "ich3d train --stage finetune (100 steps)"),
    ("evaluate", "ich3d evaluate, every method, six targets"),
    ("report", "of which build_report (inside evaluate)"),
    ("run2", "second run (seed 1): three stages + evaluate"),
    ("compare", "ich3d compare of the two runs"),
    ("seeds", "ich3d seeds of the two runs"),
    ("predict", "ich3d predict --format rsna over every test image"),
)
RSNA_SLICES = 752_803
EVAL_METHODS = ("max", "p95", "svm", "slice_svm", "ae_svm", "sequence", "finetune")


def scale_config(cache: Path, root: Path, seed: int, workers: int, *, quick: bool = False) -> dict[str, Any]:
    """The rehearsal's experiment: the paper's pipeline and split with a tiny model and few steps
    (``quick``: a handful of steps, for the test)."""
    raw = {
        "experiment": "scale",
        "seed": seed,
        "data": {
            "cache_dir": str(cache), "split_fractions": [0.7, 0.1, 0.2], "targets": "all",
            "depth_pool": 2, "ingest_workers": workers, "num_workers": 0,
        },
        "model": {
            "encoder": "patel_cnn", "encoder_args": {"width": 2, "feature_dim": 16, "dropout": 0.5, "input_size": 32},
            "head": "bilstm", "head_args": {"hidden": 8, "num_layers": 1},
        },
        "stages": {
            "slice": {"optimizer": "adam", "lr": 1e-3, "batch_size": 25, "samples_per_epoch": 2500,
                      "max_epochs": 3, "val_samples": 10000, "augment": False},
            "sequence": {"optimizer": "rmsprop", "lr": 1e-3, "batch_size": 1, "samples_per_epoch": 1000,
                         "max_epochs": 3, "augment": False, "cached_features": True},
            "finetune": {"optimizer": "rmsprop", "lr": 1e-4, "batch_size": 1, "samples_per_epoch": 100,
                         "max_epochs": 1, "augment": False},
        },
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "enable_progress_bar": False,
                    "log_every_n_steps": 50},
        "evaluation": {"svm_cs": [0.01, 1.0], "slice_svm_cs": [1e-3, 1e-2], "ae_epochs": 5, "ae_hidden": 64,
                       "ae_code_dim": 8},
        "tracking": {"mode": "disabled"},
        "run": {"root": str(root / "runs")},
    }
    if quick:
        for stage, samples in (("slice", 50), ("sequence", 20), ("finetune", 5)):
            raw["stages"][stage].update(samples_per_epoch=samples, max_epochs=1)
        raw["stages"]["slice"]["val_samples"] = 100
    return raw


# ----------------------------------------------------------------------------- one phase, in its own process


def _cli(argv: Sequence[str]) -> Callable[[], Any]:
    def run() -> Any:
        from ich3d.cli.main import main

        code = main(list(argv))
        if code:
            raise SystemExit(f"ich3d {' '.join(argv)} exited {code}")

    return run


def _phase_splits(cfg: str) -> Callable[[], Any]:
    from ich3d.config import load_config
    from ich3d.data.cache import open_cache
    from ich3d.data.splits import load_or_create_splits

    config = load_config(cfg)

    def run() -> Any:
        volumes = open_cache(config.data.cache_dir).volumes
        load_or_create_splits(config.data.cache_dir, volumes, fractions=config.data.split_fractions,
                              seed=config.data.split_seed, subtypes=True)

    return run


def _phase_cavity(cfg: str) -> Callable[[], Any]:
    from ich3d.config import load_config
    from ich3d.data.cache import open_cache
    from ich3d.data.cavity import ensure_slice_stats

    config = load_config(cfg)
    return lambda: ensure_slice_stats(open_cache(config.data.cache_dir), workers=config.data.ingest_workers,
                                      progress=False)


def _phase_datamodules(cfg: str) -> Callable[[], Any]:
    from ich3d.config import load_config
    from ich3d.runs.datamodules import slice_datamodule, volume_datamodule

    config = load_config(cfg)

    def run() -> Any:
        for make, stage in ((slice_datamodule, "slice"), (volume_datamodule, "sequence")):
            dm = make(config, settings=config.stages[stage])
            dm.prepare_data()
            dm.setup("fit")

    return run


def _evaluate(argv: Sequence[str], report: dict[str, float]) -> Callable[[], Any]:
    """``ich3d evaluate`` with its ``build_report`` call timed (wall and CPU seconds into ``report``)."""
    import ich3d.evaluation.evaluate as ev

    inner = ev.build_report

    def timed(*args: Any, **kwargs: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            report["wall_s"] = report.get("wall_s", 0.0) + time.perf_counter() - w
            report["cpu_s"] = report.get("cpu_s", 0.0) + time.process_time() - c

    ev.build_report = timed
    return _cli(argv)


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(kind: str, arg: Any) -> dict[str, Any]:
    """Run one phase in this process: wall and CPU seconds, peak RSS (MiB) of the process and its workers."""
    import logging
    import warnings

    import torch

    import ich3d.cli.main  # noqa: F401  the imports are not the phase's cost
    import ich3d.evaluation.evaluate as ev
    import ich3d.training.runner  # noqa: F401

    warnings.filterwarnings("ignore")
    logging.getLogger("ich3d").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    extra: dict[str, float] = {}
    phases = {"cache": _phase_cache, "splits": _phase_splits, "cavity": _phase_cavity,
              "datamodules": _phase_datamodules}
    build_report = ev.build_report
    if kind == "cli":
        run = _cli(arg)
    elif kind == "evaluate":
        run = _evaluate(arg, extra)
    else:
        run = phases[kind](arg)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    w, c = time.perf_counter(), _cpu_seconds()
    try:
        run()
    finally:
        ev.build_report = build_report
    figures = {"wall_s": time.perf_counter() - w, "cpu_s": _cpu_seconds() - c,
               "peak_rss_mib": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024,
               "imports_rss_mib": rss0 / 1024}
    if extra:
        figures["report"] = extra
    return figures


def _record(work: Path, kind: str, arg: Any, figures: dict[str, Any]) -> None:
    """Append a finished phase to ``work/phases.jsonl`` (kept if a later phase fails; ``--collect``)."""
    with open(work / "phases.jsonl", "a") as fh:
        fh.write(json.dumps({"kind": kind, "arg": arg, **figures}) + "\n")


def _run_phase(kind: str, arg: Any, work: Path, log: Path, in_process: bool = False) -> dict[str, Any]:
    """Run a phase in a fresh process (or in this one); its figures (and the process's whole wall time)."""
    if in_process:
        t0 = time.perf_counter()
        figures = _measure(kind, arg)
        _record(work, kind, arg, figures)
        return {**figures, "process_wall_s": time.perf_counter() - t0}
    out = work / f".phase-{kind}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "CUDA_VISIBLE_DEVICES": ""}
    spec = json.dumps({"kind": kind, "arg": arg, "out": str(out)})
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n== {kind} {arg}\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--child", spec],
                              stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"phase {kind} failed (exit {done.returncode}); see {log}")
    figures = json.loads(out.read_text())
    figures["process_wall_s"] = time.perf_counter() - t0
    out.unlink()
    return figures


def _phase_cache(arg: list[Any]) -> Callable[[], Any]:
    from benchmarks._scale_cache import write_scale_cache

    work, fraction = Path(arg[0]), float(arg[1])

    def run() -> Any:
        counts = {"train": write_scale_cache(work / "cache", fraction),
                  "test": write_scale_cache(work / "test-cache", fraction, labeled=False, seed=1)}
        (work / "counts.json").write_text(json.dumps(counts))

    return run


# ----------------------------------------------------------------------------- one size


def _combine(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several processes as one phase: times add up, peak memory is the largest."""
    return {"wall_s": sum(p["wall_s"] for p in parts), "cpu_s": sum(p["cpu_s"] for p in parts),
            "peak_rss_mib": max(p["peak_rss_mib"] for p in parts),
            "process_wall_s": sum(p["process_wall_s"] for p in parts)}


def _train_and_evaluate(cfg: Path, run: Path, phase: Callable[..., dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The three training phases and the evaluation of one run."""
    rid = run.name
    stages = [
        phase("cli", ["train", str(cfg), "--stage", "slice", "--run-id", rid]),
        phase("cli", ["train", str(cfg), "--stage", "sequence", "--run-id", rid, "--continue"]),
        phase("cli", ["train", str(cfg), "--stage", "finetune", "--run-id", rid, "--continue"]),
    ]
    evaluated = phase("evaluate", ["evaluate", str(run), "--methods", *EVAL_METHODS, "--device", "cpu",
                                   "--no-wandb", "--no-progress"])
    return stages, evaluated


def run_size(
    fraction: float, work: Path, workers: int, *, quick: bool = False, in_process: bool = False
) -> dict[str, Any]:
    """Every phase at ``fraction`` of RSNA's cardinality, in ``work`` (created).

    ``quick``: a few training steps only; ``in_process``: every phase in this process (tests).
    """
    import yaml

    work.mkdir(parents=True, exist_ok=False)
    phase = partial(_run_phase, work=work, log=work / "phases.log", in_process=in_process)
    rows: dict[str, dict[str, Any]] = {}
    rows["cache"] = phase("cache", [str(work), fraction])
    counts = json.loads((work / "counts.json").read_text())
    cfgs = []
    for seed in (0, 1):
        cfg = work / f"scale-seed{seed}.yaml"
        cfg.write_text(yaml.safe_dump(scale_config(work / "cache", work, seed, workers, quick=quick)))
        cfgs.append(cfg)
    for kind in ("splits", "cavity", "datamodules"):
        rows[kind] = phase(kind, str(cfgs[0]))
    runs = [work / "runs" / "scale" / f"r{seed}" for seed in (0, 1)]
    stages, rows["evaluate"] = _train_and_evaluate(cfgs[0], runs[0], phase)
    rows.update(zip(("stage1", "stage2", "stage3"), stages, strict=True))
    rows["report"] = {**rows["evaluate"].pop("report"), "peak_rss_mib": None}
    stages2, evaluated2 = _train_and_evaluate(cfgs[1], runs[1], phase)
    evaluated2.pop("report", None)
    rows["run2"] = _combine([*stages2, evaluated2])
    rows["compare"] = phase("cli", ["compare", *map(str, runs), "--out", str(work / "compare")])
    rows["seeds"] = phase("cli", ["seeds", *map(str, runs), "--out", str(work / "seeds")])
    rows["predict"] = phase("cli", ["predict", str(runs[0]), str(work / "test-cache"), "--format", "rsna",
                                    "--device", "cpu", "--no-progress", "--out", str(work / "predict")])
    with open(work / "predict" / "submission.csv") as fh:
        n_rows = sum(1 for _ in fh) - 1
    if n_rows != 6 * counts["test"]["slices"]:
        raise RuntimeError(f"submission.csv has {n_rows} rows, expected 6 x {counts['test']['slices']} test images")
    return {"fraction": fraction, "counts": counts, "submission_rows": n_rows,
            "disk_mib": _disk_mib(work), "phases": rows}


def _disk_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# ----------------------------------------------------------------------------- the table


def growth_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float | None:
    """Least-squares slope of log(seconds) against log(size); None with fewer than 2 usable points."""
    pts = [(np.log(n), np.log(s)) for n, s in zip(sizes, seconds, strict=True) if s is not None and s > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per phase: figures per size (None where a phase did not run), growth exponent, CPU
    seconds projected at full size from the largest size measured (linear with one size only)."""
    sizes = [r["counts"]["train"]["slices"] for r in results]
    table = []
    for phase, what in PHASES:
        got = [r["phases"].get(phase) or {} for r in results]
        cpu = [g.get("cpu_s") for g in got]
        slope = growth_exponent(sizes, cpu)
        done = [i for i, c in enumerate(cpu) if c is not None]
        full = None
        if done:
            largest = max(done, key=lambda i: sizes[i])
            full = cpu[largest] * (RSNA_SLICES / sizes[largest]) ** max(1.0 if slope is None else slope, 0.0)
        table.append({"phase": phase, "what": what, "slices": sizes, "wall_s": [g.get("wall_s") for g in got],
                      "cpu_s": cpu, "peak_rss_mib": [g.get("peak_rss_mib") for g in got], "exponent": slope,
                      "cpu_s_full_projected": full})
    return table


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(table: Sequence[dict[str, Any]]) -> str:
    """The table as markdown: per size wall / CPU seconds and peak RSS, then the exponent."""
    sizes = table[0]["slices"]
    head = ["phase", *[f"{n:,} slices: wall / CPU s, peak MiB" for n in sizes], "exponent (CPU)", "full, CPU s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in table:
        cells = [f"{row['phase']}: {row['what']}"]
        for w, c, m in zip(row["wall_s"], row["cpu_s"], row["peak_rss_mib"], strict=True):
            cells.append("not run" if c is None else f"{w:.1f} / {c:.1f}, {_fmt(m, '.0f')}")
        cells += [_fmt(row["exponent"], ".2f"), _fmt(row["cpu_s_full_projected"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _phase_of(entry: dict[str, Any]) -> str:
    """The table row of one ``phases.jsonl`` entry (``run2`` for the second run's processes)."""
    kind, arg = entry["kind"], entry["arg"]
    if kind not in ("cli", "evaluate"):
        return kind
    if kind == "evaluate" or arg[0] == "train":
        second = any(a.endswith("/r1") or a == "r1" for a in arg)
        if second:
            return "run2"
        return "evaluate" if kind == "evaluate" else {"slice": "stage1", "sequence": "stage2", "finetune": "stage3"}[
            arg[arg.index("--stage") + 1]]
    return arg[0]


def collect(work_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """The results of sizes from their work folders' ``phases.jsonl`` (runs kept with ``--keep``, or
    interrupted: the phases that finished); folders whose ``counts.json`` are equal are one size."""
    by_counts: dict[str, dict[str, Any]] = {}
    for work in work_dirs:
        path = next((p for p in (work / "counts.json", work.parent / "counts.json") if p.is_file()), None)
        counts = json.loads(path.read_text()) if path is not None else None
        result = by_counts.setdefault(json.dumps(counts, sort_keys=True), {
            "fraction": None, "counts": counts, "phases": {}, "from": []})
        result["from"].append(str(work))
        run2 = []
        for line in (work / "phases.jsonl").read_text().splitlines():
            entry = json.loads(line)
            phase = _phase_of(entry)
            if phase == "run2":
                run2.append({**entry, "process_wall_s": entry["wall_s"]})
                continue
            if phase == "evaluate" and "report" in entry:
                result["phases"]["report"] = {**entry["report"], "peak_rss_mib": None}
            result["phases"][phase] = entry
        if len(run2) == 4:  # three stages and the evaluation; a part of them is not the phase
            result["phases"]["run2"] = _combine(run2)
    results = [r for r in by_counts.values() if r["counts"] is not None]
    return sorted(results, key=lambda r: r["counts"]["train"]["slices"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1 / 16, 1 / 4, 1.0],
                        help="sizes as fractions of RSNA stage 2 (default: 1/16, 1/4, 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scale"), help="where scale.json / scale.md go")
    parser.add_argument("--workers", type=int, default=2, help="processes of the cavity statistics (data.ingest_workers)")
    parser.add_argument("--keep", action="store_true", help="keep the caches and runs (default: deleted per size)")
    parser.add_argument("--quick", action="store_true", help="a few training steps per stage (a smoke run)")
    parser.add_argument("--in-process", action="store_true", help="every phase in this process (tests)")
    parser.add_argument("--collect", type=Path, nargs="+", default=None, metavar="DIR",
                        help="tabulate the phases.jsonl of these size folders (kept or interrupted runs); no run")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        figures = _measure(spec["kind"], spec["arg"])
        Path(spec["out"]).write_text(json.dumps(figures))
        _record(Path(spec["out"]).parent, spec["kind"], spec["arg"], figures)
        return {}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.collect is not None:
        return _write_table(collect(args.collect), args.out, minutes=None)
    results = []
    t0 = time.perf_counter()
    for fraction in sorted(args.fractions):
        work = args.out / f"size-{fraction:g}"
        if work.exists():
            shutil.rmtree(work)
        t = time.perf_counter()
        result = run_size(fraction, work, args.workers, quick=args.quick, in_process=args.in_process)
        result["seconds"] = time.perf_counter() - t
        results.append(result)
        c = result["counts"]["train"]
        print(f"size {fraction:g}: {c['series']:,} series, {c['slices']:,} slices, {c['patients']:,} patients; "
              f"{result['counts']['test']['slices']:,} test images; {result['seconds'] / 60:.1f} min, "
              f"{result['disk_mib']:.0f} MiB on disk", flush=True)
        if not args.keep:
            shutil.rmtree(work)
    return _write_table(results, args.out, minutes=(time.perf_counter() - t0) / 60)


def _write_table(results: list[dict[str, Any]], out: Path, minutes: float | None) -> dict[str, Any]:
    """Print the table; write ``scale.json`` and ``scale.md`` to ``out``."""
    table = summarize(results)
    text = markdown(table)
    saved = {"fractions": [r["fraction"] for r in results], "minutes": minutes, "table": table, "sizes": results,
             "host": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}}
    (out / "scale.json").write_text(json.dumps(saved, indent=1))
    (out / "scale.md").write_text(text)
    print(text, end="")
    took = f"all sizes: {minutes:.1f} min; " if minutes is not None else ""
    print(f"{took}{out / 'scale.json'}, {out / 'scale.md'}")
    return saved


if __name__ == "__main__":
    main()
