"""Stage 3: the whole stage-2 model fine-tuned end to end (RMSprop 1e-4)."""

from ich3d.stages.base import Stage, StageConfig, register_stage
from ich3d.stages.sequence import SEQUENCE

FINETUNE = register_stage(
    Stage(
        name="finetune",
        kind="volume",
        order=30,
        description="stage 3: CNN + BiLSTM fine-tuned end to end (from sequence)",
        defaults=StageConfig(optimizer="rmsprop", lr=1e-4, batch_size=1),
        starts_from=SEQUENCE.name,
        loads="model",
        in_chain=True,
        preference=1,
    )
)
