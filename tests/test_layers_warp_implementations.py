"""The warp's samplers ("fused", "reference") and its XLA compilation agree (issue 11).

Every combination of sampler and ``jit_compile`` is checked against
``scipy.ndimage.map_coordinates`` (1e-5), against the reference sampler without XLA (the only
implementation before issue 11) for values and ``tf.GradientTape`` gradients, and against central
finite differences in float64.  No timing is asserted here (``benchmarks/run.py`` measures).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from regseg.layers import SpatialTransformer, warp
from regseg.layers import spatial_transformer as st

from test_layers_spatial_transformer import (BATCH, CHANNELS, SHAPES, _away_from_integers,
                                             _central_differences, _np_identity, _random_grid,
                                             _scipy_warp)

#: (implementation, jit_compile) pairs: the new default under XLA, and every other choice
CHOICES = [("fused", True), ("fused", False), ("reference", True), ("reference", False)]


def _warp(image, grid, implementation, jit_compile, **kw):
    return warp(tf.constant(image), tf.constant(grid), implementation=implementation,
                jit_compile=jit_compile, **kw)


@pytest.mark.parametrize("implementation,jit_compile", CHOICES)
@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_linear_matches_map_coordinates(implementation, jit_compile, ndim, padding):
    rng = np.random.default_rng(100 + ndim)
    spatial = SHAPES[ndim]
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    grid = _random_grid(rng, spatial, spatial).astype(np.float32)
    expected = _scipy_warp(image, grid.astype(np.float64), 1, padding)
    got = _warp(image, grid, implementation, jit_compile, padding=padding)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)
    # inside a graph too (where "auto" would compile)
    fn = tf.function(lambda a, b: warp(a, b, padding=padding, implementation=implementation,
                                       jit_compile=jit_compile))
    np.testing.assert_allclose(np.asarray(fn(image, grid)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_nearest_matches_map_coordinates_under_every_choice(jit_compile, padding):
    rng = np.random.default_rng(110)
    spatial = SHAPES[3]
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    grid = _random_grid(rng, spatial, spatial, avoid_half=True)
    expected = _scipy_warp(image, grid, 0, padding).astype(np.float32)
    for implementation in ("fused", "reference", "auto"):
        got = _warp(image, grid.astype(np.float32), implementation, jit_compile,
                    interpolation="nearest", padding=padding)
        np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("implementation,jit_compile", CHOICES[:3])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_values_and_gradients_match_the_reference_sampler(implementation, jit_compile, padding):
    """Against the pre-issue-11 path (reference sampler, no XLA) under tf.GradientTape, at a
    non-cubic size with an output grid of another shape and an identity grid (integer
    coordinates: one-sided differences)."""
    rng = np.random.default_rng(120)
    spatial, out_spatial = (9, 7, 8), (5, 6, 4)
    image = rng.normal(size=(BATCH, *spatial, 3)).astype(np.float32)
    weights = tf.constant(rng.normal(size=(BATCH, *out_spatial, 3)).astype(np.float32))
    random = _random_grid(rng, spatial, out_spatial).astype(np.float32)
    identity = np.broadcast_to(_np_identity(spatial), (BATCH, *spatial, 3)).astype(np.float32)

    def run(grid, implementation, jit_compile):
        img, grd = tf.Variable(image), tf.Variable(grid)
        with tf.GradientTape() as tape:
            out = warp(img, grd, padding=padding, implementation=implementation,
                       jit_compile=jit_compile)
            loss = tf.reduce_sum(out * (weights if grid.shape[1:4] == out_spatial else out))
        return [np.asarray(t) for t in (out, *tape.gradient(loss, [img, grd]))]

    for grid in (random, identity):
        ref = run(grid, "reference", False)
        got = run(grid, implementation, jit_compile)
        for name, a, b in zip(("values", "image gradient", "grid gradient"), got, ref):
            assert a.shape == b.shape and a.dtype == b.dtype, name
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("implementation,jit_compile", CHOICES[:3])
@pytest.mark.parametrize("ndim,padding", [(3, "border"), (3, "zeros"), (2, "zeros")])
def test_gradients_match_finite_differences(implementation, jit_compile, ndim, padding):
    rng = np.random.default_rng(130 + ndim)
    spatial = (4, 5, 6) if ndim == 3 else (5, 6)
    out_spatial = (3, 3, 2) if ndim == 3 else (4, 3)
    image = rng.normal(size=(BATCH, *spatial, CHANNELS))
    low_high = [(0.0, s - 1.0) if padding == "border" else (-1.0, float(s)) for s in spatial]
    grid = np.stack([_away_from_integers(rng, lo, hi, (BATCH, *out_spatial))
                     for lo, hi in low_high], axis=-1)
    weights = rng.normal(size=(BATCH, *out_spatial, CHANNELS))
    kw = dict(padding=padding, implementation=implementation, jit_compile=jit_compile)

    def objective(img, grd):
        return float(np.sum(np.asarray(warp(tf.constant(img), tf.constant(grd), **kw)) * weights))

    img_t, grid_t = tf.Variable(image), tf.Variable(grid)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(warp(img_t, grid_t, **kw) * weights)
    g_img, g_grid = (np.asarray(g) for g in tape.gradient(loss, [img_t, grid_t]))
    assert g_img.dtype == np.float64 and g_grid.dtype == np.float64
    picks = [list(np.ndindex(a.shape)) for a in (image, grid)]
    img_idx = [picks[0][k] for k in rng.choice(len(picks[0]), 30, replace=False)]
    grid_idx = [picks[1][k] for k in rng.choice(len(picks[1]), 30, replace=False)]
    fd_img = _central_differences(lambda x: objective(x, grid), image, img_idx)
    fd_grid = _central_differences(lambda x: objective(image, x), grid, grid_idx)
    assert np.count_nonzero(fd_grid) > 15
    np.testing.assert_allclose([g_img[i] for i in img_idx], fd_img, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([g_grid[i] for i in grid_idx], fd_grid, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("implementation,jit_compile", CHOICES[:3])
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_non_finite_coordinates(implementation, jit_compile, interpolation, padding):
    """NaN gives NaN at that voxel only, ±Inf a far coordinate, under XLA too (whose CPU min /
    max may return the bound for NaN: the sampler makes those voxels NaN explicitly)."""
    rng = np.random.default_rng(140)
    image = rng.normal(size=(2, 5, 6, 1)).astype(np.float32)
    grid = _random_grid(rng, (5, 6), (5, 6))[:2].astype(np.float32)
    kw = dict(interpolation=interpolation, padding=padding, implementation=implementation,
              jit_compile=jit_compile)
    bad, far = grid.copy(), grid.copy()
    bad[1, 2, 3, 1], far[1, 2, 3, 1] = np.nan, 0.0
    bad[0, 1, 1, 0], far[0, 1, 1, 0] = np.inf, 1e3
    bad[0, 3, 2, 1], far[0, 3, 2, 1] = -np.inf, -1e3
    out = np.array(warp(image, bad, **kw))
    assert np.isnan(out[1, 2, 3, 0]) and np.isnan(out).sum() == 1
    out[1, 2, 3, 0] = 0.0
    expected = np.array(warp(image, far, **kw))
    expected[1, 2, 3, 0] = 0.0
    np.testing.assert_array_equal(out, expected)


def test_defaults_auto_choice_and_options():
    assert st.warp_defaults() == {"implementation": "auto", "jit_compile": "auto"}
    image = np.zeros((1, 4, 5, 6, 1), np.float32)
    grid = np.zeros((1, 4, 5, 6, 3), np.float32)
    # eager: the reference sampler, uncompiled (as before issue 11)
    assert st._resolve(tf.constant(image), grid, "linear", None, None) == ("reference", False)
    seen = []

    @tf.function
    def traced(a, b):
        seen.append(st._resolve(a, b, "linear", None, None))
        seen.append(st._resolve(a, b, "nearest", None, None))
        return warp(a, b)

    traced(image, grid)
    assert seen == [("fused", True), ("reference", True)]
    # several channels: the compiled reference sampler (faster there than the fused table)
    seen.clear()
    traced(np.zeros((1, 4, 5, 6, 2), np.float32), grid)
    assert seen == [("reference", True), ("reference", True)]
    with st.warp_options(jit_compile=False):
        assert st.warp_defaults()["jit_compile"] is False
        seen.clear()
        traced.python_function(tf.constant(image), tf.constant(grid))
        assert st._resolve(tf.constant(image), grid, "linear", None, "auto") == (
            "reference", False)
    assert st.warp_defaults()["jit_compile"] == "auto"
    previous = st.set_warp_defaults(implementation="fused", jit_compile=True)
    try:
        assert st._resolve(tf.constant(image), grid, "linear", None, None) == ("fused", True)
    finally:
        st.set_warp_defaults(**previous)
    for bad in (dict(implementation="cubic"), dict(jit_compile="yes"), dict(jit_compile=1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            warp(image, grid, **bad)
        with pytest.raises(ValueError, match=next(iter(bad))):
            SpatialTransformer(**bad)
        with pytest.raises(ValueError, match=next(iter(bad))):
            st.set_warp_defaults(**bad)


def test_op_determinism_turns_auto_xla_off():
    image = tf.zeros((1, 4, 5, 6, 1))
    seen = []

    @tf.function
    def traced(a):
        seen.append(st._resolve(a, a, "linear", None, None))
        return a

    tf.config.experimental.enable_op_determinism()
    try:
        traced(image)
    finally:
        from tensorflow.python.framework.config import disable_op_determinism
        disable_op_determinism()
    assert seen == [("reference", False)]


def test_layer_options_config_and_saved_model(tmp_path):
    rng = np.random.default_rng(150)
    spatial = SHAPES[3]
    layer = SpatialTransformer(padding="zeros", implementation="fused", jit_compile=True,
                               name="st")
    config = layer.get_config()
    assert (config["implementation"], config["jit_compile"]) == ("fused", True)
    clone = SpatialTransformer.from_config(config)
    assert (clone.implementation, clone.jit_compile) == ("fused", True)
    # unset options are left out of the config (older configs load unchanged)
    assert "implementation" not in SpatialTransformer().get_config()
    image_in = keras.Input((*spatial, CHANNELS))
    grid_in = keras.Input((*spatial, 3))
    model = keras.Model([image_in, grid_in], layer([image_in, grid_in]))
    path = tmp_path / "warp.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("st").implementation == "fused"
    image = rng.normal(size=(BATCH, *spatial, CHANNELS)).astype(np.float32)
    grid = _random_grid(rng, spatial, spatial).astype(np.float32)
    expected = _scipy_warp(image, grid.astype(np.float64), 1, "zeros")
    for m in (model, loaded):
        np.testing.assert_allclose(np.asarray(m([image, grid])), expected, atol=1e-5)
        np.testing.assert_allclose(m.predict([image, grid], verbose=0), expected, atol=1e-5)


def test_fit_with_the_compiled_warp_inside_a_keras_model():
    """Model.fit (a graph: "auto" compiles the warp) trains, and its loss and gradients match
    the uncompiled reference sampler."""
    rng = np.random.default_rng(160)
    spatial = (8, 8, 8)
    image = rng.normal(size=(2, *spatial, 1)).astype(np.float32)
    target = rng.normal(size=(2, *spatial, 1)).astype(np.float32)

    def build():
        keras.utils.set_random_seed(0)
        inp = keras.Input((*spatial, 1))
        disp = keras.layers.Conv3D(3, 3, padding="same", name="flow")(inp)
        out = SpatialTransformer(field="displacement")([inp, disp])
        model = keras.Model(inp, out)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
        return model

    losses = {}
    for jit in ("auto", False):
        with st.warp_options(jit_compile=jit):
            model = build()
            history = model.fit(image, target, epochs=2, batch_size=2, verbose=0, shuffle=False)
            losses[jit] = history.history["loss"]
    assert all(np.isfinite(losses["auto"]))
    np.testing.assert_allclose(losses["auto"], losses[False], rtol=1e-5)


def test_half_precision_inputs_are_sampled_in_float32():
    rng = np.random.default_rng(170)
    spatial = (16, 12, 10)
    image = rng.normal(size=(1, *spatial, 1)).astype(np.float32)
    # coordinates that bfloat16 cannot hold (8 significant bits): 13.37 -> 13.375
    grid = _random_grid(rng, spatial, spatial, margin=0.0)[:1].astype(np.float32)
    expected = _scipy_warp(image, grid.astype(np.float64), 1, "border")
    for implementation, jit in CHOICES:
        got = warp(tf.constant(image, tf.bfloat16), tf.constant(grid),
                   implementation=implementation, jit_compile=jit)
        assert got.dtype == tf.bfloat16
        image_bf16 = np.asarray(tf.cast(tf.constant(image, tf.bfloat16), tf.float32))
        exact = _scipy_warp(image_bf16, grid.astype(np.float64), 1, "border")
        np.testing.assert_allclose(np.asarray(tf.cast(got, tf.float32)), exact, atol=0.02)
    # the layer computes in float32 under a mixed policy: the output is float32 and exact
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = SpatialTransformer()
        assert layer.dtype_policy.name == "float32"
        assert SpatialTransformer(dtype="bfloat16").dtype_policy.name == "bfloat16"
        out = layer([image, grid])
        assert out.dtype == tf.float32
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert SpatialTransformer().dtype_policy.name == previous.name


def test_batch_of_two_with_a_smaller_output_grid_under_xla():
    """Batch offsets of the fused table: each sample reads its own volume."""
    rng = np.random.default_rng(180)
    spatial = (6, 7, 5)
    image = rng.normal(size=(2, *spatial, 4)).astype(np.float32)
    for out_spatial, padding in itertools.product([(3, 4, 2), (6, 7, 5)], ["border", "zeros"]):
        grid = _random_grid(rng, spatial, out_spatial)[:2].astype(np.float32)
        expected = _scipy_warp(image, grid.astype(np.float64), 1, padding)
        got = warp(image, grid, padding=padding, implementation="fused", jit_compile=True)
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def test_fused_sampler_hands_the_xla_flag_to_the_reference_it_delegates_to(monkeypatch):
    """Nearest interpolation in the fused sampler is the reference sampler's, with the NaN
    handling of the caller's compilation (XLA: ``_propagate_nan``)."""
    seen = []
    real = st._sample_reference

    def spy(*args, **kwargs):
        seen.append(kwargs.get("xla"))
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "_sample_reference", spy)
    image = np.arange(24, dtype=np.float32).reshape(1, 4, 6, 1)
    grid = np.stack(np.meshgrid(np.arange(4.0), np.arange(6.0), indexing="ij"), -1)[None]
    grid = grid.astype(np.float32)
    for xla in (True, False):
        out = st._sample_fused(tf.constant(image), tf.constant(grid), "nearest", "border",
                               xla=xla)
        np.testing.assert_array_equal(np.asarray(out), image)  # identity grid: the image
    assert seen == [True, False]
