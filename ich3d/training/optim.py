"""The optimizers a stage's ``optimizer`` setting names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ich3d.errors import UserError

__all__ = ["build_optimizer"]

_OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")


def build_optimizer(params: Sequence[nn.Parameter], spec: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build a torch optimizer from ``{"name", "lr", "weight_decay", "momentum"}``.

    Raises:
        UserError: unknown optimizer name or no trainable parameter.
    """
    params = list(params)
    if not params:
        raise UserError("the model has no trainable parameter for this stage")
    name = str(spec.get("name", "adam")).lower()
    lr = float(spec.get("lr", 1e-4))
    wd = float(spec.get("weight_decay", 0.0))
    momentum = float(spec.get("momentum", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=momentum)
    raise UserError(f"unknown optimizer {name!r}; allowed: {', '.join(_OPTIMIZERS)}")
