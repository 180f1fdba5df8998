"""Displacement fields defined on a coarse grid, (tri)linearly interpolated to full resolution.

Couteaux et al., §3.2.2: "we chose Ω to be the set of elastic deformations defined by
displacement vectors on a low-resolution grid, and trilinearly interpolated between vectors. [...]
the registrar is a fully-convolutional network, down-sampling the input by a factor 16 [...]. We
then resample the resulting deformation field to full resolution before warping. Both the warping
and the deformation field resampling are done using trilinear interpolation."

Convention (the paper gives none): a coarse grid of ``c`` vectors per axis covers ``c * factor``
full-resolution voxels, one vector at the centre of each ``factor``-voxel cell; full-resolution
voxel ``i`` sits at coarse coordinate ``(i + 0.5) / factor - 0.5`` and takes the linear
interpolation of its neighbouring vectors, clamped at the borders (TensorFlow's
``resize(..., half_pixel_centers=True)``; equals
``scipy.ndimage.zoom(field, factor, order=1, mode="nearest", grid_mode=True)`` per component).
The vectors are displacements in full-resolution voxels (they are not rescaled).
"""

from __future__ import annotations

import keras
from keras import ops

from ._checks import Float32UnderMixedPrecision



def upsample_field(field, factor):
    """Linear (bi/trilinear) interpolation of a coarse field to ``factor`` times its size.

    Args:
        field: ``(batch, *coarse, C)`` float tensor (``coarse`` = ``(h, w)`` or ``(d, h, w)``),
            e.g. a displacement field with ``C = ndim`` components in full-resolution voxels.
        factor: positive integer, the same along every axis (16 in §3.2.2).
    Returns:
        ``(batch, *(coarse * factor), C)`` tensor (cell-centred alignment, border clamping; see
        the module docstring).
    Raises:
        ValueError: ``field`` not 2-D or 3-D batched channels-last, or ``factor`` not a
            positive integer.

    Source: Couteaux et al., §3.2.2 (trilinear resampling of the deformation field).
    """
    rank = len(field.shape)
    if rank not in (4, 5):
        raise ValueError(f"upsample_field: field must be (batch, h, w, C) or (batch, d, h, w, C), "
                         f"got shape {tuple(field.shape)}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"upsample_field: factor must be a positive integer, got {factor!r}")
    field = ops.convert_to_tensor(field)
    if factor == 1:
        return field
    # separable: one (full x coarse) interpolation matrix per axis, applied in turn
    letters = "abc"[: rank - 2]
    for axis in range(rank - 2):
        matrix = _interpolation_matrix(ops.shape(field)[1 + axis], factor, field.dtype)
        src = "n" + letters + "z"
        dst = src.replace(letters[axis], "i")
        field = ops.einsum(f"i{letters[axis]},{src}->{dst}", matrix, field)
    return field


def _interpolation_matrix(coarse, factor, dtype):
    """``(coarse * factor, coarse)`` weights of the cell-centred linear interpolation, clamped."""
    n = coarse * factor
    pos = (ops.arange(n, dtype=dtype) + 0.5) / factor - 0.5
    pos = ops.clip(pos, 0.0, ops.cast(coarse - 1, dtype))
    low = ops.floor(pos)
    frac = pos - low
    low = ops.cast(low, "int32")
    high = ops.minimum(low + 1, coarse - 1)
    return (ops.one_hot(low, coarse, dtype=dtype) * (1.0 - frac)[:, None]
            + ops.one_hot(high, coarse, dtype=dtype) * frac[:, None])


@keras.saving.register_keras_serializable(package="regseg")
class UpsampleField(Float32UnderMixedPrecision, keras.layers.Layer):
    """Keras layer wrapping :func:`upsample_field`.

    Input ``(batch, *coarse, C)`` (static or dynamic spatial sizes); output
    ``(batch, *(coarse * factor), C)``; no weights.

    Args:
        factor: positive integer (16 in Couteaux et al. §3.2.2).
    Raises:
        ValueError: ``factor`` not a positive integer (at construction); bad input (at call).
    """

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"UpsampleField: factor must be a positive integer, got {factor!r}")
        self.factor = factor

    def call(self, field):
        return upsample_field(field, self.factor)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *[None if s is None else s * self.factor
                                  for s in input_shape[1:-1]], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor)
        return config
