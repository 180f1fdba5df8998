"""Segmentor and registor networks of Couteaux et al. (§2, §3.2.2), their losses and stop-gradients.

Notation of the paper (§2): a pair of images ``(x1, x2)`` of two modalities with annotation masks
``(s1, s2)``; the segmentor ``S(x1, x2) = (ŝ1, ŝ2)``; the registor ``R(ŝ1, ŝ2) = θ ∈ Ω``;
``ŝ2' = θ(ŝ1)``.

Losses (§2.1), every term a mean over the voxels of the batch:

* ``L_r = BCE(s1, ŝ1) + BCE(s2, ŝ2)`` (segmentation, red path of Fig. 1);
* ``L_g = MSE(θ(ŝ1) * f, s2 * f)``, ``f`` the separable [1, 2, 1] filter (registration, green);
* ``L_p = MSE(θ(ŝ1), ŝ2)`` (similarity, pink), acting on the second channel only;
* ``L = λ_r L_r + λ_g L_g + λ_p L_p``.

Stop-gradients (the "diodes" of Fig. 1; the figure itself did not survive the text conversion,
so they are placed where the text puts constraints on them): "to prevent the segmentor from
being affected by L_g" and because "the similarity loss only affects the second channel", the
gradient is stopped (1) on both predicted masks where they enter the registor and (2) on ``ŝ1``
where it enters the warp. Hence ``L_g`` reaches the registor only, ``L_r`` the segmentor only,
and ``L_p`` the segmentor through ``ŝ2`` and the registor through θ ("Both networks are trained to
minimize L"; ``similarity_trains_registor=False`` stops ``L_p`` at θ as well).

Ω (§3.1, §3.2.2): translations of at most ``max_translation`` pixels (the toy), or elastic
displacements on a grid 16 times coarser than the image, trilinearly resampled to full
resolution (the liver). Warping is (bi/tri)linear (§3.2.2) with zeros outside the image (a mask
is empty there).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import keras
from keras import ops

from regseg.layers import unet, warp
from regseg.layers.coarse_fields import upsample_field
from regseg.layers.filters import binomial_blur

TRANSFORMS = ("translation", "elastic")


@dataclass(frozen=True)
class CooperatingConfig:
    """Everything that defines the two networks and the losses (JSON-serialisable).

    Attributes:
        spatial_shape: ``(H, W)`` or ``(D, H, W)``; ``None`` entries allow any size (3-D random
            crops); static sizes must be multiples of 16.
        transform: Ω, ``"translation"`` (toy, §3.1) or ``"elastic"`` (§3.2.2).
        segmentor_encoder, segmentor_decoder: U-Net widths (``regseg.layers.unet``; maxpool
            down, transposed-convolution up, ReLU: the U-Net family of Models Genesis, ref. [8]).
        segmentor_normalisation: ``None`` or ``"instance"`` (batches of 1, §3.2.2).
        registor_features: the registor's blocks, each two 3^n convolutions + ReLU and a 2^n
            max-pooling (§3.2.2: 16, 32, 64, 128; four blocks = factor 16).
        max_translation: bound of Ω for translations, pixels (§3.1: 32).
        translation_pooling: how the registor's coarse field becomes one translation:
            ``"mask_weighted"`` (mean of the coarse vectors weighted by the mask content of each
            cell) or ``"mean"``; the paper gives no toy registor.
        lambda_r, lambda_g, lambda_p: loss weights (§2.1).
        blur_passes: applications of the [1, 2, 1] filter (1, §2.2).
        similarity_trains_registor: ``L_p`` also reaches the registor through θ.
        inputs: 2 (the segmentor of the paper) or 1 (the single-input U-Net of §3.2.3, one image
            and one mask at a time).
    """

    spatial_shape: tuple = (240, 240)
    transform: str = "translation"
    segmentor_encoder: tuple = (16, 32, 64, 64)
    segmentor_decoder: tuple = (64, 64, 32, 16, 16)
    segmentor_normalisation: str | None = None
    registor_features: tuple = (16, 32, 64, 128)
    max_translation: float = 32.0
    translation_pooling: str = "mask_weighted"
    lambda_r: float = 1.0
    lambda_g: float = 1.0
    lambda_p: float = 0.0
    blur_passes: int = 1
    similarity_trains_registor: bool = True
    inputs: int = 2

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if len(self.spatial_shape) not in (2, 3):
            raise ValueError(f"spatial_shape must be (H, W) or (D, H, W), got {self.spatial_shape}")
        factor = 2 ** len(self.registor_features)
        for s in self.spatial_shape:
            if s is not None and s % factor:
                raise ValueError(f"spatial size {s} must be a multiple of {factor} (the registor "
                                 f"pools {len(self.registor_features)} times)")
        if self.inputs not in (1, 2):
            raise ValueError(f"inputs must be 1 or 2, got {self.inputs}")
        if self.translation_pooling not in ("mask_weighted", "mean"):
            raise ValueError(f"translation_pooling must be 'mask_weighted' or 'mean', got "
                             f"{self.translation_pooling!r}")
        for name in ("lambda_r", "lambda_g", "lambda_p"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    @property
    def grid_factor(self) -> int:
        """The registor's downsampling factor (16 with four blocks, §3.2.2)."""
        return 2 ** len(self.registor_features)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CooperatingConfig":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


