"""The exported model package: its layout, its manifest of file hashes, and its verification.

A package (``ich3d export``) follows MONAI's bundle layout::

    PKG/
      configs/metadata.json      MONAI bundle metadata (versions, task, network_data_format)
      configs/inference.json     a MONAI ConfigParser config that builds and loads the network
      configs/ich3d.json         everything ich3d needs to feed the models (format FORMAT)
      models/model.safetensors   the volume model's weights (tensors only)
      models/model.ts            the volume model as TorchScript (any number of slices)
      models/model.onnx          the volume model as ONNX (dynamic slice axis)
      models/slice_model.*       the stage-1 slice CNN likewise (when the run has one)
      docs/README.md             the run's evaluation figures and provenance
      LICENSE                    the package's licence and the training data's terms
      manifest.json              sha256 of every other file

A package is data, not code: :func:`open_package` checks every file against the
manifest (no file missing, none changed, none unlisted) and the manifest's own
record of ``configs/ich3d.json`` before anything is read from it, and ich3d's
default path reads only JSON and safetensors (:mod:`ich3d.deploy.runtime`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ich3d.errors import UserError

__all__ = [
    "FORMAT",
    "METADATA",
    "INFERENCE",
    "ICH3D",
    "MANIFEST",
    "Package",
    "sha256_file",
    "spec_digest",
    "is_package",
    "write_manifest",
    "open_package",
]

#: version of ``configs/ich3d.json``'s layout
FORMAT = 1
METADATA = "configs/metadata.json"
INFERENCE = "configs/inference.json"
ICH3D = "configs/ich3d.json"
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_digest(spec: Any) -> str:
    """The hex sha256 of a model spec's canonical JSON (saved in the safetensors header, checked on load)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a folder laid out as a package (has ``manifest.json`` and ``configs/ich3d.json``)."""
    p = Path(path)
    return (p / MANIFEST).is_file() and (p / ICH3D).is_file()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> dict[str, str]:
    """Write ``manifest.json`` (``{"format", "files": {relative path: sha256}}``) of every file under ``root``."""
    files = {rel: sha256_file(root / rel) for rel in _files(root)}
    (root / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=2) + "\n")
    return files


@dataclass(frozen=True)
class Package:
    """A verified package.

    Attributes:
        root: its folder.
        spec: ``configs/ich3d.json`` (the model spec, inputs, targets, weights' hashes).
        metadata: ``configs/metadata.json``.
    """

    root: Path
    spec: dict[str, Any]
    metadata: dict[str, Any]

    def path(self, rel: str) -> Path:
        """A file of the package by its relative path."""
        return self.root / rel

    def model_file(self, model: str, runtime: str) -> Path:
        """The file of ``model`` (``volume`` or ``slice``) for ``runtime`` (``weights``, ``torchscript``, ``onnx``).

        Raises:
            UserError: the package has no such model or file.
        """
        entry = (self.spec.get("models") or {}).get(model)
        if not entry or runtime not in entry.get("files", {}):
            raise UserError(f"package {self.root} has no {runtime} file of the {model} model")
        return self.root / entry["files"][runtime]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"package file {what} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"package file {what} is not a JSON object")
    return data


def _check_manifest(root: Path) -> None:
    manifest = _read_json(root / MANIFEST, MANIFEST)
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise UserError(f"{root / MANIFEST} lists no files; export the run again (ich3d export RUN_DIR --out PKG)")
    present = set(_files(root))
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    if missing:
        raise UserError(f"package {root} is incomplete: {missing[0]} is listed in {MANIFEST} but missing")
    if extra:
        raise UserError(f"package {root} has a file {MANIFEST} does not list: {extra[0]} (refused: unverified content)")
    for rel in sorted(listed):
        if sha256_file(root / rel) != listed[rel]:
            raise UserError(
                f"package {root}: {rel} does not match its sha256 in {MANIFEST} (changed after export); "
                "refused, export the run again"
            )


def open_package(path: str | Path) -> Package:
    """Verify a package and read its JSON files.

    Raises:
        UserError: not a package, a file missing, unlisted or changed, a format
            this ich3d does not read.
    """
    root = Path(path)
    if not is_package(root):
        raise UserError(f"{root} is not an ich3d package (no {MANIFEST} and {ICH3D}; made by ich3d export)")
    _check_manifest(root)
    spec = _read_json(root / ICH3D, ICH3D)
    if spec.get("format") != FORMAT:
        raise UserError(f"package {root}: {ICH3D} has format {spec.get('format')!r}; this ich3d reads format {FORMAT}")
    for name, entry in (spec.get("models") or {}).items():
        for runtime, rel in (entry.get("files") or {}).items():
            if sha256_file(root / rel) != (entry.get("sha256") or {}).get(runtime):
                raise UserError(f"package {root}: {rel} ({name} model) does not match the sha256 {ICH3D} records")
    return Package(root=root, spec=spec, metadata=_read_json(root / METADATA, METADATA))
