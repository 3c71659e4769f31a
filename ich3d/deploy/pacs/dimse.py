"""DIMSE through pynetdicom: C-FIND finds the study's CT series, C-GET retrieves them, C-STORE stores.

ich3d is the association's requestor every time (as ``--pacs-aet``), so the node needs
no route back to it: C-GET brings the objects over the same association (ich3d takes
the storage SCP role for the CT classes), unlike C-MOVE. pynetdicom is imported
inside the functions: it is the optional ``pacs`` extra. Its own log lines are kept to
errors (at INFO it names every instance it sends); the messages here carry the node's
answer instead.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom

from ich3d.deploy.pacs.node import FAILURE_REASONS, PacsNode, write_instance
from ich3d.errors import UserError

__all__ = ["dimse_retrieve", "dimse_store", "CT_CLASSES", "FIND", "GET"]

#: the SOP classes retrieved (what ich3d's ingest reads): CT, enhanced CT, legacy converted enhanced CT
CT_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.2.2",
)
#: Study Root Query/Retrieve Information Model FIND and GET
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
VERIFICATION = "1.2.840.10008.1.1"
_CT_MODALITY = "CT"
_OK = 0x0000
_PENDING = (0xFF00, 0xFF01)
_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)


def _ae(node: PacsNode) -> Any:
    try:
        from pynetdicom import AE  # optional pacs extra, and off the import path
    except ImportError:
        raise UserError("--pacs with a dicom:// URL needs the pacs extra: pip install 'ich3d[pacs]'") from None
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # at INFO it names every instance
    ae = AE(ae_title=node.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = node.timeout
    return ae


def _probe(node: PacsNode) -> None:
    """A plain TCP connection first: 'unreachable' is then told apart from a rejected association."""
    try:
        with socket.create_connection((node.host, node.port), timeout=node.timeout):
            pass
    except OSError as e:
        what = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise UserError(f"PACS {node.url} is unreachable ({what}); check --pacs and that the node runs") from None


def _no_answer(node: PacsNode, doing: str, started: float) -> UserError:
    """A DIMSE request without a response: a timeout, or the node ended the association (an unknown AE title)."""
    if time.monotonic() - started < 0.9 * node.timeout:
        return UserError(f"{node.url} ended the association during {doing} without an answer: does the node know "
                         f"ich3d's AE title {node.calling_aet} (--pacs-aet; Orthanc: DicomModalities)?")
    return UserError(f"{node.url} did not answer {doing} within {node.timeout:g} s")


@contextlib.contextmanager
def _association(node: PacsNode, ae: Any, **kwargs: Any) -> Iterator[Any]:
    _probe(node)
    assoc = ae.associate(node.host, node.port, ae_title=node.called_aet, **kwargs)
    if not assoc.is_established:
        if assoc.is_rejected:
            why = getattr(assoc.acceptor.primitive, "reason_str", "") if assoc.acceptor.primitive else ""
            raise UserError(f"{node.url} rejected the association from AE title {node.calling_aet} "
                            f"({why or 'no reason given'}); the node must know --pacs-aet {node.calling_aet}")
        if assoc.is_aborted:
            raise UserError(f"{node.url} aborted the association from AE title {node.calling_aet}")
        raise UserError(f"PACS {node.url} is unreachable (no association: connection refused or timed out); "
                        "check --pacs and that the node runs")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _status(status: Any) -> int | None:
    """The status code of a DIMSE response, None when there was none (timeout, abort)."""
    return int(status.Status) if status is not None and "Status" in status else None


def _status_text(status: Any, code: int) -> str:
    comment = str(status.get("ErrorComment", "")).strip() if status is not None else ""
    text = f"status 0x{code:04X} ({FAILURE_REASONS.get(code, 'failure')})"
    return f"{text}: {comment}" if comment else text


def _ct_series(node: PacsNode, ae: Any, study_uid: str) -> list[str]:
    """The study's CT series (C-FIND at SERIES level); UserError for an unknown study or one without CT."""
    ae.add_requested_context(FIND)
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.Modality = ""
    series: dict[str, str] = {}
    with _association(node, ae) as assoc:
        started = time.monotonic()
        for status, found in assoc.send_c_find(query, FIND):
            code = _status(status)
            if code is None:
                raise _no_answer(node, "the C-FIND", started)
            if code in _PENDING and found is not None:
                series[str(found.get("SeriesInstanceUID", ""))] = str(found.get("Modality", ""))
            elif code != _OK:
                raise UserError(f"{node.url} refused the C-FIND for study {study_uid}: {_status_text(status, code)}")
    if not series:
        raise UserError(f"study {study_uid} is not on {node.url} (C-FIND found no series of it)")
    ct = [uid for uid, modality in series.items() if modality == _CT_MODALITY]
    if not ct:
        raise UserError(f"study {study_uid} on {node.url} has no CT series (modalities: "
                        f"{', '.join(sorted(set(series.values())))})")
    return ct


