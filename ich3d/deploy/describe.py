"""What a package says about itself: ``configs/*.json``, ``docs/README.md`` and ``LICENSE``.

* ``configs/ich3d.json`` (returned by :func:`describe_package`, written by the
  exporter): the models (stage, spec, files and their hashes), the inputs (HU
  clip, the in-plane max filter of the ingest, windows, depth pooling, in-plane
  size, slice order, minimum slices), the targets and the primary label, the
  operating points chosen on the validation split and the run's test figures
  (from ``RUN_DIR/evaluation/metrics.json`` when the run was evaluated), and the
  provenance (hashes, never paths or identifiers);
* ``configs/metadata.json``: MONAI's bundle metadata (schema fields);
* ``configs/inference.json``: a MONAI ``ConfigParser`` config that builds ich3d's
  network from the spec and loads the safetensors weights (``network``), or
  loads the TorchScript file (``network_ts``);
* ``docs/README.md`` and ``LICENSE``.
"""

from __future__ import annotations

import json
import logging
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ich3d
from ich3d.data.ingest.state import DIRECTION_RULE, POOLING
from ich3d.data.schema import HU_MAX, HU_MIN
from ich3d.data.targets import model_targets
from ich3d.data.windows import resolve_windows
from ich3d.deploy.package import FORMAT, INFERENCE, METADATA
from ich3d.runs.provenance import git_commit

__all__ = ["MONAI_SCHEMA", "describe_package", "bundle_metadata", "inference_config", "evaluation_figures"]

log = logging.getLogger(__name__)

#: the MONAI bundle metadata schema the metadata follows
MONAI_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)

DATA_TERMS = (
    "The model was trained on the data of the run's ingest cache. If that is the RSNA Intracranial "
    "Hemorrhage Detection (2019) data, its terms apply to the weights: the data may be used for "
    "non-commercial research and academic purposes only (RSNA's competition data terms); check them "
    "before any other use. The synthetic phantom of `ich3d synth` carries no such terms."
)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def evaluation_figures(run: Any, stage: str | None) -> dict[str, Any] | None:
    """The run's test figures of ``stage`` and every method (AUC, interval) and its operating points.

    None when the run was not evaluated (no ``RUN_DIR/evaluation/metrics.json``).
    """
    path = Path(run.path) / "evaluation" / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    per = metrics.get("per_method") or {}
    return {
        "split": metrics.get("split"),
        "n_volumes": metrics.get("n_volumes"),
        "n_pos": metrics.get("n_pos"),
        "level": metrics.get("level"),
        "auc": {m: {k: e.get(k) for k in ("auc", "ci_lower", "ci_upper")} for m, e in per.items()},
        "operating_points": (metrics.get("operating_points") or {}).get(stage) if stage else None,
        "target_sensitivity": metrics.get("target_sensitivity"),
    }


def describe_package(run: Any, config: Any, root: Path, models: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Write ``metadata.json``, ``inference.json``, ``docs/README.md`` and ``LICENSE``; return ``ich3d.json``."""
    data = config.data
    vstage = (models.get("volume") or {}).get("stage")
    figures = evaluation_figures(run, vstage)
    if figures is None:
        log.warning("%s was not evaluated: the package has no operating points (ich3d evaluate RUN_DIR first)", run.path)
    described = {
        "format": FORMAT,
        "name": f"ich3d-{config.experiment}-{vstage or 'slice'}",
        "targets": model_targets(data),
        "several_targets": data.targets is not None,
        "label": data.label,
        "inputs": {
            "hu_clip": [HU_MIN, HU_MAX],
            "in_plane_max_filter": POOLING,
            "windows": [list(w) for w in resolve_windows(inputs["windows"])],
            "window_names": [w if isinstance(w, str) else None for w in inputs["windows"]],
            "context_slices": int(inputs.get("context_slices", 0)),
            "depth_pool": int(inputs["depth_pool"]),
            "image_size": [int(v) for v in inputs["image_size"]],
            "slice_order": DIRECTION_RULE,
            "min_slices": int(data.min_slices),
            "layout": "volume model: (1, slices, channels, H, W) after the depth pool; slice model: (N, channels, H, W); "
            "channels: window-major, each window on slices i-k .. i+k (k = context_slices, edges repeated)",
        },
        "models": models,
        "evaluation": figures,
        "provenance": {
            "experiment": config.experiment,
            "seed": int(config.seed),
            "ich3d_version": ich3d.__version__,
            "git_commit": git_commit(run.path),
            "data_fingerprint": inputs.get("cache") or "unknown",
            "split_hash": inputs.get("splits") or "unknown",
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    (root / METADATA).write_text(json.dumps(bundle_metadata(described), indent=2) + "\n")
    if "volume" in models:
        (root / INFERENCE).write_text(json.dumps(inference_config(models["volume"]), indent=2) + "\n")
    (root / "docs" / "README.md").write_text(render_readme(described))
    (root / "LICENSE").write_text(licence_text())
    return described


def _channel_defs(described: dict[str, Any]) -> dict[str, str]:
    inputs = described["inputs"]
    k = int(inputs.get("context_slices", 0))
    defs = [
        f"{name or 'window'} (center {c:g}, width {w:g} HU) -> [0, 1]"
        for (c, w), name in zip(inputs["windows"], inputs["window_names"], strict=True)
    ]
    if k:  # window-major: each window on slices i-k .. i+k
        defs = [f"{d}, slice i{o:+d}" if o else f"{d}, slice i" for d in defs for o in range(-k, k + 1)]
    return {str(i): d for i, d in enumerate(defs)}


def bundle_metadata(described: dict[str, Any]) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's bundle metadata fields for the package."""
    inputs, targets = described["inputs"], described["targets"]
    fig = described.get("evaluation") or {}
    auc = (fig.get("auc") or {}).get((described["models"].get("volume") or {}).get("stage") or "")
    return {
        "schema": MONAI_SCHEMA,
        "version": ich3d.__version__,
        "changelog": {ich3d.__version__: f"exported by ich3d {ich3d.__version__} at {described['provenance']['exported_at']}"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"ich3d": ich3d.__version__, "safetensors": _version("safetensors")},
        "optional_packages_version": {"onnxruntime": _version("onnxruntime")},
        "name": described["name"],
        "task": "Intracranial hemorrhage detection in head CT: probability per volume of each target",
        "description": (
            "CNN over axial slices with a sequence head over the volume (Patel et al., IEEE Access 2019), "
            "trained with ich3d. Research use only; not for diagnostic use."
        ),
        "authors": "ich3d contributors",
        "copyright": "Copyright (c) ich3d contributors; code Apache-2.0, weights subject to the training data's terms (LICENSE)",
        "data_source": "the run's ingest cache (data fingerprint " + described["provenance"]["data_fingerprint"] + ")",
        "data_type": "dicom",
        "intended_use": "research only, not for diagnostic use",
        "image_classes": "windowed CT channels of Hounsfield units",
        "label_classes": ", ".join(targets),
        "pred_classes": ", ".join(targets),
        "eval_metrics": {"test_auc": auc.get("auc")} if auc else {},
        "references": ["Patel A. et al., Intracranial hemorrhage detection in head CT, IEEE Access 7 (2019)"],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": len(inputs["windows"]) * (2 * int(inputs.get("context_slices", 0)) + 1),
                    "spatial_shape": ["*", *inputs["image_size"]],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": _channel_defs(described),
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "logits",
                    "num_channels": len(targets),
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [],
                    "is_onehot": False,
                    "channel_def": {str(i): f"{t} (sigmoid: probability)" for i, t in enumerate(targets)},
                }
            },
        },
    }


