"""Run directories and what is kept in them: configs, checkpoints, the pinned inputs.

Shared by training (which writes runs) and evaluation (which reads them), so
neither imports the other.
"""
