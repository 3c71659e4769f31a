"""Debian tools a test needs (Orthanc, dicom3tools' ``dciodvfy``, dcmtk's ``dsrdump``).

The tests that check ich3d's DICOM objects against the field's own validators and a real
PACS run those programs; they are Debian packages, not Python ones. :func:`require_tool`
returns the program's path, installing its package with ``apt-get`` first when it is absent
and the tests run as root (as CI does). Anywhere else a missing tool fails the test with the
command that installs it: these tests never skip.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["require_tool"]

_LOCK = Path("/tmp/ich3d-tests-apt.lock")


def require_tool(program: str, package: str) -> str:
    """The path of ``program``, installing Debian ``package`` when it is missing.

    Args:
        program: the executable's name (``dciodvfy``, ``Orthanc``, ``dsrdump``).
        package: the Debian package that provides it (``dicom3tools``, ``orthanc``, ``dcmtk``).

    Returns:
        The absolute path of the program.
    """
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{program} is missing: install it with `apt-get install -y {package}` (as root)")
    with _LOCK.open("w") as lock:  # pytest-xdist workers or parallel clones: one apt-get at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
        if not found:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            run = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", package],
                                 env=env, capture_output=True, text=True)
            if run.returncode != 0:  # a stale package index: refresh once and retry
                subprocess.run(["apt-get", "update"], env=env, capture_output=True)
                run = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", package],
                                     env=env, capture_output=True, text=True)
            if run.returncode != 0:
                pytest.fail(f"apt-get install {package} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
            found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if not found:
        pytest.fail(f"{package} is installed but {program} is not on PATH")
    return found
