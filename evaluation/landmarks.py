"""Landmark errors in world coordinates (mm) for images on different grids.

The target registration error of a pair whose two images have their own voxel grids (e.g. two
CT scans each rescaled to its own cube, Bouabid et al. §4.2): each FIXED landmark (world mm,
RAS+) is placed on the fixed grid, mapped through the sampling grid (fixed voxel -> moving
voxel, trilinear interpolation of the grid, coordinates clamped to the volume) and brought to
world coordinates with the MOVING image's affine; its error is the Euclidean distance to the
corresponding MOVING landmark. This is what :func:`regseg.evaluation.pairs.evaluate_pairs`
averages into its ``TRE mm``; here every landmark's error is returned.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["world_landmark_errors"]


def world_landmark_errors(fixed_points, fixed_affine, moving_points, moving_affine, grid):
    """Per-landmark registration error in mm.

    Args:
        fixed_points, moving_points: ``(N, 3)`` corresponding landmarks, world mm (RAS+).
        fixed_affine, moving_affine: ``(4, 4)`` voxel -> world (mm) matrices of the two grids.
        grid: ``(X, Y, Z, 3)`` sampling grid on the fixed grid, in voxels of the moving grid
            (identity + displacement).
    Returns:
        ``(N,)`` float64 distances, mm.
    Raises:
        ValueError: point arrays of different shapes or not ``(N, 3)``, or a grid that is not
            ``(X, Y, Z, 3)``.
    """
    fixed_points = np.asarray(fixed_points, dtype=np.float64)
    moving_points = np.asarray(moving_points, dtype=np.float64)
    if fixed_points.shape != moving_points.shape or fixed_points.ndim != 2 \
            or fixed_points.shape[1] != 3:
        raise ValueError(f"landmarks must be two (N, 3) arrays of one shape, got "
                         f"{fixed_points.shape} and {moving_points.shape}")
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 4 or grid.shape[-1] != 3:
        raise ValueError(f"grid must have shape (X, Y, Z, 3), got {grid.shape}")
    homogeneous = np.c_[fixed_points, np.ones(len(fixed_points))]
    fixed_vox = np.linalg.solve(np.asarray(fixed_affine, dtype=np.float64), homogeneous.T)[:3]
    mapped = np.stack([ndimage.map_coordinates(grid[..., a], fixed_vox, order=1, mode="nearest")
                       for a in range(3)], axis=1)
    world = (np.c_[mapped, np.ones(len(mapped))] @ np.asarray(moving_affine, np.float64).T)[:, :3]
    return np.linalg.norm(world - moving_points, axis=1)
