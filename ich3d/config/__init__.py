"""Experiment configuration: one YAML file per experiment, validated into frozen dataclasses.

A config file is read as UTF-8 YAML (a :class:`yaml.SafeLoader` that refuses a key
given twice) and checked key by key against the
dataclasses below: an unknown or mistyped key is a :class:`~ich3d.errors.UserError`
that names the key path, the allowed keys and the closest match; a value of the wrong
type names the key, the expected type and the value. Every key has a default except
``data.cache_dir``; the defaults are the method's (Patel et al. 2019).

Every numeric setting has a declared range (field metadata, :func:`~ich3d.typecheck.in_range`):
a value outside it or not finite is an error naming the key, the range and the value,
raised when the config is read, before any run directory exists.

A file may start from others: ``base: ../patel2019.yaml`` (or a list) reads those
first, relative to the file, and the file's keys override theirs key by key
(:func:`~ich3d.config.files.compose`); cycles are refused.

Overrides given on the command line as ``dotted.key=value`` are applied to the raw
YAML after composition and before validation; the value is parsed with :func:`yaml.safe_load` (so ``1e-4``,
``null``, ``[a, b]`` and ``true`` mean what they mean in YAML).

Relative paths (``data.*_dir``, ``data.labels_csv``, ``data.splits_file``, ``run.root``)
are resolved against the **current working directory** at load time, the way the
shell would read them, and stored absolute; the resolved config saved in a run
directory therefore works from anywhere.

Schema (section: keys)::

    experiment: str              # name; runs go to <run.root>/<experiment>/<run-id>/
    seed: int                    # global seed (Lightning seed_everything)
    data:       cache_dir, images_dir, labels_csv, windows, split_fractions, split_seed,
                splits_file, folds, fold, min_slices, ingest_workers, depth_pool, label, targets,
                target_weights, num_workers, pin_memory, persistent_workers, augment_on,
                context_slices
    model:      encoder, encoder_args, head, head_args, slice_chunk, channels_last, compile,
                per_slice
    stages:     one section per declared stage (``ich3d train --list-stages``: slice,
                sequence, finetune, direct built in), each with optimizer, lr, weight_decay, momentum, batch_size, samples_per_epoch,
                max_epochs, early_stopping_patience, augment, precision,
                gradient_clip_val, accumulate_grad_batches, cached_features, feature_views,
                gradient_checkpointing, val_samples, select_by
    trainer:    accelerator, devices, strategy, num_nodes, precision, deterministic,
                benchmark, log_every_n_steps, enable_progress_bar, num_sanity_val_steps,
                limit_train_batches, limit_val_batches
    evaluation: split, percentile, target_sensitivity, confidence, svm_cs, svm_solver, batch_size,
                methods, slice_svm_cs, slice_svm_max_train, ae_code_dim, ae_hidden, ae_epochs, ae_lr
    tracking:   mode (offline|online|disabled), project, entity, group, tags, log_model
    run:        root
"""

from __future__ import annotations

from ich3d.config.files import (
    BASE_KEY,
    apply_overrides,
    compose,
    dump_config,
    load_config,
    make_dirs,
    parse_overrides,
    read_text,
    read_yaml,
    write_text,
)
from ich3d.config.schema import (
    Config,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    RunConfig,
    StageConfig,
    StagesConfig,
    TrackingConfig,
    TrainerConfig,
)
from ich3d.config.validate import check_ranges, config_from_dict, resolve_precision

__all__ = [
    "BASE_KEY",
    "DataConfig",
    "ModelConfig",
    "StageConfig",
    "StagesConfig",
    "TrainerConfig",
    "EvaluationConfig",
    "TrackingConfig",
    "RunConfig",
    "Config",
    "load_config",
    "compose",
    "config_from_dict",
    "check_ranges",
    "parse_overrides",
    "apply_overrides",
    "dump_config",
    "read_text",
    "read_yaml",
    "write_text",
    "make_dirs",
    "resolve_precision",
]
