"""Where a run's figures came from: the ``provenance`` of each stage's ``result.json`` and of the evaluation's ``metrics.json``, and the evaluated data's ``data_origin``.

Provenance: the run's seed, the SHA-256 of its saved resolved ``config.yaml``, the
ich3d version, the git commit of the work tree holding the run directory ("unknown"
outside one), the data fingerprint (a hash of the cache's ingest parameters and input
fingerprint, :func:`ich3d.runs.inputs.input_signature`'s ``cache``) and the split hash
(its ``splits``), the torch thread count and the device. Hashes only: no path, no
identifier.

Data origin: whether the evaluated cache was made from ``ich3d synth`` output. The
synthetic generator writes ``synth_truth.json`` at the root of its output (beside
``stage_2_train/``); the cache's ``ingest.json`` records the images folder it read,
so a cache whose images folder has ``synth_truth.json`` beside it is synthetic.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import ich3d
from ich3d.runs.inputs import input_signature

__all__ = ["SYNTH_MARKER", "git_commit", "provenance", "data_origin"]

#: The file ``ich3d synth`` writes at the root of its output (the generator's ground truth).
SYNTH_MARKER = "synth_truth.json"


def git_commit(path: str | Path) -> str:
    """The commit of the git work tree holding ``path`` (``+dirty`` when it has changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if head and dirty else head or "unknown"


def provenance(run: Any, config: Any, hardware: dict[str, Any], cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The ``provenance`` entry of a stage's ``result.json`` or an evaluation's ``metrics.json``.

    Args:
        run: the run directory (:class:`~ich3d.runs.run_dir.RunDir`).
        config: the run's config.
        hardware: ``{"threads": torch threads, "device": ..., "summary": one line}`` of the
            device used (:func:`~ich3d.evaluation.inference.passes.hardware_info` in evaluation).
        cache_dir: the evaluated cache, when it is not the run's own (``evaluate --data``).
    """
    sig = input_signature(config.data, cache_dir=cache_dir)
    config_bytes = Path(run.config_path).read_bytes() if Path(run.config_path).is_file() else b""
    return {
        "experiment": config.experiment,
        "run_id": run.run_id,
        "seed": int(config.seed),
        "config_sha256": hashlib.sha256(config_bytes).hexdigest() if config_bytes else None,
        "ich3d_version": ich3d.__version__,
        "git_commit": git_commit(run.path),
        "data_fingerprint": sig.get("cache") or "unknown",
        "split_hash": (sig.get("splits") or "unknown") if cache_dir is None else "external cache (no split)",
        "torch_threads": hardware.get("threads"),
        "device": hardware.get("summary") or hardware.get("device"),
    }


def data_origin(cache_dir: str | Path) -> dict[str, Any]:
    """``{"synthetic": bool, "reason": str}`` of an ingest cache (see the module docstring)."""
    ingest = Path(cache_dir) / "ingest.json"
    try:
        images = json.loads(ingest.read_text()).get("images")
    except (OSError, ValueError):
        images = None
    if images and (Path(images).parent / SYNTH_MARKER).is_file():
        return {
            "synthetic": True,
            "reason": f"the cache was ingested from `ich3d synth` output ({SYNTH_MARKER} beside its images folder)",
        }
    return {"synthetic": False, "reason": "no ich3d synth marker beside the ingested images folder"}
