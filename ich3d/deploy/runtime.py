"""The package's networks as callables of ich3d's inference passes, per runtime.

Three runtimes read a verified :class:`~ich3d.deploy.package.Package`:

* ``weights`` (default): ich3d builds its own network from the model spec of
  ``configs/ich3d.json`` (:func:`ich3d.models.build.build`, the one builder) and
  loads ``models/*.safetensors``: a tensors-only format, so nothing is unpickled
  and no code from the package runs; the header's spec hash must match the spec;
* ``torchscript``: ``models/*.ts`` through ``torch.jit.load``;
* ``onnx``: ``models/*.onnx`` through onnxruntime (CPU; the ``export`` extra).

The TorchScript and ONNX files are for runtimes outside ich3d; ich3d loads them
only when asked (``--runtime``), to check them against the weights.

Every runtime gives the same interface: a volume model ``(1, T, C, H, W) -> (1,)``
logits (``(1, K)`` with K targets) and a slice model whose ``encoder`` maps
``(N, C, H, W)`` to ``(N, K)`` logits and whose ``classifier`` is the identity for
the exported files, which :func:`~ich3d.evaluation.inference.passes.predict_volumes`
and :func:`~ich3d.evaluation.inference.passes.predict_slices` run unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ich3d.deploy.package import Package, spec_digest
from ich3d.errors import UserError
from ich3d.models.build import build, build_slice

__all__ = ["RUNTIMES", "SPEC_KEY", "load_safetensors", "load_models", "ExportedVolume", "ExportedSlice"]

#: the runtimes of ``ich3d predict PKG --runtime``
RUNTIMES: tuple[str, ...] = ("weights", "torchscript", "onnx")

#: the safetensors header entry holding :func:`~ich3d.deploy.package.spec_digest` of the model's spec
SPEC_KEY = "ich3d_spec_sha256"


def load_safetensors(path: Path, spec: Any) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose header names ``spec``'s digest.

    Raises:
        UserError: not a safetensors file (a pickle, say: never unpickled), or its
            header records another model spec.
    """
    from safetensors import (  # heavy optional dependency: only the weights path
        SafetensorError,
        safe_open,
    )

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a safetensors file ({type(exc).__name__}); refused, nothing unpickled") from None
    if header.get(SPEC_KEY) != spec_digest(spec):
        raise UserError(f"{path} holds the weights of another model spec than the package's configs/ich3d.json")
    return tensors


def _weights_model(pkg: Package, name: str, builder: Callable[[Any], nn.Module]) -> nn.Module:
    spec = pkg.spec["models"][name]["spec"]
    model = builder(spec)
    tensors = load_safetensors(pkg.model_file(name, "weights"), spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"the {name} weights of {pkg.root} do not fit its model spec ({first})") from None
    return model.eval()


class ExportedVolume(nn.Module):
    """A TorchScript or ONNX volume model behind ``VolumeClassifier``'s call ``(volumes, lengths)``.

    One volume per call, unpadded (``batch_size=1``): the exported graph has no lengths input.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self._run = run

    def forward(self, volumes: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if volumes.shape[0] != 1 or (lengths is not None and int(lengths.reshape(-1)[0]) != volumes.shape[1]):
            raise ValueError("an exported volume model takes one unpadded volume per call")
        return self._run(volumes)


class _Logits(nn.Module):
    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self._run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


class ExportedSlice(nn.Module):
    """A TorchScript or ONNX slice CNN in ``SliceClassifier``'s parts: ``encoder`` gives the logits."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.encoder = _Logits(run)
        self.classifier = nn.Identity()


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime  # heavy optional dependency (the export extra): only --runtime onnx
    except ImportError:
        raise UserError("the ONNX runtime needs onnxruntime: pip install 'ich3d[export]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    return run


def _exported(path: Path, runtime: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if runtime == "onnx":
        return _onnx_runner(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": the file is TorchScript
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: module(x)


def load_models(pkg: Package, runtime: str = "weights") -> tuple[nn.Module | None, nn.Module | None]:
    """The package's ``(volume model, slice model)`` for ``runtime`` (None where the package has none).

    Raises:
        UserError: an unknown runtime, or a model file that does not load (see :func:`load_safetensors`).
    """
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    models = pkg.spec.get("models") or {}
    if runtime == "weights":
        vol = _weights_model(pkg, "volume", build) if "volume" in models else None
        sl = _weights_model(pkg, "slice", build_slice) if "slice" in models else None
        return vol, sl
    vol = ExportedVolume(_exported(pkg.model_file("volume", runtime), runtime)) if "volume" in models else None
    sl = ExportedSlice(_exported(pkg.model_file("slice", runtime), runtime)) if "slice" in models else None
    return vol, sl
