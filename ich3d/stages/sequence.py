"""Stage 2: a sequence head over the frozen stage-1 CNN (RMSprop 1e-3, one volume per batch)."""

from ich3d.stages.base import Stage, StageConfig, register_stage
from ich3d.stages.slice import SLICE

SEQUENCE = register_stage(
    Stage(
        name="sequence",
        kind="volume",
        order=20,
        description="stage 2: CNN (frozen, from slice) + BiLSTM on volume labels",
        defaults=StageConfig(optimizer="rmsprop", lr=1e-3, batch_size=1),
        starts_from=SLICE.name,
        loads="encoder",
        freeze_encoder=True,
        in_chain=True,
        preference=2,
    )
)
