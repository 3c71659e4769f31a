"""``ich3d export`` and ``ich3d predict PKG`` on the tiny run: layout, MONAI tooling, parity, tampering."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import copy_tiny_run

from ich3d.cli.main import main
from ich3d.deploy.export import PARITY_TOL, export_run
from ich3d.deploy.package import (
    ICH3D,
    MANIFEST,
    METADATA,
    open_package,
    sha256_file,
    write_manifest,
)
from ich3d.deploy.predict import predict_package
from ich3d.deploy.runtime import load_models
from ich3d.errors import UserError
from ich3d.evaluation.evaluate import evaluate_run

#: MONAI's bundle metadata schema: required top-level fields, and those of network_data_format's items
MONAI_REQUIRED = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                  "required_packages_version", "task", "description", "authors", "copyright", "network_data_format")
MONAI_INPUT = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def")
MONAI_OUTPUT = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_onehot", "channel_def")


@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    run = copy_tiny_run(tiny_run, tmp_path_factory.mktemp("export"))
    evaluate_run(run.run_dir, device="cpu", progress=False, tracking=False)
    return run


@pytest.fixture(scope="module")
def pkg(tiny) -> Path:
    out = tiny.root / "pkg"
    assert main(["export", str(tiny.run_dir), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def predictions(tiny, pkg) -> dict[str, Path]:
    """``predict RUN_DIR`` and ``predict PKG`` (each runtime) on the run's DICOM folder."""
    root = tiny.root / "predictions"
    outs = {name: root / name for name in ("run", "weights", "torchscript", "onnx")}
    common = ["--device", "cpu", "--no-progress"]
    assert main(["predict", str(tiny.run_dir), str(tiny.images), "--out", str(outs["run"]), *common]) == 0
    assert main(["predict", str(pkg), str(tiny.images), "--out", str(outs["weights"]), *common]) == 0
    cache = outs["weights"] / "cache"  # the same volumes, ingested once more by predict PKG
    for rt in ("torchscript", "onnx"):
        assert main(["predict", str(pkg), str(cache), "--out", str(outs[rt]), "--runtime", rt, *common]) == 0
    return outs


def _copy(pkg: Path, dest: Path) -> Path:
    shutil.copytree(pkg, dest)
    return dest


def _rehash(root: Path) -> None:
    """Make a tampered package self-consistent: ich3d.json's weight hashes and the manifest recomputed."""
    spec = json.loads((root / ICH3D).read_text())
    for entry in spec["models"].values():
        entry["sha256"] = {k: sha256_file(root / v) for k, v in entry["files"].items()}
    (root / ICH3D).write_text(json.dumps(spec))
    write_manifest(root)


def test_package_layout_and_contents(tiny, pkg):
    manifest = json.loads((pkg / MANIFEST).read_text())["files"]
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/ich3d.json", "docs/README.md", "LICENSE",
                "models/model.safetensors", "models/model.ts", "models/model.onnx",
                "models/slice_model.safetensors", "models/slice_model.ts", "models/slice_model.onnx"):
        assert manifest[rel] == sha256_file(pkg / rel)
    spec = json.loads((pkg / ICH3D).read_text())
    assert spec["models"]["volume"]["stage"] == "finetune" and spec["models"]["slice"]["stage"] == "slice"
    assert spec["inputs"]["windows"] == [[40.0, 80.0], [80.0, 200.0], [40.0, 380.0]]
    assert spec["inputs"]["depth_pool"] == 2 and spec["inputs"]["image_size"] == [32, 32]
    assert spec["inputs"]["hu_clip"] == [-1024, 3071] and spec["targets"] == ["any"]
    metrics = json.loads((tiny.run_dir / "evaluation" / "metrics.json").read_text())
    assert spec["evaluation"]["operating_points"] == metrics["operating_points"]["finetune"]
    assert spec["evaluation"]["auc"]["finetune"]["auc"] == pytest.approx(metrics["per_method"]["finetune"]["auc"])
    readme = (pkg / "docs" / "README.md").read_text()
    assert f"{metrics['per_method']['finetune']['auc']:.3f}" in readme and "Provenance" in readme
    assert "non-commercial" in (pkg / "LICENSE").read_text()
    # no path or identifier of the run leaks into the package's text files
    for rel in ("configs/ich3d.json", "configs/metadata.json", "docs/README.md"):
        assert str(tiny.root) not in (pkg / rel).read_text()


