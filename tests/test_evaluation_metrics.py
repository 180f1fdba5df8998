"""Metrics of regseg.evaluation, each checked against a value computed another way."""

import math
import statistics

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from regseg.evaluation import (
    L2R_TRE_INTERPOLATION,
    dice,
    folding_fraction,
    hausdorff_distance,
    hd95,
    jacobian_determinant,
    sd_log_jacobian,
    tre,
    worst_fraction_mean,
)


# ----------------------------------------------------------------------------- dice
def test_dice_hand_count():
    a = np.array([[1, 1, 1, 0],
                  [2, 2, 0, 0],
                  [0, 4, 0, 0]])
    b = np.array([[1, 1, 0, 0],
                  [2, 1, 2, 2],
                  [0, 0, 0, 5]])
    # label 1: |A|=3, |B|=3, |A∩B|=2 -> 4/6 ; label 2: |A|=2, |B|=3, ∩=1 -> 2/5
    # label 3: absent from both -> empty ; label 4: only in a -> 0 ; label 5: only in b -> 0
    got = dice(a, b, [0, 1, 2, 3, 4, 5])  # 0 (background) is dropped
    assert got.shape == (5,)
    np.testing.assert_allclose(got[[0, 1, 3, 4]], [4 / 6, 2 / 5, 0.0, 0.0])
    assert np.isnan(got[2])
    got0 = dice(a, b, [1, 2, 3, 4, 5], empty=0.0)
    np.testing.assert_allclose(got0, [4 / 6, 2 / 5, 0.0, 0.0, 0.0])


def test_dice_random_against_loop_count():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(7, 6, 5))
    b = rng.integers(0, 4, size=(7, 6, 5))
    got = dice(a, b, [1, 2, 3])
    for i, lab in enumerate([1, 2, 3]):
        inter = na = nb = 0
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
            na += x == lab
            nb += y == lab
            inter += (x == lab) and (y == lab)
        assert got[i] == pytest.approx(2 * inter / (na + nb))


def test_dice_errors():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3), int), np.zeros((3, 4), int), [1])
    with pytest.raises(ValueError, match="integer"):
        dice(np.zeros((3, 3)), np.zeros((3, 3), int), [1])


# ----------------------------------------------------------------------------- jacobian
def _identity(shape):
    return np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), -1)


def test_jacobian_identity_grid_and_zero_displacement():
    grid = _identity((6, 7, 8))
    np.testing.assert_allclose(jacobian_determinant(grid), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        jacobian_determinant(np.zeros((6, 7, 8, 3)), displacement=True), 1.0, atol=1e-12
    )


def test_jacobian_linear_map_equals_det_A():
    A = np.array([[1.2, 0.3, -0.1], [0.05, 0.9, 0.2], [-0.2, 0.1, 1.1]])
    x = _identity((5, 6, 7))
    phi = x @ A.T + np.array([3.0, -1.0, 2.0])
    # linear maps are differentiated exactly, also by the one-sided border differences
    np.testing.assert_allclose(jacobian_determinant(phi), np.linalg.det(A), rtol=1e-12)
    # same map given as a displacement field
    np.testing.assert_allclose(
        jacobian_determinant(phi - x, displacement=True), np.linalg.det(A), rtol=1e-12
    )
    # values in mm with voxel size s: phi_mm(x_mm) = A x_mm, det unchanged when spacing passed
    s = np.array([0.5, 2.0, 1.5])
    phi_mm = (x * s) @ A.T
    np.testing.assert_allclose(jacobian_determinant(phi_mm, spacing=s), np.linalg.det(A), rtol=1e-12)


def test_jacobian_component_order_matters():
    # swapping two components of the identity reverses orientation: det = -1
    grid = _identity((4, 5, 6))[..., [1, 0, 2]]
    np.testing.assert_allclose(jacobian_determinant(grid), -1.0)


def test_jacobian_2d_quadratic_field_interior_exact():
    x, y = np.meshgrid(np.arange(12.0), np.arange(9.0), indexing="ij")
    u = np.stack([x**2 / 20.0, x * y / 30.0], -1)
    # phi = (x + x^2/20, y + xy/30): J = [[1 + x/10, 0], [y/30, 1 + x/30]]
    expected = (1 + x / 10.0) * (1 + x / 30.0)
    got = jacobian_determinant(u, displacement=True)
    assert got.shape == (12, 9)
    # central differences are exact for quadratics inside the grid
    np.testing.assert_allclose(got[1:-1, 1:-1], expected[1:-1, 1:-1], rtol=1e-12)


def test_jacobian_shape_errors():
    with pytest.raises(ValueError):
        jacobian_determinant(np.zeros((4, 4, 4, 2)))
    with pytest.raises(ValueError):
        jacobian_determinant(np.zeros((4, 4, 4, 3)), spacing=(1.0, 2.0))


