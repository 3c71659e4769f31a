"""Networks: slice encoders, sequence heads and the volume model, behind a small registry."""
