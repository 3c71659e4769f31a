"""MONAI augmentation of METHOD.md section 1: original, rotated, mirrored or shifted, 1/4 each.

Each sample goes through exactly one branch of a ``monai.transforms.OneOf``
with equal weights:

0. original (``Identity``);
1. rotated by an angle uniform in [-25, 25] degrees (``RandRotate``, radians);
   in 3D the rotation axis is one of the three array axes, chosen with equal
   probability (a nested ``OneOf`` of three ``RandRotate``);
2. mirrored over the vertical axis: a left-right flip of the image columns
   (``Flip`` on the last spatial axis; columns run along the patient's
   right-left axis in axial CT);
3. shifted by a uniform [-15, 15] pixels in x and y (2D) or voxels along all
   three axes (3D) (``RandAffine`` with ``translate_range``).

Sizes are in pixels/voxels of the array the transform sees: the cached,
2x2 max-filtered slice (and, in volume mode, the depth-pooled volume, whose
slices are much thicker than a pixel is wide; a rotation about an in-plane
axis is therefore a rotation in voxel space, not in millimetres).

Input convention: channel-first float tensors ``(1, H, W)`` or ``(1, T, H, W)``
holding **HU + 1024** (so air is 0). Rotation and shift use bilinear
interpolation and fill uncovered pixels with zeros, i.e. air; the data modules
subtract 1024 again and window afterwards. Augmenting the single HU channel
before windowing is cheaper than augmenting C windowed channels and keeps the
fill exact for any window.

Seeding: :func:`augment` sets the transform's random state from an explicit
per-sample seed before each call (:func:`reseed`), so results do not depend on
the DataLoader worker that runs it.

Where it runs: in the DataLoader workers (``data.augment_on: loader``, the CPU
default) or after the batch is on the accelerator (``device``):
:func:`augment_batch` applies the same transform to each sample of a batch of
HU with the sample's seed, so both places take the same branch with the same
parameters and work on HU before windowing in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, Flip, Identity, OneOf, RandAffine, Randomizable, RandRotate

__all__ = [
    "BRANCHES",
    "MAX_ROTATION_DEG",
    "MAX_SHIFT_PX",
    "AIR_OFFSET",
    "build_augment_2d",
    "build_augment_3d",
    "augment",
    "augment_batch",
    "chosen_branch",
    "reseed",
]

#: Branch names in the order of the ``OneOf``.
BRANCHES: tuple[str, str, str, str] = ("original", "rotate", "mirror", "shift")
MAX_ROTATION_DEG = 25.0
MAX_SHIFT_PX = 15.0
#: Added to HU before augmentation so that air (-1024 HU) is 0, the fill value.
AIR_OFFSET = 1024.0


def _device(device: torch.device | str | None) -> torch.device | None:
    return None if device is None else torch.device(device)


def build_augment_2d(
    max_rotation_deg: float = MAX_ROTATION_DEG,
    max_shift_px: float = MAX_SHIFT_PX,
    device: torch.device | str | None = None,
) -> OneOf:
    """Build the 2D augmentation for channel-first ``(C, H, W)`` tensors.

    Args:
        max_rotation_deg: rotation range [-x, x] in degrees (default 25).
        max_shift_px: shift range [-x, x] in pixels along each in-plane axis (default 15).
        device: where the shift's sampling grid is built (default None: the CPU;
            give the images' device when they live on an accelerator). Rotation
            and mirror follow the image's device by themselves.
    """
    rot = math.radians(max_rotation_deg)
    return OneOf(
        [
            Identity(),
            RandRotate(
                range_x=rot, prob=1.0, keep_size=True, mode="bilinear", padding_mode="zeros"
            ),
            Flip(spatial_axis=1),
            RandAffine(
                prob=1.0,
                translate_range=(max_shift_px, max_shift_px),
                mode="bilinear",
                padding_mode="zeros",
                device=_device(device),
            ),
        ],
        weights=[0.25, 0.25, 0.25, 0.25],
    )


def build_augment_3d(
    max_rotation_deg: float = MAX_ROTATION_DEG,
    max_shift_px: float = MAX_SHIFT_PX,
    max_shift_slices: float | None = None,
    device: torch.device | str | None = None,
) -> OneOf:
    """Build the 3D augmentation for channel-first ``(C, T, H, W)`` tensors.

    Args:
        max_rotation_deg: rotation range [-x, x] in degrees about one randomly
            chosen array axis (default 25).
        max_shift_px: shift range [-x, x] in voxels along H and W (default 15).
        max_shift_slices: shift range [-x, x] in slices along T (default None:
            ``max_shift_px``, as in METHOD.md; note that 15 pooled slices is
            half of a typical 30-slice pooled volume).
        device: where the shift's sampling grid is built (see :func:`build_augment_2d`).
    """
    shift_t = max_shift_px if max_shift_slices is None else max_shift_slices
    rot = math.radians(max_rotation_deg)

    def _rotate(**ranges: float) -> RandRotate:
        return RandRotate(**ranges, prob=1.0, keep_size=True, mode="bilinear", padding_mode="zeros")

    rotate_one_axis = OneOf(
        [_rotate(range_z=rot), _rotate(range_y=rot), _rotate(range_x=rot)],  # about T, H, W axis
        weights=[1 / 3, 1 / 3, 1 / 3],
    )
    return OneOf(
        [
            Identity(),
            rotate_one_axis,
            Flip(spatial_axis=2),
            RandAffine(
                prob=1.0,
                translate_range=(shift_t, max_shift_px, max_shift_px),
                mode="bilinear",
                padding_mode="zeros",
                device=_device(device),
            ),
        ],
        weights=[0.25, 0.25, 0.25, 0.25],
    )


def reseed(transform: object, seed: int) -> None:
    """Seed every random state of a transform tree from ``seed``, in place.

    Same role as MONAI's ``set_random_state(seed=...)`` (children get seeds drawn
    from the parent's state), but re-seeds the existing ``RandomState`` objects
    instead of building new ones: about 100x cheaper, which matters when every
    sample is seeded. Children are ``Compose.transforms`` and randomizable
    attributes (e.g. the affine-grid sampler inside ``RandAffine``).
    """
    if not isinstance(transform, Randomizable):
        return
    if "R" not in vars(transform):  # class-level default state is shared: give it its own
        transform.R = np.random.RandomState()
    transform.R.seed(int(seed) % 2**32)
    children: list[object] = []
    if isinstance(transform, Compose):
        children += list(transform.transforms)
    children += [v for k, v in vars(transform).items() if k != "R" and isinstance(v, Randomizable)]
    for child in children:
        if isinstance(child, Randomizable):
            reseed(child, int(transform.R.randint(2**32 - 1, dtype="uint32")))


def augment(transform: OneOf, image: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply ``transform`` to ``image`` with its random state set from ``seed``.

    Args:
        transform: a pipeline from :func:`build_augment_2d` / :func:`build_augment_3d`.
        image: channel-first float tensor holding HU + :data:`AIR_OFFSET`.
        seed: per-sample seed (0 <= seed < 2**32).

    Returns:
        A plain ``torch.Tensor`` (MONAI's MetaTensor is unwrapped), same shape.
    """
    reseed(transform, seed)
    track = get_track_meta()
    set_track_meta(False)  # plain tensors in and out: MetaTensor bookkeeping costs more than a flip
    try:
        out = transform(image)
    finally:
        set_track_meta(track)
    if hasattr(out, "as_tensor"):
        out = out.as_tensor()
    return torch.as_tensor(out)