def test_metadata_has_monai_schema_fields(pkg):
    """``monai.bundle.verify_metadata`` downloads its schema (no network here): its required fields, by hand."""
    meta = json.loads((pkg / METADATA).read_text())
    assert [k for k in MONAI_REQUIRED if k not in meta] == []
    assert meta["pytorch_version"] == torch.__version__.split("+")[0] and meta["numpy_version"] == np.__version__
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert [k for k in MONAI_INPUT if k not in image] == [] and [k for k in MONAI_OUTPUT if k not in pred] == []
    assert image["format"] == "hounsfield" and image["num_channels"] == 3 and image["spatial_shape"] == ["*", 32, 32]
    assert pred["type"] == "probabilities" and pred["num_channels"] == 1 and "any" in pred["channel_def"]["0"]


def test_monai_config_parser_builds_and_loads_the_network(pkg):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(pkg / "configs" / "inference.json"))
    parser["bundle_root"] = str(pkg)
    net = parser.get_parsed_content("network")
    parser.get_parsed_content("initialize")  # loads the safetensors weights
    ts = parser.get_parsed_content("network_ts")
    eager, _ = load_models(open_package(pkg), "weights")
    x = torch.rand(1, 6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = eager(x)
        assert torch.equal(net(x), want)
        assert float((ts(x) - want).abs().max()) <= PARITY_TOL


def test_every_runtime_and_the_checkpoint_agree(predictions):
    for name in ("volumes.csv", "slices.csv"):
        ref = pd.read_csv(predictions["run"] / name, dtype={"key": str})
        assert len(ref) > 10
        for rt in ("weights", "torchscript", "onnx"):
            got = pd.read_csv(predictions[rt] / name, dtype={"key": str})
            assert list(got.columns) == list(ref.columns)
            assert list(got["key"]) == list(ref["key"])
            diff = np.abs(got["probability"].to_numpy() - ref["probability"].to_numpy())
            assert diff.max() <= PARITY_TOL, (name, rt, diff.max())
    summary = json.loads((predictions["onnx"] / "predict.json").read_text())
    assert summary["runtime"] == "onnx" and summary["stage"] == "finetune" and summary["n_volumes"] == len(ref.key.unique())


def _refused(capsys, pkg: Path, tmp_path: Path, *extra: str) -> str:
    rc = main(["predict", str(pkg), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("ich3d: error: "), err
    return err[0]


@pytest.mark.parametrize("tamper", ["weights", "metadata", "manifest", "unlisted"])
def test_tampered_package_is_refused(pkg, tmp_path, capsys, tamper):
    bad = _copy(pkg, tmp_path / "pkg")
    (tmp_path / "in").mkdir()
    if tamper == "weights":
        path = bad / "models" / "model.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif tamper == "metadata":
        spec = json.loads((bad / ICH3D).read_text())
        spec["inputs"]["windows"][0] = [50.0, 80.0]
        (bad / ICH3D).write_text(json.dumps(spec))
    elif tamper == "manifest":
        manifest = json.loads((bad / MANIFEST).read_text())
        manifest["files"]["models/model.onnx"] = "0" * 64
        (bad / MANIFEST).write_text(json.dumps(manifest))
    else:
        (bad / "models" / "extra.bin").write_bytes(b"x")
    line = _refused(capsys, bad, tmp_path)
    want = {"weights": "model.safetensors", "metadata": "ich3d.json", "manifest": "model.onnx", "unlisted": "extra.bin"}
    assert want[tamper] in line


def test_a_consistently_edited_spec_is_refused(pkg, tmp_path, capsys):
    """Hashes recomputed after editing the model spec: the weights' header names another spec."""
    bad = _copy(pkg, tmp_path / "pkg")
    (tmp_path / "in").mkdir()
    spec = json.loads((bad / ICH3D).read_text())
    spec["models"]["volume"]["spec"]["head"]["hidden"] = 16
    (bad / ICH3D).write_text(json.dumps(spec))
    _rehash(bad)
    assert "another model spec" in _refused(capsys, bad, tmp_path)


class _Payload:
    """Unpickling this writes a marker file (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.write_text, (self.marker, "pwned"))


def test_a_malicious_pickle_is_never_unpickled(tiny, pkg, tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    # 1. a pickle in place of the weights, every hash made consistent: refused, never loaded
    bad = _copy(pkg, tmp_path / "pkg")
    (tmp_path / "in").mkdir()
    (bad / "models" / "model.safetensors").write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    _rehash(bad)
    assert "not a safetensors file" in _refused(capsys, bad, tmp_path)
    assert not marker.exists()
    # 2. a pickled model.pt beside the weights, listed in the manifest: the default path never reads it
    extra = _copy(pkg, tmp_path / "pkg2")
    (extra / "models" / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    write_manifest(extra)
    got = predict_package(extra, tiny.cache, tmp_path / "out2", device="cpu", progress=False)
    assert got["n_volumes"] > 0 and not marker.exists()
    pickle.loads((extra / "models" / "model.pt").read_bytes())  # the payload is real: loading it would run it
    assert marker.exists()


def test_export_and_predict_errors(tiny, pkg, tmp_path, capsys):
    with pytest.raises(UserError, match="not empty"):
        export_run(tiny.run_dir, pkg)
    assert main(["predict", str(tiny.run_dir), str(tiny.cache), "--runtime", "onnx", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--runtime goes with a package" in capsys.readouterr().err
    assert main(["predict", str(pkg), str(tiny.cache), "--methods", "max", "--out", str(tmp_path / "o")]) == 2
    assert "--methods needs a run directory" in capsys.readouterr().err
    with pytest.raises(UserError, match="inside the package"):
        predict_package(pkg, tiny.cache, pkg / "out")
    assert not (tmp_path / "o").exists()


def test_export_wandb_logs_the_verified_package_as_a_model_artifact(tiny, tmp_path):
    """``--wandb``: one ``export`` run in the run's group, the package's files as a hashed ``model`` artifact."""
    import wandb

    from ich3d.tracking.offline import read_offline_run

    out = tmp_path / "pkg"
    assert main(["export", str(tiny.run_dir), "--out", str(out), "--wandb"]) == 0
    wandb.teardown()  # the service writes the offline log asynchronously: wait for it
    assert not list(out.glob("wandb")), "W&B files must not enter the package (its manifest lists every file)"
    open_package(out)  # still verifies
    (offline,) = (tmp_path / "pkg.wandb" / "wandb").glob("offline-run-*")
    wb = read_offline_run(offline)
    assert wb["run"]["job_type"] == "export" and wb["run"]["group"] == tiny.run_dir.name
    (artifact,) = wb["artifacts"]
    assert artifact["type"] == "model" and artifact["name"].startswith("package-")
    assert "tiny" not in artifact["name"]
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(artifact["files"]) == sorted([*manifest, MANIFEST])
    spec = json.loads((out / ICH3D).read_text())
    meta = artifact["metadata"]
    assert meta["models"]["volume"]["stage"] == spec["models"]["volume"]["stage"]
    assert meta["test_auc"] == {m: a["auc"] for m, a in spec["evaluation"]["auc"].items()}
    assert set(artifact["aliases"]) >= {"latest", spec["models"]["volume"]["stage"]}
    sent = json.dumps(wb)
    for leak in (str(tiny.root), tiny.images.name):  # no path or data folder name travels
        assert leak not in sent
