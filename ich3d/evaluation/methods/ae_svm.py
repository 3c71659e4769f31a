"""``ae_svm``: the slice SVM on autoencoder codes of the stage-1 slice features (Ayesha et al. 2025).

An MLP autoencoder (:mod:`ich3d.models.autoencoder`; ``evaluation.ae_code_dim``,
``ae_hidden``, ``ae_epochs``, ``ae_lr``) is trained with the MSE on the same
training slices' frozen features the slice SVM uses (at most
``evaluation.slice_svm_max_train``), then the slice SVM
(:mod:`~ich3d.evaluation.methods.slice_svm`) is fitted on the codes. It is a
scoring method, not a training stage: the autoencoder is refitted (seeded,
deterministic on CPU) at every evaluation and never saved, which keeps the run
directory's stages those of ``ich3d train``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ich3d.evaluation.methods.base import register_method, slice_stage_name
from ich3d.evaluation.methods.slice_svm import SliceSVMMethod
from ich3d.models.autoencoder import fit_autoencoder

__all__ = ["AutoencoderSVMMethod"]


class AutoencoderSVMMethod(SliceSVMMethod):
    """Autoencoder code of each slice's features, then the linear slice SVM; volume = max."""

    memo_key = "ae_svm.fit"

    def describe(self, config: Any) -> str:
        ev = config.evaluation
        return f"{self.description} (code {ev.ae_code_dim}, hidden {ev.ae_hidden})"

    def _transform_fit(self, ctx: Any, x: np.ndarray) -> tuple[Any, dict[str, Any]]:
        ev = ctx.config.evaluation
        with torch.inference_mode(False), torch.enable_grad():
            fit = fit_autoencoder(
                x, code_dim=ev.ae_code_dim, hidden=ev.ae_hidden, epochs=ev.ae_epochs, lr=ev.ae_lr, seed=ctx.config.seed
            )
        details = {
            "ae_code_dim": ev.ae_code_dim,
            "ae_hidden": ev.ae_hidden,
            "ae_epochs": ev.ae_epochs,
            "ae_first_loss": fit.losses[0],
            "ae_final_loss": fit.losses[-1],
        }
        return fit.model, details

    def _transform(self, state: Any, x: np.ndarray) -> np.ndarray:
        return state.encode(x)


register_method(
    AutoencoderSVMMethod(
        "ae_svm",
        "linear SVM slice classifier on autoencoder codes of the stage-1 slice features, maximum slice score",
        needs=slice_stage_name(),
        order=36,
        default=False,
    )
)
