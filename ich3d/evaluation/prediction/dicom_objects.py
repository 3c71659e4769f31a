"""The DICOM objects of ``ich3d predict --dicom-out``, built with highdicom: SR, KOS, secondary captures.

Every object goes into the source study (patient and study modules copied from the
source slices' headers by highdicom), in a new series with new UIDs, and says that it
is not for diagnostic use (:data:`NOT_FOR_DIAGNOSIS`):

* :func:`structured_report`: a Comprehensive 3D SR holding a TID 1500 Measurement
  Report with one TID 1501 measurement group (finding: intracranial hemorrhage,
  SCT 1386000): a NUM item per target probability (unit UCUM ``1``), a CODE item per
  operating point's call (SCT Present / Absent), the model as TID 4019 Algorithm
  Identification, the key slices as image references ("Source of Measurement"),
  and a TEXT "Comment" with the notice; flags PRELIMINARY and UNVERIFIED;
* :func:`key_object_selection`: a Key Object Selection document titled "For
  Research" (DCM 113009) that references the key slices, with the notice in its
  Key Object Description;
* :func:`secondary_capture`: an RGB Secondary Capture of one key slice's Grad-CAM
  overlay with the notice burned in (``BurnedInAnnotation`` YES) and in
  ``ImageComments``.

The probabilities' concepts are codes of ich3d's own coding scheme
(:data:`SCHEME`, declared in each object's Coding Scheme Identification Sequence).
highdicom is an optional dependency (``pip install 'ich3d[dicom]'``), imported only
here, by :func:`highdicom_module`.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from ich3d.errors import UserError

__all__ = [
    "NOT_FOR_DIAGNOSIS",
    "SCHEME",
    "SERIES_NUMBERS",
    "ResultModel",
    "TARGET_CODES",
    "highdicom_module",
    "version_text",
    "evidence_dataset",
    "key_object_selection",
    "structured_report",
]

#: The notice every object carries (series description, SR text, KOS description, burned-in text).
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"

#: ich3d's private coding scheme for the result concepts (a "99" designator: DICOM PS3.16 8.2).
SCHEME = "99ICH3D"

#: Series Number of each new series (SR, KOS, secondary captures).
SERIES_NUMBERS: dict[str, int] = {"sr": 9901, "kos": 9902, "sc": 9903}

#: Code value (at most 16 characters) and meaning of the probability of each target.
TARGET_CODES: dict[str, tuple[str, str]] = {
    "any": ("P-ICH-ANY", "Probability of intracranial hemorrhage (any)"),
    "epidural": ("P-ICH-EDH", "Probability of epidural hemorrhage"),
    "intraparenchymal": ("P-ICH-IPH", "Probability of intraparenchymal hemorrhage"),
    "intraventricular": ("P-ICH-IVH", "Probability of intraventricular hemorrhage"),
    "subarachnoid": ("P-ICH-SAH", "Probability of subarachnoid hemorrhage"),
    "subdural": ("P-ICH-SDH", "Probability of subdural hemorrhage"),
}

#: Type 2 attributes of the patient and study modules: empty in the copy of a source header that lacks them.
_TYPE2 = ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
          "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class ResultModel:
    """The model a result comes from, as the DICOM objects name it.

    Attributes:
        name: the model's name (``ich3d-<experiment>-<stage>``, as ``ich3d export`` names a package).
        version: its version and provenance (ich3d version, git commit, run id or export time).
        targets: the targets whose probabilities are reported (``any`` and the subtypes the run predicts).
        label: the target of ``probability`` and of the calls (``data.label``).
        operating_points: rule -> threshold on ``label``'s probability (chosen on validation), may be empty.
        parameters: more "Algorithm Parameters" text items (e.g. the stage).
    """

    name: str
    version: str
    targets: tuple[str, ...]
    label: str = "any"
    operating_points: Mapping[str, float] = field(default_factory=dict)
    parameters: tuple[str, ...] = ()

    def algorithm_parameters(self) -> list[str]:
        """The TID 4019 parameters: the given ones and each operating point's rule and threshold."""
        ops = [f"operating point {r}: {self.label} probability >= {t:.6g}" for r, t in self.operating_points.items()]
        return [*self.parameters, *ops]


