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

from ._checks import (Float32UnderMixedPrecision, check_batch, check_option, check_rank,
                      float_input)

_CENTRES = ("corner", "centre")


def affine_matrix(parameters, ndim, where="affine_matrix"):
    """Return ``A = I + reshape(parameters, (ndim, ndim + 1))``.

    Args:
        parameters: ``(batch, ndim * (ndim + 1))`` (12 in 3-D, 6 in 2-D),
            row-major; translations (last column) in voxels.  Integer and bool parameters are
            cast to float32.
    Returns:
        ``(batch, ndim, ndim + 1)`` tensor.
    Raises:
        ValueError: parameters that are not ``(batch, ndim * (ndim + 1))`` (the message names
            ``where`` and the shape), or a non-numeric dtype.
    """
    expected = ndim * (ndim + 1)
    check_rank(where, "the affine parameters", parameters,
               f"(batch, {expected}) for a {ndim}-D affine", lambda r: r == 2)
    if parameters.shape[-1] is not None and parameters.shape[-1] != expected:
        raise ValueError(
            f"{where}: an affine in {ndim}-D needs {expected} parameters, got parameters of shape "
            f"{tuple(parameters.shape)}")
    parameters = float_input(where, "the affine parameters", parameters)
    eye = ops.eye(ndim, ndim + 1, dtype=parameters.dtype)
    return ops.reshape(parameters, (-1, ndim, ndim + 1)) + eye[None]


def apply_affine_to_grid(parameters, grid, centre="corner", where="apply_affine_to_grid"):
    """Compose an affine with a dense sampling grid: ``grid' = A . [grid; 1]``.

    Args:
        parameters: ``(batch, ndim * (ndim + 1))`` affine parameters Delta,
            ``A = I + Delta`` (see :func:`affine_matrix`).
        grid: ``(batch, *spatial, ndim)`` sampling grid, voxels, the same batch size as
            ``parameters``.  Integer and bool grids are cast to float32.
        centre: ``"corner"`` (default, released code) or ``"centre"``.
        where: the name that starts error messages (the calling layer's).
    Returns:
        ``(batch, *spatial, ndim)`` sampling grid, voxels.
    Raises:
        ValueError: unknown ``centre`` (the message names the option and its
            allowed values); naming ``where`` and the shapes: a grid that is not
            ``(batch, *spatial, ndim)`` (e.g. unbatched, or a last axis other than its number
            of spatial axes), a wrong parameter count or rank, different batch sizes,
            a non-numeric dtype, or ``centre="centre"`` with a dynamic spatial shape.
        tf.errors.InvalidArgumentError: batch sizes known only when a TensorFlow graph runs
            that differ (see ``layers/_checks.py``).

    Source: Estienne et al. 2019, §3.1, eq. 1 (``Phi x A``).

    >>> shifted = apply_affine_to_grid(np.float32([[0, 0, 2, 0, 0, 0]]), np.zeros((1, 1, 1, 2)))
    >>> np.asarray(shifted).ravel().tolist()
    [2.0, 0.0]
    """
    check_option("centre", centre, _CENTRES)
    check_rank(where, "the grid", grid, "(batch, *spatial, ndim)", lambda r: r >= 3)
    ndim, spatial_rank = grid.shape[-1], len(grid.shape) - 2
    if ndim is None:
        raise ValueError(f"{where}: the grid's last axis (ndim) must be static, got shape "
                         f"{tuple(grid.shape)}")
    if ndim != spatial_rank:
        hint = ("; an unbatched grid? add a batch axis (grid[None])"
                if ndim == spatial_rank + 1 else "")
        raise ValueError(f"{where}: the grid must be (batch, *spatial, ndim) with ndim its number "
                         f"of spatial axes; shape {tuple(grid.shape)} has {ndim} components for "
                         f"{spatial_rank} spatial axes{hint}")
    grid = float_input(where, "the grid", grid)
    parameters = ops.cast(float_input(where, "the affine parameters", parameters), grid.dtype)
    matrix = affine_matrix(parameters, ndim, where)
    grid, _ = check_batch(where, grid=grid, parameters=parameters)
    linear = matrix[:, :, :ndim]  # (B, n, n)
    translation = matrix[:, :, ndim]  # (B, n)
    if centre == "centre":
        spatial = grid.shape[1:-1]
        if any(s is None for s in spatial):
            raise ValueError(f"{where}: centre='centre' needs a static spatial shape, got grid "
                             f"shape {tuple(grid.shape)}")
        c = ops.convert_to_tensor([(s - 1) / 2.0 for s in spatial], dtype=grid.dtype)
        grid = grid - c
        translation = translation + c[None]
    # x'_i = sum_j L_ij x_j + t_i, broadcast over the spatial axes
    lin = ops.reshape(linear, (-1,) + (1,) * spatial_rank + (ndim, ndim))
    out = ops.sum(lin * grid[..., None, :], axis=-1)
    return out + ops.reshape(translation, (-1,) + (1,) * spatial_rank + (ndim,))


@keras.saving.register_keras_serializable(package="regseg")
class AffineComposition(Float32UnderMixedPrecision, keras.layers.Layer):
    """Keras layer: ``[parameters (B, n(n+1)), grid (B, *spatial, n)] -> A . [grid; 1]``.

    Source: Estienne et al. 2019, §3.1, eq. 1 (``Phi x A``).  Zero parameters
    give back ``grid``.

    Args:
        centre: ``"corner"`` (default) or ``"centre"``; see module docstring.
    Raises:
        ValueError: unknown ``centre`` (at construction; names the option and
            its allowed values); at call, naming the layer and the shapes, the input errors of
            :func:`apply_affine_to_grid` (unbatched grid, parameter count, batch sizes, dtype).

    >>> float(AffineComposition()([np.zeros((1, 6)), np.ones((1, 3, 4, 2))])[0, 0, 0, 0])
    1.0
    """

    def __init__(self, centre="corner", **kwargs):
        super().__init__(**kwargs)
        check_option("centre", centre, _CENTRES)
        self.centre = centre

    def call(self, inputs):
        parameters, grid = inputs
        return apply_affine_to_grid(parameters, grid, self.centre,
                                    where=f"AffineComposition {self.name!r}")

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        config = super().get_config()
        config.update(centre=self.centre)
        return config