# ------------------------------------------------------------------------------ networks
def build_segmentor(config: CooperatingConfig) -> keras.Model:
    """The segmentor ``S``: ``(batch, *S, inputs)`` images -> ``(batch, *S, inputs)`` logits.

    One network takes both images and predicts one mask per image (§2: "a single segmentor [...]
    so that it can take into account both images for segmenting each individual image"); the
    masks are ``sigmoid(logits)``. Channel ``k`` of the output is the mask of input ``k``.

    Args:
        config: :class:`CooperatingConfig` (``inputs`` = 1 gives the single-input U-Net).
    Returns:
        ``keras.Model`` named ``segmentor``.
    """
    inp = keras.Input((*config.spatial_shape, config.inputs), name="images")
    body = unet(inp, encoder_filters=config.segmentor_encoder,
                decoder_filters=config.segmentor_decoder, downsample="maxpool",
                upsample="transposed", activation="relu",
                normalisation=config.segmentor_normalisation, name="segmentor_unet")
    conv = keras.layers.Conv3D if config.ndim == 3 else keras.layers.Conv2D
    # float32 output heads: losses and warps stay float32 under --precision mixed_bfloat16
    logits = conv(config.inputs, 1, name="segmentor_logits", dtype="float32")(body)
    return keras.Model(inp, logits, name="segmentor")


@keras.saving.register_keras_serializable(package="regseg")
class TranslationPooling(keras.layers.Layer):
    """One translation from the registor's coarse vectors, bounded to Ω.

    Inputs ``[coarse (batch, *c, ndim), masks (batch, *S, 2)]``; output ``(batch, ndim)`` pixels,
    ``max_translation * tanh(t / max_translation)`` of the mean ``t`` of the coarse vectors
    (``"mean"``) or of their mean weighted by the mask content of each coarse cell
    (``"mask_weighted"``, average pooling of ``ŝ1 + ŝ2``).

    Raises:
        ValueError: unknown pooling, non-positive bound.
    """

    def __init__(self, max_translation=32.0, pooling="mask_weighted", **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("mask_weighted", "mean"):
            raise ValueError(f"pooling must be 'mask_weighted' or 'mean', got {pooling!r}")
        if not max_translation > 0:
            raise ValueError(f"max_translation must be positive, got {max_translation}")
        self.max_translation, self.pooling = float(max_translation), pooling

    def call(self, inputs):
        coarse, masks = inputs
        ndim = len(coarse.shape) - 2
        axes = tuple(range(1, ndim + 1))
        if self.pooling == "mean":
            t = ops.mean(coarse, axis=axes)
        else:
            factor = masks.shape[1] // coarse.shape[1]
            w = ops.sum(_average_pool(masks, factor, ndim), axis=-1, keepdims=True)
            t = ops.sum(coarse * w, axis=axes) / (ops.sum(w, axis=axes) + 1e-6)
        return self.max_translation * ops.tanh(t / self.max_translation)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[0][-1])

    def get_config(self):
        config = super().get_config()
        config.update(max_translation=self.max_translation, pooling=self.pooling)
        return config


def _average_pool(x, factor, ndim):
    return ops.average_pool(x, pool_size=(factor,) * ndim, strides=(factor,) * ndim,
                            padding="valid")


