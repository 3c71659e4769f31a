"""Stage 1: the slice CNN on slice labels (Adam 1e-4, batch 25, balanced cranial-cavity slices)."""

from ich3d.stages.base import Stage, StageConfig, register_stage

SLICE = register_stage(
    Stage(
        name="slice",
        kind="slice",
        order=10,
        description="stage 1: slice CNN + one logit on slice labels",
        defaults=StageConfig(optimizer="adam", lr=1e-4, batch_size=25),
        in_chain=True,
    )
)
