"""DICOM results of ``ich3d predict --dicom-out DIR``: per series an SR, a KOS and secondary captures.

For every predicted volume (one source series) whose key slices were explained
(:mod:`ich3d.evaluation.prediction.explain`), :class:`DicomResultsWriter` reads the
key slices' source headers (the cache's ``slices.csv`` names each slice's file and
frame under the images folder ``ingest.json`` records) and writes, into
``DIR/<volume key>/`` (the hashed key: no identifier in a file name):

* ``sr.dcm``: a Comprehensive 3D SR with the probability of ``any`` and of each
  subtype the model predicts, the calls at the run's operating points, the model's
  name and version and the key slices by their SOP Instance UIDs;
* ``kos.dcm``: a Key Object Selection of the key slices;
* ``sc_<rank>.dcm``: a Secondary Capture of each key slice's Grad-CAM overlay
  (rank 1: the key slice that drives the call most).

What each object holds, and how it is marked as not for diagnostic use:
:mod:`ich3d.evaluation.prediction.dicom_objects` (SR, KOS) and
:mod:`ich3d.evaluation.prediction.dicom_capture` (SC). A series whose source files are
missing, changed since the ingest, or whose UIDs are not DICOM UIDs (RSNA's
anonymised ``ID_...`` values) gets no objects: it is logged and listed with its
reason (``skipped``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, generate_uid

from ich3d.data.cache import IngestCache, open_cache
from ich3d.errors import UserError
from ich3d.evaluation.prediction.dicom_capture import overlay_rgb, secondary_capture
from ich3d.evaluation.prediction.dicom_objects import (
    NOT_FOR_DIAGNOSIS,
    ResultModel,
    evidence_dataset,
    highdicom_module,
    key_object_selection,
    structured_report,
)
from ich3d.evaluation.prediction.explain import VolumeExplanation, safe_key

__all__ = [
    "DEFAULT_KEY_SLICES",
    "DicomResultsWriter",
    "ResultModel",
    "check_dicom_out",
    "operating_thresholds",
    "write_dicom_results",
]

log = logging.getLogger(__name__)

#: Key slices per volume when ``--dicom-out`` is given without ``--explain N`` (the five key
#: images per scan that the clinical validation of an ICH tool showed its radiologists).
DEFAULT_KEY_SLICES = 5


class _Skip(Exception):
    """A series that gets no DICOM results; the message is the reason."""


def check_dicom_out(dicom_out: str | Path, input: str | Path) -> None:
    """Refuse a ``--dicom-out`` folder inside INPUT, and a missing highdicom, before any model runs.

    Raises:
        UserError: the folder is inside INPUT (the results would be ingested as input next time), or
            highdicom is not installed.
    """
    if Path(dicom_out).expanduser().resolve().is_relative_to(Path(input).expanduser().resolve()):
        raise UserError(f"--dicom-out {dicom_out} is inside INPUT {input}; the results would be read as input "
                        "next time: choose a folder outside INPUT")
    highdicom_module()


def _save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file, atomically (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


def _probabilities(volumes: pd.DataFrame, model: ResultModel) -> dict[str, dict[str, float]]:
    """Volume key -> target -> probability (``probability_<target>`` columns, else ``probability``)."""
    frame = volumes.set_index(volumes["key"].astype(str))
    out: dict[str, dict[str, float]] = {}
    targets = [model.label, *(t for t in model.targets if t != model.label)]
    for key, row in frame.iterrows():
        probs: dict[str, float] = {}
        for t in targets:
            col = f"probability_{t}" if f"probability_{t}" in frame.columns else ("probability" if t == model.label else None)
            if col is not None and pd.notna(row.get(col)):
                probs[t] = float(row[col])
        out[str(key)] = probs
    return out


class DicomResultsWriter:
    """Writes the DICOM results of each explained volume as it comes (``explain_volumes``' ``on_volume``).

    Args:
        out_dir: the ``--dicom-out`` folder.
        cache: the ingest cache the volumes were predicted from (or its folder).
        volumes: ``volumes.csv``'s frame: ``key``, ``probability`` (of ``model.label``) and, for a run of
            several targets, ``probability_<target>``.
        model: the model's name, version, targets and operating points.
        images: the source DICOM folder; default the ``images`` folder the cache's ``ingest.json`` records.

    Attributes:
        files: every file written so far, in order.
        skipped: ``{"key", "reason"}`` of each series that got no objects.
    """

    def __init__(self, out_dir: str | Path, cache: IngestCache | str | Path, volumes: pd.DataFrame,
                 model: ResultModel, *, images: str | Path | None = None) -> None:
        highdicom_module()  # fail before any model runs when highdicom is missing
        self.out_dir = Path(out_dir)
        self.cache = cache if isinstance(cache, IngestCache) else open_cache(cache)
        recorded = self.cache.info.get("images")
        self.images = Path(images) if images is not None else (Path(recorded) if recorded else None)
        self.model = model
        self._probs = _probabilities(volumes, model)
        self._slices = self.cache.slices.set_index(["key", "slice_index"]).sort_index()
        self._series = self.cache.volumes.set_index("key")
        self.files: list[Path] = []
        self.skipped: list[dict[str, str]] = []
        self.n_series = 0

    def _header(self, key: str, index: int) -> tuple[Dataset, int | None]:
        """The source header of slice ``index`` of volume ``key`` and its 1-based frame (None: single frame)."""
        if self.images is None:
            raise _Skip("the cache records no images folder: the source headers cannot be read")
        try:
            row = self._slices.loc[(key, index)]
        except KeyError:
            raise _Skip(f"slice {index} is not in the cache's slices.csv") from None
        path = self.images / str(row["file"])
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except FileNotFoundError:
            raise _Skip(f"the source file of slice {index} is missing under {self.images}") from None
        except (OSError, InvalidDicomError) as exc:
            raise _Skip(f"the source file of slice {index} cannot be read ({type(exc).__name__})") from None
        if str(ds.get("SeriesInstanceUID", "")) != str(self._series.loc[key, "series_uid"]):
            raise _Skip(f"the source file of slice {index} is not of the series the cache holds (changed since the ingest)")
        uids = [ds.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        if not all(u is not None and UID(str(u)).is_valid for u in uids):
            raise _Skip("the source's UIDs are not DICOM UIDs (such as RSNA's anonymised ID_... values): "
                        "results cannot join its study")
        frame = int(row["frame"]) + 1 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None
        return evidence_dataset(ds), frame

    def add(self, explanation: VolumeExplanation) -> list[Path]:
        """Write the objects of one explained volume; returns their paths (none for a skipped series)."""
        key = str(explanation.key)
        try:
            probs = self._probs.get(key)
            if not probs or key not in self._series.index:
                raise _Skip("no volume probability for this volume")
            key_slices = [self._header(key, i) for i in explanation.slice_indices]
        except _Skip as exc:
            log.warning("--dicom-out: volume %s skipped: %s", key, exc)
            self.skipped.append({"key": key, "reason": str(exc)})
            return []
        evidence = list({str(ds.SOPInstanceUID): ds for ds, _ in key_slices}.values())
        folder = self.out_dir / safe_key(key)
        folder.mkdir(parents=True, exist_ok=True)
        written = [
            _save(structured_report(self.model, key, probs, key_slices, evidence), folder / "sr.dcm"),
            _save(key_object_selection(self.model, key, explanation.slice_indices, evidence), folder / "kos.dcm"),
            *self._captures(explanation, key_slices, probs, folder),
        ]
        self.files.extend(written)
        self.n_series += 1
        return written

    def _captures(self, explanation: VolumeExplanation, key_slices: list[tuple[Dataset, int | None]],
                  probs: Mapping[str, float], folder: Path) -> list[Path]:
        """``sc_<rank>.dcm``: the overlay of each key slice, one new series per volume."""
        series_uid = generate_uid()
        n, label = len(explanation.rows), self.model.label
        paths = []
        for rank, (row, (header, frame)) in enumerate(zip(explanation.rows, key_slices, strict=True), start=1):
            idx = int(row["slice_index"])
            lines = [f"{NOT_FOR_DIAGNOSIS} - ich3d research output",
                     f"Grad-CAM of the slice CNN, key slice {rank} of {n} (slice {idx})",
                     f"{self.model.name}: p({label}) = {probs[label]:.3f}"]
            rgb = overlay_rgb(explanation.brain[rank - 1], explanation.maps[rank - 1], lines)
            description = (f"Grad-CAM heat map of the stage-1 slice CNN over the brain window: key slice {rank} of "
                           f"{n} (slice index {idx}, foot to head) of ich3d volume {explanation.key}; "
                           f"{self.model.name} ({self.model.version})")
            sc = secondary_capture(header, frame, rgb, series_uid=series_uid, rank=rank, description=description)
            paths.append(_save(sc, folder / f"sc_{rank}.dcm"))
        return paths

    def summary(self) -> dict[str, Any]:
        """``predict.json``'s ``dicom_out``: folder, series written, files, skipped series with reasons."""
        return {"folder": str(self.out_dir.resolve()), "n_series": self.n_series,
                "files": [str(p.resolve()) for p in self.files], "skipped": list(self.skipped),
                "model": {"name": self.model.name, "version": self.model.version}}


def write_dicom_results(
    out_dir: str | Path,
    cache: IngestCache | str | Path,
    volumes: pd.DataFrame,
    explanations: Iterable[VolumeExplanation],
    model: ResultModel,
    *,
    images: str | Path | None = None,
) -> list[Path]:
    """Write the DICOM results of every explained volume (see the module docstring).

    Args:
        out_dir: the output folder; one sub-folder per volume (its hashed key).
        cache: the ingest cache the volumes were predicted from, or its folder.
        volumes: ``volumes.csv``'s frame (``key``, ``probability``, ``probability_<target>``).
        explanations: the volumes' key slices and heat maps (``explain_volumes``' ``on_volume`` records).
        model: the model's name, version, targets and operating points.
        images: the source DICOM folder; default the one the cache's ``ingest.json`` records.

    Returns:
        The files written, series by series (SR, KOS, secondary captures).

    Raises:
        UserError: highdicom is not installed.
    """
    writer = DicomResultsWriter(out_dir, cache, volumes, model, images=images)
    for explanation in explanations:
        writer.add(explanation)
    return list(writer.files)


def operating_thresholds(points: Mapping[str, Any] | None) -> dict[str, float]:
    """Rule -> threshold of ``metrics.json``'s operating points of one method (``{}`` for None)."""
    return {str(rule): float(op["threshold"]) for rule, op in (points or {}).items()
            if isinstance(op, Mapping) and op.get("threshold") is not None}
