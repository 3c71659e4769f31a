"""The seeded random streams of the generator and its unique identifiers.

Everything random derives from ``numpy.random.SeedSequence(seed, spawn_key=...)``
with a tag per purpose (below) and the patient / study indices, so one
patient's content does not depend on the others' and defect draws never
change the phantoms.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "IDS_KEY",
    "PLAN_KEY",
    "NOISE_KEY",
    "DEFECT_KEY",
    "DATASET_KEY",
    "ANATOMY_KEY",
    "seq",
    "rng",
    "hex_digits",
    "Ids",
]

IDS_KEY = 1  # spawn-key tags of the sub-streams
PLAN_KEY = 2
NOISE_KEY = 3
DEFECT_KEY = 4
DATASET_KEY = 5
ANATOMY_KEY = 6


def seq(seed: int, *key: int) -> np.random.SeedSequence:
    """The seed sequence of sub-stream ``key`` of ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key))


def rng(seed: int, *key: int) -> np.random.Generator:
    """A generator on sub-stream ``key`` of ``seed``."""
    return np.random.default_rng(seq(seed, *key))


def hex_digits(gen: np.random.Generator, n: int) -> str:
    """``n`` random lower-case hex digits."""
    return "".join("0123456789abcdef"[int(d)] for d in gen.integers(0, 16, size=n))


class Ids:
    """Unique ``ID_<hex>`` identifiers drawn from per-owner generators."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def new(self, gen: np.random.Generator, n: int) -> str:
        """A new identifier of ``n`` hex digits (redrawn while already used)."""
        while True:
            s = f"ID_{hex_digits(gen, n)}"
            if s not in self.used:
                self.used.add(s)
                return s
