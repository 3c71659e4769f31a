"""Tests of the slice reader and the ingest (ich3d.data.dicom, ich3d.data.ingest)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from _ingest_helpers import (
    assert_same_cache,
    reference_pool,
    write_labels,
    write_series,
    write_slice,
)

from ich3d.data import ingest as ing
from ich3d.data.dicom import (
    REASON_MISSING_POSITION,
    REASON_NOT_CT,
    REASON_NOT_DICOM,
    REASON_UNREADABLE_FILE,
    REASON_UNREADABLE_PIXELS,
    pool_max_2x2,
    read_header,
    read_slice,
)
from ich3d.data.ingest import run_ingest
from ich3d.data.schema import (
    SKIPPED_COLUMNS,
    SLICE_COLUMNS,
    UNLABELED,
    VOLUME_COLUMNS,
    series_key,
)
from ich3d.errors import UserError

RNG = np.random.default_rng(1234)


def _hu(n: int, size: int = 16, lo: int = -2000, hi: int = 2500) -> np.ndarray:
    return RNG.integers(lo, hi, size=(n, size, size)).astype(np.int32)


def _tables(cache: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return tuple(  # type: ignore[return-value]
        pd.read_csv(cache / f"{n}.csv", keep_default_na=False)
        for n in ("slices", "volumes", "skipped")
    )


# --------------------------------------------------------------------------- reader


@pytest.mark.parametrize(
    "signed,bits,slope,intercept",
    [
        (True, 16, 1.0, -1024.0),
        (False, 16, 1.0, -1024.0),
        (True, 12, 1.0, -1024.0),
        (True, 16, 0.5, -1024.5),
    ],
)
def test_read_slice_matches_pydicom_pixel_array(tmp_path, signed, bits, slope, intercept):
    import pydicom

    lo, hi = (-2048, 2047) if bits == 12 and signed else (0, 4000)
    stored = RNG.integers(lo, hi, size=(10, 14))
    f = write_slice(
        tmp_path / "ID_000000001.dcm",
        stored,
        signed=signed,
        bits_stored=bits,
        slope=slope,
        intercept=intercept,
    )
    header, hu = read_slice(f)
    ref = pydicom.dcmread(f).pixel_array.astype(np.float64) * slope + intercept
    expected = reference_pool(np.rint(ref))
    assert hu.dtype == np.int16 and hu.shape == (5, 7)
    np.testing.assert_array_equal(hu, expected)
    assert header.image_id == "ID_000000001" and header.series_uid == "ID_series0"
    assert header.position == (-16.0, -16.0, 0.0)


def test_pool_max_2x2_values_and_odd_sizes():
    a = np.arange(35, dtype=np.int16).reshape(5, 7)
    p = pool_max_2x2(a)
    np.testing.assert_array_equal(p, [[8, 10, 12], [22, 24, 26]])  # last row and column cropped


def test_12bit_correction_rule(tmp_path):
    # RSNA defect: BitsStored 12, unsigned, intercept > -100. The correction maps a stored
    # value v to ((v + 1000) mod 4096) - 1000 HU, so a true HU h in [-1000, 3095] is stored
    # as h mod 4096.
    true_hu = np.array([[-1000, -999, 0, 40], [60, 1500, -500, 2000]])
    stored = np.mod(true_hu, 4096)
    f = write_slice(tmp_path / "ID_a.dcm", stored, signed=False, bits_stored=12, intercept=-1.0)
    _, hu = read_slice(f)
    np.testing.assert_array_equal(hu, reference_pool(true_hu))


def test_12bit_correction_not_applied_when_intercept_is_normal(tmp_path):
    stored = np.array([[0, 1064], [24, 4095]])
    f = write_slice(tmp_path / "ID_b.dcm", stored, signed=False, bits_stored=12, intercept=-1024.0)
    _, hu = read_slice(f)
    assert hu.tolist() == [[3071]]  # 4095 - 1024 = 3071; not wrapped


def test_multi_valued_window_reads(tmp_path):
    f = write_slice(tmp_path / "ID_c.dcm", np.full((4, 4), 1064), window=[40.0, 400.0])
    _, hu = read_slice(f)
    assert (hu == 40).all()


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"modality": "MR"}, REASON_NOT_CT),
        ({"omit": ["ImagePositionPatient"]}, REASON_MISSING_POSITION),
        ({"omit": ["ImageOrientationPatient"]}, REASON_MISSING_POSITION),
        ({"pixel_bytes": b"\x00\x01" * 7}, REASON_UNREADABLE_PIXELS),
    ],
)
def test_read_header_skip_reasons(tmp_path, kwargs, reason):
    from ich3d.data.dicom import SkipSlice

    f = write_slice(tmp_path / "ID_d.dcm", np.zeros((4, 4)), **kwargs)
    with pytest.raises(SkipSlice) as err:
        read_header(f)
    assert err.value.reason == reason


def test_truncated_file_is_unreadable_pixel_data(tmp_path):
    from ich3d.data.dicom import SkipSlice

    f = write_slice(tmp_path / "ID_e.dcm", np.zeros((8, 8)))
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(SkipSlice) as err:
        read_header(f)
    assert err.value.reason == REASON_UNREADABLE_PIXELS


def test_file_cut_inside_its_header_is_reported_truncated_not_missing_tags(tmp_path):
    """Every cut inside a header element says "truncated"; only cuts on element boundaries keep their tag reason."""
    from ich3d.data.dicom import SkipSlice
    from ich3d.data.dicom.truncation import TRUNCATED_HEADER, ends_inside_an_element

    f = write_slice(tmp_path / "ID_f.dcm", np.zeros((8, 8)))
    data = f.read_bytes()
    pixels_at = data.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) PixelData's tag
    ds = pydicom.dcmread(f)
    cut_file = tmp_path / "ID_cut.dcm"
    reasons = {}
    for cut in range(150, pixels_at):
        cut_file.write_bytes(data[:cut])
        with pytest.raises(SkipSlice) as err:
            read_header(cut_file)
        reasons[cut] = (err.value.reason, err.value.detail)
    truncated = [c for c, (r, d) in reasons.items() if d == TRUNCATED_HEADER]
    assert all(reasons[c][0] == REASON_UNREADABLE_FILE for c in truncated)
    # the cuts that keep a tag reason are exactly those on an element boundary, where the bytes
    # are those of a complete file without the later elements
    start = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    fp = io.BytesIO(data)
    fp.seek(start)
    ends = {start}
    for _ in pydicom.filereader.data_element_generator(fp, False, True, defer_size=None):
        ends.add(fp.tell())
    assert set(reasons) - set(truncated) == {e for e in ends if 150 <= e < pixels_at}
    assert len(truncated) > 0.8 * len(reasons)
    assert not ends_inside_an_element(str(f))  # the whole file is complete
    mr = write_slice(tmp_path / "ID_mr.dcm", np.zeros((4, 4)), modality="MR")  # complete: still "not CT"
    with pytest.raises(SkipSlice) as err:
        read_header(mr)
    assert err.value.reason == REASON_NOT_CT


def test_not_dicom(tmp_path):
    from ich3d.data.dicom import SkipSlice

    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(SkipSlice) as err:
        read_header(f)
    assert err.value.reason == REASON_NOT_DICOM


# --------------------------------------------------------------------------- ingest, hand-made files


@pytest.fixture()
def handmade(tmp_path):
    """A small labelled dataset with one instance of every skip reason."""
    img = tmp_path / "images"
    vols = {}
    # A: 6 slices, stored descending (file names ascend while z descends), labels on 2 slices
    vols["A"] = _hu(6)
    files_a = write_series(img, vols["A"], series="ID_serA", start=0x100, z0=50.0, dz=-2.5)
    # B: gantry tilt: positions along the tilted normal, not along z; shuffled names
    tilt = np.deg2rad(20.0)
    orient = (1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    normal = np.cross(orient[:3], orient[3:])
    vols["B"] = _hu(5, size=12)
    order_b = [3, 0, 4, 1, 2]  # file i holds true slice order_b[i]
    files_b = []
    for i, k in enumerate(order_b):
        # y drifts so much that z and the projection on the normal disagree on the order
        pos = np.array([-10.0, -10.0 + 20.0 * k, 0.0]) + normal * 3.0 * k
        files_b.append(
            write_slice(
                img / f"ID_{0x200 + i:09x}.dcm",
                vols["B"][k] + 1024,
                position=[float(v) for v in pos],
                orientation=orient,
                series="ID_serB",
                patient="ID_patient1",
            )
        )
    # C: 5 slices, one duplicate position (two files at slice 2) and a gap (slice 3 missing)
    vols["C"] = _hu(5)
    files_c = write_series(img, vols["C"], series="ID_serC", start=0x300, dz=3.0)
    dup = write_slice(img / f"ID_{0x3FF:09x}.dcm", vols["C"][2] + 1024, z=6.0, series="ID_serC")
    files_c[3].unlink()
    # D: 3 slices (< min_slices 4); E: one slice
    write_series(img, _hu(3), series="ID_serD", start=0x400)
    write_series(img, _hu(1), series="ID_serE", start=0x500)
    # F: size mismatch within the series
    write_series(img, _hu(2, size=16), series="ID_serF", start=0x600)
    write_series(img, _hu(2, size=12), series="ID_serF", start=0x602, z0=5.0)
    # single-file defects (they would belong to A)
    write_slice(img / "ID_000000700.dcm", np.zeros((16, 16)), modality="MR", series="ID_serA")
    write_slice(img / "ID_000000701.dcm", np.zeros((16, 16)), omit=["ImagePositionPatient"])
    write_slice(img / "ID_000000702.dcm", np.zeros((16, 16)), pixel_bytes=b"\x00" * 30)
    (img / "README.txt").write_text("not an image")
    (img / "sub").mkdir()
    (img / "sub" / "ID_000000703.dcm").write_bytes(b"garbage" * 50)
    # labels
    rows = {}
    for f in files_a + files_b + [p for p in files_c if p.exists()] + [dup]:
        rows[f.name[:-4]] = [0] * 6
    rows[files_a[1].name[:-4]] = [0, 1, 0, 0, 0, 1]
    rows[files_a[4].name[:-4]] = [0, 0, 0, 0, 1, 1]
    for d in ("400", "401", "402", "500", "600", "601", "602", "603", "700", "701", "702", "703"):
        rows[f"ID_000000{d}"] = [0] * 6
    rows["ID_00000ffff"] = [1] * 6  # orphan: no such file
    del rows[files_b[2].name[:-4]]  # missing label -> B loses one slice (still 4)
    extra = [
        f"{files_a[0].name[:-4]}_any,0",  # exact duplicate row
        f"{files_a[2].name[:-4]}_subdural,1",  # conflicting duplicate -> max
        "ID_broken,1",  # malformed
    ]
    labels = write_labels(tmp_path / "labels.csv", rows, extra)
    return {
        "images": img,
        "labels": labels,
        "vols": vols,
        "a": files_a,
        "b": files_b,
        "order_b": order_b,
        "c": files_c,
        "dup": dup,
        "tmp": tmp_path,
    }


def test_ingest_handmade_values_order_and_reasons(handmade):
    out = handmade["tmp"] / "cache"
    s = run_ingest(handmade["images"], handmade["labels"], out, progress=False)
    slices, volumes, skipped = _tables(out)
    assert tuple(slices.columns) == SLICE_COLUMNS
    assert tuple(volumes.columns) == VOLUME_COLUMNS
    assert tuple(skipped.columns) == SKIPPED_COLUMNS

    # A: ascending position = reverse file order; values equal the reference
    key_a = series_key("ID_serA")
    va = np.load(out / "volumes" / f"{key_a}.npy")
    np.testing.assert_array_equal(va, reference_pool(handmade["vols"]["A"][::-1]))
    sa = slices[slices.key == key_a].sort_values("slice_index")
    assert sa.image_id.tolist() == [f.name[:-4] for f in handmade["a"][::-1]]
    assert sa.position.tolist() == [37.5, 40.0, 42.5, 45.0, 47.5, 50.0]
    assert sa[sa.image_id == handmade["a"][1].name[:-4]].intraparenchymal.item() == 1
    assert sa[sa.image_id == handmade["a"][2].name[:-4]].subdural.item() == 1  # conflict -> max
    row_a = volumes[volumes.key == key_a].iloc[0]
    assert row_a[["epidural", "intraparenchymal", "subdural", "any"]].tolist() == [0, 1, 1, 1]
    assert (row_a.n_slices, row_a.height, row_a.width, row_a.gap) == (6, 8, 8, 0)
    assert row_a.slice_spacing == 2.5 and row_a.pixel_spacing == 0.5
    assert row_a.path == f"volumes/{key_a}.npy"

    # B: tilted gantry, order by projection on the normal; one slice lost (no label row)
    key_b = series_key("ID_serB")
    vb = np.load(out / "volumes" / f"{key_b}.npy")
    lost = handmade["order_b"][2]
    kept = [k for k in range(5) if k != lost][::-1]  # projection decreases with k
    np.testing.assert_array_equal(vb, reference_pool(handmade["vols"]["B"][kept]))
    files_by_k = {k: handmade["b"][i] for i, k in enumerate(handmade["order_b"])}
    z_in_volume_order = [read_header(files_by_k[k]).position[2] for k in kept]
    assert z_in_volume_order == sorted(z_in_volume_order, reverse=True)  # z alone would flip it

    # C: duplicate position keeps the lower image id; the missing slice makes a gap
    key_c = series_key("ID_serC")
    row_c = volumes[volumes.key == key_c].iloc[0]
    assert row_c.n_slices == 4 and row_c.gap == 1 and row_c.slice_spacing == 3.0
    sc = slices[slices.key == key_c].sort_values("slice_index")
    assert handmade["c"][2].name[:-4] in sc.image_id.tolist()
    np.testing.assert_array_equal(
        np.load(out / "volumes" / f"{key_c}.npy"),
        reference_pool(handmade["vols"]["C"][[0, 1, 2, 4]]),
    )

    reasons = dict(zip(skipped.item, skipped.reason, strict=True))
    assert reasons[handmade["dup"].name] == ing.REASON_DUPLICATE_POSITION
    assert reasons[handmade["b"][2].name] == ing.REASON_NO_LABEL
    assert reasons["ID_000000400.dcm"] == ing.REASON_SHORT_SERIES
    assert reasons["ID_000000500.dcm"] == ing.REASON_SHORT_SERIES
    assert reasons["ID_000000600.dcm"] == ing.REASON_SIZE_MISMATCH
    assert reasons["ID_000000700.dcm"] == REASON_NOT_CT
    assert reasons["ID_000000701.dcm"] == REASON_MISSING_POSITION
    assert reasons["ID_000000702.dcm"] == REASON_UNREADABLE_PIXELS
    assert reasons["README.txt"] == REASON_NOT_DICOM
    assert reasons["sub/ID_000000703.dcm"] == REASON_NOT_DICOM
    assert reasons["ID_00000ffff"] == ing.REASON_ORPHAN_LABEL
    assert reasons["ID_broken"] == ing.REASON_MALFORMED_LABEL
    assert s.label_rows_duplicate == 1 and s.label_conflicts == 1
    assert set(volumes.key) == {key_a, series_key("ID_serB"), key_c}
    _assert_accounted(handmade["images"], handmade["labels"], out)
    assert s.skipped == dict(skipped.reason.value_counts())


def _assert_accounted(images: Path, labels: Path | None, out: Path) -> None:
    """Every file and every labelled image is in exactly one of slices.csv / skipped.csv."""
    slices, _, skipped = _tables(out)
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    by_id = {f.rsplit("/", 1)[-1].removesuffix(".dcm"): f for f in files}
    file_rows = set(skipped.item) & set(files)
    kept = set(slices.image_id)
    assert len(slices) == len(kept)  # one row per image
    assert len(files) == len(kept) + len(file_rows)
    assert {by_id[i] for i in kept}.isdisjoint(file_rows)
    assert len(skipped) == len(set(skipped.item))  # one row per item
    if labels is not None:
        lab = pd.read_csv(labels)
        ids = set(lab.ID.str.rsplit("_", n=1).str[0])
        bad = set(lab.ID[~lab.ID.str.rsplit("_", n=1).str[1].isin(ing.SUBTYPES)])
        for image in ids - {b.rsplit("_", 1)[0] for b in bad}:
            places = (
                (image in kept)
                + (image in by_id and by_id[image] in file_rows)
                + (image in set(skipped.item))
            )
            assert places == 1, image


def test_unlabeled_ingest_keeps_everything_with_unlabeled_columns(handmade):
    out = handmade["tmp"] / "cache_u"
    run_ingest(handmade["images"], None, out, progress=False)
    slices, volumes, skipped = _tables(out)
    assert (slices[list(ing.LABEL_COLUMNS)] == UNLABELED).all().all()
    assert (volumes[list(ing.LABEL_COLUMNS)] == UNLABELED).all().all()
    assert ing.REASON_NO_LABEL not in set(skipped.reason)
    assert volumes.set_index("key").loc[series_key("ID_serB")].n_slices == 5
    _assert_accounted(handmade["images"], None, out)


def test_min_slices_option(handmade):
    out = handmade["tmp"] / "cache3"
    run_ingest(handmade["images"], handmade["labels"], out, min_slices=3, progress=False)
    _, volumes, _ = _tables(out)
    assert series_key("ID_serD") in set(volumes.key)
    with pytest.raises(UserError, match="min_slices"):
        run_ingest(handmade["images"], None, handmade["tmp"] / "x", min_slices=1, progress=False)


def test_rerun_is_idempotent_and_other_parameters_refused(handmade):
    out = handmade["tmp"] / "cache"
    first = run_ingest(handmade["images"], handmade["labels"], out, progress=False)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_ingest(handmade["images"], handmade["labels"], out, progress=False)
    assert again.cached and again.volumes_written == 0 and again.volumes_reused == first.volumes
    assert again.skipped == first.skipped and again.slices_kept == first.slices_kept
    assert stamp == {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="overwrite"):
        run_ingest(handmade["images"], handmade["labels"], out, min_slices=3, progress=False)
    with pytest.raises(UserError, match="overwrite"):
        run_ingest(handmade["images"], None, out, progress=False)
    s3 = run_ingest(
        handmade["images"], handmade["labels"], out, min_slices=3, overwrite=True, progress=False
    )
    assert s3.volumes == first.volumes + 1 and s3.volumes_written == s3.volumes
    assert json.loads((out / "ingest.json").read_text())["parameters"]["min_slices"] == 3


def test_changed_inputs_refused(handmade):
    out = handmade["tmp"] / "cache"
    run_ingest(handmade["images"], handmade["labels"], out, progress=False)
    write_slice(handmade["images"] / "ID_000000999.dcm", np.zeros((16, 16)))
    with pytest.raises(UserError, match="input files"):
        run_ingest(handmade["images"], handmade["labels"], out, progress=False)


def test_missing_volume_is_rebuilt(handmade):
    out = handmade["tmp"] / "cache"
    run_ingest(handmade["images"], handmade["labels"], out, progress=False)
    ref = handmade["tmp"] / "ref"
    shutil.copytree(out, ref)
    victim = next((out / "volumes").glob("*.npy"))
    victim.unlink()
    s = run_ingest(handmade["images"], handmade["labels"], out, progress=False)
    assert s.volumes_written == 1 and not s.cached
    assert_same_cache(out, ref)


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run_ingest(tmp_path / "nope", None, tmp_path / "c", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no files"):
        run_ingest(tmp_path / "empty", None, tmp_path / "c", progress=False)
    write_slice(tmp_path / "img" / "ID_1.dcm", np.zeros((4, 4)))
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nID_1_any,0\n")
    with pytest.raises(UserError, match="ID,Label"):
        run_ingest(tmp_path / "img", bad, tmp_path / "c", progress=False)


def test_cli_ingest_prints_summary_and_errors(handmade, capsys):
    from ich3d.cli.main import main

    out = handmade["tmp"] / "cli"
    args = ["ingest", "--images", str(handmade["images"]), "--out", str(out), "--no-progress"]
    assert main([*args, "--labels", str(handmade["labels"])]) == 0
    text = capsys.readouterr().out
    assert "slices kept" in text and ing.REASON_DUPLICATE_POSITION in text
    assert main([*args, "--labels", str(handmade["labels"]), "--min-slices", "3"]) == 2
    assert "ich3d: error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- parallel, resume


@pytest.fixture()
def many_series(tmp_path):
    img = tmp_path / "images"
    labels = {}
    for k in range(8):
        files = write_series(img, _hu(6, size=32), series=f"ID_ser{k}", start=0x1000 * (k + 1))
        for i, f in enumerate(files):
            labels[f.name[:-4]] = [0, 0, 0, 0, int(i == k % 6), int(i == k % 6)]
    write_slice(img / "ID_0000000ab.dcm", np.zeros((32, 32)), modality="OT")
    return img, write_labels(tmp_path / "labels.csv", labels)


def test_two_workers_give_identical_outputs(many_series, tmp_path):
    img, labels = many_series
    s1 = run_ingest(img, labels, tmp_path / "w1", workers=1, progress=False)
    s2 = run_ingest(img, labels, tmp_path / "w2", workers=2, progress=False)
    assert s1.volumes == s2.volumes == 8 and s2.volumes_written == 8
    assert_same_cache(tmp_path / "w1", tmp_path / "w2")


_SLOW_INGEST = """
import sys, time
import ich3d.data.ingest.workers as workers
build = workers.build_volume
def slow(task):
    time.sleep(0.3)
    return build(task)
