"""Shared test settings: CPU only, quiet W&B, one torch thread (oversubscribed cores make OpenMP spin).

Also the session's tiny run (``tiny_run``): built once (synthetic DICOM, its labelled
cache, a run directory with a seeded ``best.ckpt`` and ``result.json`` per stage of
``_eval_helpers.TINY_STAGES``). Tests that write into a run (evaluate, predict, edit
its config) take a copy with ``_eval_helpers.copy_tiny_run``.
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # 2 threads on 2 busy cores spin-wait: 4x slower here


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):  # noqa: ANN001, ANN201
    """The session's tiny run (read-only: copy it with ``copy_tiny_run`` before writing into it)."""
    from _eval_helpers import TINY_STAGES, make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"), stages=TINY_STAGES)
