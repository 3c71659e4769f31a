"""Test-time augmentation (``evaluation.tta``): the averaged pass, and its methods in ``ich3d evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import copy_tiny_run

from ich3d.errors import UserError
from ich3d.evaluation.inference.passes import predict_volumes
from ich3d.evaluation.inference.tta import check_tta, predict_volumes_tta
from ich3d.models.build import build

SPEC = {
    "encoder": {"name": "patel_cnn", "in_channels": 3, "width": 2, "feature_dim": 16},
    "head": {"name": "bilstm", "hidden": 8},
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build(SPEC).eval()


def _loader(volumes: torch.Tensor) -> list[dict]:
    n, t = volumes.shape[:2]
    return [{
        "volume": volumes,
        "length": torch.full((n,), t, dtype=torch.long),
        "label": torch.tensor([0.0, 1.0]),
        "key": ["v0", "v1"],
    }]


def _pass(model, volumes, tta=()):
    loader = _loader(volumes)
    if not tta:
        return predict_volumes(model, loader, "cpu", progress=False, warmup=False)
    return predict_volumes_tta(model, loader, "cpu", tta, progress=False, warmup=False)


def test_tta_of_a_left_right_symmetric_volume_equals_the_plain_prediction():
    torch.manual_seed(1)
    half = torch.rand(2, 4, 3, 32, 16)
    symmetric = torch.cat([half, torch.flip(half, dims=(-1,))], dim=-1)
    assert torch.equal(symmetric, torch.flip(symmetric, dims=(-1,)))
    model = _model()
    plain = _pass(model, symmetric)
    tta = _pass(model, symmetric, ["flip_lr"])
    assert tta.keys == plain.keys == ["v0", "v1"]
    np.testing.assert_allclose(tta.probs, plain.probs, rtol=0, atol=1e-12)


def test_tta_is_the_mean_over_the_plain_and_the_transformed_input():
    torch.manual_seed(2)
    volumes = torch.rand(2, 4, 3, 32, 32)
    model = _model()
    plain = _pass(model, volumes).probs
    lr = _pass(model, torch.flip(volumes, dims=(-1,))).probs
    ap = _pass(model, torch.flip(volumes, dims=(-2,))).probs
    assert np.abs(plain - lr).max() > 1e-6  # the transform changes what the model sees
    np.testing.assert_allclose(_pass(model, volumes, ["flip_lr"]).probs, (plain + lr) / 2, atol=1e-12)
    np.testing.assert_allclose(_pass(model, volumes, ["flip_lr", "flip_ap"]).probs, (plain + lr + ap) / 3, atol=1e-12)


def test_unknown_or_repeated_transform_is_a_user_error():
    with pytest.raises(UserError, match="evaluation.tta: unknown transform 'rot90'; expected some of flip_lr"):
        check_tta(["rot90"])
    with pytest.raises(UserError, match="twice"):
        check_tta(["flip_lr", "flip_lr"])


def test_evaluate_reports_each_volume_model_with_tta_and_its_paired_test(tiny_run, tmp_path):
    from ich3d.evaluation.evaluate import evaluate_run

    tiny = copy_tiny_run(tiny_run, tmp_path, stages=("slice", "finetune"), evaluation={"tta": ["flip_lr"]})
    result = evaluate_run(tiny.run_dir, methods=["max", "finetune"], progress=False, device="cpu", tracking=False)
    test = pd.read_csv(result.out_dir / "predictions.csv", dtype={"key": str})
    assert list(test.columns) == ["key", "label", "max", "finetune", "finetune+flip_lr"]
    val = pd.read_csv(result.out_dir / "val_predictions.csv", dtype={"key": str})
    assert "finetune+flip_lr" in val.columns
    assert not np.allclose(test["finetune"], test["finetune+flip_lr"])
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    (t,) = metrics["tta_tests"]
    assert (t["method"], t["plain"]) == ("finetune+flip_lr", "finetune")
    aucs = metrics["delong"]
    by_name = {m["name"]: m["auc"] for m in aucs["models"]}
    assert t["auc"] == pytest.approx(by_name["finetune+flip_lr"])
    assert t["diff"] == pytest.approx(by_name["finetune+flip_lr"] - by_name["finetune"])
    assert t["diff_ci_lower"] <= t["diff"] <= t["diff_ci_upper"]
    assert "## Test-time augmentation" in (result.out_dir / "report.md").read_text()
