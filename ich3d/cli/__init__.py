"""The ``ich3d`` command line."""
