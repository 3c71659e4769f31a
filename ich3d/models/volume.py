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
from collections.abc import Callable, Mapping
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
        out_features = getattr(encoder, "out_features", None)
        head_in = getattr(head, "in_features", None)
        if isinstance(out_features, int) and isinstance(head_in, int) and out_features != head_in:
            raise UserError(f"encoder gives {out_features} features but the head expects {head_in}")
        self.encoder = encoder
        self.head = head
        self.slice_chunk: int | None = None
        self.set_slice_chunk(slice_chunk)
        self.checkpoint_chunks = bool(checkpoint_chunks)
        self._encoder_frozen = False
        self._logit_transforms: list[Callable[[Tensor], Tensor]] = []

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

    # ------------------------------------------------------------------ outputs
    def add_logit_transform(self, transform: Callable[[Tensor], Tensor]) -> VolumeClassifier:
        """Apply ``transform`` to every logit tensor the model returns, on every path.

        The volume logits of :meth:`forward` and :meth:`head_logits` (cached features)
        and the per-slice logits of :meth:`slice_logits` / :meth:`head_slice_logits`
        all pass through it, in the order the transforms were added: a model option
        (:mod:`ich3d.models.build`) that changes the outputs takes effect wherever
        the model is used. Transforms are rebuilt from the spec, never saved.
        """
        self._logit_transforms.append(transform)
        return self

    def _transformed(self, logits: Tensor) -> Tensor:
        for transform in self._logit_transforms:
            logits = transform(logits)
        return logits

    @staticmethod
    def _lengths(x: Tensor, lengths: Tensor | None) -> Tensor:
        if lengths is None:
            return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return torch.as_tensor(lengths, device=x.device).reshape(-1)

    @property
    def per_slice(self) -> bool:
        """Whether the head labels every slice (:meth:`set_per_slice`, ``model.per_slice``)."""
        return bool(getattr(self.head, "per_slice", False))

    def head_logits(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Volume logits ``(B,)`` (``(B, K)`` with K outputs) from slice features ``(B, T, F)``.

        What :meth:`forward` computes after :meth:`encode`; the path of the cached
        features of a frozen encoder (:mod:`ich3d.data.features`).
        """
        return self._transformed(self.head(feats, self._lengths(feats, lengths)))

    def head_slice_logits(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Per-slice logits ``(B, T[, K])`` from slice features (``model.per_slice``);
        padded positions hold ``-inf``."""
        if not self.per_slice:
            raise UserError("this volume model has no per-slice outputs (model.per_slice is off)")
        return self._transformed(self.head.slice_logits(feats, self._lengths(feats, lengths)))

    def slice_logits(self, volumes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Per-slice logits ``(B, T[, K])`` of a head with per-slice outputs (``model.per_slice``)."""
        lengths = self._lengths(volumes, lengths)
        return self.head_slice_logits(self.encode(volumes, lengths), lengths)

    def forward(self, volumes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, T, C, H, W), (B,) -> (B,)`` volume logits."""
        lengths = self._lengths(volumes, lengths)
        return self.head_logits(self.encode(volumes, lengths), lengths)

    # ------------------------------------------------------------------ options
    def set_num_outputs(self, num_outputs: int) -> VolumeClassifier:
        """Give the head ``num_outputs`` logits per volume (one per target).

        Raises:
            UserError: the head has one output and cannot have more.
        """
        if num_outputs == int(getattr(self.head, "num_outputs", 1)):
            return self
        set_outputs = getattr(self.head, "set_num_outputs", None)
        if set_outputs is None:
            raise UserError(
                f"head {type(self.head).__name__} has one output; it cannot predict {num_outputs} targets"
            )
        set_outputs(num_outputs)
        return self

    def set_per_slice(self, per_slice: bool = True) -> VolumeClassifier:
        """Let the head label every slice; the volume logit is the maximum over slices.

        Raises:
            UserError: the head cannot emit per-slice outputs.
        """
        if not per_slice and not self.per_slice:
            return self
        if not hasattr(self.head, "set_per_slice"):
            raise UserError(
                f"head {type(self.head).__name__} cannot emit per-slice outputs (model.per_slice)"
            )
        self.head.set_per_slice(bool(per_slice))
        return self

    def set_slice_chunk(self, slice_chunk: int | None) -> VolumeClassifier:
        """Encode at most ``slice_chunk`` slices per encoder call (None: all at once)."""
        if slice_chunk is not None and slice_chunk < 1:
            raise UserError(f"slice_chunk must be >= 1 or None, got {slice_chunk}")
        self.slice_chunk = slice_chunk
        return self


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
    if isinstance(head, nn.Module):  # a built head already has its outputs
        return VolumeClassifier(encoder, head, slice_chunk=slice_chunk, checkpoint_chunks=checkpoint_chunks)
    name, kwargs = _split_spec(head, "head")
    kwargs.setdefault("in_features", encoder.out_features)
    model = VolumeClassifier(
        encoder, build_head(name, **kwargs), slice_chunk=slice_chunk, checkpoint_chunks=checkpoint_chunks
    )
    return model.set_num_outputs(num_outputs).set_per_slice(per_slice)
