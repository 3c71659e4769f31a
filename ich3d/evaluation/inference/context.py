"""What the scoring methods share during one evaluation: data, checkpoints, stage-1 passes.

An :class:`EvaluationContext` is filled lazily: a data module is built the first
time a role needs it, a checkpoint is loaded (and its pinned inputs checked) the
first time a method needs it, and the stage-1 CNN runs once per role however many
methods (``max``, ``p95``, ``svm``, a user's) read its slice outputs.

Roles (``evaluated``, ``val``, ``train``: :data:`ich3d.evaluation.methods.ROLES`): ``evaluated`` is the split
of the report (``evaluation.split`` of the run's cache, or the volumes of another
cache given as ``data``), ``val`` and ``train`` are always the run's own splits.

Every checkpoint used is compared with the inputs it recorded when it was trained
(:mod:`ich3d.runs.inputs`): the run's config and cache must match all of them
(windows, depth pool, in-plane size, label, cache, split); another cache must
match what the network sees (:data:`~ich3d.runs.inputs.MODEL_INPUTS`), and it is
cropped/padded to the training in-plane size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ich3d.data.targets import model_targets, primary_index
from ich3d.errors import UserError
from ich3d.evaluation.inference.passes import (
    build_eval_datamodule,
    predict_slices,
    training_image_size,
)
from ich3d.runs.checkpoints import load_checkpoint, load_slice_model, load_volume_model
from ich3d.runs.inputs import MODEL_INPUTS, check_inputs, input_signature, recorded_inputs
from ich3d.stages import slice_stage

__all__ = ["EvaluationContext"]

log = logging.getLogger(__name__)

_OWN = "run"
_DATA = "data"


class EvaluationContext:
    """Shared, lazily computed state of one evaluation (or prediction) of a run.

    Args:
        run: the :class:`~ich3d.runs.run_dir.RunDir`.
        config: the run's config.
        device: the torch device.
        progress: progress bars.
        split: the run's split evaluated when ``data`` is None (``evaluation.split``).
        data: another ingest cache to evaluate on (``evaluated`` = its volumes).
        labelled_only: with ``data``, keep only volumes labelled 0/1 on
            ``data.label`` (``evaluate``); False keeps every volume (``predict``).
        features: keep the stage-1 slice features (the SVM needs them).
        check_all_inputs: compare every recorded input with the run's config and
            cache (``evaluate``, which scores the run's own splits); False compares
            the model inputs only (``predict`` on new data).
    """

    def __init__(
        self,
        run: Any,
        config: Any,
        *,
        device: Any,
        progress: bool = True,
        split: str = "test",
        data: str | Path | None = None,
        labelled_only: bool = True,
        features: bool = True,
        check_all_inputs: bool = True,
    ) -> None:
        self.run = run
        self.config = config
        self.device = device
        self.progress = progress
        self.split = split
        self.data = Path(data) if data is not None else None
        self.labelled_only = labelled_only
        self.features = features
        self.check_all_inputs = check_all_inputs
        self._memo: dict[Any, Any] = {}
        self._dms: dict[tuple[str, int], Any] = {}
        self._checked: set[str] = set()
        self._model: tuple[str, Any] | None = None
        self._image_size: tuple[int, int] | None = None
        self._recorded_size: tuple[int, int] | None = None
        #: the labels the run's models output (``[data.label]`` for the binary method)
        self.targets: list[str] = model_targets(config.data)
        #: the column of ``data.label`` in several-target outputs (None when binary)
        self.primary: int | None = (
            primary_index(self.targets, config.data.label) if getattr(config.data, "targets", None) else None
        )

    # ------------------------------------------------------------------ roles
    def _source(self, role: str) -> tuple[str, str]:
        """``(cache, split)`` of a role: ``run`` or ``data``, and the split name."""
        if role == "evaluated":
            return (_DATA, "predict") if self.data is not None else (_OWN, self.split)
        if role in ("val", "train"):
            return _OWN, role
        raise ValueError(f"unknown role {role!r}; expected evaluated, val or train")

    def same_data(self, a: str, b: str) -> bool:
        """Whether two roles are the same volumes (``evaluation.split: val``)."""
        return self._source(a) == self._source(b)

    def role_name(self, role: str) -> str:
        """The split a role stands for, for progress bars and messages."""
        cache, split = self._source(role)
        return "external" if cache == _DATA else split

    def memo(self, key: Any, factory: Callable[[], Any]) -> Any:
        """``factory()`` computed once per key for this evaluation (shared work of methods)."""
        if key not in self._memo:
            self._memo[key] = factory()
        return self._memo[key]

    # ------------------------------------------------------------------ checkpoints
    def check_stages(self, stages: Iterable[str]) -> None:
        """Load the ``best.ckpt`` of each stage and refuse one trained on other inputs.

        Raises:
            UserError: a recorded input differs (the message names it, trained vs now).
        """
        for stage in stages:
            self.check_stage(stage)

    def check_stage(self, stage: str) -> None:
        """Compare the inputs the stage's ``best.ckpt`` recorded with the current ones (once per stage)."""
        if stage not in self._checked:
            ckpt = load_checkpoint(self.run.best_ckpt(stage))
            recorded = recorded_inputs(ckpt)
            what = f"{stage}/best.ckpt of {self.run.path}"
            keys = None if self.check_all_inputs else MODEL_INPUTS
            check_inputs(recorded, input_signature(self.config.data), what=what, keys=keys)
            if recorded and recorded.get("image_size") and self._recorded_size is None:
                self._recorded_size = tuple(int(v) for v in recorded["image_size"])
            if self.data is not None:
                # another cache: what the network sees must match; it is cropped/padded to
                # the training size, its cache and split hashes differ by design
                other = input_signature(self.config.data, cache_dir=self.data)
                other["image_size"] = None if self.image_size is None else list(self.image_size)
                check_inputs(recorded, other, what=f"{what} (scoring {self.data})", keys=MODEL_INPUTS)
            self._checked.add(stage)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """In-plane size for another cache: the training cache's, else the one a checkpoint recorded."""
        if self._image_size is None:
            size = training_image_size(self.config)
            self._image_size = size if size is not None else self._recorded_size
        return self._image_size

    def volume_model(self, stage: str) -> Any:
        """The stage's volume model (eval mode; only the last one asked for is kept)."""
        if self._model is None or self._model[0] != stage:
            self.check_stage(stage)
            self._model = None
            model, _ = load_volume_model(self.run, stage)
            self._model = (stage, model)
        return self._model[1]

    def release_model(self) -> None:
        """Drop the cached volume model (memory)."""
        self._model = None

    # ------------------------------------------------------------------ data
    def datamodule(self, role: str, depth_pool: int) -> Any:
        """A set-up ``VolumeDataModule`` of the role's cache at ``depth_pool``."""
        cache, _ = self._source(role)
        key = (cache, int(depth_pool))
        if key not in self._dms:
            if cache == _DATA:
                self._dms[key] = build_eval_datamodule(
                    self.config, self.data, depth_pool=depth_pool, image_size=self.image_size, stage="predict"
                )
            else:
                self._dms[key] = build_eval_datamodule(self.config, depth_pool=depth_pool, stage="test")
        return self._dms[key]

    def table(self, role: str, depth_pool: int | None = None) -> pd.DataFrame:
        """The role's volumes (``split_table`` columns), sorted by key."""
        dm = self.datamodule(role, depth_pool or self.config.data.depth_pool)
        _, split = self._source(role)
        table = dm.split_table(split)
        if role == "evaluated" and self.data is not None and self.labelled_only:
            table = table[table["label"].isin([0, 1])].reset_index(drop=True)
            if len(table) == 0:
                raise UserError(f"{self.data} has no volume labelled 0/1 on {self.config.data.label!r} to evaluate")
        return table

    def loader(self, role: str, depth_pool: int) -> Any:
        """Every volume of :meth:`table` once, in its order, at ``depth_pool``."""
        dm = self.datamodule(role, depth_pool)
        _, split = self._source(role)
        if role == "evaluated" and self.data is not None and self.labelled_only:
            return dm.volume_loader(list(self.table(role, depth_pool)["key"]))
        return dm.eval_dataloader(split)

    # ------------------------------------------------------------------ stage 1
    def has_slice_outputs(self, role: str) -> bool:
        """Whether the stage-1 CNN already ran on the role."""
        return ("slice_outputs", self._source(role)) in self._memo

    def slice_outputs(self, role: str) -> Any:
        """:class:`~ich3d.evaluation.inference.passes.SliceOutputs` of the stage-1 CNN on every slice
        of the role's volumes (one pass per role, shared by every method)."""
        return self.memo(("slice_outputs", self._source(role)), lambda: self._slice_pass(role))

    def _slice_pass(self, role: str) -> Any:
        stage = slice_stage().name
        self.check_stage(stage)
        model = self.memo(("slice_model", stage), lambda: load_slice_model(self.run, stage))
        return predict_slices(
            model,
            self.loader(role, depth_pool=1),
            self.device,
            features=self.features,
            progress=self.progress,
            desc=f"slice CNN {self.role_name(role)}",
            primary=self.primary,
        )

    def slice_seconds(self, role: str) -> float:
        """Average forward seconds per volume of the role's stage-1 pass."""
        return float(self.slice_outputs(role).seconds.mean())

    def slice_load_seconds(self, role: str) -> float:
        """Average loading seconds per volume of the role's stage-1 pass."""
        out = self.slice_outputs(role)
        return out.load_seconds / len(out.keys)
