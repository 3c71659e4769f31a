"""Secondary Capture images of ``ich3d predict --dicom-out``: a key slice's Grad-CAM overlay, notice burned in.

The image is what ``--explain`` draws in ``slice_<index>.png`` (the brain window in grey,
the class-activation map in ``jet`` where it is above
:data:`~ich3d.evaluation.prediction.explain_plots.FLOOR`, at opacity
:data:`~ich3d.evaluation.prediction.explain_plots.ALPHA`), enlarged by a whole factor to
at least :data:`MIN_SIZE` pixels (the slice nearest-neighbour, the map bilinear), under
a black banner whose first line is the notice
(:data:`~ich3d.evaluation.prediction.dicom_objects.NOT_FOR_DIAGNOSIS`) and whose others
name the slice, the model and the probability: never a patient identifier. The SC
(highdicom's ``SCImage``, RGB, 8 bits) joins the source study; it references its source
slice (Source Image Sequence), sets ``BurnedInAnnotation`` YES and repeats the notice in
``ImageComments``; its Patient Orientation is the source slice's (from Image
Orientation (Patient)) and its Body Part Examined the source's, else ``HEAD``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from ich3d.evaluation.prediction.dicom_objects import (
    NOT_FOR_DIAGNOSIS,
    SERIES_NUMBERS,
    highdicom_module,
)
from ich3d.evaluation.prediction.explain_plots import ALPHA, FLOOR

__all__ = ["MIN_SIZE", "overlay_rgb", "patient_orientation", "secondary_capture"]

#: The overlay is enlarged by a whole factor until its larger side has at least this many pixels.
MIN_SIZE = 512

_FONT_SIZE = 16
_PAD = 6


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=_FONT_SIZE)  # Pillow's bundled font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, resample), dtype=np.float64)


def overlay_rgb(brain: np.ndarray, cam: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """The key slice's heat map over its brain window, under a banner of text lines.

    Args:
        brain: ``(H, W)`` the brain-window channel in [0, 1].
        cam: ``(H, W)`` the class-activation map in [0, 1].
        lines: the banner's text, one line each (the first in yellow).

    Returns:
        ``(banner + k*H, k*W, 3)`` uint8 RGB, ``k`` the smallest whole factor reaching :data:`MIN_SIZE`.
    """
    h, w = brain.shape
    k = max(1, math.ceil(MIN_SIZE / max(h, w)))
    size = (w * k, h * k)
    grey = np.clip(_resize(brain, size, Image.Resampling.NEAREST), 0.0, 1.0)
    heat_map = np.clip(_resize(cam, size, Image.Resampling.BILINEAR), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    heat = colormaps["jet"](heat_map)[..., :3]
    shown = (heat_map >= FLOOR)[..., None]
    rgb = np.where(shown, (1.0 - ALPHA) * rgb + ALPHA * heat, rgb)
    font = _font()
    line_h = _FONT_SIZE + 4
    banner = _PAD * 2 + line_h * len(lines)
    canvas = Image.new("RGB", (size[0], size[1] + banner), (0, 0, 0))
    canvas.paste(Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB"), (0, banner))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((_PAD, _PAD + i * line_h), text, fill=(255, 255, 0) if i == 0 else (255, 255, 255), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def patient_orientation(header: Dataset) -> tuple[str, str] | None:
    """The Patient Orientation (row, column directions) of a slice from its Image Orientation (Patient).

    Each direction's letters (L/R, P/A, H/F) in order of its largest components (those over 0.1),
    as in DICOM PS3.3 C.7.6.1.1.1; None when the header has no orientation.
    """
    iop = header.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None

    def letters(v: np.ndarray) -> str:
        order = np.argsort(-np.abs(v))
        return "".join(("LPH"[i] if v[i] > 0 else "RAF"[i]) for i in order if abs(v[i]) > 0.1)

    row, col = np.asarray([float(x) for x in iop[:3]]), np.asarray([float(x) for x in iop[3:]])
    return letters(row), letters(col)


def secondary_capture(header: Dataset, frame: int | None, rgb: np.ndarray, *, series_uid: str, rank: int,
                      description: str) -> Dataset:
    """The Secondary Capture of one key slice's overlay, in the source study.

    Args:
        header: the source slice's header (:func:`~ich3d.evaluation.prediction.dicom_objects.evidence_dataset`).
        frame: its 1-based frame in a multi-frame file, None for a single-frame file.
        rgb: the image (:func:`overlay_rgb`).
        series_uid: the SC series of the volume (one per source series).
        rank: the key slice's rank (the instance number).
        description: what the image shows (``DerivationDescription``).

    Returns:
        The SC dataset.
    """
    hd = highdicom_module()
    orientation = patient_orientation(header)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=UID(series_uid), series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=UID(generate_uid()), instance_number=int(rank), manufacturer="ich3d",
        patient_orientation=orientation or ("", ""), series_description=f"ich3d heat maps: {NOT_FOR_DIAGNOSIS}",
    )
    sc.BurnedInAnnotation = "YES"
    # a head CT: an unpaired body part, so Laterality (type 2C, for paired parts) is not needed
    sc.BodyPartExamined = str(header.get("BodyPartExamined") or "HEAD")
    sc.ImageComments = f"{NOT_FOR_DIAGNOSIS}. {description}"
    sc.DerivationDescription = description[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = header.SOPClassUID
    source.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if frame is not None:
        source.ReferencedFrameNumber = int(frame)
    sc.SourceImageSequence = [source]
    return sc
