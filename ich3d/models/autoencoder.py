"""A feature autoencoder: compresses frozen slice features to a short code (Ayesha et al. 2025).

The AlexNet-features + SVM system of Ayesha et al. 2025 compresses the CNN's
slice features with an autoencoder before the linear SVM. Here the autoencoder
is a small MLP: encoder ``Linear(F, hidden) - ReLU - Linear(hidden, code)``,
decoder ``Linear(code, hidden) - ReLU - Linear(hidden, F)``, trained with the
mean squared reconstruction error on standardised features (each feature
centred and scaled by its training standard deviation, so that no large-valued
feature dominates the loss). :func:`fit_autoencoder` trains it with Adam on a
feature matrix (the training slices' frozen features) and returns the model
with its loss history; :meth:`FeatureAutoencoder.encode` gives the codes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from ich3d.errors import UserError

__all__ = ["FeatureAutoencoder", "AutoencoderFit", "fit_autoencoder"]

log = logging.getLogger(__name__)


class FeatureAutoencoder(nn.Module):
    """MLP autoencoder of feature vectors, with the standardisation it was fitted with.

    Args:
        in_features: feature width F.
        code_dim: code width.
        hidden: hidden width of the encoder and of the decoder.
    """

    def __init__(self, in_features: int, code_dim: int = 64, hidden: int = 512) -> None:
        super().__init__()
        if min(in_features, code_dim, hidden) < 1:
            raise UserError(f"autoencoder sizes must be >= 1, got {in_features}, {code_dim}, {hidden}")
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, code_dim))
        self.decoder = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, in_features))
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / scale`` with the training statistics."""
        return (x - self.mean) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of standardised ``x`` (compare with :meth:`standardise`)."""
        return self.decoder(self.encoder(self.standardise(x)))

    @torch.inference_mode()
    def encode(self, x: ArrayLike, batch: int = 4096) -> np.ndarray:
        """Codes of the rows of ``x`` ``(n, F)`` -> ``(n, code_dim)`` float32."""
        a = torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.eval()
        parts = [self.encoder(self.standardise(p)) for p in torch.split(a, batch)] if len(a) else []
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.encoder[-1].out_features), np.float32)

    @torch.inference_mode()
    def reconstruction_error(self, x: ArrayLike) -> float:
        """Mean squared error of the reconstruction, in standardised units."""
        a = torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.eval()
        return float(((self(a) - self.standardise(a)) ** 2).mean())


@dataclass
class AutoencoderFit:
    """A fitted autoencoder and its training history.

    Attributes:
        model: the :class:`FeatureAutoencoder` (eval mode).
        losses: mean training loss (MSE, standardised units) per epoch.
    """

    model: FeatureAutoencoder
    losses: list[float] = field(default_factory=list)


def fit_autoencoder(
    x: ArrayLike,
    *,
    code_dim: int = 64,
    hidden: int = 512,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> AutoencoderFit:
    """Train a :class:`FeatureAutoencoder` on the rows of ``x`` (MSE, Adam, shuffled mini-batches).

    Args:
        x: training features ``(n, F)``, n >= 2.
        code_dim: code width; default 64.
        hidden: hidden width; default 512.
        epochs: passes over ``x``; default 30.
        lr: Adam learning rate; default 1e-3.
        batch_size: rows per step; default 256.
        seed: initialisation and shuffling seed; default 0.

    Returns:
        The :class:`AutoencoderFit`.

    Raises:
        UserError: ``x`` not 2-D with at least 2 rows, NaN, or bad sizes.
    """
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] < 2:
        raise UserError(f"autoencoder training features must have shape (n >= 2, F), got {a.shape}")
    if not np.isfinite(a).all():
        raise UserError("autoencoder training features contain NaN or inf")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UserError(f"autoencoder: epochs, batch_size and lr must be positive, got {epochs}, {batch_size}, {lr}")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = FeatureAutoencoder(a.shape[1], code_dim, hidden)
    t = torch.from_numpy(a)
    model.mean.copy_(t.mean(0))
    std = t.std(0)
    model.scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    model.train()
    for epoch in range(int(epochs)):
        order = torch.randperm(len(t), generator=gen)
        total = 0.0
        for idx in torch.split(order, int(batch_size)):
            xb = t[idx]
            loss = nn.functional.mse_loss(model(xb), model.standardise(xb))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(t))
        log.debug("autoencoder epoch %d: loss %.5f", epoch, losses[-1])
    model.eval()
    return AutoencoderFit(model=model, losses=losses)
