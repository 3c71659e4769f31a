"""Every piece of advice in an error message names something that exists.

The messages of every ``UserError(...)`` and every ``raise ...Error(...)`` in ``ich3d/``
are read with :mod:`ast` (the constant parts of f-strings and of ``+`` concatenations;
a formatted value becomes a placeholder). From each message this test takes what it
suggests:

- **flags** (``--x``): checked against the real argparse parser of every sub-command
  the message can reach: the command it names (``ich3d train --resume``, ``train
  --stage``), else every command whose modules import, directly or not, the module
  that raises it (``ich3d/cli/<command>.py``'s import closure, function-local imports
  included);
- **commands** (``ich3d x``): against the sub-commands of ``ich3d.cli.main``;
- **config keys** (``data.cache_dir``, ``stages.slice.lr=...``): against the config
  dataclasses (a ``dict`` field such as ``model.encoder_args`` accepts any sub-key; a
  ``stages`` entry must be a declared stage);
- **bare ``key=value``** (``seed=1``): must be a top-level config key, since that is
  how a command line takes it (``--defect``'s ``NAME=RATE`` values are allowed where
  the message names ``--defect``); and ``pass WORD (`` for a word that is not a flag
  or key.

A value echoed back (``size=<value>: expected ...``) is not advice and is skipped, as
is any name built at run time.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ich3d"
HOLE = "\x00"  # stands for a formatted value

#: Suggestions that name something that does not exist today, as
#: (module, suggestion, command it was checked against, or "" for a key or command).
#: The lead removes entries (and finally this set) as the fixes merge: the test fails
#: on a stale entry too, so the list always says exactly what is still broken.
KNOWN_BROKEN: set[tuple[str, str, str]] = set()

#: What the module-level import reach over-approximates: a command imports the module
#: but cannot raise that message. Each entry says why; the test fails on a stale one.
NOT_REACHABLE: set[tuple[str, str, str]] = {
    # "give slice labels (--labels) or study labels (--study-labels), not both": only
    # `ich3d ingest` takes both; the others pass one labels CSV or none
    *{("ich3d/data/ingest/run.py", flag, cmd) for flag in ("--labels", "--study-labels") for cmd in ("evaluate", "predict", "train")},
    # `ich3d seeds` imports ich3d.evaluation.comparison.compare for its shared readers;
    # --names is checked only on `ich3d compare`'s arguments
    ("ich3d/evaluation/comparison/compare.py", "--names", "seeds"),
    # ich3d.stats.roc_table.read_predictions (the only raiser of --label-col and --scores
    # advice) is called by `ich3d roc` alone; compare, ensemble, evaluate, seeds and select
    # import the module for its table and p-value formatting
    *{
        ("ich3d/stats/roc_table.py", flag, cmd)
        for flag in ("--label-col", "--scores")
        for cmd in ("compare", "ensemble", "evaluate", "seeds", "select")
    },
    # raised where a run directory is created, i.e. by `ich3d train`
    ("ich3d/runs/run_dir.py", "--run-id", "evaluate"),
    ("ich3d/runs/run_dir.py", "--run-id", "predict"),
    ("ich3d/runs/run_dir.py", "--run-id", "export"),
    # compare, ensemble and select with --wandb import ich3d.evaluation.report.wandb (for
    # its hashed keys), which imports ich3d.runs.run_dir for the process rank only
    *{("ich3d/runs/run_dir.py", "--run-id", cmd) for cmd in ("compare", "ensemble", "select")},
    # `ich3d export` reads a run's checkpoints, never DICOM: the ingest's label flags
    *{("ich3d/data/ingest/run.py", flag, "export") for flag in ("--labels", "--study-labels")},
}


# --------------------------------------------------------------------------- messages


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is None and right is None:
            return None
        return (left if left is not None else HOLE) + (right if right is not None else HOLE)
    return None


def _call_name(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return ""


def error_messages() -> Iterator[tuple[str, int, str, str]]:
    """``(module path, line, exception name, message)`` of every error built in ich3d/."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _call_name(node).endswith("Error") and node.args:
                text = _text(node.args[0])
                if text:
                    yield rel, node.lineno, _call_name(node), text