workers.build_volume = slow
from ich3d.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture()
def many_series_rle(many_series, tmp_path):
    """The same files, RLE-compressed (the decoder path), in another folder."""
    from _ingest_helpers import compress_copy
    from pydicom.uid import RLELossless

    img, labels = many_series
    packed = tmp_path / "images_rle"
    for f in sorted(img.iterdir()):
        if f.name != "ID_0000000ab.dcm":  # the OT file is copied as it is
            compress_copy(f, packed / f.name, RLELossless)
    shutil.copy(img / "ID_0000000ab.dcm", packed / "ID_0000000ab.dcm")
    return packed, labels


@pytest.mark.parametrize("dataset", ["many_series", "many_series_rle"])
def test_resume_after_sigkill_gives_identical_outputs(dataset, request, tmp_path):
    img, labels = request.getfixturevalue(dataset)
    fresh = tmp_path / "fresh"
    run_ingest(img, labels, fresh, progress=False)

    out = tmp_path / "killed"
    args = ["ingest", "--images", str(img), "--labels", str(labels), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_INGEST, *args, "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "volumes").glob("*.npy"))) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the slowed ingest finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = len(list((out / "volumes").glob("*.npy")))
    assert 2 <= done < 8 and not (out / "ingest.json").exists()
    (out / "volumes" / ".deadbeef.npy.tmp-1").write_bytes(b"half a file")  # a killed write

    with pytest.raises(UserError, match="unfinished ingest"):
        run_ingest(img, labels, out, min_slices=5, progress=False)
    s = run_ingest(img, labels, out, progress=False)
    assert s.volumes_reused == done and s.volumes_written == 8 - done
    assert_same_cache(out, fresh)


# --------------------------------------------------------------------------- synthetic RSNA data

_ALL_DEFECTS = dict(
    twelve_bit=0.25,
    multi_window=0.2,
    fov_minus2000=0.3,
    descending=0.4,
    corrupt=0.04,
    blank=0.04,
    duplicate_rows=0.05,
    missing_label=0.04,
    orphan_label=0.04,
    not_dicom=0.4,
)


@pytest.fixture(scope="module")
def synth_defects(tmp_path_factory):
    """A small synthetic RSNA set where every defect occurs, and its ingest."""
    from ich3d import synth

    for seed in range(11, 31):  # the first seed that plants every defect (11 today)
        root = tmp_path_factory.mktemp(f"synth_defects_{seed}")
        synth.generate(
            root,
            patients=5,
            size=64,
            slices=(7, 10),
            seed=seed,
            defects=synth.DefectRates(**_ALL_DEFECTS),
            progress=False,
        )
        truth = synth.load_truth(root)
        missing = [k for k, v in truth["defects"].items() if not v]
        if not missing:
            break
    assert not missing, f"no seed plants every defect (missing {missing})"
    out = root / "cache"
    summary = run_ingest(root / synth.IMAGES_DIR, root / synth.LABELS_CSV, out, progress=False)
    return root, truth, out, summary


@pytest.fixture(scope="module")
def synth_clean(tmp_path_factory):
    """Defect-free synthetic series, stored ascending (one set) and descending (another)."""
    from ich3d import synth

    sets = []
    for name, rates in (
        ("asc", synth.NO_DEFECTS),
        ("desc", synth.NO_DEFECTS.with_rates(descending=1.0)),
    ):
        root = tmp_path_factory.mktemp(f"synth_clean_{name}")
        synth.generate(
            root,
            patients=2,
            size=64,
            slices=(6, 8),
            studies=(1, 1),
            seed=5,
            defects=rates,
            progress=False,
        )
        out = root / "cache"
        run_ingest(root / synth.IMAGES_DIR, root / synth.LABELS_CSV, out, progress=False)
        sets.append((root, synth.load_truth(root), out))
    return sets


def test_synth_volumes_equal_simpleitk_reading(synth_clean, tmp_path):
    """HU and order equal SimpleITK's (its rescale, GDCM's position sort), pooled, exactly."""
    import SimpleITK as sitk

    from ich3d import synth

    directions = set()
    for root, truth, out in synth_clean:
        slices, volumes, skipped = _tables(out)
        assert len(skipped) == 0
        for entry in truth["series"]:
            key = series_key(entry["series_uid"])
            ours = np.load(out / "volumes" / f"{key}.npy")
            # GDCM mangles the ID_... series UIDs: give it one series per folder
            folder = tmp_path / root.name / key
            folder.mkdir(parents=True)
            for image_id in entry["image_ids"]:
                shutil.copy(root / synth.IMAGES_DIR / f"{image_id}.dcm", folder)
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
            assert len(names) == entry["n_slices"]
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(names)
            ref = sitk.GetArrayFromImage(reader.Execute())  # (slices, rows, columns), HU
            gdcm_order = [Path(n).name[:-4] for n in names]
            # GDCM sorts along the cross product of the cosines; ich3d along the normal signed
            # foot -> head: a series whose normal points inferior is the reverse of GDCM's
            flip = slice(None, None, -1) if entry["descending"] else slice(None)
            np.testing.assert_array_equal(ours, reference_pool(np.rint(ref))[flip])
            order = slices[slices.key == key].sort_values("slice_index").image_id.tolist()
            assert order == gdcm_order[flip]
            assert order == entry["image_ids"][flip]  # the generator's order along its normal
            pos = np.asarray([entry["positions"][entry["image_ids"].index(i)] for i in order])
            assert (np.diff(pos[:, 2]) > 0).all()  # foot -> head in every volume
            z = [p[2] for p in entry["positions"]]
            assert (np.diff(z) < 0).all() if entry["descending"] else (np.diff(z) > 0).all()
            directions.add(entry["descending"])
            row = volumes.set_index("key").loc[key]
            assert row.slice_spacing == pytest.approx(entry["slice_spacing"], abs=1e-5)
            assert row.pixel_spacing == pytest.approx(entry["pixel_spacing"], abs=1e-6)
            assert (row.n_slices, row.height, row.width) == (entry["n_slices"], 32, 32)
    assert directions == {True, False}


def test_synth_defects_volumes_equal_truth(synth_defects):
    """Every kept slice holds the true HU (12-bit corrected, -2000 clipped), in the true order."""
    from ich3d import synth

    root, truth, out, _ = synth_defects
    slices, volumes, _ = _tables(out)
    checked = set()
    for entry in truth["series"]:
        key = series_key(entry["series_uid"])
        if key not in set(volumes.key):
            continue
        rows = slices[slices.key == key].sort_values("slice_index")
        index = {i: k for k, i in enumerate(entry["image_ids"])}
        kept = [index[i] for i in rows.image_id]
        # true order along the generator's normal; foot -> head reverses a descending series
        assert kept == sorted(kept, reverse=bool(entry["descending"]))
        true_hu = synth.series_hu(entry)[kept]
        vol = np.load(out / "volumes" / f"{key}.npy")
        np.testing.assert_array_equal(vol, reference_pool(true_hu))
        labels = np.asarray(entry["labels"])[kept]
        np.testing.assert_array_equal(rows[list(ing.LABEL_COLUMNS)].to_numpy(), labels)
        vrow = volumes.set_index("key").loc[key]
        np.testing.assert_array_equal(vrow[list(ing.LABEL_COLUMNS)].to_numpy(int), labels.max(0))
        for name in ("twelve_bit", "fov_minus2000", "descending"):
            if entry[name]:
                checked.add(name)
        if entry["fov_minus2000"]:
            assert vol.min() == -1024 and (true_hu == -2000).any()
    assert checked == {"twelve_bit", "fov_minus2000", "descending"}


def test_synth_defects_accounted_with_reasons(synth_defects):
    from ich3d import synth

    root, truth, out, summary = synth_defects
    slices, _, skipped = _tables(out)
    reasons = dict(zip(skipped.item, skipped.reason, strict=True))
    d = truth["defects"]
    for image_id in d["corrupt"]:
        assert reasons[f"{image_id}.dcm"] == REASON_UNREADABLE_PIXELS
    for image_id in d["missing_label"]:
        assert reasons[f"{image_id}.dcm"] == ing.REASON_NO_LABEL
    for image_id in d["orphan_label"]:
        assert reasons[image_id] == ing.REASON_ORPHAN_LABEL
    for path in d["not_dicom"]:
        assert reasons[path.removeprefix(synth.IMAGES_DIR + "/")] == REASON_NOT_DICOM
    kept_multi = set(d["multi_window"]) & set(slices.image_id)
    assert kept_multi, "multi-valued window slices are read"
    blank_kept = set(d["blank"]) & set(slices.image_id)
    assert blank_kept and summary.blank_slices == len(blank_kept)
    assert summary.label_rows == truth["counts"]["label_rows"]
    assert summary.label_rows_duplicate == 6 * len(d["duplicate_rows"])
    assert summary.label_conflicts == 0
    assert summary.files_seen == truth["counts"]["dicom_files"] + truth["counts"]["stray_files"]
    assert (
        summary.slices_kept
        + sum(n for r, n in summary.skipped.items() if r not in (ing.REASON_ORPHAN_LABEL,))
        == summary.files_seen
    )
    _assert_accounted(root / synth.IMAGES_DIR, root / synth.LABELS_CSV, out)


def test_cache_inside_images_folder_is_not_ingested(many_series):
    img, labels = many_series
    out = img / "cache"
    first = run_ingest(img, labels, out, progress=False)
    assert first.files_seen == 49
    again = run_ingest(img, labels, out, progress=False)  # the cache's files are not inputs
    assert again.cached
    rebuilt = run_ingest(img, labels, out, overwrite=True, progress=False)
    assert not rebuilt.cached and rebuilt.volumes_written == 8
