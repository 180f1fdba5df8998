"""The [1, 2, 1] low-pass filter and the coarse-grid field upsampling (Couteaux et al. §2.2,
§3.2.2), against scipy."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

import keras

from regseg.layers.coarse_fields import UpsampleField, upsample_field
from regseg.layers.filters import BinomialBlur, binomial_blur

RNG = np.random.default_rng(0)


def _scipy_blur(x, passes=1):
    """[1, 2, 1] / 4 along every spatial axis, zero outside, with scipy."""
    out = np.asarray(x, np.float64)
    for _ in range(passes):
        for axis in range(1, out.ndim - 1):
            out = ndimage.correlate1d(out, [0.25, 0.5, 0.25], axis=axis, mode="constant", cval=0.0)
    return out


@pytest.mark.parametrize("shape", [(2, 9, 7, 3), (2, 6, 5, 7, 2)])
def test_binomial_blur_matches_scipy(shape):
    x = RNG.random(shape).astype("float32")
    np.testing.assert_allclose(np.asarray(binomial_blur(x)), _scipy_blur(x), atol=1e-6)
    np.testing.assert_allclose(np.asarray(BinomialBlur(passes=2)(x)), _scipy_blur(x, 2), atol=1e-6)


def test_binomial_blur_by_hand_and_constant_interior():
    # an impulse becomes the outer product of [1, 2, 1] / 4 with itself
    x = np.zeros((1, 5, 5, 1), "float32")
    x[0, 2, 2, 0] = 1.0
    expected = np.outer([0.25, 0.5, 0.25], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(np.asarray(binomial_blur(x))[0, 1:4, 1:4, 0], expected, atol=1e-7)
    # taps sum to 1: a constant stays constant away from the (zero-padded) border
    ones = np.ones((1, 6, 6, 6, 1), "float32")
    out = np.asarray(binomial_blur(ones))[0, ..., 0]
    np.testing.assert_allclose(out[1:-1, 1:-1, 1:-1], 1.0, atol=1e-6)
    assert out[0, 3, 3] == pytest.approx(0.75)


def test_binomial_blur_layer_serialises_and_rejects_bad_input():
    layer = BinomialBlur(passes=2, name="f")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, BinomialBlur) and clone.passes == 2
    with pytest.raises(ValueError, match="passes"):
        BinomialBlur(passes=0)
    with pytest.raises(ValueError, match="batch, H, W, C"):
        binomial_blur(np.zeros((4, 4), "float32"))


@pytest.mark.parametrize("coarse,factor", [((3, 4), 4), ((2, 3, 2), 3), ((2, 2, 3), 16)])
def test_upsample_field_matches_scipy_zoom(coarse, factor):
    ndim = len(coarse)
    field = RNG.normal(size=(1, *coarse, ndim)).astype("float32")
    out = np.asarray(upsample_field(field, factor))[0]
    ref = np.stack([ndimage.zoom(field[0, ..., k], factor, order=1, mode="nearest", grid_mode=True)
                    for k in range(ndim)], axis=-1)
    assert out.shape == tuple(c * factor for c in coarse) + (ndim,)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_upsample_field_hand_values_and_constant_field():
    # two coarse values 0 and 1, factor 2: centres at 0.5 and 2.5 -> 0, 0, 0.25?  By the
    # cell-centred rule voxel i reads coarse coordinate (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75,
    # 1.25 -> clamped 0, 0.25, 0.75, 1
    field = np.array([0.0, 1.0], "float32").reshape(1, 2, 1, 1)
    out = np.asarray(upsample_field(field, 2))[0, :, 0, 0]
    np.testing.assert_allclose(out, [0.0, 0.25, 0.75, 1.0], atol=1e-7)
    const = np.full((2, 2, 3, 2, 3), 1.7, "float32")
    np.testing.assert_allclose(np.asarray(UpsampleField(4)(const)), 1.7, atol=1e-6)


def test_upsample_field_dynamic_shapes_in_a_graph():
    f = tf.function(lambda t: upsample_field(t, 4),
                    input_signature=[tf.TensorSpec((None, None, None, None, 3), tf.float32)])
    field = RNG.normal(size=(2, 2, 3, 1, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(f(field)), np.asarray(upsample_field(field, 4)),
                               atol=1e-6)
    clone = keras.layers.deserialize(keras.layers.serialize(UpsampleField(16)))
    assert clone.factor == 16
    with pytest.raises(ValueError, match="factor"):
        upsample_field(field, 0)
