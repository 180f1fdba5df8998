"""Intensity and overlap scores of the diffeomorphic U-Net's evaluation (Bouabid et al. §5.1).

* :func:`mean_squared_error` — "MSE standing for pixel intensity distance between the
  registered source and the target" (§5.1): the mean over voxels of the squared difference
  (released ``metrics.mse``: ``sklearn.metrics.mean_squared_error`` of the flattened volumes).
* :func:`squared_cross_correlation` — "Cross-Correlation" (§5.1, Tables 1-3): the released
  ``metrics.cross_correlation``, the squared Pearson correlation of the two volumes
  ``cov^2 / (var_a var_b + 1e-5)`` with sums (not means) of squares; in [0, 1).
* :func:`voxel_agreement` — what the released code calls ``dice_score``:
  ``2 * #(a == b) / (a.size + b.size)``, the fraction of voxels whose labels agree, background
  included. It is not a Dice score (two empty masks score 1; a mask covering 30 % of the
  volume shifted off its target still scores about 0.4); the paper's "Dice" values are this
  number. Reported under its own name only.

Volumes are NumPy arrays of one shape (any dimension); values are dimensionless (images: the
units of the normalised intensities).
"""

from __future__ import annotations

import numpy as np

__all__ = ["mean_squared_error", "squared_cross_correlation", "voxel_agreement"]


def _pair(a, b, fname):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{fname}: shape mismatch {a.shape} vs {b.shape}")
    return a, b


def mean_squared_error(a, b) -> float:
    """Mean over voxels of ``(a - b)^2`` (§5.1 "MSE").

    Raises:
        ValueError: shape mismatch.
    """
    a, b = _pair(a, b, "mean_squared_error")
    return float(np.mean((a - b) ** 2))


def squared_cross_correlation(a, b, eps: float = 1e-5) -> float:
    """Squared global Pearson correlation ``cov^2 / (var_a var_b + eps)`` (§5.1 "CC").

    ``cov = sum (a - mean a)(b - mean b)``, ``var_a = sum (a - mean a)^2`` (sums over every
    voxel), as the released ``metrics.cross_correlation``; ``eps`` = 1e-5 as released.

    Raises:
        ValueError: shape mismatch.
    """
    a, b = _pair(a, b, "squared_cross_correlation")
    da, db = a - a.mean(), b - b.mean()
    cov = float(np.sum(da * db))
    return float(cov * cov / (float(np.sum(da * da)) * float(np.sum(db * db)) + eps))


def voxel_agreement(a, b) -> float:
    """Released ``dice_score``: ``2 * #(a == b) / (a.size + b.size)`` = fraction of equal voxels.

    Args:
        a, b: label arrays of one shape (e.g. binary masks ``(X, Y, Z)``).
    Raises:
        ValueError: shape mismatch.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"voxel_agreement: shape mismatch {a.shape} vs {b.shape}")
    return float(2 * np.count_nonzero(a == b) / (a.size + b.size))
