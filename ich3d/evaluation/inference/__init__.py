"""Running a run's models over a cache, and what the scoring methods share.

* :mod:`.passes`: the volume-model and stage-1 slice passes, devices, hardware;
* :mod:`.context`: :class:`~.context.EvaluationContext`, the lazily shared state of one
  evaluation (data modules, checkpoints and their pinned inputs, one stage-1 pass per role);
* :mod:`.baselines`: slice aggregations and the padded-feature SVM (pure numpy/scikit-learn);
* :mod:`.slice_svm`: the slice SVM fit; :mod:`.slice_level`: every slice classifier's table.
"""
