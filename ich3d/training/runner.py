"""Training: build model, data and trainer of a declared stage, run stages in a run directory.

The stages themselves are declared in :mod:`ich3d.stages` (one file each: name,
slice or volume, the stage it starts from and what it loads, a frozen encoder,
its default optimisation); this module reads those declarations and never
names a stage. Built in (``METHOD.md`` section 1): ``slice`` (stage 1),
``sequence`` (stage 2, frozen CNN), ``finetune`` (stage 3) and ``direct`` (the
ablation); ``ich3d train --list-stages`` prints them.

``all`` runs the chain (the stages declared ``in_chain``) in order; each later
stage finds its starting checkpoint in the run directory. Resuming continues a
stage from its ``last.ckpt`` through ``Trainer.fit(ckpt_path=..., weights_only=True)``
(global step, epoch, optimizer and callback states continue).

Every checkpoint records the inputs it was trained on
(:mod:`ich3d.runs.inputs`); a stage that starts from another refuses a
checkpoint trained on other inputs before anything is written.

Public API::

    model_spec(config) -> dict
    build_module(config, stage) -> SliceModule | VolumeModule
    build_slice_datamodule(config, cache_dir=None, *, stage="slice", **overrides)
    build_volume_datamodule(config, cache_dir=None, *, stage="finetune", **overrides)
    build_trainer(config, stage, run, loggers=None) -> Trainer
    check_data_paths(config)
    plan_stages(stage, run=None, resume=False) -> list[str]
    run_stage(config, run, stage, resume=False) -> dict
    train(config, stage="all", run_id=None, resume_dir=None, overrides=()) -> (RunDir, dict)
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ich3d.config import Config, StageConfig, resolve_precision
from ich3d.errors import UserError
from ich3d.runs.run_dir import RunDir
from ich3d.stages import Stage, chain, get_stage, stage_names

if TYPE_CHECKING:  # heavy imports stay lazy at run time
    import pytorch_lightning as pl

    from ich3d.training.modules import SliceModule, VolumeModule

__all__ = [
    "model_spec",
    "optimizer_spec",
    "build_module",
    "build_slice_datamodule",
    "build_volume_datamodule",
    "build_datamodule",
    "build_trainer",
    "check_data_paths",
    "check_model",
    "plan_stages",
    "run_stage",
    "stage_result",
    "train",
    "quiet_lightning",
]

log = logging.getLogger(__name__)

_NOISE = (
    r".*module\(s\) in eval mode.*",  # stage 2: the frozen encoder is in eval mode on purpose
    r".*LeafSpec.*",
    r".*smaller than the logging interval.*",
    r".*exists and is not empty.*",
    r".*does not have many workers.*",
    r".*anonymous setting has no effect.*",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence the Lightning/W&B messages that are expected in this pipeline."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


# --------------------------------------------------------------------------- specs


def model_spec(config: Config) -> dict[str, Any]:
    """The plain-data model spec the modules take (and checkpoints store).

    ``encoder.in_channels`` defaults to the number of windows; a different explicit
    value is an error.
    """
    encoder = {"name": config.model.encoder, **config.model.encoder_args}
    n_windows = len(config.data.windows)
    if encoder.setdefault("in_channels", n_windows) != n_windows:
        raise UserError(
            f"model.encoder_args.in_channels is {encoder['in_channels']} but data.windows "
            f"gives {n_windows} channels; drop in_channels or make them agree"
        )
    head = {"name": config.model.head, **config.model.head_args}
    return {"encoder": encoder, "head": head, "slice_chunk": config.model.slice_chunk}


def optimizer_spec(stage_cfg: StageConfig) -> dict[str, Any]:
    """``{"name", "lr", "weight_decay", "momentum"}`` of a stage."""
    return {
        "name": stage_cfg.optimizer,
        "lr": stage_cfg.lr,
        "weight_decay": stage_cfg.weight_decay,
        "momentum": stage_cfg.momentum,
    }


def check_model(config: Config) -> None:
    """Build the networks once (CPU, cheap) so a bad name or option fails before any run dir exists."""
    from ich3d.models.volume import build_volume_model

    spec = model_spec(config)
    build_volume_model(dict(spec["encoder"]), dict(spec["head"]), slice_chunk=spec["slice_chunk"])


def build_module(config: Config, stage: str) -> SliceModule | VolumeModule:
    """A freshly initialised LightningModule for ``stage`` (no weights loaded)."""
    from ich3d.models.speed import speed_up
    from ich3d.training.modules import SliceModule, VolumeModule

    st = get_stage(stage)
    stage_cfg = config.stages.get(st.name)
    spec = model_spec(config)
    module: SliceModule | VolumeModule
    if not st.is_volume:
        module = SliceModule(model=spec, optimizer=optimizer_spec(stage_cfg))
    else:
        module = VolumeModule(
            model=spec,
            optimizer=optimizer_spec(stage_cfg),
            freeze_encoder=st.freeze_encoder,
            gradient_checkpointing=stage_cfg.gradient_checkpointing,
        )
    speed_up(module.model, channels_last=config.model.channels_last, compile=config.model.compile)
    return module


def _starting_checkpoint(config: Config, run: RunDir, st: Stage) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``st`` starts from, checked against the config's model and inputs.

    Raises:
        UserError: the checkpoint is missing, or was trained with another encoder /
            model or on other inputs (windows, depth pool, size, label, cache, split).
    """
    from ich3d.runs.checkpoints import load_checkpoint
    from ich3d.runs.inputs import check_inputs, input_signature, recorded_inputs

    assert st.starts_from is not None
    path = run.best_ckpt(st.starts_from)
    if not path.is_file():
        raise UserError(
            f"stage {st.name!r} starts from {st.starts_from}/best.ckpt, which {run.path} does not have; "
            f"run --stage {st.starts_from} (or --stage all) first"
        )
    ckpt = load_checkpoint(path)
    prev_spec = ckpt.get("hyper_parameters", {}).get("model", {})
    spec = model_spec(config)
    if st.loads == "encoder" and prev_spec.get("encoder") != spec["encoder"]:
        raise UserError(
            f"{path} was trained with encoder {prev_spec.get('encoder')} but the config "
            f"asks for {spec['encoder']}"
        )
    if st.loads == "model" and prev_spec != spec:
        raise UserError(f"{path} was trained with model {prev_spec} but the config asks for {spec}")
    check_inputs(
        recorded_inputs(ckpt),
        input_signature(config.data),
        what=f"{st.starts_from}/best.ckpt (which stage {st.name} starts from)",
    )
    return path, ckpt


