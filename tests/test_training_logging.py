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
from ich3d.training.modules import SliceModule, sample_ids

MODEL = {"encoder": {"name": "patel_cnn", "in_channels": 3, "width": 4, "feature_dim": 16, "dropout": 0.0},
         "head": {"name": "bilstm", "hidden": 8}, "slice_chunk": None}
OPT = {"name": "adam", "lr": 1e-2}


class _Slices(Dataset):
    def __init__(self, n: int, targets: int | None, seed: int = 3) -> None:
        gen = torch.Generator().manual_seed(seed)
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

    def validation_step(self, batch, batch_idx):
        logits, y = self._outputs(batch)
        loss = self._batch_loss(batch, logits, y)
        n = int(y.shape[0])
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self._val_ids.append(sample_ids(batch, n, logits.device))
        self._val_probs.append(torch.sigmoid(logits).detach())
        self._val_labels.append(y.detach().long())
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
    val = DataLoader(_Slices(10, targets, seed=4), batch_size=3, shuffle=False)  # a short last batch
    logger = StageCSVLogger(str(tmp_path / name))
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, logger=logger, log_every_n_steps=log_every,
        accumulate_grad_batches=accumulate, enable_checkpointing=False, num_sanity_val_steps=1,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val)
    return pd.read_csv(tmp_path / name / "metrics.csv")


@pytest.mark.parametrize(("log_every", "accumulate", "targets"), [(3, 1, None), (1, 1, None), (2, 2, 3)])
def test_rows_match_per_step_logging(tmp_path, log_every, accumulate, targets):
    kw = {"log_every": log_every, "accumulate": accumulate, "targets": targets}
    new = _rows(SliceModule, tmp_path, "new", **kw)
    ref = _rows(_PerStepLogging, tmp_path, "ref", **kw)
    extra = [*(f"val/auc_t{k}" for k in range(targets)), "val/log_loss", "val/mean_auc"] if targets else []
    assert sorted(new.columns) == sorted(ref.columns) == sorted(
        ["epoch", "step", "train/auc", "train/loss_epoch", "train/loss_step", "val/auc", "val/loss", "val/n", *extra])
    steps = -(-7 // accumulate) * 2  # 7 batches per epoch (the last one steps too), 2 epochs
    per_step = ref.dropna(subset=["train/loss_step"])
    assert per_step["step"].tolist() == [s for s in range(steps) if (s + 1) % log_every == 0]
    assert len(ref.dropna(subset=["train/auc"])) == len(ref.dropna(subset=["val/loss"])) == 2
    assert ref["val/n"].dropna().tolist() == [10.0, 10.0]
    assert ref["train/auc"].dropna().nunique() == 2  # moves between the epochs: a real value
    pd.testing.assert_frame_equal(new[ref.columns], ref, check_exact=True)


def test_csv_writer_formats_each_row_once(tmp_path):
    """``metrics.csv`` after every save is what writing all rows from scratch gives; a save
    formats only the new rows, and every row again only when a column appears."""
    import csv

    from ich3d.tracking.loggers import _HistoryWriter

    writer = _HistoryWriter(str(tmp_path), rows=[{"step": 0, "train/loss_step": 1.5, "epoch": 0}])
    formatted = []
    fmt = writer._format
    writer._format = lambda rows: formatted.append(len(rows)) or fmt(rows)

    def expected() -> str:
        keys = sorted({k for row in writer.rows for k in row})
        with open(tmp_path / "ref.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(writer.rows)
        return (tmp_path / "ref.csv").read_text()

    logged = [{"train/loss_step": 0.25, "epoch": 0}, {"train/loss_step": 1 / 3, "epoch": 0},
              {"train/loss_epoch": 0.5, "train/auc": 0.75, "epoch": 0}, {"train/loss_step": 0.125, "epoch": 1},
              {"val/auc": 0.5, "val/loss": 0.7, "epoch": 1}, {"train/loss_step": 2.0, "epoch": 1}]
    for step, metrics in enumerate(logged, start=1):
        writer.log_metrics(metrics, step)
        writer.save()
        assert (tmp_path / "metrics.csv").read_text() == expected()
    # new columns at the 3rd and 5th rows: 2 (resumed + 1st) + 1, then 4 rows, then 1, then 6 rows, then 1
    assert formatted == [2, 1, 4, 1, 6, 1]
    assert pd.read_csv(tmp_path / "metrics.csv")["train/loss_step"].dropna().tolist() == [1.5, 0.25, 1 / 3, 0.125, 2.0]
