"""The training modules' cheap logging writes the rows Lightning's per-step logging wrote.

``_BinaryModule`` keeps the step losses and training predictions on the device and
logs ``train/loss_step`` only at Lightning's logging steps, ``train/loss_epoch`` and
``train/auc`` at the epoch end. The reference here is the per-step logging it
replaced (``self.log("train/loss", on_step=True, on_epoch=True)`` and a
``BinaryAUROC`` updated and logged every step): ``metrics.csv`` must hold the same
rows, at the same steps, with the same values.
"""

from __future__ import annotations

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ich3d.tracking.loggers import StageCSVLogger
from ich3d.training.modules import SliceModule

MODEL = {"encoder": {"name": "patel_cnn", "in_channels": 3, "width": 4, "feature_dim": 16, "dropout": 0.0},
         "head": {"name": "bilstm", "hidden": 8}, "slice_chunk": None}
OPT = {"name": "adam", "lr": 1e-2}


class _Slices(Dataset):
    def __init__(self, n: int, targets: int | None) -> None:
        gen = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 3, 32, 32, generator=gen)
        self.y = (torch.rand(n, generator=gen) > 0.5).float()
        self.t = (torch.rand(n, targets or 1, generator=gen) > 0.5).float()
        self.x[self.y == 1] += 0.3  # something to learn: the AUCs move

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "target": self.t[i], "key": f"{i:016x}", "slice_index": i}


class _PerStepLogging(SliceModule):
    """The logging ``_BinaryModule`` did before: every step, through Lightning."""

    def training_step(self, batch, batch_idx):
        logits, y = self._outputs(batch)
        loss = self._batch_loss(batch, logits, y)
        n = int(y.shape[0])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.train_auc.update(torch.sigmoid(self._primary(logits).detach()), self._primary(y).long())
        self.log("train/auc", self.train_auc, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        pass

    def on_train_epoch_end(self):
        pass


def _rows(cls, tmp_path, name, *, log_every, accumulate, targets):
    pl.seed_everything(0, verbose=False)
    spec = dict(MODEL, targets=[f"t{k}" for k in range(targets)]) if targets else MODEL
    module = cls(model=spec, optimizer=OPT)
    loader = DataLoader(_Slices(28, targets), batch_size=4, shuffle=False)
    logger = StageCSVLogger(str(tmp_path / name))
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, logger=logger, log_every_n_steps=log_every,
        accumulate_grad_batches=accumulate, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    return pd.read_csv(tmp_path / name / "metrics.csv")


@pytest.mark.parametrize(("log_every", "accumulate", "targets"), [(3, 1, None), (1, 1, None), (2, 2, 3)])
def test_rows_match_per_step_logging(tmp_path, log_every, accumulate, targets):
    kw = {"log_every": log_every, "accumulate": accumulate, "targets": targets}
    new = _rows(SliceModule, tmp_path, "new", **kw)
    ref = _rows(_PerStepLogging, tmp_path, "ref", **kw)
    assert sorted(new.columns) == sorted(ref.columns) == ["epoch", "step", "train/auc", "train/loss_epoch",
                                                          "train/loss_step"]
    steps = -(-7 // accumulate) * 2  # 7 batches per epoch (the last one steps too), 2 epochs
    per_step = ref.dropna(subset=["train/loss_step"])
    assert per_step["step"].tolist() == [s for s in range(steps) if (s + 1) % log_every == 0]
    assert len(ref.dropna(subset=["train/auc"])) == 2
    assert ref["train/auc"].dropna().nunique() == 2  # moves between the epochs: a real value
    pd.testing.assert_frame_equal(new[ref.columns], ref, check_exact=True)