def version_text(provenance: Mapping[str, Any], where: str) -> str:
    """A model's version from its ``provenance``: ``ich3d <version> git <commit, 12 hex> <where>``.

    Unknown parts are left out (a run trained before provenance was recorded: ``ich3d version unknown``).
    """
    version = provenance.get("ich3d_version")
    commit = str(provenance.get("git_commit") or "unknown")
    words = [f"ich3d {version}" if version else "ich3d version unknown"]
    if commit != "unknown":
        words.append(f"git {commit[:12]}")
    return " ".join([*words, where])


def highdicom_module() -> Any:
    """highdicom, or a :class:`~ich3d.errors.UserError` saying how to install it."""
    try:
        module = importlib.import_module("highdicom")  # optional dependency (ich3d[dicom]): only --dicom-out loads it
    except ImportError:
        raise UserError("--dicom-out needs highdicom: pip install 'ich3d[dicom]'") from None
    # at INFO highdicom logs the source instances' UIDs ("copy ... attributes from dataset <UID>"):
    # identifiers stay out of ich3d's logs, whatever the caller's logging level
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger("highdicom").level))
    return module


def evidence_dataset(header: Dataset) -> Dataset:
    """A copy of a source slice's header with every missing type 2 patient / study attribute empty."""
    ds = copy.deepcopy(header)
    for kw in _TYPE2:
        if kw not in ds:
            setattr(ds, kw, "")
    return ds