def _check_resume_inputs(config: Config, ckpt_path: str | Path, stage: str) -> None:
    """A resumed stage continues on the inputs its checkpoint was trained on."""
    from ich3d.runs.checkpoints import load_checkpoint
    from ich3d.runs.inputs import check_inputs, input_signature, recorded_inputs

    check_inputs(
        recorded_inputs(load_checkpoint(ckpt_path)),
        input_signature(config.data),
        what=f"{stage}/{Path(ckpt_path).name} (the stage being resumed)",
    )


def _pin_inputs_callback(config: Config) -> Any:
    """A callback that records :func:`~ich3d.runs.inputs.input_signature` in every checkpoint.

    The signature is taken in ``setup``, after the DataModule's ``setup`` wrote the
    splits, so its cache and split hashes are those the stage trains on.
    """
    import pytorch_lightning as pl

    from ich3d.runs.inputs import input_signature

    class PinInputs(pl.Callback):
        inputs: dict[str, Any] | None = None

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            self.inputs = input_signature(config.data)

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            checkpoint.setdefault("ich3d", {})["inputs"] = self.inputs

    return PinInputs()


def _encoder_hash(encoder: Any) -> str:
    """sha256 of an encoder's weights (names, shapes, dtypes and bytes), 16 hex digits."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _feature_datamodule(config: Config, run: RunDir, stage: str, module: Any, volumes: Any, ckpt_path: str | None) -> Any:
    """Wrap a frozen-encoder stage's volume DataModule so the head trains on cached features."""
    from ich3d.data.features import FeatureDataModule
    from ich3d.runs.inputs import input_signature

    if ckpt_path is not None:  # a resumed stage: the encoder of its checkpoint (Lightning restores later)
        from ich3d.runs.checkpoints import load_checkpoint, sub_state_dict

        state = load_checkpoint(ckpt_path)["state_dict"]
        module.model.encoder.load_state_dict(sub_state_dict(state, "model.encoder."))
    fingerprint = {
        "encoder": _encoder_hash(module.model.encoder),
        "encoder_spec": model_spec(config)["encoder"],
        "slice_chunk": config.model.slice_chunk,
        "inputs": input_signature(config.data),
    }
    s = config.stages.get(stage)
    return FeatureDataModule(
        volumes,
        module.model.encode,
        run.stage_dir(stage) / "features",
        fingerprint,
        views=s.feature_views,
        progress=config.trainer.enable_progress_bar,
    )


