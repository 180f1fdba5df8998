"""The networks, losses and stop-gradients of Couteaux et al. (§2.1, Fig. 1) and the three training
steps of §2.2, each updating only the weights it should."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

import keras

from regseg.evaluation.relative_similarity import shift_mask
from regseg.reproductions.cooperating.model import (CooperatingConfig, apply_transform,
                                                    build_registor, build_segmentor,
                                                    cooperating_losses, registration_terms,
                                                    segmentation_loss, stage_losses)
from regseg.training.alternating import AlternatingModel, Phase

TINY = dict(segmentor_encoder=(4, 4, 4, 4), segmentor_decoder=(4, 4, 4, 4, 4),
            registor_features=(4, 4, 4, 4))


def _config(**kw):
    return CooperatingConfig(**{**dict(spatial_shape=(32, 32), max_translation=8.0), **TINY, **kw})


def _batch(seed=0, shape=(2, 32, 32, 1)):
    rng = np.random.default_rng(seed)
    s1 = np.zeros(shape, "float32")
    s1[:, 8:20, 10:22] = 1.0
    s2 = np.roll(s1, (3, -2), axis=(1, 2))
    return {"x1": rng.normal(size=shape).astype("float32"),
            "x2": rng.normal(size=shape).astype("float32"), "s1": s1, "s2": s2}


def _nets(config, seed=0):
    keras.utils.set_random_seed(seed)
    seg, reg = build_segmentor(config), build_registor(config)
    # a non-zero last registor layer, so that θ depends on the masks from the start
    for v in reg.get_layer("registor_field").weights:
        v.assign(np.random.default_rng(seed).normal(scale=0.1, size=v.shape).astype("float32"))
    return seg, reg


def test_registration_loss_never_reaches_the_segmentor():
    """Fig. 1's diodes: the gradient of L_g w.r.t. every segmentor weight is exactly zero."""
    config = _config(lambda_r=0.0, lambda_g=1.0, lambda_p=0.0)
    seg, reg = _nets(config)
    data = _batch()
    with tf.GradientTape(persistent=True) as tape:
        out = cooperating_losses(data, seg, reg, config)
    grads = tape.gradient(out["L_g"], seg.trainable_variables)
    assert all(g is None or not np.any(np.asarray(g)) for g in grads)
    assert any(g is not None and np.any(np.asarray(g))
               for g in tape.gradient(out["L_g"], reg.trainable_variables))
    # L_r reaches the segmentor only
    assert all(g is None for g in tape.gradient(out["L_r"], reg.trainable_variables))
    assert all(g is not None for g in tape.gradient(out["L_r"], seg.trainable_variables))


def test_similarity_loss_acts_on_the_second_channel_only():
    config = _config()
    _, reg = _nets(config)
    s1 = _batch()["s1"]
    s_hat1 = tf.Variable(0.2 + 0.6 * s1)
    s_hat2 = tf.Variable(0.3 + 0.4 * np.roll(s1, 2, axis=1))
    with tf.GradientTape(persistent=True) as tape:
        terms = registration_terms(s_hat1, s_hat2, tf.constant(s1), reg, config)
    assert tape.gradient(terms["L_p"], s_hat1) is None       # first channel: stopped
    assert np.any(np.asarray(tape.gradient(terms["L_p"], s_hat2)))
    assert tape.gradient(terms["L_g"], s_hat1) is None and tape.gradient(terms["L_g"], s_hat2) is None
    # L_p trains the registor through θ (both networks minimise L), unless told otherwise
    assert any(g is not None for g in tape.gradient(terms["L_p"], reg.trainable_variables))
    frozen = _config(similarity_trains_registor=False)
    with tf.GradientTape() as tape:
        terms = registration_terms(s_hat1, s_hat2, tf.constant(s1), reg, frozen)
    assert all(g is None for g in tape.gradient(terms["L_p"], reg.trainable_variables))


