"""Config files: reading (text, YAML, composition), overrides, and writing files safely.

* Text is read as UTF-8 (a byte-order mark is allowed); another encoding (UTF-16,
  Latin-1 with non-ASCII bytes) is one :class:`~ich3d.errors.UserError` naming the
  file and the first bad byte.
* YAML is read by a :class:`yaml.SafeLoader` subclass that refuses a key given twice
  in one mapping (naming the key and both lines); Python tags stay refused.
* Composition: a top-level ``base:`` (a path, or a list of paths, relative to the
  file that names it) is read first and the file's own keys override it key by key
  (mappings merge, anything else is replaced); bases may have bases; a cycle is
  refused. The fully resolved config is what runs save.
* Writes (:func:`write_text`, :func:`make_dirs`) turn an unwritable or full disk
  into one error line naming the path.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ich3d.config.schema import Config
from ich3d.config.validate import config_from_dict
from ich3d.errors import UserError

__all__ = [
    "BASE_KEY",
    "read_text",
    "read_yaml",
    "compose",
    "parse_overrides",
    "apply_overrides",
    "load_config",
    "dump_config",
    "write_text",
    "make_dirs",
]

#: the top-level key naming the config(s) a file overrides
BASE_KEY = "base"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or type(exc).__name__


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``.

    Args:
        path: the file.
        what: what the file is, for the message (``config file``).

    Raises:
        UserError: missing or unreadable, or not UTF-8 text (names the first bad byte
            and how to fix it).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {_os_reason(exc)}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UserError(
            f"{what} {path} is not UTF-8 text{hint}: byte 0x{bad} at offset {exc.start}; "
            "save it as UTF-8"
        ) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} is given twice (lines {first} and {second})")


class UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the base class names it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _DuplicateKey(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """``path`` read as YAML (safe, duplicate keys refused).

    Raises:
        UserError: unreadable, not UTF-8, not valid YAML or a duplicate key.
    """
    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=UniqueKeySafeLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as exc:
        raise UserError(f"{what} {path}: {exc}; keep one") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {exc}") from None


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: _copy(v) for k, v in base.items()}
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = _copy(value)
    return out


def compose(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a config file with its ``base:`` files merged in.

    Args:
        path: the config file.

    Returns:
        The merged mapping, without the ``base`` key.

    Raises:
        UserError: a file is missing or invalid, ``base`` is not a path or a list of
            paths, or the bases form a cycle.
    """
    path = Path(path)
    real = path.resolve()
    if real in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(real) :], real))
        raise UserError(f"config files name each other as '{BASE_KEY}' in a cycle: {cycle}")
    if not path.is_file():
        where = f" (named as '{BASE_KEY}' by {_chain[-1]})" if _chain else ""
        raise UserError(f"config file not found: {path}{where}")
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise UserError(f"config key '{BASE_KEY}' in {path} must be a file path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for name in bases:
        merged = _merge(merged, compose(real.parent / os.path.expanduser(name), (*_chain, real)))
    return _merge(merged, raw)


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``dotted.key=value`` strings; values are read with :func:`yaml.safe_load`.

    Raises:
        UserError: an override without ``=`` or with an empty key.
    """
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise UserError(f"override {item!r} must look like 'section.key=value'")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(f"override {item!r}: value is not valid YAML ({exc})") from None
        parsed.append((parts, value))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``dotted.key=value`` overrides applied.

    Intermediate sections are created as needed; key validity is checked later by
    :func:`config_from_dict`, which names the bad key.
    """
    out = _copy(raw)
    for parts, value in parse_overrides(overrides):
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise UserError(
                    f"override {'.'.join(parts)!r}: {'.'.join(parts[: i + 1])!r} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def _copy(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: _copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_copy(v) for v in raw]
    return raw


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load and validate an experiment YAML file (with its ``base:`` files).

    Args:
        path: the YAML file. The experiment name defaults to its stem.
        overrides: ``dotted.key=value`` strings applied after composition, before
            validation.

    Returns:
        The validated config, relative paths resolved against the current directory.

    Raises:
        UserError: missing/unreadable file, not UTF-8, invalid YAML, a duplicate key,
            a base cycle, an unknown key, a wrong type or a value out of its range.
    """
    path = Path(path)
    raw = apply_overrides(compose(path), overrides)
    return config_from_dict(raw, resolve_from=Path.cwd(), default_experiment=path.stem)


def make_dirs(path: str | Path, what: str = "folder") -> Path:
    """``mkdir -p path``; an unwritable or full disk is one :class:`UserError` naming ``path``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {_os_reason(exc)}") from None
    return path


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then renamed).

    Raises:
        UserError: the disk is full or not writable (naming ``path``); no partial file
            or temporary file is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise UserError(f"cannot write {what} {path}: {_os_reason(exc)}") from None
    return path


def dump_config(config: Config, path: str | Path) -> None:
    """Write ``config`` as YAML (the resolved form that :func:`load_config` reads back).

    Raises:
        UserError: the file cannot be written (full or read-only disk), naming it.
    """
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False), "config file")
