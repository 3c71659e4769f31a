"""Exported model packages: ``ich3d export`` (:mod:`.export`) and ``ich3d predict PKG`` (:mod:`.predict`).

A package is data, not code (:mod:`.package`): its files are checked against its
manifest, and ich3d builds its own network from the package's model spec and
loads tensors-only weights (:mod:`.runtime`).
"""
