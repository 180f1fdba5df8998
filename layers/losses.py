"""Losses and regularisers shared by the reproductions.

All are written with ``keras.ops`` (any backend), batched, channels-last, and
work in 2-D and 3-D.  Keras ``Loss`` subclasses return one value per sample
(shape ``(batch,)``) and Keras averages them over the global batch, which keeps
the values identical under ``tf.distribute.MirroredStrategy`` whatever the
number of replicas.

Sources
-------
* U-ReSNet (Estienne et al. 2019) eq. 4: ``L_recon = ||R - W(M, D)||^2 +
  LCC(R, W(M, D))`` -> :class:`ReconstructionLoss` (MSE + local
  cross-correlation, window 9 as in the released code).
* eq. 5: ``alpha ||A - A_I||_1 + beta ||grad Phi - grad Phi_I||_1`` ->
  :class:`L1ActivityPenalty` layer (alpha = 0.1 on the 12 affine outputs
  Delta = A - A_I, beta = 1e-11 on the spatial gradients, identity value 1).
* eq. 6: ``gamma Dice(M_seg_hat, M_seg) + delta Dice(R_seg_hat, R_seg)`` ->
  :class:`SoftDiceLoss` (V-Net / Milletari et al. 2016 soft Dice, 1 - Dice).
"""

from __future__ import annotations

import keras
from keras import ops

from ._checks import Float32UnderMixedPrecision, compute_float


def _spatial_axes(x):
    return tuple(range(1, len(x.shape) - 1))