def _init_from_previous(config: Config, module: Any, run: RunDir, stage: str) -> None:
    """Load the starting weights of ``stage`` from the ``best.ckpt`` it starts from."""
    from ich3d.runs.checkpoints import sub_state_dict

    st = get_stage(stage)
    path, ckpt = _starting_checkpoint(config, run, st)
    if st.loads == "encoder":
        module.model.encoder.load_state_dict(sub_state_dict(ckpt["state_dict"], "model.encoder."))
    else:
        module.model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    log.info("stage %s starts from %s", stage, path)


# --------------------------------------------------------------------------- data


def _datamodule_kwargs(config: Config, stage: str, cache_dir: str | Path | None) -> dict[str, Any]:
    d = config.data
    s = config.stages.get(stage)
    own_cache = cache_dir is None
    return {
        "cache_dir": d.cache_dir if own_cache else cache_dir,
        # another cache (predict/evaluate elsewhere) is never re-ingested from our images
        "images_dir": d.images_dir if own_cache else None,
        "labels_csv": d.labels_csv if own_cache else None,
        "ingest_workers": d.ingest_workers,
        "min_slices": d.min_slices,
        "windows": list(d.windows),
        "split_fractions": tuple(d.split_fractions),
        "split_seed": d.split_seed,
        "splits_file": d.splits_file,
        "batch_size": s.batch_size,
        "num_workers": d.num_workers,
        "pin_memory": d.pin_memory,
        "persistent_workers": d.persistent_workers,
        "seed": config.seed,
        "samples_per_epoch": s.samples_per_epoch,
        "augment": s.augment,
        "label": d.label,
    }


def build_slice_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, stage: str = "slice", **overrides: Any
) -> Any:
    """The stage-1 ``SliceDataModule`` of ``config``.

    Args:
        config: the experiment config.
        cache_dir: another ingest cache (e.g. for prediction); default ``data.cache_dir``
            (which is ingested from ``data.images_dir`` if set).
        stage: the stage whose batch size / samples / augmentation apply.
        **overrides: any ``SliceDataModule`` keyword (``batch_size=...``, ``augment=False``).
    """
    from ich3d.data.datamodule import SliceDataModule

    kwargs = {**_datamodule_kwargs(config, stage, cache_dir), **overrides}
    return SliceDataModule(kwargs.pop("cache_dir"), **kwargs)


def build_volume_datamodule(
    config: Config, cache_dir: str | Path | None = None, *, stage: str = "finetune", **overrides: Any
) -> Any:
    """The ``VolumeDataModule`` of ``config`` (stages 2-3, ``direct``, predict, evaluate).

    Args:
        config: the experiment config (``data.depth_pool`` etc.).
        cache_dir: another ingest cache; default ``data.cache_dir``.
        stage: the stage whose batch size / samples / augmentation apply (default
            ``finetune``).
        **overrides: any ``VolumeDataModule`` keyword (``batch_size=4, pad_batches=True``).
    """
    from ich3d.data.datamodule import VolumeDataModule

    kwargs = _datamodule_kwargs(config, stage, cache_dir)
    kwargs["depth_pool"] = config.data.depth_pool
    kwargs = {**kwargs, **overrides}
    if "pad_batches" not in overrides:
        kwargs["pad_batches"] = kwargs["batch_size"] > 1
    return VolumeDataModule(kwargs.pop("cache_dir"), **kwargs)


