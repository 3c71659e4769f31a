"""Synthetic head-CT datasets in the RSNA 2019 format, with RSNA's defects (``ich3d synth``).

Modules, by concern:

- :mod:`~ich3d.synth.geometry`: series geometry, the head frame;
- :mod:`~ich3d.synth.anatomy`: the head, its parameters and tissues;
- :mod:`~ich3d.synth.bleeds`: hemorrhages, drawn and painted;
- :mod:`~ich3d.synth.phantom`: renders a series (HU + bleed codes + slice labels);
- :mod:`~ich3d.synth.storage`: pixel storage variants, the HU each file holds;
- :mod:`~ich3d.synth.defects`: RSNA's data defects and their draws;
- :mod:`~ich3d.synth.dicom_file`: Part 10 files written byte for byte;
- :mod:`~ich3d.synth.streams`: the seeded random streams, unique identifiers;
- :mod:`~ich3d.synth.series`: one series: its plan, files and truth entry;
- :mod:`~ich3d.synth.generator`: :func:`generate` a dataset, read its truth back.
"""

from __future__ import annotations

from ich3d.synth.defects import DEFAULT_DEFECTS, DEFECT_NAMES, NO_DEFECTS, DefectRates
from ich3d.synth.generator import (
    IMAGES_DIR,
    LABELS_CSV,
    TRUTH_JSON,
    SynthSummary,
    generate,
    load_truth,
    series_hu,
    series_phantom,
)

__all__ = [
    "DEFAULT_DEFECTS",
    "DEFECT_NAMES",
    "NO_DEFECTS",
    "DefectRates",
    "IMAGES_DIR",
    "LABELS_CSV",
    "TRUTH_JSON",
    "SynthSummary",
    "generate",
    "load_truth",
    "series_hu",
    "series_phantom",
]
