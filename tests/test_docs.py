"""The documentation: the site builds strictly, the generated config reference is
current, the README stays short with working links, and no file cites a document
the repository lacks."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (its default slugify)."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(md: Path) -> set[str]:
    out, fenced = set(), False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


def test_site_builds_strictly(tmp_path: Path) -> None:
    out = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    for page in ("index.html", "method/index.html", "own-data/index.html", "reference/config/index.html"):
        assert (out / page).is_file(), page
    config_html = (out / "reference/config/index.html").read_text(encoding="utf-8")
    assert "data.split_fractions" in config_html


def test_every_docs_page_is_in_the_nav() -> None:
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def pages(entries):
        for entry in entries:
            for value in entry.values():
                if isinstance(value, list):
                    yield from pages(value)
                else:
                    yield value

    listed = set(pages(nav))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert listed == on_disk


def test_config_reference_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(DOCS / "gen_config_reference.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr + "\nrun: .venv/bin/python docs/gen_config_reference.py"


def test_config_reference_lists_every_key_with_its_default() -> None:
    from ich3d.config import Config

    gen = _generator()
    page = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    root = Config()
    n = 0
    for f in dataclasses.fields(Config):
        value = getattr(root, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                default = gen._yaml(getattr(value, sub.name))
                assert f"- **`{f.name}.{sub.name}`** (" in page, f"{f.name}.{sub.name}"
                assert f"default `{default}`" in page.split(f"**`{f.name}.{sub.name}`**")[1].split("\n")[0]
                n += 1
        elif f.name == "stages":
            for stage, settings in value.items():
                assert f"`{stage}`" in page
                for sub in dataclasses.fields(settings):
                    assert f"- **`stages.<name>.{sub.name}`**" in page
                    n += 1
        else:
            assert f"- **`{f.name}`** (" in page
            n += 1
    assert n > 60  # every section was walked


def test_generator_reads_docstrings_and_comments() -> None:
    gen = _generator()

    @dataclasses.dataclass
    class Toy:
        """A toy section.

        Args:
            alpha: the first key, described over
                two lines with ``code`` and :mod:`ich3d.x`.
            beta: the second key.
        """

        alpha: int = 3
        beta: tuple[str, ...] = ("a", "b")
        gamma: str | None = None  # only a comment <here>

    lines = gen._describe(Toy, "toy.")
    assert lines == [
        "- **`toy.alpha`** (`int`; default `3`): the first key, described over two lines with `code` and `ich3d.x`.",
        "- **`toy.beta`** (`tuple[str, ...]`; default `[a, b]`): the second key.",
        "- **`toy.gamma`** (`str | None`; default `null`): only a comment &lt;here&gt;",
    ]


def test_readme_is_short_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    first_screen = "\n".join(text.splitlines()[:40])
    for needed in ("make demo", "make test", ".venv"):
        assert needed in first_screen, needed
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert len(links) >= 10
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target
        assert path.exists(), link
        if anchor:
            assert anchor in _anchors(path), link


def _tracked_text_files() -> list[Path]:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")  # e.g. an sdist: nothing tracked to check
    out = []
    for name in proc.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and path.suffix not in {".png", ".npy", ".dcm", ".gz", ".pt", ".ckpt"}:
            out.append(path)
    return out


def test_no_file_cites_a_document_the_repository_lacks() -> None:
    # the domain reference and the shared folder of the developers' machine live
    # outside the repository (a clone lacks them): cite docs/method.md instead.
    # Deliberately no allow-list.
    pattern = re.compile(r"METHOD\.md|\.\./shared")
    offenders = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, "cites a document the repository lacks:\n" + "\n".join(offenders)


def _python_blocks(md: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md.read_text(encoding="utf-8"), flags=re.S)


def test_extending_encoder_and_head_examples_run() -> None:
    # the worked examples of docs/extending.md that no other test adds: the plain
    # encoder (registered, built from a model spec, run) and the head variant
    import torch

    from ich3d.models.build import build
    from ich3d.models.registry import ENCODERS, HEADS, variant
    from ich3d.models.sequence import RecurrentHead

    blocks = _python_blocks(DOCS / "extending.md")
    (encoder,) = [b for b in blocks if "# ich3d/models/tiny_cnn.py" in b]
    (head,) = [b for b in blocks if "variant(RecurrentHead" in b]
    assert "tiny_cnn" not in ENCODERS
    try:
        exec(compile(encoder, "extending.md", "exec"), {})
        spec = {"encoder": {"name": "tiny_cnn", "in_channels": 1, "width": 4}, "head": {"name": "bilstm", "hidden": 4}}
        torch.manual_seed(0)
        model = build(spec).eval()
        with torch.no_grad():
            out = model(torch.rand(2, 3, 1, 16, 16), torch.tensor([3, 2]))
        assert out.shape == (2,)
        assert model.encoder.out_features == 4
    finally:
        ENCODERS.unregister("tiny_cnn")
    # the variant example re-registers a built-in head: run it on a scratch name
    code = head.replace('HEADS.register("bigru")', 'HEADS.register("doc_bigru")')
    try:
        exec(compile(code, "extending.md", "exec"), {"HEADS": HEADS, "variant": variant, "RecurrentHead": RecurrentHead})
        built = HEADS.build("doc_bigru", in_features=8, hidden=4)
        assert isinstance(built.rnn, torch.nn.GRU) and built.rnn.bidirectional
    finally:
        HEADS.unregister("doc_bigru")


def test_layout_lists_every_module_in_its_layer() -> None:
    # docs/layout.md's tables against the package on disk and tests/test_layering.py's table
    spec = importlib.util.spec_from_file_location("_layering_for_docs", ROOT / "tests" / "test_layering.py")
    layering = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = layering  # (its dataclasses look their module up)
    try:
        spec.loader.exec_module(layering)
    finally:
        del sys.modules[spec.name]
    listed: dict[str, int] = {}
    current = None
    for line in (DOCS / "layout.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"### Layer (\d+)", line)
        if heading:
            current = int(heading.group(1))
        row = re.match(r"\| `(ich3d/[^`]*)` \|", line)
        if row and current is not None:
            path = row.group(1) + ("__init__.py" if row.group(1).endswith("/") else "")
            assert path not in listed, f"{path} listed twice"
            listed[path] = current
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ich3d").rglob("*.py")}
    assert set(listed) == on_disk, f"missing: {sorted(on_disk - set(listed))}; gone: {sorted(set(listed) - on_disk)}"
    for path, n in listed.items():
        module = layering.module_name((ROOT / path).resolve())
        assert layering.layer(module) == n, f"{path} is in layer {layering.layer(module)}, the page says {n}"
