"""The U-Net builder with several convolutions per level (DeepAtlas' light segmentation U-Net)
and the layers added for DeepAtlas: parameter counts by hand, names, backward compatibility."""

import keras
import pytest

from regseg.layers import build_unet, unet


def test_several_convolutions_per_level_count_by_hand():
    model = build_unet((8, 8), 1, encoder_filters=((2, 3), 4), decoder_filters=((5, 6), (7,), 2),
                       downsample="maxpool", upsample="transposed")
    conv = lambda i, o, k=3: k * k * i * o + o  # noqa: E731  (2-D, with bias)
    # encoder: 1->2->3 (skip 0), pool, 3->4 (skip 1), pool; decoder 0: 4->5->6 at S/4,
    # transposed 6->6, concat skip 1 (4) -> 10; decoder 1: 10->7, transposed 7->7, concat skip 0
    # (3) -> 10; extra: 10->2
    expected = (conv(1, 2) + conv(2, 3) + conv(3, 4) + conv(4, 5) + conv(5, 6) + conv(6, 6, 2)
                + conv(10, 7) + conv(7, 7, 2) + conv(10, 2))
    assert model.count_params() == expected
    assert model.output_shape == (None, 8, 8, 2)
    names = {layer.name for layer in model.layers}
    assert {"unet_enc0_conv", "unet_enc0_1_conv", "unet_dec0_conv", "unet_dec0_1_conv"} <= names
    # a stride encoder strides only the first convolution of a level
    strided = build_unet((8, 8), 1, encoder_filters=((2, 2), 2), decoder_filters=(2, 2, 2),
                         name="s")
    assert strided.get_layer("s_enc0_conv").strides == (2, 2)
    assert strided.get_layer("s_enc0_1_conv").strides == (1, 1)


def test_single_ints_build_the_same_model_as_before():
    a = build_unet((8, 8), 2, encoder_filters=(4, 5), decoder_filters=(6, 7, 3), name="a")
    b = build_unet((8, 8), 2, encoder_filters=((4,), (5,)), decoder_filters=((6,), (7,), (3,)),
                   name="a")
    assert [w.shape for w in a.weights] == [w.shape for w in b.weights]
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]


def test_bad_levels_name_the_option():
    inp = keras.Input((8, 8, 1))
    with pytest.raises(ValueError, match="encoder_filters"):
        unet(inp, encoder_filters=((2, 0), 2))
    with pytest.raises(ValueError, match="decoder_filters: a level must hold"):
        unet(inp, encoder_filters=(2,), decoder_filters=((),))
    with pytest.raises(ValueError, match="encoder_filters"):
        unet(inp, encoder_filters=(2.5,))
