"""ich3d: intracranial hemorrhage detection in whole head-CT volumes."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
