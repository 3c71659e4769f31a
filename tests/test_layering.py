"""The package's import layering (issue 16), checked over every module of ``ich3d`` with ``ast``.

Layers, lowest first; a module may import its own layer or lower ones only:

0. ``ich3d`` (the package), ``ich3d.errors``, ``ich3d.typecheck``, ``ich3d.plugins``,
   ``ich3d.stats``, ``ich3d.stages``
1. ``ich3d.data``, ``ich3d.models``, ``ich3d.synth`` (never ``ich3d.config``)
2. ``ich3d.config``
3. ``ich3d.runs``, ``ich3d.tracking``
4. ``ich3d.training``
5. ``ich3d.evaluation``, ``ich3d.deploy`` (exported packages)
6. ``ich3d.cli``, ``ich3d.__main__``

And: no import cycle between modules (module-level imports, ``if TYPE_CHECKING:``
blocks excluded), no function-local import of ``ich3d``'s own modules (function-local
imports are for heavy optional third-party dependencies only).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import ich3d

ROOT = Path(ich3d.__file__).parent

LAYERS: dict[str, int] = {
    "ich3d": 0,
    "ich3d.errors": 0,
    "ich3d.typecheck": 0,
    "ich3d.plugins": 0,
    "ich3d.stats": 0,
    "ich3d.stages": 0,
    "ich3d.data": 1,
    "ich3d.models": 1,
    "ich3d.synth": 1,
    "ich3d.config": 2,
    "ich3d.runs": 3,
    "ich3d.tracking": 3,
    "ich3d.training": 4,
    "ich3d.evaluation": 5,
    "ich3d.deploy": 5,
    "ich3d.cli": 6,
    "ich3d.__main__": 6,
}

#: the one place a function-local import of ich3d is allowed: a command's ``run`` that keeps
#: torch and Lightning off ``ich3d --help``, saying so on the line (``# heavy ...``)
DEFERRED_OK_IN = "ich3d.cli."


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported ich3d module
    line: int
    end_line: int  # last line of the import statement
    local: bool  # inside a function
    type_checking: bool  # inside ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(name: str) -> str:
    """The module an import names: the longest prefix of ``name`` that is a module of ``ich3d``."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts = parts[:-1]
    raise AssertionError(f"import of {name!r}: no such module of ich3d")


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{module}: in no layer of the table")


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> list[Import]:
    """Every import of an ``ich3d`` module in ``module``, with where it stands."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, local: bool, tc: bool) -> None:
        for child in ast.iter_child_nodes(node):
            in_def = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            in_tc = tc or (isinstance(child, ast.If) and _is_type_checking(child))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative import
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*up, base]) if base else ".".join(up)
                names = [f"{base}.{a.name}" for a in child.names] if base else []
            for target in dict.fromkeys(resolve(n) for n in names if n == "ich3d" or n.startswith("ich3d.")):
                found.append(Import(module, target, child.lineno, child.end_lineno or child.lineno, local, tc))
            visit(child, in_def, in_tc)

    visit(tree, False, False)
    return found


ALL_IMPORTS: list[Import] = [i for m in MODULES for i in imports_of(m)]


def test_every_module_is_in_a_layer() -> None:
    assert len(MODULES) > 80
    for module in MODULES:
        layer(module)


def test_no_import_of_a_higher_layer() -> None:
    bad = [
        f"{i.source}:{i.line} imports {i.target} (layer {layer(i.source)} -> {layer(i.target)})"
        for i in ALL_IMPORTS
        if layer(i.target) > layer(i.source)
    ]
    assert not bad, "\n".join(bad)


def line_of(i: Import) -> str:
    """The import statement's text (all its lines)."""
    return "\n".join(MODULES[i.source].read_text().splitlines()[i.line - 1 : i.end_line])


def test_no_function_local_import_of_ich3d() -> None:
    bad = [
        f"{i.source}:{i.line} imports {i.target} inside a function"
        for i in ALL_IMPORTS
        if i.local and not (i.source.startswith(DEFERRED_OK_IN) and "# heavy" in line_of(i))
    ]
    assert not bad, "\n".join(bad)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for i in ALL_IMPORTS:
        if not i.local and not i.type_checking and i.target != i.source:
            # importing a package's module runs the package's __init__ first, not a cycle by itself
            if i.source.startswith(i.target + "."):
                continue
            edges.setdefault(i.source, set()).add(i.target)
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("module", "expected"),
    [("ich3d.stats.delong", 0), ("ich3d.data.ingest", 1), ("ich3d.evaluation.report.render", 5), ("ich3d.cli.roc", 6)],
)
def test_layer_table(module: str, expected: int) -> None:
    assert layer(module) == expected


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring left out."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:] or body
    return node.end_lineno - body[0].lineno + 1


def test_modules_and_functions_stay_small() -> None:
    """No module of the package over 500 lines, no function body over 80 (issue 16)."""
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 500}
    assert big == {}
    long = [
        f"{m}:{node.name} ({_body_lines(node)} lines)"
        for m, p in MODULES.items()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > 80
    ]
    assert long == []


def test_ich3d_help_lists_every_command_without_importing_torch() -> None:
    """``ich3d --help`` builds no sub-command's parser: no module of a command, no torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ich3d.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    from ich3d.cli.commands import COMMANDS

    assert out.strip().endswith("NO-TORCH"), out[-200:]
    assert all(f"    {name} " in out for name in COMMANDS), out


def test_no_private_name_imported_across_modules() -> None:
    """A ``_name`` stays in its module (issue 16): what another module needs is public."""
    bad = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ich3d")):
                bad += [
                    f"{module}:{node.lineno} imports {a.name} from {node.module}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert bad == []
