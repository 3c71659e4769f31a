"""MONAI augmentation of docs/method.md section 1: original, rotated, mirrored or shifted, 1/4 each.

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

Where it runs (``data.augment_on``): :func:`augment` applies the transform to
one sample in a DataLoader worker (``loader``). For ``device``, the worker only
draws: :func:`augment_params` makes exactly the random draws that
:func:`augment` makes for the seed (MONAI's own ``randomize``) and returns the
branch and its affine matrix, built as MONAI builds them; after the transfer,
:func:`augment_batch` applies a whole batch on its device, one call per branch
(MONAI's ``AffineTransform`` layer for rotations, ``RandAffine``'s grid and
``Resample``'s arithmetic for shifts) instead of one MONAI call per sample,
whose Python overhead (1-4 ms per rotation or shift on this CPU) would bound
the GPU's input rate. Same HU + 1024 convention, same fill, same branch and
parameters, HU augmented before windowing: the images agree with
:func:`augment`'s to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.networks.layers import AffineTransform
from monai.transforms import Compose, Flip, Identity, OneOf, RandAffine, Randomizable, RandRotate
from monai.transforms.utils import create_grid, create_rotate, create_translate, resolves_modes
from monai.utils import get_equivalent_dtype

__all__ = [
    "BRANCHES",
    "MAX_ROTATION_DEG",
    "MAX_SHIFT_PX",
    "AIR_OFFSET",
    "build_augment_2d",
    "build_augment_3d",
    "augment",
    "augment_params",
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
    max_rotation_deg: float = MAX_ROTATION_DEG,
    max_shift_px: float = MAX_SHIFT_PX,
    max_shift_slices: float | None = None,
) -> OneOf:
    """Build the 3D augmentation for channel-first ``(C, T, H, W)`` tensors.

    Args:
        max_rotation_deg: rotation range [-x, x] in degrees about one randomly
            chosen array axis (default 25).
        max_shift_px: shift range [-x, x] in voxels along H and W (default 15).
        max_shift_slices: shift range [-x, x] in slices along T (default None:
            ``max_shift_px``, as in docs/method.md; note that 15 pooled slices is
            half of a typical 30-slice pooled volume).
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


def chosen_branch(transform: OneOf, seed: int) -> int:
    """Return the branch index (see :data:`BRANCHES`) that :func:`augment` takes for ``seed``.

    Replays the first draw ``OneOf`` makes after its state is set; used by the
    tests and for auditing the equal-probability rule.
    """
    reseed(transform, seed)
    return int(transform.R.multinomial(1, transform.weights).argmax())


def _drawn(transform: OneOf) -> tuple[int, object]:
    """After :func:`reseed`: the branch ``OneOf`` takes and the leaf transform it runs (the
    draws ``OneOf.__call__`` makes, nested ``OneOf`` included)."""
    branch = int(transform.R.multinomial(1, transform.weights).argmax())
    leaf = transform.transforms[branch]
    while isinstance(leaf, OneOf):
        leaf = leaf.transforms[int(leaf.R.multinomial(1, leaf.weights).argmax())]
    return branch, leaf


def augment_params(transform: OneOf, seed: int, spatial_shape: Sequence[int]) -> tuple[int, np.ndarray]:
    """The branch and affine matrix :func:`augment` would apply for ``seed``, without applying it.

    Makes the same draws from the same states as :func:`augment` (MONAI's own
    ``randomize`` of the chosen transform) and builds the matrix as MONAI does:
    for a rotation, ``monai.transforms.spatial.functional.rotate``'s
    (about the image centre, ``keep_size``), for a shift, ``RandAffineGrid``'s
    translation; the identity for the original and the mirror.

    Args:
        transform: a pipeline from :func:`build_augment_2d` / :func:`build_augment_3d`.
        seed: per-sample seed (0 <= seed < 2**32).
        spatial_shape: ``(H, W)`` or ``(T, H, W)`` of the sample.

    Returns:
        ``(branch, matrix)``: the index in :data:`BRANCHES` and a float32
        ``(n + 1, n + 1)`` matrix, ``n = len(spatial_shape)``.
    """
    reseed(transform, seed)
    branch, leaf = _drawn(transform)
    n = len(spatial_shape)
    matrix = np.eye(n + 1)
    if isinstance(leaf, RandRotate):
        leaf.randomize()
        angle = (leaf.x,) if n == 2 else (leaf.x, leaf.y, leaf.z)
        shape = np.asarray(spatial_shape, dtype=int)
        rot = create_rotate(n, angle)
        matrix = create_translate(n, ((shape - 1) / 2).tolist()) @ rot @ create_translate(n, (-(shape - 1) / 2).tolist())
    elif isinstance(leaf, RandAffine):
        leaf.randomize()
        g = leaf.rand_affine_grid
        g.randomize()  # RandAffine.__call__ passes randomize on to its grid: the grid draws twice
        if g.rotate_params or g.shear_params or g.scale_params:
            raise ValueError("augment_params supports shift-only RandAffine")
        matrix[:n, n] = g.translate_params
    elif not isinstance(leaf, (Identity, Flip)):
        raise TypeError(f"augment_params does not know {type(leaf).__name__}")
    return branch, matrix.astype(np.float32)


