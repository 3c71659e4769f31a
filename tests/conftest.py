"""Shared test settings: CPU only, quiet W&B, one torch thread (oversubscribed cores make OpenMP spin)."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402

torch.set_num_threads(1)  # 2 threads on 2 busy cores spin-wait: 4x slower here