def test_folding_detected_for_folding_field():
    # phi_x runs forward up to x = 10 then backward: det (np.gradient) is 1 for x < 10,
    # 0 at the crease x = 10 ((9 - 9) / 2) and -1 for x > 10
    grid = _identity((16, 4, 5))
    xs = np.arange(16.0)
    grid[..., 0] = np.where(xs <= 10, xs, 20 - xs)[:, None, None]
    jac = jacobian_determinant(grid)
    np.testing.assert_allclose(jac[:10], 1.0)
    np.testing.assert_allclose(jac[10], 0.0)
    np.testing.assert_allclose(jac[11:], -1.0)
    assert folding_fraction(jac) == pytest.approx(6 / 16)
    assert folding_fraction(jacobian_determinant(_identity((16, 4, 5)))) == 0.0


def test_folding_fraction_hand_and_mask():
    jac = np.array([[1.0, 0.0, -0.5], [2.0, 3.0, 4.0]])
    assert folding_fraction(jac) == pytest.approx(2 / 6)
    mask = np.array([[1, 0, 1], [1, 0, 0]], bool)
    assert folding_fraction(jac, mask=mask) == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- SDlogJ
def test_sd_log_jacobian_plain_by_hand():
    jac = np.array([1.0, math.e, math.e**2, -1.0]).reshape(2, 2)
    logs = [0.0, 1.0, 2.0, math.log(1e-9)]  # det <= 0 clipped at 1e-9
    assert sd_log_jacobian(jac) == pytest.approx(statistics.pstdev(logs), rel=1e-12)
    mask = np.array([[1, 1], [1, 0]], bool)
    assert sd_log_jacobian(jac, mask=mask) == pytest.approx(statistics.pstdev([0, 1, 2]), rel=1e-12)


def test_sd_log_jacobian_learn2reg_quirk_by_hand():
    jac = np.full((6, 6, 6), 1000.0)  # the 2-voxel border must be cropped away
    inner = [1.0, 0.5, 2.0, -1.0, 1.5, 0.8, 1.1, -5.0]
    jac[2:4, 2:4, 2:4] = np.array(inner).reshape(2, 2, 2)
    # L2R 2020: log(clip(det + 3, 1e-9, 1e9)) on the cropped array
    expected = statistics.pstdev([math.log(max(v + 3, 1e-9)) for v in inner])
    assert sd_log_jacobian(jac, learn2reg=True) == pytest.approx(expected, rel=1e-12)
    # the plain definition differs (no +3, no crop)
    assert sd_log_jacobian(jac) != pytest.approx(expected)
    # mask is cropped the same way
    mask = np.zeros_like(jac, bool)
    mask[2, 2, 2] = mask[3, 3, 3] = True
    exp_m = statistics.pstdev([math.log(inner[0] + 3), math.log(inner[7] + 3 if inner[7] + 3 > 0 else 1e-9)])
    assert sd_log_jacobian(jac, mask=mask, learn2reg=True) == pytest.approx(exp_m, rel=1e-12)


# ----------------------------------------------------------------------------- HD95
def _brute_surface_coords(mask):
    """Surface voxels by explicit 6-neighbour test (array border counts as outside)."""
    m = np.pad(mask, 1, constant_values=False)
    coords = []
    for idx in zip(*np.nonzero(m)):
        for ax in range(mask.ndim):
            for step in (-1, 1):
                n = list(idx)
                n[ax] += step
                if not m[tuple(n)]:
                    coords.append(np.array(idx) - 1)
                    break
            else:
                continue
            break
    return np.array(coords, dtype=float)


def _brute_hd(a, b, spacing, q):
    sa = _brute_surface_coords(a) * spacing
    sb = _brute_surface_coords(b) * spacing
    d = cdist(sa, sb)
    return np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), q)


def _blob(rng, shape, thr):
    return ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > thr


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_pooled_surface_voxel_hd95_against_brute_force(spacing):
    # hausdorff_distance(percentile=95) is the MedPy-style pooled surface-voxel HD95; hd95 itself
    # is the Learn2Reg scorer's (DeepMind surface elements), tested in test_evaluation_learn2reg.py
    rng = np.random.default_rng(1)
    for _ in range(3):
        a = _blob(rng, (14, 12, 10), 0.05)
        b = _blob(rng, (14, 12, 10), 0.05)
        assert a.any() and b.any()
        assert hausdorff_distance(a, b, spacing=spacing, percentile=95) == pytest.approx(
            _brute_hd(a, b, np.array(spacing), 95), rel=1e-10)
        assert hausdorff_distance(a, b, spacing=spacing) == pytest.approx(
            _brute_hd(a, b, np.array(spacing), 100), rel=1e-10
        )


