"""Read one CT image file fast: the header fields the ingest needs, and pooled HU pixels.

The ingest reads every file twice, cheaply:

1. :func:`read_headers` parses the header with pydicom (``specific_tags`` and a
   ``defer_size`` so the pixel data is *skipped*, not read) and decodes the raw
   bytes of the few tags it needs itself (pydicom's value conversion is the
   slow part of a header read). The common file (preamble, explicit VR little
   endian file meta, an implicit / explicit VR little endian data set of
   defined-length elements without sequences, native pixel data last: every
   RSNA file) is parsed from its first 16 KiB directly instead, about 4x
   cheaper than ``dcmread``, into the same raw bytes; any other file goes
   through pydicom (tests/test_ingest_planning.py pins that both agree, on
   truncated and altered files too). For a native (uncompressed) transfer syntax it
   records where the pixel data starts in the file and checks its length
   against ``Rows x Columns x 2 (x frames)`` and the file size, so corrupt
   pixel data is found before any volume is planned. An Enhanced (multi-frame)
   CT file gives one header per frame, from its per-frame functional groups.
2. :func:`read_pixels` turns a header into the stored pixel integers:
   native syntaxes seek to the recorded offset and read exactly the pixel bytes
   into a numpy view (no pydicom pixel handler: the fast path); every other
   syntax pydicom 3 can decode (Deflate, RLE, JPEG Lossless .57/.70, JPEG-LS,
   JPEG 2000, HTJ2K, lossy JPEG) goes through ``pydicom.pixels.pixel_array``
   and its decoder plugins (:data:`DECODER_PACKAGES`). :func:`pooled_hu` turns
   the stored integers into a 2x2 max-pooled HU image.

Per-file rules (each a :class:`SkipSlice` reason):

* a file pydicom cannot read as DICOM, even with ``force=True`` (files without
  the 128-byte preamble / file meta are read, and need a Modality or
  SOPClassUID to count as DICOM), is *not DICOM*; a DICOMDIR is *DICOMDIR*;
* ``ImageType`` containing ``LOCALIZER`` is a *localizer (scout) image*;
* a compressed syntax with no decoder installed is *no decoder for transfer
  syntax*, and the detail names the syntax and the package to install; where
  pydicom's plugins fail on a file (its GDCM and Pillow plugins refuse 12-bit
  JPEG Extended), python-gdcm's own ``gdcm.ImageReader`` decodes it
  (:func:`decode_frames`); what the decoders print stays off the console and
  goes into the skip detail, which is always one line;
* a file that ends inside its compressed pixel data is *unreadable pixel data*
  ("truncated: ..."), as a truncated native file is ("file truncated");
* non-finite ImagePositionPatient / ImageOrientationPatient / PixelSpacing, or
  a PixelSpacing <= 0, is *unusable geometry*; a RescaleSlope that is not finite
  or not > 0, or a non-finite RescaleIntercept, is *unusable rescale slope or
  intercept* (such a slice would be cached as a constant image);
* text tags are decoded with the file's ``SpecificCharacterSet`` (default
  ISO 646 / Latin-1 superset, as pydicom does);
* without a PatientID the StudyInstanceUID stands in for the patient
  (``patient_id = "study:<StudyInstanceUID>"``, ``patient_from_study``), so
  patient-level splits stay leak-free where PatientIDs exist.

Modules: :mod:`~ich3d.data.dicom.records` (the slice record, skip reasons),
:mod:`~ich3d.data.dicom.tags` (tags and raw values), :mod:`~ich3d.data.dicom.raw`
(the fast header path), :mod:`~ich3d.data.dicom.headers` (the header rules),
:mod:`~ich3d.data.dicom.decoders` (compressed pixel data),
:mod:`~ich3d.data.dicom.quiet` (decoder output kept off the console) and
:mod:`~ich3d.data.dicom.pixels` (stored integers -> pooled HU, the pixel rule).
"""

from __future__ import annotations

from ich3d.data.dicom.decoders import DECODER_PACKAGES, decode_frames, decoder_available
from ich3d.data.dicom.headers import read_header, read_headers
from ich3d.data.dicom.pixels import (
    needs_12bit_correction,
    pool_max_2x2,
    pooled_hu,
    read_pixels,
    read_slice,
    slice_normal,
    superior_normal,
)
from ich3d.data.dicom.records import (
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

__all__ = [
    "SliceHeader",
    "SkipSlice",
    "read_header",
    "read_headers",
    "read_pixels",
    "decode_frames",
    "decoder_available",
    "pooled_hu",
    "pool_max_2x2",
    "needs_12bit_correction",
    "read_slice",
    "slice_normal",
    "superior_normal",
    "image_id_of",
    "is_lossy",
    "NATIVE_TRANSFER_SYNTAXES",
    "DECODER_PACKAGES",
    "REASON_NOT_DICOM",
    "REASON_DICOMDIR",
    "REASON_UNREADABLE_FILE",
    "REASON_NOT_CT",
    "REASON_LOCALIZER",
    "REASON_MISSING_TAG",
    "REASON_MISSING_POSITION",
    "REASON_MULTIFRAME",
    "REASON_UNREADABLE_PIXELS",
    "REASON_UNSUPPORTED_PIXELS",
    "REASON_NO_DECODER",
    "REASON_BAD_RESCALE",
    "REASON_BAD_GEOMETRY",
]
