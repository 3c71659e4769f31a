"""Networks: slice encoders, sequence heads and the volume model, behind a small registry.

From a model spec (what checkpoints store; :mod:`ich3d.models.build`), the one
builder training, resume and the checkpoint loaders use::

    from ich3d.models import build
    model = build({"encoder": {"name": "patel_cnn", "in_channels": 3}, "head": {"name": "bilstm"}})

By name, from parts (tests, benchmarks)::

    from ich3d.models import build_volume_model, build_slice_classifier, ENCODERS, HEADS

    model = build_volume_model({"name": "patel_cnn", "in_channels": 3}, {"name": "bilstm"})
    logits = model(volumes, lengths)  # (B, T, C, H, W), (B,) -> (B,)

``ENCODERS.names()`` / ``HEADS.names()`` list what is available: encoders
``patel_cnn``, ``small_cnn``, ``alexnet``, ``vgg16``, ``densenet201`` (the last
three in :mod:`ich3d.models.torchvision_encoders`, imported on first registry
use); heads ``bilstm``, ``bigru``, ``lstm``, ``gru``.
"""

from __future__ import annotations

from ich3d.models.build import ModelOption, build, build_slice, register_option
from ich3d.models.registry import (
    ENCODERS,
    HEADS,
    Registry,
    build_encoder,
    build_head,
    count_parameters,
)
from ich3d.models.sequence import BiGRUHead, BiLSTMHead, GRUHead, LSTMHead, RecurrentHead
from ich3d.models.slice_cnn import PatelSliceCNN, SliceClassifier
from ich3d.models.small_cnn import DawudSmallCNN
from ich3d.models.volume import VolumeClassifier, build_slice_classifier, build_volume_model

__all__ = [
    "build",
    "build_slice",
    "ModelOption",
    "register_option",
    "Registry",
    "ENCODERS",
    "HEADS",
    "build_encoder",
    "build_head",
    "count_parameters",
    "PatelSliceCNN",
    "SliceClassifier",
    "DawudSmallCNN",
    "RecurrentHead",
    "BiLSTMHead",
    "BiGRUHead",
    "LSTMHead",
    "GRUHead",
    "VolumeClassifier",
    "build_volume_model",
    "build_slice_classifier",
]
