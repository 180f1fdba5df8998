"""Affine transforms applied to dense sampling grids.

U-ReSNet (Estienne et al. 2019, §3.1, eq. 1) combines a linear and an elastic
registration: the deformed image is ``W(M, Phi x A)``, the affine matrix ``A``
(3x4 in 3-D) multiplying the dense deformable sampling coordinates ``Phi``.
The network predicts 12 numbers Delta (a Dense layer initialised to zero, §4
"initialize them with zeros weights and a bias corresponding to the identity
transformation") read row-major as ``A = I + reshape(Delta, (3, 4))``, so zero
outputs give the identity.

Coordinates: voxel units.  ``centre="corner"`` (default) applies ``A`` about
voxel (0, 0, 0), as the released U-ReSNet and Christodoulidis code do (the
paper is silent): ``x' = A[:, :n] x + A[:, n]``.  ``centre="centre"`` applies
it about the volume centre ``c = (size - 1) / 2``:
``x' = A[:, :n] (x - c) + A[:, n] + c``, which decouples rotation from
translation and is offered for users' own models.

The registration pyramid (Gunnarsson et al. 2020) also uses an affine module
(global pooling + Dense(12)); it can reuse :class:`AffineComposition`.
"""

from __future__ import annotations

import keras
from keras import ops

from ._checks import check_option

_CENTRES = ("corner", "centre")


def affine_matrix(parameters, ndim):
    """Return ``A = I + reshape(parameters, (ndim, ndim + 1))``.

    Args:
        parameters: ``(batch, ndim * (ndim + 1))`` (12 in 3-D, 6 in 2-D),
            row-major; translations (last column) in voxels.
    Returns:
        ``(batch, ndim, ndim + 1)`` tensor.
    Raises:
        ValueError: wrong number of parameters.
    """
    expected = ndim * (ndim + 1)
    if parameters.shape[-1] is not None and parameters.shape[-1] != expected:
        raise ValueError(
            f"an affine in {ndim}-D needs {expected} parameters, got {parameters.shape[-1]}")
    eye = ops.eye(ndim, ndim + 1, dtype=parameters.dtype)
    return ops.reshape(parameters, (-1, ndim, ndim + 1)) + eye[None]


def apply_affine_to_grid(parameters, grid, centre="corner"):
    """Compose an affine with a dense sampling grid: ``grid' = A . [grid; 1]``.

    Args:
        parameters: ``(batch, ndim * (ndim + 1))`` affine parameters Delta,
            ``A = I + Delta`` (see :func:`affine_matrix`).
        grid: ``(batch, *spatial, ndim)`` sampling grid, voxels.
        centre: ``"corner"`` (default, released code) or ``"centre"``.
    Returns:
        ``(batch, *spatial, ndim)`` sampling grid, voxels.
    Raises:
        ValueError: unknown ``centre`` (the message names the option and its
            allowed values), wrong parameter count, or ``centre="centre"``
            with a dynamic spatial shape.

    Source: Estienne et al. 2019, §3.1, eq. 1 (``Phi x A``).

    >>> shifted = apply_affine_to_grid(np.float32([[0, 0, 2, 0, 0, 0]]), np.zeros((1, 1, 1, 2)))
    >>> np.asarray(shifted).ravel().tolist()
    [2.0, 0.0]
    """
    check_option("centre", centre, _CENTRES)
    ndim = grid.shape[-1]
    matrix = affine_matrix(ops.cast(parameters, grid.dtype), ndim)
    linear = matrix[:, :, :ndim]  # (B, n, n)
    translation = matrix[:, :, ndim]  # (B, n)
    spatial_rank = len(grid.shape) - 2
    if centre == "centre":
        spatial = grid.shape[1:-1]
        if any(s is None for s in spatial):
            raise ValueError("centre='centre' needs a static spatial shape")
        c = ops.convert_to_tensor([(s - 1) / 2.0 for s in spatial], dtype=grid.dtype)
        grid = grid - c
        translation = translation + c[None]
    # x'_i = sum_j L_ij x_j + t_i, broadcast over the spatial axes
    lin = ops.reshape(linear, (-1,) + (1,) * spatial_rank + (ndim, ndim))
    out = ops.sum(lin * grid[..., None, :], axis=-1)
    return out + ops.reshape(translation, (-1,) + (1,) * spatial_rank + (ndim,))


@keras.saving.register_keras_serializable(package="regseg")
class AffineComposition(keras.layers.Layer):
    """Keras layer: ``[parameters (B, n(n+1)), grid (B, *spatial, n)] -> A . [grid; 1]``.

    Source: Estienne et al. 2019, §3.1, eq. 1 (``Phi x A``).  Zero parameters
    give back ``grid``.

    Args:
        centre: ``"corner"`` (default) or ``"centre"``; see module docstring.
    Raises:
        ValueError: unknown ``centre`` (at construction; names the option and
            its allowed values) or wrong parameter count (at call).

    >>> float(AffineComposition()([np.zeros((1, 6)), np.ones((1, 3, 4, 2))])[0, 0, 0, 0])
    1.0
    """

    def __init__(self, centre="corner", **kwargs):
        super().__init__(**kwargs)
        check_option("centre", centre, _CENTRES)
        self.centre = centre

    def call(self, inputs):
        parameters, grid = inputs
        return apply_affine_to_grid(parameters, grid, self.centre)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        config = super().get_config()
        config.update(centre=self.centre)
        return config
