"""Medical Segmentation Decathlon Task04 (hippocampus MRI), a stand-in for DeepAtlas' knee data.

Data (CC BY-SA 4.0, Simpson et al. 2019): T1 MRIs cropped around the hippocampus, 1 mm, label
maps with 1 = anterior (head) and 2 = posterior (body).  Two layouts are read:

* the shared test-data layout ``<root>/msd_hippocampus/{images,labels}/hippocampus_NNN.nii.gz``
  (``root`` may also be the ``msd_hippocampus`` folder itself);
* the MSD release ``<root>/Task04_Hippocampus/{imagesTr,labelsTr,imagesTs}/``, whose
  ``imagesTs`` images have no label map.

An image without a label map is a valid subject without labels: DeepAtlas' unlabeled data
(§2, the case analysis of eq. 2), e.g. ``hippocampus_118`` in the shared folder.  A label map
without an image is skipped.

Preprocessing (:func:`msd_hippocampus_recipe`), DeepAtlas §3 for the knee transposed: affine
registration to one reference training image, 1 mm, a fixed box, intensities to [0, 1].
These images are not the paper's (``is_paper_dataset=False``): reports say so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .labels import LabelMapping
from .recipes import MapLabels, MinMax, Recipe
from .subjects import Splits, Subject, SubjectDataset

__all__ = ["MSD_HIPPOCAMPUS_NAME", "HIPPOCAMPUS_CLASSES", "HIPPOCAMPUS_BOX",
           "msd_hippocampus_folder", "msd_hippocampus_subjects", "msd_hippocampus_recipe",
           "msd_hippocampus_splits"]

#: Dataset name used in table titles.
MSD_HIPPOCAMPUS_NAME = ("MSD Task04 hippocampus MRI (1 mm) — stand-in for the OAI knee MRIs of "
                        "DeepAtlas Table 1")
#: The two label classes (MSD ``dataset.json``: 1 Anterior, 2 Posterior).
HIPPOCAMPUS_CLASSES = LabelMapping(["anterior", "posterior"],
                                   {"anterior": [1], "posterior": [2]})
#: Box (voxels at 1 mm, RAS) around the reference: every label map of the shared folder fits
#: (largest extent 27 x 48 x 37 voxels) and 4 stride-2 levels divide it (VoxelMorph, [3]).
HIPPOCAMPUS_BOX = (48, 64, 48)

_SUFFIX = ".nii.gz"


def msd_hippocampus_folder(root: str | os.PathLike) -> Path:
    """The folder holding the images: ``root/msd_hippocampus``, ``root/Task04_Hippocampus`` or
    ``root`` itself.

    Raises:
        FileNotFoundError: no layout found (the message names the layouts expected).
    """
    root = Path(root)
    for candidate in (root / "msd_hippocampus", root / "Task04_Hippocampus", root):
        if (candidate / "images").is_dir() or (candidate / "imagesTr").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root}: no MSD hippocampus data found; expected <root>/msd_hippocampus/images/"
        f"hippocampus_NNN.nii.gz (+ labels/) or the MSD release <root>/Task04_Hippocampus/"
        f"imagesTr/ (+ labelsTr/, imagesTs/)")


def msd_hippocampus_subjects(root: str | os.PathLike) -> list[Subject]:
    """Every image as a :class:`~regseg.datasets.subjects.Subject`, sorted by id.

    Images with a label map of the same name get it as ``labels``; the others have no labels.
    macOS resource files (``._*``) are ignored.

    Raises:
        FileNotFoundError: no layout or no image found.
    """
    folder = msd_hippocampus_folder(root)
    if (folder / "images").is_dir():
        sources = [(folder / "images", folder / "labels")]
    else:
        sources = [(folder / "imagesTr", folder / "labelsTr"), (folder / "imagesTs", None)]
    subjects = []
    for images, labels in sources:
        if not images.is_dir():
            continue
        for image in sorted(images.glob(f"*{_SUFFIX}")):
            if image.name.startswith("._"):
                continue
            label = labels / image.name if labels is not None else None
            has_label = label is not None and label.is_file()
            subjects.append(Subject(image.name[: -len(_SUFFIX)], {"t1": str(image)},
                                    {"labels": str(label)} if has_label else {}))
    if not subjects:
        raise FileNotFoundError(f"{folder}: no *{_SUFFIX} images found")
    return sorted(subjects, key=lambda s: s.subject_id)


def msd_hippocampus_recipe(reference: str, box=HIPPOCAMPUS_BOX) -> Recipe:
    """DeepAtlas §3 preprocessing (knee) on the hippocampus crops.

    Steps: affine registration of the image to ``reference`` and resampling of image and labels
    onto a ``box`` of 1 mm voxels centred on the reference
    (:class:`~regseg.datasets.alignment.AffineToReference`), intensities to [0, 1] (min-max),
    labels to the classes anterior, posterior (``structures`` for registration Dice and
    ``segmentation`` for segmentation Dice; both must be present).

    Args:
        reference: path of the reference image (a training image).
        box: output box in voxels.
    """
    from .alignment import AffineToReference

    classes = {"structures": HIPPOCAMPUS_CLASSES, "segmentation": HIPPOCAMPUS_CLASSES}
    return Recipe([AffineToReference(str(reference), 1.0, tuple(int(b) for b in box)),
                   MinMax(), MapLabels("labels", classes)],
                  name="DeepAtlas §3 (knee) on MSD hippocampus")


def msd_hippocampus_splits(root: str | os.PathLike, *, sizes=(200, 10, 51), seed: int = 0,
                           reference_id: str = "hippocampus_001", box=HIPPOCAMPUS_BOX,
                           cache: bool = True, recipe: Recipe | None = None) -> Splits:
    """Train / validation / test splits, every unlabeled image in training.

    Labeled subjects are sorted by id and permuted with ``numpy.random.default_rng(seed)``; the
    reference subject and every unlabeled subject go to training, then labeled subjects fill
    training up to ``sizes[0]``, validation (``sizes[1]``) and test (``sizes[2]``).

    Args:
        root: data root (see :func:`msd_hippocampus_folder`).
        sizes: ``(train, validation, test)`` numbers of images.
        seed: permutation seed.
        reference_id: the training subject whose image is the affine reference.
        box: see :func:`msd_hippocampus_recipe`.
        cache: keep preprocessed samples in memory.
        recipe: another recipe (default :func:`msd_hippocampus_recipe`).

    Returns:
        :class:`~regseg.datasets.subjects.Splits` (``is_paper_dataset=False``).

    Raises:
        FileNotFoundError: no data, or no subject ``reference_id`` (named).
        ValueError: fewer labeled subjects than validation + test + the labeled part of training
            need, or more unlabeled subjects than training holds.
    """
    subjects = msd_hippocampus_subjects(root)
    by_id = {s.subject_id: s for s in subjects}
    if reference_id not in by_id:
        raise FileNotFoundError(f"{msd_hippocampus_folder(root)}: no image {reference_id!r} for "
                                f"the affine reference")
    n_train, n_val, n_test = (int(v) for v in sizes)
    unlabeled = [s for s in subjects if not s.labels]
    labeled = [s for s in subjects if s.labels and s.subject_id != reference_id]
    order = [labeled[k] for k in np.random.default_rng(seed).permutation(len(labeled))]
    train_head = [by_id[reference_id]] + unlabeled
    if len(train_head) > n_train:
        raise ValueError(f"{len(unlabeled)} unlabeled images do not fit a training split of "
                         f"{n_train}")
    need = n_train - len(train_head) + n_val + n_test
    if need > len(order):
        raise ValueError(f"msd_hippocampus: {len(order) + 1} labeled images, the split "
                         f"{tuple(sizes)} needs {need + 1}")
    cut1 = n_train - len(train_head)
    parts = (train_head + order[:cut1], order[cut1:cut1 + n_val],
             order[cut1 + n_val:cut1 + n_val + n_test])
    reference = by_id[reference_id].image_path
    recipe = recipe or msd_hippocampus_recipe(reference, box)
    store: dict = {}

    def make(part):
        return SubjectDataset(MSD_HIPPOCAMPUS_NAME, False, sorted(part, key=lambda s: s.subject_id),
                              recipe, cache=cache, _cache_store=store)

    return Splits(*(make(p) for p in parts))