def _code(hd: Any, value: str, meaning: str, scheme: str = SCHEME) -> Any:
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def declare_scheme(ds: Dataset) -> None:
    """Add ich3d's coding scheme to ``ds``'s Coding Scheme Identification Sequence."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "ich3d result concepts"
    item.CodingSchemeResponsibleOrganization = "ich3d project"
    seq = list(ds.get("CodingSchemeIdentificationSequence", []))
    ds.CodingSchemeIdentificationSequence = [*seq, item]


def device_observer(hd: Any, model: ResultModel) -> Any:
    """The observation context of a device observer: the model (its UID derived from name and version)."""
    attrs = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["ich3d device", model.name, model.version]),
        name=model.name[:64], manufacturer_name="ich3d", model_name=model.version[:64],
    )
    return hd.sr.ObserverContext(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
                                 observer_identifying_attributes=attrs)


def _source_images(hd: Any, key_slices: Sequence[tuple[Dataset, int | None]]) -> list[Any]:
    """One "Source of Measurement" reference per key slice instance (frame numbers of a multi-frame file)."""
    frames: dict[str, list[int]] = {}
    first: dict[str, Dataset] = {}
    for ds, frame in key_slices:
        uid = str(ds.SOPInstanceUID)
        first.setdefault(uid, ds)
        if frame is not None:
            frames.setdefault(uid, []).append(int(frame))
    return [
        hd.sr.SourceImageForMeasurementGroup.from_source_image(ds, referenced_frame_numbers=frames.get(uid) or None)
        for uid, ds in first.items()
    ]


def _measurement_group(hd: Any, model: ResultModel, key: str, probabilities: Mapping[str, float],
                       key_slices: Sequence[tuple[Dataset, int | None]]) -> Any:
    """The TID 1501 group: probabilities, calls, the model, the key slices."""
    algo = hd.sr.AlgorithmIdentification(name=model.name[:64], version=model.version[:64],
                                         parameters=model.algorithm_parameters() or None)
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    measurements = [
        hd.sr.Measurement(name=_code(hd, *TARGET_CODES.get(t, (f"P-{t}"[:16], f"Probability of {t}"))),
                          value=float(p), unit=unit)
        for t, p in probabilities.items()
    ]
    present = hd.sr.CodedConcept("52101004", "SCT", "Present")
    absent = hd.sr.CodedConcept("272519000", "SCT", "Absent")
    p_label = probabilities.get(model.label)
    calls = [
        hd.sr.QualitativeEvaluation(
            _code(hd, f"CALL-{rule.upper()}"[:16], f"Call at the {rule} operating point (p >= {thr:.4g})"),
            present if float(p_label) >= float(thr) else absent,
        )
        for rule, thr in model.operating_points.items() if p_label is not None
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"ich3d volume {key}"),
        finding_type=hd.sr.CodedConcept("1386000", "SCT", "Intracranial hemorrhage"),
        finding_sites=[hd.sr.FindingSite(hd.sr.CodedConcept("12738006", "SCT", "Brain"))],
        algorithm_id=algo, measurements=measurements, qualitative_evaluations=calls or None,
        source_images=_source_images(hd, key_slices) or None,
    )


def _notice_container(hd: Any, model: ResultModel) -> Any:
    """A "Qualitative Evaluations" container with the notice as a TEXT "Comment"."""
    text = (f"{NOT_FOR_DIAGNOSIS}. Research output of {model.name} ({model.version}): model probabilities, "
            "not a diagnosis; a radiologist reads the images.")
    container = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"), relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=hd.sr.CodedConcept("121106", "DCM", "Comment"), value=text,
                              relationship_type="CONTAINS")
    ])
    return container


def structured_report(model: ResultModel, key: str, probabilities: Mapping[str, float],
                      key_slices: Sequence[tuple[Dataset, int | None]], evidence: Sequence[Dataset]) -> Dataset:
    """The Comprehensive 3D SR of one series (see the module docstring).

    Args:
        model: the model.
        key: the volume's hashed cache key (the tracking identifier; never a UID).
        probabilities: target -> probability, in report order.
        key_slices: the key slices' headers (from :func:`evidence_dataset`) and frame numbers (1-based; None for
            a single-frame file), best first.
        evidence: every source header the SR references (patient and study are copied from them).

    Returns:
        The SR dataset (new series and SOP instance UIDs).
    """
    hd = highdicom_module()
    group = _measurement_group(hd, model, key, probabilities, key_slices)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(hd, model)),
        procedure_reported=hd.sr.CodedConcept("24725-4", "LN", "CT Head"),
        imaging_measurements=[group],
    )
    report[0].ContentSequence.append(_notice_container(hd, model))
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence), content=report, series_instance_uid=UID(generate_uid()),
        series_number=SERIES_NUMBERS["sr"], sop_instance_uid=UID(generate_uid()), instance_number=1,
        manufacturer="ich3d", series_description=f"ich3d ICH probabilities: {NOT_FOR_DIAGNOSIS}",
        is_complete=True, is_final=False, is_verified=False,
    )
    declare_scheme(sr)
    return sr



def key_object_selection(model: ResultModel, key: str, slice_indices: Sequence[int],
                         evidence: Sequence[Dataset]) -> Dataset:
    """The Key Object Selection of one series' key slices, titled "For Research" (DCM 113009).

    Args:
        model: the model (the device observer; named in the description).
        key: the volume's hashed cache key.
        slice_indices: the key slices' indices in the volume (foot to head), best first.
        evidence: the key slices' headers (from :func:`evidence_dataset`), best first, one per instance.

    Returns:
        The KOS dataset (new series and SOP instance UIDs).
    """
    hd = highdicom_module()
    description = (f"{NOT_FOR_DIAGNOSIS}. The {len(slice_indices)} key slices of ich3d volume {key} that drive the "
                   f"call of {model.name} ({model.version}), best first: slice indices "
                   f"{', '.join(str(int(i)) for i in slice_indices)} (foot to head).")
    content = hd.ko.KeyObjectSelection(
        document_title=hd.sr.CodedConcept("113009", "DCM", "For Research"),
        referenced_objects=list(evidence), observer_device_context=device_observer(hd, model),
        description=description,
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=list(evidence), content=content, series_instance_uid=UID(generate_uid()),
        series_number=SERIES_NUMBERS["kos"], sop_instance_uid=UID(generate_uid()), instance_number=1,
        manufacturer="ich3d", series_description=f"ich3d key slices: {NOT_FOR_DIAGNOSIS}",
    )
    return kos
