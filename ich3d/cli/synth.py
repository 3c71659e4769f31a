"""``ich3d synth OUT``: write a synthetic dataset in the RSNA 2019 format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.errors import UserError
from ich3d.synth import DEFAULT_DEFECTS, DEFECT_NAMES, NO_DEFECTS, DefectRates, generate

__all__ = ["add_parser", "run", "parse_defects"]

_DEFECT_HELP = """\
defects (rates in [0, 1]; --defect NAME=RATE, repeatable):
  twelve_bit      per series: 12-bit intercept defect (BitsStored 12,
                  PixelRepresentation 0, RescaleIntercept > -100)
  multi_window    per image: WindowCenter/WindowWidth hold two values
  fov_minus2000   per series: -2000 HU outside the circular field of view
  descending      per series: slice normal points down (top slice first)
  corrupt         per image: truncated PixelData (reading pixels raises)
  blank           per image: constant image (zero variance), labels 0
  duplicate_rows  per image: its 6 CSV rows appear twice
  missing_label   per image: file present, no CSV rows
  orphan_label    per image: CSV rows present, no file
  not_dicom       per series: a stray non-DICOM file in the folder
default rates: {defaults}

writes OUT/stage_2_train/ID_<hex>.dcm, OUT/stage_2_train.csv and
OUT/synth_truth.json (ground truth for tests; not part of the RSNA format).
The same --seed gives byte-identical files.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = ", ".join(f"{k}={getattr(DEFAULT_DEFECTS, k):g}" for k in DEFECT_NAMES)
    p = subparsers.add_parser(
        "synth",
        help=COMMANDS["synth"],
        description=(
            "Write a synthetic dataset in exactly the RSNA 2019 Intracranial Hemorrhage "
            "format: one DICOM slice per file from a head phantom in HU with painted "
            "hemorrhages of the five subtypes, the label CSV, and RSNA's known defects."
        ),
        epilog=_DEFECT_HELP.format(defaults=defaults),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--patients", type=int, default=10, metavar="N", help="patients (default 10)")
    p.add_argument(
        "--size",
        type=int,
        default=512,
        metavar="PX",
        help="rows = columns per slice (default 512, >= 32)",
    )
    p.add_argument(
        "--slices",
        type=int,
        nargs=2,
        default=(24, 60),
        metavar=("MIN", "MAX"),
        help="slices per series, inclusive (default 24 60, like RSNA)",
    )
    p.add_argument(
        "--positive-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="fraction of series with a hemorrhage (default 0.5)",
    )
    p.add_argument(
        "--studies",
        type=int,
        nargs=2,
        default=(1, 3),
        metavar=("MIN", "MAX"),
        help="studies (= series) per patient (default 1 3)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--defect",
        action="append",
        default=[],
        metavar="NAME=RATE",
        help="set one defect rate (see below); repeatable",
    )
    p.add_argument(
        "--no-defects", action="store_true", help="start from all rates 0 (then apply --defect)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier dataset in OUT")
    p.add_argument(
        "--no-artefacts",
        action="store_true",
        help="leave out the phantom's CT artefacts (partial volume of the vault, skull-base streaks), for ablations",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is drawn only when stderr is a terminal)")
    p.set_defaults(func=run)


def parse_defects(items: list[str], no_defects: bool) -> DefectRates:
    """``NAME=RATE`` strings -> :class:`~ich3d.synth.DefectRates` (UserError if bad)."""
    rates: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--defect {item!r}: expected NAME=RATE, e.g. corrupt=0.01")
        try:
            rate = float(value)
        except ValueError:
            raise UserError(f"--defect {item!r}: rate {value!r} is not a number") from None
        rates[name.strip()] = rate
    base = NO_DEFECTS if no_defects else DEFAULT_DEFECTS
    return base.with_rates(**rates)


def run(args: argparse.Namespace) -> int:
    defects = parse_defects(args.defect, args.no_defects)
    summary = generate(
        Path(args.out),
        patients=args.patients,
        size=args.size,
        slices=tuple(args.slices),
        positive_fraction=args.positive_fraction,
        studies=tuple(args.studies),
        seed=args.seed,
        defects=defects,
        progress=not args.no_progress and sys.stderr.isatty(),  # no bar frames in log files
        overwrite=args.overwrite,
        artefacts=not args.no_artefacts,
    )
    print(summary.format())
    return 0
