"""Layers and per-sample loss terms of the registration pyramid (Gunnarsson et al. 2020).

Generic pieces that the pyramid's levels need beyond the shared warp and cost volume:

* :func:`normalised_cross_correlation` / :class:`NegativeNCC`: the image similarity of eq. 2b,
  global NCC (Pratt 2007, the paper's reference [7]) or, as the authors' released code, the
  local (windowed, squared) NCC of :func:`~regseg.layers.losses.local_cross_correlation`;
* :class:`AffineDisplacement`: module A of §2.1, an affine (12 parameters, ``A = I + Delta``)
  composed with the current displacement field, returning the composed displacement and the
  affine's own displacement field ``phi_a`` (regularised towards the identity by eq. 2c);
* :func:`soft_dice_present` / :class:`PresentLabelsDiceLoss`: the soft Dice of eq. 2a averaged
  over the foreground labels present in either label map (one model serves tasks with 1, 2, 4
  or 13 labels, so absent channels must not count);
* :class:`MeanSquare` and :class:`GradientPenalty`: per-sample values of the two terms of
  eq. 2c.

Every term layer returns one value per sample, shape ``(batch,)``, so that a model can expose it
as an output and Keras averages it over the global batch (the same value whatever the number of
replicas). Fields are channels-last ``(batch, D, H, W, 3)`` in voxels, component ``i`` along
spatial axis ``i`` (:mod:`regseg.layers.spatial_transformer`).
"""

from __future__ import annotations

import keras
from keras import ops

from ._checks import Float32UnderMixedPrecision, check_option, compute_float
from .affine import apply_affine_to_grid
from .losses import local_cross_correlation
from .regularisers import gradient_penalty
from .spatial_transformer import identity_grid

__all__ = ["normalised_cross_correlation", "NegativeNCC", "AffineDisplacement",
           "soft_dice_present", "PresentLabelsDiceLoss", "MeanSquare", "GradientPenalty", "ZeroField"]

_NCC_KINDS = ("global", "local")
_AFFINE_ON = ("coordinates", "displacements")
_CENTRES = ("corner", "centre")


def normalised_cross_correlation(fixed, warped, *, kind="global", window=9, eps=1e-5):
    """Normalised cross-correlation per sample, in ``[-1, 1]`` (global) or ``[0, 1]`` (local).

    ``global``: ``sum((I - mean I)(J - mean J)) / sqrt(sum (I - mean I)^2 sum (J - mean J)^2 + eps)``
    over all voxels and channels of each sample (Pratt, *Digital image processing*, the paper's
    reference [7]). ``local``: the mean over voxels of the squared local NCC in a ``window^ndim``
    neighbourhood (VoxelMorph's NCC, used at every level by the released code).

    Args:
        fixed, warped: ``(batch, *spatial, C)`` images (``spatial = (D, H, W)`` or ``(H, W)``).
        kind: ``"global"`` (paper, eq. 2b) or ``"local"`` (released code, window 9).
        window: local window side in voxels (odd).
        eps: stabiliser added to the denominator (dimensionless, intensities in [0, 1]).
    Returns:
        ``(batch,)`` dimensionless similarity (1 = perfect linear agreement).
    Raises:
        ValueError: unknown ``kind``.

    Source: Gunnarsson et al. 2020, eq. 2b.
    """
    check_option("kind", kind, _NCC_KINDS)
    warped = compute_float(warped)  # float32 for float16 / bfloat16 (mixed precision)
    fixed = ops.cast(fixed, warped.dtype)
    axes = tuple(range(1, len(warped.shape)))
    if kind == "local":
        return ops.mean(local_cross_correlation(fixed, warped, window, eps), axis=axes)
    a = fixed - ops.mean(fixed, axis=axes, keepdims=True)
    b = warped - ops.mean(warped, axis=axes, keepdims=True)
    num = ops.sum(a * b, axis=axes)
    den = ops.sqrt(ops.sum(a * a, axis=axes) * ops.sum(b * b, axis=axes) + eps)
    return num / den


@keras.saving.register_keras_serializable(package="regseg")
class NegativeNCC(Float32UnderMixedPrecision, keras.layers.Layer):
    """``[fixed, warped] -> -NCC`` per sample, shape ``(batch,)`` (eq. 2b without gamma).

    Args:
        kind: ``"global"`` (paper) or ``"local"`` (released code); see
            :func:`normalised_cross_correlation`.
        window: local window side (voxels).
    Raises:
        ValueError: unknown ``kind`` (at construction).
    """

    def __init__(self, kind="global", window=9, **kwargs):
        super().__init__(**kwargs)
        self.kind = check_option("kind", kind, _NCC_KINDS)
        self.window = int(window)

    def call(self, inputs):
        fixed, warped = inputs
        return -normalised_cross_correlation(fixed, warped, kind=self.kind, window=self.window)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0],)

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, window=self.window)
        return config


