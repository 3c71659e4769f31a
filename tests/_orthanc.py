"""A real Orthanc PACS for the tests: its own folder, loopback only, free ports, stopped by PID.

:func:`start_orthanc` writes a config into a temporary folder (storage, index and
log there), starts Debian's ``Orthanc`` with its DICOMweb plugin, waits until its
REST API and ``/dicom-web/`` answer, and returns an :class:`Orthanc` whose
``stop()`` ends that one process. :func:`require_orthanc` installs the two Debian
packages (``orthanc``, ``orthanc-dicomweb``) as root when they are absent
(``tests/_debian.py``); elsewhere it fails with the command to run: never a skip.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from _debian import require_tool

__all__ = ["Orthanc", "require_orthanc", "start_orthanc", "free_port", "CLIENT_AET", "DICOMWEB_PLUGIN"]

#: Debian's DICOMweb plugin of Orthanc (package orthanc-dicomweb)
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: the AE title ich3d calls Orthanc from in the DIMSE tests (declared in DicomModalities)
CLIENT_AET = "ICH3DTEST"


def free_port() -> int:
    """A TCP port free on loopback now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_orthanc() -> str:
    """The Orthanc program, with its DICOMweb plugin present (both installed as root when absent)."""
    program = require_tool("Orthanc", "orthanc")
    if not DICOMWEB_PLUGIN.is_file():
        _install_plugin()
    return program


def _install_plugin() -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{DICOMWEB_PLUGIN} is missing: install it with `apt-get install -y orthanc-dicomweb` (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "orthanc-dicomweb"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0 or not DICOMWEB_PLUGIN.is_file():
        pytest.fail(f"apt-get install orthanc-dicomweb failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")


@dataclass
class Orthanc:
    """A running Orthanc: its ports, folder and process."""

    root: Path
    http_port: int
    dicom_port: int
    aet: str
    process: subprocess.Popen

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"dicom://{self.aet}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(self.rest + path, params=params, timeout=10)
        r.raise_for_status()
        return r.json()

    def post_json(self, path: str, body: Any) -> Any:
        r = requests.post(self.rest + path, json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def upload(self, files: list[Path]) -> None:
        """Store DICOM files through Orthanc's REST API (``POST /instances``)."""
        for f in files:
            r = requests.post(self.rest + "/instances", data=f.read_bytes(), timeout=10)
            r.raise_for_status()

    def stop(self) -> None:
        """End this Orthanc (by its PID) and wait for it."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_orthanc(root: Path, *, aet: str = "ORTHANC", client_port: int | None = None) -> Orthanc:
    """Start Orthanc in ``root`` on free loopback ports; :meth:`Orthanc.stop` ends it.

    Args:
        root: an empty folder for its config, storage, index and log.
        aet: Orthanc's AE title.
        client_port: the port declared for :data:`CLIENT_AET` in ``DicomModalities``.
    """
    program = require_orthanc()
    root = Path(root)
    (root / "db").mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "ich3d-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": aet,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpDescribeErrors": True,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {"ich3d": [CLIENT_AET, "127.0.0.1", client_port or free_port()]},
        "DicomAlwaysAllowStore": True,
    }
    (root / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = (root / "orthanc.log").open("w")
    proc = subprocess.Popen([program, f"--logdir={root}", str(root / "orthanc.json")], stdout=log,
                            stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    orthanc = Orthanc(root, http_port, dicom_port, aet, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited with {proc.returncode}: {(root / 'orthanc.log').read_text()[-2000:]}")
        try:
            if requests.get(orthanc.dicomweb + "/studies", timeout=2).status_code == 200:
                return orthanc
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    orthanc.stop()
    pytest.fail(f"Orthanc did not answer on port {http_port} within 30 s")
