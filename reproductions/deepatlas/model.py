"""DeepAtlas (Xu & Niethammer, MICCAI 2019): the two networks, the losses of eq. 1-5 and the
case analysis of §2.2, the phase losses of the alternating training, registrar and segmenter.

Networks (§2.3 "Networks"; filter counts from the authors' released code, the paper gives
none):

* segmentation F_s: "a customized light 3D U-Net design for segmentation with LeakyReLU
  instead of ReLU, and smaller feature size" -> the released ``UNet_light``: max-pooling
  encoder ``(8, 16), (16, 32), (32, 64)``, bottleneck ``(64, 64)``, transposed-convolution
  decoder ``(64, 64), (32, 32), (16, 16)``, batch norm, LeakyReLU (PyTorch's default slope
  0.01), a 1x1x1 convolution to ``K + 1`` classes and a softmax;
* registration F_R: "the network design of [3]" (VoxelMorph, CVPR 2018, vm1): stride-2
  encoder ``16, 32, 32, 32``, decoder ``32, 32, 32, 8, 8`` with nearest upsampling and skips,
  LeakyReLU 0.2, a 3x3x3 convolution to the displacement (initialised N(0, 1e-5) as in
  VoxelMorph) in normalised [-1, 1] units (the released code's ``grid_sample`` convention),
  converted to voxels for warping.

Losses (§2.3): eq. 3 soft multi-class Dice (:func:`dice_loss`), eq. 4 ``1 - NCC``
(:func:`regseg.layers.correlation.NCCLoss`), eq. 5 bending energy of the normalised
displacement (:func:`regularity_loss`); the anatomy loss L_a and the supervised loss L_sp follow
the case analysis of §2.2 (:func:`anatomy_and_supervised`).  Eq. 1 (registration, F_s fixed)
and eq. 2 (segmentation, F_R fixed) are :meth:`DeepAtlasLosses.registration` and
:meth:`DeepAtlasLosses.segmentation`, the phases of the alternating training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from regseg.layers import bending_energy, unet, warp
from regseg.layers.correlation import normalized_cross_correlation
from regseg.layers.normalised_coordinates import voxel_scale

__all__ = ["DeepAtlasConfig", "DICE_VARIANTS", "REGULARISERS", "build_segmentation_network",
           "build_registration_network", "dice_loss", "regularity_loss",
           "anatomy_and_supervised", "DeepAtlasLosses", "DeepAtlasRegistrar", "DeepAtlasSegmenter",
           "one_hot"]

#: Eq. 3 variants: "v-net" = 1 - mean_k 2 sum S S* / (sum S + sum S*) (the Dice coefficient;
#: the released ``DiceLossMultiClass``); "as-printed" = the converted text, without the 2.
DICE_VARIANTS = ("v-net", "as-printed")
#: Eq. 5 variants on the displacement in [-1, 1] units (see :func:`regularity_loss`):
#: "released" = mean over the 27 Hessian entries (3 components x 9 entries), per-voxel central
#: differences (the scaling of the released ``BendingEnergyLoss``); "eq5-voxel" = eq. 5 as
#: printed (sum over components and entries), per-voxel differences; "eq5-unit" = eq. 5 with
#: derivatives w.r.t. the [-1, 1] coordinates (the literal reading).
REGULARISERS = ("released", "eq5-voxel", "eq5-unit")


@dataclass(frozen=True)
class DeepAtlasConfig:
    """Settings that rebuild the networks and the losses (stored in every run folder).

    Attributes:
        input_shape: ``(D, H, W)`` voxels (each divisible by 16: four stride-2 levels of F_R).
        n_classes: foreground classes ``K`` (the softmax has ``K + 1`` channels).
        lambda_r: regularity weight (§3: 20,000 knee, 5,000 brain).
        lambda_a: anatomy similarity weight (§3: 3).
        lambda_sp: supervised segmentation weight (§3: 3).
        dice: eq. 3 variant, one of :data:`DICE_VARIANTS`.
        dice_background: include the background channel in eq. 3's mean over k (released code).
        regulariser: eq. 5 variant, one of :data:`REGULARISERS`.
        seg_encoder, seg_decoder, seg_slope, seg_batch_norm: F_s (released ``UNet_light``).
        reg_encoder, reg_decoder, reg_slope: F_R (VoxelMorph vm1, [3]).
    """

    input_shape: tuple
    n_classes: int
    lambda_r: float = 20000.0
    lambda_a: float = 3.0
    lambda_sp: float = 3.0
    dice: str = "v-net"
    dice_background: bool = True
    regulariser: str = "released"
    seg_encoder: tuple = ((8, 16), (16, 32), (32, 64))
    seg_decoder: tuple = ((64, 64), (64, 64), (32, 32), (16, 16))
    seg_slope: float = 0.01
    seg_batch_norm: bool = True
    reg_encoder: tuple = (16, 32, 32, 32)
    reg_decoder: tuple = (32, 32, 32, 8, 8)
    reg_slope: float = 0.2

    def __post_init__(self):
        shape = tuple(int(s) for s in self.input_shape)
        if len(shape) != 3 or any(s % 16 for s in shape):
            raise ValueError(f"input_shape must be 3 sizes divisible by 16 (four stride-2 levels "
                             f"of the registration network), got {self.input_shape}")
        object.__setattr__(self, "input_shape", shape)
        if int(self.n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {self.n_classes}")
        if self.dice not in DICE_VARIANTS:
            raise ValueError(f"dice must be one of {DICE_VARIANTS}, got {self.dice!r}")
        if self.regulariser not in REGULARISERS:
            raise ValueError(f"regulariser must be one of {REGULARISERS}, got "
                             f"{self.regulariser!r}")
        for name in ("seg_encoder", "seg_decoder", "reg_encoder", "reg_decoder"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(tuple(v) if isinstance(v, (list, tuple)) else v
                                                 for v in value))

    def to_dict(self) -> dict:
        """JSON-serialisable settings."""
        return json_ready(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "DeepAtlasConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def json_ready(value):
    """Tuples to lists, recursively (for JSON)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


