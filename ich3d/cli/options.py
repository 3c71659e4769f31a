"""Options several ``ich3d`` commands share (kept in one place so their names and help agree)."""

from __future__ import annotations

import argparse

__all__ = ["add_wandb_options"]


def add_wandb_options(p: argparse.ArgumentParser, *, what: str, files: str, project_from_run: bool = False) -> None:
    """``--wandb [offline|online]``, ``--wandb-project NAME``, ``--wandb-entity NAME``.

    Args:
        p: the command's parser.
        what: what is logged (the end of ``--wandb``'s help, e.g. "the tables").
        files: where W&B writes its local files (e.g. "--out/wandb").
        project_from_run: the project and entity default to the run's ``tracking`` section
            (None here, resolved by the command) instead of ``ich3d`` and the user's entity.
    """
    p.add_argument(
        "--wandb",
        nargs="?",
        const="offline",
        default=None,
        choices=["offline", "online"],
        help=f"log {what} to W&B (offline unless 'online'; files under {files})",
    )
    if project_from_run:
        p.add_argument("--wandb-project", default=None, metavar="NAME", help="W&B project (default: the run's tracking.project)")
        p.add_argument("--wandb-entity", default=None, metavar="NAME", help="W&B entity (default: the run's tracking.entity)")
    else:
        p.add_argument("--wandb-project", default="ich3d", metavar="NAME", help="W&B project (default: ich3d)")
        p.add_argument("--wandb-entity", default=None, metavar="NAME", help="W&B entity (default: yours)")
