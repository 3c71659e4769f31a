"""Recurrent sequence heads over the slice features of a volume.

A head reads ``feats: (B, T, F)`` with true lengths ``lengths: (B,)`` and returns
one logit per volume. Sequences are packed (``pack_padded_sequence``), so the
padded positions ``t >= lengths[b]`` are never read: a volume's logit does not
depend on what else is in its batch.

Registered heads:

* ``"bilstm"`` :class:`BiLSTMHead`: the method of Patel et al. (2019), 1 or 2 layers of 512.
* ``"bigru"`` :class:`BiGRUHead`: CNN + GRU (Ayesha et al. 2025; a BiGRU also won RSNA 2019).
* ``"lstm"`` / ``"gru"``: the unidirectional variants.

Volume representation (``pooling``):

* ``"last"`` (default): the final hidden state of each direction of the last
  layer, i.e. the forward state at position ``length - 1`` concatenated with the
  backward state at position 0: each has read the whole volume.
* ``"mean"`` / ``"max"``: mean / max over the valid positions of the last layer's
  outputs (both directions concatenated).

Initialisation (docs/method.md, stage 2), :func:`init_recurrent`:

* input weights Glorot (Xavier) uniform over the whole gate-stacked matrix
  ``weight_ih`` (``fan_out = gates * hidden``, the Keras convention the paper used:
  bound ``sqrt(6 / (in + gates * hidden))``);
* recurrent weights: a random orthogonal matrix per gate block (each
  ``hidden x hidden`` block of ``weight_hh`` is orthogonal);
* biases 0, except the LSTM forget gate, whose total bias is 1: PyTorch adds
  ``bias_ih + bias_hh``, so ``bias_ih`` holds 1 for the forget gate and
  ``bias_hh`` 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ich3d.errors import UserError
from ich3d.models.registry import HEADS, variant

__all__ = [
    "RecurrentHead",
    "BiLSTMHead",
    "BiGRUHead",
    "LSTMHead",
    "GRUHead",
    "init_recurrent",
    "check_lengths",
    "valid_slice_mask",
]

Pooling = Literal["last", "mean", "max"]
_POOLINGS = ("last", "mean", "max")


def init_recurrent(rnn: nn.LSTM | nn.GRU) -> None:
    """Initialise an LSTM/GRU in place as docs/method.md prescribes (see module docstring).

    Args:
        rnn: A ``torch.nn.LSTM`` or ``torch.nn.GRU`` (any layers, directions).
    """
    hidden = rnn.hidden_size
    is_lstm = isinstance(rnn, nn.LSTM)
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                for k in range(param.shape[0] // hidden):
                    nn.init.orthogonal_(param[k * hidden : (k + 1) * hidden])
            elif name.startswith("bias_ih"):
                param.zero_()
                if is_lstm:  # gate order i, f, g, o
                    param[hidden : 2 * hidden].fill_(1.0)
            elif name.startswith("bias_hh"):
                param.zero_()
            elif name.startswith("weight_hr"):  # LSTM projections (proj_size > 0)
                nn.init.xavier_uniform_(param)


def check_lengths(lengths: Tensor, batch: int, max_len: int) -> Tensor:
    """Validate ``lengths`` and return them as an int64 CPU tensor.

    Raises:
        ValueError: wrong shape, or a length outside ``[1, max_len]``.
    """
    if lengths.ndim != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    lengths_cpu = lengths.detach().to("cpu", torch.int64)
    if batch and (int(lengths_cpu.min()) < 1 or int(lengths_cpu.max()) > max_len):
        raise ValueError(
            f"lengths must be in [1, {max_len}] (the padded length), got {lengths_cpu.tolist()}"
        )
    return lengths_cpu


def valid_slice_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(B, max_len)`` bool mask, True at the real slices ``t < lengths[b]`` (on ``lengths``' device)."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class RecurrentHead(nn.Module):
    """An LSTM or GRU over slice features, pooled to one volume vector, then ``Linear -> 1``.

    Args:
        in_features: Slice feature size ``F``. Default 512.
        hidden: Units per direction and layer. Default 512.
        num_layers: Stacked recurrent layers (the paper: 1 or 2). Default 1.
        dropout: Dropout between stacked layers (only with ``num_layers > 1``). Default 0.
        cell: ``"lstm"`` or ``"gru"``. Default ``"lstm"``.
        bidirectional: Read the volume in both directions. Default True.
        pooling: ``"last"``, ``"mean"`` or ``"max"`` (module docstring). Default ``"last"``.
        head_dropout: Dropout on the pooled vector before the output layer. Default 0.
    """

    def __init__(
        self,
        in_features: int = 512,
        hidden: int = 512,
        num_layers: int = 1,
        dropout: float = 0.0,
        cell: Literal["lstm", "gru"] = "lstm",
        bidirectional: bool = True,
        pooling: Pooling = "last",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise UserError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        if pooling not in _POOLINGS:
            raise UserError(f"pooling must be one of {', '.join(_POOLINGS)}, got {pooling!r}")
        if num_layers < 1:
            raise UserError(f"num_layers must be >= 1, got {num_layers}")
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            input_size=in_features,
            hidden_size=hidden,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        init_recurrent(self.rnn)
        self.in_features = in_features
        self.hidden = hidden
        self.num_layers = num_layers
        self.cell = cell
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.num_directions = 2 if bidirectional else 1
        self.out_dropout = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.num_directions * hidden, 1)

    @property
    def num_outputs(self) -> int:
        """Logits per volume (1: ``forward`` gives ``(B,)``; more: ``(B, K)``)."""
        return int(self.fc.out_features)

    @property
    def per_slice(self) -> bool:
        """Whether the head labels every slice (:meth:`set_per_slice`)."""
        return bool(getattr(self, "_per_slice", False))

    def set_per_slice(self, per_slice: bool = True) -> None:
        """Emit a prediction for every slice (the RSNA 2019 winners' recurrent slice labeller).

        The output layer then reads the last layer's output at each slice (both
        directions: each slice is labelled from its neighbours), :meth:`slice_logits`
        gives ``(B, T[, K])`` and ``forward`` the volume logit = the **maximum over the
        volume's slices** (so the volume is positive when one slice is). ``pooling``
        is not used.
        """
        self._per_slice = bool(per_slice)

    def slice_logits(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """``(B, T, F), (B,) -> (B, T)`` per-slice logits (``(B, T, K)`` with K outputs).

        Padded positions ``t >= lengths[b]`` hold ``-inf``.
        """
        if feats.ndim != 3 or feats.shape[-1] != self.in_features:
            raise ValueError(f"expected features (B, T, {self.in_features}), got {tuple(feats.shape)}")
        with torch.autocast(device_type=feats.device.type, enabled=False):
            feats = feats.to(self.fc.weight.dtype)
            batch, max_len = feats.shape[0], feats.shape[1]
            lengths_cpu = check_lengths(lengths, batch, max_len)
            padded, _ = self._recur(feats, lengths_cpu)
            logits = self.fc(self.out_dropout(padded))  # (B, T, K)
            mask = torch.arange(max_len, device=logits.device)[None, :] < lengths_cpu.to(logits.device)[:, None]
            logits = logits.masked_fill(~mask[..., None], float("-inf"))
            return logits.squeeze(-1) if self.num_outputs == 1 else logits

    def set_num_outputs(self, num_outputs: int) -> None:
        """Replace the output layer by a fresh ``Linear -> num_outputs`` (one logit per target).

        Raises:
            UserError: ``num_outputs < 1``.
        """
        if num_outputs < 1:
            raise UserError(f"num_outputs must be >= 1, got {num_outputs}")
        if num_outputs != self.num_outputs:
            self.fc = nn.Linear(self.fc.in_features, num_outputs)

    def volume_features(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """The pooled volume vector ``(B, directions * hidden)`` before the output layer.

        The recurrent part always runs in the parameters' precision (float32),
        with autocast disabled: bf16/fp16 recurrences over a whole volume lose
        precision, cuDNN RNNs reject bf16 on some versions, and the head costs
        little next to the CNN.

        Args:
            feats: ``(B, T, in_features)`` slice features, zero- (or anything-) padded.
            lengths: ``(B,)`` number of real slices of each volume, in ``[1, T]``.
        """
        if feats.ndim != 3 or feats.shape[-1] != self.in_features:
            raise ValueError(
                f"expected features (B, T, {self.in_features}), got {tuple(feats.shape)}"
            )
        with torch.autocast(device_type=feats.device.type, enabled=False):
            return self._volume_features(feats.to(self.fc.weight.dtype), lengths)

    def _recur(self, feats: Tensor, lengths_cpu: Tensor) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """The recurrent outputs ``(B, T, directions * hidden)`` (zero past each length) and final state.

        The sequences are packed, except while ``torch.jit.trace`` (and the ONNX
        exporter, which traces) records a batch without padding: packing is then the
        identity, and neither TorchScript tracing nor ONNX exports it (``ich3d export``).
        """
        max_len = feats.shape[1]
        if torch.jit.is_tracing() and int(lengths_cpu.min()) == max_len:
            return self.rnn(feats)
        packed = pack_padded_sequence(feats, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=max_len)
        return padded, state

    def _volume_features(self, feats: Tensor, lengths: Tensor) -> Tensor:
        batch, max_len = feats.shape[0], feats.shape[1]
        lengths_cpu = check_lengths(lengths, batch, max_len)
        padded, state = self._recur(feats, lengths_cpu)
        if self.pooling == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # (layers*dirs, B, H)
            last = h_n.view(self.num_layers, self.num_directions, batch, self.hidden)[-1]
            return last.permute(1, 0, 2).reshape(batch, self.num_directions * self.hidden)
        mask = valid_slice_mask(lengths_cpu.to(padded.device), max_len).unsqueeze(-1)
        if self.pooling == "mean":
            summed = (padded * mask).sum(dim=1)
            return summed / lengths_cpu.to(padded.device, padded.dtype)[:, None]
        return padded.masked_fill(~mask, float("-inf")).amax(dim=1)

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """``(B, T, F), (B,) -> (B,)`` volume logits (``(B, K)`` with K outputs; float32, also under autocast).

        With :meth:`set_per_slice`, the maximum of :meth:`slice_logits` over each volume's slices.
        """
        if self.per_slice:
            return self.slice_logits(feats, lengths).amax(dim=1)
        pooled = self.volume_features(feats, lengths)
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            logits = self.fc(self.out_dropout(pooled))
            return logits.squeeze(-1) if self.num_outputs == 1 else logits


BiLSTMHead = HEADS.register("bilstm")(
    variant(RecurrentHead, "Bidirectional LSTM head (Patel et al. 2019).", cell="lstm", bidirectional=True)
)
BiGRUHead = HEADS.register("bigru")(
    variant(RecurrentHead, "Bidirectional GRU head (Ayesha et al. 2025).", cell="gru", bidirectional=True)
)
LSTMHead = HEADS.register("lstm")(
    variant(RecurrentHead, "Unidirectional LSTM head (first slice to last).", cell="lstm", bidirectional=False)
)
GRUHead = HEADS.register("gru")(
    variant(RecurrentHead, "Unidirectional GRU head (first slice to last).", cell="gru", bidirectional=False)
)
