"""The ``ixi10`` sample: 10 real IXI T1 brain MRIs with DLMUSE labels, a stand-in for OASIS-3.

Data: 10 IXI subjects (Guy's/HH, CC BY-SA 3.0), 2 mm isotropic, NOT skull-stripped, with DLMUSE
parcellations, as published in the CBICA CCL_NMF_Prediction test data (see
:mod:`regseg.datasets.download` for the pinned URL and checksums). They stand in for OASIS-3
(U-ReSNet §3.5), which cannot be shipped: the numbers obtained on them do not reproduce the
paper's and reports must say so (``is_paper_dataset=False``).

Deviations from the paper's preprocessing (U-ReSNet §3.5) forced by the data:

* 2 mm voxels instead of 1 mm (kept, no resampling), so the crop keeps the paper's field of view
  in mm: ``crop_shape_for_spacing(PAPER_CROP_RAS_1MM, 2.0) == (80, 104, 88)`` voxels.
* The skull is removed with the label map (brain = DLMUSE label > 0) instead of OASIS-3's own
  skull stripping.
* Labels are DLMUSE ids mapped to the Table 1 structures with
  :data:`~regseg.datasets.labels.DLMUSE_TABLE1` (choices documented in :mod:`~regseg.datasets.labels`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .io import DataError
from .labels import DLMUSE_SEGMENTATION, DLMUSE_TABLE1
from .preprocessing import PAPER_CROP_RAS_1MM, crop_shape_for_spacing
from .recipes import Recipe, ureSnet_recipe
from .subjects import Splits, Subject, SubjectDataset, split_subjects

__all__ = ["IXI10_NAME", "IXI10_SPACING_MM", "IXI10_CROP", "ixi10_folder", "ixi10_subjects",
           "ixi10_splits", "ixi10_recipe"]

#: Dataset name used in table titles.
IXI10_NAME = "IXI (ixi10 sample, 2 mm) — stand-in for OASIS-3"
#: Voxel size of the ixi10 files (mm); kept as is.
IXI10_SPACING_MM = 2.0
#: Crop box in voxels (RAS) at 2 mm: the paper's 1 mm field of view.
IXI10_CROP = crop_shape_for_spacing(PAPER_CROP_RAS_1MM, IXI10_SPACING_MM)

_SUFFIX = "-T1.nii.gz"


def ixi10_recipe() -> Recipe:
    """U-ReSNet §3.5 on ixi10: brain = label > 0, z-score, crop :data:`IXI10_CROP`, DLMUSE maps."""
    return ureSnet_recipe(IXI10_CROP, DLMUSE_TABLE1, DLMUSE_SEGMENTATION, skull_strip="label")


def ixi10_folder(root: str | os.PathLike) -> Path:
    """The ixi10 folder: ``root/ixi10`` if it exists, else ``root`` itself if it holds ``images/``.

    Raises:
        FileNotFoundError: neither ``root/ixi10/images`` nor ``root/images`` exists (the message
            names the expected layout and how to download the data).
    """
    root = Path(root)
    for candidate in (root / "ixi10", root):
        if (candidate / "images").is_dir() and (candidate / "labels").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root}: no ixi10 data found; expected <root>/ixi10/images/<ID>-T1.nii.gz and "
        f"<root>/ixi10/labels/<ID>-T1.nii.gz (or root pointing at the ixi10 folder itself). "
        f"Download it with: python -m regseg.datasets.download ixi10 --dest <root>")


def ixi10_subjects(root: str | os.PathLike) -> list[Subject]:
    """The ixi10 subjects sorted by id (``IXI012-HH-1211``, ...).

    Raises:
        FileNotFoundError: layout not found (see :func:`ixi10_folder`).
        DataError: an image has no label file (message names both paths).
    """
    folder = ixi10_folder(root)
    subjects = []
    for image in sorted((folder / "images").glob(f"*{_SUFFIX}")):
        label = folder / "labels" / image.name
        if not label.is_file():
            raise DataError(f"{image}: no label map; expected {label}")
        subjects.append(Subject(image.name[: -len(_SUFFIX)], {"t1": str(image)},
                                {"labels": str(label)}))
    if not subjects:
        raise FileNotFoundError(f"{folder / 'images'}: no *{_SUFFIX} images found")
    return sorted(subjects, key=lambda s: s.subject_id)


def ixi10_splits(root: str | os.PathLike, *, train: int = 7, validation: int = 1, test: int = 2,
                 cache: bool = True, recipe: Recipe | None = None) -> Splits:
    """Train/validation/test splits of the ixi10 sample (stand-in for OASIS-3, U-ReSNet §3.5).

    Deterministic and unshuffled: subjects sorted by id, the first ``train`` go to training, the
    next ``validation`` to validation, the last ``test`` to test (defaults 7 / 1 / 2 of the 10:
    train IXI012…IXI039, validation IXI048, test IXI049, IXI051). If fewer subjects than asked are
    present, sizes are scaled proportionally (see :func:`~regseg.datasets.subjects.split_subjects`).

    Preprocessing: 2 mm kept, skull removed with label > 0, z-score over the brain, crop
    ``(80, 104, 88)`` voxels (RAS) around the brain's centre of mass; labels mapped with
    ``DLMUSE_TABLE1`` (15 structures) and ``DLMUSE_SEGMENTATION`` (CeblWM, CeblC, LV).

    Args:
        root: the data root containing ``ixi10/`` (or the ixi10 folder itself).
        train, validation, test: split sizes (numbers of subjects).
        cache: keep preprocessed samples in memory (10 small volumes).
        recipe: another preprocessing :class:`~regseg.datasets.recipes.Recipe` (default: the one
            above, :func:`~regseg.datasets.recipes.ureSnet_recipe`).

    Returns:
        :class:`~regseg.datasets.subjects.Splits` with ``is_paper_dataset=False``.

    Raises:
        FileNotFoundError: no ixi10 layout under ``root``.
        DataError: an image without a label map.
        ValueError: a split would be empty.
    """
    subjects = ixi10_subjects(root)
    parts = split_subjects(subjects, (train, validation, test), seed=0, shuffle=False)

    def make(part):
        return SubjectDataset(IXI10_NAME, False, part, recipe or ixi10_recipe(), cache=cache)

    return Splits(*(make(p) for p in parts))
