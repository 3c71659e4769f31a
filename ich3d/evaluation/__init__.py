"""Volume-level evaluation of trained runs, by concern.

* :mod:`.methods`: the scoring methods (one file each) and their registry;
* :mod:`.inference`: model passes and the shared evaluation context;
* :mod:`.report`: the report's statistics, Markdown, figures and W&B run;
* :mod:`.evaluate`: ``ich3d evaluate`` (plan, score, report); :mod:`.tables`: its slice and per-target tables;
* :mod:`.prediction`: ``ich3d predict`` and the RSNA submission;
* :mod:`.comparison`: ``ich3d compare`` and ``ich3d seeds``.

The pure statistics (DeLong, operating points, log loss, Holm) are :mod:`ich3d.stats`.
"""