def dimse_retrieve(node: PacsNode, study_uid: str, dest: Path) -> list[Path]:
    """The study's CT series by C-GET into ``dest`` (files named by count)."""
    from pynetdicom import build_role, evt  # optional pacs extra

    series = _ct_series(node, _ae(node), study_uid)
    files: list[Path] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        files.append(write_instance(ds, dest, len(files)))
        return _OK

    ae = _ae(node)
    ae.add_requested_context(GET)
    for cls in CT_CLASSES:
        ae.add_requested_context(cls)
    roles = [build_role(cls, scp_role=True) for cls in CT_CLASSES]
    with _association(node, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        for uid in series:
            query = pydicom.Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = uid
            last, started = None, time.monotonic()
            for status, _ in assoc.send_c_get(query, GET):
                last = status
            code = _status(last)
            if code is None:
                raise _no_answer(node, "the C-GET", started)
            if code not in (_OK, *_WARNINGS):
                raise UserError(f"{node.url} refused the C-GET of study {study_uid}: {_status_text(last, code)}")
            failed = int(last.get("NumberOfFailedSuboperations", 0) or 0)
            if failed:
                raise UserError(f"{node.url} could not send {failed} object(s) of study {study_uid} by C-GET "
                                f"(final status 0x{code:04X}); the node's log says why")
    return files


def dimse_store(node: PacsNode, paths: list[Path]) -> int:
    """C-STORE every file over one association; UserError with the node's status on the first refusal."""
    from pynetdicom import DEFAULT_TRANSFER_SYNTAXES  # optional pacs extra

    ae = _ae(node)
    syntaxes: dict[str, list[str]] = {}
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        mine = syntaxes.setdefault(str(ds.SOPClassUID), list(DEFAULT_TRANSFER_SYNTAXES[:2]))
        if str(ds.file_meta.TransferSyntaxUID) not in mine:
            mine.append(str(ds.file_meta.TransferSyntaxUID))
    for cls, ts in syntaxes.items():
        ae.add_requested_context(cls, ts)
    ae.add_requested_context(VERIFICATION)  # accepted by any node: a refused SOP class is then told apart
    stored = 0
    with _association(node, ae) as assoc:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        refused = sorted(set(syntaxes) - accepted)
        if refused:
            raise UserError(f"{node.url} refused to store SOP class(es) {', '.join(refused)}: it accepted no "
                            "presentation context for them (not supported by the node)")
        for p in paths:
            started = time.monotonic()
            status = assoc.send_c_store(p)
            code = _status(status)
            if code is None:
                raise _no_answer(node, f"a C-STORE ({stored} of {len(paths)} object(s) stored before)", started)
            if code not in (_OK, *_WARNINGS):
                raise UserError(f"{node.url} refused to store {p.name}: {_status_text(status, code)} "
                                f"({stored} of {len(paths)} object(s) stored before)")
            stored += 1
    return stored
