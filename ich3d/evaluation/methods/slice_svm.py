"""``slice_svm``: a linear SVM slice classifier on the frozen stage-1 encoder's slice features.

Dawud et al. 2019's AlexNet-SVM: the CNN's softmax replaced by a linear SVM on its
features (FC6 with ``model.encoder_args.layer: fc6``). Fitted once per evaluation
(:func:`~ich3d.evaluation.inference.slice_svm.fit_slice_svm`: standardised features,
``LinearSVC`` with ``class_weight="balanced"``) on the training split's
cranial-cavity slices with a slice label (negatives only from negative volumes, as
stage 1 samples them), at most ``evaluation.slice_svm_max_train`` of them (a
seeded stratified subset); C is chosen among ``evaluation.slice_svm_cs`` by the
slice AUC on as many validation cranial-cavity slices. Every slice of a volume is
scored; the volume score is the maximum slice score. The slice scores go to the
slice-level table (:mod:`ich3d.evaluation.inference.slice_level`); ``metrics.json`` gets the
fit under ``per_method_details``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ich3d.errors import UserError
from ich3d.evaluation.inference.slice_level import slice_frame, training_rows
from ich3d.evaluation.inference.slice_svm import fit_slice_svm
from ich3d.evaluation.methods.base import (
    MethodScores,
    MethodUnavailable,
    ScoringMethod,
    register_method,
    slice_stage_name,
)

__all__ = ["SliceSVMMethod", "gather_features"]


def gather_features(outs: Any, rows: np.ndarray) -> np.ndarray:
    """Rows (flat slice positions of the stage-1 pass) of the per-volume feature arrays, ``(len(rows), F)``."""
    n = np.array([len(f) for f in outs.features], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n)])
    vol = np.searchsorted(starts, rows, side="right") - 1
    return np.stack([outs.features[v][r - starts[v]] for v, r in zip(vol, rows, strict=True)]).astype(np.float32)


class SliceSVMMethod(ScoringMethod):
    """Linear SVM on per-slice features; volume score = maximum slice score.

    Subclasses change :meth:`_transform_fit` / :meth:`_transform` (e.g. ``ae_svm``
    codes the features with an autoencoder first).
    """

    #: the name of the fitted state in the evaluation context
    memo_key = "slice_svm.fit"

    def _transform_fit(self, ctx: Any, x: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """Fit a feature transform on the training slices; returns ``(state, details)``."""
        return None, {}

    def _transform(self, state: Any, x: np.ndarray) -> np.ndarray:
        return x

    def _fit(self, ctx: Any) -> tuple[Any, Any, dict[str, Any]]:
        ev = ctx.config.evaluation
        t0 = time.perf_counter()
        got = {}
        for role, train in (("train", True), ("val", False)):
            frame = slice_frame(ctx, role)
            rows = training_rows(frame, train=train, max_n=ev.slice_svm_max_train, seed=ctx.config.seed)
            if len(rows) == 0:
                raise MethodUnavailable(f"{self.name} not fitted: no {role} cranial-cavity slice has a slice label")
            got[role] = (gather_features(ctx.slice_outputs(role), rows), frame["label"].to_numpy()[rows])
        state, details = self._transform_fit(ctx, got["train"][0])
        try:
            svm = fit_slice_svm(
                self._transform(state, got["train"][0]),
                got["train"][1],
                self._transform(state, got["val"][0]),
                got["val"][1],
                Cs=ev.slice_svm_cs,
                random_state=ctx.config.seed,
            )
        except UserError as exc:
            raise MethodUnavailable(f"{self.name} not fitted: {exc}") from None
        details = {**svm.to_dict(), **details, "fit_seconds": round(time.perf_counter() - t0, 3)}
        return state, svm, details

    def score(self, ctx: Any, role: str) -> MethodScores:
        state, svm, details = ctx.memo(self.memo_key, lambda: self._fit(ctx))
        out = ctx.slice_outputs(role)
        t0 = time.perf_counter()
        per_slice = [svm.decision_function(self._transform(state, f)) for f in out.features]
        secs = (time.perf_counter() - t0) / len(out.keys)
        result = MethodScores(
            out.keys,
            np.array([s.max() for s in per_slice], dtype=np.float64),
            seconds=ctx.slice_seconds(role) + secs,
            load_seconds=ctx.slice_load_seconds(role),
            stage1_slice_scores=per_slice,
        )
        if role == "evaluated":
            result.details = details
            result.notes = [
                f"{self.name}: C was chosen on validation slices, so its validation-chosen operating points "
                "are slightly optimistic"
            ]
        return result


register_method(
    SliceSVMMethod(
        "slice_svm",
        "linear SVM slice classifier on the frozen stage-1 slice features, maximum slice score",
        needs=slice_stage_name(),
        order=35,
        default=False,
    )
)
