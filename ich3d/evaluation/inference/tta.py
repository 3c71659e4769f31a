"""Test-time augmentation: a volume model's probabilities averaged over the plain input and transforms.

``evaluation.tta`` lists transforms by name (:data:`TRANSFORMS`); each is a
deterministic map of a batch of volumes ``(B, T, C, H, W)`` to another batch of the
same shape, applied to every slice of every volume:

* ``flip_lr``: left-right mirror (the image columns), the mirror the method trains
  with (the vertical-axis flip of ``ich3d.data.augment``);
* ``flip_ap``: anterior-posterior mirror (the image rows).

The TTA probability of a volume is the mean of the model's probabilities over the
plain input and each listed transform (probabilities, not logits, are averaged). A
transform that leaves an input unchanged (a left-right symmetric volume under
``flip_lr``) therefore leaves its probability unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ich3d.errors import UserError
from ich3d.evaluation.inference.passes import VolumeScores, predict_volumes

__all__ = ["TRANSFORMS", "TransformedLoader", "check_tta", "tta_name", "combine_tta", "predict_volumes_tta"]


def _flip_lr(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-1,))


def _flip_ap(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-2,))


#: name -> the batch transform (``(B, T, C, H, W)`` tensor -> same shape).
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"flip_lr": _flip_lr, "flip_ap": _flip_ap}


def check_tta(names: Sequence[str]) -> list[str]:
    """The listed transforms, validated (order kept).

    Raises:
        UserError: an unknown or repeated transform (the message names ``evaluation.tta``).
    """
    out: list[str] = []
    for n in names:
        if n not in TRANSFORMS:
            raise UserError(f"evaluation.tta: unknown transform {n!r}; expected some of {', '.join(TRANSFORMS)}")
        if n in out:
            raise UserError(f"evaluation.tta lists {n!r} twice")
        out.append(str(n))
    return out


def tta_name(method: str, transforms: Sequence[str]) -> str:
    """The column of a method's TTA variant: ``finetune+flip_lr`` (``+`` between the transforms)."""
    return "+".join([method, *transforms])


class TransformedLoader:
    """A volume loader whose batches' ``volume`` goes through ``transform`` (the rest as is)."""

    def __init__(self, loader: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield {**batch, "volume": self.transform(batch["volume"])}


def combine_tta(plain: VolumeScores, variants: Sequence[VolumeScores]) -> VolumeScores:
    """The mean of ``plain`` and ``variants`` per volume (same volumes in the same order).

    Seconds are summed (one forward per view); per-slice outputs are not kept.

    Raises:
        RuntimeError: a variant scored other volumes or another order.
    """
    for v in variants:
        if list(v.keys) != list(plain.keys):
            raise RuntimeError("a TTA pass scored other volumes than the plain pass")
    views = [plain, *variants]
    multi = None
    if plain.target_probs is not None:
        multi = np.mean([np.asarray(v.target_probs) for v in views], axis=0)
    return VolumeScores(
        keys=list(plain.keys),
        labels=plain.labels,
        probs=np.mean([v.probs for v in views], axis=0),
        seconds=np.sum([v.seconds for v in views], axis=0),
        load_seconds=float(sum(v.load_seconds for v in views)),
        target_probs=multi,
    )


def predict_volumes_tta(
    model: Any,
    loader: Any,
    device: Any,
    transforms: Sequence[str],
    *,
    plain: VolumeScores | None = None,
    **kwargs: Any,
) -> VolumeScores:
    """Volume probabilities averaged over the plain input and ``transforms`` (see the module docstring).

    Args:
        model: a volume model (as :func:`~ich3d.evaluation.inference.passes.predict_volumes`).
        loader: its evaluation loader (fixed order).
        device: the torch device.
        transforms: names of :data:`TRANSFORMS`.
        plain: the plain pass's scores when already computed (not recomputed).
        **kwargs: passed to ``predict_volumes`` (``progress``, ``desc``, ``primary``).
    """
    names = check_tta(transforms)
    if plain is None:
        plain = predict_volumes(model, loader, device, **kwargs)
    variants = [predict_volumes(model, TransformedLoader(loader, TRANSFORMS[n]), device, **kwargs) for n in names]
    return combine_tta(plain, variants)
