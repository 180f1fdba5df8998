"""The real lung CT of the shared test data, stand-ins for LUNA16 (Bouabid et al.).

* The **lung CT pair** (``<root>/lung_ct_pair_elastix``): one patient scanned twice
  (``3DCT_lung_baseline.mha`` and ``3DCT_lung_followup.mha``, int16 HU, cropped to the right
  lung and chest wall), a binary lung mask each, and 51 corresponding landmarks in elastix point
  files (LPS world mm; baseline = fixed, follow-up = moving). :func:`lung_pair_dataset`: the two
  scans as subjects ``baseline`` and ``followup`` with their masks and landmarks (RAS world mm).
* The **chest CTs** of ``<root>/lung_ct``: the POPI-model 4D CT phase 00 (no mask: the lungs
  are found by thresholding, :class:`LungMaskFromCT`) and the Chest Imaging Platform CT
  ``ct-64.nrrd`` with its ``wholeLung-64.nrrd`` mask. :func:`lung_ct_training_datasets` crops
  each to its right lung (:class:`CropToMaskBox` with ``side="right"``), the region the pair
  covers, so that they can serve as training sources for an atlas registration to the pair's
  baseline.

Every dataset here is preprocessed with the diffeomorphic U-Net's §4.2 pipeline
(:func:`regseg.datasets.luna16.bouabid_recipe`) and is a stand-in (``is_paper_dataset=False``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy import ndimage

from .elastix_points import elastix_points_ras, read_elastix_points
from .io import DataError
from .labels import LabelMapping
from .luna16 import LabelsFromMask, bouabid_recipe
from .recipes import MapLabels, MaskFromLabels, Step, register_step
from .subjects import Subject, SubjectDataset

__all__ = ["LUNG_PAIR_NAME", "LUNG_CT_NAME", "LungMaskFromCT", "CropToMaskBox", "lung_mask_from_ct",
           "lung_pair_folder", "lung_pair_subjects", "lung_pair_dataset",
           "lung_ct_training_datasets"]

LUNG_PAIR_NAME = ("lung CT pair (elastix test data: one patient, baseline and follow-up, 51 "
                  "landmarks) — stand-in for LUNA16")
LUNG_CT_NAME = "chest CT of ../shared/data/lung_ct (POPI phase 00, CIP ct-64), right lung"
_PAIR = {"baseline": ("3DCT_lung_baseline.mha", "3DCT_lung_baseline_mask.mha",
                      "ITKElastix_CT_3D_lung_fixed_point_set_corrected.txt"),
         "followup": ("3DCT_lung_followup.mha", "3DCT_lung_followup_mask.mha",
                      "ITKElastix_CT_3D_lung_moving_point_set_corrected.txt")}


def lung_mask_from_ct(hu: np.ndarray, threshold_hu: float = -400.0, n_components: int = 2,
                      min_fraction: float = 0.1) -> np.ndarray:
    """Lungs of a chest CT by thresholding and connected components.

    Voxels below ``threshold_hu`` that are not connected (6-connectivity) to the in-plane border
    of the volume (first two axes: air around the body, the scanner's padding; the lungs may
    touch the first or last slice of a thorax scan) form candidate regions; the ``n_components``
    largest whose size is at least ``min_fraction`` of the largest are kept (the two lungs, or
    one when they touch), and their holes (vessels) are filled slice by slice (axial, third
    axis) after a binary closing (one iteration, 6-connectivity).

    Args:
        hu: ``(X, Y, Z)`` CT in Hounsfield units, RAS+ order (Z = slices).
        threshold_hu: air / lung threshold (-400 HU: lung parenchyma is about -850 HU, soft
            tissue above -100 HU).
        n_components: largest components kept.
        min_fraction: smallest kept component, relative to the largest.
    Returns:
        bool ``(X, Y, Z)``.
    Raises:
        ValueError: no air region inside the body.
    """
    hu = np.asarray(hu)
    air = hu < threshold_hu
    labels, n = ndimage.label(air)
    border = np.unique(np.concatenate([labels[[0, -1], :, :].ravel(),
                                       labels[:, [0, -1], :].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[border] = 0
    if not sizes.any():
        raise ValueError("no air region inside the body (threshold too low, or no lungs?)")
    order = np.argsort(sizes)[::-1][:n_components]
    keep = [k for k in order if sizes[k] > 0 and sizes[k] >= min_fraction * sizes[order[0]]]
    mask = np.isin(labels, keep)
    # closing on an edge-padded copy: the erosion must not eat the lungs at the first/last slice
    mask = ndimage.binary_closing(np.pad(mask, 1, mode="edge"), iterations=1)[1:-1, 1:-1, 1:-1]
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


@register_step
@dataclass(frozen=True)
class LungMaskFromCT(Step):
    """Mask ``mask`` = :func:`lung_mask_from_ct` of the image (HU), for a CT without a mask."""

    threshold_hu: float = -400.0
    mask: str = "lung"
    image: str | None = None
    name: ClassVar[str] = "lung-mask-from-ct"
    source: ClassVar[str] = ("threshold + connected components (../shared/data/README.md, "
                             "lung_ct: 'make a lung mask by thresholding + connected components')")

    def __call__(self, sample):
        key = self.image or next(iter(sample.images))
        try:
            sample.masks[self.mask] = lung_mask_from_ct(sample.images[key], self.threshold_hu)
        except ValueError as exc:
            raise DataError(f"{sample.sources.get(key, sample.subject_id)}: {exc}") from exc
        sample.sources.setdefault(self.mask, sample.sources.get(key, sample.subject_id))
        return sample


@register_step
@dataclass(frozen=True)
class CropToMaskBox(Step):
    """Crop every part to the mask's bounding box plus a margin (mm), optionally one side only.

    With ``side="right"`` (``"left"``) only the mask voxels on the subject's right (left) of
    the mask's centre of mass along the world left-right axis are boxed (RAS+: right = +x);
    e.g. the right lung of a two-lung mask. The box is clamped to the volume; the affine is
    updated so that world coordinates are kept (whole voxels, no interpolation).
    """

    mask: str = "lung"
    margin_mm: float = 10.0
    side: str | None = None
    name: ClassVar[str] = "crop-to-mask-box"
    source: ClassVar[str] = "stand-in: the lung CT pair is cropped to the right lung and chest wall"

    def __call__(self, sample):
        if self.side not in (None, "right", "left"):
            raise ValueError(f"crop-to-mask-box: side must be None, 'right' or 'left', got "
                             f"{self.side!r}")
        if self.mask not in sample.masks or not np.asarray(sample.masks[self.mask]).any():
            raise DataError(f"{sample.subject_id}: crop-to-mask-box needs a non-empty mask "
                            f"'{self.mask}'")
        mask = np.asarray(sample.masks[self.mask], dtype=bool)
        affine = np.asarray(sample.affine, dtype=np.float64)
        idx = np.argwhere(mask)
        if self.side is not None:
            world_x = idx @ affine[0, :3] + affine[0, 3]
            centre = world_x.mean()
            idx = idx[world_x > centre] if self.side == "right" else idx[world_x < centre]
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        margin = np.ceil(float(self.margin_mm) / spacing).astype(int)
        shape = np.asarray(mask.shape)
        lo = np.maximum(idx.min(axis=0) - margin, 0)
        hi = np.minimum(idx.max(axis=0) + margin + 1, shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        for kind in ("images", "labels", "masks"):
            parts = getattr(sample, kind)
            for key, arr in parts.items():
                parts[key] = np.ascontiguousarray(np.asarray(arr)[box])
        translation = np.eye(4)
        translation[:3, 3] = lo
        sample.affine = affine @ translation
        return sample


def lung_pair_folder(root: str | os.PathLike) -> Path:
    """``root/lung_ct_pair_elastix`` (or ``root`` itself) holding the pair's files.

    Raises:
        FileNotFoundError: the files are not there (the message names the first missing one).
    """
    root = Path(root)
    for candidate in (root / "lung_ct_pair_elastix", root):
        if (candidate / _PAIR["baseline"][0]).is_file():
            folder = candidate
            break
    else:
        raise FileNotFoundError(f"{root}: no lung CT pair; expected "
                                f"{root / 'lung_ct_pair_elastix' / _PAIR['baseline'][0]}")
    for files in _PAIR.values():
        for name in files:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: file of the lung CT pair not found")
    return folder


def lung_pair_subjects(root: str | os.PathLike) -> list[Subject]:
    """``[baseline, followup]``: images ``"ct"``, label maps ``"lungs"``, landmarks (RAS mm).

    Landmark ``k`` of the baseline corresponds to landmark ``k`` of the follow-up.

    Raises:
        FileNotFoundError: see :func:`lung_pair_folder`; DataError: a bad point file (named).
    """
    folder = lung_pair_folder(root)
    subjects = []
    for sid, (image, mask, points) in _PAIR.items():
        pts = elastix_points_ras(read_elastix_points(folder / points))
        subjects.append(Subject(sid, {"ct": str(folder / image)}, {"lungs": str(folder / mask)},
                                landmarks=pts))
    if len(subjects[0].landmarks) != len(subjects[1].landmarks):
        raise DataError(f"{folder}: the two point files hold different numbers of landmarks")
    return subjects


def _mask_from_labels(values=(1,)):
    mapping = LabelMapping(["lung"], {"lung": list(values)})
    # "lungs" in these subjects, "labels" when ``python -m regseg register`` reads a user's mask
    return [MapLabels("lungs", {"lung": mapping}), MapLabels("labels", {"lung": mapping}),
            MaskFromLabels("lung", "lung")]


def lung_pair_dataset(root: str | os.PathLike, cube: int, *, spacing_mm: float | None = 1.0,
                      cache: bool = True) -> SubjectDataset:
    """The lung CT pair under §4.2's preprocessing (:func:`~regseg.datasets.luna16.bouabid_recipe`).

    Each scan is resampled to ``spacing_mm`` and rescaled to its own ``cube``³ grid, as LUNA16
    scans are in §4.2 (their fields of view differ, so the two grids differ in world space).
    Samples: image ``"ct"`` (normalised), label map and mask ``"lung"``, landmarks.
    """
    recipe = bouabid_recipe(cube, spacing_mm=spacing_mm, mask_steps=_mask_from_labels(),
                            name="Bouabid et al. §4.2 (lung CT pair)")
    return SubjectDataset(LUNG_PAIR_NAME, False, lung_pair_subjects(root), recipe, cache=cache)


def lung_ct_training_datasets(root: str | os.PathLike, cube: int, *,
                              spacing_mm: float | None = 1.0, margin_mm: float = 10.0,
                              cache: bool = True) -> list[SubjectDataset]:
    """The chest CTs of ``<root>/lung_ct`` cropped to their right lung, §4.2 preprocessing.

    Returns:
        ``[popi, ct64]``: two one-subject datasets (their masks come from different sources:
        thresholding for POPI, ``wholeLung-64.nrrd`` for ct-64).
    Raises:
        FileNotFoundError: ``<root>/lung_ct`` or one of its files is missing (named).
    """
    folder = Path(root) / "lung_ct"
    popi = folder / "popi_phase00_256x256x141.nii.gz"
    ct64, lung64 = folder / "ct-64.nrrd", folder / "wholeLung-64.nrrd"
    for path in (popi, ct64, lung64):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: chest CT of the shared data not found")
    crop = CropToMaskBox("lung", margin_mm, side="right")
    popi_recipe = bouabid_recipe(
        cube, spacing_mm=spacing_mm, name="lung-mask-from-ct + right lung + §4.2",
        mask_steps=[LungMaskFromCT(), crop, LabelsFromMask("lung", "lung")])
    ct64_recipe = bouabid_recipe(cube, spacing_mm=spacing_mm, name="right lung + §4.2",
                                 mask_steps=[*_mask_from_labels(), crop])
    return [SubjectDataset(LUNG_CT_NAME, False, [Subject("popi00", {"ct": str(popi)})],
                           popi_recipe, cache=cache),
            SubjectDataset(LUNG_CT_NAME, False,
                           [Subject("cip-ct64", {"ct": str(ct64)}, {"lungs": str(lung64)})],
                           ct64_recipe, cache=cache)]
