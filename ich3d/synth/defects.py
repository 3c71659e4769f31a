"""RSNA's data defects: their rates, and the per-series draws that plant them.

Defect draws have their own random streams (:data:`~ich3d.synth.streams.DEFECT_KEY`):
a defect changes only how its files store the phantom, never the phantom.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ich3d.errors import UserError
from ich3d.synth.streams import DEFECT_KEY, Ids, hex_digits, rng

__all__ = [
    "DefectRates",
    "DEFAULT_DEFECTS",
    "NO_DEFECTS",
    "DEFECT_NAMES",
    "SeriesDefects",
    "draw_series_defects",
    "write_stray_file",
]


@dataclass(frozen=True)
class DefectRates:
    """Probabilities of RSNA's data defects, each in [0, 1].

    Attributes:
        twelve_bit: per series: all its slices carry the 12-bit intercept
            defect (BitsStored 12, PixelRepresentation 0, RescaleIntercept 0
            or 1, uint16 pixels holding ``HU mod 4096`` with HU clipped to
            [-1000, 3095]); the standard correction (add 1000, subtract 4096
            from values >= 4096, intercept -1000) recovers the true HU.
        multi_window: per image: WindowCenter / WindowWidth hold two values.
        fov_minus2000: per series: pixels outside the circular field of view
            (the inscribed circle) store HU -2000 (int16 storage; a 12-bit
            defect series does not also get this one).
        descending: per series: the slice normal points inferior
            (row cosine (-1, 0, 0), pixels mirrored to stay anatomical), so
            the order ascending along the normal is top first and positions
            descend in z; sorting by z alone reverses such a series.
        corrupt: per image: PixelData truncated to half its length; pydicom
            reads the header but ``pixel_array`` raises (like ID_6431af929).
        blank: per image: every pixel stores 0 (zero variance); its labels
            are all 0.
        duplicate_rows: per image: its 6 label rows appear twice in the CSV.
        missing_label: per image: file written, no label rows.
        orphan_label: per image: label rows written, file absent.
        not_dicom: per series: one stray non-DICOM file (junk ``.dcm``,
            empty ``.dcm`` or a ``.txt`` note) in the images folder.

    An image gets at most one of orphan_label / corrupt / blank (in that
    priority) and at most one of missing_label / duplicate_rows; an orphan
    image never loses its rows.
    """

    twelve_bit: float = 0.0
    multi_window: float = 0.0
    fov_minus2000: float = 0.0
    descending: float = 0.0
    corrupt: float = 0.0
    blank: float = 0.0
    duplicate_rows: float = 0.0
    missing_label: float = 0.0
    orphan_label: float = 0.0
    not_dicom: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not (0.0 <= float(v) <= 1.0) or math.isnan(v):
                raise UserError(f"defect rate {f.name}={v!r}: expected a number in [0, 1]")

    def with_rates(self, **rates: float) -> DefectRates:
        """Copy with some rates changed; unknown names raise :class:`UserError`."""
        unknown = sorted(set(rates) - set(DEFECT_NAMES))
        if unknown:
            raise UserError(
                f"unknown defect name(s) {', '.join(unknown)}; expected one of {', '.join(DEFECT_NAMES)}"
            )
        return DefectRates(**{**asdict(self), **rates})


DEFECT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(DefectRates))

#: Small rates in the spirit of RSNA (where most are far rarer per image, but
#: a demo dataset should show each of them now and then).
DEFAULT_DEFECTS = DefectRates(
    twelve_bit=0.05,
    multi_window=0.03,
    fov_minus2000=0.3,
    descending=0.1,
    corrupt=0.002,
    blank=0.002,
    duplicate_rows=0.005,
    missing_label=0.002,
    orphan_label=0.002,
    not_dicom=0.03,
)
NO_DEFECTS = DefectRates()


@dataclass(frozen=True)
class SeriesDefects:
    """The defects drawn for one series of ``n`` images (bool arrays of shape (n,)).

    ``second_window`` and ``zero_pad`` say how a multi-window image writes its
    two values (RSNA style ``['00036', '00036']`` when ``zero_pad``).
    """

    twelve_bit: bool
    fov_minus2000: bool
    descending: bool
    stray: bool
    multi_window: np.ndarray
    orphan: np.ndarray
    corrupt: np.ndarray
    blank: np.ndarray
    missing: np.ndarray
    duplicate: np.ndarray
    detail: np.ndarray


def draw_series_defects(seed: int, p: int, s: int, n: int, rates: DefectRates) -> SeriesDefects:
    """Draw the defects of series ``s`` of patient ``p`` (``n`` images).

    A fixed number of uniforms per series and image, so the rates change which
    defects are planted, never the other draws.
    """
    dr = rng(seed, DEFECT_KEY, p, s)
    us = dr.random(4)
    ui = dr.random((n, 6))
    detail = dr.random(8)
    twelve = bool(us[0] < rates.twelve_bit)
    fov = bool(us[1] < rates.fov_minus2000) and not twelve
    descending = bool(us[2] < rates.descending)
    stray = bool(us[3] < rates.not_dicom)
    multi = ui[:, 0] < rates.multi_window
    orphan = ui[:, 5] < rates.orphan_label
    corrupt = (ui[:, 1] < rates.corrupt) & ~orphan
    blank = (ui[:, 2] < rates.blank) & ~orphan & ~corrupt
    missing = (ui[:, 4] < rates.missing_label) & ~orphan
    duplicate = (ui[:, 3] < rates.duplicate_rows) & ~missing
    return SeriesDefects(
        twelve, fov, descending, stray, multi, orphan, corrupt, blank, missing, duplicate, detail
    )


def write_stray_file(seed: int, p: int, s: int, ids: Ids, img_dir: Path) -> str:
    """Write series ``s`` of patient ``p``'s stray non-DICOM file; return its name.

    Junk bytes in a ``.dcm``, an empty ``.dcm`` or a ``.txt`` note, a third each.
    """
    srng = rng(seed, DEFECT_KEY, p, s, 1)
    kind = int(srng.integers(3))
    if kind == 0:
        name = f"{ids.new(srng, 9)}.dcm"
        (img_dir / name).write_bytes(srng.integers(0, 256, 700, dtype=np.uint8).tobytes())
    elif kind == 1:
        name = f"{ids.new(srng, 9)}.dcm"
        (img_dir / name).write_bytes(b"")
    else:
        name = f"notes_{hex_digits(srng, 6)}.txt"
        (img_dir / name).write_text("exported by the PACS; do not edit\n")
    return name