# ----------------------------------------------------------------------------------- networks
def build_segmentation_network(config: DeepAtlasConfig) -> keras.Model:
    """F_s: image ``(batch, D, H, W, 1)`` -> class probabilities ``(batch, D, H, W, K + 1)``.

    The released ``UNet_light`` (§2.3): conv -> batch norm -> LeakyReLU(0.01) blocks, 3x3x3,
    two per level, max-pooling, transposed 2x2x2 convolutions (linear here; the release adds
    batch norm and LeakyReLU after them), skips, a 1x1x1 convolution and a softmax.  Batch norm
    as PyTorch's defaults in the released code: running statistics updated with momentum 0.1
    (Keras ``momentum=0.9``), epsilon 1e-5.
    """
    image = keras.Input((*config.input_shape, 1), name="image")
    x = unet(image, encoder_filters=config.seg_encoder, decoder_filters=config.seg_decoder,
             downsample="maxpool", upsample="transposed", negative_slope=config.seg_slope,
             normalisation="batch" if config.seg_batch_norm else None, order="conv-norm-act",
             name="seg")
    # float32 output head: the softmax and the losses stay float32 under --precision
    # mixed_bfloat16 (Keras' mixed-precision guide)
    probs = keras.layers.Conv3D(config.n_classes + 1, 1, activation="softmax",
                                name="seg_classes", dtype="float32")(x)
    model = keras.Model(image, probs, name="segmentation")
    for layer in model.layers:  # PyTorch's batch norm (the released code): momentum 0.1, eps 1e-5
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum, layer.epsilon = 0.9, 1e-5
    return model


def build_registration_network(config: DeepAtlasConfig) -> keras.Model:
    """F_R: ``[moving, fixed]`` ``(batch, D, H, W, 1)`` each -> displacement ``(batch, D, H, W, 3)``
    in normalised [-1, 1] units (§3; convert with
    :func:`regseg.layers.normalised_coordinates.normalised_to_voxels`).

    VoxelMorph vm1 ([3], CVPR 2018) on the shared U-Net builder: encoder ``16, 32, 32, 32``
    stride-2 convolutions, decoder ``32, 32, 32, 8, 8``, LeakyReLU 0.2, nearest upsampling,
    skips; flow convolution 3x3x3 initialised N(0, 1e-5) (VoxelMorph).
    """
    moving = keras.Input((*config.input_shape, 1), name="moving")
    fixed = keras.Input((*config.input_shape, 1), name="fixed")
    x = keras.layers.Concatenate(name="pair")([moving, fixed])
    x = unet(x, encoder_filters=config.reg_encoder, decoder_filters=config.reg_decoder,
             negative_slope=config.reg_slope, name="reg")
    flow = keras.layers.Conv3D(3, 3, padding="same", name="flow",
                               kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-5),
                               bias_initializer="zeros", dtype="float32")(x)
    return keras.Model([moving, fixed], flow, name="registration")


