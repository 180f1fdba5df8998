"""Image and mask losses of the diffeomorphic U-Net (Bouabid et al., §4.5 and §5.3).

* :class:`GlobalCrossCorrelationLoss` — the cross-correlation similarity of Table 2: minus the
  squared Pearson correlation of the whole volumes (the authors' released ``cross_correlation``:
  ``cov^2 / (var_1 var_2 + eps)``, one global window, not a local one).
* :func:`negative_dice` / :class:`NegativeDiceLoss` — eq. 5, the negative Dice of the atlas mask
  ``T`` and the warped source mask ``phi(S)``, written on soft (trilinearly warped) masks so that
  it has a gradient. Eq. 5 as printed divides by ``|T| + |S|`` (the *source* mask's volume);
  the usual (V-Net) soft Dice divides by ``|T| + |phi(S)|``. Both are offered
  (``denominator="source"`` / ``"warped"``).

The released code's ``dice_score`` is neither: it is the fraction of voxels whose labels agree
(background included) and, computed with ``tf.equal`` on labels, has no gradient; it is offered
as a reported metric only, under its own name
(:func:`regseg.evaluation.intensity.voxel_agreement`).

Every loss returns one value per sample (shape ``(batch,)``); Keras averages over the batch,
as eq. 6 does ("averaged on each batch"). Written with ``keras.ops`` only.
"""

from __future__ import annotations

import keras
from keras import ops

from ._checks import check_option, compute_float

_DENOMINATORS = ("source", "warped")


def _sample_axes(x):
    return tuple(range(1, len(x.shape)))


def global_cross_correlation(y_true, y_pred, eps=1e-5):
    """Squared global Pearson correlation per sample, ``cov^2 / (var_t var_p + eps)``.

    The sums run over every voxel and channel of each sample (one window = the whole volume).

    Args:
        y_true, y_pred: ``(batch, *spatial, C)`` images, same shape.
        eps: stabiliser added to the product of the (summed) variances (1e-5, released code).
    Returns:
        ``(batch,)`` values in ``[0, 1)`` (dimensionless).

    Source: Bouabid et al. §5.1 and §5.3 ("Cross-Correlation"); released code
    ``src/losses.py::cross_correlation`` (squared, global).
    """
    y_pred = compute_float(y_pred)  # float32 for float16 / bfloat16 (mixed precision)
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = _sample_axes(y_pred)
    t = y_true - ops.mean(y_true, axis=axes, keepdims=True)
    p = y_pred - ops.mean(y_pred, axis=axes, keepdims=True)
    cov = ops.sum(t * p, axis=axes)
    var_t = ops.sum(t * t, axis=axes)
    var_p = ops.sum(p * p, axis=axes)
    return cov * cov / (var_t * var_p + eps)


@keras.saving.register_keras_serializable(package="regseg")
class GlobalCrossCorrelationLoss(keras.losses.Loss):
    """``-`` :func:`global_cross_correlation`: the CC similarity loss of Table 2 (§5.3).

    ``loss(atlas, warped)`` with ``(batch, *spatial, C)`` images returns ``(batch,)`` values in
    ``(-1, 0]``.

    Args:
        eps: stabiliser (1e-5, released code).
    """

    def __init__(self, eps=1e-5, name="global_cross_correlation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.eps = float(eps)

    def call(self, y_true, y_pred):
        return -global_cross_correlation(y_true, y_pred, self.eps)

    def get_config(self):
        config = super().get_config()
        config.update(eps=self.eps)
        return config


def negative_dice(fixed_mask, warped_mask, moving_mask=None, *, denominator="source",
                  smooth=1e-5):
    """Eq. 5: ``-2 |T ∩ phi(S)| / (|T| + |S|)`` on soft masks, one value per sample.

    ``|T ∩ phi(S)| = sum T * phi(S)`` and ``|X| = sum X`` over every voxel of the sample, with
    ``phi(S)`` the trilinearly warped source mask (values in [0, 1]), so the value is
    differentiable with respect to the warp.

    Args:
        fixed_mask: ``T``, ``(batch, *spatial, 1)`` atlas (fixed) mask, 0/1.
        warped_mask: ``phi(S)``, ``(batch, *spatial, 1)`` warped source (moving) mask.
        moving_mask: ``S``, ``(batch, *spatial, 1)`` source mask before warping; required by
            ``denominator="source"``.
        denominator: ``"source"`` (eq. 5 as printed: ``|T| + |S|``) or ``"warped"``
            (V-Net soft Dice: ``|T| + |phi(S)|``).
        smooth: added to numerator and denominator (1e-5), so that two empty masks give -1.
    Returns:
        ``(batch,)`` values in ``[-1, 0]`` for ``"warped"``; for ``"source"`` the value can go
        below -1 when the warp enlarges the mask (``|phi(S)| > |S|``).
    Raises:
        ValueError: unknown ``denominator`` (message names the allowed values), or
            ``denominator="source"`` without ``moving_mask``.

    Source: Bouabid et al., eq. 5 (§4.5).
    """
    check_option("denominator", denominator, _DENOMINATORS)
    warped_mask = compute_float(warped_mask)  # float32 for float16 / bfloat16 (mixed precision)
    fixed_mask = ops.cast(fixed_mask, warped_mask.dtype)
    axes = _sample_axes(warped_mask)
    intersection = ops.sum(fixed_mask * warped_mask, axis=axes)
    if denominator == "source":
        if moving_mask is None:
            raise ValueError("negative_dice: denominator='source' (eq. 5 as printed) needs the "
                             "source mask S (moving_mask)")
        second = ops.sum(ops.cast(moving_mask, warped_mask.dtype), axis=axes)
    else:
        second = ops.sum(warped_mask, axis=axes)
    return -(2.0 * intersection + smooth) / (ops.sum(fixed_mask, axis=axes) + second + smooth)


@keras.saving.register_keras_serializable(package="regseg")
class NegativeDiceLoss(keras.losses.Loss):
    """Keras loss of eq. 5 (:func:`negative_dice`) on the warped source mask.

    Call ``loss(y_true, warped_mask)`` with ``warped_mask`` ``(batch, *spatial, 1)`` and
    ``y_true`` ``(batch, *spatial, 2)`` holding the atlas mask ``T`` (channel 0) and the source
    mask before warping ``S`` (channel 1; the denominator of eq. 5 as printed needs it, the
    ``"warped"`` form ignores it). Returns ``(batch,)``.

    Args:
        denominator: ``"source"`` (eq. 5 as printed, default) or ``"warped"`` (V-Net).
        smooth: see :func:`negative_dice`.
    Raises:
        ValueError: unknown ``denominator``; ``y_true`` without 2 channels (at call).
    """

    def __init__(self, denominator="source", smooth=1e-5, name="negative_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        check_option("denominator", denominator, _DENOMINATORS)
        self.denominator = denominator
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        if y_true.shape[-1] != 2:
            raise ValueError(f"NegativeDiceLoss: y_true must stack the atlas mask and the source "
                             f"mask on the last axis (2 channels), got shape {tuple(y_true.shape)}")
        return negative_dice(y_true[..., :1], y_pred, y_true[..., 1:2],
                             denominator=self.denominator, smooth=self.smooth)

    def get_config(self):
        config = super().get_config()
        config.update(denominator=self.denominator, smooth=self.smooth)
        return config