def build_registor(config: CooperatingConfig) -> keras.Model:
    """The registor ``R``: two masks ``(batch, *S, 2)`` -> θ.

    §3.2.2: "a fully-convolutional network, down-sampling the input by a factor 16 (4 blocks of
    two 3x3x3 convolutional layers with ReLU activations followed by one 2x2x2 Max-Pooling layer,
    each block having 16, 32, 64 and 128 feature maps, respectively, and a 1x1x1 convolution at
    the end)". The last convolution starts at zero (θ_0 = identity, as τ_0 of §2.2; not stated).

    Returns:
        ``keras.Model`` named ``registor``: for ``transform="elastic"`` the coarse displacement
        ``(batch, *S/16, ndim)`` (voxels of the full-resolution image; see :func:`displacement`);
        for ``"translation"`` one translation ``(batch, ndim)`` in pixels, within Ω.
    """
    nd = config.ndim
    conv = keras.layers.Conv3D if nd == 3 else keras.layers.Conv2D
    pool = keras.layers.MaxPooling3D if nd == 3 else keras.layers.MaxPooling2D
    masks = keras.Input((*config.spatial_shape, 2), name="masks")
    x = masks
    for i, f in enumerate(config.registor_features):
        for j in range(2):
            x = conv(f, 3, padding="same", activation="relu", name=f"registor_block{i}_conv{j}")(x)
        x = pool(2, name=f"registor_block{i}_pool")(x)
    coarse = conv(nd, 1, kernel_initializer="zeros", bias_initializer="zeros",
                  name="registor_field", dtype="float32")(x)
    if config.transform == "elastic":
        return keras.Model(masks, coarse, name="registor")
    t = TranslationPooling(config.max_translation, config.translation_pooling,
                           name="registor_translation", dtype="float32")([coarse, masks])
    return keras.Model(masks, t, name="registor")


def displacement(theta, spatial_shape, config: CooperatingConfig):
    """The full-resolution displacement field of θ, ``(batch, *spatial, ndim)`` voxels.

    A translation ``(batch, ndim)`` is broadcast to every voxel; an elastic coarse field is
    (tri)linearly upsampled by the registor's factor (§3.2.2).
    """
    nd = config.ndim
    if config.transform == "translation":
        return ops.broadcast_to(ops.reshape(theta, (-1, *([1] * nd), nd)),
                                (ops.shape(theta)[0], *spatial_shape, nd))
    return upsample_field(theta, config.grid_factor)


def _identity(spatial_shape, dtype="float32"):
    axes = [ops.arange(s, dtype=dtype) for s in spatial_shape]
    return ops.stack(ops.meshgrid(*axes, indexing="ij"), axis=-1)[None]


def apply_transform(image, theta, config: CooperatingConfig):
    """θ(image): backward (bi/tri)linear warping, zeros outside (§3.2.2).

    Args:
        image: ``(batch, *spatial, C)``.
        theta: the registor's output (see :func:`build_registor`).
    Returns:
        ``(batch, *spatial, C)``.
    """
    spatial = [ops.shape(image)[1 + i] for i in range(config.ndim)]
    disp = displacement(theta, spatial, config)
    return warp(image, _identity(spatial, image.dtype) + disp, padding="zeros")


# ------------------------------------------------------------------------------ losses
def _bce_logits(target, logits):
    # mean over every voxel of -[y log p + (1 - y) log(1 - p)], p = sigmoid(logits)
    return ops.mean(ops.maximum(logits, 0.0) - logits * target + ops.log1p(ops.exp(-ops.abs(logits))))


def _mse(a, b):
    return ops.mean(ops.square(a - b))


def segmentation_loss(s1, s2, logits):
    """``L_r = BCE(s1, ŝ1) + BCE(s2, ŝ2)`` (§2.1), from the segmentor's logits ``(batch, *S, 2)``."""
    return _bce_logits(s1, logits[..., 0:1]) + _bce_logits(s2, logits[..., 1:2])


def registration_terms(s_hat1, s_hat2, s2, registor, config: CooperatingConfig, training=True):
    """``L_g``, ``L_p`` and θ, with the stop-gradients of Fig. 1 (see the module docstring).

    Args:
        s_hat1, s_hat2: predicted masks ``(batch, *S, 1)`` in [0, 1] (or, to pre-train the
            registor, the annotation masks).
        s2: the annotation mask of ``x2`` ``(batch, *S, 1)``.
        registor: the registor network.
    Returns:
        dict ``L_g``, ``L_p``, ``theta``, ``warped`` (θ(ŝ1)).
    """
    stop = ops.stop_gradient
    theta = registor(ops.concatenate([stop(s_hat1), stop(s_hat2)], axis=-1), training=training)
    warped = apply_transform(stop(s_hat1), theta, config)
    blur = lambda t: binomial_blur(t, config.blur_passes)  # noqa: E731
    l_g = _mse(blur(warped), blur(s2))
    warped_p = warped if config.similarity_trains_registor else \
        apply_transform(stop(s_hat1), stop(theta), config)
    l_p = _mse(warped_p, s_hat2)
    return {"L_g": l_g, "L_p": l_p, "theta": theta, "warped": warped}