def build_datamodule(config: Config, stage: str) -> Any:
    """The DataModule a stage trains on (slice or volume, as the stage declares)."""
    if not get_stage(stage).is_volume:
        return build_slice_datamodule(config, stage=stage)
    return build_volume_datamodule(config, stage=stage)


def check_data_paths(config: Config) -> None:
    """Fail early (before any run directory exists) when the data cannot be found.

    With ``data.images_dir`` the images folder (and ``labels_csv``, if given) must exist;
    otherwise ``data.cache_dir`` must be a complete ingest cache.
    """
    from ich3d.data.cache import is_complete

    d = config.data
    if d.cache_dir is None:
        raise UserError("config key 'data.cache_dir' is required (the ingest cache folder)")
    if d.images_dir is not None:
        if not Path(d.images_dir).is_dir():
            raise UserError(f"data.images_dir not found: {d.images_dir}")
        if d.labels_csv is None:
            raise UserError("data.labels_csv is required with data.images_dir to train (labels)")
        if not Path(d.labels_csv).is_file():
            raise UserError(f"data.labels_csv not found: {d.labels_csv}")
    elif not is_complete(d.cache_dir):
        raise UserError(
            f"data.cache_dir {d.cache_dir} is not a complete ingest cache; run "
            "`ich3d ingest` first or set data.images_dir and data.labels_csv"
        )
    if d.splits_file is not None and not Path(d.splits_file).is_file():
        raise UserError(f"data.splits_file not found: {d.splits_file}")


# --------------------------------------------------------------------------- trainer