def _leaf(transform: object, kind: type) -> object:
    """The first transform of type ``kind`` in a ``OneOf`` tree."""
    if isinstance(transform, kind):
        return transform
    for child in getattr(transform, "transforms", ()):
        found = _leaf(child, kind)
        if found is not None:
            return found
    return None


def augment_batch(
    transform: OneOf,
    hu: torch.Tensor,
    branches: torch.Tensor | Sequence[int],
    matrices: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Apply per-sample branches and matrices (:func:`augment_params`) to a batch of HU, batched.

    Sample ``i`` becomes ``augment(transform, hu[i] + AIR_OFFSET, seed_i) - AIR_OFFSET``
    to float rounding, where ``(branches[i], matrices[i])`` came from
    ``augment_params(transform, seed_i, shape_i)``. The samples of one branch
    (and, for volumes, one length) go through one call: a flip, MONAI's
    ``AffineTransform`` (what ``Rotate`` runs) or ``grid_sample`` on the grid
    ``RandAffine``/``Resample`` would build. Volumes padded along T are
    augmented on their true length and stay padded with air.

    Args:
        transform: the pipeline the parameters were drawn from (for its modes and flip axis).
        hu: float HU on any device, ``(B, H, W)`` slices or ``(B, T, H, W)`` volumes.
        branches: ``B`` branch indices (:data:`BRANCHES`).
        matrices: ``(B, n + 1, n + 1)`` matrices, ``n`` = spatial dimensions.
        lengths: ``B`` true lengths of padded volumes (None: every sample whole).

    Returns:
        Float HU of the same shape and device.
    """
    x = hu.float()
    b = branches.tolist() if isinstance(branches, torch.Tensor) else list(branches)
    if len(b) != x.shape[0] or matrices.shape[0] != x.shape[0]:
        raise ValueError(f"{len(b)} branches and {matrices.shape[0]} matrices for a batch of {x.shape[0]}")
    ends = [x.shape[1]] * len(b) if lengths is None else (
        lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)
    )
    out = x.clone()
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (br, n_t) in enumerate(zip(b, ends, strict=True)):
        if br != 0:  # the original stays as it is
            groups.setdefault((int(br), int(n_t)), []).append(i)
    flip, rot, shift = _leaf(transform, Flip), _leaf(transform, RandRotate), _leaf(transform, RandAffine)
    for (br, n_t), rows in groups.items():
        idx = torch.as_tensor(rows, device=x.device)
        sample = x[idx, :n_t] + AIR_OFFSET  # (k, *S)
        spatial = tuple(sample.shape[1:])
        theta = matrices[idx.to(matrices.device)].to(device=x.device, dtype=torch.float32)
        if br == 2:  # mirror: MONAI Flip on the channel-first sample flips dims spatial_axis + 1
            axes = [a + 1 for a in np.atleast_1d(flip.spatial_axis).tolist()]  # type: ignore[union-attr]
            res = torch.flip(sample, dims=axes)
        elif br == 1:  # rotation: monai.transforms.spatial.functional.rotate, batched
            _, mode, pad, _ = resolves_modes(rot.mode, rot.padding_mode)  # type: ignore[union-attr]
            xform = AffineTransform(
                normalized=False, mode=mode, padding_mode=pad, align_corners=rot.align_corners, reverse_indexing=True  # type: ignore[union-attr]
            )
            res = xform(sample[:, None], theta, spatial_size=spatial)[:, 0].float()
        elif br == 3:  # shift: RandAffineGrid's grid, then Resample's normalisation and grid_sample
            nd = len(spatial)
            grid = torch.as_tensor(create_grid(spatial, device=x.device, backend="torch"), dtype=torch.float32)
            grid = torch.matmul(theta, grid.reshape(nd + 1, -1)).reshape(len(rows), nd + 1, *spatial)
            resampler = shift.resampler  # type: ignore[union-attr]
            dtype = get_equivalent_dtype(resampler.dtype, torch.Tensor)  # Resample computes in float64
            grid = torch.movedim(grid[:, list(range(nd - 1, -1, -1))], 1, -1).to(dtype)
            for i, dim in enumerate(spatial[::-1]):
                grid[..., i] *= 2.0 / max(2, dim)
            _, mode, pad, _ = resolves_modes(shift.mode, shift.padding_mode)  # type: ignore[union-attr]
            res = torch.nn.functional.grid_sample(
                sample[:, None].to(dtype), grid, mode=mode, padding_mode=pad, align_corners=resampler.align_corners
            )[:, 0].float()
        else:
            raise ValueError(f"unknown branch {br}")
        out[idx, :n_t] = res - AIR_OFFSET
    return out
