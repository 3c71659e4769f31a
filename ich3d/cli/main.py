"""Entry point of the ``ich3d`` command: one sub-command per pipeline stage.

Each sub-command lives in its own module of :mod:`ich3d.cli` exposing
``add_parser(subparsers)`` and ``run(args) -> int``. Heavy imports (torch,
Lightning) happen inside ``run`` so that ``ich3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ich3d.errors import UserError

__all__ = ["main", "build_parser"]

#: sub-commands, in pipeline order; each is the module ich3d.cli.<name>
COMMANDS: tuple[str, ...] = ("synth", "ingest", "train", "predict", "evaluate", "export", "compare", "seeds", "roc")


def build_parser() -> argparse.ArgumentParser:
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
    for name in COMMANDS:
        importlib.import_module(f"ich3d.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except KeyboardInterrupt:
        print("ich3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
