"""``ich3d export RUN_DIR --out PKG``: a run's models as a self-contained package.

The package (layout: :mod:`ich3d.deploy.package`) holds the preferred finished
volume model (or ``stage``) and the stage-1 slice CNN, each as plain weights
(safetensors), TorchScript and ONNX with a dynamic number of slices, plus what a
user needs to feed them (:mod:`ich3d.deploy.describe`). Before the package is
moved into place, its TorchScript and ONNX files are run on a volume of another
length than the one traced and must agree with the eager model within
:data:`PARITY_TOL`; a failed export leaves no package behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ich3d.data.context import context_width
from ich3d.deploy.describe import describe_package
from ich3d.deploy.package import ICH3D, open_package, sha256_file, spec_digest, write_manifest
from ich3d.deploy.runtime import SPEC_KEY, ExportedVolume, load_models
from ich3d.errors import UserError
from ich3d.models.build import build, build_slice
from ich3d.runs.checkpoints import load_checkpoint, sub_state_dict
from ich3d.runs.inputs import cache_image_size, input_signature, recorded_inputs
from ich3d.runs.run_dir import RunDir, open_run_dir
from ich3d.stages import get_stage, slice_stage, volume_stages

__all__ = ["PARITY_TOL", "TRACE_SLICES", "OneVolume", "SliceLogits", "save_model_files", "export_run", "choose_volume_stage"]

log = logging.getLogger(__name__)

#: the largest difference of a logit allowed between the eager model and its TorchScript/ONNX files
PARITY_TOL = 1e-5
#: slices of the example volume traced; the check runs another length
TRACE_SLICES = 4
ONNX_OPSET = 17


class OneVolume(nn.Module):
    """The volume model on one unpadded volume: ``(1, T, C, H, W) -> logits`` (no lengths input)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.model(volume)


