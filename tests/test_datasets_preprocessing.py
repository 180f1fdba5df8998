"""Tests of regseg.datasets.preprocessing (U-ReSNet §3.5) against independent computations."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from regseg.datasets.io import Volume
from regseg.datasets.preprocessing import (
    PAPER_CROP_LIA_1MM,
    PAPER_CROP_RAS_1MM,
    crop_around_centre_of_mass,
    crop_shape_for_spacing,
    normalise_zscore,
    resample_to_spacing,
)


def _world(affine, ijk):
    return np.asarray(ijk, np.float64) @ affine[:3, :3].T + affine[:3, 3]


def _oblique_affine(spacing, origin, angle=0.3):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing, float)
    aff[:3, 3] = origin
    return aff


# --------------------------------------------------------------------------- z-score
def test_zscore_matches_numpy():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 30.0, (20, 21, 22))
    mask = rng.random(image.shape) > 0.6
    out = normalise_zscore(image, mask)
    assert out.dtype == np.float32
    expected = (image - image[mask].mean()) / image[mask].std()
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)
    assert np.all(out[~mask] == 0)
    assert abs(float(out[mask].astype(np.float64).mean())) < 1e-5
    assert abs(float(out[mask].astype(np.float64).std()) - 1.0) < 1e-5


def test_zscore_errors():
    with pytest.raises(ValueError, match="empty"):
        normalise_zscore(np.ones((3, 3, 3)), np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="constant"):
        normalise_zscore(np.ones((3, 3, 3)), np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="shape"):
        normalise_zscore(np.ones((3, 3, 3)), np.ones((3, 3, 4)))


# --------------------------------------------------------------------------- CoM crop
def _blob(shape, centre, radii):
    grid = np.indices(shape).astype(float)
    d = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
    return d <= 1.0


@pytest.mark.parametrize(
    "centre, box",
    [((15.3, 20.7, 17.2), (16, 20, 18)),      # box smaller than the volume: pure cropping
     ((15.3, 20.7, 17.2), (41, 50, 44)),      # box larger than the volume: padding everywhere
     ((6.0, 33.0, 10.4), (24, 24, 24))],      # brain near a border: padding on one side
)
def test_crop_preserves_world_and_values(centre, box):
    rng = np.random.default_rng(1)
    shape = (30, 40, 35)
    aff = _oblique_affine((1.2, 0.9, 1.5), (-20.0, 13.0, 4.0))
    mask = _blob(shape, centre, (5.0, 6.0, 4.0))
    image = rng.random(shape).astype(np.float32) + 1.0   # never 0: padding is recognisable
    label = rng.integers(1, 9, shape).astype(np.int32)
    (img_c, lab_c, mask_c), new_aff = crop_around_centre_of_mass(
        [image, label, mask.astype(np.uint8)], mask, box, aff)
    assert img_c.shape == box and lab_c.dtype == np.int32 and img_c.dtype == np.float32

    # Independent check through the affines: each output voxel's world position maps back to an
    # integer input voxel; its value must be that input value, or 0 where that voxel is outside.
    out_idx = np.argwhere(np.ones(box, bool))
    src = _world(np.linalg.inv(aff), _world(new_aff, out_idx))
    np.testing.assert_allclose(src, np.rint(src), atol=1e-6)   # pure translation in voxels
    src = np.rint(src).astype(int)
    inside = np.all((src >= 0) & (src < np.array(shape)), axis=1)
    np.testing.assert_array_equal(img_c[tuple(out_idx[inside].T)], image[tuple(src[inside].T)])
    np.testing.assert_array_equal(lab_c[tuple(out_idx[inside].T)], label[tuple(src[inside].T)])
    assert np.all(img_c[tuple(out_idx[~inside].T)] == 0)
    assert np.all(lab_c[tuple(out_idx[~inside].T)] == 0)
    if any(b > s for b, s in zip(box, shape)) or centre[0] < 12:
        assert (~inside).any()          # these cases must pad

    # the brain's centre of mass lands within half a voxel of the box centre
    com_in = np.array(ndimage.center_of_mass(mask))
    start = src[0]                                           # input voxel of output voxel (0,0,0)
    com_out = com_in - start
    assert np.all(np.abs(com_out - (np.array(box) - 1) / 2) <= 0.5 + 1e-9)
    if mask_c.sum() == mask.sum():                          # whole brain kept: measure directly
        np.testing.assert_allclose(ndimage.center_of_mass(mask_c), com_out, atol=1e-9)


def test_crop_trailing_axes_and_errors():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 3:6, 4:7] = True
    field = np.random.default_rng(2).random((10, 10, 10, 3))
    (f_c,), aff = crop_around_centre_of_mass([field], mask, (4, 4, 4), np.eye(4))
    assert f_c.shape == (4, 4, 4, 3)
    start = aff[:3, 3].astype(int)             # identity input affine: translation = start
    np.testing.assert_array_equal(f_c, field[start[0]:start[0] + 4, start[1]:start[1] + 4,
                                             start[2]:start[2] + 4])
    np.testing.assert_array_equal(start, [2, 3, 4])   # CoM (3,4,5) -> box centre 1.5 -> start 2,3,4
    with pytest.raises(ValueError, match="empty"):
        crop_around_centre_of_mass([field], np.zeros((10, 10, 10)), (4, 4, 4), np.eye(4))
    with pytest.raises(ValueError, match="does not match"):
        crop_around_centre_of_mass([np.zeros((9, 10, 10))], mask, (4, 4, 4), np.eye(4))


# --------------------------------------------------------------------------- resampling
def _linear_volume(shape, aff, coef=(0.7, -1.3, 2.1), const=5.0):
    world = _world(aff, np.indices(shape).reshape(3, -1).T)
    return (world @ np.asarray(coef) + const).reshape(shape).astype(np.float32), coef, const


def test_resample_linear_function_reproduced_exactly():
    shape = (12, 14, 10)
    aff = _oblique_affine((1.0, 1.0, 1.0), (30.0, -12.0, 8.0), angle=0.4)
    # flip one axis too (an LPS-like direction) to exercise the RAS<->LPS handling
    aff[:3, 1] *= -1
    data, coef, const = _linear_volume(shape, aff)
    out = resample_to_spacing(Volume(data, aff, "lin.nii.gz"), 2.0)
    assert out.data.shape == (6, 7, 5) and out.data.dtype == np.float32
    np.testing.assert_allclose(out.spacing, [2.0, 2.0, 2.0], atol=1e-9)
    # directions kept
    np.testing.assert_allclose(out.affine[:3, :3] / 2.0, aff[:3, :3], atol=1e-9)
    # field-of-view corner kept: voxel corner (-0.5,-0.5,-0.5) has the same world position
    np.testing.assert_allclose(_world(out.affine, [-0.5] * 3), _world(aff, [-0.5] * 3), atol=1e-6)
    # linear interpolation of a linear function of world position is exact
    idx = np.indices(out.data.shape).reshape(3, -1).T
    expected = _world(out.affine, idx) @ np.asarray(coef) + const
    np.testing.assert_allclose(out.data.reshape(-1), expected, atol=1e-3)


def test_resample_labels_nearest_upsampling():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, (5, 4, 3)).astype(np.int32)
    aff = np.diag([-2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [40.0, -7.0, 3.0]
    out = resample_to_spacing(Volume(labels, aff, "lab.nii.gz"), 1.0, label=True)
    assert out.data.dtype == np.int32
    # 2 mm -> 1 mm with corners aligned: new voxel j samples old index (j + 0.5)/2 - 0.5, whose
    # nearest voxel is floor(j / 2): every label is repeated twice along each axis.
    expected = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    np.testing.assert_array_equal(out.data, expected)


def test_resample_anisotropic_sizes():
    vol = Volume(np.ones((10, 9, 7), np.float32), np.diag([1.0, 1.5, 3.0, 1.0]), "x.nii")
    out = resample_to_spacing(vol, (2.0, 1.5, 1.0))
    assert out.data.shape == (5, 9, 21)


# --------------------------------------------------------------------------- crop shapes
def test_crop_shape_for_spacing():
    assert crop_shape_for_spacing(PAPER_CROP_RAS_1MM, 2.0) == (80, 104, 88)
    assert crop_shape_for_spacing(PAPER_CROP_RAS_1MM, 1.0) == PAPER_CROP_RAS_1MM
    # 160/1.5 = 106.7 -> 108; 208/1.5 = 138.7 -> 140; 176/1.5 = 117.3 -> 116
    assert crop_shape_for_spacing(PAPER_CROP_RAS_1MM, 1.5) == (108, 140, 116)
    assert crop_shape_for_spacing((10, 10, 10), 100.0) == (4, 4, 4)
    assert all(v % 4 == 0 for v in crop_shape_for_spacing((161, 203, 177), 1.3))


def test_paper_crop_in_ras_order_matches_nibabel_reorientation():
    # The paper's 160x176x208 is in FreeSurfer's LIA voxel order; permute it with nibabel's
    # orientation transform LIA -> RAS.
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("LIA"),
                                                nib.orientations.axcodes2ornt("RAS"))
    ras = [0, 0, 0]
    for old_axis, (new_axis, _) in enumerate(transform):
        ras[int(new_axis)] = PAPER_CROP_LIA_1MM[old_axis]
    assert tuple(ras) == PAPER_CROP_RAS_1MM == (160, 208, 176)
