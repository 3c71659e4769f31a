"""DICOMweb through dicomweb-client: QIDO-RS finds the study, WADO-RS retrieves it, STOW-RS stores into it."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom

from ich3d.deploy.pacs.node import FAILURE_REASONS, PacsNode, write_instance
from ich3d.errors import UserError

__all__ = ["dicomweb_retrieve", "dicomweb_store"]

_STORE_BATCH = 32  # STOW-RS requests carry this many objects at most (memory bounded)


def _dicomweb_client(node: PacsNode) -> Any:
    try:
        from dicomweb_client.api import DICOMwebClient  # the optional pacs extra
    except ImportError:
        raise UserError("--pacs with a DICOMweb URL needs the pacs extra: pip install 'ich3d[pacs]'") from None
    # their INFO (dicomweb-client) and DEBUG (urllib3) lines name every series and instance UID they fetch
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.INFO)
    # permissive: UIDs as archives hold them (RSNA 2019 and ich3d synth write ID_<hex>), not only digits and dots
    client = DICOMwebClient(node.url.rstrip("/"), timeout=node.timeout, permissive_uid=True)
    # no retries: they back off exponentially on any exception too (30 s before "connection refused")
    client.set_http_retry_params(retry=False)
    return client


def _node_message(response: Any) -> str:
    """The node's own words in an HTTP error body: Orthanc's ``Message``, or the text's start."""
    text = (getattr(response, "text", "") or "").strip()
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body = json.loads(text)
        if isinstance(body, dict):
            for key in ("Message", "message", "error", "OrthancError"):
                if isinstance(body.get(key), str):
                    return body[key]
            failures = _failures(pydicom.Dataset.from_json(body))
            if failures:
                return failures
    return " ".join(text.split())[:200]


def _failures(response: pydicom.Dataset | None) -> str:
    """``N object(s): <reason> (0xXXXX)`` per failure reason of a STOW-RS response's FailedSOPSequence."""
    counts: dict[int, int] = {}
    for item in (response or pydicom.Dataset()).get("FailedSOPSequence", []):
        code = int(item.get("FailureReason", 0x0110))
        counts[code] = counts.get(code, 0) + 1
    return "; ".join(f"{n} object(s): {FAILURE_REASONS.get(c, 'failure')} (0x{c:04X})" for c, n in counts.items())


@contextlib.contextmanager
def _http(node: PacsNode, doing: str, study_uid: str) -> Iterator[None]:
    import requests  # dicomweb-client's HTTP library (the pacs extra)

    try:
        yield
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else 0
        if code == 404 and doing != "store":
            raise UserError(f"study {study_uid} is not on {node.url} (HTTP 404 to {doing})") from None
        reason = e.response.reason if e.response is not None else ""
        raise UserError(f"{node.url} answered HTTP {code} {reason} to {doing} of study {study_uid}: "
                        f"{_node_message(e.response)}") from None
    except (requests.ConnectionError, requests.Timeout) as e:
        what = "timed out" if isinstance(e, requests.Timeout) else "connection refused or no route"
        raise UserError(f"PACS {node.url} is unreachable ({what}); check --pacs and that the node runs") from None


def _ct_series(client: Any, node: PacsNode, study_uid: str) -> list[str]:
    """The study's CT series (QIDO-RS at series level); UserError for an unknown study or one without CT."""
    with _http(node, "a QIDO-RS search", study_uid):
        found = client.search_for_series(study_instance_uid=study_uid)
    series = {}
    for item in found or []:
        ds = pydicom.Dataset.from_json(item)
        series[str(ds.get("SeriesInstanceUID", ""))] = str(ds.get("Modality", ""))
    if not series:
        raise UserError(f"study {study_uid} is not on {node.url} (QIDO-RS found no series of it)")
    ct = [uid for uid, modality in series.items() if modality == "CT"]
    if not ct:
        raise UserError(f"study {study_uid} on {node.url} has no CT series (modalities: "
                        f"{', '.join(sorted(set(series.values())))})")
    return ct


def dicomweb_retrieve(node: PacsNode, study_uid: str, dest: Path) -> list[Path]:
    """The study's CT series by WADO-RS into ``dest`` (files named by count)."""
    client = _dicomweb_client(node)
    files: list[Path] = []
    for uid in _ct_series(client, node, study_uid):
        with _http(node, "a WADO-RS retrieve", study_uid):
            for ds in client.iter_series(study_uid, uid):
                files.append(write_instance(ds, dest, len(files)))
    return files


def dicomweb_store(node: PacsNode, paths: list[Path], study_uid: str) -> int:
    """STOW-RS into ``/studies/<study_uid>`` in batches; UserError with the node's answer on a refusal."""
    client = _dicomweb_client(node)
    stored = 0
    for start in range(0, len(paths), _STORE_BATCH):
        batch = [pydicom.dcmread(p) for p in paths[start : start + _STORE_BATCH]]
        with _http(node, "store", study_uid):
            response = client.store_instances(batch, study_instance_uid=study_uid)
        failures = _failures(response)
        if failures:
            raise UserError(f"{node.url} refused to store into study {study_uid}: {failures}")
        stored += len(response.get("ReferencedSOPSequence", []))
    if stored != len(paths):
        raise UserError(f"{node.url} acknowledged {stored} of {len(paths)} object(s) stored into study {study_uid}")
    return stored
