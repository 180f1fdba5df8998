"""Displacements in normalised ``[-1, 1]`` coordinates and their conversion to voxels.

PyTorch's ``grid_sample(align_corners=True)`` (used by DeepAtlas' and VoxelMorph's released
code) reads sampling positions in coordinates where the first voxel centre of each axis is -1
and the last is +1; a displacement predicted in those units converts to voxels of an axis with
``n`` voxels by the factor ``(n - 1) / 2``.  DeepAtlas §3: "when computing L_r from the
displacements, the image coordinates are scaled to [-1, 1] for each dimension".

This suite warps with voxel displacements (:mod:`regseg.layers.spatial_transformer`,
component ``k`` along spatial axis ``k``); :class:`NormalisedToVoxels` converts a network's
normalised output.  Written with ``keras.ops`` only.
"""

from __future__ import annotations

import keras
from keras import ops

from ._checks import Float32UnderMixedPrecision

__all__ = ["voxel_scale", "normalised_to_voxels", "voxels_to_normalised", "NormalisedToVoxels"]


def voxel_scale(spatial_shape) -> tuple[float, ...]:
    """Voxels per normalised unit along each axis, ``(n_k - 1) / 2``.

    Args:
        spatial_shape: ``(D, H, W)`` (or ``(H, W)``) voxels, every size >= 2.
    Returns:
        tuple of floats, one per axis.
    Raises:
        ValueError: a size < 2 or not an int.

    >>> voxel_scale((5, 3))
    (2.0, 1.0)
    """
    out = []
    for n in spatial_shape:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"spatial sizes must be ints >= 2 to define [-1, 1] coordinates, got "
                             f"{tuple(spatial_shape)}")
        out.append((n - 1) / 2.0)
    return tuple(out)


def normalised_to_voxels(displacement, spatial_shape=None):
    """Convert a ``(batch, *spatial, ndim)`` displacement from ``[-1, 1]`` units to voxels.

    Args:
        displacement: normalised displacement, component ``k`` along spatial axis ``k``.
        spatial_shape: the grid's ``(D, H, W)``; default: the tensor's static spatial shape.
    Returns:
        tensor of the same shape, in voxels.
    Raises:
        ValueError: see :func:`voxel_scale`; a last axis that is not ``ndim``.
    """
    displacement = ops.convert_to_tensor(displacement)
    shape = tuple(displacement.shape[1:-1]) if spatial_shape is None else tuple(spatial_shape)
    scale = voxel_scale(shape)
    if displacement.shape[-1] is not None and displacement.shape[-1] != len(scale):
        raise ValueError(f"displacement has {displacement.shape[-1]} components for a "
                         f"{len(scale)}-D grid")
    return displacement * ops.cast(ops.convert_to_tensor(scale), displacement.dtype)


def voxels_to_normalised(displacement, spatial_shape=None):
    """Inverse of :func:`normalised_to_voxels` (voxels to ``[-1, 1]`` units)."""
    displacement = ops.convert_to_tensor(displacement)
    shape = tuple(displacement.shape[1:-1]) if spatial_shape is None else tuple(spatial_shape)
    scale = voxel_scale(shape)
    return displacement / ops.cast(ops.convert_to_tensor(scale), displacement.dtype)


@keras.saving.register_keras_serializable(package="regseg")
class NormalisedToVoxels(Float32UnderMixedPrecision, keras.layers.Layer):
    """Layer form of :func:`normalised_to_voxels` for a static spatial shape.

    Input ``(batch, D, H, W, 3)`` displacement in ``[-1, 1]`` units; output the same in voxels.

    Raises:
        ValueError: a dynamic spatial shape or a size < 2 (at call).

    >>> import numpy as np
    >>> NormalisedToVoxels()(np.ones((1, 5, 3, 2), "float32"))[0, 0, 0].numpy().tolist()
    [2.0, 1.0]
    """

    def call(self, displacement):
        if any(s is None for s in displacement.shape[1:-1]):
            raise ValueError("NormalisedToVoxels needs a static spatial shape, got "
                             f"{tuple(displacement.shape)}")
        return normalised_to_voxels(displacement)

    def compute_output_shape(self, input_shape):
        return input_shape
