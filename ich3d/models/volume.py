"""The volume model: a slice encoder applied to every real slice, then a sequence head.

``VolumeClassifier(encoder, head)`` maps a padded batch of volumes
``(B, T, C, H, W)`` with true slice counts ``lengths (B,)`` to one logit per
volume. Only the ``sum(lengths)`` real slices go through the encoder (in chunks
of ``slice_chunk`` slices to bound activation memory); padded positions of the
feature sequence are zeros and the head never reads them (packing).

Freezing (stage 2 of the method): :meth:`VolumeClassifier.freeze_encoder` sets
``requires_grad=False`` on every encoder parameter **and** keeps the encoder in
eval mode even when ``.train()`` is called on the volume model (``train`` is
overridden), so dropout in the frozen CNN is off and batch-norm statistics do
not move: the frozen features are exactly those the stage-1 model computes at
evaluation. A frozen encoder runs under ``torch.no_grad()`` unless the input
itself requires a gradient (saliency), which saves memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ich3d.errors import UserError
from ich3d.models.registry import build_encoder, build_head
from ich3d.models.sequence import check_lengths, valid_slice_mask
from ich3d.models.slice_cnn import SliceClassifier

__all__ = [
    "CHECKPOINT_CHUNK",
    "VolumeClassifier",
    "build_volume_model",
    "build_slice_classifier",
]


#: Slices per checkpointed chunk when ``slice_chunk`` is None.
CHECKPOINT_CHUNK = 8


class VolumeClassifier(nn.Module):
    """Slice encoder + sequence head: ``(B, T, C, H, W), (B,) -> (B,)`` logits.

    Args:
        encoder: A slice encoder (``out_features`` attribute, ``(N, C, H, W) -> (N, F)``).
        head: A sequence head (``(B, T, F), (B,) -> (B,)``) whose input size is ``F``.
        slice_chunk: Encode at most this many slices per encoder call (bounds
            memory for long volumes and large batches); the real slices are cut
            into equal-as-possible chunks. None encodes all real slices of the
            batch in one call. Note that a batch-norm encoder in train mode
            normalises each chunk with that chunk's statistics. Default None.
        checkpoint_chunks: Gradient checkpointing per chunk of slices while the
            encoder trains (stage 3, ``direct``): each chunk's activations are
            dropped after its forward pass and recomputed in the backward pass,
            so peak activation memory grows with the chunk (``slice_chunk``, or
            :data:`CHECKPOINT_CHUNK` slices when that is None), not with the
            volume, for one more encoder forward pass. Outputs and gradients are
            the same. Default False.

    Attributes:
        encoder, head: The two parts; ``encoder.state_dict()`` is interchangeable
            with ``SliceClassifier.encoder.state_dict()``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        slice_chunk: int | None = None,
        checkpoint_chunks: bool = False,
    ) -> None:
        super().__init__()
        if slice_chunk is not None and slice_chunk < 1:
            raise UserError(f"slice_chunk must be >= 1 or None, got {slice_chunk}")
        out_features = getattr(encoder, "out_features", None)
        head_in = getattr(head, "in_features", None)
        if isinstance(out_features, int) and isinstance(head_in, int) and out_features != head_in:
            raise UserError(f"encoder gives {out_features} features but the head expects {head_in}")
        self.encoder = encoder
        self.head = head
        self.slice_chunk = slice_chunk
        self.checkpoint_chunks = bool(checkpoint_chunks)
        self._encoder_frozen = False

    # ------------------------------------------------------------------ freezing
    @property
    def encoder_frozen(self) -> bool:
        """Whether :meth:`freeze_encoder` is in effect."""
        return self._encoder_frozen

    def freeze_encoder(self) -> VolumeClassifier:
        """Stop gradients to the encoder and keep it in eval mode (see module docstring)."""
        self._encoder_frozen = True
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()
        return self

    def unfreeze_encoder(self) -> VolumeClassifier:
        """Make the encoder trainable again; its mode follows the model's from then on."""
        self._encoder_frozen = False
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        self.encoder.train(self.training)
        return self

    def train(self, mode: bool = True) -> VolumeClassifier:
        """Set train/eval mode; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self._encoder_frozen:
            self.encoder.eval()
        return self

    # ------------------------------------------------------------------ forward
    def encode(self, volumes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Slice features of a padded batch of volumes.

        Args:
            volumes: ``(B, T, C, H, W)`` float slices, padded along ``T``.
            lengths: ``(B,)`` number of real slices per volume (in ``[1, T]``);
                None means every volume has ``T`` slices.

        Returns:
            ``(B, T, F)`` features; positions ``t >= lengths[b]`` are exactly zero.
        """
        if volumes.ndim != 5:
            raise ValueError(f"expected volumes (B, T, C, H, W), got {tuple(volumes.shape)}")
        batch, max_len = volumes.shape[:2]
        if lengths is None:
            lengths = torch.full((batch,), max_len, dtype=torch.long, device=volumes.device)
        lengths_cpu = check_lengths(lengths, batch, max_len)
        no_grad = self._encoder_frozen and not volumes.requires_grad
        if batch and int(lengths_cpu.min()) == max_len:  # no padding (e.g. one volume): a view
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                feats = self._encode_slices(volumes.flatten(0, 1))
            return feats.view(batch, max_len, feats.shape[-1])
        mask = valid_slice_mask(lengths_cpu.to(volumes.device), max_len)
        slices = volumes[mask]  # (sum(lengths), C, H, W), volume by volume
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            feats = self._encode_slices(slices)
        out = feats.new_zeros((batch, max_len, feats.shape[-1]))
        out[mask] = feats
        return out

    def _encode_slices(self, slices: Tensor) -> Tensor:
        total = slices.shape[0]
        checkpointed = (
            self.checkpoint_chunks and torch.is_grad_enabled() and not self._encoder_frozen
        )
        chunk = self.slice_chunk or (CHECKPOINT_CHUNK if checkpointed else None)
        encode = self._checkpointed_encoder if checkpointed else self.encoder
        if chunk is None or total <= chunk:
            return encode(slices)
        # equal-as-possible chunks (7 slices, chunk 3 -> 3, 2, 2): no 1-slice remainder,
        # which a batch-norm encoder in train mode could not normalise
        n_chunks = -(-total // chunk)
        sizes = [total // n_chunks + (1 if i < total % n_chunks else 0) for i in range(n_chunks)]
        return torch.cat([encode(part) for part in torch.split(slices, sizes)], dim=0)

    def _checkpointed_encoder(self, part: Tensor) -> Tensor:
        from torch.utils.checkpoint import checkpoint

        # non-reentrant: works with inputs that do not require grad, keeps RNG state (dropout)
        return checkpoint(self.encoder, part, use_reentrant=False, preserve_rng_state=True)

    def slice_logits(self, volumes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Per-slice logits ``(B, T[, K])`` of a head with per-slice outputs (``model.per_slice``)."""
        if not getattr(self.head, "per_slice", False):
            raise UserError("this volume model has no per-slice outputs (model.per_slice is off)")
        if lengths is None:
            lengths = torch.full((volumes.shape[0],), volumes.shape[1], dtype=torch.long, device=volumes.device)
        return self.head.slice_logits(self.encode(volumes, lengths), lengths)

    def forward(self, volumes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, T, C, H, W), (B,) -> (B,)`` volume logits."""
        if lengths is None:
            lengths = torch.full(
                (volumes.shape[0],), volumes.shape[1], dtype=torch.long, device=volumes.device
            )
        return self.head(self.encode(volumes, lengths), lengths)


def _split_spec(spec: str | Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``{"name": ..., **kwargs}`` -> ``(name, kwargs)``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        if not isinstance(name, str):
            raise UserError(f"{what} spec needs a string 'name' key, got {dict(spec)!r}")
        return name, kwargs
    raise UserError(f"{what} must be a name or a mapping with a 'name' key, got {spec!r}")


def build_slice_classifier(
    encoder: str | Mapping[str, Any] | nn.Module, dropout: float = 0.0, num_outputs: int = 1
) -> SliceClassifier:
    """Build the stage-1 model: encoder + ``Linear -> num_outputs``.

    Args:
        encoder: Registered name, ``{"name": ..., **kwargs}``, or a built module.
        dropout: Dropout before the classification layer. Default 0.
        num_outputs: Logits per slice. Default 1.
    """
    if not isinstance(encoder, nn.Module):
        name, kwargs = _split_spec(encoder, "encoder")
        encoder = build_encoder(name, **kwargs)
    return SliceClassifier(encoder, dropout=dropout, num_outputs=num_outputs)


def build_volume_model(
    encoder: str | Mapping[str, Any] | nn.Module,
    head: str | Mapping[str, Any] | nn.Module,
    slice_chunk: int | None = None,
    checkpoint_chunks: bool = False,
    num_outputs: int = 1,
    per_slice: bool = False,
) -> VolumeClassifier:
    """Build a :class:`VolumeClassifier` from registry names or specs.

    Args:
        encoder: Registered encoder name, ``{"name": ..., **kwargs}``, or a built module.
        head: Registered head name or spec; ``in_features`` defaults to the
            encoder's ``out_features``.
        slice_chunk: See :class:`VolumeClassifier`. Default None.
        checkpoint_chunks: See :class:`VolumeClassifier`. Default False.
        num_outputs: Logits per volume (one per target, :mod:`ich3d.data.targets`);
            a built head must already have them. Default 1 (``(B,)`` logits); more
            gives ``(B, num_outputs)``.
        per_slice: the head labels every slice and the volume logit is the maximum
            over slices (``RecurrentHead.set_per_slice``; ``model.per_slice``). Default False.

    Example:
        ``build_volume_model({"name": "patel_cnn", "in_channels": 3}, {"name": "bilstm", "num_layers": 2})``
    """
    if not isinstance(encoder, nn.Module):
        name, kwargs = _split_spec(encoder, "encoder")
        encoder = build_encoder(name, **kwargs)
    if not isinstance(head, nn.Module):
        name, kwargs = _split_spec(head, "head")
        kwargs.setdefault("in_features", encoder.out_features)
        head = build_head(name, **kwargs)
        if num_outputs != 1:
            set_outputs = getattr(head, "set_num_outputs", None)
            if set_outputs is None:
                raise UserError(f"head {name!r} has one output; it cannot predict {num_outputs} targets")
            set_outputs(num_outputs)
        if per_slice:
            if not hasattr(head, "set_per_slice"):
                raise UserError(f"head {name!r} cannot emit per-slice outputs (model.per_slice)")
            head.set_per_slice(True)
    return VolumeClassifier(encoder, head, slice_chunk=slice_chunk, checkpoint_chunks=checkpoint_chunks)
