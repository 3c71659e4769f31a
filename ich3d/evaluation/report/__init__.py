"""The evaluation report: statistics tables -> files (:mod:`.build`), Markdown (:mod:`.render`),
figures (:mod:`.plots`, :mod:`.curves`), provenance (:mod:`.provenance`), published figures
(:mod:`.reference`), per-target sections (:mod:`.per_target`) and the W&B run (:mod:`.wandb`)."""
