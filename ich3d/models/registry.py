"""Name -> builder registries for slice encoders and sequence heads.

The trainer never imports a network class: it asks :func:`build_encoder` and
:func:`build_head` for a name taken from the config, so a new encoder or head
is one decorated class in its own module, e.g.::

    from ich3d.models.registry import ENCODERS

    @ENCODERS.register("my_cnn")
    class MyCNN(nn.Module):
        def __init__(self, in_channels: int = 3) -> None: ...

Every module of the ``ich3d.models`` package is imported on first registry use
(:func:`ich3d.plugins.import_submodules`), so dropping that file into ``ich3d/models/``
is all it takes; nothing lists the modules.

Contracts
    * Encoder: ``nn.Module`` with keyword ``in_channels``, an attribute
      ``out_features: int`` and ``forward(x: Tensor[N, C, H, W]) -> Tensor[N, F]``.
    * Head: ``nn.Module`` whose first argument is ``in_features`` and
      ``forward(feats: Tensor[B, T, F], lengths: LongTensor[B]) -> Tensor[B]``
      (logits); positions at or beyond ``lengths`` never change the output.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from torch import nn

from ich3d.errors import UserError
from ich3d.plugins import discover_once
from ich3d.typecheck import Mismatch, convert

__all__ = [
    "Registry",
    "ENCODERS",
    "HEADS",
    "build_encoder",
    "build_head",
    "count_parameters",
    "variant",
    "MODELS_PACKAGE",
]

T = TypeVar("T", bound=Callable[..., Any])

#: The package whose modules hold the built-in encoders and heads: every module
#: in it is imported on first registry use (:func:`ich3d.plugins.import_submodules`),
#: so a new encoder or head is one new file in ``ich3d/models/`` with an
#: ``@ENCODERS.register`` / ``@HEADS.register``.
MODELS_PACKAGE = "ich3d.models"

def _import_builtins() -> None:
    """Import every module of :data:`MODELS_PACKAGE` once (each registers its entries)."""
    discover_once(MODELS_PACKAGE, skip=("registry",))


class Registry:
    """A mapping from a name to a builder (a class or a function returning an ``nn.Module``).

    Args:
        kind: What the registry holds, used in error messages ("encoder", "head").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``.

        Args:
            name: The name used in configs. Registering a name twice is a bug
                and raises ``ValueError``.
        """

        def decorator(builder: T) -> T:
            if name in self._builders and self._builders[name] is not builder:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy entry clean up with this)."""
        self._builders.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        _import_builtins()
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered as ``name``.

        Raises:
            UserError: ``name`` is not registered; the message lists the allowed names.
        """
        _import_builtins()
        if name not in self._builders:
            raise UserError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._builders))}"
            )
        return self._builders[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Build the entry ``name`` with keyword arguments ``kwargs``.

        Raises:
            UserError: unknown ``name``, or a keyword the builder does not accept
                (the message lists the accepted keywords).
        """
        builder = self.get(name)
        return builder(**_check_kwargs(self.kind, name, builder, kwargs))

    def __contains__(self, name: object) -> bool:
        _import_builtins()
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={sorted(self._builders)})"


def _check_kwargs(
    kind: str, name: str, builder: Callable[..., Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``kwargs`` converted to ``builder``'s annotations (:func:`ich3d.typecheck.convert`).

    Raises:
        UserError: naming any keyword or value ``builder`` would reject.
    """
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return kwargs
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return kwargs
    allowed = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UserError(
            f"{kind} {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )
    try:
        hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    except Exception:  # unresolvable annotations: let the call decide
        return kwargs
    out = dict(kwargs)
    for key, value in kwargs.items():
        hint = hints.get(key)
        if hint is None:
            continue
        try:
            out[key] = convert(value, hint)
        except Mismatch:
            raise UserError(
                f"{kind} {name!r} option {key} must be {_describe(hint)}, "
                f"got {type(value).__name__} {value!r}"
            ) from None
    return out


def _describe(hint: Any) -> str:
    """A short human name for an annotation: ``int``, ``int or None``, ``one of 'a', 'b'``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in typing.get_args(hint)))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if origin in (tuple, list, collections.abc.Sequence):
        return "a list"
    return getattr(hint, "__name__", str(hint))


def variant(base: Callable[..., Any], doc: str, **fixed: Any) -> Callable[..., Any]:
    """A builder of ``base`` with the keyword arguments ``fixed`` set.

    Its signature and annotations are ``base``'s without ``fixed`` (derived, not
    repeated), so the registry checks a config's options against them as for
    any builder::

        BiGRUHead = HEADS.register("bigru")(variant(RecurrentHead, "BiGRU.", cell="gru"))

    Raises:
        TypeError: ``fixed`` names an argument ``base`` does not take.
    """
    sig = inspect.signature(base)
    unknown = sorted(set(fixed) - set(sig.parameters))
    if unknown:
        raise TypeError(f"{getattr(base, '__name__', base)} takes no argument {', '.join(unknown)}")
    own = sig.replace(
        parameters=[p for name, p in sig.parameters.items() if name not in fixed],
        return_annotation=base if inspect.isclass(base) else sig.return_annotation,
    )
    hints = typing.get_type_hints(base.__init__ if inspect.isclass(base) else base)

    def build(*args: Any, **kwargs: Any) -> Any:
        bound = own.bind(*args, **kwargs)
        return base(**bound.arguments, **fixed)

    build.__signature__ = own  # type: ignore[attr-defined]
    build.__annotations__ = {k: v for k, v in hints.items() if k not in fixed}
    build.__doc__ = f"{doc} Options as {getattr(base, '__name__', base)} without {', '.join(fixed)}."
    build.__name__ = build.__qualname__ = getattr(base, "__name__", "builder") + "_" + "_".join(
        f"{k}_{v}" for k, v in fixed.items()
    )
    return build


#: Slice encoders: ``(N, C, H, W) -> (N, F)``.
ENCODERS = Registry("encoder")
#: Sequence heads: ``(B, T, F), lengths -> (B,)`` logits.
HEADS = Registry("head")


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the slice encoder registered as ``name`` (see ``ENCODERS.names()``).

    Args:
        name: Registered encoder name, e.g. ``"patel_cnn"``.
        **kwargs: Passed to the encoder's constructor (``in_channels`` is always accepted).
    """
    return ENCODERS.build(name, **kwargs)


def build_head(name: str, **kwargs: Any) -> nn.Module:
    """Build the sequence head registered as ``name`` (see ``HEADS.names()``).

    Args:
        name: Registered head name, e.g. ``"bilstm"``.
        **kwargs: Passed to the head's constructor (``in_features`` first).
    """
    return HEADS.build(name, **kwargs)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of parameters of ``model``.

    Returns:
        ``{"total": all parameters, "trainable": those with requires_grad}``
        (shared parameters counted once).
    """
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return {"total": total, "trainable": trainable}
