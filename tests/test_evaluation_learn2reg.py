"""Learn2Reg displacement files and the scorer's definitions.

* HD95 agrees with the reference definition (DeepMind surface-distance, as the Learn2Reg scorer
  calls it on the whole arrays) within 1e-6 on blobs built here, anisotropic spacing included,
  and with hand values;
* displacement fields taken from a 64^3-like network grid to the original grid, written in both
  submission formats and read back as the scorers read them: shape, and the displacement at
  known points of a known (affine) field;
* the scorer's DSC, TRE and SDlogJ on hand cases.
"""

import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from regseg.evaluation.learn2reg import (displacement_name, learn2reg_scores,
                                         read_displacement_2020, read_displacement_nifti,
                                         resample_displacement, warp_labels_l2r,
                                         write_displacement_2020, write_displacement_nifti)
from regseg.evaluation.metrics import hd95


# ----------------------------------------------------------------------------- HD95
def _reference_hd95(a, b, spacing):
    import surface_distance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return surface_distance.compute_robust_hausdorff(
            surface_distance.compute_surface_distances(a, b, spacing), 95.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_hd95_equals_the_learn2reg_reference_definition(spacing):
    rng = np.random.default_rng(4)
    shape = (40, 36, 30)
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.1
        b = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.1
        a[:, :, :4] = b[:, :, :4] = False      # masks away from one border, touching others
        assert abs(hd95(a, b, spacing=spacing) - _reference_hd95(a, b, spacing)) < 1e-6
        assert hd95(a, b, spacing=spacing) == pytest.approx(hd95(b, a, spacing=spacing))


def test_hd95_hand_values_and_small_structure_in_a_large_volume():
    a = np.zeros((5, 5, 8), bool)
    b = np.zeros((5, 5, 8), bool)
    a[2, 2, 1] = True
    b[2, 2, 4] = True              # unit cubes 3 voxels apart: corner distances 2 and 3
    assert hd95(a, b, spacing=1) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(1.0, 1.0, 2.5)) == pytest.approx(7.5)
    big_a = np.zeros((160, 192, 224), bool)
    big_b = np.zeros_like(big_a)
    big_a[60:70, 80:95, 100:120] = True
    big_b[62:72, 80:95, 100:120] = True     # a box shifted by 2 voxels along the first axis
    assert hd95(big_a, big_b) == pytest.approx(_reference_hd95(big_a, big_b, (1, 1, 1)), abs=1e-6)
    assert hd95(big_a, big_b) == pytest.approx(2.0)
    assert np.isnan(hd95(big_a, np.zeros_like(big_b)))


# ----------------------------------------------------------------------------- displacements
def test_resample_displacement_of_a_known_affine_field():
    """Original grid 20 x 24 x 16 (2 mm), network grid 10 x 12 x 8 over the same field of view."""
    shape_o = (20, 24, 16)
    a_o = np.diag([2.0, 2.0, 2.0, 1.0])
    a_o[:3, 3] = [-20, -24, -16]
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    a_n = a_o @ scale
    a_n[:3, 3] = a_o[:3, 3] + 1.0           # network voxel centres (as ResampleToShape)
    # a field on the network grid: u(x) = (0.5, -0.25, 0.1 * x0) network voxels
    x = np.indices((10, 12, 8), dtype=np.float64)
    u = np.stack([np.full(x[0].shape, 0.5), np.full(x[0].shape, -0.25), 0.1 * x[0]], -1)
    out = resample_displacement(u, a_n, a_n, shape_o, a_o, a_o)
    assert out.shape == (20, 24, 16, 3)
    # original voxel i sits at network coordinate (i - 0.5) / 2; displacement x2 in voxels
    for i, j, k in [(5, 7, 3), (11, 2, 9), (15, 20, 4)]:
        xn = (np.array([i, j, k]) - 0.5) / 2
        expected = 2 * np.array([0.5, -0.25, 0.1 * xn[0]])
        np.testing.assert_allclose(out[i, j, k], expected, atol=1e-5)
    # zero field between two grids that differ by a world translation of 4 mm along axis 1
    a_m = a_o.copy()
    a_m[1, 3] -= 4.0
    zero = resample_displacement(np.zeros_like(u), a_n, a_n, shape_o, a_o, a_m)
    np.testing.assert_allclose(zero[..., 1], 2.0, atol=1e-5)   # 4 mm = 2 moving voxels


