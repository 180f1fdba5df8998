"""U-ReSNet (Estienne et al., MICCAI 2019) and its registration-only ablation.

Architecture (paper §3.1-3.4 and Fig. 1; widths the paper leaves open follow
the released code TheoEst/coupling_registration_segmentation, see the
reproduction's README, "Fidelity"):

* input: moving M and reference R, concatenated, ``(batch, X, Y, Z, 2)``;
  spatial sizes must be multiples of 4 (two stride-2 levels);
* input block (released code; paper silent): 3x3x3 conv, 4 channels,
  LeakyReLU, plus the input tiled to 4 channels (residual);
* shared encoder, 2 blocks of 8 and 16 channels (§3.4): a 2x2x2 stride-2
  convolution then a 3x3x3 convolution, each followed by LeakyReLU;
* two decoders with the same structure (§3.2, §3.4), one for registration, one
  for segmentation: 2x2x2 stride-2 transposed convolution (half the channels) +
  LeakyReLU, concatenation with the skip connection, 3x3x3 convolution +
  LeakyReLU, residual addition (released code), giving 16 then 8 channels;
* deformable block (§3.4): three 3x3x3 convolutions (8, 8, 3 channels; the last
  initialised to zero, §4) and the sigmoid, ``2*sigmoid`` giving the spatial
  gradients (identity = 1), integrated by cumulative sums into the sampling
  grid Phi (§3.1, Christodoulidis et al. 2018);
* affine block (§3.4): global average pooling + Dense(12) initialised to zero
  (§4), ``A = I + Delta``; composed with the grid, ``Phi x A`` (eq. 1);
* warp: backward trilinear sampling with border clamping (eq. 1);
* segmentation block (§3.4): three 3x3x3 convolutions (8, 8, 4 channels) then
  softmax over background + 3 classes (released code; the paper's sentence
  says "followed by a sigmoid activation" for both blocks);
* warped segmentation ``R_seg_hat = W(M_seg_hat, Phi x A)`` (eq. 3).

Parameters: 39,183 for U-ReSNet and 24,631 for the registration-only network
(< 40,000, §3.4), checked by ``tests/test_ureSnet_model.py``.

Regularisers of eq. 5 are explicit L1 penalty layers (alpha ||A - A_I||_1 on the
12 affine outputs, beta ||grad Phi - grad Phi_I||_1 on the spatial gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import keras
from keras import layers

from regseg.layers import (AffineComposition, CumulativeSumGrid, L1ActivityPenalty,
                           PositiveGradients, SpatialTransformer)

#: encoder channels: input block, encoder block 1, encoder block 2 (§3.4: 8, 16)
CHANNELS = (4, 8, 16)
#: LeakyReLU slope: Keras 2 default used by the released code (paper: "LeakyReLu")
LEAKY_SLOPE = 0.3


@dataclass(frozen=True)
class UReSNetConfig:
    """Hyper-parameters of U-ReSNet; defaults are the paper's.

    Attributes:
        input_shape: spatial shape ``(X, Y, Z)`` in voxels (multiples of 4).
        segmentation: True for U-ReSNet; False for the registration-only
            network of Christodoulidis et al. (the same registration branch,
            no segmentation decoder, trained without eq. 6).
        n_classes: foreground segmentation classes (3: CeblWM, CeblC, LV; §4).
        alpha: weight of ||A - A_I||_1 (eq. 5; 0.1).
        beta: weight of ||grad Phi - grad Phi_I||_1 (eq. 5; 1e-11).
        gamma, delta: weights of the two Dice terms (eq. 6; both 1).
        w1, w2: weights of (L_recon + L_reg) and L_seg (eq. 7; both 1).
        grid_origin: "zero" (paper-correct identity) or "one" (released code's
            one-voxel shift), see ``regseg.layers.sampling_grids``.
        affine_centre: "corner" (released code) or "centre".
        seg_dice: the Dice of eq. 6, one of :data:`SEG_DICE` (see
            :class:`SegmentationDiceLoss`): ``"released"`` (default; the sum
            of the 3 foreground soft Dice terms, as the released
            ``losses.generalised_dice``), ``"mean-with-background"`` (1 - mean
            over the 4 softmax channels) or ``"generalised"`` (Sudre et al.
            2017, which the paper cites).
        lcc_window: side of the LCC window of eq. 4, voxels (odd); the
            reproduction sets it from ``lcc_window_mm`` and the voxel size
            with :func:`lcc_window_voxels` (9 mm: 5 voxels at 2 mm, 9 at 1 mm).
        lcc_window_mm: the physical window the voxel count was derived from
            (recorded only).
        dice_background: legacy field of run manifests written before
            ``seg_dice`` existed (``True`` = ``"mean-with-background"``);
            ``None`` otherwise.  It does not change the network.
    """

    input_shape: tuple = (80, 104, 88)
    segmentation: bool = True
    n_classes: int = 3
    alpha: float = 0.1
    beta: float = 1e-11
    gamma: float = 1.0
    delta: float = 1.0
    w1: float = 1.0
    w2: float = 1.0
    grid_origin: str = "zero"
    affine_centre: str = "corner"
    seg_dice: str = "released"
    lcc_window: int = 9
    lcc_window_mm: float | None = None
    dice_background: bool | None = None


#: the Dice variants of eq. 6 (``--seg-dice``)
SEG_DICE = ("released", "mean-with-background", "generalised")


def lcc_window_voxels(window_mm: float, spacing_mm) -> int:
    """The LCC window side in voxels for a physical window: the odd integer nearest to
    ``window_mm / spacing`` (``2 * round((w / s - 1) / 2) + 1``, at least 1).

    9 mm gives 5 voxels at 2 mm (4.5 -> 5) and 9 at 1 mm.  For an anisotropic grid the mean
    voxel size is used (the window is cubic).

    Raises:
        ValueError: a window or a voxel size that is not positive.
    """
    spacing = float(np.mean(np.atleast_1d(np.asarray(spacing_mm, dtype=np.float64))))
    if not (window_mm > 0 and spacing > 0):
        raise ValueError(f"LCC window {window_mm} mm and voxel size {spacing} mm must be > 0")
    return max(1, 2 * int(np.floor((window_mm / spacing - 1) / 2 + 0.5)) + 1)


@keras.saving.register_keras_serializable(package="regseg_ureSnet")
class SegmentationDiceLoss(keras.losses.Loss):
    """The Dice term of eq. 6 on ``(batch, X, Y, Z, 4)`` one-hot labels and softmax outputs.

    Per sample (Keras averages over the batch), with the volumetric soft Dice
    ``D_c = (2 sum p t + s) / (sum p + sum t + s)``, ``s = 1e-5``:

    * ``"released"``: ``sum_{c=1..3} (1 - D_c)``, the 3 foreground classes summed, as the
      released ``losses.generalised_dice`` (which returns ``-sum_c D_c``: the same gradient;
      its per-slice Dice over two spatial axes is a bug, the volumetric Dice is used here);
    * ``"mean-with-background"``: ``1 - mean_{c=0..3} D_c`` (this suite's former default);
    * ``"generalised"``: Sudre et al. 2017 (cited by the paper for eq. 6) over the 4 channels,
      ``1 - 2 sum_c w_c sum p t / sum_c w_c sum (p + t)``, ``w_c = 1 / max(sum t_c, 1)^2``.
    """

    def __init__(self, kind="released", smooth=1e-5, name="seg_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        if kind not in SEG_DICE:
            raise ValueError(f"seg_dice must be one of {SEG_DICE}, got {kind!r}")
        self.kind, self.smooth = kind, float(smooth)

    def call(self, y_true, y_pred):
        from keras import ops
        y_true = ops.cast(y_true, y_pred.dtype)
        axes = tuple(range(1, len(y_pred.shape) - 1))
        inter = ops.sum(y_true * y_pred, axis=axes)
        total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
        if self.kind == "generalised":
            w = 1.0 / ops.square(ops.maximum(ops.sum(y_true, axis=axes), 1.0))
            return 1.0 - (2.0 * ops.sum(w * inter, -1) + self.smooth) / (
                ops.sum(w * total, -1) + self.smooth)
        d = (2.0 * inter + self.smooth) / (total + self.smooth)
        if self.kind == "released":
            return ops.sum(1.0 - d[..., 1:], axis=-1)
        return 1.0 - ops.mean(d, axis=-1)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "smooth": self.smooth}


def _conv(x, channels, kernel, name, strides=1, padding="same"):
    x = layers.Conv3D(channels, kernel, strides=strides, padding=padding, name=name)(x)
    return layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_lrelu")(x)


def _encoder_block(x, channels, name):
    """§3.4: 2x2x2 stride-2 convolution then 3x3x3 convolution, LeakyReLU after each."""
    x = _conv(x, channels, 2, f"{name}_down", strides=2, padding="valid")
    return _conv(x, channels, 3, f"{name}_conv")


def _decoder_block(x, skip, channels, name):
    """Transposed 2x2x2 stride-2 conv, skip concatenation, 3x3x3 conv, residual add."""
    up = layers.Conv3DTranspose(channels // 2, 2, strides=2, padding="valid", name=f"{name}_up")(x)
    up = layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_up_lrelu")(up)
    cat = layers.Concatenate(name=f"{name}_cat")([up, skip])
    out = _conv(cat, channels, 3, f"{name}_conv")
    return layers.Add(name=f"{name}_add")([out, cat])


def _decoder(skips, name):
    enc0, enc1, enc2 = skips
    x = _decoder_block(enc2, enc1, CHANNELS[2], f"{name}1")
    return _decoder_block(x, enc0, CHANNELS[1], f"{name}2")


def build_ureSnet(config: UReSNetConfig = UReSNetConfig()):
    """Build U-ReSNet (or the registration-only network) as two Keras models.

    Args:
        config: :class:`UReSNetConfig`.
    Returns:
        ``(train_model, full_model)`` sharing weights.  Inputs of both: a dict
        ``{"moving": (B, X, Y, Z, 1), "reference": (B, X, Y, Z, 1)}``.
        ``train_model`` outputs only the loss-bearing tensors:
        ``deformed`` (B, X, Y, Z, 1) and, with segmentation, ``moving_seg`` and
        ``warped_seg`` (B, X, Y, Z, n_classes + 1, softmax probabilities).
        ``full_model`` adds ``grid`` (B, X, Y, Z, 3; sampling coordinates in
        voxels of the moving image), ``affine`` (B, 12; Delta = A - I) and
        ``gradients`` (B, X, Y, Z, 3; spatial gradients of the grid).
    Raises:
        ValueError: spatial sizes not multiples of 4.
    """
    shape = tuple(int(s) for s in config.input_shape)
    if len(shape) != 3 or any(s % 4 for s in shape):
        raise ValueError(f"input_shape must be 3 sizes, multiples of 4; got {shape}")
    moving = keras.Input((*shape, 1), name="moving")
    reference = keras.Input((*shape, 1), name="reference")
    x = layers.Concatenate(name="pair")([moving, reference])

    # input block (released code): conv + LeakyReLU, plus the tiled input
    enc0 = _conv(x, CHANNELS[0], 3, "input")
    tiled = layers.Concatenate(name="input_tile")([x] * (CHANNELS[0] // 2))
    enc0 = layers.Add(name="input_add")([enc0, tiled])
    enc1 = _encoder_block(enc0, CHANNELS[1], "enc1")
    enc2 = _encoder_block(enc1, CHANNELS[2], "enc2")
    skips = (enc0, enc1, enc2)

    # registration decoder, deformable and affine blocks (§3.1, §3.4)
    reg = _decoder(skips, "regdec")
    d = _conv(reg, CHANNELS[1], 3, "deform1")
    d = _conv(d, CHANNELS[1], 3, "deform2")
    d = layers.Conv3D(3, 3, padding="same", kernel_initializer="zeros",
                      bias_initializer="zeros", name="deform3")(d)
    gradients = PositiveGradients(name="spatial_gradients")(d)
    gradients = L1ActivityPenalty(config.w1 * config.beta, 1.0, name="gradients")(gradients)
    grid = CumulativeSumGrid(origin=config.grid_origin, name="deformable_grid")(gradients)
    pooled = layers.GlobalAveragePooling3D(name="affine_pool")(reg)
    affine = layers.Dense(12, kernel_initializer="zeros", bias_initializer="zeros",
                          name="affine_dense")(pooled)
    affine = L1ActivityPenalty(config.w1 * config.alpha, 0.0, name="affine")(affine)
    grid = AffineComposition(centre=config.affine_centre, name="grid")([affine, grid])
    deformed = SpatialTransformer(name="deformed")([moving, grid])

    outputs = {"deformed": deformed}
    extra = {"grid": grid, "affine": affine, "gradients": gradients}
    if config.segmentation:
        seg = _decoder(skips, "segdec")
        s = _conv(seg, CHANNELS[1], 3, "seg1")
        s = _conv(s, CHANNELS[1], 3, "seg2")
        moving_seg = layers.Conv3D(config.n_classes + 1, 3, padding="same",
                                   activation="softmax", name="moving_seg")(s)
        warped_seg = SpatialTransformer(name="warped_seg")([moving_seg, grid])
        outputs.update(moving_seg=moving_seg, warped_seg=warped_seg)
    name = "ureSnet" if config.segmentation else "registration_only"
    inputs = {"moving": moving, "reference": reference}
    train_model = keras.Model(inputs, outputs, name=name)
    full_model = keras.Model(inputs, {**outputs, **extra}, name=f"{name}_full")
    return train_model, full_model


def losses_and_weights(config: UReSNetConfig):
    """Loss dict and weights of eq. 7: ``w1 (L_recon + L_reg) + w2 L_seg``.

    ``L_reg`` (eq. 5) is added by the model's :class:`L1ActivityPenalty`
    layers, already weighted ``w1 * alpha`` and ``w1 * beta`` by
    :func:`build_ureSnet`; this returns the compiled losses, eq. 4 weighted
    ``w1`` and the two Dice terms of eq. 6 weighted ``w2 * gamma`` and
    ``w2 * delta``, as ``(loss, loss_weights)`` for ``model.compile``.
    """
    from regseg.layers import ReconstructionLoss, SoftDiceLoss

    loss = {"deformed": ReconstructionLoss(mse_weight=1.0, lcc_weight=1.0,
                                           window=int(config.lcc_window))}
    weights = {"deformed": config.w1}
    if config.segmentation:
        kind = config.seg_dice
        if config.dice_background is not None and kind == "released":  # legacy manifests
            kind = "mean-with-background" if config.dice_background else "foreground-mean"
        if kind == "foreground-mean":  # the former --dice-foreground-only
            loss.update(moving_seg=SoftDiceLoss(include_background=False),
                        warped_seg=SoftDiceLoss(include_background=False))
        else:
            loss.update(moving_seg=SegmentationDiceLoss(kind), warped_seg=SegmentationDiceLoss(kind))
        weights.update(moving_seg=config.w2 * config.gamma, warped_seg=config.w2 * config.delta)
    return loss, weights


class UReSNetRegistrar:
    """``register(moving, fixed)`` of a trained U-ReSNet or registration-only network.

    The registrar protocol of :mod:`regseg.evaluation.pairs`: ``moving`` and ``fixed`` are
    preprocessed samples on the model's grid; returns numpy arrays without the batch axis:
    ``grid`` and ``displacement`` ``(X, Y, Z, 3)`` in voxels, ``warped`` ``(X, Y, Z)``, and for
    U-ReSNet ``moving_seg`` ``(X, Y, Z, n_classes + 1)`` softmax probabilities.
    """

    def __init__(self, model):
        self.model = model

    def register(self, moving, fixed):
        out = self.model({"moving": moving.image[None, ..., None].astype(np.float32),
                          "reference": fixed.image[None, ..., None].astype(np.float32)},
                         training=False)
        out = {k: np.asarray(v)[0] for k, v in out.items()}
        grid = out["grid"]
        result = {"grid": grid, "warped": out["deformed"][..., 0],
                  "displacement": grid - np.indices(grid.shape[:-1]).transpose(1, 2, 3, 0)}
        if "moving_seg" in out:
            result["moving_seg"] = out["moving_seg"]
        return result
