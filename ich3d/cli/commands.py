"""The sub-commands of ``ich3d``, in pipeline order, with their one-line help.

Each is the module ``ich3d.cli.<name>`` (``add_parser(subparsers)``, ``run(args)``).
Kept apart from the modules so that ``ich3d --help`` lists them without importing
any (their parsers read registries that import torch).
"""

from __future__ import annotations

__all__ = ["COMMANDS"]

COMMANDS: dict[str, str] = {
    "synth": "write a synthetic RSNA-format head-CT dataset",
    "ingest": "ingest CT DICOM (RSNA 2019, hospital / PACS exports) into a cache of volumes",
    "train": "train the stages (slice CNN, frozen-CNN BiLSTM, end-to-end) of an experiment",
    "predict": "volume and slice probabilities of a trained run on a DICOM folder or an ingest cache",
    "evaluate": "evaluate a trained run: baselines and volume models, DeLong CIs, operating points, report",
    "export": "a trained run's models as a package (MONAI bundle layout) that ich3d predict PKG runs alone",
    "compare": "compare evaluated runs: every method in one table, paired DeLong tests across runs",
    "ensemble": "average chosen methods of evaluated runs on the same test volumes, DeLong against each member",
    "select": "pick the best method, system or ensemble on out-of-fold or validation predictions only",
    "seeds": "AUC ranges over seeds: min / median / max per method, paired tests' p ranges",
    "roc": "AUC, DeLong CIs and paired tests for a CSV of scores",
}
