"""Exceptions that carry a message for the user rather than a traceback."""

from __future__ import annotations

__all__ = ["UserError", "TrainingFailed"]


class UserError(Exception):
    """Bad input from the user (a file, a column, a config key, an option).

    The command line prints ``ich3d: error: <message>`` on one line and exits
    with status 2; library callers get the exception. The message names the
    offending thing and, where it helps, what was expected.
    """


class TrainingFailed(UserError):
    """Training began and then failed (a loss that is not finite): the run directory is
    kept for inspection, unlike a failed start, which ``ich3d train`` takes back."""
