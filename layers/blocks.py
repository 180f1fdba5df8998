"""Convolution blocks and a configurable 2-D / 3-D U-Net (Keras functional API).

Tensors are channels-last: ``(batch, D, H, W, C)`` in 3-D, ``(batch, H, W, C)``
in 2-D; the dimensionality is inferred from the rank of the input tensor.
Every convolution uses ``padding="same"`` and a bias.

Which paper uses which block
----------------------------
* Registration pyramid (Gunnarsson et al. 2020, §2.1): "a 3D convolutional
  layer followed by Leaky Relu and batch normalization", kernel 3^3 ->
  ``conv_block(x, f, normalisation="batch")`` (slope 0.2 in the released code,
  He-normal initialisation with an L2 weight penalty 1e-3; pass
  ``kernel_initializer`` / ``kernel_regularizer``).
* Diffeomorphic U-Net (Bouabid et al., §4.3 and Figure 9; the released code):
  encoder 16, 32, 32, 32 stride-2 convolutions, decoder 32, 32, 32, 32, 16, 16
  with nearest upsampling and skips, LeakyReLU 0.3 then batch norm ->
  ``unet(x, negative_slope=0.3, normalisation="batch")``.
* VoxelMorph-style (the registration network DeepAtlas, Xu & Niethammer 2019,
  §2.3, takes from VoxelMorph): conv -> LeakyReLU 0.2, no normalisation ->
  ``unet(x)`` with the defaults.

Written with Keras layers only (no backend-specific code).
"""

from __future__ import annotations

import numbers

import keras

from ._checks import check_option

_ACTIVATIONS = ("leaky_relu", "relu", None)
_NORMALISATIONS = (None, "batch", "instance")
_ORDERS = ("conv-act-norm", "conv-norm-act")
_DOWNSAMPLES = ("stride", "maxpool")
_UPSAMPLES = ("nearest", "transposed")


def _spatial_rank(x, what="input"):
    rank = len(x.shape)
    if rank not in (4, 5):
        raise ValueError(f"{what} must have rank 4 (batch, H, W, C) or 5 (batch, D, H, W, C), "
                         f"got shape {tuple(x.shape)}")
    return rank - 2


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _filters(name, values):
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of positive integers, got {values!r}") from None
    for v in values:
        _positive_int(name, v)
    return tuple(int(v) for v in values)


def _level_filters(name, values):
    """Filters per level: each entry an int (one convolution) or a sequence of ints (several)."""
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of positive integers, got {values!r}") from None
    out = []
    for v in values:
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            out.append((_positive_int(name, v),))
        else:
            level = _filters(name, v)
            if not level:
                raise ValueError(f"{name}: a level must hold at least one convolution, got {v!r}")
            out.append(level)
    return tuple(out)


def _level_name(prefix, k):
    return prefix if k == 0 else f"{prefix}_{k}"


def _sub(name, suffix):
    return None if name is None else f"{name}_{suffix}"


