"""Tests of the affine composition (U-ReSNet eq. 1) against numpy, scipy and SimpleITK."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from regseg.layers import AffineComposition, affine_matrix, apply_affine_to_grid, warp

SPATIAL3 = (9, 10, 11)
SPATIAL2 = (9, 12)


def _identity(spatial, batch=2, dtype=np.float64):
    ident = np.stack(np.indices(spatial), axis=-1).astype(dtype)
    return np.broadcast_to(ident, (batch, *ident.shape)).copy()


def _params(linear, translation):
    """Delta = [L - I | t] read row-major, as the layer expects."""
    n = len(translation)
    return np.concatenate([np.asarray(linear) - np.eye(n), np.asarray(translation)[:, None]],
                          axis=1).reshape(-1)


def _rotation3(a, b, scale=(1.0, 1.0, 1.0)):
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    r_a = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])  # about axis 0
    r_b = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])  # about axis 1
    return r_a @ r_b @ np.diag(scale)


def _rotation2(a, scale=(1.0, 1.0)):
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag(scale)


def test_affine_matrix_is_identity_plus_row_major_parameters():
    p = np.arange(12, dtype=np.float32)[None] / 10.0
    expected = np.eye(3, 4) + p.reshape(3, 4)
    np.testing.assert_allclose(np.asarray(affine_matrix(p, 3))[0], expected, rtol=1e-6)
    p2 = np.arange(6, dtype=np.float32)[None]
    np.testing.assert_array_equal(np.asarray(affine_matrix(p2, 2))[0],
                                  np.eye(2, 3) + p2.reshape(2, 3))


@pytest.mark.parametrize("ndim", [3, 2])
def test_zero_parameters_return_the_grid(ndim):
    rng = np.random.default_rng(ndim)
    spatial = SPATIAL3 if ndim == 3 else SPATIAL2
    grid = rng.uniform(-3, 12, size=(2, *spatial, ndim)).astype(np.float32)
    zeros = np.zeros((2, ndim * (ndim + 1)), np.float32)
    np.testing.assert_array_equal(np.asarray(apply_affine_to_grid(zeros, grid)), grid)
    np.testing.assert_array_equal(np.asarray(AffineComposition()([zeros, grid])), grid)
    # about the centre: exact on the identity grid (half-integer centre, exact arithmetic) ...
    ident = _identity(spatial, dtype=np.float32)
    np.testing.assert_array_equal(
        np.asarray(apply_affine_to_grid(zeros, ident, centre="centre")), ident)
    # ... and to rounding on any grid
    np.testing.assert_allclose(np.asarray(apply_affine_to_grid(zeros, grid, centre="centre")),
                               grid, atol=1e-6, rtol=0)


@pytest.mark.parametrize("centre", ["corner", "centre"])
def test_whole_voxel_translation_is_a_slice(centre):
    rng = np.random.default_rng(11)
    image = rng.normal(size=(2, *SPATIAL3, 2)).astype(np.float32)
    shifts = [(1, -2, 3), (-2, 0, 1)]
    params = np.stack([_params(np.eye(3), np.array(t, float)) for t in shifts]).astype(np.float32)
    grid = apply_affine_to_grid(params, _identity(SPATIAL3, dtype=np.float32), centre=centre)
    shift_b = np.array(shifts, float)[:, None, None, None]
    np.testing.assert_array_equal(np.asarray(grid), _identity(SPATIAL3) + shift_b)
    out = np.asarray(warp(image, grid, padding="zeros"))
    d, h, w = SPATIAL3
    # sample 0: out[x] = image[x + (1, -2, 3)], zero where it reads outside
    expected0 = np.zeros_like(image[0])
    expected0[:d - 1, 2:, :w - 3] = image[0, 1:, :h - 2, 3:]
    expected1 = np.zeros_like(image[1])
    expected1[2:, :, :w - 1] = image[1, :d - 2, :, 1:]
    np.testing.assert_array_equal(out[0], expected0)
    np.testing.assert_array_equal(out[1], expected1)


def test_fractional_translation_matches_scipy_shift():
    rng = np.random.default_rng(12)
    image = rng.normal(size=(2, *SPATIAL3, 2))
    shifts = np.array([(0.3, -1.25, 0.6), (-0.7, 2.4, -1.1)])
    params = np.stack([_params(np.eye(3), t) for t in shifts])
    grid = apply_affine_to_grid(params, _identity(SPATIAL3))
    out = np.asarray(warp(image, grid, padding="border"))
    for b, t in enumerate(shifts):
        for c in range(2):
            # the grid x' = x + t reads the input at x + t: scipy's shift by -t
            expected = ndimage.shift(image[b, ..., c], -t, order=1, mode="nearest")
            np.testing.assert_allclose(out[b, ..., c], expected, atol=1e-10, rtol=0)


def _sitk_resample(volume, matrix, centre, translation):
    """SimpleITK reference: unit spacing, zero origin; sitk works in (x, y, z) = reversed axes."""
    img = sitk.GetImageFromArray(volume)
    assert img.GetSpacing() == (1.0,) * volume.ndim and img.GetOrigin() == (0.0,) * volume.ndim
    tx = sitk.AffineTransform(volume.ndim)
    tx.SetMatrix(np.asarray(matrix)[::-1, ::-1].ravel().tolist())
    tx.SetCenter(np.asarray(centre)[::-1].tolist())
    tx.SetTranslation(np.asarray(translation)[::-1].tolist())
    out = sitk.Resample(img, img, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return sitk.GetArrayFromImage(out)


def test_rotation_about_centre_matches_scipy_and_simpleitk_3d():
    rng = np.random.default_rng(13)
    image = rng.normal(size=(2, *SPATIAL3, 2))
    mats = [_rotation3(0.35, 0.2, (1.05, 0.95, 1.0)), _rotation3(-0.5, 0.1)]
    trans = [np.array([0.3, -0.4, 0.7]), np.array([-1.2, 0.0, 0.5])]
    params = np.stack([_params(m, t) for m, t in zip(mats, trans)])
    grid = np.asarray(AffineComposition(centre="centre", dtype="float64")(
        [params, _identity(SPATIAL3)]))
    out = np.asarray(warp(image, grid, padding="border"))
    c = (np.array(SPATIAL3) - 1) / 2.0
    for b, (m, t) in enumerate(zip(mats, trans)):
        # grid = M (x - c) + c + t, i.e. affine_transform(matrix=M, offset=c + t - M c)
        np.testing.assert_allclose(
            grid[b], np.einsum("ij,...j->...i", m, _identity(SPATIAL3, 1)[0] - c) + c + t,
            atol=1e-12)
        offset = c + t - m @ c
        inside = np.all((grid[b] >= 0) & (grid[b] <= np.array(SPATIAL3) - 1), axis=-1)
        assert 0.3 < inside.mean() < 1.0
        for ch in range(2):
            expected = ndimage.affine_transform(image[b, ..., ch], m, offset=offset, order=1,
                                                mode="nearest")
            np.testing.assert_allclose(out[b, ..., ch], expected, atol=1e-10, rtol=0)
            itk = _sitk_resample(image[b, ..., ch], m, c, t)
            np.testing.assert_allclose(out[b, ..., ch][inside], itk[inside], atol=1e-6, rtol=0)
            # outside the volume SimpleITK pads with 0 where we replicate the border
            assert not np.allclose(out[b, ..., ch][~inside], itk[~inside])


def test_rotation_about_centre_matches_scipy_and_simpleitk_2d():
    rng = np.random.default_rng(14)
    image = rng.normal(size=(2, *SPATIAL2, 1))
    mats = [_rotation2(0.4, (1.1, 0.9)), _rotation2(-0.25)]
    trans = [np.array([0.5, -1.3]), np.array([0.0, 0.8])]
    params = np.stack([_params(m, t) for m, t in zip(mats, trans)])
    assert params.shape == (2, 6)
    grid = np.asarray(apply_affine_to_grid(params, _identity(SPATIAL2), centre="centre"))
    out = np.asarray(warp(image, grid))
    c = (np.array(SPATIAL2) - 1) / 2.0
    for b, (m, t) in enumerate(zip(mats, trans)):
        expected = ndimage.affine_transform(image[b, ..., 0], m, offset=c + t - m @ c, order=1,
                                            mode="nearest")
        np.testing.assert_allclose(out[b, ..., 0], expected, atol=1e-10, rtol=0)
        inside = np.all((grid[b] >= 0) & (grid[b] <= np.array(SPATIAL2) - 1), axis=-1)
        assert inside.mean() > 0.3
        itk = _sitk_resample(image[b, ..., 0], m, c, t)
        np.testing.assert_allclose(out[b, ..., 0][inside], itk[inside], atol=1e-6, rtol=0)


@pytest.mark.parametrize("ndim", [3, 2])
def test_corner_equals_centre_after_translation_change(ndim):
    """About the centre: M(x - c) + c + t == about the corner with t' = t + c - M c."""
    spatial = SPATIAL3 if ndim == 3 else SPATIAL2
    rng = np.random.default_rng(15 + ndim)
    m = _rotation3(0.3, -0.2, (1.1, 1.0, 0.9)) if ndim == 3 else _rotation2(0.3, (1.1, 0.9))
    t = rng.uniform(-1, 1, size=ndim)
    c = (np.array(spatial) - 1) / 2.0
    grid = rng.uniform(-2, 10, size=(1, *spatial, ndim))
    about_centre = np.asarray(apply_affine_to_grid(_params(m, t)[None], grid, centre="centre"))
    about_corner = np.asarray(apply_affine_to_grid(_params(m, t + c - m @ c)[None], grid,
                                                   centre="corner"))
    np.testing.assert_allclose(about_centre, about_corner, atol=1e-12, rtol=0)
    # the corner convention itself is x' = M x + t (numpy)
    np.testing.assert_allclose(np.asarray(apply_affine_to_grid(_params(m, t)[None], grid)),
                               np.einsum("ij,...j->...i", m, grid) + t, atol=1e-12, rtol=0)


