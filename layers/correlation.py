"""Global normalised cross-correlation (NCC) of two images, and the loss ``1 - NCC``.

DeepAtlas (Xu & Niethammer, MICCAI 2019), eq. 4: ``L_i(I_m^w, I_t) = 1 - NCC(I_m^w, I_t)``,
"which will be in [0, 2] and hence will encourage maximal correlation".  The range [0, 2] is
that of the signed Pearson correlation of the whole volumes (the authors' released
``NormalizedCrossCorrelationLoss``: one window = the whole image, not squared), not of the
squared local NCC of VoxelMorph (:func:`regseg.layers.losses.local_cross_correlation`, in
[0, 1]).

Written with ``keras.ops`` only; one value per sample (shape ``(batch,)``), so that Keras (or
the alternating trainer) averages over the global batch whatever the number of replicas.
"""

from __future__ import annotations

import keras
from keras import ops

from ._checks import compute_float

__all__ = ["normalized_cross_correlation", "NCCLoss"]


def normalized_cross_correlation(y_true, y_pred, eps=1e-8):
    """Signed global NCC (Pearson correlation over all voxels) per sample.

    ``NCC(I, J) = sum (I - mean I)(J - mean J) / sqrt(sum (I - mean I)^2 sum (J - mean J)^2)``,
    the sums running over every voxel and channel of each sample.

    Args:
        y_true, y_pred: ``(batch, D, H, W, C)`` (or any ``(batch, ...)``) images, e.g. the
            fixed image and the warped moving image; intensities in any unit.
        eps: added to the product of the variances (dimensionless stabiliser for constant
            images: their NCC is 0).
    Returns:
        ``(batch,)`` tensor in ``[-1, 1]`` (dimensionless).
    Raises:
        ValueError: the two inputs differ in shape (static shapes).

    Source: DeepAtlas, eq. 4 (released code: ``NormalizedCrossCorrelationLoss``).

    >>> a = np.arange(8, dtype="float32").reshape(1, 2, 2, 2, 1)
    >>> round(float(normalized_cross_correlation(a, 3 * a + 1)[0]), 5)
    1.0
    """
    y_pred = compute_float(y_pred)  # float32 for float16 / bfloat16 (mixed precision)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if (None not in y_true.shape and None not in y_pred.shape
            and tuple(y_true.shape) != tuple(y_pred.shape)):
        raise ValueError(f"normalized_cross_correlation: shapes differ, {tuple(y_true.shape)} "
                         f"vs {tuple(y_pred.shape)}")
    axes = tuple(range(1, len(y_pred.shape)))
    a = y_true - ops.mean(y_true, axis=axes, keepdims=True)
    b = y_pred - ops.mean(y_pred, axis=axes, keepdims=True)
    cov = ops.sum(a * b, axis=axes)
    var = ops.sum(a * a, axis=axes) * ops.sum(b * b, axis=axes)
    return cov / ops.sqrt(var + eps)


@keras.saving.register_keras_serializable(package="regseg")
class NCCLoss(keras.losses.Loss):
    """``1 - NCC(y_true, y_pred)`` per sample, in ``[0, 2]`` (DeepAtlas eq. 4).

    Args:
        eps: see :func:`normalized_cross_correlation`.

    Call with ``(batch, D, H, W, C)`` fixed and warped images; :meth:`call` returns
    ``(batch,)`` dimensionless values that Keras averages over the batch.

    >>> a = np.arange(8, dtype="float32").reshape(1, 2, 2, 2, 1)
    >>> round(float(NCCLoss()(a, -a)), 5)
    2.0
    """

    def __init__(self, eps=1e-8, name="ncc_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.eps = float(eps)

    def call(self, y_true, y_pred):
        return 1.0 - normalized_cross_correlation(y_true, y_pred, self.eps)

    def get_config(self):
        config = super().get_config()
        config.update(eps=self.eps)
        return config
