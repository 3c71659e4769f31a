"""``ich3d predict PKG INPUT``: probabilities from an exported package alone (no run, no config).

The package is verified first (:func:`~ich3d.deploy.package.open_package`: every
file against ``manifest.json``). ``INPUT`` is ingested as for ``ich3d predict
RUN_DIR`` (a DICOM folder into ``OUT/cache``, or an ingest cache as it is), and
its volumes are read by the data layer's ``VolumeDataModule`` with the inputs
``configs/ich3d.json`` records (windows, 2.5D neighbours, depth pool, in-plane
size, label, targets), one volume per batch. The models come from the package by
``runtime`` (:mod:`ich3d.deploy.runtime`: the weights by default, nothing
unpickled) and run through the same passes as ``predict RUN_DIR``
(:func:`~ich3d.evaluation.inference.passes.predict_volumes`,
:func:`~ich3d.evaluation.inference.passes.predict_slices`), so the files have the
same columns and, for the same volumes, the same probabilities:

* ``volumes.csv``: ``key, n_slices, probability`` (+ ``label``, ``split`` where the
  cache has them, ``probability_<target>`` for several targets);
* ``slices.csv``: ``key, slice_index, probability`` of the slice CNN (+ per target, ``label``);
* ``predict.json``: the package, runtime, device, counts, timing;
* with ``dicom_out``: the DICOM results of every series
  (:mod:`ich3d.evaluation.prediction.dicom_out`), the model named by the package's
  ``name`` and provenance, its calls at the package's operating points.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ich3d.data.cache import atomic_write_csv, atomic_write_text, open_cache
from ich3d.data.datamodule import VolumeDataModule
from ich3d.data.ingest import run_ingest
from ich3d.data.targets import primary_index
from ich3d.deploy.package import Package, open_package
from ich3d.deploy.runtime import RUNTIMES, load_models
from ich3d.errors import UserError
from ich3d.evaluation.inference.passes import (
    hardware_info,
    predict_slices,
    predict_volumes,
    resolve_device,
)
from ich3d.evaluation.prediction.dicom_objects import version_text
from ich3d.evaluation.prediction.dicom_out import (
    DEFAULT_KEY_SLICES,
    DicomResultsWriter,
    ResultModel,
    check_dicom_out,
    operating_thresholds,
)
from ich3d.evaluation.prediction.explain import explain_volumes
from ich3d.evaluation.prediction.predict import UID_COLUMNS, volume_splits

__all__ = ["default_package_out", "package_result_model", "predict_package"]

log = logging.getLogger(__name__)


def default_package_out(input: Path) -> Path:
    """``./predict-<INPUT name>-<8 hex of the resolved INPUT path>`` (a package is never written into)."""
    resolved = input.expanduser().resolve()
    return Path.cwd() / f"predict-{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def _cache(pkg: Package, input: Path, out: Path, workers: int, progress: bool) -> tuple[Path, int | None]:
    if (input / "ingest.json").is_file():
        return input, None
    if out.resolve().is_relative_to(input.resolve()):
        raise UserError(f"--out {out} is inside INPUT {input}; choose an output folder outside INPUT")
    out.mkdir(parents=True, exist_ok=True)
    summary = run_ingest(
        input, None, out / "cache", workers=workers, min_slices=int(pkg.spec["inputs"]["min_slices"]), progress=progress
    )
    log.info("%s", summary.format())
    return out / "cache", summary.skipped_total


def _context(pkg: Package) -> int:
    """The 2.5D neighbours the package's models read (0 for packages from before 2.5D)."""
    return int(pkg.spec["inputs"].get("context_slices", 0))


def _datamodule(pkg: Package, cache_dir: Path, depth_pool: int) -> VolumeDataModule:
    spec = pkg.spec
    inputs = spec["inputs"]
    dm = VolumeDataModule(
        cache_dir,
        depth_pool=depth_pool,
        batch_size=1,
        augment=False,
        windows=[list(w) for w in inputs["windows"]],
        label=spec["label"],
        targets=spec["targets"] if spec.get("several_targets") else None,
        image_size=tuple(inputs["image_size"]),
        min_slices=int(inputs["min_slices"]),
        context_slices=_context(pkg),
    )
    dm.setup("predict")
    return dm


def _put_targets(frame: pd.DataFrame, keys: list[str], matrix: Any, targets: list[str]) -> None:
    for k, t in enumerate(targets):
        col = pd.Series([float(v) for v in matrix[:, k]], index=keys, dtype="float64")
        frame[f"probability_{t}"] = frame["key"].map(col).to_numpy()