def augment_batch(
    transform: OneOf,
    hu: torch.Tensor,
    seeds: torch.Tensor | Sequence[int],
    lengths: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Augment each sample of a batch of HU with its own seed, on the batch's device.

    Sample ``i`` becomes exactly what the DataLoader path gives for the same
    seed: ``augment(transform, hu[i] + AIR_OFFSET, seeds[i]) - AIR_OFFSET``
    (one MONAI call per sample: the branch and its parameters differ from
    sample to sample, so they are not batched). Volumes padded along T are
    augmented on their true length only and stay padded with air.

    Args:
        transform: a pipeline from :func:`build_augment_2d` / :func:`build_augment_3d`
            (built for ``hu``'s device).
        hu: float HU, ``(B, H, W)`` slices or ``(B, T, H, W)`` volumes.
        seeds: ``B`` integer per-sample seeds (0 <= seed < 2**32), a tensor or a list
            (a list, kept on the host, saves a device synchronisation).
        lengths: ``B`` true lengths of padded volumes (None: every sample whole).

    Returns:
        Float HU of the same shape and device; the padding of volumes is -1024 HU (air).
    """
    x = hu.float()
    seeds = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
    if lengths is None:
        out = torch.empty_like(x)
        ends = [x.shape[1]] * len(seeds)
    else:
        out = torch.full_like(x, -AIR_OFFSET)
        ends = lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)
    for i, (seed, n) in enumerate(zip(seeds, ends, strict=True)):
        sample = x[i, : int(n)]
        out[i, : int(n)] = augment(transform, sample[None] + AIR_OFFSET, int(seed))[0] - AIR_OFFSET
    return out


def chosen_branch(transform: OneOf, seed: int) -> int:
    """Return the branch index (see :data:`BRANCHES`) that :func:`augment` takes for ``seed``.

    Replays the first draw ``OneOf`` makes after its state is set; used by the
    tests and for auditing the equal-probability rule.
    """
    reseed(transform, seed)
    return int(transform.R.multinomial(1, transform.weights).argmax())