def test_hd95_anisotropic_hand_case_and_empty():
    a = np.zeros((5, 5, 8), bool)
    b = np.zeros((5, 5, 8), bool)
    a[2, 2, 1] = True
    b[2, 2, 4] = True  # 3 voxels apart along z
    assert hd95(a, b, spacing=(1.0, 1.0, 2.5)) == pytest.approx(7.5)
    assert hd95(a, b, spacing=1) == pytest.approx(3.0)
    assert math.isnan(hd95(a, np.zeros_like(b)))
    assert math.isnan(hd95(np.zeros_like(a), np.zeros_like(b)))
    with pytest.raises(ValueError):
        hd95(a, b[:, :, :4])


# ----------------------------------------------------------------------------- TRE
def test_tre_constant_displacement_and_mm_scaling():
    u = np.zeros((10, 11, 12, 3))
    shift = np.array([1.0, -2.0, 0.5])
    u[...] = shift
    fixed = np.array([[2.0, 3.0, 4.0], [5.5, 6.25, 7.0], [1.0, 1.0, 1.0]])
    err_vox = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, -1.0]])
    moving = fixed + shift + err_vox
    spacing = np.array([0.5, 2.0, 3.0])
    expected = np.sqrt(((err_vox * spacing) ** 2).sum(1))  # [0, 0.5, sqrt(16 + 9) = 5]
    np.testing.assert_allclose(expected, [0.0, 0.5, 5.0])
    np.testing.assert_allclose(tre(fixed, moving, u, spacing), expected, atol=1e-12)
    # the Learn2Reg interpolation (cubic spline) reproduces a constant field inside the volume
    np.testing.assert_allclose(tre(fixed[:2], moving[:2], u, spacing, **L2R_TRE_INTERPOLATION),
                               expected[:2], atol=1e-3)


def test_tre_linear_field_trilinear_is_exact():
    x = _identity((8, 9, 10))
    u = 0.1 * x  # u(p) = 0.1 p, exactly interpolated by order 1 at fractional points
    fixed = np.array([[1.3, 2.7, 4.1], [6.5, 0.2, 8.9]])
    moving = np.array([[1.0, 3.0, 5.0], [7.0, 0.0, 9.0]])
    spacing = (1.5, 1.0, 0.8)
    expected = np.linalg.norm((fixed * 1.1 - moving) * np.array(spacing), axis=1)
    np.testing.assert_allclose(tre(fixed, moving, u, spacing), expected, rtol=1e-12)
    with pytest.raises(ValueError):
        tre(fixed, moving[:1], u, spacing)


# ----------------------------------------------------------------------------- robustness
def test_worst_fraction_mean():
    v = np.arange(1.0, 11.0)  # 10 cases -> 3 worst
    assert worst_fraction_mean(v) == pytest.approx(2.0)  # Dice-like: lowest 1, 2, 3
    assert worst_fraction_mean(v, higher_is_better=False) == pytest.approx(9.0)  # TRE-like
    # NaN dropped; 7 cases -> ceil(2.1) = 3
    v7 = np.array([5.0, np.nan, 1.0, 7.0, 3.0, 2.0, 6.0, 4.0])
    assert worst_fraction_mean(v7) == pytest.approx((1 + 2 + 3) / 3)
    assert worst_fraction_mean([4.0], 0.3) == 4.0
    assert math.isnan(worst_fraction_mean([np.nan]))
    with pytest.raises(ValueError):
        worst_fraction_mean(v, fraction=0.0)


def test_jacobian_and_sdlogj_match_learn2reg_style_reimplementation():
    """Re-implementation of the Learn2Reg 2020 scorer (correlate with [-0.5, 0, 0.5],
    zero padding, identity added, 2-voxel crop, +3, clip, log, std)."""
    rng = np.random.default_rng(3)
    disp = ndimage.gaussian_filter(rng.standard_normal((12, 13, 11, 3)), (2, 2, 2, 0)) * 4
    k = np.array([-0.5, 0.0, 0.5])
    J = np.empty((3, 3) + disp.shape[:3])
    for ax in range(3):
        kern = k.reshape([3 if i == ax else 1 for i in range(3)])
        for c in range(3):
            J[ax, c] = ndimage.correlate(disp[..., c], kern, mode="constant", cval=0.0)
    J += np.eye(3).reshape(3, 3, 1, 1, 1)
    J = J[:, :, 2:-2, 2:-2, 2:-2]
    det_ref = np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1)))
    ours = jacobian_determinant(disp, displacement=True)
    np.testing.assert_allclose(ours[2:-2, 2:-2, 2:-2], det_ref, rtol=1e-10, atol=1e-12)
    sd_ref = np.log(np.clip(det_ref + 3, 1e-9, 1e9)).std()
    assert sd_log_jacobian(ours, learn2reg=True) == pytest.approx(sd_ref, rel=1e-10)