def test_wrong_parameter_count_and_centre_raise():
    grid3 = np.zeros((1, 3, 4, 5, 3), np.float32)
    grid2 = np.zeros((1, 3, 4, 2), np.float32)
    with pytest.raises(ValueError):
        apply_affine_to_grid(np.zeros((1, 6), np.float32), grid3)
    with pytest.raises(ValueError):
        apply_affine_to_grid(np.zeros((1, 12), np.float32), grid2)
    with pytest.raises(ValueError):
        affine_matrix(np.zeros((1, 9), np.float32), 3)
    with pytest.raises(ValueError):
        AffineComposition()([np.zeros((1, 11), np.float32), grid3])
    with pytest.raises(ValueError):
        apply_affine_to_grid(np.zeros((1, 12), np.float32), grid3, centre="middle")
    with pytest.raises(ValueError):
        AffineComposition(centre="middle")


def test_config_round_trip():
    rng = np.random.default_rng(16)
    layer = AffineComposition(centre="centre", name="aff")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, AffineComposition) and clone.centre == "centre"
    m, t = _rotation3(0.2, 0.1), np.array([0.5, -0.5, 1.0])
    params = _params(m, t)[None].astype(np.float32)
    grid = rng.uniform(0, 8, size=(1, 4, 5, 6, 3)).astype(np.float32)
    c = (np.array([4, 5, 6]) - 1) / 2.0
    expected = np.einsum("ij,...j->...i", m, grid.astype(np.float64) - c) + c + t
    np.testing.assert_allclose(np.asarray(clone([params, grid])), expected, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(clone([params, grid])),
                                  np.asarray(layer([params, grid])))
