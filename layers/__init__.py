"""Shared Keras layers, losses and regularisers (``regseg.layers``).

Every layer is registered for Keras serialisation under the package name
``regseg`` and works in 2-D and 3-D, batched, channels-last.
"""

from .affine import AffineComposition, affine_matrix, apply_affine_to_grid
from .cost_volume import CostVolume, cost_volume
from .losses import (L1ActivityPenalty, L1ToValue, ReconstructionLoss, SoftDiceLoss, box_sum,
                     local_cross_correlation, soft_dice)
from .sampling_grids import CumulativeSumGrid, PositiveGradients, cumulative_sum_grid
from .spatial_transformer import SpatialTransformer, identity_grid, warp

__all__ = [
    "AffineComposition", "affine_matrix", "apply_affine_to_grid",
    "CostVolume", "cost_volume",
    "L1ActivityPenalty", "L1ToValue", "ReconstructionLoss", "SoftDiceLoss", "box_sum",
    "local_cross_correlation", "soft_dice",
    "CumulativeSumGrid", "PositiveGradients", "cumulative_sum_grid",
    "SpatialTransformer", "identity_grid", "warp",
]
