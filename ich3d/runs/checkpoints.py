"""Safe checkpoint loading and the models of a finished run, for predict and evaluate.

Checkpoints are read with ``torch.load(weights_only=True)``: the modules store their
hyper-parameters as plain dicts, lists, strings and numbers, so a checkpoint needs
no pickled class to rebuild its network. Resuming a stage passes
``weights_only=True`` to ``Trainer.fit`` as well.

Public API::

    load_checkpoint(path) -> dict
    describe_load_error(exc) -> str
    load_volume_model(run_dir, stage=None) -> (VolumeClassifier, Config)
    load_slice_model(run_dir) -> SliceClassifier
    best_volume_stage(run_dir) -> str
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ich3d.config import Config
from ich3d.errors import UserError
from ich3d.models.build import build, build_slice
from ich3d.models.speed import speed_up
from ich3d.runs.run_dir import RunDir, open_run_dir
from ich3d.stages import get_stage, volume_stages

__all__ = [
    "load_checkpoint",
    "describe_load_error",
    "sub_state_dict",
    "load_volume_model",
    "load_slice_model",
    "best_volume_stage",
]

log = logging.getLogger(__name__)

def describe_load_error(exc: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed.

    torch's refusal of a pickled object is a many-line message that ends by
    suggesting ``weights_only=False``, which would run the file's code; ich3d
    never loads that way, so the line says what the file holds instead.
    """
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text:
        return (
            "it holds pickled Python objects, not only tensors and plain data, and ich3d "
            "loads checkpoints only with weights_only=True (it never runs code from a file)"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on CPU with ``weights_only=True``.

    Raises:
        UserError: the file is missing or not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle weights_only refuses
        raise UserError(f"cannot read checkpoint {path}: {describe_load_error(exc)}") from None
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return dict(ckpt)


def sub_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` (e.g. ``"model.encoder."``), prefix removed."""
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        raise UserError(f"the checkpoint has no weights under {prefix!r}")
    return out


def _run(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else open_run_dir(run_dir)


def best_volume_stage(run_dir: str | Path | RunDir) -> str:
    """The preferred volume stage with a ``best.ckpt`` (built in: finetune > sequence > direct).

    The order is the stages' declared ``preference`` (:func:`ich3d.stages.volume_stages`).

    Raises:
        UserError: no volume stage has a checkpoint.
    """
    run = _run(run_dir)
    names = [s.name for s in volume_stages()]
    for stage in names:
        if run.best_ckpt(stage).is_file():
            return stage
    raise UserError(
        f"{run.path} has no volume model yet (no best.ckpt in "
        f"{', '.join(names)}); train --stage {'/'.join(names)} first"
    )


def load_volume_model(
    run_dir: str | Path | RunDir, stage: str | None = None
) -> tuple[torch.nn.Module, Config]:
    """The trained volume model of a run, in eval mode on CPU, and the run's config.

    Args:
        run_dir: a run directory (``runs/<experiment>/<run-id>``).
        stage: a volume stage (``finetune``, ``sequence``, ``direct`` ...); default the
            best available (:func:`best_volume_stage`).

    Returns:
        ``(VolumeClassifier, Config)``; the model maps ``(B, T, C, H, W), (B,)`` to
        logits ``(B,)`` (apply ``torch.sigmoid`` for probabilities).
    """
    run = _run(run_dir)
    config = run.load_config()
    stage = stage or best_volume_stage(run)
    if not get_stage(stage).is_volume:
        names = ", ".join(s.name for s in volume_stages())
        raise UserError(f"{stage!r} is not a volume stage; expected one of {names}")
    ckpt = load_checkpoint(run.best_ckpt(stage))
    model = build(ckpt["hyper_parameters"]["model"])
    model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    model.eval()
    speed_up(model, channels_last=config.model.channels_last, compile=config.model.compile)
    log.info("loaded the %s volume model of %s", stage, run.path)
    return model, config


def load_slice_model(run_dir: str | Path | RunDir, stage: str = "slice") -> torch.nn.Module:
    """The slice classifier of a run (``<stage>/best.ckpt``, default stage 1), eval mode, CPU.

    Returns:
        ``SliceClassifier``: ``(N, C, H, W) -> (N,)`` logits; ``.encoder`` gives the
        512-element slice features.
    """
    run = _run(run_dir)
    if get_stage(stage).is_volume:
        raise UserError(f"{stage!r} is a volume stage, not a slice classifier")
    ckpt = load_checkpoint(run.best_ckpt(stage))
    model = build_slice(ckpt["hyper_parameters"]["model"])
    model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    model.eval()
    m = run.load_config().model
    return speed_up(model, channels_last=m.channels_last, compile=m.compile)
