"""``ich3d predict RUN_DIR|PKG --pacs URL --study UID``: retrieve a study, predict on it, store the results back.

Three steps, each failing in one line (:mod:`ich3d.deploy.pacs.client`):

1. the study's CT series are retrieved from the node into ``OUT/pacs-study/``
   (files named by count; the folder is emptied first, it is ich3d's own);
2. ``predict`` runs on that folder as on any DICOM folder, with ``--dicom-out``
   (default ``OUT/dicom``): per series a Structured Report, a Key Object Selection and
   Secondary Captures, all in the source study
   (:mod:`ich3d.evaluation.prediction.dicom_out`);
3. those objects are stored into the study on the same node (STOW-RS into
   ``/studies/<UID>``, or C-STORE), and ``OUT/pacs.json`` records what was done: the
   node and the study as typed, and counts (no other identifier).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

from ich3d.deploy.pacs.client import retrieve_study, store_files
from ich3d.deploy.pacs.node import PacsNode, quiet_pydicom
from ich3d.errors import UserError

__all__ = ["predict_pacs", "pacs_out_name", "STUDY_FOLDER", "SUMMARY"]

#: the folder of ``OUT`` the retrieved study is written to
STUDY_FOLDER = "pacs-study"
#: the round trip's record in ``OUT``
SUMMARY = "pacs.json"

#: ``predict(input, out, dicom_out) -> result``: ``predict_run`` or ``predict_package`` with their options bound
Predict = Callable[[Path, Path, Path], dict[str, Any]]


def pacs_out_name(node: PacsNode, study_uid: str) -> str:
    """``pacs-<8 hex>`` of the node and study: a default output folder name without an identifier in it."""
    return "pacs-" + hashlib.sha256(f"{node.url}\n{study_uid}".encode()).hexdigest()[:8]


def _fresh_study_folder(out: Path) -> Path:
    """``OUT/pacs-study``, emptied, and the ingest cache built from an earlier retrieval into it removed."""
    folder = out / STUDY_FOLDER
    if folder.exists():
        strangers = [p for p in folder.iterdir() if not (p.is_file() and p.suffix == ".dcm")]
        if strangers:
            raise UserError(f"{folder} holds more than a retrieved study ({strangers[0].name}); "
                            "choose another --out")
        shutil.rmtree(folder)
    record = out / "cache" / "ingest.json"
    if record.is_file():
        with contextlib.suppress(ValueError, OSError):
            if Path(json.loads(record.read_text()).get("images", "")).resolve() == folder.resolve():
                shutil.rmtree(out / "cache")  # ich3d's own cache of the earlier retrieval: rebuilt
    return folder


def _modalities(files: list[Path]) -> dict[str, int]:
    with quiet_pydicom():
        return dict(Counter(str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality"])
                                .get("Modality", "")) for f in files))


def predict_pacs(node: PacsNode, study_uid: str, out: str | Path, predict: Predict,
                 dicom_out: str | Path | None = None) -> dict[str, Any]:
    """Retrieve ``study_uid`` from ``node``, run ``predict`` on it, store its DICOM results into the study.

    Args:
        node: the node (:func:`~ich3d.deploy.pacs.node.parse_node`).
        study_uid: the StudyInstanceUID to retrieve and store into.
        out: the output folder of ``predict``; the study goes to ``out/pacs-study``.
        predict: ``predict(input, out, dicom_out)``, e.g. ``predict_package`` with its options bound.
        dicom_out: the folder of the DICOM results (default ``out/dicom``).

    Returns:
        ``predict``'s result with ``"pacs"`` (also written to ``out/pacs.json``) and
        ``files["pacs"]``.

    Raises:
        UserError: the node, the study or the store fails, or no series gave a result to store.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dicom_dir = Path(dicom_out) if dicom_out is not None else out / "dicom"
    retrieved = retrieve_study(node, study_uid, _fresh_study_folder(out))
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # at INFO it names the source instances' UIDs
    result = predict(out / STUDY_FOLDER, out, dicom_dir)
    made = [Path(f) for f in (result.get("dicom_out") or {}).get("files", [])]
    if not made:
        skipped = (result.get("dicom_out") or {}).get("skipped") or []
        why = f": {skipped[0].get('reason')}" if skipped else ""
        raise UserError(f"no DICOM result to store into study {study_uid}: no series of it was predicted{why} "
                        f"(see {out / 'predict.json'})")
    stored = store_files(node, made, study_uid)
    summary = {
        "node": node.url, "protocol": node.protocol, "study_uid": study_uid,
        "calling_aet": node.calling_aet if node.protocol == "dimse" else None,
        "retrieved": len(retrieved), "stored": stored, "stored_by_modality": _modalities(made),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return {**result, "pacs": summary, "files": {**result.get("files", {}), "pacs": out / SUMMARY}}
