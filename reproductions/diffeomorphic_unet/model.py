"""The diffeomorphic U-Net of Bouabid et al. (§4.3, Figure 9) and its loss (eq. 3-6).

Architecture (§4.3: "the Unet architecture proposed in [3]" (VoxelMorph) "with sigmoid
activation presented in [6]" (Christodoulidis et al. 2018); widths from the authors' released
code shahineb/deep_deformable_registration, see the reproduction's README, "Fidelity"):

* input: source ``S`` (moving) and atlas ``T`` (fixed), concatenated, ``(batch, D, H, W, 2)``;
  every spatial size a multiple of 16 (four stride-2 levels);
* U-Net body (:func:`regseg.layers.unet`): encoder 16, 32, 32, 32 stride-2 3³ convolutions,
  decoder 32, 32, 32, 32, 16, 16 with nearest-neighbour upsampling and skip connections, every
  convolution followed by LeakyReLU (slope 0.3) then batch normalisation;
* flow head: a 3³ convolution with 3 channels, kernel initialised N(0, 1e-5) with an L1 kernel
  penalty 1e-5 (released code; the paper is silent), then ``2 * sigmoid`` (the spatial gradients
  of the sampling grid, in (0, 2) voxels; 1 = identity), :class:`~regseg.layers.PositiveGradients`;
* sampling grid: cumulative sums of the gradients along each axis
  (:class:`~regseg.layers.CumulativeSumGrid`, 0-based identity; the released code's 1-based
  identity, a one-voxel shift, with ``grid_origin="one"``);
* spatial transformer (:class:`~regseg.layers.SpatialTransformer`, trilinear, border clamp)
  warping the source image and, for the segmentation runs of §5.4, the source mask
  ("an additional input to the spatial transformation layer", §4.3).

Loss (eq. 6, per sample, averaged over the batch): ``L_sim(T, phi(S)) + alpha R(phi) + beta
L_seg(T_mask, phi(S_mask))`` with

* ``L_sim``: eq. 3, the mean squared error (§4.5 "minimizing the MSE"), or for Table 2 minus the
  squared global cross-correlation (:class:`~regseg.layers.registration_losses.GlobalCrossCorrelationLoss`);
* ``R``: eq. 4, ``||grad phi - grad phi_Id||_1`` as §4.5's "mean absolute error regularization
  term on the deformation flow gradient": the mean over voxels and the 3 components of
  ``|g - 1|`` (:class:`~regseg.layers.L1ActivityPenalty` with weight ``alpha / (D H W 3)``);
* ``L_seg``: eq. 5, the negative soft Dice of the warped source mask
  (:class:`~regseg.layers.registration_losses.NegativeDiceLoss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import keras

from regseg.layers import (CumulativeSumGrid, L1ActivityPenalty, PositiveGradients,
                           SpatialTransformer, unet)

#: §4.3 / Figure 9 (released code): encoder and decoder widths
ENCODER_FILTERS = (16, 32, 32, 32)
DECODER_FILTERS = (32, 32, 32, 32, 16, 16)
#: LeakyReLU slope (released code: Keras 2 default alpha 0.3)
LEAKY_SLOPE = 0.3

_SIMILARITIES = ("mse", "cc")
_DENOMINATORS = ("source", "warped")
_ORIGINS = ("zero", "one")


@dataclass(frozen=True)
class DiffeomorphicUNetConfig:
    """Hyper-parameters of one diffeomorphic U-Net run; defaults are the paper's.

    Attributes:
        input_shape: spatial shape ``(D, H, W)`` in voxels, multiples of 16 (256³ in §4.5).
        similarity: ``"mse"`` (eq. 3, Tables 1 and 3) or ``"cc"`` (Table 2).
        alpha: weight of the regulariser R (eq. 4); Tables 1-3 use 1e-4, 1e-5, 1e-6.
        segmentation: warp the source mask too and add ``beta * L_seg`` (eq. 5, §5.4, Table 3).
        beta: weight of eq. 5 (Table 3: 1e-7 or 1e-6).
        dice_denominator: eq. 5's denominator: ``"source"`` (``|T| + |S|`` as printed) or
            ``"warped"`` (``|T| + |phi(S)|``, the V-Net soft Dice).
        grid_origin: ``"zero"`` (0-based identity) or ``"one"`` (released code, one-voxel shift).
        flow_init_std: standard deviation of the flow head's normal kernel initialisation
            (1e-5, released code).
        flow_kernel_l1: L1 penalty on the flow head's kernel (1e-5, released code).
    Raises:
        ValueError: (on construction) an unknown option value or a spatial size that is not a
            positive multiple of 16.
    """

    input_shape: tuple = (256, 256, 256)
    similarity: str = "mse"
    alpha: float = 1e-5
    segmentation: bool = False
    beta: float = 0.0
    dice_denominator: str = "source"
    grid_origin: str = "zero"
    flow_init_std: float = 1e-5
    flow_kernel_l1: float = 1e-5

    def __post_init__(self):
        from regseg.layers._checks import check_option
        check_option("similarity", self.similarity, _SIMILARITIES)
        check_option("dice_denominator", self.dice_denominator, _DENOMINATORS)
        check_option("grid_origin", self.grid_origin, _ORIGINS)
        shape = tuple(int(s) for s in self.input_shape)
        factor = 2 ** len(ENCODER_FILTERS)
        if len(shape) != 3 or any(s < factor or s % factor for s in shape):
            raise ValueError(f"input_shape must be 3 positive multiples of {factor} (four "
                             f"stride-2 levels), got {self.input_shape}")
        object.__setattr__(self, "input_shape", shape)
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got {self.alpha}, {self.beta}")

    @classmethod
    def from_dict(cls, config: dict) -> "DiffeomorphicUNetConfig":
        """Build from a JSON dict (lists become tuples)."""
        return cls(**{**config, "input_shape": tuple(config["input_shape"])})


def build_diffeomorphic_unet(config: DiffeomorphicUNetConfig = DiffeomorphicUNetConfig()):
    """Build the diffeomorphic U-Net as two Keras models sharing weights.

    Args:
        config: :class:`DiffeomorphicUNetConfig`.
    Returns:
        ``(train_model, full_model)``. Inputs of both: ``{"moving": (B, D, H, W, 1),
        "fixed": (B, D, H, W, 1)}`` plus, with ``segmentation``, ``"moving_mask"``
        ``(B, D, H, W, 1)`` (the source mask S, 0/1). ``train_model`` outputs the loss-bearing
        tensors: ``"warped"`` ``(B, D, H, W, 1)`` (phi(S)) and, with ``segmentation``,
        ``"warped_mask"`` ``(B, D, H, W, 1)`` (trilinearly warped S). ``full_model`` adds
        ``"grid"`` (sampling coordinates in voxels of the source, ``(B, D, H, W, 3)``) and
        ``"gradients"`` (``(B, D, H, W, 3)``, in (0, 2)). The regulariser of eq. 4 is a model
        loss (``alpha`` times the mean of ``|gradients - 1|``).
    """
    shape = config.input_shape
    moving = keras.Input((*shape, 1), name="moving")
    fixed = keras.Input((*shape, 1), name="fixed")
    pair = keras.layers.Concatenate(name="pair")([moving, fixed])
    x = unet(pair, encoder_filters=ENCODER_FILTERS, decoder_filters=DECODER_FILTERS,
             downsample="stride", upsample="nearest", negative_slope=LEAKY_SLOPE,
             normalisation="batch", order="conv-act-norm", name="unet")
    logits = keras.layers.Conv3D(
        3, 3, padding="same", name="flow", dtype="float32",  # float32 head (mixed precision)
        kernel_initializer=keras.initializers.RandomNormal(0.0, config.flow_init_std),
        kernel_regularizer=(keras.regularizers.L1(config.flow_kernel_l1)
                            if config.flow_kernel_l1 else None))(x)
    gradients = PositiveGradients(name="spatial_gradients")(logits)
    # eq. 4 as the mean absolute deviation from the identity's gradient 1 (§4.5)
    n_values = int(np.prod(shape)) * 3
    gradients = L1ActivityPenalty(config.alpha / n_values, 1.0, name="gradients")(gradients)
    grid = CumulativeSumGrid(origin=config.grid_origin, name="grid")(gradients)
    warped = SpatialTransformer(name="warped")([moving, grid])
    inputs = {"moving": moving, "fixed": fixed}
    outputs = {"warped": warped}
    if config.segmentation:
        moving_mask = keras.Input((*shape, 1), name="moving_mask")
        inputs["moving_mask"] = moving_mask
        outputs["warped_mask"] = SpatialTransformer(name="warped_mask")([moving_mask, grid])
    name = "diffeomorphic_unet"
    train_model = keras.Model(inputs, outputs, name=name)
    full_model = keras.Model(inputs, {**outputs, "grid": grid, "gradients": gradients},
                             name=f"{name}_full")
    return train_model, full_model


def losses_and_weights(config: DiffeomorphicUNetConfig):
    """``(loss, loss_weights)`` for ``model.compile``: eq. 3 (or CC) weight 1, eq. 5 weight beta.

    The eq. 4 term is added by the model (see :func:`build_diffeomorphic_unet`).
    """
    from regseg.layers.registration_losses import GlobalCrossCorrelationLoss, NegativeDiceLoss

    loss = {"warped": (keras.losses.MeanSquaredError() if config.similarity == "mse"
                       else GlobalCrossCorrelationLoss())}
    weights = {"warped": 1.0}
    if config.segmentation:
        loss["warped_mask"] = NegativeDiceLoss(denominator=config.dice_denominator)
        weights["warped_mask"] = float(config.beta)
    return loss, weights


def keras2_decay(initial_lr: float, decay: float, steps_per_epoch: int):
    """Keras 2's Adam ``decay``: ``lr / (1 + decay * iterations)``, evaluated once per epoch.

    §4.5: "Adam optimizer with 1e-3 initial learning rate and 1e-6 decay" (Keras 2.2.4). The
    rate at the start of epoch ``e`` is ``initial_lr / (1 + decay * e * steps_per_epoch)``;
    within an epoch it is held (at 1e-6 per step the difference is below 1e-4 relative for
    epochs of fewer than 100 steps).

    Returns:
        ``f(epoch) -> learning rate``.
    """
    def schedule(epoch):
        return float(initial_lr / (1.0 + decay * epoch * steps_per_epoch))
    return schedule


class DiffeomorphicUNetRegistrar:
    """``register(moving, fixed)`` of a trained diffeomorphic U-Net (the registrar protocol).

    ``moving`` and ``fixed`` are preprocessed samples on the network's grid. Returns numpy
    arrays without the batch axis: ``grid`` and ``displacement`` ``(D, H, W, 3)`` in voxels and
    ``warped`` ``(D, H, W)``.
    """

    def __init__(self, model, segmentation: bool = False):
        self.model = model
        self.segmentation = segmentation

    def register(self, moving, fixed):
        inputs = {"moving": moving.image[None, ..., None].astype(np.float32),
                  "fixed": fixed.image[None, ..., None].astype(np.float32)}
        if self.segmentation:
            # the mask only feeds the transformer (§4.3): it does not change the grid
            inputs["moving_mask"] = np.zeros_like(inputs["moving"])
        out = self.model(inputs, training=False)
        grid = np.asarray(out["grid"])[0]
        identity = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in grid.shape[:-1]],
                                        indexing="ij"), axis=-1)
        return {"grid": grid, "displacement": grid - identity,
                "warped": np.asarray(out["warped"])[0, ..., 0]}
