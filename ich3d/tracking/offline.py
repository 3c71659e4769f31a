"""Reading an offline W&B run from disk, without the network (what ``wandb sync`` would upload).

Used by the tests (and by anyone checking what a run sends before syncing it):
:func:`read_offline_run` returns the run's metadata, config, history, summary and
artifacts.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["read_offline_run"]


def _log_records(data: bytes) -> Iterator[bytes]:
    """Records of a W&B ``.wandb`` file (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    block, pos, parts = 32768, 7, b""  # the file starts with a 7-byte W&B header
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            parts = chunk
        elif kind == 3:  # MIDDLE
            parts += chunk
        elif kind == 4:  # LAST
            yield parts + chunk
            parts = b""


def read_offline_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read an offline W&B run folder (``wandb/offline-run-*``) without the network.

    Returns:
        ``{"run": {"group", "job_type", "name", "project"}, "config": {key: value},
        "history": [{metric: value}], "summary": {metric: value}, "artifacts":
        [{"name", "type", "aliases", "metadata", "files"}]}``; a metric summarised by
        its best value (:data:`BEST_SUMMARY`) reads ``{"max": value}`` or ``{"min": value}``.
    """
    from wandb.proto import wandb_internal_pb2 as pb  # heavy: W&B only when a run is read

    folder = Path(path)
    files = sorted(folder.glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"no .wandb file in {folder}")
    out: dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "artifacts": []}
    for raw in _log_records(files[0].read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out["run"] = {
                "group": r.run_group,
                "job_type": r.job_type,
                "name": r.display_name,
                "project": r.project,
            }
            for item in r.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": list(a.aliases),
                    "metadata": json.loads(a.metadata) if a.metadata else {},
                    "files": [entry.path for entry in a.manifest.contents],
                }
            )
    return out
