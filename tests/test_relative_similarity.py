"""Relative similarity D_S (Couteaux et al. §2.2): the exhaustive maximum over integer translations
against a brute-force loop, and the gradient-descent approximation against both on exact
translates (D_S = 1 within the resampling error) and on a pair that is not a translate."""

import numpy as np
import pytest

from regseg.datasets.toy_blobs import ToyBlobsConfig, toy_pair
from regseg.evaluation.relative_similarity import (exhaustive_translation_similarity,
                                                   relative_similarities, relative_similarity,
                                                   shift_mask)


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _brute(a, b, m):
    """max over every integer displacement |d_i| <= m, by explicit shifting."""
    best, where = -1.0, None
    ranges = [range(-m, m + 1)] * a.ndim
    for d in np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, a.ndim):
        v = _dice(shift_mask(a, d), b)
        if v > best + 1e-12:
            best, where = v, d
    return best, where


def _disc(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_shift_mask_by_hand():
    m = np.zeros((4, 5), bool)
    m[1, 2] = True
    # tau(m)(x) = m(x + d): the pixel moves by -d
    assert np.argwhere(shift_mask(m, (1, -2))).tolist() == [[0, 4]]
    assert not shift_mask(m, (4, 0)).any()
    with pytest.raises(ValueError, match="integers"):
        shift_mask(m, (0.5, 0))


def test_exhaustive_equals_brute_force_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(3):
        a = rng.random((20, 17)) > 0.7
        b = np.roll(a, (2, -3), (0, 1)) & (rng.random((20, 17)) > 0.2)
        value, d = exhaustive_translation_similarity(a, b, 4)
        ref, _ = _brute(a, b, 4)
        assert value == pytest.approx(ref, abs=1e-12)
        assert _dice(shift_mask(a, d), b) == pytest.approx(value, abs=1e-12)
    a3 = rng.random((8, 7, 6)) > 0.6
    b3 = shift_mask(a3, (1, 0, -1)) | (rng.random((8, 7, 6)) > 0.9)
    assert exhaustive_translation_similarity(a3, b3, 2)[0] == pytest.approx(_brute(a3, b3, 2)[0])


def test_exact_translate_toy_pair():
    """A toy pair without shape jitter is an exact translate: D_S = 1 by both methods."""
    cfg = ToyBlobsConfig(size=96, max_translation=6, sigma_px=(6.0, 9.0), shape_jitter_px=0.0,
                         size_jitter=0.0, n_blobs=(2, 3))
    pair = toy_pair(3, 7, cfg)
    t = pair["translation"]
    assert np.any(t != 0)
    value, d = exhaustive_translation_similarity(pair["s1"], pair["s2"], cfg.max_translation)
    assert value == 1.0 and np.array_equal(d, -t)  # s2(x) = s1(x - t)
    assert _dice(pair["s1"] > 0, pair["s2"] > 0) < 0.95  # not trivially aligned
    gd = relative_similarities(pair["s1"][None], pair["s2"][None], "translation",
                               max_translation=cfg.max_translation, steps=150)
    assert gd.dice[0] == pytest.approx(1.0, abs=1e-9)  # within the resampling error: exact
    np.testing.assert_allclose(gd.parameters[0], -t, atol=0.25)
    assert gd.initial_dice[0] == pytest.approx(_dice(pair["s1"] > 0, pair["s2"] > 0))
    # the elastic class contains the translations: D_S = 1 up to the resampling error
    assert relative_similarity(pair["s1"], pair["s2"], "elastic", grid_factor=16,
                               steps=150) > 0.99


def test_gradient_descent_against_exhaustive_on_a_non_translate_pair():
    cfg = ToyBlobsConfig(size=96, max_translation=6, sigma_px=(6.0, 9.0), shape_jitter_px=2.0,
                         size_jitter=0.1, n_blobs=(2, 3))
    pair = toy_pair(5, 11, cfg)
    exact, _ = exhaustive_translation_similarity(pair["s1"], pair["s2"], cfg.max_translation)
    assert exact < 0.99
    gd = relative_similarity(pair["s1"], pair["s2"], "translation",
                             max_translation=cfg.max_translation, steps=150)
    # gradient descent on blurred masks finds the exhaustive maximum within a pixel's worth
    assert gd == pytest.approx(exact, abs=0.02)
    # the elastic class (finer than translations) is at least as similar
    assert relative_similarity(pair["s1"], pair["s2"], "elastic", grid_factor=8,
                               steps=150) >= exact - 0.01


def test_three_d_translate_and_bounded_translations():
    a = _disc((24, 24, 16), (11, 12, 8), 5)
    b = shift_mask(a, (-2, 1, 0))  # a moved by (+2, -1, 0)
    res = relative_similarities(a[None], b[None], "translation", steps=150)
    assert res.dice[0] == pytest.approx(1.0)
    np.testing.assert_allclose(res.parameters[0], [-2, 1, 0], atol=0.25)
    # a translation bounded to 1 voxel cannot reach the translate
    bounded = relative_similarities(a[None], b[None], "translation", max_translation=1, steps=50)
    assert np.all(np.abs(bounded.parameters) <= 1.0 + 1e-6) and bounded.dice[0] < 1.0


def test_errors_are_named():
    a = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="transform"):
        relative_similarity(a, a, "rigid")
    with pytest.raises(ValueError, match="binary"):
        exhaustive_translation_similarity(np.full((4, 4), 0.5), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shape"):
        exhaustive_translation_similarity(np.zeros((4, 4)), np.zeros((4, 5)))
    assert np.isnan(exhaustive_translation_similarity(a, a)[0])