def cooperating_losses(data, segmentor, registor, config: CooperatingConfig, training=True):
    """Every loss of §2.1 on a batch ``{"x1", "x2", "s1", "s2"}`` (each ``(batch, *S, 1)``).

    Returns:
        dict ``L_r``, ``L_g``, ``L_p``, ``L`` (= λ_r L_r + λ_g L_g + λ_p L_p), ``theta``,
        ``warped``, ``s_hat`` (the masks ``(batch, *S, 2)``).
    """
    x = ops.concatenate([data["x1"], data["x2"]], axis=-1)
    logits = segmentor(x, training=training)
    s_hat = ops.sigmoid(logits)
    out = registration_terms(s_hat[..., 0:1], s_hat[..., 1:2], data["s2"], registor, config,
                             training)
    out["L_r"] = segmentation_loss(data["s1"], data["s2"], logits)
    out["L"] = (config.lambda_r * out["L_r"] + config.lambda_g * out["L_g"]
                + config.lambda_p * out["L_p"])
    out["s_hat"] = s_hat
    return out


# ------------------------------------------------------------------------------ stages
def stage_losses(segmentor, registor, config: CooperatingConfig) -> dict:
    """The loss of each training step of §2.2, ``f(data, training) -> scalar``.

    "The training is done in three steps: we pre-train the segmentor with the segmentation loss
    only, the registor with the registor loss and annotation masks as input, and then the whole
    model with all three losses."

    Returns:
        ``{"segmentor": L_r, "registor": L_g(R(s1, s2)), "joint": L}``; for the single-input
        U-Net (``inputs=1``) only ``"segmentor"`` (BCE of each image's own mask).
    """
    if config.inputs == 1:
        def single(data, training):
            x = ops.concatenate([data["x1"], data["x2"]], axis=0)
            s = ops.concatenate([data["s1"], data["s2"]], axis=0)
            return _bce_logits(s, segmentor(x, training=training))
        return {"segmentor": single}

    def pretrain_segmentor(data, training):
        x = ops.concatenate([data["x1"], data["x2"]], axis=-1)
        return segmentation_loss(data["s1"], data["s2"], segmentor(x, training=training))

    def pretrain_registor(data, training):
        return registration_terms(data["s1"], data["s2"], data["s2"], registor, config,
                                  training)["L_g"]

    def joint(data, training):
        return cooperating_losses(data, segmentor, registor, config, training)["L"]

    return {"segmentor": pretrain_segmentor, "registor": pretrain_registor, "joint": joint}


def predict(segmentor, registor, x1, x2, config: CooperatingConfig):
    """Masks and θ for a batch of pairs (numpy in, numpy out).

    Args:
        x1, x2: ``(batch, *S)`` images.
    Returns:
        dict ``s_hat1``, ``s_hat2`` ``(batch, *S)`` probabilities, and, with a registor,
        ``theta`` and ``warped`` (θ(ŝ1), ``(batch, *S)``).
    """
    import numpy as np

    if config.inputs == 1:
        p1 = ops.sigmoid(segmentor(np.asarray(x1)[..., None], training=False))
        p2 = ops.sigmoid(segmentor(np.asarray(x2)[..., None], training=False))
        return {"s_hat1": np.asarray(p1)[..., 0], "s_hat2": np.asarray(p2)[..., 0]}
    x = np.stack([x1, x2], axis=-1).astype("float32")
    s_hat = ops.sigmoid(segmentor(x, training=False))
    out = {"s_hat1": np.asarray(s_hat)[..., 0], "s_hat2": np.asarray(s_hat)[..., 1]}
    if registor is not None:
        theta = registor(s_hat, training=False)
        out["theta"] = np.asarray(theta)
        out["warped"] = np.asarray(apply_transform(s_hat[..., 0:1], theta, config))[..., 0]
    return out
