"""The inputs a model was trained on, pinned in every checkpoint and checked on reuse.

A checkpoint's weights only mean something for the inputs they were trained on:
the HU windows stacked as channels (and the 2.5D neighbours, ``data.context_slices``), the depth max-filter of the volume models,
the in-plane size, the label learnt, the targets output (``[any]`` for the binary
method, the six RSNA labels with ``data.targets: all``), the ingest cache and the patient split. Every
checkpoint records them (``checkpoint["ich3d"]["inputs"]``, see
:func:`input_signature`); a stage that starts from another stage's checkpoint, a
resumed stage and ``ich3d evaluate`` compare them with what the config asks for
now and refuse a difference (:func:`check_inputs`), so a stage-2 model can no
longer be trained on a stage-1 CNN that saw other windows, nor a run be scored
with baselines computed on other inputs.

The cache and split entries are short hashes (never identifiers): of the
ingest's parameters, input fingerprint and tables (``ingest.json`` and the
sha256 of slices.csv, volumes.csv and skipped.csv, checked against the ones
``ingest.json`` recorded), and of the patient lists of ``splits.json`` (for a
cross-validation fold's run, also of the fold and the folds' lists).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ich3d.data.cache import open_cache
from ich3d.data.targets import model_targets
from ich3d.errors import UserError

__all__ = [
    "MODEL_INPUTS",
    "input_signature",
    "check_inputs",
    "recorded_inputs",
    "cache_image_size",
]

#: The entries that describe what a network sees (as opposed to which data it saw).
MODEL_INPUTS: tuple[str, ...] = ("windows", "context_slices", "depth_pool", "image_size", "label", "targets")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cache_image_size(cache_dir: str | Path) -> list[int] | None:
    """The most common in-plane ``[H, W]`` of a cache's volumes (what the data modules pad to)."""
    if not (Path(cache_dir) / "volumes.csv").is_file():
        return None
    common = open_cache(cache_dir, require_complete=False).common_size()
    return None if common is None else list(common[0])


def _cache_digest(cache: Path) -> str:
    """The cache's pin: its parameters, input fingerprint and (where ``ingest.json`` records
    them) its tables' hashes, each table checked against the record, so a table changed
    after the ingest (a row deleted) is refused rather than pinned."""
    opened = open_cache(cache, require_complete=False)
    record = opened.info
    if not record:
        raise UserError(f"{cache / 'ingest.json'} is damaged; {opened.rebuild_advice()}")
    pinned = {"parameters": record.get("parameters"), "input": record.get("input")}
    if record.get("tables"):
        pinned["tables"] = opened.table_hashes()
    return _digest(pinned)


def input_signature(data: Any, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The inputs of a model trained with the ``data`` config section.

    Args:
        data: a :class:`~ich3d.config.DataConfig`.
        cache_dir: the cache (default ``data.cache_dir``).

    Returns:
        ``{"windows", "context_slices", "depth_pool", "image_size", "label", "targets", "cache",
        "splits"}``
        (``targets``: the labels the model outputs, ``[label]`` when binary); ``cache``
        and ``splits`` are ``None`` when the cache's ``ingest.json`` or the splits file
        does not exist yet.
    """
    cache = Path(cache_dir if cache_dir is not None else data.cache_dir)
    ingest = cache / "ingest.json"
    cache_hash = None
    if ingest.is_file():
        cache_hash = _cache_digest(cache)
    splits_path = Path(data.splits_file) if data.splits_file else cache / "splits.json"
    splits_hash = None
    if splits_path.is_file():
        raw = json.loads(splits_path.read_text())
        pinned: dict[str, Any] = {k: sorted(map(str, raw.get(k, []))) for k in ("train", "val", "test")}
        if getattr(data, "fold", None) is not None:  # a fold run: which fold, of which folds
            pinned["fold"] = [int(data.fold), int(data.folds)]
            pinned["folds"] = [sorted(map(str, f)) for f in raw.get("folds") or []]
        splits_hash = _digest(pinned)
    return {
        "windows": list(data.windows),
        "context_slices": int(getattr(data, "context_slices", 0)),
        "depth_pool": int(data.depth_pool),
        "image_size": cache_image_size(cache),
        "label": data.label,
        "targets": model_targets(data),
        "cache": cache_hash,
        "splits": splits_hash,
    }


def recorded_inputs(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The inputs a checkpoint recorded (``None`` for checkpoints older than the pinning)."""
    inputs = (checkpoint.get("ich3d") or {}).get("inputs")
    return dict(inputs) if isinstance(inputs, Mapping) else None


def check_inputs(
    recorded: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    *,
    what: str,
    keys: Iterable[str] | None = None,
) -> None:
    """Refuse a difference between the inputs a checkpoint was trained on and ``current``.

    Args:
        recorded: :func:`recorded_inputs` of the checkpoint; ``None`` (an older
            checkpoint) passes with nothing to compare.
        current: :func:`input_signature` of what is asked for now.
        what: names the checkpoint and the use in the message (``"slice/best.ckpt,
            which stage sequence starts from"``).
        keys: the entries to compare (default all); entries missing on either side
            are not compared.

    Raises:
        UserError: one line per differing entry, recorded vs now.
    """
    if recorded is None:
        return
    if "targets" not in recorded and recorded.get("label") is not None:
        recorded = {**recorded, "targets": [recorded["label"]]}  # pinned before targets: binary
    if "context_slices" not in recorded and "windows" in recorded:
        recorded = {**recorded, "context_slices": 0}  # pinned before 2.5D: one slice per input
    names = list(keys) if keys is not None else list(current)
    diffs = []
    for k in names:
        a, b = recorded.get(k), current.get(k)
        if a is None or b is None:
            continue
        if a != b:
            diffs.append(f"{k}: trained on {a!r}, now {b!r}")
    if diffs:
        raise UserError(
            f"{what} was trained on other inputs ({'; '.join(diffs)}); use the settings it was "
            "trained with, or train it again"
        )