def conv_block(x, filters, *, kernel_size=3, strides=1, activation="leaky_relu",
               negative_slope=0.2, normalisation=None, order="conv-act-norm",
               kernel_initializer="glorot_uniform", kernel_regularizer=None, name=None):
    """Convolution, activation and optional normalisation, in 2-D or 3-D.

    Args:
        x: ``(batch, D, H, W, C_in)`` (3-D) or ``(batch, H, W, C_in)`` (2-D)
            Keras tensor; the rank picks ``Conv3D`` or ``Conv2D``.
        filters: output channels ``C_out``.
        kernel_size: cubic kernel side, voxels (3).
        strides: convolution stride, voxels (1; 2 halves every spatial size,
            rounding up, ``padding="same"``).
        activation: ``"leaky_relu"`` (``max(x, negative_slope * x)``),
            ``"relu"`` or ``None`` (linear).
        negative_slope: LeakyReLU slope for ``x < 0`` (0.2 VoxelMorph and the
            pyramid's released code; 0.3 the diffeomorphic U-Net).
        normalisation: ``None``, ``"batch"`` (``BatchNormalization``) or
            ``"instance"`` (``GroupNormalization(groups=-1)``: one group per
            channel, statistics over the spatial axes of each sample).
        order: ``"conv-act-norm"`` (the papers: conv -> LeakyReLU -> batch
            norm) or ``"conv-norm-act"``.
        kernel_initializer, kernel_regularizer: passed to the convolution.
        name: prefix of the layer names (``<name>_conv``, ``<name>_act``,
            ``<name>_norm``); ``None`` lets Keras choose.
    Returns:
        ``(batch, *spatial_out, filters)`` Keras tensor with
        ``spatial_out = ceil(spatial / strides)``.
    Raises:
        ValueError: unknown ``activation``, ``normalisation`` or ``order``
            (the message names the option and its allowed values), a
            non-positive ``filters``/``kernel_size``/``strides``, or an input
            that is neither 2-D nor 3-D.

    Source: Gunnarsson et al. 2020, §2.1 ("a 3D convolutional layer followed
    by Leaky Relu and batch normalization"); Bouabid et al., §4.3.

    >>> conv_block(keras.Input((8, 8, 8, 2)), 4, strides=2).shape
    (None, 4, 4, 4, 4)
    """
    check_option("activation", activation, _ACTIVATIONS)
    check_option("normalisation", normalisation, _NORMALISATIONS)
    check_option("order", order, _ORDERS)
    filters = _positive_int("filters", filters)
    kernel_size = _positive_int("kernel_size", kernel_size)
    strides = _positive_int("strides", strides)
    ndim = _spatial_rank(x)
    conv = keras.layers.Conv3D if ndim == 3 else keras.layers.Conv2D
    x = conv(filters, kernel_size, strides=strides, padding="same",
             kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer,
             name=_sub(name, "conv"))(x)

    def act(t):
        if activation == "leaky_relu":
            return keras.layers.LeakyReLU(negative_slope=float(negative_slope),
                                          name=_sub(name, "act"))(t)
        if activation == "relu":
            return keras.layers.ReLU(name=_sub(name, "act"))(t)
        return t

    def norm(t):
        if normalisation == "batch":
            return keras.layers.BatchNormalization(name=_sub(name, "norm"))(t)
        if normalisation == "instance":
            return keras.layers.GroupNormalization(groups=-1, name=_sub(name, "norm"))(t)
        return t

    return norm(act(x)) if order == "conv-act-norm" else act(norm(x))


