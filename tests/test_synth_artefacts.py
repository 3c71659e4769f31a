"""The phantom's CT artefacts (ich3d/synth/artefacts.py): where they act and by how much."""

from __future__ import annotations

import numpy as np
import pytest

from ich3d.synth import artefacts
from ich3d.synth import phantom as ph
from ich3d.synth.geometry import Frame


def _render(seed: int, positive: bool, monkeypatch: pytest.MonkeyPatch, mode: str, n: int = 14, size: int = 96):
    gen = np.random.default_rng(seed)
    geometry = ph.sample_geometry(gen, size, n)
    head = ph.sample_head(gen, geometry)
    with monkeypatch.context() as m:
        if mode == "none":
            m.setattr(ph, "paint_artefacts", lambda *a, **k: None)
        elif mode == "pv":
            m.setattr(ph, "paint_artefacts", artefacts.paint_partial_volume)
        out = ph.render_series(gen, geometry, head, positive=positive, noise_seed=seed)
    return geometry, head, out


@pytest.mark.parametrize("seed", [3, 11])
def test_artefacts_touch_only_cavity_non_blood_pixels(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    geometry, head, plain = _render(seed, True, monkeypatch, "none")
    _, _, full = _render(seed, True, monkeypatch, "all")
    assert np.array_equal(plain.labels, full.labels)
    assert np.array_equal(plain.bleed, full.bleed)
    blood = plain.bleed > 0
    assert blood.any()
    assert np.array_equal(plain.hu[blood], full.hu[blood])  # bleeds stay 50-90 HU
    changed = plain.hu != full.hu
    assert changed.any()
    fr = Frame(geometry, head, 0, geometry.n_slices)
    from ich3d.synth.geometry import depth

    d = depth(fr, head)
    assert not (changed & (d < head.skull)).any()  # scalp, air, the vault itself: untouched


def test_partial_volume_is_a_mixture_of_cavity_and_skull(monkeypatch: pytest.MonkeyPatch) -> None:
    geometry, head, plain = _render(5, False, monkeypatch, "none")
    _, _, pv = _render(5, False, monkeypatch, "pv")
    # same noise on both: the difference is the mixture, which only ever adds skull
    diff = pv.hu - plain.hu
    assert diff.min() >= -1e-3
    assert pv.hu.max() <= max(head.hu_bone, plain.hu.max()) + 1e-3
    # share of each slice's soft tissue pushed up by more than 50 HU
    soft = ((plain.hu > -50) & (plain.hu < 150)).sum(axis=(1, 2))
    share = (diff > 50.0).sum(axis=(1, 2)) / np.maximum(soft, 1)
    n = geometry.n_slices
    extremes = share[[1, n - 2]].mean()
    middle = share[n // 2 - 1 : n // 2 + 2].mean()
    assert extremes > 3 * middle  # oblique cuts of the vault, not mid-head
    # the crescent fades through every value between brain and bone, blood's 50-90 included
    mixed = pv.hu[diff > 1.0]
    assert ((mixed >= 50) & (mixed <= 90)).sum() >= 5
    assert (mixed > 300).sum() >= 5


def test_streaks_only_near_the_petrous_ridges(monkeypatch: pytest.MonkeyPatch) -> None:
    geometry, head, pv = _render(5, False, monkeypatch, "pv")
    _, _, full = _render(5, False, monkeypatch, "all")
    diff = full.hu - pv.hu
    fr = Frame(geometry, head, 0, geometry.n_slices)
    zmin, zmax = fr.Z.min(axis=(1, 2)), fr.Z.max(axis=(1, 2))
    far = (zmin > artefacts.RIDGE_Z + 12.0) | (zmax < artefacts.RIDGE_Z - 12.0)
    assert far.any() and (~far).any()
    assert not diff[far].any()
    amp = 20.0 + 20.0 * (head.hu_bone - 1000.0) / 500.0
    near = diff[~far]
    assert near.min() < -1.0 and near.max() > 1.0  # the dark bar and the bright streaks
    assert np.abs(near).max() <= amp + 1e-3


def test_synth_no_artefacts_is_the_phantom_without_them(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ich3d synth --no-artefacts` writes what the generator gives with the artefacts switched off."""
    from ich3d.cli.main import main as cli_main
    from ich3d.synth import load_truth, series_phantom

    args = ["--patients", "2", "--size", "40", "--slices", "5", "6", "--seed", "4", "--no-progress"]
    assert cli_main(["synth", str(tmp_path / "off"), *args, "--no-artefacts"]) == 0
    assert cli_main(["synth", str(tmp_path / "on"), *args]) == 0
    with monkeypatch.context() as m:
        m.setattr(ph, "paint_artefacts", lambda *a, **k: None)
        assert cli_main(["synth", str(tmp_path / "patched"), *args]) == 0

    def dicoms(root):  # noqa: ANN001, ANN202
        return {p.name: p.read_bytes() for p in sorted((root / "stage_2_train").glob("*.dcm"))}

    off, on, patched = dicoms(tmp_path / "off"), dicoms(tmp_path / "on"), dicoms(tmp_path / "patched")
    assert off == patched  # the same images as the generator without the artefacts
    assert off.keys() == on.keys() and off != on  # same files, other pixels
    truth = load_truth(tmp_path / "off")
    entry = truth["series"][0]
    assert entry["regenerate"]["artefacts"] is False
    assert "artefacts" not in load_truth(tmp_path / "on")["series"][0]["regenerate"]
    # the truth re-renders the series as written: without the artefacts
    again = series_phantom(entry)
    with monkeypatch.context() as m:
        m.setattr(ph, "paint_artefacts", lambda *a, **k: None)
        plain = series_phantom(entry)
    assert np.array_equal(again.hu, plain.hu)
