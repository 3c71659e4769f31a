"""The Makefile's demo and compare targets: every torch command runs on one pinned thread.

A seed's demo figures depend on the CPU thread count (kernels sum in another order
with another count); ``make demo`` and ``make demo-seeds`` pin it so that the
figures in the documentation reproduce on any machine. ``make -n`` prints the
commands without running them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIN = "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*args: str) -> list[str]:
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line.strip() for line in out.splitlines()]


def _torch_commands(lines: list[str]) -> list[str]:
    return [ln for ln in lines if any(f"ich3d {c} " in ln for c in ("train", "evaluate", "seeds"))]


def test_make_demo_pins_one_thread_for_train_and_evaluate():
    lines = _torch_commands(_dry_run("demo", "DEMO_RUN=r1", "SEED=2"))
    assert len(lines) == 2, lines
    train, evaluate = lines
    assert train.startswith(PIN) and train.endswith("--stage all --run-id r1 seed=2")
    assert evaluate.startswith(PIN) and evaluate.endswith("ich3d evaluate runs/demo/r1")


def test_make_demo_seeds_pins_one_thread_in_every_seed_and_the_summary():
    lines = _torch_commands(_dry_run("demo-seeds", "SEEDS=0 1", "SEEDS_RUN=s"))
    assert [ln.split("seed=")[-1] for ln in lines if " train " in ln] == ["0", "1"]
    assert sum(" evaluate " in ln for ln in lines) == 2
    assert lines[-1].endswith("ich3d seeds runs/demo/s-seed0 runs/demo/s-seed1 --out runs/demo/s")
    assert all(ln.startswith(PIN) for ln in lines), lines


def test_make_demo_cv_trains_every_fold_and_evaluates_the_cv_run_on_one_thread():
    lines = _torch_commands(_dry_run("demo-cv", "DEMO_CV_RUN=cv1", "SEED=3"))
    assert len(lines) == 2, lines
    train, evaluate = lines
    assert train.startswith(PIN) and "ich3d train configs/demo_cv.yaml --folds all --stage all" in train
    assert train.endswith("--run-id cv1 seed=3")
    assert evaluate.startswith(PIN) and evaluate.endswith("ich3d evaluate runs/demo-cv/cv1")


def test_demo_cv_config_is_the_demo_with_five_folds_and_the_demos_test_split():
    from ich3d.config import load_config

    demo, cv = load_config(REPO / "configs" / "demo.yaml"), load_config(REPO / "configs" / "demo_cv.yaml")
    assert (cv.experiment, cv.data.folds, cv.data.fold) == ("demo-cv", 5, None)
    # the same cache, split (so the same test volumes), models and stage budgets as make demo
    assert cv.data.cache_dir == demo.data.cache_dir
    assert (cv.data.split_fractions, cv.data.split_seed) == (demo.data.split_fractions, demo.data.split_seed)
    assert cv.model == demo.model and cv.stages == demo.stages


def test_make_compare_shares_the_demos_data_and_pins_one_thread():
    demo = _dry_run("demo", "DEMO_RUN=r1")
    compare = _dry_run("compare", "COMPARE_RUN=c1", "SEED=4")
    for command in ("ich3d synth ", "ich3d ingest "):
        (line,) = [ln for ln in demo if command in ln]
        assert line in compare, (command, compare)
    text = "\n".join(compare)
    assert f"{PIN}.venv/bin/ich3d train configs/compare/$s.yaml --run-id c1 seed=4" in text
    assert f"{PIN}.venv/bin/ich3d evaluate runs/compare/$s/c1 " in text


_SYSTEMS = sorted(p for p in (REPO / "configs" / "compare").glob("*.yaml") if p.stem != "common")


@pytest.mark.parametrize("path", _SYSTEMS, ids=lambda p: p.stem)
def test_every_compare_config_uses_the_demos_cache_and_split(path, monkeypatch):
    from ich3d.config import load_config

    monkeypatch.chdir(REPO)
    demo, system = load_config(REPO / "configs" / "demo.yaml"), load_config(path)
    # one splits.json for both targets: make compare and make demo test on the same volumes
    assert system.data.cache_dir == demo.data.cache_dir
    assert (system.data.split_fractions, system.data.split_seed) == (demo.data.split_fractions, demo.data.split_seed)
