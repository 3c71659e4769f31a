"""The training stages, one declared :class:`Stage` per file.

Built in (``docs/method.md`` section 1): ``slice`` (stage 1, the slice CNN), ``sequence``
(stage 2, BiLSTM over the frozen CNN), ``finetune`` (stage 3, end to end) and
``direct`` (the ablation). Every module of this package is imported when the
stage list is first read, so a new stage is one new file here.
"""

from __future__ import annotations

from ich3d.stages.base import (
    Stage,
    StageConfig,
    all_stages,
    chain,
    final_volume_stage,
    get_stage,
    register_stage,
    slice_stage,
    stage_names,
    unregister_stage,
    volume_stages,
)

__all__ = [
    "Stage",
    "StageConfig",
    "all_stages",
    "chain",
    "final_volume_stage",
    "get_stage",
    "register_stage",
    "slice_stage",
    "stage_names",
    "unregister_stage",
    "volume_stages",
]