def build_trainer(config: Config, stage: str, run: RunDir, loggers: list | None = None) -> pl.Trainer:
    """The Lightning ``Trainer`` of one stage (checkpoints, early stopping, LR monitor)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    s = config.stages.get(stage)
    t = config.trainer
    callbacks: list[Any] = [
        _pin_inputs_callback(config),
        ModelCheckpoint(
            dirpath=run.stage_dir(stage),
            filename="best",
            monitor="val/auc",
            mode="max",
            save_top_k=1,
            save_last=False,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        # Lightning 2.6 refreshes ``save_last`` only when the top-k file changed, so
        # ``last.ckpt`` is its own monitor-free checkpoint, rewritten every validation
        ModelCheckpoint(
            dirpath=run.stage_dir(stage),
            filename="last",
            monitor=None,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
    ]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if s.early_stopping_patience is not None:
        callbacks.append(
            EarlyStopping(monitor="val/auc", mode="max", patience=s.early_stopping_patience, check_finite=False)
        )
    kwargs: dict[str, Any] = {
        "default_root_dir": str(run.stage_dir(stage)),
        "accelerator": t.accelerator,
        "devices": t.devices,
        "strategy": t.strategy,
        "num_nodes": t.num_nodes,
        "precision": resolve_precision(config, stage),
        "max_epochs": s.max_epochs,
        "logger": loggers if loggers else False,
        "callbacks": callbacks,
        "deterministic": t.deterministic,
        "benchmark": t.benchmark,
        "log_every_n_steps": t.log_every_n_steps,
        "enable_progress_bar": t.enable_progress_bar,
        "enable_model_summary": False,
        "num_sanity_val_steps": t.num_sanity_val_steps,
        "gradient_clip_val": s.gradient_clip_val,
        "accumulate_grad_batches": s.accumulate_grad_batches,
    }
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return pl.Trainer(**kwargs)


# --------------------------------------------------------------------------- running


def plan_stages(stage: str, run: RunDir | None = None, resume: bool = False) -> list[str]:
    """The stages to run for ``--stage`` (``all`` = the chain; on resume, the unfinished part)."""
    if stage == "all":
        stages = [s.name for s in chain()]
        if resume and run is not None:
            stages = [s for s in stages if not run.is_done(s)]
        return stages
    if stage not in stage_names():
        raise UserError(f"unknown stage {stage!r}; expected all or one of {', '.join(stage_names())}")
    return [stage]


def stage_result(run: RunDir, stage: str, seconds: float | None = None) -> dict[str, Any]:
    """Summary of a stage read from its checkpoints (works whatever process trained it)."""
    from ich3d.runs.checkpoints import load_checkpoint

    best = load_checkpoint(run.best_ckpt(stage)) if run.best_ckpt(stage).is_file() else None
    last = load_checkpoint(run.last_ckpt(stage)) if run.last_ckpt(stage).is_file() else None
    info = (best or {}).get("ich3d", {})
    result: dict[str, Any] = {
        "stage": stage,
        "best_val_auc": info.get("val_auc"),
        "best_epoch": info.get("epoch"),
        "best_global_step": (best or {}).get("global_step"),
        "global_step": (last or {}).get("global_step"),
        "epochs": ((last or {}).get("epoch", -1) + 1) if last else 0,
        "best_ckpt": "best.ckpt" if best else None,
    }
    if seconds is not None:
        result["seconds"] = round(seconds, 1)
    return result


def _set_aside_metrics(stage_dir: Path, ckpt_path: str | None) -> Path | None:
    """On resume, move ``metrics.csv`` aside (Lightning's CSV logger would delete it)."""
    from ich3d.runs.run_dir import global_rank_from_env

    metrics = stage_dir / "metrics.csv"
    if ckpt_path is None or not metrics.is_file() or global_rank_from_env() != 0:
        return None
    from ich3d.runs.checkpoints import load_checkpoint

    kept = stage_dir / "metrics.before-resume.csv"
    metrics.replace(kept)
    step = int(load_checkpoint(ckpt_path).get("global_step", 0))
    (stage_dir / ".resume-step").write_text(str(step))
    return kept


def _merge_metrics(stage_dir: Path, kept: Path) -> None:
    """Put the rows logged before the resumed checkpoint back in front of the new ones."""
    import pandas as pd

    step_file = stage_dir / ".resume-step"
    step = int(step_file.read_text()) if step_file.is_file() else None
    old = pd.read_csv(kept)
    if step is not None and "step" in old.columns:
        old = old[old["step"] <= step]
    new_path = stage_dir / "metrics.csv"
    new = pd.read_csv(new_path) if new_path.is_file() else pd.DataFrame()
    merged = pd.concat([old, new], ignore_index=True, sort=False)
    columns = sorted(merged.columns, key=lambda c: (c not in ("epoch", "step"), c))
    merged[columns].to_csv(new_path, index=False)
    kept.unlink()
    step_file.unlink(missing_ok=True)


def run_stage(config: Config, run: RunDir, stage: str, *, resume: bool = False) -> dict[str, Any]:
    """Train one stage in ``run``; return (and write, on rank 0) its ``result.json``.

    Args:
        config: the experiment config.
        run: the run directory.
        stage: a declared stage (:mod:`ich3d.stages`).
        resume: continue from ``<stage>/last.ckpt`` when it exists.

    Raises:
        UserError: missing previous checkpoint, or existing checkpoints without ``resume``.
        KeyboardInterrupt: the fit was interrupted (checkpoints so far are kept).
    """
    import pytorch_lightning as pl

    from ich3d.config import dump_config
    from ich3d.runs.run_dir import global_rank_from_env
    from ich3d.tracking.loggers import build_loggers, finish_loggers, log_config

    quiet_lightning()
    stage_dir = run.stage_dir(stage)
    last = run.last_ckpt(stage)
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path is None and (last.is_file() or run.best_ckpt(stage).is_file()):
        raise UserError(
            f"{stage_dir} already holds checkpoints; continue it with --resume {run.path} "
            f"--stage {stage}, or use a new run id"
        )
    pl.seed_everything(config.seed, workers=True, verbose=False)
    module = build_module(config, stage)
    if ckpt_path is None and get_stage(stage).starts_from is not None:
        _init_from_previous(config, module, run, stage)
    elif ckpt_path is not None:
        _check_resume_inputs(config, ckpt_path, stage)
    datamodule = build_datamodule(config, stage)
    st = get_stage(stage)
    if st.is_volume and config.stages.get(stage).uses_cached_features(st.freeze_encoder):
        datamodule = _feature_datamodule(config, run, stage, module, datamodule, ckpt_path)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if global_rank_from_env() == 0:  # the config this stage trained with (the run's may change later)
        dump_config(config, stage_dir / "config.yaml")
    previous_metrics = _set_aside_metrics(stage_dir, ckpt_path)
    loggers = build_loggers(config, run.path, stage)
    log_config(loggers, config)
    trainer = build_trainer(config, stage, run, loggers)
    log.info(
        "stage %s: %s%s", stage, "resuming from " + ckpt_path if ckpt_path else "training", ""
    )
    start = time.perf_counter()
    status = "failed"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
        status = "aborted" if trainer.interrupted else "success"
    finally:
        finish_loggers(loggers, status)
        if previous_metrics is not None and trainer.is_global_zero:
            _merge_metrics(stage_dir, previous_metrics)
    if trainer.interrupted:
        raise KeyboardInterrupt(f"stage {stage} interrupted; continue with --resume {run.path}")
    if not run.best_ckpt(stage).is_file():
        raise UserError(f"stage {stage} wrote no best.ckpt (was validation skipped?)")
    result = stage_result(run, stage, time.perf_counter() - start)
    if trainer.is_global_zero:
        run.write_result(stage, result)
    log.info("stage %s done: best val AUC %s", stage, result["best_val_auc"])
    return result


def train(
    config: Config,
    stage: str = "all",
    *,
    run_id: str | None = None,
    resume_dir: str | Path | None = None,
    on_run_dir: Any = None,
) -> tuple[RunDir, dict[str, dict[str, Any]]]:
    """Validate, create/open the run directory and run the stages of ``--stage``.

    Everything that can be checked (config, data paths, model options, the previous
    stage's checkpoint) is checked before a run directory is created.

    Args:
        config: the experiment config (for a resume, the run's config plus overrides).
        stage: ``all`` or a declared stage (:mod:`ich3d.stages`).
        run_id: run id (default: a new one); an existing run id is reused, which lets
            ``--stage sequence --run-id X`` continue run X after its slice stage.
        resume_dir: continue this run directory (interrupted stage from ``last.ckpt``,
            then the later stages of ``all``).
        on_run_dir: called with the :class:`RunDir` once it exists (the CLI prints it).

    Returns:
        ``(run, {stage: result})`` for the stages run now.
    """
    from ich3d.runs.run_dir import (
        attach_log_file,
        create_run_dir,
        detach_log_file,
        open_run_dir,
        write_config,
    )

    resume = resume_dir is not None
    run = open_run_dir(resume_dir) if resume else None
    if run is None and run_id is not None:
        existing = RunDir(Path(config.run.root) / config.experiment / run_id)
        run = existing if existing.config_path.is_file() else None
    stages = plan_stages(stage, run, resume)
    check_data_paths(config)
    check_model(config)
    if stages:
        first = get_stage(stages[0])
        starts_fresh = not (resume and run is not None and run.last_ckpt(first.name).is_file())
        if first.starts_from is not None and starts_fresh:
            if run is None or not run.best_ckpt(first.starts_from).is_file():
                raise UserError(
                    f"stage {first.name!r} starts from {first.starts_from}/best.ckpt of an existing run: "
                    f"pass --run-id of that run or --resume RUN_DIR (or train --stage all)"
                )
            _starting_checkpoint(config, run, first)  # model and inputs agree: before any write
        elif not starts_fresh:
            assert run is not None
            _check_resume_inputs(config, run.last_ckpt(first.name), first.name)
        if not resume and run is not None:
            for s in stages:
                if run.last_ckpt(s).is_file() or run.best_ckpt(s).is_file():
                    raise UserError(
                        f"{run.stage_dir(s)} already holds checkpoints; continue it with "
                        f"--resume {run.path} --stage {s}, or use a new run id"
                    )
    if resume:
        assert run is not None
        write_config(run, config)
    else:
        run = create_run_dir(config, run_id)
    handler = attach_log_file(run)
    results: dict[str, dict[str, Any]] = {}
    try:
        if on_run_dir is not None:
            on_run_dir(run)
        if not stages:
            log.info("every stage of %s is done; nothing to resume", run.path)
        for s in stages:
            results[s] = run_stage(config, run, s, resume=resume)
    finally:
        detach_log_file(handler)
    return run, results
