"""Low-pass filters for masks: the separable [1, 2, 1] binomial filter.

Couteaux et al. ("Cooperating networks to enforce a similarity constraint in paired but
unregistered multimodal liver segmentation"), §2.1: the registration loss compares blurred masks,
``L_g = L_mse(s2' * f, s2 * f)``, "in order to soften the edges of the masks, thus avoiding
discontinuities"; §2.2: "In practice we found that a simple separable [1, 2, 1] was sufficient,
for both L_g and this approximation of D_S".

The paper gives the taps only.  Here the taps are normalised to sum to 1 (``[1, 2, 1] / 4`` per
axis, so a constant image stays constant and the blurred mask stays in [0, 1]) and the borders
are zero-padded (the mask is 0 outside the image): the result equals
``scipy.ndimage.correlate1d(x, [0.25, 0.5, 0.25], axis, mode="constant", cval=0)`` applied along
every spatial axis in turn.

Written with ``keras.ops`` only (any backend), batched, channels-last, 2-D and 3-D.
"""

from __future__ import annotations

import keras
from keras import ops

#: The taps of Couteaux et al. §2.2, before normalisation.
BINOMIAL_TAPS = (1.0, 2.0, 1.0)


def binomial_blur(x, passes=1):
    """Separable [1, 2, 1] / 4 low-pass filter along every spatial axis, zero padding.

    Args:
        x: ``(batch, *spatial, channels)`` float tensor, ``spatial`` = ``(H, W)`` or
            ``(D, H, W)``; every channel is filtered on its own.
        passes: how many times the filter is applied (1 in the paper; ``n`` passes equal the
            binomial filter of ``2n + 1`` taps).
    Returns:
        Tensor of the shape and dtype of ``x``.
    Raises:
        ValueError: ``x`` is not 2-D or 3-D batched channels-last, or ``passes`` is not a
            positive integer.

    Source: Couteaux et al., §2.1 (L_g) and §2.2 (the separable [1, 2, 1] filter f).

    >>> import numpy as np
    >>> np.asarray(binomial_blur(np.eye(1, 5, 2, dtype="float32").reshape(1, 5, 1, 1)))[0, :, 0, 0]
    array([0.  , 0.25, 0.5 , 0.25, 0.  ], dtype=float32)
    """
    rank = len(x.shape)
    if rank not in (4, 5):
        raise ValueError(f"binomial_blur: x must be (batch, H, W, C) or (batch, D, H, W, C), got "
                         f"shape {tuple(x.shape)}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"binomial_blur: passes must be a positive integer, got {passes!r}")
    ndim = rank - 2
    x = ops.convert_to_tensor(x)
    shape = ops.shape(x)
    channels = x.shape[-1]
    # channels into the batch so that one single-channel kernel filters every channel
    perm = (0, ndim + 1) + tuple(range(1, ndim + 1))
    y = ops.reshape(ops.transpose(x, perm), (-1, *shape[1:-1], 1))
    taps = ops.convert_to_tensor([t / 4.0 for t in BINOMIAL_TAPS], dtype=x.dtype)
    for _ in range(passes):
        for axis in range(ndim):
            kshape = [1] * ndim
            kshape[axis] = 3
            y = ops.conv(y, ops.reshape(taps, (*kshape, 1, 1)), strides=1, padding="same")
    y = ops.reshape(y, (shape[0], channels, *shape[1:-1]))
    inverse = (0,) + tuple(range(2, ndim + 2)) + (1,)
    return ops.transpose(y, inverse)


@keras.saving.register_keras_serializable(package="regseg")
class BinomialBlur(keras.layers.Layer):
    """Keras layer wrapping :func:`binomial_blur` (the low-pass filter ``f`` of Couteaux et al.).

    Input / output ``(batch, *spatial, channels)``; no weights.

    Args:
        passes: applications of the [1, 2, 1] / 4 filter (1 in the paper).
    Raises:
        ValueError: ``passes`` not a positive integer (at construction); input not 2-D or 3-D
            (at call).

    Source: Couteaux et al., §2.1-2.2.
    """

    def __init__(self, passes=1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"BinomialBlur: passes must be a positive integer, got {passes!r}")
        self.passes = passes

    def call(self, x):
        return binomial_blur(x, self.passes)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(passes=self.passes)
        return config