# ------------------------------------------------------------------------------------- losses
def one_hot(labels, n_classes: int):
    """Int labels ``(batch, D, H, W)`` -> float one-hot ``(batch, D, H, W, K + 1)``."""
    return tf.one_hot(tf.cast(labels, tf.int32), n_classes + 1, dtype=tf.float32)


def dice_loss(s, s_star, *, variant="v-net", include_background=True, smooth=1e-6):
    """Eq. 3, soft multi-class Dice loss per sample.

    ``L = 1 - (1/K) sum_k (c sum_x S_k S*_k + smooth) / (sum_x S_k + sum_x S*_k + smooth)``
    with ``c = 2`` ("v-net": the Dice coefficient, as the released ``DiceLossMultiClass``) or
    ``c = 1`` ("as-printed": eq. 3 as the converted text prints it, whose best value is 1/2).

    Args:
        s, s_star: ``(batch, D, H, W, K + 1)`` one-hot or probabilities (channel 0 background).
        variant: see :data:`DICE_VARIANTS`.
        include_background: average over all ``K + 1`` channels (released code) or channels
            ``1..K``.
        smooth: additive smoothing (the released code's ``eps``, 1e-6).
    Returns:
        ``(batch,)`` dimensionless; 0 for identical one-hot maps with the "v-net" variant.
    Raises:
        ValueError: unknown variant.

    Source: DeepAtlas eq. 3 (L_a and L_sp).
    """
    if variant not in DICE_VARIANTS:
        raise ValueError(f"dice variant must be one of {DICE_VARIANTS}, got {variant!r}")
    c = 2.0 if variant == "v-net" else 1.0
    s = ops.cast(s, "float32")
    s_star = ops.cast(s_star, "float32")
    if not include_background:
        s, s_star = s[..., 1:], s_star[..., 1:]
    axes = tuple(range(1, len(s.shape) - 1))
    inter = ops.sum(s * s_star, axis=axes)
    total = ops.sum(s, axis=axes) + ops.sum(s_star, axis=axes)
    return 1.0 - ops.mean((c * inter + smooth) / (total + smooth), axis=-1)


def regularity_loss(displacement_normalised, variant="released"):
    """Eq. 5, ``L_r = (1/N) sum_x sum_i ||H(u_i(x))||_F^2``, of a displacement in [-1, 1] units.

    §3: "when computing L_r from the displacements, the image coordinates are scaled to
    [-1, 1] for each dimension".  The Hessian entries are central differences on the interior
    voxels (:func:`regseg.layers.bending_energy`; mixed entries counted twice, as in the
    symmetric Hessian).  Variants:

    * ``"eq5-voxel"``: eq. 5 as printed, derivatives per voxel of the normalised displacement;
    * ``"released"`` (default): the same divided by 27, i.e. the mean over the 3 components and
      the 9 Hessian entries, which is how the released ``BendingEnergyLoss`` averages
      (``(ddx + ddy + ddz + 2 dxdy + 2 dydz + 2 dxdz) / 9`` of means over components; its mixed
      stencil lacks the 1/4 of the central difference, here corrected).  lambda_r = 20,000 and
      5,000 (§3) balance 1 - NCC only at this scale: with the printed sum they are 27 times
      stronger (README);
    * ``"eq5-unit"``: eq. 5 with derivatives w.r.t. the [-1, 1] coordinates (the literal
      reading), ``((n - 1) / 2)^4`` times ``"eq5-voxel"`` on an ``n``-voxel axis.

    Args:
        displacement_normalised: ``(batch, D, H, W, 3)`` displacement in normalised units
            (voxels x ``2 / (n_k - 1)`` for component ``k``).
        variant: one of :data:`REGULARISERS`.
    Returns:
        ``(batch,)``, dimensionless (normalised units per voxel^2, squared).
    Raises:
        ValueError: unknown variant.
    """
    if variant not in REGULARISERS:
        raise ValueError(f"regulariser variant must be one of {REGULARISERS}, got {variant!r}")
    energy = bending_energy(displacement_normalised, scale_to_unit=variant == "eq5-unit")
    return energy / 27.0 if variant == "released" else energy


