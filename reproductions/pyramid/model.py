"""The deformable registration pyramid (Gunnarsson, Sjölund, Schön; Learn2Reg 2020).

Architecture (§2.1 and Fig. 1; what the paper leaves open follows the authors' released code or
PWC-Net, the paper's reference [4]; every choice is listed in the README's fidelity table):

* **CNN block** (§2.1): 3x3x3 convolution -> LeakyReLU (slope 0.2, released code) -> batch norm,
  He-normal initialisation (released code).
* **Pyramid** (§2.1, Fig. 1a): ``L = 4`` levels shared by the moving and the fixed image; level
  ``l`` = three CNN blocks (the first with stride 2) with 16, 32, 32, 32 filters; level ``l``
  holds features of ``input / 2^l`` voxels. Level 0 is the full resolution, where the
  "features" are the images themselves (released code).
* **Per level**, from the coarsest ``l = 4`` to ``l = 0`` (Fig. 1b):

  - **U**: the displacement of level ``l + 1`` is upsampled (``UpSampling3D(2)``), passed
    through one 3-filter 3x3x3 convolution and doubled (its unit is voxels of the finer grid);
    the coarsest level starts from the identity;
  - **W**: the moving features are warped with it (the shared spatial transformer);
  - **A**: global average pooling of [fixed features, warped moving features] and Dense(12),
    zero-initialised so that ``A = I``; the affine is composed with the displacement
    (:class:`~regseg.layers.pyramid.AffineDisplacement`) and the moving features are warped again;
  - **CV**: the partial cost volume of the fixed and re-warped moving features, search range
    ``d = 2`` (§3), ``(2d+1)^3 = 125`` channels, followed by LeakyReLU(0.1) as in PWC-Net and
    the released code;
  - **D**: a 3-D DenseNet of 5 CNN blocks with 64, 64, 32, 18 and 8 filters (each block sees
    the concatenation of its input and all earlier outputs), then a 3-filter convolution, on
    [cost volume, fixed features, current displacement]; its output refines the current
    displacement: ``phi_d^(l) = (affine-composed displacement) + D(...)``.

* Outputs: ``phi_d^(l)`` at every level (eq. 1 needs them all; Table 2 shows ``l = 4, 2, 0``)
  and the affine fields ``phi_a^(l)``.

Losses (eq. 1-2c), as per-sample outputs of the training model weighted at compile time:
``lambda (1 - DCS(S_f, S_m o phi_d^(0)))`` (eq. 2a), ``-gamma^(l) NCC(I_f^(l), I_m^(l) o
phi_d^(l))`` (eq. 2b; ``I^(l)`` = the image average-pooled by ``2^l``), ``alpha^(l) ||phi_a^(l) -
phi_0^(l)||^2 + beta^(l) ||grad phi_d^(l)||^2`` (eq. 2c), ``l = 0..4``, with §3's
``lambda = 5``, ``gamma^(l) = 5/2^l``, ``alpha^(l) = 2^l``, ``beta^(l) = 1/2^l``
(:func:`loss_weights`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

import keras
from keras import layers

from regseg.layers import CostVolume, SpatialTransformer, conv_block
from regseg.layers.pyramid import (AffineDisplacement, GradientPenalty, MeanSquare, NegativeNCC,
                                   PresentLabelsDiceLoss, ZeroField)

#: §2.1: four pyramid levels with these filters
PYRAMID_FILTERS = (16, 32, 32, 32)
#: §2.1: the DenseNet's CNN blocks (the released code has 16 where the paper prints 18)
DENSENET_FILTERS = (64, 64, 32, 18, 8)
RELEASED_DENSENET_FILTERS = (64, 64, 32, 16, 8)


@dataclass(frozen=True)
class PyramidConfig:
    """Hyper-parameters of the pyramid; defaults are the paper's.

    Attributes:
        input_shape: spatial shape ``(X, Y, Z)`` (§3: 64^3), each a multiple of ``2^levels``.
        levels: ``L`` (§2.1: 4); the losses use ``l = 0..L`` (§3).
        pyramid_filters: filters per pyramid level (§2.1).
        densenet_filters: the DenseNet's CNN blocks (§2.1: 64, 64, 32, 18, 8).
        search_range: cost volume ``d`` (§3: 2).
        n_labels: foreground label channels of the one-hot label maps of eq. 2a (the largest
            label id over the training tasks; 13 for Learn2Reg Task 3).
        negative_slope: LeakyReLU slope of the CNN blocks (released code: 0.2).
        cv_negative_slope: LeakyReLU after the cost volume (PWC-Net, released code: 0.1).
        affine_on: ``"coordinates"`` (paper) or ``"displacements"`` (released code), see
            :class:`~regseg.layers.pyramid.AffineDisplacement`.
        affine_centre: ``"centre"`` or ``"corner"`` (the paper is silent).
        similarity: ``"global"`` NCC (paper, ref. [7]) or ``"local"`` 9^3 NCC (released code).
        weights: ``"paper"`` (§3) or ``"released"`` (betas x10), see :func:`loss_weights`.
        kernel_l2: L2 penalty on convolution kernels (paper: none; released code: 1e-3).
    """

    input_shape: tuple = (64, 64, 64)
    levels: int = 4
    pyramid_filters: tuple = PYRAMID_FILTERS
    densenet_filters: tuple = DENSENET_FILTERS
    search_range: int = 2
    n_labels: int = 13
    negative_slope: float = 0.2
    cv_negative_slope: float = 0.1
    affine_on: str = "coordinates"
    affine_centre: str = "centre"
    similarity: str = "global"
    weights: str = "paper"
    kernel_l2: float = 0.0

    def to_dict(self) -> dict:
        """JSON-serialisable settings (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "PyramidConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


def loss_weights(levels: int = 4, scheme: str = "paper") -> dict:
    """The weights of eq. 1-2c for ``l = 0..levels``.

    Args:
        levels: ``L`` (4).
        scheme: ``"paper"``: §3, ``lambda = 5``, ``gamma^(l) = 5 / 2^l``, ``alpha^(l) = 2^l``,
            ``beta^(l) = 1 / 2^l``; ``"released"``: the authors' code, the same but
            ``beta^(l) = 10 / 2^l``.
    Returns:
        ``{"lambda": float, "gamma": [..], "alpha": [..], "beta": [..]}`` (lists indexed by
        ``l``), dimensionless.
    Raises:
        ValueError: unknown scheme.
    """
    if scheme not in ("paper", "released"):
        raise ValueError(f"weights must be one of ('paper', 'released'), got {scheme!r}")
    ls = range(levels + 1)
    beta_scale = 10.0 if scheme == "released" else 1.0
    return {"lambda": 5.0,
            "gamma": [5.0 / 2 ** l for l in ls],
            "alpha": [float(2 ** l) for l in ls],
            "beta": [beta_scale / 2 ** l for l in ls]}


def _check(config: PyramidConfig):
    shape = tuple(int(s) for s in config.input_shape)
    factor = 2 ** config.levels
    if len(shape) != 3 or any(s % factor or s < factor for s in shape):
        raise ValueError(f"input_shape must be 3 sizes, multiples of 2^levels = {factor}; "
                         f"got {shape}")
    if len(config.pyramid_filters) != config.levels:
        raise ValueError(f"pyramid_filters needs {config.levels} values (one per level), got "
                         f"{config.pyramid_filters}")
    return shape


def _identity_kernel(shape, dtype=None):
    """3x3x3 kernel mapping each of the 3 channels to itself (the upsampling conv starts as x1)."""
    kernel = np.zeros(shape, dtype="float32")
    centre = tuple(s // 2 for s in shape[:3])
    for c in range(min(shape[3], shape[4])):
        kernel[(*centre, c, c)] = 1.0
    return keras.ops.convert_to_tensor(kernel, dtype=dtype)


def _block(x, filters, config, name, strides=1):
    reg = keras.regularizers.L2(config.kernel_l2) if config.kernel_l2 else None
    return conv_block(x, filters, strides=strides, negative_slope=config.negative_slope,
                      normalisation="batch", kernel_initializer="he_normal",
                      kernel_regularizer=reg, name=name)


def build_feature_pyramid(config: PyramidConfig) -> keras.Model:
    """The shared pyramid (§2.1): image ``(B, X, Y, Z, 1)`` -> ``L`` feature maps.

    Level ``l`` (1-based) has ``X / 2^l`` voxels per axis and ``pyramid_filters[l-1]`` channels.
    """
    shape = _check(config)
    image = keras.Input((*shape, 1), name="image")
    x, outputs = image, []
    for level, filters in enumerate(config.pyramid_filters, start=1):
        x = _block(x, filters, config, f"pyr{level}_a", strides=2)
        x = _block(x, filters, config, f"pyr{level}_b")
        x = _block(x, filters, config, f"pyr{level}_c")
        outputs.append(x)
    return keras.Model(image, outputs, name="feature_pyramid")


def densenet_estimator(x, config: PyramidConfig, name: str):
    """Module D (§2.1): 5 densely connected CNN blocks, then a 3-filter convolution.

    Block ``k`` receives the concatenation of the input and the outputs of blocks ``1..k-1``
    (Huang et al. 2017; PWC-Net's estimator); the final convolution sees all of them.

    Args:
        x: ``(B, *spatial, C)`` Keras tensor (cost volume, fixed features, displacement).
        config: the model's settings (``densenet_filters``).
        name: layer-name prefix.
    Returns:
        ``(B, *spatial, 3)`` displacement increment in voxels (the last convolution starts near
        zero: N(0, 1e-5) weights, as VoxelMorph's flow layer).
    """
    for k, filters in enumerate(config.densenet_filters, start=1):
        y = _block(x, filters, config, f"{name}_dense{k}")
        x = layers.Concatenate(name=f"{name}_cat{k}")([x, y])
    return layers.Conv3D(3, 3, padding="same",
                         kernel_initializer=keras.initializers.RandomNormal(stddev=1e-5),
                         bias_initializer="zeros", name=f"{name}_flow")(x)


def build_pyramid(config: PyramidConfig = PyramidConfig()):
    """Build the registration pyramid as ``(train_model, predict_model)`` sharing weights.

    Args:
        config: :class:`PyramidConfig`.
    Returns:
        ``train_model``: inputs ``{"moving", "fixed"}`` ``(B, X, Y, Z, 1)`` in [0, 1] and
        ``{"moving_seg", "fixed_seg"}`` ``(B, X, Y, Z, n_labels + 1)`` one-hot; outputs the
        per-sample loss terms ``(B,)``: ``dice`` (``1 - DCS``), ``ncc_<l>`` (``-NCC``),
        ``affine_<l>`` (``mean phi_a^2``, voxels^2) and ``grad_<l>`` (voxels^0), ``l = 0..L``.
        ``predict_model``: inputs ``{"moving", "fixed"}``; outputs ``displacement_<l>``
        ``(B, X/2^l, Y/2^l, Z/2^l, 3)`` (``phi_d^(l)``, voxels of level ``l``; ``displacement_0``
        is the final field), ``affine_<l>`` (``phi_a^(l)``) and ``warped`` ``(B, X, Y, Z, 1)``.
    Raises:
        ValueError: a shape that is not a multiple of ``2^levels`` or filters of the wrong
            length.

    Source: Gunnarsson et al. 2020, §2.1, Fig. 1, eq. 1-2c.
    """
    shape = _check(config)
    moving = keras.Input((*shape, 1), name="moving")
    fixed = keras.Input((*shape, 1), name="fixed")
    pyramid = build_feature_pyramid(config)
    feats_m = pyramid(moving)
    feats_f = pyramid(fixed)

    displacements, affines = {}, {}
    flow = None
    for level in range(config.levels, -1, -1):
        tag = f"l{level}"
        fm = moving if level == 0 else feats_m[level - 1]
        ff = fixed if level == 0 else feats_f[level - 1]
        if flow is None:
            up = ZeroField(name=f"{tag}_identity")(ff)
        else:
            up = layers.UpSampling3D(2, name=f"{tag}_upsample")(flow)
            up = layers.Conv3D(3, 3, padding="same", kernel_initializer=_identity_kernel,
                               bias_initializer="zeros", name=f"{tag}_upconv")(up)
            up = layers.Rescaling(2.0, name=f"{tag}_up_voxels")(up)
        warped = SpatialTransformer(field="displacement", name=f"{tag}_warp")([fm, up])
        pooled = layers.GlobalAveragePooling3D(name=f"{tag}_affine_pool")(
            layers.Concatenate(name=f"{tag}_affine_in")([ff, warped]))
        params = layers.Dense(12, kernel_initializer="zeros", bias_initializer="zeros",
                              name=f"{tag}_affine_dense")(pooled)
        composed, phi_a = AffineDisplacement(config.affine_on, config.affine_centre,
                                             name=f"{tag}_affine")([params, up])
        rewarped = SpatialTransformer(field="displacement", name=f"{tag}_rewarp")([fm, composed])
        cv = CostVolume(config.search_range, name=f"{tag}_cost_volume")([ff, rewarped])
        cv = layers.LeakyReLU(negative_slope=config.cv_negative_slope, name=f"{tag}_cv_act")(cv)
        x = layers.Concatenate(name=f"{tag}_estimator_in")([cv, ff, composed])
        delta = densenet_estimator(x, config, f"{tag}_deform")
        flow = layers.Add(name=f"displacement_{level}")([composed, delta])
        displacements[level], affines[level] = flow, phi_a

    warped_image = SpatialTransformer(field="displacement", name="warped")([moving, flow])
    predict_outputs = {f"displacement_{l}": d for l, d in displacements.items()}
    predict_outputs.update({f"affine_{l}": a for l, a in affines.items()})
    predict_outputs["warped"] = warped_image
    predict_model = keras.Model({"moving": moving, "fixed": fixed}, predict_outputs,
                                name="pyramid")

    moving_seg = keras.Input((*shape, config.n_labels + 1), name="moving_seg")
    fixed_seg = keras.Input((*shape, config.n_labels + 1), name="fixed_seg")
    warped_seg = SpatialTransformer(field="displacement", name="warped_seg")(
        [moving_seg, displacements[0]])
    terms = {"dice": PresentLabelsDiceLoss(name="dice")([fixed_seg, warped_seg])}
    for level in range(config.levels + 1):
        if level:
            pool = layers.AveragePooling3D(2 ** level, name=f"l{level}_image_pool")
            im_m, im_f = pool(moving), pool(fixed)
        else:
            im_m, im_f = moving, fixed
        warped_l = SpatialTransformer(field="displacement", name=f"l{level}_image_warp")(
            [im_m, displacements[level]])
        terms[f"ncc_{level}"] = NegativeNCC(config.similarity, name=f"ncc_{level}")([im_f, warped_l])
        terms[f"affine_{level}"] = MeanSquare(name=f"affine_{level}")(affines[level])
        terms[f"grad_{level}"] = GradientPenalty(name=f"grad_{level}")(displacements[level])
    train_model = keras.Model({"moving": moving, "fixed": fixed, "moving_seg": moving_seg,
                               "fixed_seg": fixed_seg}, terms, name="pyramid_train")
    return train_model, predict_model


def per_sample_term(y_true, y_pred):
    """Keras loss that returns the model's per-sample term unchanged (``y_true`` is unused)."""
    return y_pred


def compile_losses(config: PyramidConfig) -> tuple[dict, dict]:
    """``(loss, loss_weights)`` for ``train_model.compile``: eq. 1 with §3's weights.

    Every output of the training model is already a per-sample term; its weight is ``lambda``
    (``dice``), ``gamma^(l)`` (``ncc_<l>``), ``alpha^(l)`` (``affine_<l>``) or ``beta^(l)``
    (``grad_<l>``) from :func:`loss_weights`.
    """
    w = loss_weights(config.levels, config.weights)
    loss, weights = {"dice": per_sample_term}, {"dice": w["lambda"]}
    for level in range(config.levels + 1):
        for key, name in (("gamma", "ncc"), ("alpha", "affine"), ("beta", "grad")):
            loss[f"{name}_{level}"] = per_sample_term
            weights[f"{name}_{level}"] = w[key][level]
    return loss, weights


def upsample_displacement(displacement: np.ndarray, factor: int) -> np.ndarray:
    """A level-``l`` displacement ``(x, y, z, 3)`` on the grid ``factor`` times finer.

    Linear interpolation of each component at the fine voxel centres (fine voxel ``i`` sits at
    coarse coordinate ``(i + 0.5) / factor - 0.5``, the block-average geometry of the pyramid's
    stride-2 levels; border values replicated), values multiplied by ``factor`` (voxels of the
    fine grid). Used for Table 2's warps at levels 4 and 2.
    """
    from scipy import ndimage

    if factor == 1:
        return np.asarray(displacement, dtype=np.float32)
    coarse = np.asarray(displacement, dtype=np.float64)
    fine_shape = tuple(s * factor for s in coarse.shape[:3])
    coords = [(np.arange(n) + 0.5) / factor - 0.5 for n in fine_shape]
    mesh = np.meshgrid(*coords, indexing="ij")
    out = np.stack([ndimage.map_coordinates(coarse[..., c], mesh, order=1, mode="nearest")
                    for c in range(3)], axis=-1)
    return (out * factor).astype(np.float32)


class PyramidRegistrar:
    """``register(moving, fixed)`` of a trained pyramid (the protocol of ``evaluate_pairs``).

    Inputs are preprocessed samples on the model's grid (intensities in [0, 1]). Returns numpy
    arrays without the batch axis: ``displacement`` ``(X, Y, Z, 3)`` (``phi_d^(0)``, voxels),
    ``warped`` ``(X, Y, Z)`` and ``levels`` ``{l: phi_d^(l)}`` at each level's resolution.
    The model is wrapped in a ``tf.function`` once (traced on the first pair).
    """

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self._predict = tf.function(lambda m, f: model({"moving": m, "fixed": f}, training=False))

    def register(self, moving, fixed):
        """Register one pair; raises ValueError if the samples are not on the model's grid."""
        shape = tuple(self.model.inputs[0].shape[1:4]) if isinstance(self.model.inputs, list) \
            else None
        m = np.asarray(moving.image, np.float32)[None, ..., None]
        f = np.asarray(fixed.image, np.float32)[None, ..., None]
        if shape is not None and (m.shape[1:4] != shape or f.shape[1:4] != shape):
            raise ValueError(f"pyramid input is {shape}; got moving {m.shape[1:4]} "
                             f"({moving.subject_id}) and fixed {f.shape[1:4]} ({fixed.subject_id})")
        out = {k: np.asarray(v)[0] for k, v in self._predict(m, f).items()}
        levels = {int(k.split("_")[1]): v for k, v in out.items() if k.startswith("displacement_")}
        return {"displacement": levels[0], "warped": out["warped"][..., 0], "levels": levels}