def box_sum(x, window):
    """Sum of ``x`` over a centred cubic window of side ``window`` voxels.

    Zero padding at the borders (TensorFlow/voxelmorph ``padding="same"``).
    Implemented as separable 1-D convolutions (``window * ndim`` operations
    per voxel instead of ``window ** ndim``).

    Args:
        x: ``(batch, *spatial, channels)``.
        window: odd int.
    Returns:
        Tensor of the shape of ``x``.
    Raises:
        ValueError: even or non-positive window.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    ndim = len(x.shape) - 2
    shape = ops.shape(x)
    channels = x.shape[-1]
    # move channels into the batch so that a single-channel kernel serves all
    perm = (0, ndim + 1) + tuple(range(1, ndim + 1))
    y = ops.transpose(x, perm)
    y = ops.reshape(y, (-1, *shape[1:-1], 1))
    for axis in range(ndim):
        kshape = [1] * ndim
        kshape[axis] = window
        kernel = ops.ones((*kshape, 1, 1), dtype=x.dtype)
        y = ops.conv(y, kernel, strides=1, padding="same")
    y = ops.reshape(y, (shape[0], channels, *shape[1:-1]))
    inv = (0,) + tuple(range(2, ndim + 2)) + (1,)
    return ops.transpose(y, inv)


def local_cross_correlation(y_true, y_pred, window=9, eps=1e-5):
    """Squared local normalised cross-correlation map, in ``[0, 1]``.

    ``cc(x) = cov_w(I, J)^2 / (var_w(I) var_w(J) + eps)`` over a ``window^ndim``
    neighbourhood (voxelmorph's NCC, as in the U-ReSNet released code:
    window 9, eps 1e-5).

    Args:
        y_true, y_pred: ``(batch, *spatial, C)`` images (usually ``C = 1``);
            each channel is correlated with the same channel.
    Returns:
        ``(batch, *spatial, C)`` map.
    """
    y_pred = compute_float(y_pred)  # float32 for float16 / bfloat16 (mixed precision)
    y_true = ops.cast(y_true, y_pred.dtype)
    ndim = len(y_pred.shape) - 2
    n = float(window ** ndim)
    stacked = ops.concatenate(
        [y_true, y_pred, y_true * y_true, y_pred * y_pred, y_true * y_pred], axis=-1)
    sums = box_sum(stacked, window)
    # five blocks of C channels each (slicing single channels mixed them up when C > 1)
    i_sum, j_sum, i2_sum, j2_sum, ij_sum = ops.split(sums, 5, axis=-1)
    u_i = i_sum / n
    u_j = j_sum / n
    cross = ij_sum - u_j * i_sum - u_i * j_sum + u_i * u_j * n
    i_var = i2_sum - 2.0 * u_i * i_sum + u_i * u_i * n
    j_var = j2_sum - 2.0 * u_j * j_sum + u_j * u_j * n
    return cross * cross / (i_var * j_var + eps)


@keras.saving.register_keras_serializable(package="regseg")
class ReconstructionLoss(keras.losses.Loss):
    """U-ReSNet eq. 4: ``mse_weight * MSE(R, W) - lcc_weight * mean(LCC(R, W))``.

    The paper writes ``+ LCC``; LCC is a similarity (1 = perfect), so the term
    minimised is its negative, as in the released code (``MSE - NCC^2``).
    Per-sample value: mean over voxels (shape ``(batch,)``).

    Args:
        mse_weight: weight of the mean squared error (1 in U-ReSNet).
        lcc_weight: weight of the local cross-correlation (1 in U-ReSNet).
        window: LCC window side, voxels (9 in the released code).
        eps: LCC stabiliser (1e-5 in the released code).
    """

    def __init__(self, mse_weight=1.0, lcc_weight=1.0, window=9, eps=1e-5,
                 name="reconstruction", **kwargs):
        super().__init__(name=name, **kwargs)
        self.mse_weight = float(mse_weight)
        self.lcc_weight = float(lcc_weight)
        self.window = int(window)
        self.eps = float(eps)

    def call(self, y_true, y_pred):
        y_pred = compute_float(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        axes = tuple(range(1, len(y_pred.shape)))
        loss = 0.0
        if self.mse_weight:
            loss = loss + self.mse_weight * ops.mean(ops.square(y_true - y_pred), axis=axes)
        if self.lcc_weight:
            cc = local_cross_correlation(y_true, y_pred, self.window, self.eps)
            loss = loss - self.lcc_weight * ops.mean(cc, axis=axes)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(mse_weight=self.mse_weight, lcc_weight=self.lcc_weight,
                      window=self.window, eps=self.eps)
        return config


def soft_dice(y_true, y_pred, *, include_background, smooth=1e-5):
    """Per-sample, per-class soft Dice ``(2 sum(p t) + s) / (sum p + sum t + s)``.

    V-Net (Milletari et al. 2016) form, computed over the whole volume (the
    released U-ReSNet code summed over two spatial axes only, a per-slice Dice;
    we follow the paper's volumetric Dice).  Used by Estienne et al. 2019,
    eq. 6, Gunnarsson et al. 2020, eq. 2a, Bouabid et al., eq. 5 and Xu &
    Niethammer 2019, eq. 3 (printed there without the factor 2, which makes
    a perfect overlap score 1/2; the factor-2 Dice is the V-Net one).

    Args:
        y_true: ``(batch, *spatial, K)`` one-hot (or soft) labels, spatial =
            ``(D, H, W)`` or ``(H, W)``; channel 0 is the background.
        y_pred: ``(batch, *spatial, K)`` probabilities (e.g. a softmax).
        include_background: keyword, required (no default): ``True`` keeps
            channel 0 in the result, ``False`` drops it, defaulting as the
            caller documents (the choice differs between papers and their
            released code).
        smooth: additive smoothing s (1e-5), dimensionless.
    Returns:
        ``(batch, K)`` if ``include_background`` else ``(batch, K - 1)``,
        dimensionless values in ``[0, 1]`` (1 for an empty class on both
        sides, through the smoothing).

    >>> t = np.eye(2)[[[0, 1]]]  # one sample, two voxels, K = 2
    >>> np.asarray(soft_dice(t, t, include_background=False)).tolist()
    [[1.0]]
    """
    y_pred = compute_float(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if not include_background:
        y_true = y_true[..., 1:]
        y_pred = y_pred[..., 1:]
    axes = _spatial_axes(y_pred)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="regseg")
class SoftDiceLoss(keras.losses.Loss):
    """``1 - mean_k soft Dice`` per sample (Estienne et al. 2019, eq. 6; V-Net Dice).

    Call ``loss(y_true, y_pred)`` with ``(batch, *spatial, K)`` one-hot labels
    and probabilities; :meth:`call` returns ``(batch,)`` dimensionless values
    in ``[0, 1]`` that Keras averages over the batch.

    Args:
        include_background: required (no default): average over all ``K``
            channels (``True``) or over the foreground channels ``1..K-1``
            only (``False``), defaulting as the caller documents.
        smooth: additive smoothing (1e-5); see :func:`soft_dice`.

    Configs saved before ``include_background`` existed hold
    ``exclude_background``; :meth:`from_config` maps it to
    ``include_background = not exclude_background``.

    >>> t, p = np.eye(2)[[[0, 1]]], np.eye(2)[[[1, 1]]]
    >>> round(float(SoftDiceLoss(include_background=True)(t, p)), 4)
    0.6667
    """

    def __init__(self, include_background, smooth=1e-5, name="soft_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.include_background = bool(include_background)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        d = soft_dice(y_true, y_pred, include_background=self.include_background,
                      smooth=self.smooth)
        return 1.0 - ops.mean(d, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(include_background=self.include_background, smooth=self.smooth)
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuild from :meth:`get_config`; also reads legacy ``exclude_background``.

        Raises:
            ValueError: a config holding both ``include_background`` and
                ``exclude_background``.
        """
        config = dict(config)
        if "exclude_background" in config:
            if "include_background" in config:
                raise ValueError("SoftDiceLoss config holds both include_background and the "
                                 "legacy exclude_background; keep one")
            config["include_background"] = not config.pop("exclude_background")
        return cls(**config)


@keras.saving.register_keras_serializable(package="regseg")
class L1ActivityPenalty(Float32UnderMixedPrecision, keras.layers.Layer):
    """Identity layer adding ``weight * mean_batch( sum |x - value| )`` to the model's losses.

    The L1 norm is taken over all non-batch elements of each sample and
    averaged over the (per-replica) batch, so its value depends neither on the
    batch size nor on the number of replicas.  U-ReSNet eq. 5: with
    ``value=0`` on the 12 affine outputs Delta it is ``alpha ||A - A_I||_1``
    (alpha = 0.1); with ``value=1`` on the spatial gradients it is
    ``beta ||grad Phi - grad Phi_I||_1`` (beta = 1e-11).

    Input/output: any ``(batch, ...)`` tensor, returned unchanged.  The penalty is computed in
    float32 (under a mixed-precision policy the layer's policy is float32, see
    :class:`~regseg.layers._checks.Float32UnderMixedPrecision`).
    """

    def __init__(self, weight, value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = float(weight)
        self.value = float(value)

    def call(self, x):
        if self.weight:
            values = compute_float(x)
            batch = ops.cast(ops.shape(values)[0], values.dtype)
            self.add_loss(self.weight * ops.sum(ops.abs(values - self.value)) / batch)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(weight=self.weight, value=self.value)
        return config
