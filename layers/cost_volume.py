"""Partial cost volume (correlation layer), as in the registration pyramid.

Gunnarsson et al. 2020 ("Learning a Deformable Registration Pyramid", module
CV): the correlation between fixed features and warped moving features,
restricted to a neighbourhood of search range ``d`` (``(2d+1)^ndim``
displacements; d = 2 in the paper -> 125 channels in 3-D).  As in PWC-Net
(Sun et al. 2018) and the authors' released code, each value is the mean over
channels of ``f_fixed(x) * f_moving(x + offset)``, moving features outside the
volume being zero (zero padding); no feature normalisation.  The LeakyReLU the
released code applies afterwards belongs to the model, not to this layer.
"""

from __future__ import annotations

import itertools

import keras
from keras import ops


def cost_volume(fixed, moving, search_range=2):
    """Correlate ``fixed`` with shifted ``moving`` features.

    Args:
        fixed, moving: ``(batch, *spatial, channels)`` feature maps (2-D or 3-D).
        search_range: d >= 0, in voxels.
    Returns:
        ``(batch, *spatial, (2d+1)**ndim)``; channel ``k`` corresponds to the
        k-th offset of ``itertools.product(range(-d, d+1), repeat=ndim)``
        (last axis fastest).
    Raises:
        ValueError: negative search range or mismatched shapes.
    """
    if search_range < 0:
        raise ValueError(f"search_range must be >= 0, got {search_range}")
    if tuple(fixed.shape[1:]) != tuple(moving.shape[1:]):
        raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} differ")
    ndim = len(fixed.shape) - 2
    d = int(search_range)
    spatial = fixed.shape[1:-1]
    pad = [[0, 0]] + [[d, d]] * ndim + [[0, 0]]
    padded = ops.pad(moving, pad)
    outputs = []
    for offset in itertools.product(range(-d, d + 1), repeat=ndim):
        slices = [slice(None)] + [slice(d + o, d + o + s) for o, s in zip(offset, spatial)] + [slice(None)]
        shifted = padded[tuple(slices)]
        outputs.append(ops.mean(fixed * shifted, axis=-1))
    return ops.stack(outputs, axis=-1)


@keras.saving.register_keras_serializable(package="regseg")
class CostVolume(keras.layers.Layer):
    """Keras layer: ``[fixed, moving] -> cost volume`` (see :func:`cost_volume`).

    Args: search_range: d (voxels); 2 in Gunnarsson et al. 2020 §2.3.
    """

    def __init__(self, search_range=2, **kwargs):
        super().__init__(**kwargs)
        if search_range < 0:
            raise ValueError(f"search_range must be >= 0, got {search_range}")
        self.search_range = int(search_range)

    def call(self, inputs):
        fixed, moving = inputs
        return cost_volume(fixed, moving, self.search_range)

    def compute_output_shape(self, input_shape):
        shape = input_shape[0]
        ndim = len(shape) - 2
        return (*shape[:-1], (2 * self.search_range + 1) ** ndim)

    def get_config(self):
        config = super().get_config()
        config.update(search_range=self.search_range)
        return config
