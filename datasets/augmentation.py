"""Augmented copies of a preprocessed sample under random smooth deformations.

Used where a registration network must be trained on more images than a stand-in provides
(the diffeomorphic U-Net's lung CT pair: copies of the follow-up scan, never its landmarks).

A random smooth displacement field is drawn on a coarse lattice of ``control_points`` per axis
(independent uniform values in ``[-max_displacement, max_displacement]`` voxels per component)
and interpolated to every voxel with cubic B-splines (``scipy.ndimage.map_coordinates``,
order 3); the sample's images are resampled at ``identity + displacement`` with trilinear
interpolation and its label maps and masks with nearest neighbour (border values repeated).
With ``max_displacement`` below half the lattice spacing the map stays invertible in practice
(displacement gradients below 1).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

__all__ = ["random_smooth_displacement", "deform_sample", "AugmentedSamples", "SampleList"]


def random_smooth_displacement(shape, rng: np.random.Generator, *, control_points: int = 5,
                               max_displacement: float = 3.0) -> np.ndarray:
    """A random smooth displacement field ``(X, Y, Z, 3)`` in voxels.

    Args:
        shape: spatial shape ``(X, Y, Z)``.
        rng: numpy random generator (the field depends only on it).
        control_points: lattice size per axis (>= 2); the lattice spans the volume corner to
            corner.
        max_displacement: bound of every lattice value, voxels (the interpolated field can
            overshoot it slightly, cubic splines).
    Returns:
        float32 ``(X, Y, Z, 3)``; component ``c`` along array axis ``c``.
    Raises:
        ValueError: ``control_points < 2`` or a negative ``max_displacement``.
    """
    if int(control_points) < 2 or max_displacement < 0:
        raise ValueError(f"control_points must be >= 2 and max_displacement >= 0, got "
                         f"{control_points}, {max_displacement}")
    shape = tuple(int(s) for s in shape)
    cp = int(control_points)
    coarse = rng.uniform(-max_displacement, max_displacement, (cp, cp, cp, 3))
    coords = np.meshgrid(*[np.linspace(0, cp - 1, s) for s in shape], indexing="ij")
    field = np.stack([ndimage.map_coordinates(coarse[..., c], coords, order=3, mode="nearest")
                      for c in range(3)], axis=-1)
    return field.astype(np.float32)


def deform_sample(sample, displacement: np.ndarray, subject_id: str | None = None):
    """A copy of ``sample`` resampled at ``identity + displacement`` (backward warping).

    Images trilinear, label maps and masks nearest neighbour, coordinates clamped to the volume
    (border values repeated). Landmarks are dropped (``None``): the copy has no annotated points.

    Args:
        sample: a :class:`~regseg.datasets.subjects.Sample`.
        displacement: ``(X, Y, Z, 3)`` voxels, on the sample's grid.
        subject_id: the copy's id (default ``<id>-deformed``).
    Returns:
        a new Sample on the same grid and affine.
    Raises:
        ValueError: a displacement whose shape is not ``sample.shape + (3,)``.
    """
    disp = np.asarray(displacement, dtype=np.float64)
    if disp.shape != tuple(sample.shape) + (3,):
        raise ValueError(f"displacement must have shape {tuple(sample.shape) + (3,)}, got "
                         f"{disp.shape}")
    coords = np.indices(sample.shape, dtype=np.float64) + np.moveaxis(disp, -1, 0)
    for axis, size in enumerate(sample.shape):
        np.clip(coords[axis], 0, size - 1, out=coords[axis])

    def resample(arr, order):
        out = ndimage.map_coordinates(np.asarray(arr, dtype=np.float32), coords, order=order,
                                      mode="nearest")
        return out

    images = {k: resample(v, 1).astype(np.float32) for k, v in sample.images.items()}
    labels = {k: np.rint(resample(v, 0)).astype(np.int32) for k, v in sample.labels.items()}
    masks = {k: resample(v, 0) > 0.5 for k, v in sample.masks.items()}
    return replace(sample, subject_id=subject_id or f"{sample.subject_id}-deformed",
                   images=images, labels=labels, masks=masks, landmarks=None,
                   sources=dict(sample.sources))


class AugmentedSamples:
    """``n`` deformed copies of one sample; ``load(i)`` is deterministic in ``(seed, i)``.

    Args:
        base: the :class:`~regseg.datasets.subjects.Sample` to deform.
        n: number of copies.
        seed: copy ``i`` uses ``numpy.random.default_rng([seed, i])``.
        control_points, max_displacement: see :func:`random_smooth_displacement`.
    """

    def __init__(self, base, n: int, seed: int = 0, *, control_points: int = 5,
                 max_displacement: float = 3.0):
        self.base, self.n, self.seed = base, int(n), int(seed)
        self.control_points, self.max_displacement = int(control_points), float(max_displacement)
        self._cache: dict[int, object] = {}

    def __len__(self) -> int:
        return self.n

    def load(self, i: int):
        """Copy ``i`` (cached), id ``<base id>-aug<i>``.

        Raises:
            IndexError: ``i`` outside ``0 .. n - 1``.
        """
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"augmented copy {i} out of range 0..{self.n - 1}")
        if i not in self._cache:
            disp = random_smooth_displacement(
                self.base.shape, np.random.default_rng([self.seed, i]),
                control_points=self.control_points, max_displacement=self.max_displacement)
            self._cache[i] = deform_sample(self.base, disp, f"{self.base.subject_id}-aug{i}")
        return self._cache[i]


class SampleList:
    """Samples from several sources behind one ``load(i)`` (for ``pair_dataset``).

    Args:
        parts: objects with ``load(i)`` and ``len()`` (datasets, :class:`AugmentedSamples`) or
            single samples; their samples are numbered in order.
    """

    def __init__(self, parts):
        self.parts = [p if hasattr(p, "load") else _One(p) for p in parts]
        self._index = [(k, i) for k, p in enumerate(self.parts) for i in range(len(p))]

    def __len__(self) -> int:
        return len(self._index)

    def load(self, i: int):
        """Sample ``i`` of the concatenation."""
        k, j = self._index[int(i)]
        return self.parts[k].load(j)

    @property
    def subject_ids(self) -> list[str]:
        """Ids of every sample (loads them)."""
        return [self.load(i).subject_id for i in range(len(self))]


class _One:
    def __init__(self, sample):
        self.sample = sample

    def __len__(self):
        return 1

    def load(self, i):
        if int(i) != 0:
            raise IndexError(f"index {i} out of range for a single sample")
        return self.sample