def unet(inputs, *, encoder_filters=(16, 32, 32, 32), decoder_filters=(32, 32, 32, 32, 16, 16),
         downsample="stride", upsample="nearest", skips=True, kernel_size=3,
         activation="leaky_relu", negative_slope=0.2, normalisation=None, order="conv-act-norm",
         kernel_initializer="glorot_uniform", kernel_regularizer=None, name="unet"):
    """U-Net body: returns the output tensor of its last decoder layer.

    With ``L = len(encoder_filters)`` levels, an input ``(batch, D, H, W, C)``
    (2-D: drop ``D``), ``S = (D, H, W)``, ``e = encoder_filters``,
    ``d = decoder_filters``, every convolution a :func:`conv_block`:

    Encoder, ``downsample="stride"`` (VoxelMorph 2018, the diffeomorphic
    U-Net): block ``i`` is a stride-2 convolution with ``e[i]`` filters, output
    ``S / 2^(i+1)``.  Skip tensors, finest first: the input itself (``C``
    channels, ``S``), then blocks ``0 .. L-2`` (``e[i]`` channels,
    ``S / 2^(i+1)``); block ``L-1`` (``S / 2^L``) is the bottleneck.

    Encoder, ``downsample="maxpool"`` (VoxelMorph's later Keras U-Net, the
    DeepAtlas segmentation U-Net): block ``i`` is a stride-1 convolution with
    ``e[i]`` filters at ``S / 2^i``, whose output is skip ``i``, followed by a
    2x max-pooling; the bottleneck is the last pooled tensor, ``S / 2^L``.

    Decoder, both cases: for ``j = 0 .. L-1`` a stride-1 convolution with
    ``d[j]`` filters at ``S / 2^(L-j)``, a 2x upsampling to ``S / 2^(L-j-1)``
    and, if ``skips``, concatenation (upsampled first) with the skip tensor of
    that resolution.  Filters ``d[L:]`` are extra stride-1 convolutions at
    full resolution ``S``, after the last upsampling (VoxelMorph convention:
    decoder filters beyond the number of encoder levels).  The defaults
    ``e = (16, 32, 32, 32)``, ``d = (32, 32, 32, 32, 16, 16)`` thus have
    decoder convolutions at ``S/16, S/8, S/4, S/2`` then two at ``S``.  (The
    2018 VoxelMorph ``unet_core`` put its fifth decoder convolution at
    ``S/2`` before the last upsampling; here every extra one is at ``S``.)

    ``upsample="nearest"`` repeats every voxel 2x along each axis
    (``UpSampling2D/3D``, no weights); ``"transposed"`` is a linear
    ``Conv2DTranspose/Conv3DTranspose`` with ``d[j]`` filters, kernel 2,
    stride 2 (DeepAtlas' segmentation U-Net).

    Several convolutions per level: an entry of ``encoder_filters`` or
    ``decoder_filters`` may be a sequence of ints instead of an int, e.g.
    ``e = ((8, 16), (16, 32), (32, 64))``: the level then runs those
    convolutions one after the other (the first one strided for
    ``downsample="stride"``), and ``e[i]`` / ``d[j]`` above mean the level's
    last filter count.  DeepAtlas' released light segmentation U-Net is
    ``downsample="maxpool"``, ``upsample="transposed"``,
    ``e = ((8, 16), (16, 32), (32, 64))``,
    ``d = ((64, 64), (64, 64), (32, 32), (16, 16))``.  Layer names: the first
    convolution of a level keeps ``<name>_enc<i>`` / ``<name>_dec<j>``, the
    ``k``-th further one is ``<name>_enc<i>_<k>`` / ``<name>_dec<j>_<k>``.

    Args:
        inputs: ``(batch, D, H, W, C)`` or ``(batch, H, W, C)`` Keras tensor;
            every static spatial size must be divisible by ``2^L``.
        encoder_filters: ``L >= 1`` positive ints (or sequences of positive
            ints, several convolutions per level), finest level first.
        decoder_filters: ``>= L`` positive ints (or sequences of them),
            coarsest level first.
        downsample: ``"stride"`` or ``"maxpool"`` (see above).
        upsample: ``"nearest"`` or ``"transposed"``.
        skips: concatenate the encoder skip tensors (``True``) or not.
        kernel_size, activation, negative_slope, normalisation, order,
        kernel_initializer, kernel_regularizer: as :func:`conv_block`, for
            every block.
        name: prefix of the layer names: ``<name>_enc<i>_conv`` ...,
            ``<name>_pool<i>``, ``<name>_dec<j>_conv`` ..., ``<name>_up<j>``,
            ``<name>_concat<j>``.
    Returns:
        Keras tensor ``(batch, *S, d[-1])`` if ``len(d) > L``; with
        ``len(d) == L`` the last upsampled tensor, ``(batch, *S, d[-1] +
        skip channels)`` (``d[-1]`` without skips).
    Raises:
        ValueError: unknown ``downsample``/``upsample``/``activation``/
            ``normalisation``/``order`` (the message names the option and its
            allowed values), empty or non-positive ``encoder_filters``, fewer
            ``decoder_filters`` than encoder levels, a non-boolean ``skips``,
            an input that is neither 2-D nor 3-D, or a static spatial size not
            divisible by ``2^L``.

    Source: Bouabid et al., §4.3 and Figure 9 (U-Net of their ref. [3],
    VoxelMorph); Xu & Niethammer 2019, §2.3 ("the network design of [3]" for
    registration, a light 3-D U-Net with LeakyReLU for segmentation).

    >>> unet(keras.Input((16, 16, 16, 2))).shape
    (None, 16, 16, 16, 16)
    """
    check_option("downsample", downsample, _DOWNSAMPLES)
    check_option("upsample", upsample, _UPSAMPLES)
    check_option("activation", activation, _ACTIVATIONS)
    check_option("normalisation", normalisation, _NORMALISATIONS)
    check_option("order", order, _ORDERS)
    if not isinstance(skips, bool):
        raise ValueError(f"skips must be True or False, got {skips!r}")
    enc_levels = _level_filters("encoder_filters", encoder_filters)
    dec_levels = _level_filters("decoder_filters", decoder_filters)
    enc = tuple(level[-1] for level in enc_levels)
    dec = tuple(level[-1] for level in dec_levels)
    levels = len(enc)
    if levels == 0:
        raise ValueError("encoder_filters must hold at least one level, got ()")
    if len(dec) < levels:
        raise ValueError(f"decoder_filters must hold at least len(encoder_filters) = {levels} "
                         f"values (one per level), got {len(dec)}: {dec}")
    ndim = _spatial_rank(inputs, "inputs")
    factor = 2 ** levels
    spatial = tuple(inputs.shape[1:-1])
    if any(s is not None and s % factor for s in spatial):
        raise ValueError(f"spatial size {spatial} must be divisible by 2**levels = {factor} "
                         f"(levels = len(encoder_filters) = {levels})")

    block = dict(kernel_size=kernel_size, activation=activation, negative_slope=negative_slope,
                 normalisation=normalisation, order=order,
                 kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer)
    pool = keras.layers.MaxPooling3D if ndim == 3 else keras.layers.MaxPooling2D
    nearest = keras.layers.UpSampling3D if ndim == 3 else keras.layers.UpSampling2D
    transposed = keras.layers.Conv3DTranspose if ndim == 3 else keras.layers.Conv2DTranspose

    # encoder; skip_tensors[k] has resolution S / 2^k
    x = inputs
    skip_tensors = []
    if downsample == "stride":
        skip_tensors.append(inputs)
        for i, level in enumerate(enc_levels):
            for k, f in enumerate(level):
                x = conv_block(x, f, strides=2 if k == 0 else 1,
                               name=_level_name(f"{name}_enc{i}", k), **block)
            if i < levels - 1:
                skip_tensors.append(x)
    else:
        for i, level in enumerate(enc_levels):
            for k, f in enumerate(level):
                x = conv_block(x, f, strides=1, name=_level_name(f"{name}_enc{i}", k), **block)
            skip_tensors.append(x)
            x = pool(pool_size=2, name=f"{name}_pool{i}")(x)

    # decoder: one convolution + upsampling (+ skip) per level, coarsest first
    for j in range(levels):
        for k, f in enumerate(dec_levels[j]):
            x = conv_block(x, f, strides=1, name=_level_name(f"{name}_dec{j}", k), **block)
        if upsample == "nearest":
            x = nearest(size=2, name=f"{name}_up{j}")(x)
        else:
            x = transposed(dec[j], kernel_size=2, strides=2, padding="same",
                           kernel_initializer=kernel_initializer,
                           kernel_regularizer=kernel_regularizer, name=f"{name}_up{j}")(x)
        if skips:
            x = keras.layers.Concatenate(axis=-1, name=f"{name}_concat{j}")(
                [x, skip_tensors[levels - 1 - j]])
    # extra full-resolution convolutions
    for j in range(levels, len(dec)):
        for k, f in enumerate(dec_levels[j]):
            x = conv_block(x, f, strides=1, name=_level_name(f"{name}_dec{j}", k), **block)
    return x


