"""LUNA16 lung CT (the diffeomorphic U-Net's data, Bouabid et al. §4.1-4.2) and its preprocessing.

Layout of a user's LUNA16 copy (as distributed by luna16.grand-challenge.org)::

    <root>/subset0/<seriesuid>.mhd (+ .raw) ... <root>/subset9/...
    <root>/seg-lungs-LUNA16/<seriesuid>.mhd (+ .zraw)   lung masks

(``<root>/luna16/`` is also accepted.) Scans are read with SimpleITK (§4.2 "Scan loading",
:mod:`regseg.datasets.itk_io`); each scan is a :class:`~regseg.datasets.subjects.Subject` with the
image ``"ct"`` and the label map ``"lungs"``. In ``seg-lungs-LUNA16`` the lungs are the values 3
and 4 (the two lungs) and 5 marks the trachea / main bronchi; the lung mask is ``{3, 4}``
(:data:`LUNA16_LUNG_VALUES`, an argument).

Preprocessing (§4.2, every step cited; :func:`bouabid_recipe`):

1. resample to 1 mm (§4.2 "we chose to resample all of the scans with a spacing of 1 along each
   axis"; images linear, masks nearest, "Masks resampled with nearest neighbour");
2. rescale to a cube (§4.2 "rescale them to the same dimension along each axis"; 256³ in §4.5,
   64 to 256 in §4.1), :class:`~regseg.datasets.recipes.ResampleToShape`;
3. clip the background to the in-field empty-area value (§4.2 "Clipping", Figure 8):
   :class:`ClipToInFieldBackground`;
4. normalise: ``(x - mean) / std`` over the whole volume (released ``LungsLoader.rescale_scan``;
   the paper is silent; early released versions divided by the variance).

The released code normalises before clipping; we clip first (the issue's order: clip, then
normalise), so that the out-of-field padding (-2048 / -3024 HU) does not enter the statistics
and the result is exactly zero-mean, unit-variance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .io import DataError
from .labels import LabelMapping
from .recipes import (MapLabels, MaskFromLabels, Recipe, Resample, ResampleToShape, Step, ZScore,
                      register_step)
from .subjects import Splits, Subject, SubjectDataset, split_subjects

__all__ = ["LUNA16_NAME", "LUNA16_LUNG_VALUES", "ClipToInFieldBackground", "LabelsFromMask",
           "in_field_background", "bouabid_recipe", "luna16_recipe", "brain_mask_recipe",
           "luna16_folder",
           "luna16_subjects", "luna16_splits", "RELEASED_SPLIT", "TABLES_SPLIT"]

#: Dataset name used in table titles.
LUNA16_NAME = "LUNA16 (lung CT, seg-lungs-LUNA16 masks)"
#: Values of the two lungs in ``seg-lungs-LUNA16`` masks (5 = trachea, not lung).
LUNA16_LUNG_VALUES = (3, 4)
#: Released split: 60 % / 20 % / 20 % of the scans (train / validation / test).
RELEASED_SPLIT = (0.6, 0.2, 0.2)
#: The tables' split (§4.4, Tables 1-3): the atlas + 98 training scans, 33 test scans; the
#: validation set of the early stopping is not given in the paper: 20 scans here.
TABLES_SPLIT = (99, 20, 33)


def in_field_background(image: np.ndarray, edge: tuple = (2, 5)) -> float:
    """The in-field empty-area value of a CT volume (released ``LungsLoader.clip_scan``).

    The minimum of two strips: voxels ``edge[0]:edge[1]`` from each end of the first
    (left-right) axis, on the middle row of the second (anterior-posterior) axis, every slice.
    On an axial CT slice with a circular field of view these voxels lie inside the circle but
    outside the body, i.e. on air; the corners, outside the circle, hold the scanner's padding
    value (-2048 or -3024 HU), lower than air.

    Args:
        image: ``(X, Y, Z)`` volume, RAS+ order (X left-right, Y anterior-posterior, Z slices).
        edge: strip start and stop, voxels from each end of X (2, 5: released code).
    Returns:
        the value (image units).
    Raises:
        ValueError: a volume with fewer than ``2 * edge[1]`` voxels along X.
    """
    image = np.asarray(image)
    lo, hi = int(edge[0]), int(edge[1])
    if image.ndim != 3 or image.shape[0] < 2 * hi:
        raise ValueError(f"in_field_background needs a 3-D volume with at least {2 * hi} voxels "
                         f"along the first axis, got shape {image.shape}")
    mid = image.shape[1] // 2
    return float(min(image[lo:hi, mid, :].min(), image[-hi:-lo, mid, :].min()))


@register_step
@dataclass(frozen=True)
class ClipToInFieldBackground(Step):
    """Clip every intensity below the in-field empty-area value up to it (§4.2, Figure 8).

    §4.2: "For all the scans, we clipped the minimal value of the intensity captured to the value
    of the empty area inside the capture area, leading to uniform backgrounds throughout the
    dataset." The value is :func:`in_field_background` (released ``clip_scan``).
    """

    edge: tuple = (2, 5)
    image: str | None = None
    name: ClassVar[str] = "clip-to-in-field-background"
    source: ClassVar[str] = "Bouabid et al. §4.2 'Clipping' (released LungsLoader.clip_scan)"

    def __call__(self, sample):
        keys = list(sample.images) if self.image is None else [self.image]
        for key in keys:
            data = np.asarray(sample.images[key])
            try:
                value = in_field_background(data, self.edge)
            except ValueError as exc:
                raise DataError(f"{sample.sources.get(key, sample.subject_id)}: {exc}") from exc
            sample.images[key] = np.maximum(data, value).astype(np.float32)
        return sample


@register_step
@dataclass(frozen=True)
class LabelsFromMask(Step):
    """Label map ``label`` = the mask ``mask`` as 0/1 (a mask scored with Dice by the evaluation)."""

    mask: str = "lung"
    label: str = "lung"
    name: ClassVar[str] = "labels-from-mask"
    source: ClassVar[str] = "Bouabid et al. §5.1 (Dice and Hausdorff of the registered mask)"

    def __call__(self, sample):
        if self.mask not in sample.masks:
            have = ", ".join(sorted(sample.masks)) or "none"
            raise DataError(f"{sample.subject_id}: preprocessing step '{self.name}' needs the mask "
                            f"'{self.mask}' (masks: {have})")
        sample.labels[self.label] = np.asarray(sample.masks[self.mask]).astype(np.int32)
        sample.sources.setdefault(self.label, sample.sources.get(self.mask, sample.subject_id))
        return sample


def bouabid_recipe(cube: int | tuple, *, spacing_mm: float | None = 1.0, mask_steps=(),
                   name: str = "Bouabid et al. §4.2") -> Recipe:
    """§4.2's pipeline after the mask steps: resample, rescale to a cube, clip, normalise.

    Args:
        cube: side of the cube in voxels (256 in §4.5), or a 3-tuple.
        spacing_mm: resample to this voxel size first (1 mm, §4.2); ``None`` keeps the files'.
        mask_steps: steps run first, on the file's grid, that make the registered mask and its
            label map (e.g. LUNA16's lungs, or a stand-in's brain).
        name: the recipe's name in reports.
    """
    shape = (int(cube),) * 3 if np.ndim(cube) == 0 else tuple(int(s) for s in cube)
    steps = list(mask_steps)
    if spacing_mm is not None:
        steps.append(Resample(float(spacing_mm)))
    steps += [ResampleToShape(shape), ClipToInFieldBackground(), ZScore(mask=None)]
    return Recipe(steps, name=name)


def luna16_recipe(cube: int = 256, *, spacing_mm: float = 1.0,
                  lung_values=LUNA16_LUNG_VALUES) -> Recipe:
    """LUNA16 (§4.2): lungs = ``lung_values`` of the mask, then :func:`bouabid_recipe`.

    The sample gets the label map ``"lung"`` (1 = lung) and the mask ``"lung"``; a mask without
    any of ``lung_values`` raises DataError naming the file.
    """
    mapping = LabelMapping(["lung"], {"lung": [int(v) for v in lung_values]})
    # the label map is "lungs" in LUNA16 subjects, "labels" when ``python -m regseg register``
    # reads a user's mask; MapLabels skips an absent source
    masks = [MapLabels("lungs", {"lung": mapping}), MapLabels("labels", {"lung": mapping}),
             MaskFromLabels("lung", "lung")]
    return bouabid_recipe(cube, spacing_mm=spacing_mm, mask_steps=masks,
                          name="Bouabid et al. §4.2 (LUNA16)")


def brain_mask_recipe(cube: int = 64, *, spacing_mm: float | None = None) -> Recipe:
    """§4.2's pipeline on a labelled brain MRI (a stand-in): the brain is the registered mask.

    The brain (label > 0) plays the lung mask's part (label map and mask ``"brain"``); the whole
    field of view is rescaled to the cube as LUNA16 scans are (no skull stripping, no centring:
    none is done to the lung scans). ``spacing_mm=None`` keeps the files' voxel size (ixi10's
    2 mm; resampling it to 1 mm before shrinking to the cube would add nothing).
    """
    masks = [MaskFromLabels("labels", "brain"), LabelsFromMask("brain", "brain")]
    return bouabid_recipe(cube, spacing_mm=spacing_mm, mask_steps=masks,
                          name="Bouabid et al. §4.2 on brain MRI (brain mask as the lung mask)")


def luna16_folder(root: str | os.PathLike) -> Path:
    """``root/luna16`` if it holds ``subset*`` folders, else ``root`` if it does.

    Raises:
        FileNotFoundError: no ``subset*`` folder (the message names the expected layout).
    """
    root = Path(root)
    for candidate in (root / "luna16", root):
        if candidate.is_dir() and any(candidate.glob("subset*/*.mhd")):
            return candidate
    raise FileNotFoundError(f"{root}: no LUNA16 scans found; expected <root>/subset0..9/"
                            f"<seriesuid>.mhd and <root>/seg-lungs-LUNA16/<seriesuid>.mhd")


def luna16_subjects(root: str | os.PathLike) -> list[Subject]:
    """Every LUNA16 scan with its lung mask, sorted by series uid.

    Raises:
        FileNotFoundError: layout not found (see :func:`luna16_folder`).
        DataError: a scan without its ``seg-lungs-LUNA16`` mask (naming both paths).
    """
    folder = luna16_folder(root)
    masks = folder / "seg-lungs-LUNA16"
    subjects = []
    for scan in sorted(folder.glob("subset*/*.mhd")):
        mask = masks / scan.name
        if not mask.is_file():
            raise DataError(f"{scan}: no lung mask; expected {mask}")
        subjects.append(Subject(scan.stem, {"ct": str(scan)}, {"lungs": str(mask)}))
    return sorted(subjects, key=lambda s: s.subject_id)


def _split_sizes(n: int, split) -> tuple[int, int, int]:
    split = tuple(split)
    if all(isinstance(v, float) for v in split):  # fractions of the scans found
        train, val = int(round(split[0] * n)), int(round(split[1] * n))
        return train, val, n - train - val
    return tuple(int(v) for v in split)


def luna16_splits(root: str | os.PathLike, *, cube: int = 256, split=TABLES_SPLIT, seed: int = 0,
                  spacing_mm: float = 1.0, lung_values=LUNA16_LUNG_VALUES,
                  cache: bool = False) -> Splits:
    """Train / validation / test splits of a LUNA16 copy; the atlas is ``train[0]``.

    Args:
        root: the LUNA16 folder (see the module docstring).
        cube: side of the preprocessing cube (voxels).
        split: :data:`TABLES_SPLIT` (counts: atlas + 98 / 20 / 33, Tables 1-3) or
            :data:`RELEASED_SPLIT` (fractions 0.6 / 0.2 / 0.2 of the scans found, released
            code); counts beyond the scans found are scaled down proportionally.
        seed: permutation seed of :func:`~regseg.datasets.subjects.split_subjects`.
        spacing_mm, lung_values: see :func:`luna16_recipe`.
        cache: keep preprocessed samples in memory.
    Returns:
        :class:`~regseg.datasets.subjects.Splits` (``is_paper_dataset=True``).
    Raises:
        FileNotFoundError, DataError: see :func:`luna16_subjects`; ValueError: an empty split.
    """
    subjects = luna16_subjects(root)
    sizes = _split_sizes(len(subjects), split)
    parts = split_subjects(subjects, sizes, seed=seed)
    recipe = luna16_recipe(cube, spacing_mm=spacing_mm, lung_values=lung_values)
    return Splits(*(SubjectDataset(LUNA16_NAME, True, p, recipe, cache=cache) for p in parts))
