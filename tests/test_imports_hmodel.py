"""Imports of the model, training, stage and data-loading modules follow the package layering."""

from __future__ import annotations

import ast
from pathlib import Path

import ich3d

ROOT = Path(ich3d.__file__).parent

#: layer of each top-level part (issue 16), lowest first
LAYER = {
    "errors": 0, "typecheck": 0, "plugins": 0, "stats": 0, "stages": 0,
    "data": 1, "models": 1, "synth": 1,
    "config": 2,
    "runs": 3, "tracking": 3,
    "training": 4,
    "evaluation": 5,
    "cli": 6,
}
#: the modules checked here (the models/training area)
CHECKED = [
    *sorted((ROOT / "models").glob("*.py")),
    *sorted((ROOT / "training").glob("*.py")),
    *sorted((ROOT / "stages").glob("*.py")),
    ROOT / "runs" / "checkpoints.py",
    ROOT / "runs" / "datamodules.py",
    *(ROOT / "data" / f"{n}.py" for n in ("datamodule", "datamodule_base", "batching", "datasets", "features", "augment", "windows")),
]
#: ``training/modules.py`` reads the weighted log loss from evaluation until it moves to ``ich3d.stats``
KNOWN = {("training/modules.py", "ich3d.evaluation.log_loss")}


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """``(module, at top level)`` of every ``ich3d`` import."""
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ich3d"):
            out.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.startswith("ich3d")]
    return out


def test_no_module_imports_a_layer_above_it_nor_ich3d_inside_a_function() -> None:
    problems = []
    for path in CHECKED:
        rel = str(path.relative_to(ROOT))
        own = LAYER[_part(path)]
        for module, top_level in _imports(ast.parse(path.read_text())):
            if (rel, module) in KNOWN:
                continue
            parts = module.split(".")
            layer = LAYER.get(parts[1], 0) if len(parts) > 1 else 0
            if layer > own:
                problems.append(f"{rel} imports {module} (layer {layer} > {own})")
            if not top_level:
                problems.append(f"{rel} imports {module} inside a function")
    assert problems == []


def test_checked_modules_stay_small() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in CHECKED}
    assert {k: v for k, v in sizes.items() if v > 500} == {}
    long = []
    for path in CHECKED:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert long == []
