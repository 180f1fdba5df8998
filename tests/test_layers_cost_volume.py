"""Tests of the partial cost volume (Gunnarsson et al. 2020) against a brute-force loop."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import itertools

import keras
import numpy as np
import pytest

from regseg.layers import CostVolume, cost_volume

SHAPES = {3: (4, 5, 3), 2: (5, 6)}


def _brute_force(fixed, moving, d):
    """Explicit loops over batch, voxels and offsets; moving is 0 outside the volume."""
    batch, *spatial, channels = fixed.shape
    offsets = list(itertools.product(range(-d, d + 1), repeat=len(spatial)))
    out = np.zeros((batch, *spatial, len(offsets)))
    for b in range(batch):
        for x in np.ndindex(*spatial):
            for k, o in enumerate(offsets):
                y = tuple(xi + oi for xi, oi in zip(x, o))
                if all(0 <= yi < s for yi, s in zip(y, spatial)):
                    acc = 0.0
                    for c in range(channels):
                        acc += fixed[(b, *x, c)] * moving[(b, *y, c)]
                    out[(b, *x, k)] = acc / channels
    return out


@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("d", [1, 2])
def test_cost_volume_matches_brute_force(ndim, d):
    rng = np.random.default_rng(10 * ndim + d)
    spatial = SHAPES[ndim]
    fixed = rng.normal(size=(2, *spatial, 3)).astype(np.float32)
    moving = rng.normal(size=(2, *spatial, 3)).astype(np.float32)
    expected = _brute_force(fixed.astype(np.float64), moving.astype(np.float64), d)
    assert expected.shape[-1] == (2 * d + 1) ** ndim
    got = np.asarray(cost_volume(fixed, moving, d))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(CostVolume(search_range=d)([fixed, moving])), expected,
                               atol=1e-5, rtol=1e-5)
    # the zero-offset channel sits in the middle and is mean_c(fixed * moving)
    centre = ((2 * d + 1) ** ndim - 1) // 2
    np.testing.assert_allclose(got[..., centre], np.mean(fixed * moving, axis=-1), atol=1e-6)


def test_offset_ordering_on_a_single_impulse():
    """moving = impulse at p; channel k at x is nonzero only where x + offset_k == p."""
    d = 1
    fixed = np.ones((1, 5, 5, 1), np.float32)
    moving = np.zeros((1, 5, 5, 1), np.float32)
    moving[0, 2, 3, 0] = 4.0
    got = np.asarray(cost_volume(fixed, moving, d))
    for k, (oy, ox) in enumerate(itertools.product(range(-d, d + 1), repeat=2)):
        expected = np.zeros((5, 5))
        expected[2 - oy, 3 - ox] = 4.0
        np.testing.assert_array_equal(got[0, ..., k], expected)


def test_search_range_zero_and_errors():
    rng = np.random.default_rng(3)
    fixed = rng.normal(size=(1, 3, 4, 5, 2)).astype(np.float32)
    moving = rng.normal(size=(1, 3, 4, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(cost_volume(fixed, moving, 0))[..., 0],
                               np.mean(fixed * moving, -1), atol=1e-6)
    with pytest.raises(ValueError):
        cost_volume(fixed, moving, -1)
    with pytest.raises(ValueError):
        cost_volume(fixed, moving[:, :, :3], 1)
    with pytest.raises(ValueError):
        CostVolume(search_range=-2)


def test_config_round_trip():
    rng = np.random.default_rng(4)
    layer = CostVolume(search_range=1, name="cv")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, CostVolume) and clone.search_range == 1 and clone.name == "cv"
    fixed = rng.normal(size=(1, 4, 4, 3, 2)).astype(np.float32)
    moving = rng.normal(size=(1, 4, 4, 3, 2)).astype(np.float32)
    out = np.asarray(clone([fixed, moving]))
    assert clone.compute_output_shape((fixed.shape, moving.shape)) == out.shape == (1, 4, 4, 3, 27)
    np.testing.assert_allclose(out, _brute_force(fixed.astype(np.float64),
                                                 moving.astype(np.float64), 1), atol=1e-5)
