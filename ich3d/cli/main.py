"""Entry point of the ``ich3d`` command: one sub-command per pipeline stage.

Each sub-command lives in its own module of :mod:`ich3d.cli` exposing
``add_parser(subparsers)`` and ``run(args) -> int``. Heavy imports (torch,
Lightning) happen inside ``run`` so that ``ich3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from ich3d.cli.commands import COMMANDS
from ich3d.errors import UserError

__all__ = ["main", "build_parser"]



#: OS errors that mean "this output cannot be written" (one ``ich3d: error:`` line, not a traceback)
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``ich3d`` parser.

    Args:
        command: the sub-command whose module is imported and whose parser is built
            in full; ``None`` for none (the listing of ``ich3d --help``, fast: no torch);
            ``"*"`` (default) for every one.
    """
    parser = argparse.ArgumentParser(
        prog="ich3d",
        description=(
            "Intracranial hemorrhage detection in whole head-CT volumes: "
            "synthesize RSNA-format data, ingest DICOM into a volume cache, "
            "train the staged CNN + BiLSTM, predict, and evaluate with DeLong statistics."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_ in COMMANDS.items():
        if command == "*" or name == command:
            importlib.import_module(f"ich3d.cli.{name}").add_parser(sub)
        else:  # listed by name only: its module (and torch) is not imported
            sub.add_parser(name, help=help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    named = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(named if named in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ich3d: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        # a full or read-only disk, or a folder the user may not write, met by any command
        where = f" {exc.filename}" if exc.filename else ""
        print(f"ich3d: error: cannot write{where}: {exc.strerror or exc}; free space or choose "
              "another output folder", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ich3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