def _volume_frame(pkg: Package, model: Any, cache: Any, dev: torch.device, primary: int | None, progress: bool,
                  uids: bool, info: dict[str, Any]) -> pd.DataFrame:
    dm = _datamodule(pkg, cache.root, int(pkg.spec["inputs"]["depth_pool"]))
    table = dm.split_table("predict")
    scores = predict_volumes(model, dm.eval_dataloader("predict"), dev, progress=progress, desc="volumes",
                             primary=primary)
    vol = table[["key", "n_slices"]].copy()
    vol["probability"] = vol["key"].map(pd.Series(scores.probs, index=scores.keys, dtype="float64")).to_numpy()
    if primary is not None and scores.target_probs is not None:
        _put_targets(vol, scores.keys, scores.target_probs, pkg.spec["targets"])
    if cache.labeled:
        vol["label"] = table["label"].to_numpy()
    splits = volume_splits(cache.root)
    if splits:
        vol["split"] = vol["key"].map(splits).fillna("none")
    if uids:
        ids = cache.volumes.set_index("key")
        for c in UID_COLUMNS:
            vol[c] = vol["key"].map(ids[c])
    info.update(n_volumes=len(vol), seconds_per_volume=float(scores.seconds.mean()))
    return vol


def _slice_frame(pkg: Package, model: Any, cache: Any, dev: torch.device, primary: int | None, progress: bool,
                 info: dict[str, Any]) -> pd.DataFrame:
    dm = _datamodule(pkg, cache.root, 1)
    outs = predict_slices(model, dm.eval_dataloader("predict"), dev, features=False, progress=progress,
                          desc="slice CNN", primary=primary)
    parts = []
    for i, (k, p) in enumerate(zip(outs.keys, outs.probs, strict=True)):
        part = pd.DataFrame({"key": k, "slice_index": range(len(p)), "probability": p})
        if primary is not None:
            for j, t in enumerate(pkg.spec["targets"]):
                part[f"probability_{t}"] = outs.target_probs[i][:, j]
        parts.append(part)
    sl = pd.concat(parts, ignore_index=True)
    if cache.labeled:
        lab = cache.slices[["key", "slice_index", pkg.spec["label"]]].rename(columns={pkg.spec["label"]: "label"})
        sl = sl.merge(lab, on=["key", "slice_index"], how="left", validate="one_to_one")
    info.update(n_slices=len(sl), slice_seconds_per_volume=float(outs.seconds.mean()))
    return sl


def _explain(pkg: Package, vol_model: Any, slice_model: Any, cache: Any, dev: torch.device, primary: int | None,
             n: int, out: Path, on_volume: Any = None) -> dict[str, Any]:
    """The package's key slices and heat maps (:func:`~ich3d.evaluation.prediction.explain.explain_volumes`)."""
    if slice_model is None:
        raise UserError(f"--explain needs the stage-1 slice CNN, and the package {pkg.root} has none")
    pool = int(pkg.spec["inputs"]["depth_pool"])
    return explain_volumes(
        slice_model, _datamodule(pkg, cache.root, 1).eval_dataloader("predict"), out, n,
        windows=[list(w) for w in pkg.spec["inputs"]["windows"]], volume_model=vol_model,
        volume_loader=_datamodule(pkg, cache.root, pool).eval_dataloader("predict") if vol_model is not None else None,
        depth_pool=pool, primary=primary, device=dev, on_volume=on_volume, context_slices=_context(pkg),
    )


def package_result_model(pkg: Package) -> ResultModel:
    """The package's volume model as the DICOM results name it: name, version (provenance), operating points."""
    spec = pkg.spec
    prov = spec.get("provenance") or {}
    stage = (spec["models"].get("volume") or {}).get("stage")
    version = version_text(prov, f"exported {prov.get('exported_at', 'at an unknown time')}")
    return ResultModel(
        name=str(spec.get("name") or "ich3d package"), version=version, targets=tuple(spec["targets"]),
        label=str(spec["label"]),
        operating_points=operating_thresholds((spec.get("evaluation") or {}).get("operating_points")),
        parameters=(f"volume model: stage {stage}", "exported package (ich3d export)"),
    )


