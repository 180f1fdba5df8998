"""Mixed precision (``mixed_bfloat16``): U-ReSNet builds and trains, its loss matches float32.

Under ``keras.mixed_precision.set_global_policy("mixed_bfloat16")`` the convolutions compute in
bfloat16 while the layers that handle coordinates and loss terms (warp, sampling grid, affine
composition, L1 penalties, pyramid loss layers) keep a float32 policy and the loss functions cast
their inputs to float32 (``regseg.layers._checks``).  Stated tolerance, on one fixed batch at
32^3 with the same weights (deforming heads perturbed): the total loss and every loss term within
0.5 % (relative) of float32 (measured: 0.08 % worst, the reconstruction term), the gradients
finite with a cosine similarity of at least 0.97 to the float32 gradients (measured 0.990;
bfloat16 has 8 significant bits, so the gradients differ by ~14 % in norm).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from regseg.layers import (AffineComposition, CumulativeSumGrid, L1ActivityPenalty,
                           PositiveGradients, ReconstructionLoss, SoftDiceLoss, SpatialTransformer,
                           local_cross_correlation, soft_dice)
from regseg.layers.pyramid import (AffineDisplacement, GradientPenalty, MeanSquare, NegativeNCC,
                                   PresentLabelsDiceLoss, ZeroField)
from regseg.reproductions.ureSnet.model import UReSNetConfig, build_ureSnet, losses_and_weights

SHAPE = (32, 32, 32)
LOSS_RTOL = 5e-3
MIN_COSINE = 0.97


@pytest.fixture
def policy():
    """Run the test body with a chosen global policy; always restore float32."""
    previous = keras.config.dtype_policy()

    def use(name):
        keras.mixed_precision.set_global_policy(name)

    yield use
    keras.mixed_precision.set_global_policy(previous)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((2, *SHAPE, 1)).astype("float32")
    from scipy import ndimage
    moving = ndimage.gaussian_filter(base, (0, 2, 2, 2, 0)).astype("float32")
    reference = np.roll(moving, (1, -2, 1), axis=(1, 2, 3))
    labels = np.digitize(moving[..., 0], np.quantile(moving, [0.25, 0.5, 0.75]))
    seg = np.eye(4, dtype="float32")[labels]
    ref_seg = np.eye(4, dtype="float32")[np.roll(labels, (1, -2, 1), axis=(1, 2, 3))]
    x = {"moving": moving, "reference": reference}
    y = {"deformed": reference, "moving_seg": seg, "warped_seg": ref_seg}
    return x, y


def _weights(config):
    """float32 weights with the zero-initialised heads perturbed, so that the grid deforms."""
    keras.utils.set_random_seed(1)
    train, _ = build_ureSnet(config)
    rng = np.random.default_rng(2)
    weights = []
    for var in train.weights:
        value = np.asarray(var)
        if var.path.startswith(("deform3", "affine_dense")):
            value = rng.normal(scale=0.02, size=value.shape).astype("float32")
        weights.append(value)
    return weights


def _loss_and_gradients(config, weights, x, y):
    train, _ = build_ureSnet(config)
    train.set_weights(weights)
    loss, loss_weights = losses_and_weights(config)
    train.compile(optimizer=keras.optimizers.SGD(1e-3), loss=loss, loss_weights=loss_weights,
                  jit_compile=False)
    with tf.GradientTape() as tape:
        pred = train(x, training=True)
        total = train.compute_loss(x=x, y=y, y_pred=pred)
    grads = tape.gradient(total, train.trainable_variables)
    terms = {k: float(np.mean(loss[k](y[k], pred[k]))) for k in loss}
    grads = np.concatenate([np.ravel(np.asarray(g, dtype=np.float64)) for g in grads])
    step = train.train_on_batch(x, y, return_dict=True)  # one real optimiser step
    return float(total), terms, grads, step, pred


@pytest.mark.slow
def test_ureSnet_mixed_bfloat16_step_matches_float32(policy):
    config = UReSNetConfig(input_shape=SHAPE, lcc_window=5)
    x, y = _batch()
    weights = _weights(config)
    policy("float32")
    ref_total, ref_terms, ref_grads, ref_step, ref_pred = _loss_and_gradients(config, weights, x, y)
    policy("mixed_bfloat16")
    total, terms, grads, step, pred = _loss_and_gradients(config, weights, x, y)
    # the grid and the warped image stay float32 under the mixed policy
    assert pred["deformed"].dtype == tf.float32 and pred["warped_seg"].dtype == tf.float32
    assert pred["moving_seg"].dtype == tf.bfloat16
    assert np.isfinite(total) and np.all(np.isfinite(grads))
    np.testing.assert_allclose(total, ref_total, rtol=LOSS_RTOL)
    for key in ref_terms:
        np.testing.assert_allclose(terms[key], ref_terms[key], rtol=LOSS_RTOL, err_msg=key)
    np.testing.assert_allclose(step["loss"], ref_step["loss"], rtol=LOSS_RTOL)
    cosine = grads @ ref_grads / (np.linalg.norm(grads) * np.linalg.norm(ref_grads))
    assert cosine >= MIN_COSINE, cosine


def test_float32_layers_under_a_mixed_policy(policy):
    policy("mixed_bfloat16")
    for layer in (SpatialTransformer(), CumulativeSumGrid(), PositiveGradients(),
                  AffineComposition(), L1ActivityPenalty(1.0), AffineDisplacement(),
                  NegativeNCC(), PresentLabelsDiceLoss(), MeanSquare(), GradientPenalty(),
                  ZeroField()):
        assert layer.dtype_policy.name == "float32", type(layer).__name__
    # a cumulative sum of 100 bfloat16 ones is wrong by voxels; the float32 layer is exact
    grid = CumulativeSumGrid()(tf.ones((1, 300, 1, 1, 3), tf.bfloat16))
    assert grid.dtype == tf.float32
    np.testing.assert_array_equal(np.asarray(grid)[0, :, 0, 0, 0], np.arange(300))
    # an explicit dtype wins; conv layers keep the mixed policy
    assert SpatialTransformer(dtype="bfloat16").dtype_policy.name == "bfloat16"
    assert keras.layers.Conv3D(2, 3).dtype_policy.name == "mixed_bfloat16"
    policy("float32")
    assert SpatialTransformer().dtype_policy.name == "float32"


def test_losses_compute_in_float32_for_half_inputs():
    rng = np.random.default_rng(3)
    a = rng.random((2, 12, 12, 12, 1)).astype("float32")
    b = (a + 0.1 * rng.random(a.shape)).astype("float32")
    b16 = tf.cast(b, tf.bfloat16)
    b_rounded = np.asarray(tf.cast(b16, tf.float32))
    cc = local_cross_correlation(a, b16, 5)
    assert cc.dtype == tf.float32
    np.testing.assert_allclose(cc, local_cross_correlation(a, b_rounded, 5), rtol=1e-5,
                               atol=1e-6)
    loss = ReconstructionLoss(window=5)
    assert loss.call(a, b16).dtype == tf.float32
    np.testing.assert_allclose(loss.call(a, b16), loss.call(a, b_rounded), rtol=1e-5)
    t = np.eye(3, dtype="float32")[rng.integers(0, 3, (2, 6, 6, 6))]
    p16 = tf.cast(t * 0.9 + 0.05, tf.bfloat16)
    assert soft_dice(t, p16, include_background=True).dtype == tf.float32
    assert SoftDiceLoss(include_background=False).call(t, p16).dtype == tf.float32
    penalty = L1ActivityPenalty(1.0, 1.0)
    penalty(tf.cast(tf.fill((1, 300, 1, 1), 1.5), tf.bfloat16))
    assert penalty.losses[0].dtype == tf.float32
    np.testing.assert_allclose(float(penalty.losses[0]), 150.0)