def test_losses_against_numpy():
    """L_r (BCE), L_g (MSE of [1, 2, 1]-blurred masks) and L_p by hand, with an integer θ."""
    config = _config()
    data = _batch(1)
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 32, 32, 2)).astype("float32")
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def bce(y, q):
        return np.mean(-(y * np.log(q) + (1 - y) * np.log(1 - q)))

    expected = bce(data["s1"][..., 0], p[..., 0]) + bce(data["s2"][..., 0], p[..., 1])
    assert float(segmentation_loss(data["s1"], data["s2"], logits)) == pytest.approx(expected,
                                                                                   rel=1e-5)

    class Fixed(keras.layers.Layer):  # a registor that answers the translation (3, -2)
        def call(self, masks):
            return tf.tile(tf.constant([[-3.0, 2.0]]), [tf.shape(masks)[0], 1])

    terms = registration_terms(tf.constant(p[..., :1], tf.float32), tf.constant(p[..., 1:],
                               tf.float32), data["s2"], Fixed(), config)
    warped = np.stack([shift_mask(p[k, ..., 0], (-3, 2)) for k in range(2)])[..., None]
    np.testing.assert_allclose(np.asarray(terms["warped"]), warped, atol=1e-6)

    def blur(x):
        for axis in (1, 2):
            x = ndimage.correlate1d(x, [0.25, 0.5, 0.25], axis=axis, mode="constant")
        return x

    assert float(terms["L_g"]) == pytest.approx(np.mean((blur(warped) - blur(data["s2"])) ** 2),
                                                rel=1e-4)
    assert float(terms["L_p"]) == pytest.approx(np.mean((warped - p[..., 1:]) ** 2), rel=1e-4)


def test_registor_starts_at_identity_and_stays_in_omega():
    config = _config()
    reg = build_registor(config)
    masks = _batch()["s1"].repeat(2, axis=-1)
    np.testing.assert_array_equal(np.asarray(reg(masks)), 0.0)     # θ_0 = identity
    reg.get_layer("registor_field").bias.assign([500.0, -500.0])
    theta = np.asarray(reg(masks))
    assert theta.shape == (2, 2) and np.all(np.abs(theta) <= 8.0) and theta[0, 0] > 7.9
    elastic = CooperatingConfig(spatial_shape=(None, None, None), transform="elastic", **TINY)
    coarse = build_registor(elastic)(np.zeros((1, 32, 48, 16, 2), "float32"))
    assert coarse.shape == (1, 2, 3, 1, 3)
    img = np.random.default_rng(0).random((1, 32, 48, 16, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(apply_transform(img, coarse, elastic)), img, atol=1e-6)


def test_single_input_unet_and_bad_configs():
    seg = build_segmentor(_config(inputs=1))
    assert seg.input_shape == (None, 32, 32, 1) and seg.output_shape == (None, 32, 32, 1)
    assert set(stage_losses(seg, None, _config(inputs=1))) == {"segmentor"}
    with pytest.raises(ValueError, match="multiple of 16"):
        CooperatingConfig(spatial_shape=(40, 40))
    with pytest.raises(ValueError, match="transform"):
        CooperatingConfig(transform="rigid")


def test_three_training_steps_update_only_their_weights():
    """§2.2: step 1 updates the segmentor only, step 2 the registor only, step 3 both."""
    config = _config(lambda_r=0.5, lambda_g=1.0, lambda_p=0.5)
    seg, reg = _nets(config)
    losses = stage_losses(seg, reg, config)
    model = AlternatingModel(
        {"segmentor": seg, "registor": reg},
        [Phase("segmentor", 1, seg, losses["segmentor"], keras.optimizers.Adam(1e-2)),
         Phase("registor", 1, reg, losses["registor"], keras.optimizers.Adam(1e-2)),
         Phase("joint", 1, [seg, reg], losses["joint"], keras.optimizers.Adam(1e-2))])
    model.compile()
    data = tf.data.Dataset.from_tensors(_batch()).repeat()

    def weights():
        return ([keras.ops.convert_to_numpy(v).copy() for v in seg.trainable_variables],
                [keras.ops.convert_to_numpy(v).copy() for v in reg.trainable_variables])

    def changed(before, after):
        return [not np.array_equal(a, b) for a, b in zip(before, after)]

    history = []
    for _ in range(3):
        before = weights()
        model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
        after = weights()
        history.append((changed(before[0], after[0]), changed(before[1], after[1])))
    (s1, r1), (s2, r2), (s3, r3) = history
    assert all(s1) and not any(r1)        # pre-train the segmentor on L_r
    assert not any(s2) and any(r2)        # pre-train the registor on L_g with the annotations
    assert all(s3) and any(r3)            # train both on λ_r L_r + λ_g L_g + λ_p L_p
    assert r2[-1] and r3[-1]              # (the registor's last bias gets a gradient in both)
    assert model.step_counts() == {"step": 3, "segmentor": 1, "registor": 1, "joint": 1}