class SliceLogits(nn.Module):
    """The slice CNN's ``(N, C, H, W) -> (N, K)`` logits (the classifier's output before any squeeze)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.classifier(m.dropout(m.encoder(x).float()))


def choose_volume_stage(run: RunDir, stage: str | None) -> str | None:
    """``stage`` (checked), else the preferred volume stage that finished, else None."""
    names = [s.name for s in volume_stages()]
    if stage is not None:
        if not get_stage(stage).is_volume:
            raise UserError(f"--stage {stage}: not a volume stage; expected one of {', '.join(names)}")
        if not run.best_ckpt(stage).is_file():
            raise UserError(f"{run.path} has no {stage}/best.ckpt")
        return stage
    done = [s for s in names if run.best_ckpt(s).is_file() and run.is_done(s)]
    return done[0] if done else None


def _load(run: RunDir, stage: str, volume: bool) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    ckpt = load_checkpoint(run.best_ckpt(stage))
    spec = ckpt["hyper_parameters"]["model"]
    model = build(spec) if volume else build_slice(spec)
    model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    return model.eval(), spec, recorded_inputs(ckpt)


def save_model_files(
    module: nn.Module, spec: Any, example: torch.Tensor, dest: Path, stem: str, axis: int
) -> dict[str, str]:
    """Write ``models/<stem>.safetensors``, ``.ts`` and ``.onnx`` of a wrapped model into ``dest``.

    Args:
        module: :class:`OneVolume` or :class:`SliceLogits` around the model (``module.model``).
        spec: the model spec (its digest goes into the safetensors header).
        example: the input traced.
        dest: the package folder (has ``models/``).
        stem: the file name stem.
        axis: the dynamic slice axis of the input (1 for a volume, 0 for slices).

    Returns:
        runtime -> path relative to ``dest``.
    """
    from safetensors.torch import save_file  # heavy optional dependency: export only

    try:
        import onnx  # noqa: F401  heavy optional dependency (the export extra): torch's ONNX exporter needs it
    except ImportError:
        raise UserError("ich3d export writes ONNX files and needs onnx: pip install 'ich3d[export]'") from None

    inner = module.model
    files = {"weights": f"models/{stem}.safetensors", "torchscript": f"models/{stem}.ts", "onnx": f"models/{stem}.onnx"}
    state = {k: v.detach().contiguous().clone() for k, v in inner.state_dict().items()}
    save_file(state, str(dest / files["weights"]), metadata={"format": "pt", SPEC_KEY: spec_digest(spec)})
    name = "volume" if axis == 1 else "slices"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on the shape checks: the parity check below decides
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(dest / files["torchscript"]))
        torch.onnx.export(
            module, (example,), str(dest / files["onnx"]), input_names=[name], output_names=["logits"],
            dynamic_axes={name: {axis: "slices"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
        )
    module.eval()  # the exporter restores the mode it found; eval, always
    return files


def _example(image_size: list[int], channels: int, slices: int, volume: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (1, slices, channels, *image_size) if volume else (slices, channels, *image_size)
    return torch.rand(shape, generator=g)


def _check_parity(root: Path, models: dict[str, nn.Module], examples: dict[str, torch.Tensor]) -> dict[str, float]:
    """The largest logit difference of each exported runtime from the eager model; UserError above PARITY_TOL."""
    pkg = open_package(root)
    diffs: dict[str, float] = {}
    for runtime in ("torchscript", "onnx"):
        vol, sl = load_models(pkg, runtime)
        for name, exported in (("volume", vol), ("slice", sl)):
            if exported is None:
                continue
            x = examples[name]
            with torch.no_grad():
                want = models[name](x)
                got = exported(x) if isinstance(exported, ExportedVolume) else exported.encoder(x)
            diff = float((want.reshape(got.shape) - got).abs().max())
            diffs[f"{name}/{runtime}"] = diff
            if not diff <= PARITY_TOL:
                raise UserError(
                    f"the {runtime} {name} model differs from the checkpoint by {diff:.2e} (> {PARITY_TOL}); "
                    "no package written"
                )
    return diffs


def export_run(run_dir: str | Path, out: str | Path, *, stage: str | None = None) -> dict[str, Any]:
    """Export a run's volume model (``stage``, default the preferred finished one) and slice CNN.

    Returns:
        ``{"out", "stages", "parity", "files"}``.

    Raises:
        UserError: not a run, no finished model, ``out`` not empty, a parity failure.
    """
    run = open_run_dir(run_dir)
    config = run.load_config()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; choose a new folder")
    vstage = choose_volume_stage(run, stage)
    s1 = slice_stage().name
    has_slice = run.best_ckpt(s1).is_file()
    if vstage is None and not has_slice:
        names = ", ".join(s.name for s in volume_stages())
        raise UserError(f"{run.path} has no finished model to export ({s1}, {names}); train first")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("configs", "models", "docs"):
        (tmp / sub).mkdir(parents=True)
    try:
        result = _write(run, config, tmp, vstage, s1 if has_slice else None)
        result["parity"] = _check_parity(tmp, result.pop("eager"), result.pop("examples"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    log.info("exported %s to %s", run.path, out)
    return {**result, "out": out}


def _write(run: RunDir, config: Any, tmp: Path, vstage: str | None, sstage: str | None) -> dict[str, Any]:
    """Write every file of the package into ``tmp`` (manifest last)."""
    eager: dict[str, nn.Module] = {}
    examples: dict[str, torch.Tensor] = {}
    models: dict[str, Any] = {}
    recorded: dict[str, Any] | None = None
    for name, stage in (("volume", vstage), ("slice", sstage)):
        if stage is None:
            continue
        model, spec, rec = _load(run, stage, volume=name == "volume")
        recorded = recorded or rec
        inputs = recorded or input_signature(config.data)
        size = inputs.get("image_size") or (cache_image_size(config.data.cache_dir) if config.data.cache_dir else None)
        if not size:
            raise UserError(f"the in-plane size the {stage} model was trained on is unknown (its training cache is gone)")
        channels = len(inputs["windows"]) * context_width(int(inputs.get("context_slices", 0)))
        wrapped = (OneVolume(model) if name == "volume" else SliceLogits(model)).eval()
        stem = "model" if name == "volume" else "slice_model"
        files = save_model_files(wrapped, spec, _example(size, channels, TRACE_SLICES, name == "volume"), tmp, stem, 1 if name == "volume" else 0)
        eager[name] = wrapped
        examples[name] = _example(size, channels, TRACE_SLICES + 3, name == "volume", seed=1)
        models[name] = {
            "stage": stage, "spec": spec, "files": files,
            "sha256": {k: sha256_file(tmp / v) for k, v in files.items()},
            "checkpoint_sha256": sha256_file(run.best_ckpt(stage)),
        }
    described = describe_package(run, config, tmp, models, recorded or input_signature(config.data))
    (tmp / ICH3D).write_text(json.dumps(described, indent=2) + "\n")
    write_manifest(tmp)
    return {"stages": {k: v["stage"] for k, v in models.items()}, "eager": eager, "examples": examples}