def build_unet(input_shape, channels, **options):
    """Wrap :func:`unet` into a ``keras.Model``.

    Args:
        input_shape: spatial shape, ``(D, H, W)`` (3-D) or ``(H, W)`` (2-D),
            voxels; each size divisible by ``2 ** len(encoder_filters)``.
        channels: number of input channels ``C`` (e.g. 2 for a stacked
            moving/fixed pair).
        **options: keyword options of :func:`unet` (``encoder_filters``,
            ``decoder_filters``, ``downsample``, ``upsample``, ``skips``,
            ``kernel_size``, ``activation``, ``negative_slope``,
            ``normalisation``, ``order``, ``kernel_initializer``,
            ``kernel_regularizer``, ``name``).
    Returns:
        ``keras.Model`` named ``name`` (default ``"unet"``) mapping
        ``(batch, *input_shape, channels)`` to the output of :func:`unet`; its
        input layer is ``<name>_input``.
    Raises:
        ValueError: ``input_shape`` not of length 2 or 3, non-positive
            ``channels``, or any error of :func:`unet`.

    Source: as :func:`unet`.

    >>> build_unet((16, 16), 2, encoder_filters=(4, 8), decoder_filters=(8, 4, 4)).output_shape
    (None, 16, 16, 4)
    """
    try:
        input_shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be a spatial shape (H, W) or (D, H, W), "
                         f"got {input_shape!r}") from None
    if len(input_shape) not in (2, 3):
        raise ValueError(f"input_shape must be a spatial shape (H, W) or (D, H, W) without the "
                         f"channels, got {input_shape!r}")
    channels = _positive_int("channels", channels)
    name = options.get("name", "unet")
    inputs = keras.Input((*input_shape, channels), name=f"{name}_input")
    outputs = unet(inputs, **options)
    return keras.Model(inputs, outputs, name=name)
