"""``ich3d predict RUN_DIR|PKG --pacs URL --study UID``: the PACS options of ``ich3d predict``.

The study is retrieved from the node into ``OUT/pacs-study``, predicted on with
``--dicom-out`` (default ``OUT/dicom``), and the DICOM results are stored back into the
study (:mod:`ich3d.deploy.pacs.roundtrip`). ``OUT`` defaults to
``./predict-pacs-<8 hex>`` with a package, ``RUN_DIR/predict/pacs-<8 hex>`` with a run
(the hash of the node and the study: no identifier in a folder name).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ich3d.deploy.package import is_package
from ich3d.deploy.pacs.node import DEFAULT_AET, parse_node
from ich3d.deploy.pacs.roundtrip import pacs_out_name, predict_pacs
from ich3d.errors import UserError

__all__ = ["add_pacs_args", "check_pacs_args", "run_pacs", "pacs_line"]


def add_pacs_args(p: argparse.ArgumentParser) -> None:
    """``--pacs``, ``--study``, ``--pacs-aet``, ``--pacs-timeout``."""
    g = p.add_argument_group("PACS (instead of INPUT; needs ich3d[pacs] and ich3d[dicom])")
    g.add_argument("--pacs", metavar="URL", default=None,
                   help="retrieve the study from this DICOM node, predict, store the --dicom-out results back into "
                   "the study: http://host:port/dicom-web (DICOMweb: QIDO-RS, WADO-RS, STOW-RS) or "
                   "dicom://AET@host:port (DIMSE: C-FIND, C-GET, C-STORE)")
    g.add_argument("--study", metavar="STUDY_UID", default=None,
                   help="with --pacs: the StudyInstanceUID to retrieve and to store the results into")
    g.add_argument("--pacs-aet", metavar="AET", default=None,
                   help=f"with a dicom:// node: ich3d's calling AE title, which the node must know (default {DEFAULT_AET})")
    g.add_argument("--pacs-timeout", metavar="S", type=float, default=30.0,
                   help="with --pacs: seconds to wait for the node to connect or answer (default 30)")


def check_pacs_args(args: argparse.Namespace) -> None:
    """INPUT or ``--pacs`` (not both, not neither); the PACS options only with ``--pacs``."""
    if args.pacs is None:
        stray = [f for f, v in (("--study", args.study), ("--pacs-aet", args.pacs_aet)) if v is not None]
        if stray:
            raise UserError(f"{stray[0]} goes with --pacs URL")
        if args.input is None:
            raise UserError("INPUT is missing: give a DICOM folder or an ingest cache, or --pacs URL --study UID")
        return
    if args.input is not None:
        raise UserError(f"--pacs retrieves the study itself: give no INPUT ({args.input}) with it")
    if not args.study:
        raise UserError("--pacs needs --study STUDY_UID (the StudyInstanceUID to retrieve)")


def run_pacs(args: argparse.Namespace, predict_with: Callable[[argparse.Namespace], dict[str, Any]]) -> dict[str, Any]:
    """The round trip with ``predict_with`` (``ich3d.cli.predict``'s) on the retrieved study."""
    aet = args.pacs_aet if args.pacs_aet is not None else DEFAULT_AET
    node = parse_node(args.pacs, calling_aet=aet, timeout=args.pacs_timeout)
    if args.pacs_aet is not None and node.protocol != "dimse":
        raise UserError("--pacs-aet goes with a dicom://AET@host:port node; DICOMweb has no AE titles")
    name = pacs_out_name(node, args.study)
    out = args.out if args.out is not None else (
        Path.cwd() / f"predict-{name}" if is_package(args.run_dir) else args.run_dir / "predict" / name)

    def predict(input: Path, out: Path, dicom_out: Path) -> dict[str, Any]:
        return predict_with(argparse.Namespace(**{**vars(args), "input": input, "out": out, "dicom_out": dicom_out}))

    return predict_pacs(node, args.study, out, predict, args.dicom_out)


def pacs_line(pacs: dict[str, Any]) -> str:
    """The round trip in one printed line: counts, the node and the study as typed."""
    kinds = ", ".join(f"{n} {m}" for m, n in sorted(pacs["stored_by_modality"].items()))
    return (f"PACS: retrieved {pacs['retrieved']} object(s) of study {pacs['study_uid']} from {pacs['node']}, "
            f"stored {pacs['stored']} result object(s) back ({kinds})")
