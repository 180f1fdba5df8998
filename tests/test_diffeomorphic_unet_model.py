"""Diffeomorphic U-Net (Bouabid et al.): eq. 4, eq. 5, eq. 6 and the cumulative-sum grid,
against hand computation and numpy."""

import numpy as np
import pytest

import keras

from regseg.layers.registration_losses import (GlobalCrossCorrelationLoss, NegativeDiceLoss,
                                               global_cross_correlation, negative_dice)
from regseg.reproductions.diffeomorphic_unet.model import (DiffeomorphicUNetConfig,
                                                           DiffeomorphicUNetRegistrar,
                                                           build_diffeomorphic_unet, keras2_decay,
                                                           losses_and_weights)

SHAPE = (16, 16, 16)


def _set_flow(model, bias):
    """Flow head with a zero kernel and a constant bias: every logit equals ``bias``."""
    flow = model.get_layer("flow")
    kernel, b = flow.get_weights()
    flow.set_weights([np.zeros_like(kernel), np.full_like(b, bias)])


def test_eq5_negative_dice_by_hand():
    # 1-D "volumes" of 4 voxels: T = [1, 1, 0, 0], phi(S) = [1, .5, .5, 0], S = [1, 1, 1, 0]
    t = np.array([1, 1, 0, 0], np.float32).reshape(1, 4, 1, 1, 1)
    w = np.array([1, .5, .5, 0], np.float32).reshape(1, 4, 1, 1, 1)
    s = np.array([1, 1, 1, 0], np.float32).reshape(1, 4, 1, 1, 1)
    # eq. 5 as printed: -2 |T n phi(S)| / (|T| + |S|) = -2 * 1.5 / (2 + 3)
    got = float(negative_dice(t, w, s, denominator="source", smooth=0.0)[0])
    assert got == pytest.approx(-3.0 / 5.0)
    # V-Net form: -2 * 1.5 / (2 + 2)
    got = float(negative_dice(t, w, denominator="warped", smooth=0.0)[0])
    assert got == pytest.approx(-3.0 / 4.0)
    loss = NegativeDiceLoss(smooth=0.0)(np.concatenate([t, s], -1), w)
    assert float(loss) == pytest.approx(-0.6)
    # perfect overlap with S = phi(S) = T gives -1
    assert float(negative_dice(t, t, t, smooth=0.0)[0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="denominator"):
        negative_dice(t, w, s, denominator="bogus")
    with pytest.raises(ValueError, match="source mask"):
        negative_dice(t, w, denominator="source")
    with pytest.raises(ValueError, match="2 channels"):
        NegativeDiceLoss()(t, w)


def test_eq5_gradient_flows_to_the_warped_mask():
    import tensorflow as tf

    t = tf.constant(np.array([1, 1, 0, 0], np.float32).reshape(1, 4, 1, 1, 1))
    w = tf.Variable(np.array([1, .5, .5, 0], np.float32).reshape(1, 4, 1, 1, 1))
    with tf.GradientTape() as tape:
        value = negative_dice(t, w, t, smooth=0.0)
    grad = tape.gradient(value, w).numpy().ravel()
    # d/dw_i of -2 sum(T w) / (|T| + |S|) = -2 T_i / 4
    np.testing.assert_allclose(grad, [-0.5, -0.5, 0, 0], atol=1e-6)


def test_global_cross_correlation_is_the_squared_pearson_correlation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 4, 5, 6, 1)).astype(np.float32)
    b = (0.7 * a + 0.3 * rng.normal(size=a.shape)).astype(np.float32)
    got = np.asarray(global_cross_correlation(a, b, eps=0.0))
    want = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] ** 2 for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(GlobalCrossCorrelationLoss(eps=0.0).call(a, b)),
                               -np.asarray(want), rtol=1e-4)


