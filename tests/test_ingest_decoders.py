"""Compressed DICOM the way vendors send it (issue 18): 12-bit JPEG Extended CT decodes
(GDCM's reader where pydicom's plugins refuse), a truncated compressed file is unreadable
pixel data, decoders stay off the console, skip details are one clean line, and of two
copies of a position the lossless one is kept."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _ingest_helpers import write_slice

from ich3d.data.dicom import REASON_MISSING_TAG, REASON_UNREADABLE_PIXELS, SkipSlice, read_header
from ich3d.data.ingest import REASON_DUPLICATE_POSITION, run_ingest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # ID_... UIs when writing

JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
COMMITTED = Path(__file__).parent / "data" / "jpeg12"


def _plain_series(folder: Path) -> list[Path]:
    """Four 64x64 12-bit unsigned CT slices (air, a bone ring, brain with a gentle ramp):
    the uncompressed twin of ``tests/data/jpeg12`` (see its README)."""
    size = 64
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    files = []
    for k in range(4):
        img = np.zeros((size, size), np.int32)  # -1024 HU
        img[r < 0.45 * size] = 1024 + 1000
        brain = r < 0.38 * size
        img[brain] = 1024 + 35 + xx[brain] // 8 + k
        files.append(
            write_slice(
                folder / f"ID_{0xC00 + k:09x}.dcm",
                img,
                z=5.0 * k,
                signed=False,
                bits_stored=12,
                intercept=-1024.0,
                series="ID_jpeg12",
                patient="ID_p12",
                study="ID_st12",
            )
        )
    return files


def _jpeg_series(plain: list[Path], folder: Path, fresh: bool = True) -> list[Path]:
    """The plain series as 12-bit JPEG Extended: dcmtk's ``dcmcjpeg +ee`` where it is
    installed (and ``fresh``), else the committed files it made."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = shutil.which("dcmcjpeg") if fresh else None
    out = []
    for f in plain:
        dst = folder / f.name
        if tool is not None:
            subprocess.run([tool, "+ee", str(f), str(dst)], check=True, capture_output=True)
        else:
            shutil.copy(COMMITTED / f.name, dst)
        out.append(dst)
    return out


@pytest.fixture(params=["dcmcjpeg", "committed"])
def twins(request, tmp_path):
    plain = _plain_series(tmp_path / "plain")
    return plain, _jpeg_series(plain, tmp_path / "jpeg", fresh=request.param == "dcmcjpeg")


def _skipped(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)


def _console_is_clean(err: str) -> None:
    for noise in ("Traceback", "Unsupported JPEG", "force=True", "End of file reached"):
        assert noise not in err, err


def test_12bit_jpeg_extended_decodes_within_the_lossy_tolerance(twins, tmp_path, capfd):
    from ich3d.cli.main import main

    plain, jpeg = twins
    assert read_header(jpeg[0]).transfer_syntax == JPEG_EXTENDED
    run_ingest(plain[0].parent, None, tmp_path / "plain_cache", progress=False)
    args = ["ingest", "--images", str(jpeg[0].parent), "--out", str(tmp_path / "jpeg_cache")]
    assert main([*args, "--no-progress"]) == 0
    _console_is_clean(capfd.readouterr().err)
    vols = pd.read_csv(tmp_path / "jpeg_cache" / "volumes.csv", dtype=str)
    assert len(vols) == 1 and len(_skipped(tmp_path / "jpeg_cache")) == 0
    assert (vols.transfer_syntax[0], vols.lossy[0], vols.n_slices[0]) == (JPEG_EXTENDED, "1", "4")
    key = vols.key[0]
    ref = np.load(tmp_path / "plain_cache" / "volumes" / f"{key}.npy").astype(int)
    got = np.load(tmp_path / "jpeg_cache" / "volumes" / f"{key}.npy").astype(int)
    diff = np.abs(got - ref)
    assert ref.shape == got.shape == (4, 32, 32)
    assert diff.max() <= 40 and diff.mean() <= 5  # lossy JPEG: a few HU
    assert np.abs(ref).max() > 900  # bone and air really compared


