"""The "your own data" walkthrough (docs/own-data.md), run literally.

The commands are read from the page's marked blocks (``<!-- own-data:NAME -->`` before
a fenced bash block), the page's example paths are replaced by a small synthetic
folder, the page's own "tiny" overrides are appended to ``train``, and each command
runs as a subprocess from a folder that has the repository's ``configs/``, as a
fresh clone would.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "own-data.md"


def documented_blocks(text: str) -> dict[str, list[list[str]]]:
    """``{marker: [argv, ...]}`` of every ``<!-- own-data:NAME -->`` + fenced block."""
    blocks: dict[str, list[list[str]]] = {}
    for name, body in re.findall(r"<!-- own-data:([\w-]+) -->\n```bash[^\n]*\n(.*?)\n```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", body)
        blocks[name] = [shlex.split(line) for line in joined.splitlines() if line.strip()]
    return blocks


def test_documented_blocks_are_parsed() -> None:
    blocks = documented_blocks(PAGE.read_text(encoding="utf-8"))
    assert set(blocks) == {"ingest", "train", "evaluate", "predict", "tiny-overrides"}
    assert [cmd[:2] for name in ("ingest", "train", "evaluate", "predict") for cmd in blocks[name]] == [
        ["ich3d", "ingest"],
        ["ich3d", "train"],
        ["ich3d", "evaluate"],
        ["ich3d", "predict"],
    ]
    assert all("=" in tok for tok in blocks["tiny-overrides"][0])


def _ich3d() -> list[str]:
    exe = Path(sys.executable).parent / "ich3d"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ich3d"]


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(600)
def test_own_data_walkthrough_runs_as_documented(tmp_path: Path) -> None:
    blocks = documented_blocks(PAGE.read_text(encoding="utf-8"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    ich3d = _ich3d()
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    # the user's data: 20 labelled patients, and 3 new unlabelled ones
    synth = ["--size", "64", "--slices", "6", "10", "--studies", "1", "1", "--no-progress"]
    _run([*ich3d, "synth", "src", "--patients", "20", "--seed", "0", *synth], tmp_path, env)
    _run([*ich3d, "synth", "newsrc", "--patients", "3", "--seed", "1", *synth], tmp_path, env)
    paths = {  # the page's example paths -> this test's folders (longest first)
        "/data/new-ct-predictions": str(tmp_path / "newpred"),
        "/data/my-labels.csv": str(tmp_path / "src" / "stage_2_train.csv"),
        "/data/my-cache": str(tmp_path / "cache"),
        "/data/my-ct": str(tmp_path / "src" / "stage_2_train"),
        "/data/new-ct": str(tmp_path / "newsrc" / "stage_2_train"),
    }

    def real(argv: list[str]) -> list[str]:
        out = []
        for tok in argv:
            for example, path in paths.items():
                tok = tok.replace(example, path)
            assert "/data/" not in tok, tok
            out.append(tok)
        assert out[0] == "ich3d"
        return ich3d + out[1:]

    tiny = blocks["tiny-overrides"][0]
    (ingest,) = blocks["ingest"]
    log = _run(real(ingest), tmp_path, env)
    assert "volumes" in log
    cache = tmp_path / "cache"
    # every input file is in the cache's slice table or skipped with a reason
    files = {p.name for p in (tmp_path / "src" / "stage_2_train").iterdir()}
    accounted = {r["file"] for r in _rows(cache / "slices.csv")} | {r["item"] for r in _rows(cache / "skipped.csv")}
    assert files <= accounted, sorted(files - accounted)[:5]

    (train,) = blocks["train"]
    log = _run(real(train) + tiny, tmp_path, env)
    run_dir = tmp_path / "runs" / "demo" / "mine"
    assert str(run_dir) in log
    for stage in ("slice", "sequence", "finetune"):
        result = json.loads((run_dir / stage / "result.json").read_text())
        assert result, stage
        assert (run_dir / stage / "best.ckpt").is_file()
    splits = json.loads((cache / "splits.json").read_text())
    assert [round(f, 6) for f in splits["fractions"]] == [0.4, 0.3, 0.3]

    (evaluate,) = blocks["evaluate"]
    _run(real(evaluate), tmp_path, env)
    evaluation = run_dir / "evaluation"
    assert (evaluation / "report.md").is_file() and (evaluation / "roc.png").is_file()
    assert (evaluation / "training_curves.png").is_file()
    report = (evaluation / "report.md").read_text(encoding="utf-8")
    assert "## Provenance" in report
    assert "**Caution**" in report  # a handful of test volumes: the page says the report warns
    predictions = _rows(evaluation / "predictions.csv")
    test_volumes = [r for r in _rows(cache / "volumes.csv") if r["patient_id"] in set(map(str, splits["test"]))]
    assert len(predictions) == len(test_volumes) > 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["methods"] == ["max", "p95", "svm", "sequence", "finetune"]
    assert metrics["n_volumes"] == len(test_volumes)
    for method in metrics["methods"]:
        assert method in predictions[0]
        assert all(r[method] != "" for r in predictions), method

    (predict,) = blocks["predict"]
    _run(real(predict), tmp_path, env)
    volumes = _rows(tmp_path / "newpred" / "volumes.csv")
    slices = _rows(tmp_path / "newpred" / "slices.csv")
    assert len(volumes) == 3
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in volumes)
    assert len(slices) == sum(int(r["n_slices"]) for r in volumes)
    listed = json.loads((tmp_path / "newpred" / "predict.json").read_text())["score_columns"]
    assert "probability" in listed and set(listed) <= set(volumes[0])
