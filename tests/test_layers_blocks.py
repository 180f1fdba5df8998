"""Tests of the convolution blocks and the U-Net builder: parameter counts, wiring, options."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import doctest
import importlib

import keras
import numpy as np
import pytest

from regseg.layers import build_unet, conv_block, unet
from regseg.layers._checks import check_option

TINY = dict(encoder_filters=(2, 3), decoder_filters=(3, 2, 4))


def _conv(k, ndim, c_in, c_out):
    """Parameters of a k^ndim convolution with bias."""
    return k ** ndim * c_in * c_out + c_out


# --------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("ndim", [2, 3])
def test_parameter_count_stride_nearest_by_hand(ndim):
    # input C = 1, S = 8^ndim.  enc0: 1 -> 2 (S/2); enc1: 2 -> 3 (S/4, bottleneck)
    # dec0: 3 -> 3 at S/4, up to S/2, concat enc0 (2) -> 5
    # dec1: 5 -> 2 at S/2, up to S, concat input (1) -> 3
    # dec2: 3 -> 4 at S (the extra full-resolution convolution)
    k = 3 ** ndim  # 9 in 2-D, 27 in 3-D
    expected = ((k * 1 * 2 + 2) + (k * 2 * 3 + 3) + (k * 3 * 3 + 3) + (k * 5 * 2 + 2)
                + (k * 3 * 4 + 4))
    assert expected == {2: 365, 3: 1067}[ndim]
    model = build_unet((8,) * ndim, 1, **TINY)
    assert model.count_params() == expected
    assert model.output_shape == (None, *(8,) * ndim, 4)
    # without skips dec1 sees 3 instead of 5 channels, dec2 2 instead of 3:
    # the difference is k * (2 * 2 + 1 * 4) = 8 k (72 in 2-D, 216 in 3-D)
    no_skips = build_unet((8,) * ndim, 1, skips=False, **TINY)
    assert model.count_params() - no_skips.count_params() == 8 * k == {2: 72, 3: 216}[ndim]


def test_parameter_count_maxpool_transposed_and_batch_norm_by_hand():
    # maxpool: enc0 1 -> 2 at S (skip0), pool; enc1 2 -> 3 at S/2 (skip1), pool -> S/4
    # dec0 3 -> 3, up, concat skip1 (3) -> 6; dec1 6 -> 2, up, concat skip0 (2) -> 4; dec2 4 -> 4
    maxpool = 20 + 57 + 84 + (9 * 6 * 2 + 2) + (9 * 4 * 4 + 4)
    assert maxpool == 419
    assert build_unet((8, 8), 1, downsample="maxpool", **TINY).count_params() == 419
    # no skips: dec1 3 -> 2 and dec2 2 -> 4, i.e. 9 * (3 * 2 + 2 * 4) = 126 fewer
    assert build_unet((8, 8), 1, downsample="maxpool", skips=False,
                      **TINY).count_params() == 419 - 126
    # transposed upsampling adds a 2^ndim kernel with bias per level: 3 -> 3 and 2 -> 2
    model = build_unet((8, 8), 1, upsample="transposed", **TINY)
    assert model.count_params() == 365 + (4 * 3 * 3 + 3) + (4 * 2 * 2 + 2) == 422
    # batch norm: 4 numbers per channel (gamma, beta trainable; moving mean, variance not)
    model = build_unet((8, 8), 1, normalisation="batch", **TINY)
    filters = 2 + 3 + 3 + 2 + 4
    assert model.count_params() == 365 + 4 * filters
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 365 + 2 * filters
    # instance norm (GroupNormalization, one group per channel): gamma and beta only
    model = build_unet((8, 8), 1, normalisation="instance", **TINY)
    assert model.count_params() == 365 + 2 * filters


def test_default_configuration_layout():
    """Defaults (16, 32, 32, 32) / (32, 32, 32, 32, 16, 16): decoder at S/16 .. S/2, then S, S."""
    model = build_unet((32, 32, 32), 2)
    sizes = {layer.name: layer.output.shape[1] for layer in model.layers
             if layer.name.endswith("_conv")}
    assert [sizes[f"unet_enc{i}_conv"] for i in range(4)] == [16, 8, 4, 2]
    assert [sizes[f"unet_dec{j}_conv"] for j in range(6)] == [2, 4, 8, 16, 32, 32]
    assert model.output_shape == (None, 32, 32, 32, 16)
    # 3^3 kernels: enc 2->16->32->32->32; dec 32->32, (32+32)->32, (32+32)->32, (32+16)->32,
    # (32+2)->16, 16->16
    expected = sum(_conv(3, 3, a, b) for a, b in [(2, 16), (16, 32), (32, 32), (32, 32),
                                                  (32, 32), (64, 32), (64, 32), (48, 32),
                                                  (34, 16), (16, 16)])
    assert model.count_params() == expected


# --------------------------------------------------------------------------- wiring

def _identity_unet(spatial, downsample, pick):
    """1x1 identity convolutions, no activation: exposes the down/upsampling and the skips.

    Two levels, one channel per convolution; ``dec1`` reads channel ``pick`` of the
    concatenation [upsampled dec0, skip].
    """
    model = build_unet(spatial, 1, encoder_filters=(1, 1), decoder_filters=(1, 1, 1),
                       kernel_size=1, activation=None, downsample=downsample)
    ndim = len(spatial)
    for name in ("unet_enc0_conv", "unet_enc1_conv", "unet_dec0_conv"):
        model.get_layer(name).set_weights([np.ones((1,) * ndim + (1, 1)), np.zeros(1)])
    select = np.zeros((1,) * ndim + (2, 1))
    select[..., pick, 0] = 1.0
    model.get_layer("unet_dec1_conv").set_weights([select, np.zeros(1)])
    # dec2 reads [upsampled dec1, skip0] and returns their sum
    model.get_layer("unet_dec2_conv").set_weights([np.ones((1,) * ndim + (2, 1)), np.zeros(1)])
    return model


def _repeat(x, times, ndim):
    for axis in range(1, ndim + 1):
        x = np.repeat(x, times, axis=axis)
    return x


def _block_max(x, size, ndim):
    shape = [x.shape[0]]
    for n in x.shape[1:-1]:
        shape += [n // size, size]
    y = x.reshape(*shape, x.shape[-1])
    return y.max(axis=tuple(2 + 2 * i for i in range(ndim)))


@pytest.mark.parametrize("spatial", [(8, 12), (4, 8, 4)])
def test_stride_wiring_and_nearest_upsampling(spatial):
    ndim = len(spatial)
    x = np.random.default_rng(ndim).normal(size=(2, *spatial, 1)).astype(np.float32)
    sub = (slice(None),) + (slice(None, None, 2),) * ndim
    sub4 = (slice(None),) + (slice(None, None, 4),) * ndim
    # stride-2 1x1 convolutions keep the even voxels: enc0 = x[::2], enc1 = x[::4]
    # pick the skip (enc0): dec1 = x[::2] -> up -> + x
    out = np.asarray(_identity_unet(spatial, "stride", 1)(x))
    np.testing.assert_allclose(out, _repeat(x[sub], 2, ndim) + x, atol=1e-6)
    # pick the upsampled bottleneck: dec1 = up(x[::4]) -> up -> + x
    out = np.asarray(_identity_unet(spatial, "stride", 0)(x))
    np.testing.assert_allclose(out, _repeat(x[sub4], 4, ndim) + x, atol=1e-6)


@pytest.mark.parametrize("spatial", [(8, 12), (4, 8, 4)])
def test_maxpool_wiring(spatial):
    ndim = len(spatial)
    x = np.random.default_rng(10 + ndim).normal(size=(2, *spatial, 1)).astype(np.float32)
    # skip0 = x, skip1 = maxpool2(x), bottleneck = maxpool4(x)
    out = np.asarray(_identity_unet(spatial, "maxpool", 1)(x))
    np.testing.assert_allclose(out, _repeat(_block_max(x, 2, ndim), 2, ndim) + x, atol=1e-6)
    out = np.asarray(_identity_unet(spatial, "maxpool", 0)(x))
    np.testing.assert_allclose(out, _repeat(_block_max(x, 4, ndim), 4, ndim) + x, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_constant_input_gives_constant_output_with_nearest_upsampling(ndim):
    """1x1 kernels (no zero-padding border effect): every tensor stays constant in space."""
    x = np.full((2, *(8,) * ndim, 2), 0.7, np.float32)
    x[1] = -1.3
    for downsample in ("stride", "maxpool"):
        model = build_unet((8,) * ndim, 2, kernel_size=1, downsample=downsample,
                           normalisation="batch", **TINY)
        out = np.asarray(model(x))
        for b in range(2):
            np.testing.assert_allclose(out[b], np.broadcast_to(out[b][(0,) * ndim], out[b].shape),
                                       atol=1e-6)
        assert np.ptp(out) > 1e-4  # the two samples differ: not trivially zero
    # a transposed convolution's 2^ndim kernel positions break the constancy
    model = build_unet((8,) * ndim, 2, kernel_size=1, upsample="transposed", **TINY)
    out = np.asarray(model(x[:1]))
    assert np.ptp(out[..., 0]) > 1e-4


# --------------------------------------------------------------------------- conv_block

def test_conv_block_order_activation_and_normalisation():
    x = np.linspace(-2.0, 2.0, 2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.float32)
    inp = keras.Input((4, 4, 1))
    eps = 1e-3  # BatchNormalization default
    expected = {
        "conv-act-norm": np.where(-x < 0, -0.3 * x, -x) / np.sqrt(1 + eps) + 1.0,
        "conv-norm-act": np.where(-x / np.sqrt(1 + eps) + 1.0 < 0,
                                  0.3 * (-x / np.sqrt(1 + eps) + 1.0),
                                  -x / np.sqrt(1 + eps) + 1.0),
    }
    for order, want in expected.items():
        name = order.replace("-", "_")
        out = conv_block(inp, 1, kernel_size=1, negative_slope=0.3, normalisation="batch",
                         order=order, name=name)
        model = keras.Model(inp, out)
        model.get_layer(f"{name}_conv").set_weights([-np.ones((1, 1, 1, 1)), np.zeros(1)])
        norm = model.get_layer(f"{name}_norm")
        norm.set_weights([np.ones(1), np.ones(1), np.zeros(1), np.ones(1)])  # beta = 1
        assert [type(layer).__name__ for layer in model.layers[1:]] == (
            ["Conv2D", "LeakyReLU", "BatchNormalization"] if order == "conv-act-norm"
            else ["Conv2D", "BatchNormalization", "LeakyReLU"])
        np.testing.assert_allclose(np.asarray(model(x)), want, atol=1e-6)
    # relu and linear, 3-D, stride 2
    inp3 = keras.Input((4, 4, 4, 1))
    x3 = np.random.default_rng(1).normal(size=(1, 4, 4, 4, 1)).astype(np.float32)
    for activation, f in (("relu", lambda v: np.maximum(v, 0)), (None, lambda v: v)):
        name = f"b3_{activation}"
        model = keras.Model(inp3, conv_block(inp3, 1, kernel_size=1, strides=2,
                                             activation=activation, name=name))
        model.get_layer(f"{name}_conv").set_weights([np.ones((1, 1, 1, 1, 1)), np.zeros(1)])
        np.testing.assert_allclose(np.asarray(model(x3)), f(x3[:, ::2, ::2, ::2]), atol=1e-6)


def test_conv_block_instance_normalisation():
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 3.0, size=(2, 4, 6, 4, 3)).astype(np.float32)
    inp = keras.Input(x.shape[1:])
    model = keras.Model(inp, conv_block(inp, 2, kernel_size=1, activation=None,
                                        normalisation="instance", name="inst"))
    kernel, bias = model.get_layer("inst_conv").get_weights()
    conv = np.einsum("...c,cf->...f", x.astype(np.float64), kernel[0, 0, 0]) + bias
    mean = conv.mean(axis=(1, 2, 3), keepdims=True)
    var = conv.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(np.asarray(model(x)), (conv - mean) / np.sqrt(var + 1e-3),
                               atol=1e-4)


# --------------------------------------------------------------------------- serialisation

@pytest.mark.parametrize("ndim", [2, 3])
def test_model_json_round_trip(ndim):
    model = build_unet((8,) * ndim, 2, upsample="transposed", downsample="maxpool",
                       normalisation="batch", negative_slope=0.3, name="net", **TINY)
    clone = keras.models.model_from_json(model.to_json())
    assert clone.name == "net" and clone.count_params() == model.count_params()
    assert clone.get_layer("net_dec1_act").get_config()["negative_slope"] == 0.3
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(ndim).normal(size=(1, *(8,) * ndim, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(model(x)), atol=1e-6)


# --------------------------------------------------------------------------- options

def test_bad_options_raise_value_error_naming_the_option():
    inp = keras.Input((8, 8, 1))
    bad = {
        "downsample": dict(downsample="avgpool"),
        "upsample": dict(upsample="bilinear"),
        "activation": dict(activation="tanh"),
        "normalisation": dict(normalisation="layer"),
        "order": dict(order="act-conv-norm"),
        "skips": dict(skips="yes"),
        "encoder_filters": dict(encoder_filters=(4, 0)),
        "decoder_filters": dict(encoder_filters=(4, 4, 4), decoder_filters=(4, 4)),
    }
    for option, kwargs in bad.items():
        with pytest.raises(ValueError, match=option):
            unet(inp, **kwargs)
    with pytest.raises(ValueError, match=r"\('stride', 'maxpool'\)"):
        unet(inp, downsample="pool")
    with pytest.raises(ValueError, match="encoder_filters"):
        unet(inp, encoder_filters=())
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels = 8"):
        unet(keras.Input((8, 12, 1)), encoder_filters=(2, 2, 2))
    with pytest.raises(ValueError, match="divisible"):
        build_unet((16, 16, 20), 1)  # 20 not divisible by 16
    with pytest.raises(ValueError, match="rank"):
        unet(keras.Input((8, 1)))
    with pytest.raises(ValueError, match="input_shape"):
        build_unet((8, 8, 8, 1), 1)
    with pytest.raises(ValueError, match="channels"):
        build_unet((8, 8), 0)
    for option, kwargs in (("filters", dict(filters=0)), ("kernel_size", dict(kernel_size=0)),
                           ("strides", dict(strides=-1)),
                           ("normalisation", dict(normalisation="group")),
                           ("order", dict(order="norm-conv-act")),
                           ("activation", dict(activation="gelu"))):
        args = {"filters": 4, **kwargs}
        with pytest.raises(ValueError, match=option):
            conv_block(inp, args.pop("filters"), **args)


def test_check_option():
    assert check_option("mode", "a", ("a", None)) == "a"
    assert check_option("mode", None, ("a", None)) is None
    with pytest.raises(ValueError, match=r"mode must be one of \('a', None\), got 'b'"):
        check_option("mode", "b", ("a", None))
    with pytest.raises(ValueError, match="mode"):
        check_option("mode", np.zeros(3), ("a",))


def test_len_decoder_equal_to_levels_returns_the_last_concatenation():
    out = unet(keras.Input((8, 8, 3)), encoder_filters=(4, 5), decoder_filters=(6, 7))
    assert out.shape == (None, 8, 8, 7 + 3)
    out = unet(keras.Input((8, 8, 3)), encoder_filters=(4, 5), decoder_filters=(6, 7),
               skips=False, name="u2")
    assert out.shape == (None, 8, 8, 7)


# --------------------------------------------------------------------------- docstrings

@pytest.mark.parametrize("module", ["_checks", "blocks", "regularisers", "losses",
                                    "spatial_transformer", "sampling_grids", "affine"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"regseg.layers.{module}")
    result = doctest.testmod(mod, extraglobs={"np": np, "keras": keras}, verbose=False)
    assert result.attempted > 0 and result.failed == 0
