"""``svm``: a linear SVM on the zero-padded stage-1 slice features.

Fitted once per evaluation on the run's training split, C chosen on its
validation split among ``evaluation.svm_cs``
(:func:`~ich3d.evaluation.inference.baselines.fit_linear_svm`); the fitted model then
scores every role. ``metrics.json`` gets its details under ``svm``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ich3d.errors import UserError
from ich3d.evaluation.inference.baselines import fit_linear_svm
from ich3d.evaluation.methods.base import (
    MethodScores,
    MethodUnavailable,
    ScoringMethod,
    register_method,
    slice_stage_name,
)

__all__ = ["LinearSVMMethod"]

_NOTE = (
    "svm: C was chosen on the validation split, so its validation-chosen operating "
    "points are slightly optimistic"
)


class LinearSVMMethod(ScoringMethod):
    """Linear SVM on the padded, flattened slice features of the stage-1 CNN."""

    def _fit(self, ctx: Any) -> Any:
        tr, va = ctx.slice_outputs("train"), ctx.slice_outputs("val")
        try:
            return fit_linear_svm(
                tr.features,
                tr.labels.astype(np.int64),
                va.features,
                va.labels.astype(np.int64),
                Cs=ctx.config.evaluation.svm_cs,
                solver=ctx.config.evaluation.svm_solver,
            )
        except UserError as exc:
            raise MethodUnavailable(f"SVM baseline not fitted: {exc}") from None

    def _fit_target(self, ctx: Any, target: str) -> Any:
        """A linear SVM on one target's volume labels (``None`` when it cannot be fitted)."""
        tr, va = ctx.slice_outputs("train"), ctx.slice_outputs("val")
        y_tr = ctx.table("train").set_index("key").loc[tr.keys, target].to_numpy(np.int64)
        y_va = ctx.table("val").set_index("key").loc[va.keys, target].to_numpy(np.int64)
        try:
            return fit_linear_svm(
                tr.features, y_tr, va.features, y_va,
                Cs=ctx.config.evaluation.svm_cs, solver=ctx.config.evaluation.svm_solver,
            )
        except UserError:
            return None

    def _target_scores(self, ctx: Any, role: str, out: Any) -> np.ndarray | None:
        """``(n, K)``: one SVM per target (NaN columns for a target that could not be fitted)."""
        if not out.target_probs:
            return None
        cols = []
        for t in ctx.targets:
            svm_t = ctx.memo(f"svm.fit.{t}", lambda t=t: self._fit_target(ctx, t))
            cols.append(svm_t.decision_function(out.features)[0] if svm_t is not None else np.full(len(out.keys), np.nan))
        return np.stack(cols, 1)

    def score(self, ctx: Any, role: str) -> MethodScores:
        svm = ctx.memo("svm.fit", lambda: self._fit(ctx))
        out = ctx.slice_outputs(role)
        t0 = time.perf_counter()
        scores, n_cropped = svm.decision_function(out.features)
        svm_secs = (time.perf_counter() - t0) / len(out.keys)
        result = MethodScores(
            out.keys,
            scores,
            seconds=ctx.slice_seconds(role) + svm_secs,
            load_seconds=ctx.slice_load_seconds(role),
            target_scores=self._target_scores(ctx, role, out),
        )
        if role == "evaluated":
            result.details = {**svm.to_dict(), "n_cropped_test": int(n_cropped)}
            result.notes = [_NOTE]
        return result


register_method(
    LinearSVMMethod("svm", "linear SVM on the zero-padded stage-1 slice features", needs=slice_stage_name(), order=30)
)
