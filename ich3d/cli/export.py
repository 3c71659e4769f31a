"""``ich3d export``: a trained run's models as a self-contained package (MONAI bundle layout).

Usage::

    ich3d export RUN_DIR --out PKG [--stage VOLUME_STAGE] [--wandb [offline|online]]
                                  [--wandb-project NAME] [--wandb-entity NAME]

Writes ``PKG`` (:mod:`ich3d.deploy.package`): the volume model (the first finished
volume stage, or ``--stage``) and the stage-1 slice CNN as safetensors weights,
TorchScript and ONNX (any number of slices), ``configs/metadata.json`` (MONAI),
``configs/inference.json``, ``configs/ich3d.json`` (the inputs, targets, operating
points), ``docs/README.md``, ``LICENSE`` and ``manifest.json``. The TorchScript and
ONNX files are checked against the checkpoint before the package is written.
``ich3d predict PKG INPUT`` then predicts from the package alone. With ``--wandb``
the package is also logged as a W&B ``model`` artifact (:mod:`ich3d.deploy.wandb`;
files under ``PKG.wandb/``; the project and entity default to the run's ``tracking``).
The work is :func:`ich3d.deploy.export.export_run`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ich3d.cli.commands import COMMANDS
from ich3d.cli.options import add_wandb_options
from ich3d.stages import volume_stages

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    volume_names = [s.name for s in volume_stages()]
    p = subparsers.add_parser(
        "export",
        help=COMMANDS["export"],
        description=(
            "Export a run's volume model and stage-1 slice CNN: safetensors weights, TorchScript and ONNX "
            "(dynamic number of slices), the inputs they need, the operating points and figures of the run's "
            "evaluation (ich3d evaluate RUN_DIR first), a licence note and a manifest of sha256 hashes."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory (runs/<experiment>/<run-id>)")
    p.add_argument("--out", type=Path, required=True, metavar="PKG", help="package folder to create (new or empty)")
    p.add_argument(
        "--stage",
        choices=volume_names,
        default=None,
        help=f"volume model to export (default: the first finished one of {' > '.join(volume_names)})",
    )
    add_wandb_options(p, what="the package as a model artifact", files="PKG.wandb/", project_from_run=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ich3d.deploy.export import export_run  # heavy (torch): off the --help path

    result = export_run(args.run_dir, args.out, stage=args.stage)
    stages = ", ".join(f"{k}: {v}" for k, v in result["stages"].items())
    worst = max(result["parity"].values(), default=0.0)
    print(f"package: {result['out']} ({stages}); TorchScript/ONNX vs checkpoint: max logit difference {worst:.1e}")
    if args.wandb:
        from ich3d.deploy.wandb import log_package_artifact  # heavy (wandb): off the --help path
        from ich3d.runs.run_dir import open_run_dir  # heavy (torch via the config's registries)

        config = open_run_dir(args.run_dir).load_config()
        folder = log_package_artifact(
            result["out"],
            experiment=config.experiment,
            run_id=Path(args.run_dir).resolve().name,
            mode=args.wandb,
            project=args.wandb_project or config.tracking.project,
            entity=args.wandb_entity or config.tracking.entity,
            parity=result["parity"],
        )
        print(f"W&B model artifact: {folder}")
    return 0
