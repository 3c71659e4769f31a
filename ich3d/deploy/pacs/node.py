"""A DICOM node as ``--pacs`` names it: its URL parsed, the AE titles checked, shared constants."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pydicom

from ich3d.errors import UserError

__all__ = ["PacsNode", "parse_node", "write_instance", "quiet_pydicom", "DEFAULT_AET", "FAILURE_REASONS"]

#: ich3d's calling AE title on a DIMSE node unless ``--pacs-aet`` says otherwise
DEFAULT_AET = "ICH3D"

#: DICOM failure reasons (PS3.4 / PS3.18 FailureReason and DIMSE C-STORE status) by code
FAILURE_REASONS: dict[int, str] = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA701: "out of resources",
    0xA702: "out of resources: unable to perform sub-operations",
    0xA900: "data set does not match SOP class",
    0xB000: "coercion of data elements",
    0xC000: "cannot understand",
    0xC122: "referenced transfer syntax not supported",
}

_AET_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: 16 characters, no backslash


@dataclass(frozen=True)
class PacsNode:
    """A DICOM node as ``--pacs`` named it.

    Attributes:
        url: the URL exactly as given (what messages and logs show).
        protocol: ``dicomweb`` or ``dimse``.
        host: host name or address.
        port: TCP port.
        called_aet: the node's AE title (DIMSE only).
        calling_aet: ich3d's AE title (DIMSE only).
        timeout: seconds to wait for a connection or an answer.
    """

    url: str
    protocol: str
    host: str
    port: int
    called_aet: str | None = None
    calling_aet: str = DEFAULT_AET
    timeout: float = 30.0


def _check_aet(aet: str, what: str) -> str:
    if not _AET_RE.match(aet) or not aet.strip():
        raise UserError(f"{what} {aet!r}: an AE title is 1 to 16 printable ASCII characters without a backslash")
    return aet.strip()


def parse_node(url: str, *, calling_aet: str = DEFAULT_AET, timeout: float = 30.0) -> PacsNode:
    """The node of ``--pacs URL``.

    Args:
        url: ``http(s)://host:port/<DICOMweb root>`` or ``dicom://AET@host:port``.
        calling_aet: ich3d's AE title on a DIMSE node (``--pacs-aet``).
        timeout: seconds to wait for a connection or an answer.

    Raises:
        UserError: a URL of another scheme, without a host or port, or a bad AE title.
    """
    parts = urlsplit(url)
    if timeout <= 0:
        raise UserError(f"--pacs-timeout {timeout}: expected a number of seconds > 0")
    try:
        port = parts.port
    except ValueError:
        raise UserError(f"--pacs {url}: the port is not a number from 1 to 65535") from None
    if parts.scheme in ("http", "https"):
        if parts.username or parts.password:
            raise UserError("--pacs: a user or password in the URL is not supported (it would be logged); "
                            "reach a node with authentication over DIMSE (dicom://AET@host:port)")
        if not parts.hostname:
            raise UserError(f"--pacs {url}: no host; expected e.g. http://localhost:8042/dicom-web")
        return PacsNode(url, "dicomweb", parts.hostname, port or (443 if parts.scheme == "https" else 80),
                        timeout=timeout)
    if parts.scheme == "dicom":
        if not parts.username or not parts.hostname or port is None:
            raise UserError(f"--pacs {url}: expected dicom://AET@host:port (the node's AE title, host and port)")
        return PacsNode(url, "dimse", parts.hostname, port, _check_aet(parts.username, "the node's AE title"),
                        _check_aet(calling_aet, "--pacs-aet"), timeout)
    raise UserError(f"--pacs {url}: expected http(s)://host:port/dicom-web (DICOMweb) or dicom://AET@host:port (DIMSE)")


def write_instance(ds: pydicom.Dataset, dest: Path, index: int) -> Path:
    """Write a retrieved object as ``dest/<index>.dcm`` (a Part 10 file; named by count, not by UID)."""
    path = dest / f"{index:06d}.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path




@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """No value validation by pydicom inside: its warnings quote the value (a UID such as RSNA's ``ID_<hex>``)."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = before
