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

from . import _xla
from ._checks import check_batch, check_rank, float_input


def cost_volume(fixed, moving, search_range=2, where="cost_volume", jit_compile=None):
    """Correlate ``fixed`` with shifted ``moving`` features.

    Args:
        fixed, moving: ``(batch, *spatial, channels)`` feature maps (2-D or 3-D), the same
            shape (dimensions known only at run time are not compared) and dtype.  Integer and
            bool features are cast to float32.
        search_range: d >= 0, in voxels.
        where: the name that starts error messages (the calling layer's).
        jit_compile: ``"auto"``, ``True`` or ``False``: compile the backward pass with XLA
            (module docstring); ``None`` follows :func:`~regseg.layers.set_layers_jit_compile`.
            Needs a static spatial shape (else uncompiled).
    Returns:
        ``(batch, *spatial, (2d+1)**ndim)``; channel ``k`` corresponds to the
        k-th offset of ``itertools.product(range(-d, d+1), repeat=ndim)``
        (last axis fastest).
    Raises:
        ValueError: negative search range; naming ``where`` and both shapes: feature maps that
            are not ``(batch, *spatial, channels)``, of different ranks, shapes or batch sizes,
            of different float dtypes, or non-numeric.
        tf.errors.InvalidArgumentError: batch sizes known only when a TensorFlow graph runs
            that differ (see ``layers/_checks.py``).
    """
    if search_range < 0:
        raise ValueError(f"{where}: search_range must be >= 0, got {search_range}")
    _xla.check_jit_compile(jit_compile)
    for name, x in (("fixed", fixed), ("moving", moving)):
        check_rank(where, f"the {name} features", x, "(batch, *spatial, channels)",
                   lambda r: r >= 3)
    a, b = tuple(fixed.shape), tuple(moving.shape)
    if len(a) != len(b) or any(x is not None and y is not None and x != y
                               for x, y in zip(a, b)):
        what = "batch sizes (axis 0)" if len(a) == len(b) and a[1:] == b[1:] else "shapes"
        raise ValueError(f"{where}: the {what} differ: fixed {a}, moving {b}")
    fixed = float_input(where, "the fixed features", fixed)
    moving = float_input(where, "the moving features", moving)
    dtypes = [keras.backend.standardize_dtype(x.dtype) for x in (fixed, moving)]
    if dtypes[0] != dtypes[1]:
        raise ValueError(f"{where}: fixed ({dtypes[0]}) and moving ({dtypes[1]}) features have "
                         f"different dtypes (shapes {a}, {b})")
    fixed, moving = check_batch(where, fixed=fixed, moving=moving)
    d = int(search_range)
    if _xla.resolve_jit_compile(jit_compile) and None not in a[1:]:
        compiled = _xla.compiled_with_gradient(("cost_volume", d), _correlate_static(d),
                                               compile_forward=False)
        return compiled(fixed, moving)
    return _correlate(fixed, moving, d)


def _correlate_static(d):
    def correlate(fixed, moving):
        return _correlate(fixed, moving, d)
    return correlate


def _correlate(fixed, moving, d):
    """The per-shift correlation of :func:`cost_volume`, on checked inputs."""
    a = tuple(fixed.shape)
    ndim = len(a) - 2
    dynamic = ops.shape(fixed)
    spatial = [s if s is not None else dynamic[1 + i] for i, s in enumerate(a[1:-1])]
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

    Args:
        search_range: d (voxels); 2 in Gunnarsson et al. 2020 §2.3.
        jit_compile: XLA for the backward pass (see :func:`cost_volume`); ``None`` (default)
            follows :func:`~regseg.layers.set_layers_jit_compile` at call time.
    """

    def __init__(self, search_range=2, jit_compile=None, **kwargs):
        super().__init__(**kwargs)
        if search_range < 0:
            raise ValueError(f"search_range must be >= 0, got {search_range}")
        self.search_range = int(search_range)
        self.jit_compile = _xla.check_jit_compile(jit_compile)

    def call(self, inputs):
        fixed, moving = inputs
        return cost_volume(fixed, moving, self.search_range, where=f"CostVolume {self.name!r}",
                           jit_compile=self.jit_compile)

    def compute_output_shape(self, input_shape):
        shape = input_shape[0]
        ndim = len(shape) - 2
        return (*shape[:-1], (2 * self.search_range + 1) ** ndim)

    def get_config(self):
        config = super().get_config()
        config.update(search_range=self.search_range)
        if self.jit_compile is not None:  # only when set: older configs load unchanged
            config["jit_compile"] = self.jit_compile
        return config
