"""Bad inputs to the layers give clear errors naming the function or layer and the shapes.

One case per rule: batch mismatch (static, and at graph run time for a dynamic batch), an
unbatched grid, a field whose last axis is not the number of spatial dimensions, the dtype rule
(integer and bool cast to float32, anything else refused), ``check_finite`` and the NaN policy
without it.  Also: the checks never break model building with symbolic shapes, ``tf.function``
or serialisation.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from regseg.layers import (AffineComposition, CostVolume, CumulativeSumGrid, SpatialTransformer,
                           apply_affine_to_grid, cost_volume, cumulative_sum_grid, identity_grid,
                           warp)

RNG = np.random.default_rng(0)
IMAGE = RNG.random((2, 5, 6, 1)).astype("float32")            # (batch, H, W, channels)
GRID = np.repeat(np.asarray(identity_grid((5, 6)))[None], 2, 0) + 0.3   # (batch, H, W, 2)
ZERO_DISP = np.zeros((2, 5, 6, 2), "float32")


def _raises(exc, *fragments):
    """pytest.raises whose message must contain every fragment (regex-escaped)."""
    import re
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


# ------------------------------------------------------------------------------------ batch
def test_batch_mismatch_in_warp_names_both_shapes():
    with _raises(ValueError, "warp", "batch sizes", "(2, 5, 6, 1)", "(3, 5, 6, 2)"):
        warp(IMAGE, np.repeat(GRID[:1], 3, 0))


def test_batch_mismatch_in_the_layer_names_the_layer():
    layer = SpatialTransformer(field="displacement", name="st")
    with _raises(ValueError, "SpatialTransformer 'st'", "batch sizes",
                 "displacement shape (1, 5, 6, 2)"):
        layer([IMAGE, ZERO_DISP[:1]])


def test_static_batch_mismatch_fails_while_the_model_is_built():
    image = keras.Input((5, 6, 1), batch_size=2)
    grid = keras.Input((5, 6, 2), batch_size=3)
    with _raises(ValueError, "SpatialTransformer", "batch sizes", "(2, 5, 6, 1)", "(3, 5, 6, 2)"):
        SpatialTransformer()([image, grid])


def test_dynamic_batch_mismatch_is_a_graph_assertion_with_the_same_message():
    fn = tf.function(lambda i, g: warp(i, g), input_signature=[
        tf.TensorSpec((None, 5, 6, 1)), tf.TensorSpec((None, 5, 6, 2))])
    np.testing.assert_allclose(fn(IMAGE, GRID.astype("float32")), warp(IMAGE, GRID), atol=1e-6)
    with _raises(tf.errors.InvalidArgumentError, "warp: the batch sizes (axis 0) differ"):
        fn(IMAGE, GRID[:1].astype("float32"))


def test_batch_mismatch_in_affine_and_cost_volume():
    with _raises(ValueError, "AffineComposition 'aff'", "batch sizes", "grid (2, 5, 6, 2)",
                 "parameters (3, 6)"):
        AffineComposition(name="aff")([np.zeros((3, 6), "float32"), GRID])
    with _raises(ValueError, "cost_volume", "batch sizes", "fixed (2, 5, 6, 1)",
                 "moving (1, 5, 6, 1)"):
        cost_volume(IMAGE, IMAGE[:1], 1)


# ------------------------------------------------------------------------------------ rank
def test_unbatched_grid_is_named_with_a_hint():
    with _raises(ValueError, "warp", "unbatched grid", "grid shape (5, 6, 2)",
                 "image shape (2, 5, 6, 1)"):
        warp(IMAGE, GRID[0])
    with _raises(ValueError, "SpatialTransformer", "unbatched displacement", "(5, 6, 2)"):
        SpatialTransformer(field="displacement")([IMAGE, ZERO_DISP[0]])


def test_unbatched_inputs_of_affine_and_cumulative_sum():
    with _raises(ValueError, "apply_affine_to_grid", "unbatched grid", "(5, 6, 2)"):
        apply_affine_to_grid(np.zeros((1, 6), "float32"), GRID[0])
    with _raises(ValueError, "affine parameters", "(batch, 6)", "(6,)"):
        apply_affine_to_grid(np.zeros(6, "float32"), GRID)
    with _raises(ValueError, "CumulativeSumGrid 'csg'", "unbatched gradients", "(5, 6, 2)"):
        CumulativeSumGrid(name="csg")(np.ones((5, 6, 2), "float32"))


def test_an_image_without_batch_or_channel_axis_is_refused():
    with _raises(ValueError, "warp", "image must be batched and channels-last", "(5, 6)"):
        warp(IMAGE[0, ..., 0], GRID[0])


# ------------------------------------------------------------------------------ components
def test_displacement_with_the_wrong_number_of_components():
    # was "Incompatible shapes: [2,5,6,3] vs. [1,5,6,2]"
    with _raises(ValueError, "SpatialTransformer", "displacement has 3 components",
                 "2 spatial dimensions", "(2, 5, 6, 3)"):
        SpatialTransformer(field="displacement")([IMAGE, np.zeros((2, 5, 6, 3), "float32")])


def test_grid_with_the_wrong_number_of_components():
    with _raises(ValueError, "warp", "grid has 3 components", "2 spatial dimensions"):
        warp(IMAGE, np.zeros((2, 5, 6, 3), "float32"))
    with _raises(ValueError, "needs 6 parameters", "(2, 12)"):
        apply_affine_to_grid(np.zeros((2, 12), "float32"), GRID)


def test_cost_volume_shapes_and_dtypes():
    with _raises(ValueError, "CostVolume 'cv'", "shapes differ", "(2, 5, 6, 1)", "(2, 5, 7, 1)"):
        CostVolume(1, name="cv")([IMAGE, np.zeros((2, 5, 7, 1), "float32")])
    with _raises(ValueError, "cost_volume", "different dtypes", "float16", "float32"):
        cost_volume(IMAGE.astype("float16"), IMAGE, 1)


# ------------------------------------------------------------------------------------ dtype
@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "int64", "bool"])
def test_integer_and_bool_images_are_cast_to_float32(dtype):
    labels = (RNG.random((2, 5, 6, 1)) * 3).astype(dtype)
    for interpolation in ("linear", "nearest"):
        out = warp(labels, GRID, interpolation=interpolation)
        assert out.dtype == "float32"
        np.testing.assert_allclose(out, warp(labels.astype("float32"), GRID,
                                             interpolation=interpolation))
    out = SpatialTransformer(field="displacement", interpolation="nearest")([labels, ZERO_DISP])
    np.testing.assert_array_equal(out, labels.astype("float32"))   # identity keeps the labels


def test_integer_grids_gradients_and_features_are_cast_too():
    int_grid = np.round(GRID).astype("int32")
    np.testing.assert_allclose(warp(IMAGE, int_grid), warp(IMAGE, int_grid.astype("float32")))
    ones = np.ones((1, 3, 2, 2))
    np.testing.assert_array_equal(cumulative_sum_grid(ones.astype("int32")),
                                  cumulative_sum_grid(ones.astype("float32")))
    feats = (RNG.random((1, 4, 4, 2)) * 5).astype("int32")
    np.testing.assert_allclose(cost_volume(feats, feats, 1),
                               cost_volume(feats.astype("float32"), feats.astype("float32"), 1))


def test_a_non_numeric_image_is_refused():
    with _raises(ValueError, "warp", "image", "dtype string"):
        warp(tf.fill((2, 5, 6, 1), "a"), GRID)


def test_float_dtypes_are_kept():
    assert warp(IMAGE.astype("float64"), GRID).dtype == "float64"
    assert warp(IMAGE.astype("float16"), GRID).dtype == "float16"


# ------------------------------------------------------------------------------ NaN and Inf
def _bad_grid(value):
    grid = GRID.astype("float32").copy()
    grid[1, 2, 3, 1] = value
    return grid


@pytest.mark.parametrize("value, word", [(np.nan, "1 NaN"), (np.inf, "1 infinite")])
def test_check_finite_raises_naming_the_count_and_the_first_index(value, word):
    with _raises(ValueError, "warp", "NaN or infinite", word, "index (1, 2, 3, 1)"):
        warp(IMAGE, _bad_grid(value), check_finite=True)
    layer = SpatialTransformer(check_finite=True, name="st")
    with _raises(ValueError, "SpatialTransformer 'st'", "grid contains NaN or infinite"):
        layer([IMAGE, _bad_grid(value)])
    layer([IMAGE, GRID])                                   # finite: no error


def test_check_finite_inside_a_graph_and_its_config():
    layer = SpatialTransformer(field="displacement", check_finite=True)
    fn = tf.function(lambda i, d: layer([i, d]))
    disp = ZERO_DISP.copy()
    fn(IMAGE, disp)
    disp[0, 0, 0, 0] = np.nan
    with _raises(tf.errors.InvalidArgumentError, "displacement contains NaN or infinite"):
        fn(IMAGE, disp)
    config = layer.get_config()
    assert config["check_finite"] is True
    assert SpatialTransformer.from_config(config).check_finite is True
    assert SpatialTransformer().get_config()["check_finite"] is False


def test_check_finite_under_xla_warns_that_it_is_off():
    fn = tf.function(lambda i, g: warp(i, g, check_finite=True), jit_compile=True)
    with pytest.warns(UserWarning, match="check_finite=True has no effect"):
        fn(IMAGE, GRID.astype("float32"))


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_nan_policy_without_the_check(interpolation, padding):
    """NaN: NaN at that voxel only; ±Inf: a coordinate far outside (edge value / 0)."""
    kw = dict(interpolation=interpolation, padding=padding)
    out = np.asarray(warp(IMAGE, _bad_grid(np.nan), **kw))
    assert np.isnan(out[1, 2, 3, 0]) and np.isnan(out).sum() == 1
    for value, edge in ((np.inf, 5), (-np.inf, 0)):
        out = np.asarray(warp(IMAGE, _bad_grid(value), **kw))
        far = _bad_grid(1e3 if value > 0 else -1e3)
        np.testing.assert_array_equal(out, warp(IMAGE, far, **kw))   # like a far coordinate
        expected = IMAGE[1, 2, edge, 0] if padding == "border" else 0.0
        if padding == "border" and interpolation == "linear":
            # the row coordinate 2.3 is interpolated between rows 2 and 3 at the edge column
            expected = 0.7 * IMAGE[1, 2, edge, 0] + 0.3 * IMAGE[1, 3, edge, 0]
        np.testing.assert_allclose(out[1, 2, 3, 0], expected, rtol=1e-6)


# --------------------------------------------------------------------- models and symbolic shapes
def test_checks_do_not_break_symbolic_models_fit_or_saving(tmp_path):
    image = keras.Input((5, 6, 1))                       # batch size None: checked at run time
    disp = keras.Input((5, 6, 2))
    grad = keras.Input((5, 6, 2))
    params = keras.Input((6,))
    warped = SpatialTransformer(field="displacement", check_finite=True)([image, disp])
    grid = AffineComposition()([params, CumulativeSumGrid()(grad)])
    resampled = SpatialTransformer(padding="zeros")([warped, grid])
    cv = CostVolume(1)([warped, resampled])
    out = keras.layers.Dense(1)(cv)
    model = keras.Model([image, disp, grad, params], out)
    model.compile(optimizer="sgd", loss="mse", jit_compile=False)
    x = [IMAGE, ZERO_DISP, np.ones((2, 5, 6, 2), "float32"), np.zeros((2, 6), "float32")]
    model.fit(x, np.zeros((2, 5, 6, 1), "float32"), epochs=1, batch_size=2, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    bad = list(x)
    bad[1] = np.full_like(ZERO_DISP, np.nan)
    with _raises(tf.errors.InvalidArgumentError, "displacement contains NaN or infinite"):
        loaded.predict(bad, verbose=0)


def test_cost_volume_with_a_dynamic_spatial_shape():
    fn = tf.function(lambda a, b: cost_volume(a, b, 1), input_signature=[
        tf.TensorSpec((None, None, None, 2)), tf.TensorSpec((None, None, None, 2))])
    feats = RNG.random((1, 4, 5, 2)).astype("float32")
    other = feats[..., ::-1]
    np.testing.assert_allclose(fn(feats, other), cost_volume(feats, other, 1), atol=1e-6)


def test_no_warning_for_valid_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warp(IMAGE, GRID, check_finite=True)
        SpatialTransformer(field="displacement")([IMAGE, ZERO_DISP])