def _explain_outputs(pkg: Package, models: tuple[Any, Any], cache: Any, dev: torch.device, primary: int | None,
                     explain: int, dicom_out: Path | None, out_dir: Path, info: dict[str, Any],
                     files: dict[str, Path]) -> None:
    """``--explain N`` and ``--dicom-out DIR`` (which implies the key slices: :data:`DEFAULT_KEY_SLICES`)."""
    writer = None
    if dicom_out is not None:
        vol = pd.read_csv(files["volumes"], dtype={"key": str})
        writer = DicomResultsWriter(dicom_out, cache, vol, package_result_model(pkg))
    info["explain"] = _explain(pkg, models[0], models[1], cache, dev, primary, explain or DEFAULT_KEY_SLICES,
                               out_dir / "explain", writer.add if writer else None)
    files["explain"] = out_dir / "explain"
    if writer is not None:
        info["dicom_out"] = writer.summary()
        files["dicom_out"] = Path(dicom_out)


def predict_package(
    package: str | Path,
    input: str | Path,
    out: str | Path | None = None,
    *,
    runtime: str = "weights",
    uids: bool = False,
    workers: int = 1,
    device: str = "auto",
    progress: bool = True,
    explain: int = 0,
    dicom_out: str | Path | None = None,
) -> dict[str, Any]:
    """Predict volume and slice probabilities with an exported package (see the module docstring).

    Args:
        package: the package folder (``ich3d export``).
        input: a folder of DICOM files, or an ingest cache.
        out: output folder; default :func:`default_package_out`.
        runtime: ``weights`` (default: ich3d's network, safetensors), ``torchscript`` or ``onnx`` (CPU).
        uids: add the identifier columns.
        workers: ingest processes.
        device: ``auto``, ``cpu`` or ``cuda[:i]`` (the weights runtime; the exported files run on CPU).
        progress: progress bars.
        explain: with N > 0, the key slices and heat maps of every volume in ``OUT/explain``
            (:mod:`ich3d.evaluation.prediction.explain`; the weights runtime and the package's slice CNN).
        dicom_out: a folder for the DICOM results of every series; implies ``explain``
            (:mod:`ich3d.evaluation.prediction.dicom_out`).

    Returns:
        ``predict.json``'s content plus ``"files"``.

    Raises:
        UserError: a package that fails verification, a bad input or runtime.
    """
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    input = Path(input).expanduser()
    if not input.is_dir():
        raise UserError(f"INPUT {input} is not a folder (expected a folder of DICOM files or an ingest cache)")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if explain < 0:
        raise UserError(f"--explain {explain}: expected a number of key slices >= 1")
    if (explain or dicom_out is not None) and runtime != "weights":
        flag = "--explain" if explain else "--dicom-out"
        raise UserError(f"{flag} needs the gradients of ich3d's own network: use --runtime weights, not {runtime}")
    if dicom_out is not None:
        check_dicom_out(dicom_out, input)
    pkg = open_package(package)
    out_dir = Path(out) if out is not None else default_package_out(input)
    if out_dir.resolve().is_relative_to(pkg.root.resolve()):
        raise UserError(f"--out {out_dir} is inside the package {pkg.root}; choose a folder outside it")
    vol_model, slice_model = load_models(pkg, runtime)
    if dicom_out is not None and vol_model is None:
        raise UserError(f"--dicom-out needs a volume model, and the package {pkg.root} has none")
    dev = resolve_device(device) if runtime == "weights" else torch.device("cpu")
    several = bool(pkg.spec.get("several_targets"))
    primary = primary_index(pkg.spec["targets"], pkg.spec["label"]) if several else None
    cache_dir, skipped = _cache(pkg, input, out_dir, workers, progress)
    cache = open_cache(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "package": str(pkg.root.resolve()), "name": pkg.spec.get("name"), "runtime": runtime,
        "cache": str(Path(cache_dir).resolve()), "out": str(out_dir.resolve()), "device": dev.type,
        "hardware": hardware_info(dev), "labeled": cache.labeled, "uids": bool(uids), "ingest_skipped": skipped,
        "stage": (pkg.spec["models"].get("volume") or {}).get("stage"),
    }
    files: dict[str, Path] = {}
    if vol_model is not None:
        files["volumes"] = out_dir / "volumes.csv"
        atomic_write_csv(files["volumes"], _volume_frame(pkg, vol_model, cache, dev, primary, progress, uids, info))
    if slice_model is not None:
        files["slices"] = out_dir / "slices.csv"
        atomic_write_csv(files["slices"], _slice_frame(pkg, slice_model, cache, dev, primary, progress, info))
    if explain or dicom_out is not None:
        _explain_outputs(pkg, (vol_model, slice_model), cache, dev, primary, explain,
                         Path(dicom_out) if dicom_out is not None else None, out_dir, info, files)
    files["summary"] = out_dir / "predict.json"
    atomic_write_text(files["summary"], json.dumps(info, indent=2) + "\n")
    return {**info, "files": files}
