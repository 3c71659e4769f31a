"""Keep pydicom's and the decoders' chatter off the console; keep it for the skip reason.

pydicom reports a failing decoder plugin with ``LOGGER.exception`` (a traceback per
plugin and slice), a truncated file with ``warn_and_log`` (a warning and a log
record: printed twice), and the JPEG libraries under its GDCM plugin write to the
process's standard error. :func:`quiet` collects all three while a file is read
or decoded, so the console stays clean and the caller can put what was said into
the one-line detail of a skip.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Said", "quiet", "one_line"]


def one_line(text: object) -> str:
    """``text`` on one line: every run of whitespace (line breaks included) one space."""
    return " ".join(str(text).split())


class Said:
    """What was said while :func:`quiet` was active (log records, warnings, stderr)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __contains__(self, text: str) -> bool:
        return any(text in m for m in self.messages)

    def summary(self, known: str = "") -> str:
        """The distinct messages not already in ``known``, in order, on one line."""
        seen = dict.fromkeys(one_line(m) for m in self.messages if m.strip())
        return "; ".join(m for m in seen if m not in known)


class _Collect(logging.Handler):
    def __init__(self, said: Said) -> None:
        super().__init__(logging.DEBUG)
        self.said = said

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.said.messages.append(record.getMessage())


@contextmanager
def quiet(stderr: bool = False) -> Iterator[Said]:
    """Collect pydicom's log records and warnings (and with ``stderr``, what native
    code writes to file descriptor 2) instead of printing them."""
    said = Said()
    logger = logging.getLogger("pydicom")
    handler = _Collect(said)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    saved = None
    capture = tempfile.TemporaryFile() if stderr else None
    try:
        if capture is not None:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(capture.fileno(), 2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield said
        said.messages.extend(str(w.message) for w in caught)
    finally:
        if capture is not None and saved is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            said.messages.extend(capture.read().decode("utf-8", "replace").splitlines())
        if capture is not None:
            capture.close()
        logger.removeHandler(handler)
        logger.propagate = propagate