def test_grid_is_the_identity_at_zero_logits():
    _, full = build_diffeomorphic_unet(DiffeomorphicUNetConfig(input_shape=SHAPE))
    _set_flow(full, 0.0)
    rng = np.random.default_rng(1)
    moving = rng.normal(size=(1, *SHAPE, 1)).astype(np.float32)
    out = full({"moving": moving, "fixed": moving}, training=False)
    identity = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1)
    np.testing.assert_allclose(np.asarray(out["gradients"])[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["grid"])[0], identity, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["warped"]), moving, atol=1e-4)
    # the released code's grid (no -1): every voxel read one voxel further along each axis
    _, full1 = build_diffeomorphic_unet(DiffeomorphicUNetConfig(input_shape=SHAPE,
                                                                grid_origin="one"))
    _set_flow(full1, 0.0)
    grid1 = np.asarray(full1({"moving": moving, "fixed": moving})["grid"])[0]
    np.testing.assert_allclose(grid1, identity + 1, atol=1e-4)
    reg = DiffeomorphicUNetRegistrar(full).register(
        type("S", (), {"image": moving[0, ..., 0]})(), type("S", (), {"image": moving[0, ..., 0]})())
    np.testing.assert_allclose(reg["displacement"], 0.0, atol=1e-4)


def test_eq4_eq6_total_loss_by_hand():
    """Loss = MSE + alpha * mean|g - 1| + beta * eq. 5 (+ the flow kernel's L1, 0 here)."""
    alpha, beta, c = 0.3, 0.05, 0.4
    config = DiffeomorphicUNetConfig(input_shape=SHAPE, alpha=alpha, segmentation=True, beta=beta)
    train, full = build_diffeomorphic_unet(config)
    loss, weights = losses_and_weights(config)
    train.compile(optimizer="sgd", loss=loss, loss_weights=weights)
    _set_flow(full, c)  # every logit c: gradients 2 sigmoid(c), a uniform stretch
    rng = np.random.default_rng(2)
    moving = rng.normal(size=(1, *SHAPE, 1)).astype(np.float32)
    fixed = rng.normal(size=(1, *SHAPE, 1)).astype(np.float32)
    m_mask = np.zeros((1, *SHAPE, 1), np.float32)
    m_mask[:, 4:12, 4:12, 4:12] = 1
    f_mask = np.zeros_like(m_mask)
    f_mask[:, 5:13, 3:11, 4:10] = 1
    inputs = {"moving": moving, "fixed": fixed, "moving_mask": m_mask}
    out = full(inputs, training=False)
    warped, warped_mask = np.asarray(out["warped"]), np.asarray(out["warped_mask"])
    g = 2.0 / (1.0 + np.exp(-c))
    want = (np.mean((fixed - warped) ** 2) + alpha * abs(g - 1.0)
            - beta * 2 * np.sum(f_mask * warped_mask) / (f_mask.sum() + m_mask.sum()))
    got = train.evaluate(inputs, {"warped": fixed,
                                  "warped_mask": np.concatenate([f_mask, m_mask], -1)},
                         verbose=0, return_dict=True)["loss"]
    assert got == pytest.approx(want, rel=1e-4)


def test_config_and_schedule():
    with pytest.raises(ValueError, match="multiples of 16"):
        DiffeomorphicUNetConfig(input_shape=(24, 32, 32))
    with pytest.raises(ValueError, match="similarity"):
        DiffeomorphicUNetConfig(input_shape=SHAPE, similarity="ncc")
    with pytest.raises(ValueError, match="non-negative"):
        DiffeomorphicUNetConfig(input_shape=SHAPE, alpha=-1.0)
    # Keras 2 decay: lr / (1 + decay * iterations), 98 steps per epoch (§4.5)
    schedule = keras2_decay(1e-3, 1e-6, 98)
    assert schedule(0) == pytest.approx(1e-3)
    assert schedule(125) == pytest.approx(1e-3 / (1 + 1e-6 * 125 * 98))


def test_layers_of_the_model_are_serialisable():
    loss = NegativeDiceLoss(denominator="warped", smooth=1e-3)
    again = NegativeDiceLoss.from_config(loss.get_config())
    assert again.denominator == "warped" and again.smooth == 1e-3
    cc = keras.losses.deserialize(keras.losses.serialize(GlobalCrossCorrelationLoss(eps=1e-4)))
    assert isinstance(cc, GlobalCrossCorrelationLoss) and cc.eps == 1e-4