def anatomy_and_supervised(warp_fn, manual_m, manual_t, pred_m, pred_t, labeled_m, labeled_t, *,
                           dice_fn, joint=True):
    """L_a and L_sp per sample, the case analysis of §2.2.

    ``S_m`` is the manual segmentation of the moving image if it is labeled, else ``F_s(I_m)``;
    ``S_t`` likewise; ``L_a = L_dice(S_m o Phi^-1, S_t)`` and

    * target unlabeled: ``L_sp = L_dice(F_s(I_m), S_m)``;
    * moving unlabeled: ``L_sp = L_dice(F_s(I_t), S_t)``;
    * both labeled: ``L_sp = L_dice(F_s(I_m), S_m)`` (L_a does not involve F_s);
    * both unlabeled: ``L_a = L_sp = 0``.

    ``joint=False`` is the baseline registration of §3: L_a "only used for training pairs where
    both images have manual segmentations", no F_s (``pred_*`` may be ``None``), ``L_sp = 0``.

    Args:
        warp_fn: ``f(maps (batch, D, H, W, C)) -> warped maps`` (the moving -> target warp,
            trilinear).
        manual_m, manual_t: ``(batch, D, H, W, K + 1)`` one-hot manual segmentations (any
            values where unlabeled).
        pred_m, pred_t: ``(batch, D, H, W, K + 1)`` F_s probabilities, or ``None``.
        labeled_m, labeled_t: ``(batch,)`` 1.0 labeled, 0.0 unlabeled.
        dice_fn: ``f(S, S*) -> (batch,)`` (:func:`dice_loss`).
        joint: the DeepAtlas case analysis (True) or the baseline rule (False).
    Returns:
        ``(L_a, L_sp)``, two ``(batch,)`` tensors.
    """
    lm = ops.cast(ops.reshape(labeled_m, (-1, 1, 1, 1, 1)), "float32")
    lt = ops.cast(ops.reshape(labeled_t, (-1, 1, 1, 1, 1)), "float32")
    flat_m, flat_t = ops.reshape(lm, (-1,)), ops.reshape(lt, (-1,))
    if not joint:
        l_a = dice_fn(warp_fn(manual_m), manual_t) * flat_m * flat_t
        return l_a, ops.zeros_like(l_a)
    s_m = lm * manual_m + (1.0 - lm) * pred_m
    s_t = lt * manual_t + (1.0 - lt) * pred_t
    either = ops.maximum(flat_m, flat_t)
    l_a = dice_fn(warp_fn(s_m), s_t) * either
    l_sp = (flat_m * dice_fn(pred_m, manual_m)
            + (1.0 - flat_m) * flat_t * dice_fn(pred_t, manual_t))
    return l_a, l_sp


class DeepAtlasLosses:
    """The phase losses of §2 and §3 on a batch of pairs.

    A batch is ``(inputs, targets)`` as :func:`regseg.training.pairs.pair_dataset` yields it:
    inputs ``moving``, ``fixed`` ``(batch, D, H, W, 1)`` intensities, ``moving_labeled``,
    ``fixed_labeled`` ``(batch,)`` 1.0/0.0; targets ``moving_labels``, ``fixed_labels``
    ``(batch, D, H, W)`` int (0 where unlabeled).  Every loss returns ``(batch,)`` per-sample
    values (the alternating trainer averages them over the global batch).

    Args:
        config: :class:`DeepAtlasConfig`.
        segmentation: F_s, or ``None`` (baseline registration).
        registration: F_R, or ``None`` (baseline segmentation).
        joint: §2's case analysis (DA, Semi-DA) or the baseline registration rule (L_a only
            between two labeled images).
    """

    def __init__(self, config: DeepAtlasConfig, segmentation=None, registration=None, *,
                 joint: bool = True):
        self.config, self.seg, self.reg, self.joint = config, segmentation, registration, joint
        self.scale = tf.constant(voxel_scale(config.input_shape), tf.float32)
        grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in config.input_shape],
                            indexing="ij")
        self.identity = tf.constant(np.stack(grids, -1)[None])

    def _dice(self, s, s_star):
        return dice_loss(s, s_star, variant=self.config.dice,
                         include_background=self.config.dice_background)

    def _unpack(self, data):
        inputs, targets = data
        k = self.config.n_classes
        return (inputs["moving"], inputs["fixed"], one_hot(targets["moving_labels"], k),
                one_hot(targets["fixed_labels"], k), tf.cast(inputs["moving_labeled"], tf.float32),
                tf.cast(inputs["fixed_labeled"], tf.float32))

    def _displacement(self, moving, fixed, training):
        normalised = self.reg([moving, fixed], training=training)
        return normalised, self.identity + normalised * self.scale

    def _predict_fixed(self, image, labeled):
        """F_s(I) with F_s fixed (inference mode), skipped when every image is labeled."""
        def predict():
            return tf.stop_gradient(self.seg(image, training=False))

        def skip():
            shape = tf.concat([tf.shape(image)[:-1], [self.config.n_classes + 1]], axis=0)
            return tf.zeros(shape, tf.float32)

        return tf.cond(tf.reduce_all(labeled > 0.5), skip, predict)

    def terms(self, data, training=True, phase="registration"):
        """Every term per sample: ``{"similarity", "regularity", "anatomy", "supervised"}``.

        ``phase="registration"``: F_R in training mode, F_s fixed; ``"segmentation"``: F_s in
        training mode, F_R fixed (its displacement has no gradient).
        """
        m, f, sm, st, lm, lt = self._unpack(data)
        if phase == "registration":
            normalised, grid = self._displacement(m, f, training)
            pm = pt = None
            if self.joint:
                pm, pt = self._predict_fixed(m, lm), self._predict_fixed(f, lt)
        else:
            normalised, grid = self._displacement(m, f, False)
            normalised, grid = tf.stop_gradient(normalised), tf.stop_gradient(grid)
            pm, pt = self.seg(m, training=training), self.seg(f, training=training)
        l_a, l_sp = anatomy_and_supervised(lambda x: warp(x, grid), sm, st, pm, pt, lm, lt,
                                           dice_fn=self._dice, joint=self.joint)
        out = {"anatomy": l_a, "supervised": l_sp}
        if phase == "registration":
            warped = warp(m, grid)
            out["similarity"] = 1.0 - normalized_cross_correlation(f, warped)
            out["regularity"] = regularity_loss(normalised, self.config.regulariser)
        return out

    def registration(self, data, training=True):
        """Eq. 1: ``L_i + lambda_r L_r + lambda_a L_a`` (F_s fixed), ``(batch,)``."""
        t = self.terms(data, training, "registration")
        c = self.config
        return t["similarity"] + c.lambda_r * t["regularity"] + c.lambda_a * t["anatomy"]

    def segmentation(self, data, training=True):
        """Eq. 2: ``lambda_a L_a + lambda_sp L_sp`` (F_R fixed), ``(batch,)``."""
        t = self.terms(data, training, "segmentation")
        return self.config.lambda_a * t["anatomy"] + self.config.lambda_sp * t["supervised"]

    def supervised(self, data, training=True):
        """Baseline segmentation (§3): ``lambda_sp L_dice(F_s(I_m), S_m)`` on labeled images."""
        inputs, targets = data
        pred = self.seg(inputs["moving"], training=training)
        manual = one_hot(targets["moving_labels"], self.config.n_classes)
        return self.config.lambda_sp * self._dice(pred, manual)