# --------------------------------------------------------------------------- what exists


def _parsers() -> dict[str, set[str]]:
    from ich3d.cli.main import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    top = {o for a in parser._actions for o in a.option_strings}
    return {name: top | {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("ich3d"):
                    deps.add(target)
                    parts = target.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__
                    deps.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules)
        graph[name] = deps
    return graph


def _reach(commands: list[str]) -> dict[str, set[str]]:
    """For each module, the sub-commands whose import closure holds it."""
    graph = _import_graph()
    reach: dict[str, set[str]] = {}
    for command in commands:
        seen, todo = set(), [f"ich3d.cli.{command}"]
        while todo:
            mod = todo.pop()
            if mod not in seen:
                seen.add(mod)
                todo.extend(graph.get(mod, ()))
        for mod in seen:
            reach.setdefault(mod, set()).add(command)
    return reach


def _config_keys() -> tuple[set[str], set[str], set[str], set[str]]:
    """(section names, ``section.key`` names, dict-valued ``section.key``, stage names)."""
    import ich3d.config as cfg
    from ich3d.stages import stage_names

    hints = typing.get_type_hints(cfg.Config, vars(cfg))
    sections, keys, dict_keys = set(), set(), set()
    for f in dataclasses.fields(cfg.Config):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sections.add(f.name)
            for sub in dataclasses.fields(tp):
                keys.add(f"{f.name}.{sub.name}")
                if "dict" in str(sub.type):
                    dict_keys.add(f"{f.name}.{sub.name}")
        elif f.name == "stages":
            sections.add(f.name)
    for sub in dataclasses.fields(cfg.StageConfig):
        keys.add(f"stages.<stage>.{sub.name}")
    return sections, keys, dict_keys, set(stage_names())


# --------------------------------------------------------------------------- suggestions


def suggestions(text: str, commands: set[str]) -> Iterator[tuple[str, str, int]]:
    """``(kind, suggestion, position)``: kind is flag, command, key, bare or pass."""
    for m in re.finditer(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
        yield "flag", m.group(1), m.start()
    # `ich3d x` in backticks, or followed by a flag, an argument or a placeholder
    # (prose such as "not a complete ich3d cache" is not a command)
    for m in re.finditer(r"\bich3d ([a-z][a-z-]*)(?=`| --| [A-Z\x00])", text):
        yield "command", m.group(1), m.start()
    for m in re.finditer(r"(?<![\w.])((?:data|model|stages|trainer|evaluation|tracking|run)(?:\.[\w<>\x00]+)+)", text):
        if HOLE not in m.group(1):
            yield "key", m.group(1).rstrip("."), m.start()
    for m in re.finditer(r"(?<![\w.-])([a-z_][a-z0-9_]*)=(.)", text):
        if m.group(2) != HOLE:  # `name=<value>` echoes a value back: not advice
            yield "bare", m.group(1) + "=", m.start()
    for m in re.finditer(r"\bpass ([a-z_]+) \(", text):
        yield "pass", f"pass {m.group(1)}", m.start()


def _context_command(text: str, pos: int, commands: set[str]) -> str | None:
    """The sub-command a flag at ``pos`` belongs to when the message names one."""
    before = text[:pos]
    named = [m for m in re.finditer(r"\bich3d ([a-z]+)\b", before) if m.group(1) in commands]
    direct = re.search(r"\b([a-z]+) $", before)
    if direct and direct.group(1) in commands:
        return direct.group(1)
    return named[-1].group(1) if named else None


def broken_suggestions() -> tuple[set[tuple[str, str, str]], int]:
    parsers = _parsers()
    commands = set(parsers)
    reach = _reach(sorted(commands))
    sections, keys, dict_keys, stages = _config_keys()
    from ich3d.synth.defects import DefectRates

    defect_names = {f.name for f in dataclasses.fields(DefectRates)}

    top_level = {f.name for f in dataclasses.fields(__import__("ich3d.config", fromlist=["Config"]).Config)}
    broken: set[tuple[str, str, str]] = set()
    checked = 0
    for module, _line, exc, text in error_messages():
        modname = module[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for kind, value, pos in suggestions(text, commands):
            checked += 1
            if kind == "flag":
                named = _context_command(text, pos, commands)
                targets = {named} if named else (reach.get(modname) or commands)
                if not named and not reach.get(modname):
                    if not any(value in opts for opts in parsers.values()):
                        broken.add((module, value, ""))
                    continue
                for command in sorted(targets):
                    if value not in parsers[command]:
                        broken.add((module, value, command))
            elif kind == "command":
                if value not in commands:
                    broken.add((module, f"ich3d {value}", ""))
            elif kind == "key":
                if not _key_exists(value, sections, keys, dict_keys, stages):
                    broken.add((module, value, ""))
            elif kind == "bare":
                name = value[:-1]
                defect_value = "--defect" in text and name in defect_names
                if name not in top_level and not defect_value:
                    broken.add((module, value, ""))
            elif kind == "pass" and exc == "UserError":
                broken.add((module, value, ""))
    return broken, checked


def _key_exists(key: str, sections: set[str], keys: set[str], dict_keys: set[str], stages: set[str]) -> bool:
    parts = key.split(".")
    if parts[0] not in sections:
        return False
    if len(parts) == 1:
        return True
    if parts[0] == "stages":
        if parts[1] not in stages and parts[1] != "<stage>":
            return False
        return len(parts) == 2 or (len(parts) == 3 and f"stages.<stage>.{parts[2]}" in keys)
    head = ".".join(parts[:2])
    return head in keys and (len(parts) == 2 or head in dict_keys)


# --------------------------------------------------------------------------- tests


def test_messages_are_found() -> None:
    found = list(error_messages())
    assert len(found) > 200
    texts = [t for _, _, _, t in found]
    assert any("--resume" in t for t in texts)
    assert any(t.startswith("config key 'data.split_fractions'") for t in texts)


def test_suggestion_extraction() -> None:
    text = (
        "cache x was built with other y; pass --overwrite (overwrite=True) to rebuild it; "
        "finish it (ich3d train --resume R --stage \x00), set data.images_dir and "
        "stages.slice.batch_size=24, seed=\x00 echoed, pass overwrite (new splits)"
    )
    got = [(k, v) for k, v, _ in suggestions(text, {"train"})]
    assert got == [
        ("flag", "--overwrite"),
        ("flag", "--resume"),
        ("flag", "--stage"),
        ("command", "train"),
        ("key", "data.images_dir"),
        ("key", "stages.slice.batch_size"),
        ("bare", "overwrite="),
        ("pass", "pass overwrite"),
    ]
    assert _context_command(text, text.index("--resume"), {"train"}) == "train"
    assert _context_command(text, text.index("--overwrite"), {"train"}) is None


def test_key_check_uses_the_config_dataclasses() -> None:
    sections, keys, dict_keys, stages = _config_keys()
    ok = ("data.cache_dir", "model.encoder_args.weights_path", "stages.slice.lr", "trainer", "evaluation.svm_solver")
    for key in ok:
        assert _key_exists(key, sections, keys, dict_keys, stages), key
    for key in ("data.overwrite", "stages.nostage.lr", "stages.slice.nokey", "data.cache_dir.x", "nosection.key"):
        assert not _key_exists(key, sections, keys, dict_keys, stages), key


def test_import_reach_finds_the_commands_that_run_the_ingest() -> None:
    reach = _reach(["ingest", "train", "predict", "roc"])
    assert {"ingest", "train", "predict"} <= reach["ich3d.data.ingest"]
    assert "roc" not in reach["ich3d.data.ingest"]


def test_every_error_suggestion_exists() -> None:
    broken, checked = broken_suggestions()
    assert checked > 100
    new = sorted(broken - KNOWN_BROKEN - NOT_REACHABLE)
    fixed = sorted((KNOWN_BROKEN | NOT_REACHABLE) - broken)
    assert not new, "error advice names something that does not exist:\n" + "\n".join(map(str, new))
    if fixed:
        pytest.fail("fixed or gone, remove from KNOWN_BROKEN / NOT_REACHABLE:\n" + "\n".join(map(str, fixed)))
