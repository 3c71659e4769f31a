"""``ich3d seeds``: AUC ranges over seeds against DeLong on each seed's predictions; refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from _eval_helpers import copy_tiny_run
from _train_helpers import run_cli

from ich3d.errors import UserError
from ich3d.evaluation.comparison.seeds import seed_ranges
from ich3d.evaluation.methods import all_methods
from ich3d.stats.delong import delong_roc

STAGES = ("slice", "sequence", "finetune")
#: the default methods of the run's stages, from the registry
METHODS = [m.name for m in all_methods() if m.default and m.needs in STAGES]


@pytest.fixture(scope="module")
def base(tiny_run, tmp_path_factory):
    from ich3d.evaluation.evaluate import evaluate_run

    tiny = copy_tiny_run(tiny_run, tmp_path_factory.mktemp("seeds"), stages=STAGES)
    evaluate_run(tiny.run_dir, progress=False, device="cpu", tracking=False)
    return tiny.run_dir


def _seed_copy(base, dest, seed: int, noise: float):  # noqa: ANN001, ANN202
    """A run of another seed: its scores perturbed (seeded), metrics.json's DeLong recomputed."""
    dest.mkdir(parents=True)
    cfg = yaml.safe_load((base / "config.yaml").read_text())
    cfg["seed"] = seed
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copytree(base / "evaluation", dest / "evaluation")
    pred = pd.read_csv(dest / "evaluation" / "predictions.csv", dtype={"key": str})
    rng = np.random.default_rng(seed)
    for m in METHODS:
        pred[m] = pred[m] + noise * rng.standard_normal(len(pred))
    pred.to_csv(dest / "evaluation" / "predictions.csv", index=False)
    res = delong_roc(pred["label"], pred[METHODS].to_numpy(), names=METHODS)
    metrics = json.loads((dest / "evaluation" / "metrics.json").read_text())
    metrics["delong"] = res.to_dict()
    (dest / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    return dest, res


def test_ranges_are_those_of_each_seeds_delong(base, tmp_path) -> None:  # noqa: ANN001
    made = {s: _seed_copy(base, tmp_path / f"r{s}", s, noise=0.3) for s in (7, 3, 5)}
    out = tmp_path / "out"
    result = seed_ranges([made[7][0], made[3][0], made[5][0]], out)
    (exp, e), = result.summary["experiments"].items()
    assert e["seeds"] == [3, 5, 7]  # sorted by seed whatever the order given
    for j, m in enumerate(METHODS):
        aucs = [made[s][1].models[j].auc for s in (3, 5, 7)]
        got = e["methods"][m]
        assert got["auc"] == pytest.approx(aucs, abs=1e-12)
        assert (got["auc_min"], got["auc_median"], got["auc_max"]) == pytest.approx(
            (min(aucs), float(np.median(aucs)), max(aucs)), abs=1e-12
        )
        assert got["ci_lower_min"] == pytest.approx(min(made[s][1].models[j].ci_lower for s in (3, 5, 7)))
    assert len({round(a, 9) for a in e["methods"]["sequence"]["auc"]}) > 1  # the seeds differ
    pair = e["pairs"]["max vs finetune"]
    ref = [next(p for p in made[s][1].to_dict()["pairs"] if (p["a"], p["b"]) == ("max", "finetune"))["p"] for s in (3, 5, 7)]
    assert pair["p"] == pytest.approx(ref, abs=1e-12)
    assert pair["significant"] == sum(p < 0.05 for p in ref)
    md = (out / "seeds.md").read_text()
    assert f"## {exp}" in md and "3 seeds (3, 5, 7)" in md
    assert f"| finetune | {e['methods']['finetune']['auc_min']:.3f} - " in md
    assert json.loads((out / "seeds.json").read_text()) == result.summary


def test_refuses_one_seed_twice_and_other_test_sets(base, tmp_path, capsys) -> None:  # noqa: ANN001
    a, _ = _seed_copy(base, tmp_path / "a", 1, noise=0.1)
    b, _ = _seed_copy(base, tmp_path / "b", 1, noise=0.2)
    with pytest.raises(UserError, match="more than one run with seed 1"):
        seed_ranges([a, b], tmp_path / "out")
    c, _ = _seed_copy(base, tmp_path / "c", 2, noise=0.1)
    pred = pd.read_csv(c / "evaluation" / "predictions.csv", dtype={"key": str})
    pred.loc[0, "label"] = 1 - pred.loc[0, "label"]
    pred.to_csv(c / "evaluation" / "predictions.csv", index=False)
    assert run_cli("seeds", str(a), str(c), "--out", str(tmp_path / "o2")) == 2
    assert "different volumes or labels" in capsys.readouterr().err
    (c / "config.yaml").unlink()
    with pytest.raises(UserError, match="no config.yaml"):
        seed_ranges([c], tmp_path / "o3")


def test_cli_writes_the_table(base, tmp_path, capsys) -> None:  # noqa: ANN001
    a, _ = _seed_copy(base, tmp_path / "a", 0, noise=0.0)
    b, _ = _seed_copy(base, tmp_path / "b", 1, noise=0.2)
    assert run_cli("seeds", str(a), str(b), "--out", str(tmp_path / "o")) == 0
    printed = capsys.readouterr().out
    assert "| method | AUC min - max | median | per seed | widest 95% CI |" in printed
    assert (tmp_path / "o" / "seeds.md").is_file()