# ------------------------------------------------------------------------ inference wrappers
class DeepAtlasSegmenter:
    """``segment(sample) -> (X, Y, Z, K + 1)`` class probabilities of a trained F_s."""

    def __init__(self, network):
        self.network = network
        self._fn = tf.function(lambda x: network(x, training=False), reduce_retracing=True)

    def segment(self, sample) -> np.ndarray:
        """Probabilities for a preprocessed :class:`~regseg.datasets.subjects.Sample`."""
        image = np.asarray(sample.image, np.float32)[None, ..., None]
        return np.asarray(self._fn(tf.constant(image)))[0]


class DeepAtlasRegistrar:
    """The registrar protocol (:mod:`regseg.evaluation.pairs`) of a trained F_R.

    ``register(moving, fixed)`` returns ``displacement`` and ``grid`` ``(X, Y, Z, 3)`` in voxels,
    ``warped`` ``(X, Y, Z)`` and, with a segmentation network, ``moving_seg`` / ``fixed_seg``
    ``(X, Y, Z, K + 1)`` probabilities.
    """

    def __init__(self, registration, segmentation=None):
        self.registration = registration
        self.segmenter = DeepAtlasSegmenter(segmentation) if segmentation is not None else None
        scale = tf.constant(voxel_scale(tuple(registration.input_shape[0][1:4])), tf.float32)
        self._fn = tf.function(lambda m, f: registration([m, f], training=False) * scale,
                               reduce_retracing=True)

    def register(self, moving, fixed) -> dict:
        m = tf.constant(np.asarray(moving.image, np.float32)[None, ..., None])
        f = tf.constant(np.asarray(fixed.image, np.float32)[None, ..., None])
        disp = np.asarray(self._fn(m, f))[0]
        grid = np.indices(disp.shape[:-1], dtype=np.float32).transpose(1, 2, 3, 0) + disp
        warped = np.asarray(warp(m, tf.constant(grid[None])))[0, ..., 0]
        out = {"displacement": disp, "grid": grid, "warped": warped}
        if self.segmenter is not None:
            out["moving_seg"] = self.segmenter.segment(moving)
            out["fixed_seg"] = self.segmenter.segment(fixed)
        return out
