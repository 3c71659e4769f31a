"""Hostile inputs to the ingest (issue 18): every one a logged skip with its reason or one
``ich3d: error:`` line, nothing hung, nothing else changed."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _ingest_helpers import write_labels, write_series, write_slice

from ich3d.data.ingest import listing as listing_mod
from ich3d.data.ingest import run_ingest
from ich3d.errors import UserError


def _series(folder: Path, n: int = 5, start: int = 0x100, **kwargs: object) -> list[Path]:
    hu = np.random.default_rng(start).integers(-1000, 1500, size=(n, 16, 16)).astype(np.int32)
    return write_series(folder, hu, series=f"ID_s{start:x}", start=start, **kwargs)


def _skipped(out: Path) -> dict[str, tuple[str, str]]:
    frame = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    return {r.item: (r.reason, r.detail) for r in frame.itertuples()}


def _same_volumes(a: Path, b: Path) -> None:
    """The same slices.csv, volumes.csv and volume bytes (what a model sees)."""
    for name in ("slices.csv", "volumes.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    names = sorted(os.listdir(a / "volumes"))
    assert names == sorted(os.listdir(b / "volumes")) and names
    for n in names:
        assert (a / "volumes" / n).read_bytes() == (b / "volumes" / n).read_bytes(), n


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ich3d.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# --------------------------------------------------------------------------- listing


def test_special_files_links_and_bad_names_are_skipped_never_opened(tmp_path):
    clean, img = tmp_path / "clean", tmp_path / "images"
    _series(clean)
    _series(img)
    os.mkfifo(img / "fifo.dcm")  # opening it would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(img / "sock.dcm"))
    (img / "dangling.dcm").symlink_to(img / "nowhere.dcm")
    (img / "self.dcm").symlink_to(img / "self.dcm")
    (img / "sub").mkdir()
    (img / "sub" / "up").symlink_to(img)  # a loop: sub/up/sub/up/...
    (img / "twice").symlink_to(img / "sub")  # a second path to a listed folder
    bad = os.fsencode(img) + b"/bad\xff.dcm"
    with open(bad, "wb") as fh:
        fh.write(b"not read")
    try:
        res = _cli("ingest", "--images", str(img), "--out", str(tmp_path / "cache"), "--no-progress")
    finally:
        sock.close()
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "UnicodeEncodeError" not in res.stderr
    skipped = _skipped(tmp_path / "cache")
    assert skipped == {
        "bad\\xff.dcm": ("file name not valid UTF-8", "rename it"),
        "dangling.dcm": ("dangling symbolic link", "No such file or directory"),
        "fifo.dcm": ("not a regular file", "FIFO (named pipe)"),
        "self.dcm": ("symbolic link loop", "Too many levels of symbolic links"),
        "sock.dcm": ("not a regular file", "socket"),
        "sub/up": ("symbolic link loop", "links to a folder above it"),
        "twice": ("folder already listed through another path", "not listed again"),
    }
    assert "files seen            5" in res.stdout
    run_ingest(clean, None, tmp_path / "clean_cache", progress=False)
    _same_volumes(tmp_path / "cache", tmp_path / "clean_cache")


def test_unreadable_folder_is_accounted_for(tmp_path, monkeypatch):
    img = tmp_path / "images"
    _series(img)
    _series(img / "locked", start=0x200)
    real = os.scandir

    def scandir(path: str | os.PathLike[str] = ".") -> object:  # root reads every folder
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(listing_mod.os, "scandir", scandir)
    s = run_ingest(img, None, tmp_path / "cache", progress=False)
    assert s.volumes == 1 and s.slices_kept == 5
    assert _skipped(tmp_path / "cache") == {"locked": ("unreadable folder", "Permission denied")}


def test_same_size_rewrite_is_seen(tmp_path):
    img = tmp_path / "images"
    files = _series(img)
    out = tmp_path / "cache"
    run_ingest(img, None, out, progress=False)
    before = np.load(next((out / "volumes").glob("*.npy")))
    size = files[2].stat().st_size
    data = bytearray(files[2].read_bytes())
    data[-2:] = b"\x00\x08"  # the last pixel: another value, same size
    files[2].write_bytes(bytes(data))
    st = files[2].stat()
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert files[2].stat().st_size == size
    with pytest.raises(UserError, match="other input files.*--overwrite"):
        run_ingest(img, None, out, progress=False)
    run_ingest(img, None, out, progress=False, overwrite=True)
    after = np.load(next((out / "volumes").glob("*.npy")))
    changed = np.argwhere(before != after)
    assert changed.shape[0] == 1 and tuple(changed[0][:1]) == (2,)


# --------------------------------------------------------------------------- DICOM values

_BAD_VALUES = [
    ({"slope": 0.0}, "unusable rescale slope or intercept", "RescaleSlope 0.0 (must be finite, > 0)"),
    ({"slope": -1.0}, "unusable rescale slope or intercept", "RescaleSlope -1.0 (must be finite, > 0)"),
    ({"slope": float("nan")}, "unusable rescale slope or intercept", "RescaleSlope nan (must be finite, > 0)"),
    ({"intercept": float("inf")}, "unusable rescale slope or intercept", "RescaleIntercept inf not finite"),
    ({"position": [float("nan"), 0.0, 12.5]}, "unusable geometry", "ImagePositionPatient nan\\0.0\\12.5 not finite"),
    ({"orientation": (1, 0, 0, 0, float("inf"), 0)}, "unusable geometry", "ImageOrientationPatient 1.0\\0.0\\0.0\\0.0\\inf\\0.0 not finite"),
    ({"spacing": 0.0}, "unusable geometry", "PixelSpacing 0.0\\0.0 not > 0"),
    ({"spacing": float("inf")}, "unusable geometry", "PixelSpacing inf\\inf not finite"),
]  # fmt: skip


def test_unusable_rescale_and_geometry_slices_are_skipped(tmp_path):
    """Each bad slice is skipped with its reason (it was cached as a constant with its
    labels); the rest of its series is the volume a clean copy without it gives."""
    clean, img = tmp_path / "clean", tmp_path / "images"
    labels: dict[str, list[int]] = {}
    expected = {}
    for k, (bad, reason, detail) in enumerate(_BAD_VALUES):
        start = 0x100 * (k + 1)
        hu = np.random.default_rng(k).integers(-1000, 1500, size=(6, 16, 16)).astype(np.int32)
        for folder in (clean, img):
            write_series(folder, hu[:5], series=f"ID_b{k}", start=start)
        name = f"ID_{start + 5:09x}"
        write_slice(img / f"{name}.dcm", hu[5] + 1024, z=12.5, series=f"ID_b{k}", **bad)
        expected[f"{name}.dcm"] = (reason, detail)
        for i in range(6):
            labels[f"ID_{start + i:09x}"] = [1, 0, 0, 0, 0, 1]  # a bleed: labels would leak
    with_bad = write_labels(tmp_path / "labels.csv", labels)
    without = write_labels(
        tmp_path / "labels_clean.csv", {i: v for i, v in labels.items() if f"{i}.dcm" not in expected}
    )
    s = run_ingest(img, with_bad, tmp_path / "cache", progress=False)
    assert s.volumes == len(_BAD_VALUES) and s.slices_kept == 5 * len(_BAD_VALUES)
    assert _skipped(tmp_path / "cache") == expected
    run_ingest(clean, without, tmp_path / "clean_cache", progress=False)
    _same_volumes(tmp_path / "cache", tmp_path / "clean_cache")


# --------------------------------------------------------------------------- label CSVs


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ich3d: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "option,content,message",
    [
        (
            "--labels",
            "ID,Label\nID_000000100_any,0\nID_\u00e9_any,1\n".encode("latin-1"),
            "is not UTF-8 text (byte 0xe9 on line 3); save it as UTF-8",
        ),
        (
            "--labels",
            "ID,Label\nID_000000100_any,0\n".encode("utf-16"),
            "is not UTF-8 text (byte 0xff on line 1); save it as UTF-8",
        ),
        (
            "--labels",
            b'ID,Label\nID_000000100_any,0\n"' + b"x" * 200_000 + b'",1\n',
            "line 3 is not CSV (field larger than field limit (131072))",
        ),
        (
            "--study-labels",
            "StudyInstanceUID,any\n\u00e9t\u00e9,1\n".encode("cp1252"),
            "is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8",
        ),
    ],
    ids=["latin-1", "utf-16", "oversized-field", "study-cp1252"],
)
def test_label_csv_not_utf8_or_not_csv_is_one_error_line(tmp_path, capsys, option, content, message):
    from ich3d.cli.main import main

    img = tmp_path / "images"
    _series(img)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(content)
    out = tmp_path / "cache"
    args = ["ingest", "--images", str(img), "--out", str(out), "--no-progress"]
    assert main([*args, option, str(csv_path)]) == 2
    line = _error_line(capsys)
    assert str(csv_path) in line and message in line
    assert not out.exists()  # refused before anything is written


# --------------------------------------------------------------------------- the cache


@pytest.fixture()
def built(tmp_path):
    img = tmp_path / "images"
    _series(img)
    _series(img, n=6, start=0x200)
    out = tmp_path / "cache"
    run_ingest(img, None, out, progress=False)
    return img, out


def _tamper_row(out: Path) -> None:
    lines = (out / "volumes.csv").read_text().splitlines(keepends=True)
    (out / "volumes.csv").write_text("".join(lines[:-1]))  # a row deleted


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


_TAMPER = {
    "row deleted": (_tamper_row, "volumes", "cache table {out}/volumes.csv is not the one the ingest wrote"),
    "table truncated": (lambda o: _truncate(o / "slices.csv"), "slices", "cache table {out}/slices.csv is not the one the ingest wrote"),
    "table deleted": (lambda o: (o / "volumes.csv").unlink(), "volumes", "cache table {out}/volumes.csv cannot be read (No such file or directory)"),
    "ingest.json truncated": (lambda o: _truncate(o / "ingest.json"), "open", "{out}/ingest.json is damaged (not a JSON object: truncated or edited)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_TAMPER))
def test_tampered_tables_are_refused_with_the_rebuild_command(built, case):
    from ich3d.cli.main import main
    from ich3d.config import DataConfig
    from ich3d.data.cache import open_cache
    from ich3d.runs.inputs import input_signature

    img, out = built
    pin = input_signature(DataConfig(cache_dir=str(out)))["cache"]
    before = {n: (out / n).read_bytes() for n in ("slices.csv", "volumes.csv", "skipped.csv")}
    tamper, what, message = _TAMPER[case]
    tamper(out)
    shown = "IMAGES" if what == "open" else img  # a damaged ingest.json no longer names them
    fix = f"rebuild the cache: `ich3d ingest --images {shown} --out {out} --overwrite`"
    with pytest.raises(UserError) as err:
        cache = open_cache(out)
        getattr(cache, what)
    assert str(err.value).startswith(message.format(out=out)) and str(err.value).endswith(fix)
    with pytest.raises(UserError, match="rebuild the cache"):
        input_signature(DataConfig(cache_dir=str(out)))
    command = fix.split("`")[1].replace("IMAGES", str(img)).split()[1:]
    assert main([*command, "--no-progress"]) == 0  # the advice works
    assert {n: (out / n).read_bytes() for n in before} == before
    assert input_signature(DataConfig(cache_dir=str(out)))["cache"] == pin


@pytest.mark.parametrize("case", ["deleted", "truncated", "wrong shape"])
def test_damaged_volume_is_refused_where_it_is_loaded(built, case):
    from ich3d.data.cache import open_cache

    img, out = built
    cache = open_cache(out)
    key = cache.volumes["key"].iloc[0]
    path = out / "volumes" / f"{key}.npy"
    good = np.load(path)
    if case == "deleted":
        path.unlink()
        message = f"cache volume {path} is missing"
    elif case == "truncated":
        _truncate(path)
        message = f"cache volume {path} is damaged"
    else:
        np.save(path, good[:-1])
        message = f"cache volume {path} is int16 {tuple(good[:-1].shape)}, volumes.csv says int16 {good.shape}"
    for mmap in (True, False):
        with pytest.raises(UserError) as err:
            open_cache(out).load_volume(key, mmap=mmap)
        assert str(err.value).startswith(message), str(err.value)
        assert str(err.value).endswith(f"`ich3d ingest --images {img} --out {out} --overwrite`")
    other = cache.volumes["key"].iloc[1]
    assert open_cache(out).load_volume(other).shape[0] in (5, 6)  # the rest still reads


# --------------------------------------------------------------------------- writers


def test_second_writer_is_refused_naming_the_first(built, capsys):
    import fcntl

    from ich3d.cli.main import main

    img, out = built
    before = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with open(out / ".ingest.lock", "r+") as fh:  # another process's lock, as flock sees it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.seek(0)
        fh.truncate()
        fh.write("pid 4242 on other-host\n")
        fh.flush()
        before[".ingest.lock"] = (out / ".ingest.lock").read_bytes()
        args = ["ingest", "--images", str(img), "--out", str(out), "--overwrite", "--no-progress"]
        assert main(args) == 2
        line = _error_line(capsys)
        assert line == (
            f"ich3d: error: another ingest (pid 4242 on other-host) is writing {out}; wait for "
            "it to finish (its outputs are then complete), or give this one another cache folder "
            "(`ich3d ingest --out`, or data.cache_dir for `ich3d train`)"
        )
        after = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        assert after == before  # nothing removed, nothing rewritten
    assert main(args) == 0  # the lock ends with its holder
    assert f"pid {os.getpid()} on" in (out / ".ingest.lock").read_text()


def test_temporary_files_of_a_killed_write_are_swept(built, tmp_path):
    img, out = built
    ref = tmp_path / "ref"
    run_ingest(img, None, ref, progress=False)
    left = [
        out / ".volumes.csv.k1ll3d_.tmp",
        out / ".ingest.json.x2y_z9.tmp",
        out / "..ingest-partial.json.abc123.tmp",
        out / "volumes" / ".0123456789abcdef.npy.tmp-999",
    ]
    for p in left:
        p.write_bytes(b"half")
    keep = out / ".splits.json.abc.tmp"  # not the ingest's: left alone
    keep.write_bytes(b"x")
    s = run_ingest(img, None, out, progress=False)
    assert s.cached and not any(p.exists() for p in left) and keep.exists()
    keep.unlink()
    _same_volumes(out, ref)


def test_full_disk_during_ingest_is_one_error_line_and_the_next_run_finishes(tmp_path, monkeypatch, capsys):
    from ich3d.cli.main import main
    from ich3d.data.ingest import run as run_mod

    img = tmp_path / "img"
    _series(img)
    out = tmp_path / "cache"
    real = run_mod.write_outputs

    def full(out_dir, *args, **kwargs):  # the disk fills up when the tables are written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out_dir) / "volumes.csv"))

    monkeypatch.setattr(run_mod, "write_outputs", full)
    argv = ["ingest", "--images", str(img), "--out", str(out), "--workers", "1", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == (
        f"ich3d: error: cannot write {out / 'volumes.csv'}: No space left on device; "
        "free space or choose another output folder"
    )
    assert "Traceback" not in err
    assert not (out / "ingest.json").exists()  # never marked complete
    monkeypatch.setattr(run_mod, "write_outputs", real)
    assert main(argv) == 0  # space freed: the same command finishes the cache
    assert (out / "ingest.json").is_file()
