"""Shared Keras layers, losses, regularisers and blocks (``regseg.layers``).

Every layer and loss is registered for Keras serialisation under the package
name ``regseg`` and works in 2-D and 3-D, batched, channels-last.
"""

from ._xla import layers_jit_compile, set_layers_jit_compile
from .affine import AffineComposition, affine_matrix, apply_affine_to_grid
from .blocks import build_unet, conv_block, unet
from .cost_volume import CostVolume, cost_volume
from .losses import (L1ActivityPenalty, ReconstructionLoss, SoftDiceLoss, box_sum,
                     local_cross_correlation, soft_dice)
from .regularisers import BendingEnergyLoss, GradientLoss, bending_energy, gradient_penalty
from .sampling_grids import CumulativeSumGrid, PositiveGradients, cumulative_sum_grid
from .spatial_transformer import (SpatialTransformer, identity_grid, set_warp_defaults, warp,
                                  warp_defaults, warp_options)

__all__ = [
    "AffineComposition", "affine_matrix", "apply_affine_to_grid",
    "build_unet", "conv_block", "unet",
    "CostVolume", "cost_volume",
    "L1ActivityPenalty", "ReconstructionLoss", "SoftDiceLoss", "box_sum",
    "local_cross_correlation", "soft_dice",
    "BendingEnergyLoss", "GradientLoss", "bending_energy", "gradient_penalty",
    "CumulativeSumGrid", "PositiveGradients", "cumulative_sum_grid",
    "SpatialTransformer", "identity_grid", "warp", "set_warp_defaults", "warp_defaults",
    "warp_options", "layers_jit_compile", "set_layers_jit_compile",
]
