"""Lightning modules of the three training stages (and the ``direct`` ablation).

* :class:`SliceModule`: stage 1, slice encoder + one logit, BCE on slice labels.
* :class:`VolumeModule`: stages 2 and 3 and ``direct``, slice encoder + sequence
  head, BCE on volume labels. With ``freeze_encoder=True`` (stage 2) the encoder has
  no gradients, is not in the optimizer and stays in eval mode.

Both modules receive plain-data specs (``model``: encoder/head registry names and
keyword arguments; ``optimizer``: name, lr ...) and call ``save_hyperparameters`` so
a checkpoint rebuilds its network with no config file and loads with
``torch.load(weights_only=True)``.

Validation AUC in DDP: each process keeps the ``(id, probability, label)`` of every
sample it validated; at the end of the epoch the tuples of all processes are
gathered, de-duplicated by id (the distributed sampler pads the last batch by
repeating samples) and the AUC is computed on the same data on every rank and
logged with ``sync_dist=False``, so ``ModelCheckpoint`` sees one value everywhere
and a volume counts exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC

from ich3d.errors import UserError
from ich3d.models.build import build, build_slice
from ich3d.models.registry import count_parameters
from ich3d.stats import weighted_log_loss
from ich3d.training.gather import auc_or_nan, gather_unique, sample_ids  # re-exported
from ich3d.training.optim import build_optimizer  # re-exported

__all__ = [
    "NonFiniteLoss",
    "SliceModule",
    "VolumeModule",
    "build_optimizer",
    "sample_ids",
    "gather_unique",
    "auc_or_nan",
]

class NonFiniteLoss(RuntimeError):
    """The training or validation loss became NaN or infinite (the stage cannot go on).

    Attributes:
        which: ``"training"`` or ``"validation"``.
        value: the first non-finite loss seen (NaN where another process saw it).
        step: the global step at which it was seen.
        epoch: the epoch of that step.
    """

    def __init__(self, which: str, value: float, step: int, epoch: int) -> None:
        super().__init__(f"the {which} loss is not finite ({value}) at step {step} (epoch {epoch})")
        self.which, self.value, self.step, self.epoch = which, value, step, epoch


class _BinaryModule(pl.LightningModule):
    """Shared training/validation logic: BCE, gathered validation metrics.

    Binary (``targets=None``, the method): one logit per sample, plain BCE on
    ``batch["label"]``, ``val/auc``. With ``targets`` (:mod:`ich3d.data.targets`):
    one logit per target, BCE weighted per target on ``batch["target"]`` ``(B, K)``
    (the mean over samples of ``sum_k w_k BCE_k / sum_k w_k``); ``val/auc`` is the
    AUC of target ``primary`` (``data.label``), plus ``val/auc_<target>``,
    ``val/mean_auc`` (the mean over the targets with both classes) and
    ``val/log_loss`` (the challenge's weighted log loss).

    Logging costs no per-step work beyond the loss itself: a training step keeps
    its loss and predictions on the device (no ``self.log``, no metric update, no
    host sync; the first non-finite loss is remembered on the device too and read
    at the logging steps and the epoch's end, :class:`NonFiniteLoss`); ``train/loss_step`` is logged only at the steps Lightning writes
    (every ``log_every_n_steps``), and ``train/loss_epoch``, ``train/auc`` and
    ``val/loss`` once per epoch, with Lightning's arithmetic (the batch-size
    weighted mean, one ``BinaryAUROC`` over the epoch's predictions), so
    ``metrics.csv`` holds the rows and values per-step ``self.log`` calls wrote
    (``tests/test_training_logging.py`` compares them). Lightning's ``self.log``
    walks its whole result object on every call, and a ``Metric`` logged per step
    is moved with all the predictions it holds: cost that grew with the epoch.
    """

    input_keys: tuple[str, ...] = ()

    def __init__(
        self,
        targets: Sequence[str] | None = None,
        target_weights: Sequence[float] | None = None,
        primary: int = 0,
    ) -> None:
        super().__init__()
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.train_auc = BinaryAUROC()
        self.targets = list(targets) if targets is not None else None
        if self.targets is not None:
            weights = list(target_weights) if target_weights is not None else [1.0] * len(self.targets)
            if len(weights) != len(self.targets):
                raise UserError(f"{len(weights)} target weights for {len(self.targets)} targets")
            self.register_buffer("target_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
            if not 0 <= primary < len(self.targets):
                raise UserError(f"primary target {primary} out of range for {len(self.targets)} targets")
        self.primary = int(primary)
        # the training epoch's running sums (see training_step)
        self._step_loss: Tensor | None = None
        self._step_n = 0
        self._train_loss_sum = torch.zeros(())
        self._train_loss_n = 0
        self._train_probs: list[Tensor] = []
        self._train_labels: list[Tensor] = []
        self._val_loss_sum = torch.zeros(())
        self._val_loss_n = 0
        self._val_ids: list[Tensor] = []
        self._val_probs: list[Tensor] = []
        self._val_labels: list[Tensor] = []
        # the first non-finite training loss: its step (-1: none) and value, kept on the device
        self._bad_step: Tensor | None = None
        self._bad_value: Tensor | None = None
        self.last_val_auc: float = float("nan")
        self.last_val_loss: float = float("nan")
        self.last_val_metrics: dict[str, float] = {}
        self.val_predictions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def num_targets(self) -> int:
        """Outputs per sample (1 when binary)."""
        return 1 if self.targets is None else len(self.targets)

    # subclasses: logits for a batch
    def _logits(self, batch: Mapping[str, Any]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _labels(batch: Mapping[str, Any]) -> Tensor:
        return torch.as_tensor(batch["label"]).reshape(-1)

    def _outputs(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """``(logits, labels)``: ``(B,)`` binary, ``(B, K)`` with targets."""
        logits = self._logits(batch).float()
        if self.targets is None:
            return logits, self._labels(batch).to(logits.device)
        logits = logits.reshape(logits.shape[0], self.num_targets)
        y = torch.as_tensor(batch["target"]).reshape(logits.shape[0], self.num_targets)
        return logits, y.to(logits.device)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.targets is None:
            return self.loss_fn(logits, y.float())
        bce = nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="none")
        w = self.target_weights.to(bce.device)
        return (bce * w).sum(dim=1).mean() / w.sum()

    def _primary(self, t: Tensor) -> Tensor:
        return t if self.targets is None else t[:, self.primary]

    def _batch_loss(self, batch: Mapping[str, Any], logits: Tensor, y: Tensor) -> Tensor:
        """The training/validation loss of a batch (subclasses: per-slice outputs)."""
        return self._loss(logits, y)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        logits, y = self._outputs(batch)
        loss = self._batch_loss(batch, logits, y)
        n = int(y.shape[0])
        # everything stays on the device: no Lightning log call, no metric update, no sync here
        detached = loss.detach()
        self._step_loss, self._step_n = detached, n
        self._train_loss_sum = self._train_loss_sum + detached.mean() * n
        self._train_loss_n += n
        self._train_probs.append(torch.sigmoid(self._primary(logits).detach()))
        self._train_labels.append(self._primary(y).detach().long())
        self._track_finite(detached)
        return loss

    def _track_finite(self, loss: Tensor) -> None:
        """Remember the first non-finite training loss, on the device (no host sync per step)."""
        if self._bad_step is None or self._bad_step.device != loss.device:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss).all() & (self._bad_step < 0)
        step = torch.full((), self.global_step, dtype=torch.long, device=loss.device)
        self._bad_step = torch.where(first, step, self._bad_step)
        self._bad_value = torch.where(first, loss.float().reshape(-1)[0], self._bad_value)

    def _check_finite(self, val_loss: Tensor | None = None) -> None:
        """Raise :class:`NonFiniteLoss` when a process saw a non-finite training loss, or
        when ``val_loss`` (the validation epoch's mean, the same on every process) is not
        finite. Every process calls it at the same points (the check is a collective)."""
        if self._bad_step is not None:
            bad = self._bad_step
            if self.trainer.world_size > 1:
                bad = self.trainer.strategy.reduce(bad.clone(), reduce_op="max")
            step = int(bad)
            if step >= 0:
                local = float(self._bad_value) if int(self._bad_step) >= 0 else float("nan")
                raise NonFiniteLoss("training", local, step, int(self.current_epoch))
        if val_loss is not None and not bool(torch.isfinite(val_loss)):
            raise NonFiniteLoss("validation", float(val_loss), int(self.global_step), int(self.current_epoch))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # ``train/loss_step`` only at the steps Lightning writes to the loggers (every
        # ``log_every_n_steps``, the check Lightning makes right after this hook)
        trainer = self.trainer
        if self._step_loss is not None and (trainer._logger_connector.should_update_logs or trainer.fast_dev_run):
            self._check_finite()
            self.log("train/loss_step", self._step_loss, on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=self._step_n, sync_dist=True)
        self._step_loss = None

    def on_train_epoch_start(self) -> None:
        self._reset_train_epoch()

    def on_train_epoch_end(self) -> None:
        self._check_finite()
        self._log_epoch_mean("train/loss_epoch", self._train_loss_sum, self._train_loss_n)
        if self._train_probs:
            self.train_auc.update(torch.cat(self._train_probs), torch.cat(self._train_labels))
            self.log("train/auc", self.train_auc, on_step=False, on_epoch=True)
        self._reset_train_epoch()

    def _log_epoch_mean(self, name: str, total: Tensor, count: int) -> Tensor | None:
        """Log Lightning's batch-size-weighted epoch mean ``sum_b(loss_b * n_b) / sum_b n_b``
        over the batches of every process, in the same float32 arithmetic (nothing when
        no process had a batch; every process takes part in the reduction). Returns the mean."""
        if self.trainer.world_size > 1:
            both = torch.stack([total.float(), total.new_tensor(float(count))])
            both = self.trainer.strategy.reduce(both, reduce_op="sum")
            if float(both[1]) == 0:
                return None
            mean = both[0] / both[1]
        elif count:
            mean = total / count
        else:
            return None
        self.log(name, mean, on_step=False, on_epoch=True, prog_bar=True, batch_size=1, sync_dist=False)
        return mean

    def _reset_train_epoch(self) -> None:
        self._step_loss, self._step_n = None, 0
        self._train_loss_sum = torch.zeros((), device=self.device)
        self._train_loss_n = 0
        self._train_probs, self._train_labels = [], []

    def on_validation_epoch_start(self) -> None:
        self._val_ids, self._val_probs, self._val_labels = [], [], []
        self._val_loss_sum, self._val_loss_n = torch.zeros((), device=self.device), 0

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        logits, y = self._outputs(batch)
        loss = self._batch_loss(batch, logits, y)
        n = int(y.shape[0])
        # ``val/loss`` (the epoch mean) is logged once, in on_validation_epoch_end
        self._val_loss_sum = self._val_loss_sum + loss.detach().mean() * n
        self._val_loss_n += n
        self._val_ids.append(sample_ids(batch, n, logits.device))
        self._val_probs.append(torch.sigmoid(logits).detach())
        self._val_labels.append(y.detach().long())
        return loss

    def on_validation_epoch_end(self) -> None:
        val_loss = self._log_epoch_mean("val/loss", self._val_loss_sum, self._val_loss_n)
        self._check_finite(val_loss)
        if self._val_ids:
            ids = torch.cat(self._val_ids)
            probs = torch.cat(self._val_probs)
            labels = torch.cat(self._val_labels)
        else:
            shape = (0,) if self.targets is None else (0, self.num_targets)
            ids = torch.zeros((0, 2), dtype=torch.long, device=self.device)
            probs = torch.zeros(shape, device=self.device)
            labels = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.val_predictions = gather_unique(self, ids, probs, labels)
        p, y = self.val_predictions[1], self.val_predictions[2]
        if self.targets is None:
            auc = auc_or_nan(p, y)
            metrics: dict[str, float] = {}
        else:
            metrics = self._target_metrics(p, y)
            auc = metrics[f"auc_{self.targets[self.primary]}"]
        if not self.trainer.sanity_checking:
            self.last_val_auc = auc
            self.last_val_loss = float(val_loss) if val_loss is not None else float("nan")
            self.last_val_metrics = metrics
        # identical on every rank by construction: no reduction
        self.log("val/auc", torch.tensor(auc, dtype=torch.float32), prog_bar=True, sync_dist=False)
        for name, value in metrics.items():
            self.log(f"val/{name}", torch.tensor(value, dtype=torch.float32), sync_dist=False)
        self.log("val/n", float(p.shape[0]), sync_dist=False)
        self._val_ids, self._val_probs, self._val_labels = [], [], []

    def _target_metrics(self, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Per-target AUCs, their mean and the weighted log loss of ``(N, K)`` predictions."""
        assert self.targets is not None
        out = {f"auc_{t}": auc_or_nan(probs[:, k], labels[:, k]) for k, t in enumerate(self.targets)}
        finite = [v for v in out.values() if np.isfinite(v)]
        out["mean_auc"] = float(np.mean(finite)) if finite else float("nan")
        weights = self.target_weights.cpu().numpy()
        out["log_loss"] = weighted_log_loss(labels, probs, weights) if labels.shape[0] else float("nan")
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(trainable, self.hparams["optimizer"])

    def on_fit_start(self) -> None:
        counts = count_parameters(self)
        for logger in self.loggers:
            logger.log_hyperparams(
                {"params/total": counts["total"], "params/trainable": counts["trainable"]}
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = {
            "val_auc": float(self.last_val_auc),
            "val_loss": float(self.last_val_loss),
            "epoch": int(self.current_epoch),
            "global_step": int(self.global_step),
        }
        if self.targets is not None:
            info["targets"] = list(self.targets)
            info["val_metrics"] = {k: float(v) for k, v in self.last_val_metrics.items()}
        checkpoint.setdefault("ich3d", {}).update(info)  # callbacks (the pinned inputs) wrote first


class SliceModule(_BinaryModule):
    """Stage 1: slice encoder + ``Linear -> 1`` on slice labels.

    Args:
        model: ``{"encoder": {"name": ..., **kwargs}, "head": ..., "slice_chunk": ...}``;
            only ``encoder`` is used here (the rest rides along so the stage-2 model can
            be checked against it).
        optimizer: ``{"name": "adam", "lr": 1e-4, "weight_decay": 0.0, "momentum": 0.0}``.
        target_weights: with ``model["targets"]`` (one output per target), the BCE
            weight of each target (default 1 each).
        primary: the target ``val/auc`` is computed on (``data.label``).

    Batches: ``{"image": (B, C, H, W), "label": (B,), "key": [str], "slice_index": (B,)}``.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        target_weights: list[float] | None = None,
        primary: int = 0,
    ) -> None:
        super().__init__(model.get("targets"), target_weights, primary)
        self.save_hyperparameters()
        self.model = build_slice(model)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N,)`` slice logits."""
        return self.model(x)

    def _logits(self, batch: Mapping[str, Any]) -> Tensor:
        return self(batch["image"])


class VolumeModule(_BinaryModule):
    """Stages 2, 3 and ``direct``: encoder + sequence head on volume labels.

    Args:
        model: ``{"encoder": {"name", **kwargs}, "head": {"name", **kwargs},
            "slice_chunk": int | None}``.
        optimizer: as for :class:`SliceModule` (RMSprop 1e-3 in stage 2).
        target_weights, primary: as for :class:`SliceModule`.
        freeze_encoder: stage 2: encoder without gradients, outside the optimizer,
            in eval mode.
        gradient_checkpointing: checkpoint the encoder per chunk of slices (stage 3,
            ``direct``; see :class:`~ich3d.models.volume.VolumeClassifier`).

    Batches: ``{"volume": (B, T, C, H, W), "length": (B,), "label": (B,), "key": [str],
    "index": (B,)}``, or with ``features`` ``(B, T, F)`` instead of ``volume``: the
    frozen encoder's cached slice features (:mod:`ich3d.data.features`), which go
    to the head directly.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        freeze_encoder: bool = False,
        gradient_checkpointing: bool = False,
        target_weights: list[float] | None = None,
        primary: int = 0,
    ) -> None:
        super().__init__(model.get("targets"), target_weights, primary)
        self.save_hyperparameters()
        self.model = build(model, checkpoint_chunks=gradient_checkpointing)
        if freeze_encoder:
            self.model.freeze_encoder()

    def forward(self, volumes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, T, C, H, W), (B,) -> (B,)`` volume logits."""
        return self.model(volumes, lengths)

    @property
    def per_slice(self) -> bool:
        """Whether the head labels every slice (``model.per_slice``)."""
        return self.model.per_slice

    def _logits(self, batch: Mapping[str, Any]) -> Tensor:
        """Volume logits through the model's own methods: :meth:`~VolumeClassifier.encode`
        then :meth:`~VolumeClassifier.head_logits`, or only the latter on cached features."""
        x = batch["features"] if "features" in batch else batch["volume"]
        lengths = batch.get("length")
        lengths = (
            torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
            if lengths is None
            else torch.as_tensor(lengths, device=x.device).reshape(-1)
        )
        if "features" in batch:
            if not self.hparams["freeze_encoder"]:
                raise RuntimeError("cached features feed a frozen encoder's head only")
            feats = x
        else:
            feats = self.model.encode(x, lengths)
        if self.per_slice:  # per-slice logits kept for the slice loss; the volume logit is their max
            self._slice_logits = self.model.head_slice_logits(feats, lengths)
            self._slice_lengths = lengths
            return self._slice_logits.amax(dim=1)
        return self.model.head_logits(feats, lengths)

    def _batch_loss(self, batch: Mapping[str, Any], logits: Tensor, y: Tensor) -> Tensor:
        """With per-slice outputs and ``slice_target`` in the batch: the (weighted) BCE over
        every real slice; otherwise the volume loss."""
        if not self.per_slice or "slice_target" not in batch:
            return self._loss(logits, y)
        sl = self._slice_logits.float()
        if sl.ndim == 2:
            sl = sl[..., None]
        st = torch.as_tensor(batch["slice_target"]).to(sl.device).reshape(sl.shape)
        mask = torch.arange(sl.shape[1], device=sl.device)[None, :] < self._slice_lengths.to(sl.device)[:, None]
        flat_logits, flat_y = sl[mask], st[mask]  # (n_slices, K)
        if self.targets is None:
            return self.loss_fn(flat_logits[:, 0], flat_y[:, 0])
        return self._loss(flat_logits, flat_y)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.hparams["freeze_encoder"]:  # belt and braces: Lightning toggles modes
            self.model.encoder.eval()

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """``{"key": [...], "prob": (B,) or (B, K), "label": (B,) if present}``."""
        logits = self._logits(batch).float()
        if self.targets is not None:
            logits = logits.reshape(logits.shape[0], self.num_targets)
        out: dict[str, Any] = {
            "key": list(batch["key"]) if "key" in batch else None,
            "prob": torch.sigmoid(logits).cpu(),
        }
        if "label" in batch:
            out["label"] = self._labels(batch).cpu()
        return out