@keras.saving.register_keras_serializable(package="regseg")
class AffineDisplacement(Float32UnderMixedPrecision, keras.layers.Layer):
    """Module A of the pyramid: an affine composed with a displacement field.

    Call ``AffineDisplacement(...)([parameters, displacement])`` with ``parameters``
    ``(batch, 12)`` (``A = I + reshape(Delta, (3, 4))``, translations in voxels, see
    :func:`~regseg.layers.affine.affine_matrix`) and ``displacement`` ``(batch, D, H, W, 3)`` in
    voxels. Returns ``[composed, phi_a]``, both ``(batch, D, H, W, 3)`` voxels:

    * ``affine_on="coordinates"`` (default, the paper's reading): the affine maps the current
      sampling coordinates, ``composed(x) = A [x + u(x); 1] - x``;
    * ``affine_on="displacements"`` (released code): it multiplies the displacement vectors,
      ``composed(x) = A [u(x); 1]``; with ``u = 0`` this is a translation only;
    * ``phi_a(x) = A [x; 1] - x`` is the displacement field of the affine alone (both modes),
      the ``phi_a^(l)`` that eq. 2c pulls towards the identity ``phi_0 = 0``.

    ``centre`` (coordinates mode): ``"centre"`` applies ``A`` about the volume centre
    ``(size - 1) / 2`` (default; the paper is silent), ``"corner"`` about voxel 0.

    Raises:
        ValueError: unknown ``affine_on`` or ``centre`` (at construction); a dynamic spatial
            shape (at call).

    Source: Gunnarsson et al. 2020, §2.1 (module A) and eq. 2c.
    """

    def __init__(self, affine_on="coordinates", centre="centre", **kwargs):
        super().__init__(**kwargs)
        self.affine_on = check_option("affine_on", affine_on, _AFFINE_ON)
        self.centre = check_option("centre", centre, _CENTRES)

    def call(self, inputs):
        parameters, displacement = inputs
        spatial = displacement.shape[1:-1]
        if any(s is None for s in spatial):
            raise ValueError("AffineDisplacement needs a static spatial shape")
        identity = ops.cast(identity_grid(spatial), displacement.dtype)[None]
        parameters = ops.cast(parameters, displacement.dtype)
        batch_identity = identity + ops.zeros_like(displacement)
        phi_a = apply_affine_to_grid(parameters, batch_identity, self.centre) - identity
        if self.affine_on == "coordinates":
            composed = apply_affine_to_grid(parameters, identity + displacement,
                                            self.centre) - identity
        else:
            composed = apply_affine_to_grid(parameters, displacement, "corner")
        return [composed, phi_a]

    def compute_output_shape(self, input_shape):
        return [input_shape[1], input_shape[1]]

    def get_config(self):
        config = super().get_config()
        config.update(affine_on=self.affine_on, centre=self.centre)
        return config


def soft_dice_present(y_true, y_pred, smooth=1e-5):
    """Soft Dice per sample averaged over the foreground labels present in either map.

    ``Dice_k = (2 sum(t_k p_k) + s) / (sum t_k + sum p_k + s)`` (V-Net form) for the channels
    ``k = 1..K-1``; a channel counts when ``sum t_k + sum p_k > 0.5`` voxels (so a label that
    neither image has, e.g. label 3 of a two-label task, is skipped, as in the released code).

    Args:
        y_true: ``(batch, *spatial, K)`` one-hot fixed labels ``S_f``, channel 0 = background.
        y_pred: ``(batch, *spatial, K)`` warped one-hot moving labels ``S_m o phi``.
        smooth: additive smoothing (1e-5, released code), dimensionless.
    Returns:
        ``(batch,)`` mean Dice over present labels, in ``[0, 1]``; 1 for a sample with no
        foreground label at all (nothing to align, no gradient).

    Source: Gunnarsson et al. 2020, eq. 2a; Milletari et al. 2016 (V-Net).
    """
    y_pred = compute_float(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)[..., 1:]
    y_pred = y_pred[..., 1:]
    axes = tuple(range(1, len(y_pred.shape) - 1))
    inter = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * inter + smooth) / (total + smooth)
    present = ops.cast(total > 0.5, dice.dtype)
    count = ops.sum(present, axis=-1)
    mean = ops.sum(dice * present, axis=-1) / ops.maximum(count, 1.0)
    return ops.where(count > 0, mean, ops.ones_like(mean))


@keras.saving.register_keras_serializable(package="regseg")
class PresentLabelsDiceLoss(Float32UnderMixedPrecision, keras.layers.Layer):
    """``[S_f, S_m o phi] -> 1 - soft_dice_present`` per sample, ``(batch,)`` (eq. 2a / lambda).

    See :func:`soft_dice_present`; inputs ``(batch, *spatial, K)`` one-hot / warped one-hot.
    """

    def __init__(self, smooth=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.smooth = float(smooth)

    def call(self, inputs):
        fixed, warped = inputs
        return 1.0 - soft_dice_present(fixed, warped, self.smooth)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0],)

    def get_config(self):
        config = super().get_config()
        config.update(smooth=self.smooth)
        return config


@keras.saving.register_keras_serializable(package="regseg")
class MeanSquare(Float32UnderMixedPrecision, keras.layers.Layer):
    """``x -> mean over non-batch axes of x^2``, ``(batch,)``.

    On ``phi_a - phi_0`` (``phi_0 = 0``) it is eq. 2c's ``||phi_a - phi_0||_2^2`` per voxel and
    component (a constant factor of the sum, absorbed in alpha), units voxels^2.
    """

    def call(self, x):
        return ops.mean(ops.square(x), axis=tuple(range(1, len(x.shape))))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


@keras.saving.register_keras_serializable(package="regseg")
class GradientPenalty(Float32UnderMixedPrecision, keras.layers.Layer):
    """``u -> gradient_penalty(u, "l2")``: eq. 2c's ``||grad phi_d||^2`` per sample, ``(batch,)``.

    Mean squared forward differences (:func:`~regseg.layers.regularisers.gradient_penalty`),
    voxels of the level's grid.
    """

    def call(self, x):
        return gradient_penalty(x, "l2")

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


@keras.saving.register_keras_serializable(package="regseg")
class ZeroField(Float32UnderMixedPrecision, keras.layers.Layer):
    """``x (batch, *spatial, C) -> zeros (batch, *spatial, ndim)``: the identity displacement.

    The coarsest level of the pyramid starts from the identity (no earlier estimate).
    """

    def call(self, x):
        ndim = len(x.shape) - 2
        return ops.zeros_like(x[..., :1]) + ops.zeros((ndim,), dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(input_shape) - 2)
