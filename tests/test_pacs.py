"""The PACS client (ich3d.deploy.pacs) against a real Orthanc: DICOMweb and DIMSE retrieve, store, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _orthanc import CLIENT_AET, Orthanc, free_port, start_orthanc

from ich3d.deploy.pacs.client import retrieve_study, store_files
from ich3d.deploy.pacs.dicomweb import dicomweb_store
from ich3d.deploy.pacs.node import parse_node, quiet_pydicom
from ich3d.errors import UserError
from ich3d.synth import NO_DEFECTS, generate

PROTOCOLS = ("dicomweb", "dimse")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> dict:
    """An Orthanc holding two synthetic studies (one CT series each); stopped after the module."""
    root = tmp_path_factory.mktemp("pacs")
    generate(root / "synth", patients=2, size=32, slices=(6, 7), studies=(1, 1), seed=3, defects=NO_DEFECTS,
             progress=False)
    files = sorted((root / "synth" / "stage_2_train").glob("*.dcm"))
    orthanc = start_orthanc(root / "orthanc")
    try:
        orthanc.upload(files)
        with quiet_pydicom():  # pydicom's warnings about RSNA's ID_<hex> UIDs
            headers = [_plain(pydicom.dcmread(f)) for f in files]
        studies = sorted({h["study"] for h in headers})
        yield {"orthanc": orthanc, "files": files, "headers": headers, "studies": studies, "root": root}
    finally:
        orthanc.stop()


def _plain(ds: pydicom.Dataset) -> dict:
    return {"sop": str(ds.SOPInstanceUID), "series": str(ds.SeriesInstanceUID), "study": str(ds.StudyInstanceUID),
            "patient": str(ds.PatientID), "pixels": ds.pixel_array}


def _url(orthanc: Orthanc, protocol: str) -> str:
    return orthanc.dicomweb if protocol == "dicomweb" else orthanc.dimse


def _derived(src: Path, dest: Path, **changes: str) -> Path:
    """A new object made from ``src``: new SOP instance and series UIDs, then ``changes``."""
    with quiet_pydicom():
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        for k, v in changes.items():
            setattr(ds, k, v)
        if "SOPClassUID" in changes:
            ds.file_meta.MediaStorageSOPClassUID = changes["SOPClassUID"]
        ds.save_as(dest, enforce_file_format=True)
    return dest


def test_parse_node_urls_and_errors():
    web = parse_node("http://pacs.example:8042/dicom-web")
    assert (web.protocol, web.host, web.port) == ("dicomweb", "pacs.example", 8042)
    dimse = parse_node("dicom://ORTHANC@10.0.0.5:4242", calling_aet="ICH3D_A")
    assert (dimse.protocol, dimse.host, dimse.port, dimse.called_aet, dimse.calling_aet) == (
        "dimse", "10.0.0.5", 4242, "ORTHANC", "ICH3D_A")
    for bad, msg in (("ftp://x/y", "expected http"), ("dicom://10.0.0.5:4242", "expected dicom://AET@host:port"),
                     ("dicom://A@host:99999", "port"), ("http:///dicom-web", "no host"),
                     ("http://user:secret@h:8042/dicom-web", "user or password in the URL is not supported")):
        with pytest.raises(UserError, match=msg):
            parse_node(bad)
    with pytest.raises(UserError, match="AE title"):
        parse_node("dicom://ORTHANC@h:1", calling_aet="MUCH-TOO-LONG-FOR-AN-AET")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retrieve_study_brings_its_ct_images_exactly(pacs, protocol, tmp_path, caplog):
    study = pacs["studies"][0]
    mine = {h["sop"]: h for h in pacs["headers"] if h["study"] == study}
    node = parse_node(_url(pacs["orthanc"], protocol), calling_aet=CLIENT_AET)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        files = retrieve_study(node, study, tmp_path / "in")
    logged = caplog.text
    assert len(files) == len(mine) >= 6
    assert [f.name for f in files] == [f"{i:06d}.dcm" for i in range(len(files))]  # named by count, not by UID
    with quiet_pydicom():
        got = [_plain(pydicom.dcmread(f)) for f in files]
    assert {d["sop"] for d in got} == set(mine)
    for d in got:
        np.testing.assert_array_equal(d["pixels"], mine[d["sop"]]["pixels"])
    # the log names what the user typed (the node, the study) and counts, never another identifier
    assert f"retrieved {len(mine)} object(s) of study {study}" in logged
    for h in mine.values():
        for value in (h["sop"], h["series"], h["patient"]):
            assert value not in logged


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_study_and_unreachable_node_are_one_line_errors(pacs, protocol, tmp_path):
    node = parse_node(_url(pacs["orthanc"], protocol), calling_aet=CLIENT_AET)
    with pytest.raises(UserError, match=r"study 1\.2\.3\.4 is not on .* found no series of it"):
        retrieve_study(node, "1.2.3.4", tmp_path / "a")
    port = free_port()  # nothing listens there
    dead = f"http://127.0.0.1:{port}/dicom-web" if protocol == "dicomweb" else f"dicom://ORTHANC@127.0.0.1:{port}"
    with pytest.raises(UserError, match=r"^PACS .* is unreachable \(connection refused"):
        retrieve_study(parse_node(dead, calling_aet=CLIENT_AET, timeout=5), pacs["studies"][0], tmp_path / "b")


def test_dimse_unknown_calling_aet_names_the_flag(pacs, tmp_path):
    node = parse_node(pacs["orthanc"].dimse, calling_aet="NOT_DECLARED", timeout=10)
    with pytest.raises(UserError, match=r"does the node know ich3d's AE title NOT_DECLARED \(--pacs-aet"):
        retrieve_study(node, pacs["studies"][0], tmp_path / "a")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_store_files_into_the_study(pacs, protocol, tmp_path):
    orthanc, study = pacs["orthanc"], pacs["studies"][1]
    src = next(f for f, h in zip(pacs["files"], pacs["headers"], strict=True) if h["study"] == study)
    new = [_derived(src, tmp_path / f"{i}.dcm", SeriesDescription=f"stored by {protocol}") for i in range(2)]
    node = parse_node(_url(orthanc, protocol), calling_aet=CLIENT_AET)
    assert store_files(node, new, study) == 2
    found = orthanc.post_json("/tools/find", {"Level": "Instance", "Query": {"SeriesDescription": f"stored by {protocol}"},
                                             "Expand": True})
    assert len(found) == 2
    parents = {orthanc.get(f"/instances/{i['ID']}/study")["MainDicomTags"]["StudyInstanceUID"] for i in found}
    assert parents == {study}


def test_store_refusals_carry_the_nodes_answer(pacs, tmp_path):
    orthanc, (study, other) = pacs["orthanc"], pacs["studies"]
    src = next(f for f, h in zip(pacs["files"], pacs["headers"], strict=True) if h["study"] == study)
    obj = _derived(src, tmp_path / "a.dcm")
    # ich3d's own check: an object of another study is never sent
    with pytest.raises(UserError, match=f"belongs to another study than {other}"):
        store_files(parse_node(orthanc.dicomweb), [obj], other)
    # STOW-RS into another study's URL: Orthanc refuses it with HTTP 409 and a FailedSOPSequence
    with pytest.raises(UserError, match=r"HTTP 409 .*1 object\(s\): processing failure \(0x0110\)"):
        with quiet_pydicom():
            dicomweb_store(parse_node(orthanc.dicomweb), [obj], other)
    # C-STORE of a SOP class the node does not support: no presentation context accepted
    odd = _derived(src, tmp_path / "b.dcm", SOPClassUID="1.2.826.0.1.3680043.10.1234.1")
    with pytest.raises(UserError, match=r"refused to store SOP class\(es\) 1\.2\.826\.0\.1\.3680043\.10\.1234\.1"):
        store_files(parse_node(orthanc.dimse, calling_aet=CLIENT_AET), [odd], study)
    with quiet_pydicom():
        odd_uid = str(pydicom.dcmread(odd, stop_before_pixels=True).SOPInstanceUID)
    assert orthanc.post_json("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": odd_uid}}) == []


def test_predict_cli_pacs_options_are_checked_before_anything_runs(tmp_path, capsys):
    from ich3d.cli.main import main

    pkg, folder = str(tmp_path / "pkg"), str(tmp_path)
    cases = [
        ([pkg], "INPUT is missing: give a DICOM folder or an ingest cache, or --pacs URL --study UID"),
        ([pkg, folder, "--pacs", "http://127.0.0.1:1/dicom-web", "--study", "1.2"], "give no INPUT"),
        ([pkg, "--pacs", "http://127.0.0.1:1/dicom-web"], "--pacs needs --study STUDY_UID"),
        ([pkg, folder, "--study", "1.2"], "--study goes with --pacs URL"),
        ([pkg, "--pacs", "http://127.0.0.1:1/dicom-web", "--study", "1.2", "--pacs-aet", "X"],
         "--pacs-aet goes with a dicom://AET@host:port node"),
        ([pkg, "--pacs", "ftp://h/x", "--study", "1.2"], "expected http(s)://host:port/dicom-web"),
    ]
    for argv, message in cases:
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ich3d: error:") and message in err[0], (argv, err)
