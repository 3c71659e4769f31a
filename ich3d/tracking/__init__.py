"""Experiment tracking (Weights & Biases, CSV) with identifiers kept off the wire."""