def inference_config(volume: dict[str, Any]) -> dict[str, Any]:
    """``configs/inference.json``: MONAI ConfigParser items for the volume model."""
    return {
        "imports": ["$import torch", "$from safetensors.torch import load_file"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "model_spec": volume["spec"],
        "network_def": {"_target_": "ich3d.models.build", "spec": "@model_spec"},
        "weights": f"$load_file(@bundle_root + '/{volume['files']['weights']}')",
        "network": "$@network_def.eval()",
        "initialize": ["$@network.load_state_dict(@weights)"],
        "network_ts": f"$torch.jit.load(@bundle_root + '/{volume['files']['torchscript']}', map_location=@device)",
        "postprocessing": "$torch.sigmoid",
    }


def _figures_md(fig: dict[str, Any] | None, vstage: str | None) -> list[str]:
    if not fig:
        return ["The run was not evaluated before export: no test figures and no operating points "
                "(run `ich3d evaluate RUN_DIR`, then export again)."]
    lines = [f"Test split `{fig['split']}`: {fig['n_volumes']} volumes, {fig['n_pos']} positive; "
             f"AUC with its {fig['level']:.0%} DeLong interval.", "", "| method | AUC | interval |", "| --- | --- | --- |"]
    for m, a in (fig.get("auc") or {}).items():
        mark = " (this package)" if m == vstage else ""
        lines.append(f"| {m}{mark} | {a['auc']:.3f} | {a['ci_lower']:.3f} - {a['ci_upper']:.3f} |")
    ops = fig.get("operating_points") or {}
    if ops:
        lines += ["", "Operating points chosen on the validation split (applied to test):", ""]
        lines += [f"- `{rule}`: threshold {op.get('threshold')}" for rule, op in ops.items() if isinstance(op, dict)]
    return lines


def render_readme(described: dict[str, Any]) -> str:
    """``docs/README.md``: what the package is, how to run it, its figures and provenance."""
    inp, prov = described["inputs"], described["provenance"]
    vstage = (described["models"].get("volume") or {}).get("stage")
    lines = [
        f"# {described['name']}", "",
        "An ich3d model package (MONAI bundle layout). Research use only; not for diagnostic use.", "",
        "```bash", "ich3d predict PKG /path/to/dicom --out predictions", "```", "",
        "## Models", "",
        *(f"- {n}: stage `{m['stage']}`, files " + ", ".join(f"`{f}`" for f in m["files"].values())
          for n, m in described["models"].items()),
        "", "## Inputs", "",
        f"- HU clipped to {inp['hu_clip']}; in plane: {inp['in_plane_max_filter']}",
        f"- slices ordered {inp['slice_order']}; at least {inp['min_slices']} slices",
        f"- windows (center, width HU) -> [0, 1] channels: {inp['windows']}",
        f"- 2.5D: each window on slices i-{inp.get('context_slices', 0)} .. i+{inp.get('context_slices', 0)} "
        "(window-major channels, edge slices repeated)" if inp.get("context_slices") else "- one slice per input (no 2.5D neighbours)",
        f"- volume model: max over groups of {inp['depth_pool']} slices; in-plane size {inp['image_size']} (center crop / pad with air)",
        f"- outputs: one logit per target {described['targets']} (sigmoid: probability)",
        "", "## Evaluation", "", *_figures_md(described.get("evaluation"), vstage),
        "", "## Provenance", "", *(f"- {k}: {v}" for k, v in prov.items()), "",
    ]
    return "\n".join(lines)


def licence_text() -> str:
    """``LICENSE``: the code's licence and the training data's terms."""
    return (
        "ich3d is licensed under the Apache License, Version 2.0.\n\n"
        "The weights in models/ are derived from training data, whose terms also apply:\n\n"
        f"{DATA_TERMS}\n\nThis model is not a medical device and is not for diagnostic use.\n"
    )
