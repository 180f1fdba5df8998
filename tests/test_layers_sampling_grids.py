"""Tests of the cumulative-sum sampling grids (Christodoulidis et al. 2018)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from regseg.layers import (CumulativeSumGrid, PositiveGradients, SpatialTransformer,
                           cumulative_sum_grid, identity_grid, warp)

SHAPES = {3: (4, 5, 6), 2: (5, 7)}


def _np_identity(spatial):
    return np.stack(np.indices(spatial), axis=-1).astype(np.float32)


@pytest.mark.parametrize("ndim", [3, 2])
def test_all_ones_gradients_give_identity(ndim):
    spatial = SHAPES[ndim]
    ones = np.ones((2, *spatial, ndim), np.float32)
    ident = _np_identity(spatial)
    zero = np.asarray(cumulative_sum_grid(ones, origin="zero"))
    one = np.asarray(CumulativeSumGrid(origin="one")(ones))
    np.testing.assert_array_equal(zero, np.broadcast_to(ident, zero.shape))
    np.testing.assert_array_equal(zero[0], np.asarray(identity_grid(spatial)))
    np.testing.assert_array_equal(one, np.broadcast_to(ident + 1.0, one.shape))
    # the default origin is the paper-correct 0-based one
    np.testing.assert_array_equal(np.asarray(CumulativeSumGrid()(ones)), zero)


def test_hand_computed_example_2d():
    # gradients along axis 0 of [1, 2, 0.5, 3] integrate to cumsum - 1 = [0, 2, 2.5, 5.5]
    g = np.ones((1, 4, 3, 2), np.float32)
    g[0, :, :, 0] = np.array([1.0, 2.0, 0.5, 3.0])[:, None]
    g[0, :, :, 1] = np.array([[0.5, 0.25, 2.0]])  # along axis 1: [-0.5, -0.25, 1.75]
    out = np.asarray(cumulative_sum_grid(g))
    np.testing.assert_array_equal(out[0, :, :, 0],
                                  np.broadcast_to(np.array([0.0, 2.0, 2.5, 5.5])[:, None], (4, 3)))
    np.testing.assert_array_equal(out[0, :, :, 1],
                                  np.broadcast_to(np.array([[-0.5, -0.25, 1.75]]), (4, 3)))


def test_hand_computed_example_3d_and_random_vs_numpy():
    g = np.ones((1, 3, 2, 4, 3), np.float32)
    g[0, :, :, :, 2] = np.array([2.0, 0.5, 1.5, 1.0])  # along axis 2 -> [1, 1.5, 3, 4]
    out = np.asarray(cumulative_sum_grid(g))
    np.testing.assert_array_equal(out[0, ..., 2], np.broadcast_to([1.0, 1.5, 3.0, 4.0], (3, 2, 4)))
    np.testing.assert_array_equal(out[0, ..., 0], np.broadcast_to([[[0.0]], [[1.0]], [[2.0]]],
                                                                  (3, 2, 4)))
    # random positive gradients: component i is numpy's cumsum over spatial axis i, minus 1
    rng = np.random.default_rng(0)
    g = rng.uniform(0.1, 2.0, size=(2, 4, 5, 6, 3))
    for origin, sub in (("zero", 1.0), ("one", 0.0)):
        out64 = np.asarray(cumulative_sum_grid(g, origin=origin))  # the function keeps float64
        out32 = np.asarray(CumulativeSumGrid(origin=origin)(g))  # the layer autocasts to float32
        for i in range(3):
            expected = np.cumsum(g[..., i], axis=1 + i) - sub
            np.testing.assert_allclose(out64[..., i], expected, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(out32[..., i], expected, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("ndim", [3, 2])
def test_positive_gradients_give_monotonic_grid(ndim):
    rng = np.random.default_rng(1 + ndim)
    spatial = SHAPES[ndim]
    raw = rng.normal(scale=3.0, size=(2, *spatial, ndim)).astype(np.float32)
    grads = np.asarray(PositiveGradients()(raw))
    grid = np.asarray(CumulativeSumGrid()(grads))
    for i in range(ndim):
        assert np.all(np.diff(grid[..., i], axis=1 + i) > 0)


def test_positive_gradients_is_two_sigmoid():
    x = np.array([[-30.0, -2.0, -0.5, 0.0, 0.25, 1.0, 4.0, 30.0]], np.float32)
    got = np.asarray(PositiveGradients()(x))
    np.testing.assert_allclose(got, 2.0 / (1.0 + np.exp(-x.astype(np.float64))), rtol=1e-6,
                               atol=1e-7)
    assert got[0, 3] == 1.0
    assert np.all((got > 0) & (got <= 2))


def test_origin_one_identity_shifts_by_one_voxel():
    """The released-code 'identity' (origin='one') reads the neighbour +1 along every axis."""
    rng = np.random.default_rng(5)
    spatial = SHAPES[3]
    image = rng.normal(size=(2, *spatial, 3)).astype(np.float32)
    grid = CumulativeSumGrid(origin="one")(np.ones((2, *spatial, 3), np.float32))
    for interpolation in ("linear", "nearest"):
        out = np.asarray(SpatialTransformer(interpolation=interpolation)([image, grid]))
        # by hand: edge-replicate one voxel at the far end, then drop the first one
        padded = np.pad(image, ((0, 0), (0, 1), (0, 1), (0, 1), (0, 0)), mode="edge")
        expected = padded[:, 1:, 1:, 1:]
        np.testing.assert_array_equal(out, expected)
        # interior equals np.roll by -1 along every spatial axis
        rolled = np.roll(image, (-1, -1, -1), axis=(1, 2, 3))
        np.testing.assert_array_equal(out[:, :-1, :-1, :-1], rolled[:, :-1, :-1, :-1])
    # with zero padding the last slab reads outside the volume -> 0
    out = np.asarray(warp(image, grid, padding="zeros"))
    np.testing.assert_array_equal(out[:, -1], 0.0)
    np.testing.assert_array_equal(out[:, :-1, :-1, :-1], image[:, 1:, 1:, 1:])


def test_errors_and_config_round_trip():
    with pytest.raises(ValueError):
        cumulative_sum_grid(np.ones((1, 3, 4, 5, 2), np.float32))
    with pytest.raises(ValueError):
        cumulative_sum_grid(np.ones((1, 3, 4, 2), np.float32), origin="centre")
    with pytest.raises(ValueError):
        CumulativeSumGrid(origin="two")
    g = np.random.default_rng(6).uniform(0.5, 1.5, size=(1, 3, 4, 2)).astype(np.float32)
    for origin, sub in (("zero", 1.0), ("one", 0.0)):
        layer = CumulativeSumGrid(origin=origin, name="csg")
        clone = keras.layers.deserialize(keras.layers.serialize(layer))
        assert isinstance(clone, CumulativeSumGrid) and clone.origin == origin
        expected = np.stack([np.cumsum(g[..., i], axis=1 + i) for i in range(2)], -1) - sub
        np.testing.assert_allclose(np.asarray(clone(g)), expected, rtol=1e-6, atol=1e-6)
    clone = keras.layers.deserialize(keras.layers.serialize(PositiveGradients()))
    assert isinstance(clone, PositiveGradients)
    np.testing.assert_allclose(np.asarray(clone(g)), 2 / (1 + np.exp(-g.astype(np.float64))),
                               rtol=1e-6)
