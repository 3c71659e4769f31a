"""The six RSNA labels as targets: config, weighted BCE, the challenge's log loss, six-output stages."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from _train_helpers import make_cache, run_cli, tiny_raw_config, write_config
from sklearn.metrics import log_loss

from ich3d.config import config_from_dict
from ich3d.data.schema import LABEL_COLUMNS, SUBTYPES
from ich3d.data.splits import load_or_create_splits
from ich3d.data.targets import RSNA_TARGETS, resolve_targets, target_weights
from ich3d.errors import UserError
from ich3d.runs.checkpoints import load_checkpoint, load_slice_model, load_volume_model
from ich3d.runs.run_dir import open_run_dir
from ich3d.stats.log_loss import per_target_log_loss, weighted_log_loss
from ich3d.training.runner import build_module, build_trainer

BLEEDS = SUBTYPES[:5]
SIX_FRACTIONS = (0.4, 0.4, 0.2)


# --------------------------------------------------------------------------- the metric


def test_weighted_log_loss_by_hand():
    y = np.array([[1, 0], [0, 0]])
    p = np.array([[0.8, 0.3], [0.4, 0.1]])
    w = [1.0, 2.0]
    # sum_ik w_k * ll_ik / (N * sum_k w_k)
    hand = (-math.log(0.8) - 2 * math.log(0.7) - math.log(0.6) - 2 * math.log(0.9)) / (2 * 3)
    assert weighted_log_loss(y, p, w) == pytest.approx(hand, rel=1e-14)
    np.testing.assert_allclose(
        per_target_log_loss(y, p), [(-math.log(0.8) - math.log(0.6)) / 2, (-math.log(0.7) - math.log(0.9)) / 2]
    )
    # unweighted = plain mean over every (sample, target)
    assert weighted_log_loss(y, p) == pytest.approx(log_loss(y.ravel(), p.ravel()), rel=1e-14)


def test_weighted_log_loss_is_sklearns_with_sample_weights():
    rng = np.random.default_rng(3)
    n, k = 200, 6
    y = (rng.random((n, k)) < 0.3).astype(int)
    p = rng.random((n, k))
    p[0, 0], p[1, 1], p[2, 2] = 0.0, 1.0, 1.0  # clipped as scikit-learn clips
    y[1, 1], y[2, 2] = 1, 0
    w = np.array([1, 1, 1, 1, 1, 2.0])
    ref = log_loss(y.ravel(), p.ravel(), sample_weight=np.tile(w, n), labels=[0, 1])
    assert weighted_log_loss(y, p, w) == pytest.approx(ref, rel=1e-12)
    assert np.isfinite(weighted_log_loss(y, p, w))
    with pytest.raises(ValueError, match="weights"):
        weighted_log_loss(y, p, [1, 2])
    with pytest.raises(ValueError, match="0 or 1"):
        weighted_log_loss(y + 1, p)


# --------------------------------------------------------------------------- config


def test_targets_config(tmp_path):
    assert resolve_targets(None) is None
    assert resolve_targets("all") == RSNA_TARGETS == (
        "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any",
    )
    assert resolve_targets(["subdural", "any"]) == ("subdural", "any")
    assert target_weights(RSNA_TARGETS) == (1, 1, 1, 1, 1, 2)
    assert target_weights(("subdural", "any"), {"any": 1}) == (1, 1)
    c = config_from_dict({"data": {"targets": "all", "target_weights": {"subdural": 3}}})
    assert c.data.targets == "all"
    for bad, msg in [
        ({"data": {"targets": ["subdurall"]}}, "unknown label 'subdurall'"),
        ({"data": {"targets": ["any", "any"]}}, "repeats"),
        ({"data": {"target_weights": {"any": 1}}}, "needs 'data.targets'"),
        ({"data": {"targets": "all", "target_weights": {"any": -1}}}, ">= 0"),
        ({"data": {"targets": ["any"], "target_weights": {"subdural": 1}}}, "not a target"),
        ({"stages": {"slice": {"select_by": "log_loss"}}}, "needs 'data.targets'"),
        ({"stages": {"slice": {"select_by": "loss"}}}, "expects one of"),
    ]:
        with pytest.raises(UserError, match=msg):
            config_from_dict(bad)


def test_weighted_bce_of_the_module(tmp_path):
    cache = make_cache(tmp_path, patients=4)
    config = config_from_dict(tiny_raw_config(cache, tmp_path, data={"targets": "all"}))
    module = build_module(config, "slice")
    assert module.num_targets == 6 and module.primary == 5
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0, 0.5, 1.0], [-0.2, 0.1, 0.0, -3.0, 1.5, -0.5]])
    y = torch.tensor([[0, 0, 1, 0, 1, 1], [1, 0, 0, 0, 0, 1]], dtype=torch.float32)
    p = torch.sigmoid(logits).numpy().astype(np.float64)
    w = np.array([1, 1, 1, 1, 1, 2.0])
    hand = weighted_log_loss(y.numpy(), p, w)
    assert float(module._loss(logits, y)) == pytest.approx(hand, rel=1e-6)
    # the binary default: plain BCE, one logit
    binary = build_module(config_from_dict(tiny_raw_config(cache, tmp_path)), "slice")
    assert binary.targets is None and binary.model.classifier.out_features == 1


# --------------------------------------------------------------------------- six-output training


def _plant_subtypes(cache_dir) -> None:
    """Give each positive volume of the fake cache one bleed subtype, cycling per split.

    The bleed of subtype ``k`` (epidural ... subdural) is drawn brighter for higher
    ``k``; every split's positives cycle through the five subtypes, so each is present
    in the validation split.
    """
    vols = pd.read_csv(cache_dir / "volumes.csv", dtype={"key": str, "patient_id": str})
    slices = pd.read_csv(cache_dir / "slices.csv", dtype={"key": str, "patient_id": str})
    splits = load_or_create_splits(cache_dir, vols, fractions=SIX_FRACTIONS, seed=0)
    subtype_of = {}
    for split in ("train", "val", "test"):
        pos = sorted(k for k in splits.keys[split] if int(vols.set_index("key").loc[k, "any"]) == 1)
        for i, key in enumerate(pos):
            subtype_of[key] = BLEEDS[i % 5]
    for key, subtype in subtype_of.items():
        k = BLEEDS.index(subtype)
        vol = np.load(cache_dir / "volumes" / f"{key}.npy")
        rows = slices.index[(slices["key"] == key) & (slices["any"] == 1)]
        for r in rows:
            sl = vol[int(slices.loc[r, "slice_index"])]
            sl[sl == 75] = 60 + 12 * k
        np.save(cache_dir / "volumes" / f"{key}.npy", vol)
        for name in BLEEDS:
            slices.loc[rows, name] = int(name == subtype)
            vols.loc[vols["key"] == key, name] = int(name == subtype)
    slices[list(LABEL_COLUMNS)] = slices[list(LABEL_COLUMNS)].astype(int)
    vols.to_csv(cache_dir / "volumes.csv", index=False)
    slices.to_csv(cache_dir / "slices.csv", index=False)


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    cache = make_cache(root, patients=28)
    _plant_subtypes(cache)
    raw = tiny_raw_config(
        cache,
        root,
        data={"targets": "all", "split_fractions": list(SIX_FRACTIONS)},
        stages={
            "slice": {"batch_size": 10, "samples_per_epoch": 100, "max_epochs": 4, "lr": 1e-3, "augment": False},
            # augment off: the frozen CNN's features are cached (exact), targets ride along
            "sequence": {"samples_per_epoch": 8, "max_epochs": 1, "select_by": "log_loss", "augment": False},
        },
    )
    cfg = write_config(root / "six.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "r") == 0
    assert run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "r") == 0
    return root, cache, open_run_dir(root / "runs" / "tiny" / "r")


def test_six_output_slice_stage_learns_every_subtype(six):
    _, _, run = six
    result = json.loads(run.result_path("slice").read_text())
    metrics = result["best_val_metrics"]
    assert set(metrics) == {*(f"auc_{t}" for t in RSNA_TARGETS), "mean_auc", "log_loss"}
    for t in RSNA_TARGETS:  # slice level, on the validation split where every subtype is present
        assert metrics[f"auc_{t}"] > 0.5, (t, metrics)
    assert result["best_val_auc"] == metrics["auc_any"]
    assert metrics["mean_auc"] == pytest.approx(np.mean([metrics[f"auc_{t}"] for t in RSNA_TARGETS]))
    ckpt = load_checkpoint(run.best_ckpt("slice"))
    assert ckpt["ich3d"]["inputs"]["targets"] == list(RSNA_TARGETS)
    assert ckpt["hyper_parameters"]["model"]["targets"] == list(RSNA_TARGETS)
    assert ckpt["hyper_parameters"]["target_weights"] == [1, 1, 1, 1, 1, 2]
    logged = pd.read_csv(run.stage_dir("slice") / "metrics.csv")
    assert {"val/auc_epidural", "val/mean_auc", "val/log_loss"} <= set(logged.columns)
    model = load_slice_model(run.path)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 6)


def test_six_output_sequence_stage_selected_by_log_loss(six):
    _, _, run = six
    result = json.loads(run.result_path("sequence").read_text())
    assert (run.stage_dir("sequence") / "features").is_dir()
    logged = pd.read_csv(run.stage_dir("sequence") / "metrics.csv")
    assert result["best_val_metrics"]["log_loss"] == pytest.approx(logged["val/log_loss"].min(), rel=1e-6)
    model, _ = load_volume_model(run.path, "sequence")
    out = model(torch.zeros(1, 4, 3, 32, 32), torch.tensor([4]))
    assert out.shape == (1, 6)
    # the frozen encoder is the stage-1 CNN's
    slice_enc = load_slice_model(run.path).encoder.state_dict()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, slice_enc[k])


def test_selection_metric_mode(six, tmp_path):
    root, cache, run = six
    raw = tiny_raw_config(cache, root, data={"targets": "all"}, stages={"slice": {"select_by": "log_loss"}})
    trainer = build_trainer(config_from_dict(raw), "slice", run)
    ckpt_cb = [c for c in trainer.callbacks if getattr(c, "filename", None) == "best"][0]
    assert (ckpt_cb.monitor, ckpt_cb.mode) == ("val/log_loss", "min")
    trainer = build_trainer(config_from_dict(tiny_raw_config(cache, root)), "slice", run)
    ckpt_cb = [c for c in trainer.callbacks if getattr(c, "filename", None) == "best"][0]
    assert (ckpt_cb.monitor, ckpt_cb.mode) == ("val/auc", "max")


def test_six_label_stage_refuses_a_binary_checkpoint(six, capsys):
    root, cache, _ = six
    fr = {"split_fractions": list(SIX_FRACTIONS)}
    binary = write_config(root / "binary.yaml", tiny_raw_config(cache, root, data=fr))
    assert run_cli("train", str(binary), "--stage", "slice", "--run-id", "b") == 0
    six_cfg = write_config(root / "six-b.yaml", tiny_raw_config(cache, root, data={"targets": "all", **fr}))
    capsys.readouterr()
    assert run_cli("train", str(six_cfg), "--stage", "sequence", "--run-id", "b") == 2
    err = capsys.readouterr().err
    assert "targets: trained on ['any'], now ['epidural'" in err
    assert not (root / "runs" / "tiny" / "b" / "sequence").exists()


# --------------------------------------------------------------------------- binary default unchanged


def test_binary_default_pinned(tmp_path):
    """The binary default trains exactly as before targets existed (numbers of the code before)."""
    cache = make_cache(tmp_path, patients=12)
    cfg = write_config(tmp_path / "tiny.yaml", tiny_raw_config(cache, tmp_path))
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "p") == 0
    assert run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "p") == 0
    run = open_run_dir(tmp_path / "runs" / "tiny" / "p")
    got = {}
    for stage in ("slice", "sequence"):
        ckpt = load_checkpoint(run.best_ckpt(stage))
        logged = pd.read_csv(run.stage_dir(stage) / "metrics.csv")
        got[stage] = (
            ckpt["ich3d"]["val_auc"],
            float(logged["val/loss"].dropna().iloc[-1]),
            float(sum(v.double().sum() for v in ckpt["state_dict"].values() if v.is_floating_point())),
        )
    for stage, (auc, loss, weights) in PINNED_BINARY.items():
        assert got[stage][0] == pytest.approx(auc, abs=1e-7), stage
        assert got[stage][1] == pytest.approx(loss, rel=1e-5), stage
        assert got[stage][2] == pytest.approx(weights, rel=1e-6), stage


#: measured with the code before this change (commit 2504151), same test
PINNED_BINARY = {
    "slice": (0.13333332538604736, 0.647385835647583, -63.91965618726667),
    "sequence": (0.8333333730697632, 0.6945056915283203, -34.88860406188164),
}


# --------------------------------------------------------------------------- splits


def _subtype_volumes(per_subtype: int = 3, negatives: int = 15) -> pd.DataFrame:
    rows = []
    for k, subtype in enumerate(BLEEDS):
        for i in range(per_subtype):
            rows.append({"patient_id": f"P{k}{i}", "key": f"{k}{i:03d}", **{t: int(t == subtype) for t in BLEEDS}, "any": 1})
    for i in range(negatives):
        rows.append({"patient_id": f"N{i:02d}", "key": f"9{i:03d}", **dict.fromkeys(BLEEDS, 0), "any": 0})
    return pd.DataFrame(rows)


def test_splits_stratified_by_subtype_when_subtypes_are_trained(tmp_path):
    from ich3d.data.splits import make_splits

    vols = _subtype_volumes()
    subtype_of = {r.patient_id: next((t for t in BLEEDS if getattr(r, t)), None) for r in vols.itertuples()}
    missing_without = 0
    for seed in range(10):
        with_sub = make_splits(vols, fractions=(0.6, 0.2, 0.2), seed=seed, subtypes=True)
        assert with_sub.stratified_by == "subtypes" and with_sub.to_json()["stratified_by"] == "subtypes"
        for split in ("train", "val", "test"):
            present = {subtype_of[p] for p in with_sub.patients[split]} - {None}
            assert present == set(BLEEDS), (seed, split)
            assert sum(subtype_of[p] is None for p in with_sub.patients[split]) >= 3
        plain = make_splits(vols, fractions=(0.6, 0.2, 0.2), seed=seed)
        assert plain.stratified_by is None and "stratified_by" not in plain.to_json()
        missing_without += any(
            {subtype_of[p] for p in plain.patients[s]} - {None} != set(BLEEDS) for s in ("val", "test")
        )
    assert missing_without > 0  # stratifying by `any` alone leaves subtypes out of some splits


# --------------------------------------------------------------------------- evaluation


def test_evaluate_six_label_run_per_target(six, tmp_path):
    from ich3d.evaluation.evaluate import evaluate_run
    from ich3d.evaluation.report.wandb import summary_metrics

    _, _, run = six
    res = evaluate_run(run.path, out=tmp_path / "e", progress=False, device="cpu", tracking=False)
    m = res.report.metrics
    pt = m["per_target"]
    assert pt["targets"] == list(RSNA_TARGETS) and pt["weights"] == [1, 1, 1, 1, 1, 2]
    # `any` is the binary evaluation's label: its per-target AUCs are the main table's
    for method in ("max", "p95", "sequence"):
        assert pt["volume"]["any"]["methods"][method]["auc"] == pytest.approx(m["per_method"][method]["auc"], abs=1e-12)
    # every target's AUC is DeLong's on its predictions_<target>.csv
    from ich3d.stats.delong import delong_roc

    for t in RSNA_TARGETS:
        f = pd.read_csv(tmp_path / "e" / f"predictions_{t}.csv", dtype={"key": str})
        assert list(f.columns) == ["key", "label", "max", "p95", "svm", "sequence"]
        assert len(f) == m["n_volumes"]
        if f["label"].nunique() == 2:
            ref = delong_roc(f["label"], f["max"], strict=False).models[0].auc
            assert pt["volume"][t]["methods"]["max"]["auc"] == pytest.approx(ref, abs=1e-12)
    # max over slices of the per-target slice probabilities
    sl = pd.read_csv(tmp_path / "e" / "slice_predictions_targets.csv", dtype={"key": str})
    f = pd.read_csv(tmp_path / "e" / "predictions_subdural.csv", dtype={"key": str}).set_index("key")
    mx = sl.groupby("key")["p_subdural"].max()
    np.testing.assert_allclose(f["max"].to_numpy(), mx.loc[f.index].to_numpy(), rtol=0, atol=1e-12)
    # the slice-level log loss is the challenge metric on those slices
    y = sl[list(RSNA_TARGETS)].to_numpy()
    p = sl[[f"p_{t}" for t in RSNA_TARGETS]].to_numpy()
    ref = log_loss(y.ravel(), p.ravel(), sample_weight=np.tile([1, 1, 1, 1, 1, 2.0], len(y)), labels=[0, 1])
    assert pt["slice"]["log_loss"] == pytest.approx(ref, rel=1e-10)
    assert "## Per target" in res.report.markdown and "weighted log loss" in res.report.markdown
    # the per-target paired tests are in the report, with the p of metrics.json
    pair = next(p for p in pt["volume"]["any"]["pairs"] if (p["a"], p["b"]) == ("max", "sequence"))
    row = next(line for line in res.report.markdown.splitlines() if line.startswith("| max vs sequence |"))
    assert row.split(" | ")[len(RSNA_TARGETS)].startswith(f"{pair['p']:.3g} (")
    # operating points of `any` per target are those of the main table (same rule, same scores)
    ops = pt["operating_points"]["any"]
    for method in ("max", "sequence"):
        for rule in ("sensitivity", "youden"):
            assert ops[method][rule]["threshold"] == pytest.approx(m["operating_points"][method][rule]["threshold"])
    flat = summary_metrics(m)
    present = [t for t in BLEEDS if pt["volume"][t]["n_pos"] > 0]
    assert present
    for t in present:
        assert flat[f"eval/{t}/max/auc"] == pt["volume"][t]["methods"]["max"]["auc"]
    for t in set(BLEEDS) - set(present):  # a subtype absent from the split has no AUC
        assert pt["volume"][t]["methods"] == {} and f"eval/{t}/max/auc" not in flat
    assert flat["eval/slice/log_loss"] == pytest.approx(pt["slice"]["log_loss"])


# --------------------------------------------------------------------------- per-slice sequence outputs


def test_slice_label_arrays_pool_by_max(six):
    from ich3d.data.cache import IngestCache
    from ich3d.data.datasets import slice_label_arrays

    _, cache, _ = six
    c = IngestCache(cache)
    sl = c.slices
    key = str(sl.loc[sl["any"] == 1, "key"].iloc[0])
    raw = sl[sl["key"] == key].sort_values("slice_index")[["subdural", "any"]].to_numpy()
    got = slice_label_arrays(c, [key], ["subdural", "any"], depth_pool=2)[key]
    assert got.shape == (-(-len(raw) // 2), 2)
    for i in range(got.shape[0]):
        np.testing.assert_array_equal(got[i], raw[2 * i : 2 * i + 2].max(axis=0))
    assert got[:, 1].sum() >= 1


def test_per_slice_sequence_outputs(six, tmp_path):
    root, cache, _ = six
    raw = tiny_raw_config(
        cache, root,
        data={"targets": "all", "split_fractions": list(SIX_FRACTIONS)},
        model={"per_slice": True},
        stages={"slice": {"samples_per_epoch": 20, "max_epochs": 1},
                "sequence": {"samples_per_epoch": 6, "max_epochs": 1, "augment": False}},
    )
    cfg = write_config(root / "per-slice.yaml", raw)
    assert run_cli("train", str(cfg), "--stage", "slice", "--run-id", "ps") == 0
    assert run_cli("train", str(cfg), "--stage", "sequence", "--run-id", "ps") == 0
    run = open_run_dir(root / "runs" / "tiny" / "ps")
    model, _ = load_volume_model(run.path, "sequence")
    assert model.head.per_slice
    x, lengths = torch.rand(2, 5, 3, 32, 32), torch.tensor([5, 3])
    with torch.no_grad():
        sl = model.slice_logits(x, lengths)
        vol = model(x, lengths)
    assert sl.shape == (2, 5, 6) and torch.isinf(sl[1, 3:]).all()
    torch.testing.assert_close(vol, torch.stack([sl[0].amax(0), sl[1, :3].amax(0)]))
    # the loss is the weighted BCE over the real slices, against the pooled slice labels
    config = config_from_dict(raw)
    module = build_module(config, "sequence")
    assert module.model.head.per_slice and module.per_slice
    module.model.load_state_dict(model.state_dict())
    module.eval()
    from ich3d.training.runner import build_volume_datamodule

    dm = build_volume_datamodule(config, stage="sequence", augment=False)
    dm.setup("fit")
    batch = next(iter(dm.eval_dataloader("val")))
    assert batch["slice_target"].shape == (1, int(batch["length"][0]), 6)
    with torch.no_grad():
        logits, y = module._outputs(batch)
        loss = float(module._batch_loss(batch, logits, y))
        p = torch.sigmoid(model.slice_logits(batch["volume"], batch["length"]))[0].numpy()
    hand = weighted_log_loss(batch["slice_target"][0].numpy(), p.astype(np.float64), [1, 1, 1, 1, 1, 2])
    assert loss == pytest.approx(hand, rel=1e-5)
    # evaluation: the slice-level challenge metric of the per-slice sequence model too
    from ich3d.evaluation.evaluate import evaluate_run

    res = evaluate_run(run.path, out=tmp_path / "e", progress=False, device="cpu", tracking=False)
    pt = res.report.metrics["per_target"]
    ps = pt["slice_methods"]["sequence"]
    assert ps["n_slices"] == pt["slice"]["n_slices"] and 0 < ps["log_loss"] < 5
    assert "`sequence` (per-slice outputs)" in res.report.markdown
    # its value from the model's own slice outputs, each pooled slice standing for its 2 slices
    test_keys = list(pd.read_csv(tmp_path / "e" / "predictions_any.csv", dtype={"key": str})["key"])
    from ich3d.data.cache import IngestCache

    dm = build_volume_datamodule(config, stage="sequence", augment=False)
    dm.setup("test")
    labels = IngestCache(cache).slices.set_index(["key", "slice_index"])[list(RSNA_TARGETS)]
    ys, ps_ = [], []
    with torch.no_grad():
        for b in dm.volume_loader(test_keys):
            prob = torch.sigmoid(model.slice_logits(b["volume"], b["length"]).double())[0].numpy()
            n = int(labels.loc[b["key"][0]].shape[0])
            ys.append(labels.loc[b["key"][0]].to_numpy())
            ps_.append(np.repeat(prob, 2, axis=0)[:n])
    ref = weighted_log_loss(np.concatenate(ys), np.concatenate(ps_), [1, 1, 1, 1, 1, 2])
    assert ps["log_loss"] == pytest.approx(ref, rel=1e-6)


# --------------------------------------------------------------------------- submission


def test_rsna_submission_on_a_synthetic_test_folder(six, tmp_path, capsys):
    from ich3d.synth import NO_DEFECTS, generate

    _, _, run = six
    synth = tmp_path / "synth"
    generate(synth, patients=3, size=64, slices=(6, 8), studies=(1, 1), seed=5, defects=NO_DEFECTS, progress=False)
    test_dir = synth / "stage_2_train"  # the generator's folder, used unlabelled as a test folder
    (test_dir / "ID_0000broken.dcm").write_bytes(b"not a dicom file")  # cannot be ingested
    files = sorted(p for p in test_dir.rglob("*") if p.is_file())
    expected = {p.name[:-4] for p in files}
    out = tmp_path / "pred"
    assert run_cli("predict", str(run.path), str(test_dir), "--out", str(out), "--device", "cpu",
                   "--no-progress", "--format", "rsna") == 0
    assert "not ingested" in capsys.readouterr().out
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["ID", "Label"]
    assert len(sub) == 6 * len(files) and sub["ID"].is_unique
    want = {f"{i}_{t}" for i in expected for t in RSNA_TARGETS}
    assert set(sub["ID"]) == want
    assert sub["Label"].between(0, 1).all()
    fb = pd.read_csv(out / "submission_fallback.csv")
    assert list(fb["image_id"]) == ["ID_0000broken"] and fb["reason"].iloc[0]
    info = json.loads((out / "predict.json").read_text())["submission"]
    # the broken file gets the documented fallback: the mean of each target over the ingested images
    sl = sub.set_index("ID")["Label"]
    for t in RSNA_TARGETS:
        ingested = sl[[f"{i}_{t}" for i in expected if i != "ID_0000broken"]]
        assert sl[f"ID_0000broken_{t}"] == pytest.approx(ingested.mean(), rel=1e-9)
        assert info["fallback"][t] == pytest.approx(ingested.mean(), rel=1e-9)
    # the values are the stage-1 CNN's: `any` equals slices.csv's probability of that image
    slices = pd.read_csv(out / "slices.csv", dtype={"key": str})
    cache = pd.read_csv(out / "cache" / "slices.csv", dtype={"key": str})
    merged = slices.merge(cache[["key", "slice_index", "image_id"]], on=["key", "slice_index"])
    np.testing.assert_allclose(sl[[f"{i}_any" for i in merged["image_id"]]].to_numpy(), merged["probability"],
                               rtol=0, atol=1e-12)


def test_rsna_submission_needs_six_labels(tmp_path, capsys):
    from _eval_helpers import make_tiny_run

    tiny = make_tiny_run(tmp_path, stages=("slice",), patients=4)
    assert run_cli("predict", str(tiny.run_dir), str(tiny.cache), "--format", "rsna", "--device", "cpu",
                   "--no-progress") == 2
    assert "needs a run trained on the six RSNA labels" in capsys.readouterr().err


def test_a_single_target_list(tmp_path):
    cache = make_cache(tmp_path, patients=4)
    config = config_from_dict(tiny_raw_config(cache, tmp_path, data={"targets": ["any"]}))
    module = build_module(config, "slice")
    assert module.num_targets == 1 and module.model.classifier.out_features == 1
    logits, y = torch.tensor([[0.5], [-1.0]]), torch.tensor([[1.0], [0.0]])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert float(module._loss(logits, y)) == pytest.approx(float(ref), rel=1e-6)


def test_slice_batches_carry_the_targets(tmp_path):
    from ich3d.training.runner import build_slice_datamodule

    cache = make_cache(tmp_path, patients=6)
    raw = tiny_raw_config(cache, tmp_path, data={"targets": "all"}, stages={"slice": {"val_samples": 6}})
    dm = build_slice_datamodule(config_from_dict(raw))
    dm.prepare_data()
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.eval_dataloader("test")):
        batch = next(iter(loader))
        assert batch["target"].shape == (len(batch["key"]), 6)
        np.testing.assert_array_equal(batch["target"][:, 5].numpy(), batch["label"].numpy())  # `any`
