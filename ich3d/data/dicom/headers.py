"""Header reading: one file -> its :class:`~ich3d.data.dicom.records.SliceHeader` (s).

The fast path (:func:`~ich3d.data.dicom.raw.fast_dataset`) reads plain native
files; every other file goes through ``pydicom.dcmread`` with the pixel data
deferred. Both feed the same rules (:func:`read_headers`).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from ich3d.data.dicom.decoders import DECODER_PACKAGES, decoder_available
from ich3d.data.dicom.quiet import quiet
from ich3d.data.dicom.raw import fast_dataset
from ich3d.data.dicom.records import (
    DEFLATED,
    DICOMDIR_CLASS,
    NATIVE_TRANSFER_SYNTAXES,
    REASON_BAD_GEOMETRY,
    REASON_BAD_RESCALE,
    REASON_DICOMDIR,
    REASON_LOCALIZER,
    REASON_MISSING_POSITION,
    REASON_MISSING_TAG,
    REASON_MULTIFRAME,
    REASON_NO_DECODER,
    REASON_NOT_CT,
    REASON_NOT_DICOM,
    REASON_UNREADABLE_FILE,
    REASON_UNREADABLE_PIXELS,
    REASON_UNSUPPORTED_PIXELS,
    SkipSlice,
    SliceHeader,
    image_id_of,
    is_lossy,
)
from ich3d.data.dicom.tags import (
    T_ACCESSION,
    T_BITS_ALLOCATED,
    T_BITS_STORED,
    T_COLUMNS,
    T_FRAME_GROUPS,
    T_FRAMES,
    T_IMAGE_TYPE,
    T_INTERCEPT,
    T_KERNEL,
    T_LOSSY,
    T_MODALITY,
    T_ORIENTATION,
    T_PATIENT,
    T_PIXEL_DATA,
    T_PIXEL_REPR,
    T_POSITION,
    T_ROWS,
    T_SAMPLES,
    T_SERIES,
    T_SLOPE,
    T_SOP,
    T_SOP_CLASS,
    T_SPACING,
    T_STUDY,
    T_THICKNESS,
    tag_encodings,
    tag_floats,
    tag_int,
    tag_list,
    tag_strings,
    tag_text,
    tag_ushort,
)
from ich3d.data.dicom.truncation import TRUNCATED_HEADER, ends_inside_an_element
from ich3d.data.schema import PATIENT_FROM_STUDY_PREFIX

__all__ = [
    "read_dataset",
    "pydicom_dataset",
    "headers_of",
    "read_header",
    "read_headers",
    "NOT_DICOM_DETAIL",
    "TRUNCATED_ENCAPSULATED",
]

#: The detail of a *not DICOM* file (read with and without file meta, as pydicom's
#: ``force=True``).
NOT_DICOM_DETAIL = (
    "no DICOM file meta ('DICM' prefix); read without it: no Modality or SOPClassUID"
)
#: The detail of a file that ends inside its encapsulated (compressed) pixel data.
TRUNCATED_ENCAPSULATED = "truncated: the file ends inside its compressed pixel data"
_EOF_IN_PIXELS = "End of file reached before delimiter"
_SIZE_TAGS = ("SeriesInstanceUID", "Rows", "Columns")

_SHARED: dict[tuple[float, ...], tuple[float, ...]] = {}


def read_dataset(path: str, file_size: int | None = None) -> tuple[Any, str]:
    """Parse the header (pixel data deferred): (dataset, transfer syntax or "")."""
    fast = fast_dataset(path, file_size)
    if fast is not None:
        meta, ds, syntax = fast
        sop_class = tag_text(meta, 0x00020002) or ""
        if sop_class == DICOMDIR_CLASS or os.path.basename(path).upper() == "DICOMDIR":
            raise SkipSlice(REASON_DICOMDIR)
        return ds, syntax
    return pydicom_dataset(path)


def pydicom_dataset(path: str) -> tuple[Any, str]:
    """:func:`read_dataset` with pydicom (the reference; every file the fast path declines).

    pydicom's warnings and log records are kept off the console (:func:`quiet`); a
    file that ends inside its encapsulated pixel data (pydicom 3 then returns an empty
    dataset) is *unreadable pixel data*, "truncated".
    """
    skip: SkipSlice | None = None
    with quiet() as said:
        try:
            ds = _dcmread(path)
            meta = getattr(ds, "file_meta", None)
            syntax = (tag_text(meta, 0x00020010) or "") if meta is not None else ""
            sop_class = (tag_text(meta, 0x00020002) or "") if meta is not None else ""
        except SkipSlice as exc:
            skip = exc
        except Exception as exc:  # noqa: BLE001 - any parser failure is an unreadable file
            skip = SkipSlice(REASON_UNREADABLE_FILE, f"{type(exc).__name__}: {exc}")
    if _EOF_IN_PIXELS in said:
        raise SkipSlice(REASON_UNREADABLE_PIXELS, TRUNCATED_ENCAPSULATED)
    if skip is not None:
        raise skip
    if sop_class == DICOMDIR_CLASS or os.path.basename(path).upper() == "DICOMDIR":
        raise SkipSlice(REASON_DICOMDIR)
    return ds, syntax


def _dcmread(path: str) -> Any:
    """``dcmread`` of the header tags; without file meta, forced (DICOM when it then holds a
    Modality or a SOPClassUID)."""
    try:
        return pydicom.dcmread(path, defer_size=256, specific_tags=tag_list())
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, defer_size=256, specific_tags=tag_list(), force=True)
    except Exception:  # noqa: BLE001 - not parseable at all
        raise SkipSlice(REASON_NOT_DICOM, NOT_DICOM_DETAIL) from None
    if ds.get_item(T_MODALITY) is None and ds.get_item(T_SOP_CLASS) is None:
        raise SkipSlice(REASON_NOT_DICOM, NOT_DICOM_DETAIL)
    return ds


def read_header(path: str | os.PathLike[str], file_size: int | None = None) -> SliceHeader:
    """Read the header of one single-frame slice file without reading its pixel data.

    Args:
        path: the DICOM file.
        file_size: its size in bytes if already known (saves a ``stat``).

    Returns:
        The slice record.

    Raises:
        SkipSlice: the file cannot become a slice (see :func:`read_headers`).
        ValueError: a multi-frame file (use :func:`read_headers`).
    """
    headers = read_headers(path, file_size)
    if len(headers) != 1:
        raise ValueError(f"{path} holds {len(headers)} frames; use read_headers()")
    return headers[0]


def read_headers(path: str | os.PathLike[str], file_size: int | None = None) -> list[SliceHeader]:
    """Read the header(s) of one image file without reading its pixel data.

    Args:
        path: the DICOM file.
        file_size: its size in bytes if already known (saves a ``stat``).

    Returns:
        One slice record for a single-frame file; one per frame (``frame`` 1..N, in
        file order) for a multi-frame file.

    Raises:
        SkipSlice: the file cannot become a slice; ``reason`` says why (not DICOM,
            DICOMDIR, unreadable, not CT, localizer, missing tags, missing position or
            orientation, multi-frame without per-frame geometry, pixel data missing /
            of the wrong length / truncated, unsupported pixel format, no decoder).
    """
    path = os.fspath(path)
    try:
        ds, syntax = read_dataset(path, file_size)
        try:
            return headers_of(ds, path, syntax, file_size)
        except SkipSlice:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed tag value
            raise SkipSlice(REASON_UNREADABLE_FILE, f"{type(exc).__name__}: {exc}") from None
    except SkipSlice as skip:
        if _may_be_cut(skip) and ends_inside_an_element(path):  # say what happened, not what is missing
            raise SkipSlice(REASON_UNREADABLE_FILE, TRUNCATED_HEADER) from None
        raise


#: skip reasons a header cut short produces (tags after the cut look absent)
_CUT_REASONS = frozenset(
    {REASON_NOT_DICOM, REASON_UNREADABLE_FILE, REASON_NOT_CT, REASON_MISSING_TAG, REASON_MISSING_POSITION,
     REASON_MULTIFRAME, REASON_BAD_GEOMETRY, REASON_BAD_RESCALE, REASON_UNSUPPORTED_PIXELS}
)


def _may_be_cut(skip: SkipSlice) -> bool:
    return skip.reason in _CUT_REASONS or (skip.reason == REASON_UNREADABLE_PIXELS and skip.detail == "no PixelData")


def headers_of(ds: Any, path: str, syntax: str, file_size: int | None) -> list[SliceHeader]:
    """The slice record(s) of a parsed header (one per frame of a multi-frame file)."""
    common = _identity(ds)
    common.update(_pixel_layout(ds, path, syntax, file_size, common["rows"], common["columns"]))
    common["path"] = path
    base_id = image_id_of(path)
    n_frames = common["n_frames"]
    if n_frames > 1 or ds.get_item(T_FRAME_GROUPS) is not None:
        return _frame_headers(ds, base_id, n_frames, common)

    position = tag_floats(ds, T_POSITION)
    orientation = tag_floats(ds, T_ORIENTATION)
    spacing = tag_floats(ds, T_SPACING)
    _check_geometry(position, orientation, spacing, "")
    slope = tag_floats(ds, T_SLOPE)
    intercept = tag_floats(ds, T_INTERCEPT)
    _check_rescale(slope[0] if slope else 1.0, intercept[0] if intercept else 0.0, "")
    thickness = tag_floats(ds, T_THICKNESS)
    # shared objects for what a series has in common: a pickled chunk of headers
    # from a worker then carries them once, and 750k records stay small in RAM
    orient = tuple(orientation)  # type: ignore[arg-type]
    orient = _SHARED.setdefault(orient, orient)
    return [
        SliceHeader(
            image_id=base_id,
            position=(position[0], position[1], position[2]),  # type: ignore[index]
            orientation=orient,  # type: ignore[arg-type]
            pixel_spacing=spacing[0] if spacing else float("nan"),
            slope=slope[0] if slope else 1.0,
            intercept=intercept[0] if intercept else 0.0,
            thickness=thickness[0] if thickness else float("nan"),
            **common,  # type: ignore[arg-type]
        )
    ]


def _identity(ds: Any) -> dict[str, Any]:
    """Modality, localizer, the ids and the size of a header (SliceHeader fields)."""
    modality = tag_text(ds, T_MODALITY)
    if modality is None or modality.upper() != "CT":
        raise SkipSlice(REASON_NOT_CT, f"Modality {modality!r}")
    if "LOCALIZER" in (s.upper() for s in tag_strings(ds, T_IMAGE_TYPE)):
        raise SkipSlice(REASON_LOCALIZER, "ImageType " + "\\".join(tag_strings(ds, T_IMAGE_TYPE)))
    encodings = tag_encodings(ds)
    series_uid = tag_text(ds, T_SERIES)
    study_uid = tag_text(ds, T_STUDY) or ""
    patient_id = tag_text(ds, T_PATIENT, encodings)
    rows = tag_ushort(ds, T_ROWS)
    columns = tag_ushort(ds, T_COLUMNS)
    if not series_uid or not rows or not columns:
        missing = [n for n, v in zip(_SIZE_TAGS, (series_uid, rows, columns), strict=True) if not v]
        raise SkipSlice(REASON_MISSING_TAG, f"no {' / '.join(missing)}")
    from_study = not patient_id
    if from_study:
        if not study_uid:
            raise SkipSlice(REASON_MISSING_TAG, "neither PatientID nor StudyInstanceUID")
        patient_id = PATIENT_FROM_STUDY_PREFIX + study_uid
    return dict(
        patient_id=sys.intern(patient_id),  # type: ignore[arg-type]
        study_uid=sys.intern(study_uid),
        series_uid=sys.intern(series_uid),
        sop_uid=tag_text(ds, T_SOP) or "",
        accession=tag_text(ds, T_ACCESSION, encodings) or "",
        rows=rows,
        columns=columns,
        kernel=sys.intern(" ".join(tag_strings(ds, T_KERNEL))),
        patient_from_study=from_study,
    )


def _pixel_layout(
    ds: Any, path: str, syntax: str, file_size: int | None, rows: int, columns: int
) -> dict[str, Any]:
    """Pixel format, syntax, frames and where native pixel data starts (SliceHeader fields)."""
    samples = tag_ushort(ds, T_SAMPLES) or 1
    bits_allocated = tag_ushort(ds, T_BITS_ALLOCATED)
    bits_stored = tag_ushort(ds, T_BITS_STORED) or bits_allocated
    pixel_repr = tag_ushort(ds, T_PIXEL_REPR) or 0
    if samples != 1 or bits_allocated != 16 or not bits_stored or not 1 <= bits_stored <= 16:
        raise SkipSlice(
            REASON_UNSUPPORTED_PIXELS,
            f"SamplesPerPixel {samples}, BitsAllocated {bits_allocated}, BitsStored {bits_stored}",
        )
    n_frames = max(1, tag_int(ds, T_FRAMES) or 1)
    pixel = ds.get_item(T_PIXEL_DATA, keep_deferred=True)
    if pixel is None:
        raise SkipSlice(REASON_UNREADABLE_PIXELS, "no PixelData")
    if not syntax:  # no file meta: the encoding pydicom found (implicit / explicit VR)
        little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
        syntax_native: bool | None = little
    else:
        syntax_native = NATIVE_TRANSFER_SYNTAXES.get(syntax)
    offset = -1
    length = int(pixel.length)
    if syntax_native is not None:
        expected = rows * columns * 2 * n_frames
        if length == 0xFFFFFFFF:
            raise SkipSlice(REASON_UNSUPPORTED_PIXELS, "encapsulated pixel data in a native syntax")
        if length not in (expected, expected + 1):
            raise SkipSlice(REASON_UNREADABLE_PIXELS, f"{length} bytes, expected {expected}")
        offset = int(pixel.value_tell)
        if file_size is None:
            file_size = os.path.getsize(path)
        if offset + expected > file_size:
            raise SkipSlice(REASON_UNREADABLE_PIXELS, "file truncated")
    elif syntax in DECODER_PACKAGES:
        if not decoder_available(syntax):
            name, package = DECODER_PACKAGES[syntax]
            raise SkipSlice(REASON_NO_DECODER, f"{name} ({syntax}): install {package}")
        if syntax != DEFLATED and length != 0xFFFFFFFF:
            raise SkipSlice(REASON_UNREADABLE_PIXELS, "compressed pixel data not encapsulated")
    else:
        raise SkipSlice(REASON_UNSUPPORTED_PIXELS, f"transfer syntax {syntax}")
    return dict(
        bits_stored=int(bits_stored),
        signed=pixel_repr == 1,
        pixel_offset=offset,
        little_endian=bool(syntax_native) if syntax_native is not None else True,
        transfer_syntax=syntax,
        lossy=is_lossy(syntax, tag_text(ds, T_LOSSY)),
        n_frames=n_frames,
    )


def _check_geometry(
    position: list[float] | None,
    orientation: list[float] | None,
    spacing: list[float] | None,
    where: str,
) -> None:
    """Refuse a slice without usable position, orientation or (present) pixel spacing."""
    reason = REASON_MULTIFRAME if where else REASON_MISSING_POSITION
    if position is None or len(position) != 3 or orientation is None or len(orientation) != 6:
        raise SkipSlice(reason, f"{where}no ImagePositionPatient / ImageOrientationPatient")
    for name, values in (
        ("ImagePositionPatient", position),
        ("ImageOrientationPatient", orientation),
        ("PixelSpacing", spacing or []),
    ):
        if not all(math.isfinite(v) for v in values):
            raise SkipSlice(REASON_BAD_GEOMETRY, f"{where}{name} {_values(values)} not finite")
    if spacing and not all(v > 0 for v in spacing):
        raise SkipSlice(REASON_BAD_GEOMETRY, f"{where}PixelSpacing {_values(spacing)} not > 0")
    a, b = orientation[:3], orientation[3:]
    normal = (  # a plain cross product: np.cross costs more than the rest of this check
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    )
    norm = math.sqrt(sum(c * c for c in normal))
    if not norm > 1e-6:
        raise SkipSlice(reason, f"{where}degenerate orientation")


def _check_rescale(slope: float, intercept: float, where: str) -> None:
    """Refuse a rescale that would turn every pixel into one value (or into NaN)."""
    if not (math.isfinite(slope) and slope > 0):
        raise SkipSlice(REASON_BAD_RESCALE, f"{where}RescaleSlope {slope!r} (must be finite, > 0)")
    if not math.isfinite(intercept):
        raise SkipSlice(REASON_BAD_RESCALE, f"{where}RescaleIntercept {intercept!r} not finite")


def _values(values: list[float]) -> str:
    return "\\".join(repr(v) for v in values)


def _group_value(items: list[Any], sequence: str, keyword: str) -> Any:
    """The first ``keyword`` found in ``sequence[0]`` of the functional group items given."""
    for item in items:
        if item is None:
            continue
        seq = item.get(sequence)
        if seq is not None and len(seq) and keyword in seq[0]:
            value = seq[0].get(keyword)
            if value is not None and value != "":
                return value
    return None


def _frame_headers(
    ds: Any, base_id: str, n_frames: int, common: dict[str, Any]
) -> list[SliceHeader]:
    """Enhanced (multi-frame) CT: one header per frame from the functional groups."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq is not None and len(shared_seq) else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        got = 0 if per_frame is None else len(per_frame)
        raise SkipSlice(
            REASON_MULTIFRAME, f"{n_frames} frames, {got} PerFrameFunctionalGroupsSequence items"
        )
    top_slope = tag_floats(ds, T_SLOPE)
    top_intercept = tag_floats(ds, T_INTERCEPT)
    out: list[SliceHeader] = []
    for i, item in enumerate(per_frame):
        groups = [item, shared]
        pos = _group_value(groups, "PlanePositionSequence", "ImagePositionPatient")
        ori = _group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        position = [float(v) for v in pos] if pos is not None else None
        orientation = [float(v) for v in ori] if ori is not None else None
        spacing = _group_value(groups, "PixelMeasuresSequence", "PixelSpacing")
        where = f"frame {i + 1}: "
        _check_geometry(
            position, orientation, [float(v) for v in spacing] if spacing else None, where
        )
        thickness = _group_value(groups, "PixelMeasuresSequence", "SliceThickness")
        slope = _group_value(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _group_value(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is None:
            slope = top_slope[0] if top_slope else 1.0
        if intercept is None:
            intercept = top_intercept[0] if top_intercept else 0.0
        _check_rescale(float(slope), float(intercept), where)
        orient = tuple(orientation)  # type: ignore[arg-type]
        orient = _SHARED.setdefault(orient, orient)
        out.append(
            SliceHeader(
                image_id=f"{base_id}#{i + 1}",
                position=(position[0], position[1], position[2]),  # type: ignore[index]
                orientation=orient,  # type: ignore[arg-type]
                pixel_spacing=float(spacing[0]) if spacing is not None else float("nan"),
                slope=float(slope),
                intercept=float(intercept),
                thickness=float(thickness) if thickness is not None else float("nan"),
                frame=i + 1,
                **common,  # type: ignore[arg-type]
            )
        )
    return out