def _linear_field(shape):
    x = np.indices(shape, dtype=np.float32)
    return np.stack([0.05 * x[0] + 1.0, -0.02 * x[1], 0.5 * np.ones(shape, np.float32)], -1)


def test_nifti_submission_reads_back_shape_and_values(tmp_path):
    u = _linear_field((12, 10, 8))
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    path = tmp_path / displacement_name("case_001_exp", "case_001_insp", "nifti")
    assert path.name == "disp_0001_0001.nii.gz"
    write_displacement_nifti(path, u, affine)
    back = read_displacement_nifti(path)
    assert back.shape == (12, 10, 8, 3)
    np.testing.assert_allclose(back[3, 4, 5], [0.05 * 3 + 1.0, -0.02 * 4, 0.5], atol=1e-6)
    np.testing.assert_allclose(nib.load(str(path)).affine, affine)
    with pytest.raises(ValueError, match="displacement must be"):
        write_displacement_nifti(tmp_path / "x.nii.gz", u[..., :2], affine)


def test_2020_npz_submission_is_half_resolution_float16_and_reads_back(tmp_path):
    u = _linear_field((16, 12, 10))
    path = tmp_path / displacement_name(3, 11, "2020")
    assert path.name == "disp_0003_0011.npz"
    write_displacement_2020(path, u)
    with np.load(path) as data:
        assert data["arr_0"].dtype == np.float16 and data["arr_0"].shape == (3, 8, 6, 5)
    back = read_displacement_2020(path)
    assert back.shape == (16, 12, 10, 3)
    # a linear field survives the halving and the scorer's doubling inside the volume
    for p in [(4, 5, 5), (8, 6, 4), (10, 3, 6)]:
        np.testing.assert_allclose(back[p], u[p], atol=0.06)
    with pytest.raises(ValueError, match="even"):
        write_displacement_2020(tmp_path / "odd.npz", _linear_field((15, 12, 10)))
    assert displacement_name("baseline", "followup") == "disp_baseline_followup.nii.gz"


# ----------------------------------------------------------------------------- scorer
def test_scorer_dice_tre_and_sdlogj_on_hand_cases():
    shape = (20, 20, 20)
    fixed = np.zeros(shape, np.int32)
    fixed[5:12, 6:14, 4:10] = 1
    fixed[13:16, 6:10, 4:8] = 2
    moving = np.roll(fixed, 2, axis=0)                  # moving = fixed shifted by +2 along x
    moving[moving == 2] = 0                              # label 2 absent from the moving image
    u = np.zeros((*shape, 3))
    u[..., 0] = 2.0                                      # the exact field: x -> x + 2
    s = learn2reg_scores(u, fixed_labels=fixed, moving_labels=moving, labels=[1, 2])
    assert s["DSC"] == pytest.approx(1.0) and s["HD95"] == pytest.approx(0.0)
    assert np.isnan(s["Dice 2"])                         # skipped, as the scorer does
    ident = learn2reg_scores(np.zeros_like(u), fixed_labels=fixed, moving_labels=moving,
                             labels=[1])
    assert ident["DSC"] == pytest.approx(2 * 5 * 8 * 6 / (2 * 7 * 8 * 6))  # 5 of 7 rows overlap
    assert ident["SDlogJ L2R"] == 0.0 and ident["folding fraction"] == 0.0
    warped = warp_labels_l2r(moving, u)
    np.testing.assert_array_equal(warped[:17], np.where(fixed == 2, 0, fixed)[:17])
    # TRE: fixed landmarks moved by u, compared with the moving ones, in mm
    fp = np.array([[5.0, 5.0, 5.0], [10.0, 8.0, 6.0]])
    mp = fp + [[2.0, 0.0, 0.0], [2.0, 1.0, 0.0]]
    t = learn2reg_scores(u, fixed_points=fp, moving_points=mp, spacing=(1.0, 2.0, 3.0))
    assert t["TRE mm"] == pytest.approx((0.0 + 2.0) / 2)
    np.testing.assert_allclose(t["TRE landmarks"], [0.0, 2.0], atol=1e-9)
    # a field that folds inside: the plain SDlogJ sees it, the folded fraction counts it
    fold = np.zeros((*shape, 3))
    fold[8:12, ..., 0] = -np.arange(4)[:, None, None] * 1.5
    f = learn2reg_scores(fold)
    assert f["folding fraction"] > 0 and f["SDlogJ"] > f["SDlogJ L2R"] > 0
