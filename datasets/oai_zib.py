"""OAI-ZIB knee MRIs: femur, femoral cartilage, tibia, tibial cartilage (DeepAtlas Table 1).

The OAI-ZIB archive (Ambellan et al., Medical Image Analysis 52, 2019) ships only the manual
segmentations, ``<root>/segmentation/segmentation_masks/<ID>.segmentation_masks.mhd`` (+ ``.raw``),
labels 0 background, 1 femoral bone, 2 femoral cartilage, 3 tibial bone, 4 tibial cartilage; the
DESS MRIs belong to the Osteoarthritis Initiative and are obtained from it.  Its README: "The
segmentation masks do not carry a transformation (pose information), i.e. they fit the MRI
scans up to rigid alignment".  The layout read here::

    <root>/[OAI-ZIB/]segmentation/segmentation_masks/<ID>.segmentation_masks.mhd
    <root>/[OAI-ZIB/]images/<ID>.nii.gz        (your OAI DESS scans converted to NIfTI)
    <root>/[OAI-ZIB/]knee_sides.csv            (ID,side with side "left" or "right")

Each image is paired with its mask voxel for voxel: the mask array (ITK index order, as SimpleITK
reads it) must have the image's array shape, and it takes the image's geometry.  An image
without a mask is an unlabeled subject (DeepAtlas' unlabeled data).  DeepAtlas §3: "right knee
images are flipped to be consistent with left knees" -> right knees are mirrored along the
left-right axis (voxel data flipped, affine kept, so the anatomy itself is mirrored and a later
affine alignment cannot undo it).

Preprocessing (:func:`oai_zib_recipe`, §3): affine registration to a reference knee, 1 mm,
crop 160 x 160 x 160, intensities to [0, 1].
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .io import DataError, load_volume
from .labels import LabelMapping
from .recipes import MapLabels, MinMax, Recipe
from .subjects import Sample, Splits, Subject, SubjectDataset

__all__ = ["OAI_ZIB_NAME", "KNEE_CLASSES", "KNEE_GROUPS", "PAPER_BOX_1MM", "oai_zib_folder",
           "oai_zib_subjects", "read_oai_zib_subject", "OAIZIBDataset", "oai_zib_recipe",
           "oai_zib_splits", "read_sides"]

#: Dataset name used in table titles.
OAI_ZIB_NAME = "OAI-ZIB knee MRIs (OAI DESS, ZIB manual segmentations)"
#: The four classes of Table 1 (OAI-ZIB label ids).
KNEE_CLASSES = LabelMapping(["femur", "femoral cartilage", "tibia", "tibial cartilage"],
                            {"femur": [1], "femoral cartilage": [2], "tibia": [3],
                             "tibial cartilage": [4]})
#: Table 1's column groups.
KNEE_GROUPS = {"Bones": ["femur", "tibia"], "Cartilages": ["femoral cartilage", "tibial cartilage"]}
#: §3: "cropped to 160 x 160 x 160" (1 mm).
PAPER_BOX_1MM = (160, 160, 160)

_MASK_SUFFIX = ".segmentation_masks.mhd"
_IMAGE_SUFFIXES = (".nii.gz", ".nii")


def oai_zib_folder(root: str | os.PathLike) -> Path:
    """``root/OAI-ZIB`` or ``root``, whichever holds ``images/``.

    Raises:
        FileNotFoundError: neither does (the message names the layout expected).
    """
    root = Path(root)
    for candidate in (root / "OAI-ZIB", root):
        if (candidate / "images").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root}: no OAI-ZIB data found; expected <root>/OAI-ZIB/images/<ID>.nii.gz (your OAI "
        f"DESS scans), <root>/OAI-ZIB/segmentation/segmentation_masks/<ID>{_MASK_SUFFIX} and "
        f"<root>/OAI-ZIB/knee_sides.csv")


def read_sides(path: str | os.PathLike) -> dict[str, str]:
    """``{ID: "left" | "right"}`` from a CSV of ``ID,side`` rows (an optional header).

    Raises:
        DataError: unreadable file or a side other than left/right (named with its line).
    """
    try:
        rows = list(csv.reader(open(path, encoding="utf-8")))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the knee sides ({exc.strerror or exc})") from exc
    sides = {}
    for n, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DataError(f"{path}, line {n}: expected 'ID,side', got {row!r}")
        key, side = row[0].strip(), row[1].strip().lower()
        if n == 1 and side not in ("left", "right"):
            continue  # header
        if side not in ("left", "right"):
            raise DataError(f"{path}, line {n}: side must be 'left' or 'right', got {row[1]!r}")
        sides[key] = side
    return sides


def oai_zib_subjects(root: str | os.PathLike, sides: dict | None = None) -> list[Subject]:
    """Every image of ``images/``, with its mask when there is one; sorted by id.

    ``group`` holds the knee side (``"left"``/``"right"``) from ``sides`` or
    ``knee_sides.csv``.

    Raises:
        FileNotFoundError: no layout or no image.
        DataError: an image whose side is unknown (named), or a mask without an image.
    """
    folder = oai_zib_folder(root)
    if sides is None:
        table = folder / "knee_sides.csv"
        if not table.is_file():
            raise DataError(f"{table}: missing; DeepAtlas flips right knees (§3), so every "
                            f"image needs its side (rows 'ID,left' or 'ID,right')")
        sides = read_sides(table)
    masks = folder / "segmentation" / "segmentation_masks"
    subjects = []
    for image in sorted((folder / "images").iterdir()):
        name = image.name
        suffix = next((s for s in _IMAGE_SUFFIXES if name.endswith(s)), None)
        if suffix is None or name.startswith("."):
            continue
        key = name[: -len(suffix)]
        if key not in sides:
            raise DataError(f"{image}: knee side unknown (add '{key},left' or '{key},right' to "
                            f"knee_sides.csv)")
        mask = masks / f"{key}{_MASK_SUFFIX}"
        subjects.append(Subject(key, {"dess": str(image)},
                                {"labels": str(mask)} if mask.is_file() else {},
                                group=sides[key]))
    if not subjects:
        raise FileNotFoundError(f"{folder / 'images'}: no image found")
    ids = {s.subject_id for s in subjects}
    if masks.is_dir():
        orphans = sorted(p.name for p in masks.glob(f"*{_MASK_SUFFIX}")
                         if p.name[: -len(_MASK_SUFFIX)] not in ids)
        if orphans:
            raise DataError(f"{masks}: masks without an image in {folder / 'images'}: "
                            f"{orphans[:5]}{' ...' if len(orphans) > 5 else ''}")
    return sorted(subjects, key=lambda s: s.subject_id)


def _read_mask(path: str, image_path: str, shape) -> np.ndarray:
    """The mask array in the ITK index order (i, j, k) of the image file."""
    import SimpleITK as sitk

    try:
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable MetaImage mask ({exc})") from exc
    if tuple(mask.shape) != tuple(shape):
        raise DataError(f"{path}: mask of shape {tuple(mask.shape)} does not match its image "
                        f"{image_path} of shape {tuple(shape)} (voxel for voxel)")
    if not np.allclose(mask, np.round(mask)) or mask.min() < 0 or mask.max() > 4:
        raise DataError(f"{path}: labels must be whole numbers 0..4 (OAI-ZIB), found "
                        f"{np.unique(mask)[:8]}")
    return mask.astype(np.int32)


def read_oai_zib_subject(subject: Subject) -> Sample:
    """Read an OAI-ZIB subject: the image (RAS+), its mask on the image's grid, right knees
    mirrored.

    The mask is taken voxel for voxel in the image file's own index order (``(i, j, k)`` of
    the NIfTI array and of SimpleITK's index) and then reoriented to RAS+ with the image.  A
    right knee (``group == "right"``) has every array flipped along its left-right axis (RAS
    axis 0) with the affine unchanged.

    Raises:
        DataError: unreadable files, a mask of another shape or with labels outside 0..4.
    """
    import nibabel as nib

    image_path = subject.image_path
    try:
        raw = nib.load(image_path)
    except Exception as exc:  # ImageFileError, OSError ...
        raise DataError(f"{image_path}: not a readable NIfTI image ({exc})") from exc
    vol = load_volume(image_path)
    sample = Sample(subject.subject_id, {"dess": vol.data}, affine=vol.affine,
                    sources={"dess": vol.path})
    if subject.labels:
        mask_path = subject.labels["labels"]
        mask = _read_mask(mask_path, image_path, raw.shape[:3])
        canonical = nib.as_closest_canonical(nib.Nifti1Image(mask, raw.affine))
        sample.labels["labels"] = np.asarray(canonical.dataobj, dtype=np.int32)
        sample.sources["labels"] = str(mask_path)
    if subject.group == "right":
        sample.images = {k: np.ascontiguousarray(v[::-1]) for k, v in sample.images.items()}
        sample.labels = {k: np.ascontiguousarray(v[::-1]) for k, v in sample.labels.items()}
    elif subject.group != "left":
        raise DataError(f"{image_path}: knee side must be 'left' or 'right', got {subject.group!r}")
    return sample


class OAIZIBDataset(SubjectDataset):
    """A :class:`~regseg.datasets.subjects.SubjectDataset` reading subjects with
    :func:`read_oai_zib_subject` (masks without pose, right knees mirrored)."""

    def load(self, i: int) -> Sample:
        subject = self.subjects[i]
        if self.cache and subject.subject_id in self._cache:
            return self._cache[subject.subject_id]
        sample = self.recipe(read_oai_zib_subject(subject))
        if self.cache:
            self._cache[subject.subject_id] = sample
        return sample

    def subset(self, indices) -> "OAIZIBDataset":
        return OAIZIBDataset(self.name, self.is_paper_dataset,
                             [self.subjects[int(i)] for i in indices], self.recipe, self.cache,
                             _cache_store=self._cache)

    def with_recipe(self, recipe: Recipe) -> "OAIZIBDataset":
        return OAIZIBDataset(self.name, self.is_paper_dataset, self.subjects, recipe, self.cache)


def oai_zib_recipe(reference: str, spacing_mm: float = 1.0, box=PAPER_BOX_1MM) -> Recipe:
    """DeepAtlas §3 knee preprocessing: affine registration to ``reference`` (a left knee image)
    and resampling onto a ``box`` of ``spacing_mm`` voxels, intensities to [0, 1], the four
    classes of :data:`KNEE_CLASSES` (``structures`` and ``segmentation``)."""
    from .alignment import AffineToReference

    classes = {"structures": KNEE_CLASSES, "segmentation": KNEE_CLASSES}
    return Recipe([AffineToReference(str(reference), float(spacing_mm),
                                     tuple(int(b) for b in box)),
                   MinMax(), MapLabels("labels", classes)], name="DeepAtlas §3 (knee)")


def oai_zib_splits(root: str | os.PathLike, *, sizes=(200, 53, 254), seed: int = 0,
                   reference_id: str | None = None, spacing_mm: float = 1.0, box=PAPER_BOX_1MM,
                   sides: dict | None = None, cache: bool = True,
                   recipe: Recipe | None = None) -> Splits:
    """Train / validation / test splits (§3: 200 / 53 / 254 of the 507 labeled images).

    Labeled subjects are permuted with ``numpy.random.default_rng(seed)`` and cut in that
    order; unlabeled images (no mask) join the training split.  The affine reference is
    ``reference_id`` or the first training image of a left knee.

    Raises:
        FileNotFoundError / DataError: see :func:`oai_zib_subjects`.
        ValueError: fewer labeled images than the sizes need.
    """
    subjects = oai_zib_subjects(root, sides)
    labeled = [s for s in subjects if s.labels]
    unlabeled = [s for s in subjects if not s.labels]
    n_train, n_val, n_test = (int(v) for v in sizes)
    if n_train + n_val + n_test > len(labeled):
        raise ValueError(f"oai_zib: split {tuple(sizes)} needs {n_train + n_val + n_test} "
                         f"labeled images, found {len(labeled)}")
    order = [labeled[k] for k in np.random.default_rng(seed).permutation(len(labeled))]
    parts = (order[:n_train] + unlabeled, order[n_train:n_train + n_val],
             order[n_train + n_val:n_train + n_val + n_test])
    if reference_id is None:
        reference_id = next((s.subject_id for s in parts[0] if s.group == "left"),
                            parts[0][0].subject_id)
    reference = next(s for s in subjects if s.subject_id == reference_id)
    if reference.group != "left":
        raise ValueError(f"the affine reference {reference_id} must be a left knee")
    recipe = recipe or oai_zib_recipe(reference.image_path, spacing_mm, box)
    store: dict = {}

    def make(part):
        return OAIZIBDataset(OAI_ZIB_NAME, True, sorted(part, key=lambda s: s.subject_id), recipe,
                             cache=cache, _cache_store=store)

    return Splits(*(make(p) for p in parts))
