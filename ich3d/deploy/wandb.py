"""``ich3d export --wandb``: the package as a W&B ``model`` artifact (opt-in).

One W&B run of job type ``export`` in the run's group (the training stages' and the
evaluation's group), named ``<experiment>/<run-id>/export``, with one artifact of type
``model`` holding every file of the package, so a teammate gets the exact package with
``wandb artifact get`` (and ``ich3d predict PKG`` verifies it against its manifest).

The artifact is named by a hash (``package-<16 hex>``, like the stages' checkpoint
artifacts), aliased ``latest`` and the volume stage, and its metadata is what
``configs/ich3d.json`` says about the models without paths: the stages, the
targets, the test AUCs of the run's evaluation, the parity of TorchScript and ONNX,
the provenance hashes. A package holds no patient identifier (it is built from a
run's weights, config hashes and aggregate figures), so nothing identifying is sent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ich3d.deploy.package import open_package
from ich3d.errors import UserError
from ich3d.tracking.loggers import (
    code_version,
    scrub_value,
    wandb_environment,
    wandb_run_id,
    wandb_settings,
)

__all__ = ["artifact_metadata", "log_package_artifact"]


def artifact_metadata(spec: dict[str, Any], parity: dict[str, float] | None = None) -> dict[str, Any]:
    """The artifact's metadata from a package's ``configs/ich3d.json``: aggregates and hashes only."""
    models = {name: {"stage": entry.get("stage")} for name, entry in (spec.get("models") or {}).items()}
    figures = spec.get("evaluation") or {}
    meta = {
        "name": spec.get("name"),
        "format": spec.get("format"),
        "models": models,
        "targets": spec.get("targets"),
        "test_auc": {m: a.get("auc") for m, a in (figures.get("auc") or {}).items()},
        "operating_points": figures.get("operating_points"),
        "provenance": spec.get("provenance"),
    }
    if parity is not None:
        meta["parity_max_abs_logit_diff"] = parity
    return scrub_value(meta)


def log_package_artifact(
    package: str | Path,
    *,
    experiment: str,
    run_id: str,
    mode: str = "offline",
    project: str = "ich3d",
    entity: str | None = None,
    parity: dict[str, float] | None = None,
    wandb_dir: str | Path | None = None,
) -> str:
    """Log a verified package as a ``model`` artifact of a W&B run of job type ``export``.

    Args:
        package: the package folder (``ich3d export --out``); verified first.
        experiment: the run's experiment (``config.experiment``).
        run_id: the run's id (the W&B group, as for its stages).
        mode: ``offline`` (files under ``wandb_dir``; ``wandb sync`` uploads them) or ``online``.
        project, entity: the W&B project and entity.
        parity: the export's TorchScript/ONNX vs checkpoint differences, for the metadata.
        wandb_dir: where W&B writes its files (default: beside the package, ``<PKG>.wandb``,
            so the package itself stays exactly what its manifest lists).

    Returns:
        The W&B run's local folder.

    Raises:
        UserError: a bad mode, or a package that does not verify.
    """
    if mode not in ("offline", "online"):
        raise UserError(f"--wandb mode must be offline or online, got {mode!r}")
    pkg = open_package(package)
    wandb_environment(mode)
    import wandb  # optional at import time: only --wandb needs it

    root = Path(package)
    out = Path(wandb_dir) if wandb_dir is not None else root.with_name(root.name + ".wandb")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    vstage = ((pkg.spec.get("models") or {}).get("volume") or {}).get("stage")
    run = wandb.init(
        project=project,
        entity=entity,
        group=run_id,
        job_type="export",
        name=f"{experiment}/{run_id}/export",
        dir=str(out),
        mode=mode,
        config={"code": code_version(), "package": {"name": pkg.spec.get("name"), "format": pkg.spec.get("format")}},
        settings=wandb_settings(),
        reinit="create_new",
    )
    try:
        artifact = wandb.Artifact(
            f"package-{wandb_run_id(experiment, run_id, 'export')}",
            type="model",
            description="ich3d package (MONAI bundle layout): safetensors, TorchScript, ONNX, manifest",
            metadata=artifact_metadata(pkg.spec, parity),
        )
        artifact.add_dir(str(root))
        run.log_artifact(artifact, aliases=["latest", *([vstage] if vstage else [])])
        local = run.dir
    finally:
        run.finish()
    return str(Path(local).parent)
