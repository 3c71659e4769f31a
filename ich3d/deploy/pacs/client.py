"""Retrieve one study from a DICOM node, store result objects back: the protocol chosen by the node's URL."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom

from ich3d.deploy.pacs.dicomweb import dicomweb_retrieve, dicomweb_store
from ich3d.deploy.pacs.dimse import dimse_retrieve, dimse_store
from ich3d.deploy.pacs.node import PacsNode, quiet_pydicom
from ich3d.errors import UserError

__all__ = ["retrieve_study", "store_files"]

log = logging.getLogger(__name__)


def retrieve_study(node: PacsNode, study_uid: str, dest: str | Path) -> list[Path]:
    """Retrieve every object of one study from ``node`` into the folder ``dest``.

    Args:
        node: the node (:func:`parse_node`).
        study_uid: its StudyInstanceUID.
        dest: an empty or new folder; files are named ``000000.dcm``, ``000001.dcm``, ...

    Returns:
        The files written, in the order received.

    Raises:
        UserError: the node cannot be reached, does not know the study, or sends nothing.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise UserError(f"{dest} is not empty; a study is retrieved into an empty folder")
    with quiet_pydicom():
        files = (dimse_retrieve if node.protocol == "dimse" else dicomweb_retrieve)(node, study_uid, dest)
    if not files:
        raise UserError(f"study {study_uid} on {node.url} has no object ich3d could retrieve")
    log.info("retrieved %d object(s) of study %s from %s", len(files), study_uid, node.url)
    return files


def store_files(node: PacsNode, files: Sequence[str | Path], study_uid: str) -> int:
    """Store DICOM files into one study on ``node``.

    Args:
        node: the node (:func:`parse_node`).
        files: Part 10 files, every one of them of the study ``study_uid``.
        study_uid: the study they belong to (STOW-RS stores into ``/studies/<uid>``,
            so the node refuses an object of another study).

    Returns:
        The number of objects stored.

    Raises:
        UserError: a file of another study, an unreachable node, a store the node refuses.
    """
    paths = [Path(f) for f in files]
    if not paths:
        return 0
    with quiet_pydicom():
        _check_study(paths, study_uid)
        n = dimse_store(node, paths) if node.protocol == "dimse" else dicomweb_store(node, paths, study_uid)
    log.info("stored %d object(s) into study %s on %s", n, study_uid, node.url)
    return n


def _check_study(paths: list[Path], study_uid: str) -> None:
    for p in paths:
        found = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).get("StudyInstanceUID")
        if found != study_uid:
            raise UserError(f"{p.name} belongs to another study than {study_uid}; it is not stored")
