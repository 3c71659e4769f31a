"""``ich3d predict PKG --pacs URL --study UID`` against a real Orthanc, over DICOMweb and DIMSE.

Two synthetic studies (real DICOM UIDs, ``_dicom_helpers``) are stored into an Orthanc
started for this module (``_orthanc``: loopback only, free ports, stopped by PID). The
tiny run is exported to a package; ``predict --pacs`` retrieves one study, predicts on it
and stores its DICOM results back. The test then asks Orthanc (QIDO-RS) what the study
holds: the CT it had plus exactly the objects predict wrote (SR, KOS, secondary
captures), every one in that study, and nothing new in the other study.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from _dicom_helpers import with_dicom_uids
from _eval_helpers import copy_tiny_run
from _orthanc import CLIENT_AET, start_orthanc
from dicomweb_client.api import DICOMwebClient

from ich3d.cli.main import main
from ich3d.deploy.pacs.roundtrip import STUDY_FOLDER, SUMMARY

CT = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
N_KEY = 2


@pytest.fixture(scope="module")
def setup(tiny_run, tmp_path_factory):
    """An Orthanc holding two CT studies, the tiny run's package, and each study's CT instance UIDs."""
    root = tmp_path_factory.mktemp("pacs_roundtrip")
    run = copy_tiny_run(tiny_run, root, stages=("slice", "sequence"))
    pkg = root / "pkg"
    assert main(["export", str(run.run_dir), "--out", str(pkg)]) == 0
    images = with_dicom_uids(run.images, root / "ct", series=2)
    studies: dict[str, set[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for f in sorted(images.glob("*.dcm")):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            studies.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    assert len(studies) == 2
    orthanc = start_orthanc(root / "orthanc")
    try:
        orthanc.upload(sorted(images.glob("*.dcm")))
        yield {"root": root, "pkg": pkg, "orthanc": orthanc, "studies": studies}
    finally:
        orthanc.stop()


def _instances(orthanc, study: str) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every object Orthanc holds in ``study`` (QIDO-RS)."""
    client = DICOMwebClient(orthanc.dicomweb)
    found = client.search_for_instances(study_instance_uid=study, fields=["SOPClassUID"])
    return {item["00080018"]["Value"][0]: item["00080016"]["Value"][0] for item in found}


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_predict_pacs_stores_sr_kos_and_captures_into_the_study(setup, protocol, capsys):
    orthanc = setup["orthanc"]
    target, other = sorted(setup["studies"])[0 if protocol == "dicomweb" else 1], None
    other = next(s for s in setup["studies"] if s != target)
    before_other = _instances(orthanc, other)
    before = _instances(orthanc, target)
    assert set(before) >= setup["studies"][target]
    url = orthanc.dicomweb if protocol == "dicomweb" else orthanc.dimse
    out = setup["root"] / f"out-{protocol}"
    extra = ["--pacs-aet", CLIENT_AET] if protocol == "dimse" else []
    assert main(["predict", str(setup["pkg"]), "--pacs", url, "--study", target, *extra, "--out", str(out),
                 "--explain", str(N_KEY), "--device", "cpu", "--no-progress"]) == 0

    # what predict wrote locally: one series' SR, KOS and secondary captures, all of the target study
    result = json.loads((out / "predict.json").read_text())
    made = [Path(p) for p in result["dicom_out"]["files"]]
    local: dict[str, str] = {}
    for p in made:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert str(ds.StudyInstanceUID) == target
        local[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
    kinds = Counter(local.values())
    assert kinds == {COMPREHENSIVE_3D_SR: 1, KOS: 1, SECONDARY_CAPTURE: N_KEY}
    assert len(made) == 2 + N_KEY

    # what Orthanc holds now: the study's CT as before plus exactly those objects; the other study unchanged
    after = _instances(orthanc, target)
    assert set(after) - set(before) == set(local)
    assert {uid: after[uid] for uid in local} == local
    assert Counter(after[u] for u in setup["studies"][target]) == {CT: len(setup["studies"][target])}
    assert _instances(orthanc, other) == before_other

    # the record and the printed line: counts, the node and study as typed
    pacs = json.loads((out / SUMMARY).read_text())
    assert pacs["retrieved"] == len(setup["studies"][target]) == len(list((out / STUDY_FOLDER).glob("*.dcm")))
    assert pacs["stored"] == len(local) and pacs["protocol"] == protocol
    assert sum(pacs["stored_by_modality"].values()) == len(local)
    printed = capsys.readouterr().out
    assert f"stored {len(local)} result object(s) back" in printed and target in printed

    if protocol == "dimse":  # again into the same --out: the study is retrieved afresh, new results stored
        assert main(["predict", str(setup["pkg"]), "--pacs", url, "--study", target, *extra, "--out", str(out),
                     "--explain", str(N_KEY), "--device", "cpu", "--no-progress"]) == 0
        again = json.loads((out / SUMMARY).read_text())
        assert again["retrieved"] == len(setup["studies"][target])  # only the CT: not the results stored before
        assert len(_instances(orthanc, target)) == len(after) + len(local)
