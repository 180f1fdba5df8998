"""XLA on single layers (``regseg.layers._xla``): the cost volume's compiled backward pass and the
shared ``jit_compile`` default.  Values and gradients agree with the uncompiled layer; no timing
is asserted (``benchmarks/run.py`` measures)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from regseg.layers import (CostVolume, cost_volume, layers_jit_compile, set_layers_jit_compile,
                           warp_defaults)
from regseg.layers import _xla


def _features(seed, shape=(2, 6, 5, 7, 3)):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(2)]


def _numpy_cost_volume(fixed, moving, d):
    """Per-shift reference in numpy (zero padding, channel mean)."""
    spatial = fixed.shape[1:-1]
    padded = np.pad(moving, [(0, 0)] + [(d, d)] * len(spatial) + [(0, 0)])
    out = []
    for a in range(-d, d + 1):
        for b in range(-d, d + 1):
            for c in range(-d, d + 1):
                shifted = padded[:, d + a:d + a + spatial[0], d + b:d + b + spatial[1],
                                 d + c:d + c + spatial[2]]
                out.append((fixed * shifted).mean(-1))
    return np.stack(out, -1)


@pytest.mark.parametrize("jit_compile", [True, "auto", False])
def test_cost_volume_values_and_gradients_agree(jit_compile):
    fixed, moving = _features(0)
    upstream = tf.constant(np.random.default_rng(1).normal(size=(2, 6, 5, 7, 27))
                           .astype(np.float32))

    def run(jit):
        a, b = tf.Variable(fixed), tf.Variable(moving)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                out = cost_volume(a, b, 1, jit_compile=jit)
                loss = tf.reduce_sum(out * upstream)
            return [out, *tape.gradient(loss, [a, b])]

        return [np.asarray(t) for t in step()]

    ref = run(False)
    np.testing.assert_allclose(ref[0], _numpy_cost_volume(fixed, moving, 1), atol=1e-6)
    for name, got, want in zip(("values", "fixed gradient", "moving gradient"),
                               run(jit_compile), ref):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=name)
    # eager calls (compiled only with True) give the same values too
    np.testing.assert_allclose(cost_volume(fixed, moving, 1, jit_compile=jit_compile), ref[0],
                               atol=1e-5)


def test_cost_volume_layer_option_config_and_fit():
    layer = CostVolume(1, jit_compile=True, name="cv")
    assert layer.get_config()["jit_compile"] is True
    assert CostVolume.from_config(layer.get_config()).jit_compile is True
    assert "jit_compile" not in CostVolume(1).get_config()
    with pytest.raises(ValueError, match="jit_compile"):
        CostVolume(1, jit_compile="always")
    with pytest.raises(ValueError, match="jit_compile"):
        cost_volume(*_features(2), 1, jit_compile=1)
    fixed, moving = _features(3, (2, 4, 4, 4, 2))
    losses = {}
    for jit in (True, False):
        keras.utils.set_random_seed(0)
        a = keras.Input((4, 4, 4, 2))
        b = keras.Input((4, 4, 4, 2))
        features = keras.layers.Conv3D(2, 3, padding="same", name="features")
        out = keras.layers.Dense(1)(CostVolume(1, jit_compile=jit)([features(a), features(b)]))
        model = keras.Model([a, b], out)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=False)
        target = np.zeros((2, 4, 4, 4, 1), np.float32)
        history = model.fit([fixed, moving], target, epochs=3, batch_size=2, verbose=0,
                            shuffle=False)
        losses[jit] = history.history["loss"]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def test_shared_default_and_resolution():
    assert layers_jit_compile() == "auto"
    assert not _xla.resolve_jit_compile(None)  # eager: "auto" does not compile
    assert _xla.resolve_jit_compile(True)
    seen = []

    @tf.function
    def traced():
        seen.append((_xla.resolve_jit_compile(None), _xla.resolve_jit_compile(False)))
        return tf.constant(0)

    traced()
    assert seen == [(True, False)]
    previous = set_layers_jit_compile(False)
    try:
        assert warp_defaults()["jit_compile"] is False
        seen.clear()
        traced.python_function()
        assert seen == [(False, False)]
    finally:
        set_layers_jit_compile(previous)
    assert layers_jit_compile() == "auto"
    with pytest.raises(ValueError, match="jit_compile"):
        set_layers_jit_compile("on")
