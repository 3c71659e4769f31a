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
per-sample seed before each call, so results do not depend on the DataLoader
worker that runs it.
"""

from __future__ import annotations

import math

import torch
from monai.transforms import Flip, Identity, OneOf, RandAffine, RandRotate

__all__ = [
    "BRANCHES",
    "MAX_ROTATION_DEG",
    "MAX_SHIFT_PX",
    "AIR_OFFSET",
    "build_augment_2d",
    "build_augment_3d",
    "augment",
    "chosen_branch",
]

#: Branch names in the order of the ``OneOf``.
BRANCHES: tuple[str, str, str, str] = ("original", "rotate", "mirror", "shift")
MAX_ROTATION_DEG = 25.0
MAX_SHIFT_PX = 15.0
#: Added to HU before augmentation so that air (-1024 HU) is 0, the fill value.
AIR_OFFSET = 1024.0


def build_augment_2d(
    max_rotation_deg: float = MAX_ROTATION_DEG, max_shift_px: float = MAX_SHIFT_PX
) -> OneOf:
    """Build the 2D augmentation for channel-first ``(C, H, W)`` tensors.

    Args:
        max_rotation_deg: rotation range [-x, x] in degrees (default 25).
        max_shift_px: shift range [-x, x] in pixels along each in-plane axis (default 15).
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
            ),
        ],
        weights=[0.25, 0.25, 0.25, 0.25],
    )


def build_augment_3d(
    max_rotation_deg: float = MAX_ROTATION_DEG, max_shift_px: float = MAX_SHIFT_PX
) -> OneOf:
    """Build the 3D augmentation for channel-first ``(C, T, H, W)`` tensors.

    Args:
        max_rotation_deg: rotation range [-x, x] in degrees about one randomly
            chosen array axis (default 25).
        max_shift_px: shift range [-x, x] in voxels along each of the three axes (default 15).
    """
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
                translate_range=(max_shift_px, max_shift_px, max_shift_px),
                mode="bilinear",
                padding_mode="zeros",
            ),
        ],
        weights=[0.25, 0.25, 0.25, 0.25],
    )


def augment(transform: OneOf, image: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply ``transform`` to ``image`` with its random state set from ``seed``.

    Args:
        transform: a pipeline from :func:`build_augment_2d` / :func:`build_augment_3d`.
        image: channel-first float tensor holding HU + :data:`AIR_OFFSET`.
        seed: per-sample seed (0 <= seed < 2**32).

    Returns:
        A plain ``torch.Tensor`` (MONAI's MetaTensor is unwrapped), same shape.
    """
    transform.set_random_state(seed=int(seed))
    out = transform(image)
    if hasattr(out, "as_tensor"):
        out = out.as_tensor()
    return torch.as_tensor(out)


def chosen_branch(transform: OneOf, seed: int) -> int:
    """Return the branch index (see :data:`BRANCHES`) that :func:`augment` takes for ``seed``.

    Replays the first draw ``OneOf`` makes after its state is set; used by the
    tests and for auditing the equal-probability rule.
    """
    transform.set_random_state(seed=int(seed))
    return int(transform.R.multinomial(1, transform.weights).argmax())
