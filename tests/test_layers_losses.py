"""Tests of the shared losses and regularisers against numpy / scipy / hand computation."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from scipy import ndimage

import regseg.layers
from regseg.layers import (L1ActivityPenalty, ReconstructionLoss, SoftDiceLoss, box_sum,
                           local_cross_correlation, soft_dice)


# --------------------------------------------------------------------------- box_sum

@pytest.mark.parametrize("shape", [(2, 5, 6, 7, 3), (2, 6, 7, 2)])
@pytest.mark.parametrize("window", [1, 3, 5])
def test_box_sum_matches_uniform_filter(shape, window):
    rng = np.random.default_rng(window)
    x = rng.normal(size=shape)
    ndim = len(shape) - 2
    size = (1,) + (window,) * ndim + (1,)
    expected = ndimage.uniform_filter(x, size=size, mode="constant", cval=0.0) * window ** ndim
    np.testing.assert_allclose(np.asarray(box_sum(x, window)), expected, atol=1e-10, rtol=0)


def test_box_sum_direct_numpy_and_errors():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 4, 5, 3, 1))
    r = 1
    padded = np.pad(x, ((0, 0), (r, r), (r, r), (r, r), (0, 0)))
    expected = np.zeros_like(x)
    for i, j, k in np.ndindex(4, 5, 3):
        expected[0, i, j, k, 0] = padded[0, i:i + 3, j:j + 3, k:k + 3, 0].sum()
    np.testing.assert_allclose(np.asarray(box_sum(x, 3)), expected, atol=1e-12)
    for bad in (0, 2, -3):
        with pytest.raises(ValueError):
            box_sum(x, bad)


# --------------------------------------------------------------------------- LCC

def _lcc_brute_force(i_img, j_img, window, eps):
    """Explicit window loops over the zero-padded images, centred second moments."""
    batch, *spatial, _ = i_img.shape
    r = window // 2
    n = window ** len(spatial)
    pad = ((0, 0),) + ((r, r),) * len(spatial) + ((0, 0),)
    ip, jp = np.pad(i_img, pad), np.pad(j_img, pad)
    out = np.zeros(i_img.shape)
    for b in range(batch):
        for x in np.ndindex(*spatial):
            for c in range(i_img.shape[-1]):
                sl = (b,) + tuple(slice(xi, xi + window) for xi in x) + (c,)
                wi, wj = ip[sl], jp[sl]  # window incl. padded zeros, n values
                assert wi.size == n
                mi, mj = wi.mean(), wj.mean()
                cov = np.sum((wi - mi) * (wj - mj))
                var_i = np.sum((wi - mi) ** 2)
                var_j = np.sum((wj - mj) ** 2)
                out[(b, *x, c)] = cov * cov / (var_i * var_j + eps)
    return out


@pytest.mark.parametrize("window", [3, 9])
def test_local_cross_correlation_matches_brute_force(window):
    rng = np.random.default_rng(window)
    i_img = rng.uniform(size=(2, 5, 6, 7, 1))
    j_img = 0.6 * i_img + 0.4 * rng.uniform(size=i_img.shape)
    expected = _lcc_brute_force(i_img, j_img, window, 1e-5)
    got = np.asarray(local_cross_correlation(i_img, j_img, window=window, eps=1e-5))
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
    assert np.all((got >= 0) & (got <= 1))
    assert 0.1 < got.mean() < 0.99  # a non-trivial map
    # float32 agrees to float32 precision
    got32 = np.asarray(local_cross_correlation(i_img.astype(np.float32),
                                               j_img.astype(np.float32), window=window))
    np.testing.assert_allclose(got32, expected, atol=2e-4)


def test_local_cross_correlation_multichannel_is_per_channel():
    """Regression: channels used to be sliced one by one, mixing I, J, I^2... when C > 1."""
    rng = np.random.default_rng(11)
    i_img = rng.uniform(size=(2, 5, 6, 4, 2))
    j_img = 0.5 * i_img + 0.5 * rng.uniform(size=i_img.shape)
    got = np.asarray(local_cross_correlation(i_img, j_img, window=3))
    np.testing.assert_allclose(got, _lcc_brute_force(i_img, j_img, 3, 1e-5), rtol=1e-8,
                               atol=1e-10)
    same = np.asarray(local_cross_correlation(i_img, i_img, window=3))
    np.testing.assert_allclose(same, 1.0, atol=1e-3)
    # 2-D, 3 channels
    i2 = rng.uniform(size=(1, 6, 7, 3))
    j2 = rng.uniform(size=(1, 6, 7, 3))
    np.testing.assert_allclose(np.asarray(local_cross_correlation(i2, j2, window=5)),
                               _lcc_brute_force(i2, j2, 5, 1e-5), rtol=1e-8, atol=1e-10)


def test_local_cross_correlation_of_identical_images_is_one():
    rng = np.random.default_rng(3)
    img = rng.uniform(size=(2, 6, 7, 8, 1))
    img[0, :, :, :4] = 0.5  # a constant block: zero variance where the window sits inside it
    cc = np.asarray(local_cross_correlation(img, img, window=3))
    # windowed variance computed by hand (zero padding, centred)
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
    var = np.zeros(img.shape)
    for b in range(2):
        for x in np.ndindex(6, 7, 8):
            w = pad[b, x[0]:x[0] + 3, x[1]:x[1] + 3, x[2]:x[2] + 3, 0]
            var[(b, *x, 0)] = np.sum((w - w.mean()) ** 2)
    nonzero = var > 1e-3
    assert 0.5 < nonzero.mean() < 1.0
    np.testing.assert_allclose(cc[nonzero], 1.0, atol=1e-3)
    # var^2 / (var^2 + eps) exactly
    np.testing.assert_allclose(cc, var ** 2 / (var ** 2 + 1e-5), atol=1e-8)
    # inside the constant block (window fully inside, away from the zero padding) cc is 0
    np.testing.assert_allclose(cc[0, 1:5, 1:6, 1:3], 0.0, atol=1e-12)


# --------------------------------------------------------------------------- ReconstructionLoss

def test_reconstruction_loss_mse_part_and_total():
    rng = np.random.default_rng(4)
    y_true = rng.uniform(size=(2, 5, 6, 7, 1))
    y_pred = y_true + 0.3 * rng.normal(size=y_true.shape)
    mse = np.mean((y_true - y_pred) ** 2, axis=(1, 2, 3, 4))
    only_mse = ReconstructionLoss(mse_weight=2.5, lcc_weight=0.0)
    np.testing.assert_allclose(np.asarray(only_mse.call(y_true, y_pred)), 2.5 * mse, rtol=1e-10)
    # Keras reduction: mean over the batch (float32 compute dtype)
    np.testing.assert_allclose(float(only_mse(y_true, y_pred)), 2.5 * mse.mean(), rtol=1e-5)
    cc = _lcc_brute_force(y_true, y_pred, 3, 1e-5).mean(axis=(1, 2, 3, 4))
    full = ReconstructionLoss(mse_weight=1.0, lcc_weight=0.5, window=3)
    np.testing.assert_allclose(np.asarray(full.call(y_true, y_pred)), mse - 0.5 * cc, rtol=1e-8)
    only_lcc = ReconstructionLoss(mse_weight=0.0, lcc_weight=1.0, window=3)
    np.testing.assert_allclose(np.asarray(only_lcc.call(y_true, y_pred)), -cc, rtol=1e-8)


# --------------------------------------------------------------------------- Dice

def _one_hot(labels, k):
    return np.eye(k)[np.asarray(labels)]


def test_soft_dice_hand_computed():
    # sample 0 (2x3, classes 0..2):
    #   true [[0,1,1],[2,2,0]]   pred [[0,1,2],[2,2,1]]
    #   class 0: |T|=2 |P|=1 |T&P|=1 -> 2/3 ; class 1: 2,2,1 -> 1/2 ; class 2: 2,3,2 -> 4/5
    # sample 1: true [[1,1,1],[0,0,0]], pred soft: class-1 prob 0.5 everywhere, class-0 0.5
    #   class 0: sum t = 3, sum p = 3, sum tp = 1.5 -> 3/6 = 1/2
    #   class 1: 3, 3, 1.5 -> 1/2 ; class 2: t = 0, p = 0 -> (0 + s)/(0 + s) = 1
    y_true = np.stack([_one_hot([[0, 1, 1], [2, 2, 0]], 3), _one_hot([[1, 1, 1], [0, 0, 0]], 3)])
    y_pred = np.stack([_one_hot([[0, 1, 2], [2, 2, 1]], 3),
                       np.broadcast_to([0.5, 0.5, 0.0], (2, 3, 3))])
    s = 1e-5
    full = np.array([[(2 + s) / (3 + s), (2 + s) / (4 + s), (4 + s) / (5 + s)],
                     [(3 + s) / (6 + s), (3 + s) / (6 + s), 1.0]])
    np.testing.assert_allclose(np.asarray(soft_dice(y_true, y_pred, include_background=True)),
                               full, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(soft_dice(y_true, y_pred, include_background=False)),
                               full[:, 1:], rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(soft_dice(y_true, y_pred, include_background=False, smooth=0.0))[0],
        [0.5, 0.8], rtol=1e-12)
    # the loss: 1 - mean over the kept classes, per sample; Keras averages over the batch
    with_bg = SoftDiceLoss(include_background=True)
    without_bg = SoftDiceLoss(include_background=False)
    np.testing.assert_allclose(np.asarray(with_bg.call(y_true, y_pred)), 1 - full.mean(1),
                               rtol=1e-10)
    np.testing.assert_allclose(np.asarray(without_bg.call(y_true, y_pred)),
                               1 - full[:, 1:].mean(1), rtol=1e-10)
    np.testing.assert_allclose(float(without_bg(y_true, y_pred)), 1 - full[:, 1:].mean(),
                               rtol=1e-6)


def test_soft_dice_3d_perfect_and_disjoint():
    labels = np.zeros((1, 3, 4, 5), int)
    labels[0, 1:, 1:3, 2:] = 1
    labels[0, 0, :, :2] = 2
    t = _one_hot(labels, 3)
    np.testing.assert_allclose(
        np.asarray(soft_dice(t, t, include_background=False, smooth=0.0)), [[1.0, 1.0]])
    swapped = t[..., [0, 2, 1]]  # foreground classes swapped: disjoint
    np.testing.assert_allclose(
        np.asarray(soft_dice(t, swapped, include_background=False, smooth=0.0)), [[0.0, 0.0]])
    np.testing.assert_allclose(
        float(SoftDiceLoss(include_background=False, smooth=0.0)(t, swapped)), 1.0)
    # with the background: background Dice 1 (same channel), foreground 0 -> loss 1 - 1/3
    np.testing.assert_allclose(
        float(SoftDiceLoss(include_background=True, smooth=0.0)(t, swapped)), 2.0 / 3.0,
        rtol=1e-6)


def test_soft_dice_include_background_is_required():
    t = _one_hot([[0, 1], [1, 0]], 2)[None]
    with pytest.raises(TypeError):
        soft_dice(t, t)
    with pytest.raises(TypeError):
        soft_dice(t, t, True)  # keyword only
    with pytest.raises(TypeError):
        SoftDiceLoss()
    with pytest.raises(TypeError):  # the old keyword is gone from the constructor
        SoftDiceLoss(exclude_background=True)


def test_soft_dice_legacy_exclude_background_config():
    """Configs saved before include_background existed still load, with the meaning inverted."""
    t = _one_hot([[0, 1, 2], [2, 1, 0]], 3)[None]
    p = np.random.default_rng(9).dirichlet(np.ones(3), size=(1, 2, 3))
    for exclude in (True, False):
        legacy = {"module": "builtins", "class_name": "SoftDiceLoss",
                  "registered_name": "regseg>SoftDiceLoss",
                  "config": {"name": "soft_dice", "reduction": "sum_over_batch_size",
                             "exclude_background": exclude, "smooth": 1e-5}}
        clone = keras.saving.deserialize_keras_object(legacy)
        assert isinstance(clone, SoftDiceLoss)
        assert clone.include_background is (not exclude)
        assert "exclude_background" not in clone.get_config()
        expected = 1 - np.mean(np.asarray(soft_dice(t, p, include_background=not exclude)))
        np.testing.assert_allclose(float(clone(t, p)), expected, rtol=1e-6)
    with pytest.raises(ValueError):
        SoftDiceLoss.from_config({"include_background": True, "exclude_background": True})


# --------------------------------------------------------------------------- L1 penalties

def test_l1_activity_penalty_matches_numpy_and_is_identity():
    """Activity penalty: weight * mean over the batch of sum |x - value| per sample."""
    rng = np.random.default_rng(8)
    x = rng.normal(1.0, 0.5, size=(4, 3, 5, 2)).astype(np.float32)
    inp = keras.Input(x.shape[1:])
    model = keras.Model(inp, L1ActivityPenalty(0.1, 1.0, name="pen")(inp))
    out = np.asarray(model(x))
    np.testing.assert_array_equal(out, x)
    expected = 0.1 * np.sum(np.abs(x.astype(np.float64) - 1.0)) / x.shape[0]
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), expected, rtol=1e-5)
    # independent of the batch size for repeated samples
    model(np.concatenate([x, x]))
    np.testing.assert_allclose(float(model.losses[0]), expected, rtol=1e-5)
    # weight 0 adds nothing
    model0 = keras.Model(inp, L1ActivityPenalty(0.0)(inp))
    model0(x)
    assert float(sum(model0.losses)) == 0.0


# --------------------------------------------------------------------------- serialisation

def test_losses_and_penalty_config_round_trip():
    rng = np.random.default_rng(6)
    y_true = rng.uniform(size=(2, 5, 6, 7, 1)).astype(np.float32)
    y_pred = rng.uniform(size=(2, 5, 6, 7, 1)).astype(np.float32)
    rec = ReconstructionLoss(mse_weight=0.7, lcc_weight=0.3, window=3, eps=1e-4)
    clone = keras.losses.deserialize(keras.losses.serialize(rec))
    assert isinstance(clone, ReconstructionLoss)
    assert (clone.mse_weight, clone.lcc_weight, clone.window, clone.eps) == (0.7, 0.3, 3, 1e-4)
    expected = (0.7 * np.mean((y_true.astype(np.float64) - y_pred) ** 2)
                - 0.3 * _lcc_brute_force(y_true.astype(np.float64), y_pred.astype(np.float64),
                                         3, 1e-4).mean())
    np.testing.assert_allclose(float(clone(y_true, y_pred)), expected, rtol=1e-4)
    np.testing.assert_allclose(float(clone(y_true, y_pred)), float(rec(y_true, y_pred)))

    t = _one_hot(rng.integers(0, 3, size=(2, 4, 5)), 3)
    p = rng.dirichlet(np.ones(3), size=(2, 4, 5))
    dice = SoftDiceLoss(include_background=True, smooth=0.5)
    clone = keras.losses.deserialize(keras.losses.serialize(dice))
    assert isinstance(clone, SoftDiceLoss)
    assert (clone.include_background, clone.smooth) == (True, 0.5)
    inter, tot = (t * p).sum((1, 2)), t.sum((1, 2)) + p.sum((1, 2))
    np.testing.assert_allclose(float(clone(t, p)), np.mean(1 - ((2 * inter + 0.5) / (tot + 0.5))
                                                           .mean(1)), rtol=1e-5)

    pen = L1ActivityPenalty(0.3, 0.5, name="pen")
    clone = keras.layers.deserialize(keras.layers.serialize(pen))
    assert isinstance(clone, L1ActivityPenalty)
    assert (clone.weight, clone.value, clone.name) == (0.3, 0.5, "pen")


def test_l1_to_value_is_gone():
    """The dead ``L1ToValue`` regulariser was removed (models use :class:`L1ActivityPenalty`)."""
    assert not hasattr(regseg.layers, "L1ToValue")
    assert "L1ToValue" not in regseg.layers.__all__
