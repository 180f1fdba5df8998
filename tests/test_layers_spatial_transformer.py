"""Tests of ``regseg.layers.warp`` / ``SpatialTransformer`` against scipy.

Every value is checked against ``scipy.ndimage.map_coordinates`` (an
independent implementation of the same sampling), against hand-built numpy
slicing, or against central finite differences for the gradients.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from regseg.layers import SpatialTransformer, identity_grid, warp

SHAPES = {3: (7, 8, 9), 2: (7, 8)}
OUT_SHAPES = {3: (4, 5, 3), 2: (5, 11)}
CHANNELS = 2
BATCH = 2


def _np_identity(spatial):
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in spatial],
                                indexing="ij"), axis=-1)


def _random_grid(rng, spatial_in, spatial_out, margin=2.0, avoid_half=False):
    """Random sampling coordinates reaching ``margin`` voxels outside the volume."""
    ndim = len(spatial_in)
    comps = []
    for i in range(ndim):
        c = rng.uniform(-margin, spatial_in[i] - 1 + margin, size=(BATCH, *spatial_out))
        if avoid_half:  # keep away from the rounding ties x.5
            frac = c - np.floor(c)
            c = np.where(np.abs(frac - 0.5) < 0.05, c + 0.2, c)
        comps.append(c)
    return np.stack(comps, axis=-1)


def _scipy_warp(image, grid, order, padding):
    """Reference: per batch and channel ``map_coordinates`` (float64)."""
    mode = {"border": "nearest", "zeros": "grid-constant"}[padding]
    out = np.empty(grid.shape[:-1] + (image.shape[-1],))
    for b in range(image.shape[0]):
        coords = np.moveaxis(grid[b], -1, 0)
        for c in range(image.shape[-1]):
            out[b, ..., c] = ndimage.map_coordinates(
                image[b, ..., c].astype(np.float64), coords, order=order, mode=mode,
                cval=0.0, prefilter=False)
    return out


@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_linear_matches_map_coordinates(ndim, padding):
    rng = np.random.default_rng(10 + ndim)
    spatial = SHAPES[ndim]
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    grid = _random_grid(rng, spatial, spatial).astype(np.float32)
    # make sure the test really exercises outside-the-volume samples
    outside = np.any((grid < 0) | (grid > np.array(spatial) - 1), axis=-1)
    assert 0.05 < outside.mean() < 0.95
    expected = _scipy_warp(image, grid.astype(np.float64), 1, padding)
    got = warp(tf.constant(image), tf.constant(grid), interpolation="linear", padding=padding)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)
    layer = SpatialTransformer(interpolation="linear", padding=padding)
    np.testing.assert_allclose(np.asarray(layer([image, grid])), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_nearest_matches_map_coordinates_order0(ndim, padding):
    rng = np.random.default_rng(20 + ndim)
    spatial = SHAPES[ndim]
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    grid = _random_grid(rng, spatial, spatial, avoid_half=True)
    expected = _scipy_warp(image, grid, 0, padding)
    got = warp(tf.constant(image), tf.constant(grid.astype(np.float32)),
               interpolation="nearest", padding=padding)
    np.testing.assert_array_equal(np.asarray(got), expected.astype(np.float32))


def test_nearest_rounds_half_up_by_hand():
    """Documented tie rule floor(x + 0.5), checked on a 1x4 image by hand."""
    image = np.array([10.0, 20.0, 30.0, 40.0], np.float32).reshape(1, 1, 4, 1)
    xs = np.array([-0.7, -0.5, 0.5, 1.49, 1.5, 2.5, 3.4, 3.5], np.float32)
    grid = np.stack([np.zeros_like(xs), xs], -1).reshape(1, 1, -1, 2)
    border = np.asarray(warp(image, grid, interpolation="nearest", padding="border"))
    zeros = np.asarray(warp(image, grid, interpolation="nearest", padding="zeros"))
    np.testing.assert_array_equal(border.ravel(), [10, 10, 20, 20, 30, 40, 40, 40])
    np.testing.assert_array_equal(zeros.ravel(), [0, 10, 20, 20, 30, 40, 40, 0])
    # linear by hand on the same points
    lin_b = np.asarray(warp(image, grid, padding="border")).ravel()
    lin_z = np.asarray(warp(image, grid, padding="zeros")).ravel()
    np.testing.assert_allclose(lin_b, [10, 10, 15, 24.9, 25, 35, 40, 40], rtol=1e-6)
    np.testing.assert_allclose(lin_z, [3, 5, 15, 24.9, 25, 35, 24, 20], rtol=1e-6)


@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("interpolation,padding",
                         list(itertools.product(["linear", "nearest"], ["border", "zeros"])))
def test_identity_grid_reproduces_input_exactly(ndim, interpolation, padding):
    rng = np.random.default_rng(30 + ndim)
    spatial = SHAPES[ndim]
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    ident = np.asarray(identity_grid(spatial))
    np.testing.assert_array_equal(ident, _np_identity(spatial).astype(np.float32))
    grid = np.broadcast_to(ident, (BATCH, *ident.shape))
    got = warp(tf.constant(image), tf.constant(grid), interpolation=interpolation, padding=padding)
    np.testing.assert_array_equal(np.asarray(got), image)
    # the displacement convention with a zero field is the identity too
    layer = SpatialTransformer(interpolation=interpolation, padding=padding, field="displacement")
    np.testing.assert_array_equal(np.asarray(layer([image, np.zeros_like(grid)])), image)


@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_displacement_field_equals_identity_plus_displacement(ndim, padding):
    rng = np.random.default_rng(40 + ndim)
    spatial = SHAPES[ndim]
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    disp = rng.uniform(-2.5, 2.5, size=(BATCH, *spatial, ndim))
    expected = _scipy_warp(image, _np_identity(spatial)[None] + disp, 1, padding)
    layer = SpatialTransformer(padding=padding, field="displacement")
    got = layer([tf.constant(image), tf.constant(disp.astype(np.float32))])
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ndim", [3, 2])
def test_output_spatial_shape_follows_grid(ndim):
    rng = np.random.default_rng(50 + ndim)
    spatial, out_spatial = SHAPES[ndim], OUT_SHAPES[ndim]
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    grid = _random_grid(rng, spatial, out_spatial, margin=1.0)
    for padding in ("border", "zeros"):
        expected = _scipy_warp(image, grid, 1, padding)
        assert expected.shape == (BATCH, *out_spatial, CHANNELS)
        layer = SpatialTransformer(padding=padding)
        got = np.asarray(layer([image, grid.astype(np.float32)]))
        assert layer.compute_output_shape(((BATCH, *spatial, CHANNELS),
                                           (BATCH, *out_spatial, ndim))) == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_mismatched_grid_and_bad_options_raise():
    image = np.zeros((1, 4, 5, 6, 1), np.float32)
    with pytest.raises(ValueError):
        warp(image, np.zeros((1, 4, 5, 6, 2), np.float32))
    with pytest.raises(ValueError):
        warp(image, np.zeros((1, 4, 5, 6, 3), np.float32), interpolation="cubic")
    with pytest.raises(ValueError):
        warp(image, np.zeros((1, 4, 5, 6, 3), np.float32), padding="reflect")
    with pytest.raises(ValueError):
        SpatialTransformer(field="velocity")


def test_layer_config_round_trip():
    rng = np.random.default_rng(60)
    spatial = SHAPES[3]
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    disp = rng.uniform(-2.3, 2.3, size=(BATCH, *spatial, 3))
    disp = disp + np.where(np.abs(disp % 1 - 0.5) < 0.05, 0.2, 0.0)  # no rounding ties
    layer = SpatialTransformer(interpolation="nearest", padding="zeros", field="displacement",
                               name="st")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, SpatialTransformer)
    assert (clone.interpolation, clone.padding, clone.field, clone.name) == (
        "nearest", "zeros", "displacement", "st")
    expected = _scipy_warp(image, _np_identity(spatial)[None] + disp, 0, "zeros")
    out_a = np.asarray(layer([image, disp.astype(np.float32)]))
    out_b = np.asarray(clone([image, disp.astype(np.float32)]))
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(out_a, expected.astype(np.float32))


def test_saved_keras_model_round_trip(tmp_path):
    rng = np.random.default_rng(61)
    spatial, out_spatial = SHAPES[3], OUT_SHAPES[3]
    image_in = keras.Input((*spatial, CHANNELS))
    grid_in = keras.Input((*out_spatial, 3))
    out = SpatialTransformer(padding="zeros", name="st")([image_in, grid_in])
    model = keras.Model([image_in, grid_in], out)
    path = tmp_path / "warp.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("st"), SpatialTransformer)
    assert loaded.get_layer("st").get_config()["padding"] == "zeros"
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    grid = _random_grid(rng, spatial, out_spatial).astype(np.float32)
    a = np.asarray(model([image, grid]))
    b = np.asarray(loaded([image, grid]))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(b, _scipy_warp(image, grid.astype(np.float64), 1, "zeros"),
                               atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- gradients

def _away_from_integers(rng, low, high, size):
    """Uniform coordinates in (low, high) whose fractional part lies in [0.15, 0.85]."""
    base = rng.integers(int(np.floor(low)), int(np.ceil(high)), size=size)
    c = base + rng.uniform(0.15, 0.85, size=size)
    return np.clip(c, low, high)


def _central_differences(func, x, indices, h=1e-6):
    grads = []
    for idx in indices:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grads.append((func(xp) - func(xm)) / (2 * h))
    return np.array(grads)


@pytest.mark.parametrize("ndim,padding",
                         [(3, "border"), (3, "zeros"), (2, "border"), (2, "zeros")])
def test_gradients_match_finite_differences(ndim, padding):
    rng = np.random.default_rng(70 + ndim)
    spatial = (4, 5, 6) if ndim == 3 else (5, 6)
    out_spatial = (3, 3, 2) if ndim == 3 else (4, 3)
    image = rng.normal(size=(BATCH, *spatial, CHANNELS))
    comps = []
    for s in spatial:
        # border: stay inside (clamped samples have a zero grid gradient);
        # zeros: also reach into the (-1, 0) and (s-1, s) fringe, which has a gradient.
        low, high = (0.0, s - 1.0) if padding == "border" else (-1.0, float(s))
        comps.append(_away_from_integers(rng, low, high, (BATCH, *out_spatial)))
    grid = np.stack(comps, axis=-1)
    weights = rng.normal(size=(BATCH, *out_spatial, CHANNELS))

    def objective(img, grd):
        return float(np.sum(np.asarray(warp(tf.constant(img), tf.constant(grd),
                                            padding=padding)) * weights))

    img_t, grid_t = tf.Variable(image), tf.Variable(grid)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(warp(img_t, grid_t, padding=padding) * weights)
    g_img, g_grid = (np.asarray(g) for g in tape.gradient(loss, [img_t, grid_t]))
    assert g_img.dtype == np.float64 and g_grid.dtype == np.float64
    for g in (g_img, g_grid):
        assert np.all(np.isfinite(g))
        assert np.count_nonzero(g) > g.size // 4

    all_img = list(np.ndindex(image.shape))
    img_idx = [all_img[k] for k in rng.choice(len(all_img), 40, replace=False)]
    fd_img = _central_differences(lambda x: objective(x, grid), image, img_idx)
    np.testing.assert_allclose([g_img[i] for i in img_idx], fd_img, rtol=1e-6, atol=1e-7)

    all_grid = list(np.ndindex(grid.shape))
    grid_idx = [all_grid[k] for k in rng.choice(len(all_grid), 40, replace=False)]
    fd_grid = _central_differences(lambda x: objective(image, x), grid, grid_idx)
    assert np.count_nonzero(fd_grid) > 20
    np.testing.assert_allclose([g_grid[i] for i in grid_idx], fd_grid, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- label warping

@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_one_hot_labels_integer_translation_then_argmax(padding):
    """Linear warping of a one-hot map by an integer shift, then argmax, is a pure shift."""
    rng = np.random.default_rng(80)
    spatial, k = SHAPES[3], 4
    labels = rng.integers(0, k, size=(BATCH, *spatial))
    one_hot = np.eye(k, dtype=np.float32)[labels]
    shifts = [(2, -1, 3), (-3, 2, 0)]
    grid = np.stack([_np_identity(spatial) + np.array(t, float) for t in shifts])
    warped = np.asarray(warp(one_hot, grid.astype(np.float32), padding=padding))
    for b, (t0, t1, t2) in enumerate(shifts):
        if padding == "border":
            # read labels[x + t] with edge replication, by hand with np.pad + slicing
            p = 3
            padded = np.pad(labels[b], p, mode="edge")
            expected = padded[p + t0:p + t0 + spatial[0], p + t1:p + t1 + spatial[1],
                              p + t2:p + t2 + spatial[2]]
            np.testing.assert_array_equal(np.argmax(warped[b], -1), expected)
        else:
            # inside the overlap the argmax is the rolled label map; outside all zeros
            rolled = np.roll(labels[b], (-t0, -t1, -t2), axis=(0, 1, 2))
            inside = np.zeros(spatial, bool)
            inside[max(0, -t0):spatial[0] - max(0, t0), max(0, -t1):spatial[1] - max(0, t1),
                   max(0, -t2):spatial[2] - max(0, t2)] = True
            np.testing.assert_array_equal(np.argmax(warped[b], -1)[inside], rolled[inside])
            np.testing.assert_array_equal(warped[b][~inside], 0.0)
            np.testing.assert_array_equal(warped[b][inside].sum(-1), 1.0)


def test_one_hot_labels_random_integer_grid_then_argmax():
    """Any grid with integer values inside the volume: linear warp + argmax == fancy indexing."""
    rng = np.random.default_rng(81)
    spatial, k = SHAPES[3], 5
    labels = rng.integers(0, k, size=(BATCH, *spatial))
    one_hot = np.eye(k, dtype=np.float32)[labels]
    grid = np.stack([rng.integers(0, s, size=(BATCH, *spatial)) for s in spatial], axis=-1)
    warped = np.asarray(warp(one_hot, grid.astype(np.float32)))
    b = np.arange(BATCH)[:, None, None, None]
    expected = labels[b, grid[..., 0], grid[..., 1], grid[..., 2]]
    np.testing.assert_array_equal(np.argmax(warped, -1), expected)
    np.testing.assert_array_equal(warped, np.eye(k, dtype=np.float32)[expected])
