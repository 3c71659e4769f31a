"""The ablation: the volume model trained end to end from random initialisation (RMSprop 1e-4)."""

from ich3d.stages.base import Stage, StageConfig, register_stage

DIRECT = register_stage(
    Stage(
        name="direct",
        kind="volume",
        order=40,
        description="ablation: CNN + BiLSTM end to end from random initialisation",
        defaults=StageConfig(optimizer="rmsprop", lr=1e-4, batch_size=1),
        preference=3,
    )
)