def test_truncated_compressed_file_is_unreadable_pixel_data(twins, tmp_path, capfd):
    _, jpeg = twins
    victim = jpeg[1]
    victim.write_bytes(victim.read_bytes()[:-300])
    s = run_ingest(jpeg[0].parent, None, tmp_path / "cache", min_slices=3, progress=False)
    _console_is_clean(capfd.readouterr().err)
    skipped = _skipped(tmp_path / "cache")
    assert skipped.values.tolist() == [
        [victim.name, REASON_UNREADABLE_PIXELS, "truncated: the file ends inside its compressed pixel data"]
    ]
    assert s.volumes == 1 and s.slices_kept == 3


def test_undecodable_stream_detail_is_one_clean_line(twins, tmp_path, capfd):
    import pydicom
    from pydicom.encaps import encapsulate

    _, jpeg = twins
    ds = pydicom.dcmread(jpeg[2])
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc1" + b"\x00" * 60])  # a JPEG that is not
    ds.save_as(jpeg[2], enforce_file_format=True)
    run_ingest(jpeg[0].parent, None, tmp_path / "cache", min_slices=3, progress=False)
    _console_is_clean(capfd.readouterr().err)
    text = (tmp_path / "cache" / "skipped.csv").read_text()
    assert len(text.splitlines()) == 2  # the header and one row: no line break in a detail
    row = _skipped(tmp_path / "cache").iloc[0]
    assert (row["item"], row["reason"]) == (jpeg[2].name, REASON_UNREADABLE_PIXELS)
    assert "gdcm" in row.detail and "pillow" in row.detail and "gdcm.ImageReader" in row.detail
    assert "  " not in row.detail and row.detail.count("12-bit precision") == 2  # once each


def test_lossless_copy_wins_among_duplicate_positions(twins, tmp_path):
    plain, jpeg = twins
    mixed = tmp_path / "mixed"
    shutil.copytree(plain[0].parent, mixed)
    shutil.copy(jpeg[2], mixed / "ID_000000b00.dcm")  # a lossy copy of slice 2, a lower id
    s = run_ingest(mixed, None, tmp_path / "cache", progress=False)
    assert s.volumes == 1 and s.slices_kept == 4
    assert _skipped(tmp_path / "cache").values.tolist() == [
        ["ID_000000b00.dcm", REASON_DUPLICATE_POSITION, "same position as ID_000000c02"]
    ]
    run_ingest(plain[0].parent, None, tmp_path / "plain_cache", progress=False)
    for name in ("slices.csv", "volumes.csv"):  # lossy 0, the native syntax: the plain volume
        a = (tmp_path / "cache" / name).read_bytes()
        assert a == (tmp_path / "plain_cache" / name).read_bytes(), name


def test_mixed_series_transfer_syntax_is_mixed(twins, tmp_path):
    plain, jpeg = twins
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in (*plain[:2], *jpeg[2:]):
        shutil.copy(f, mixed / f.name)
    run_ingest(mixed, None, tmp_path / "cache", progress=False)
    vols = pd.read_csv(tmp_path / "cache" / "volumes.csv", dtype=str)
    assert (vols.transfer_syntax[0], vols.lossy[0], vols.n_slices[0]) == ("mixed", "1", "4")


@pytest.mark.parametrize(
    "omit,detail",
    [
        (["SeriesInstanceUID"], "no SeriesInstanceUID"),
        (["Rows"], "no Rows"),
        (["Rows", "Columns"], "no Rows / Columns"),
    ],
)
def test_missing_tag_detail_names_only_what_is_missing(tmp_path, omit, detail):
    f = write_slice(tmp_path / "ID_1.dcm", np.zeros((4, 4)), omit=omit)
    with pytest.raises(SkipSlice) as err:
        read_header(f)
    assert (err.value.reason, err.value.detail) == (REASON_MISSING_TAG, detail)
