"""Mindboggle-101 brain MRIs with manual DKT cortical labels (DeepAtlas Table 2).

Native layout of the Mindboggle-101 release (Klein & Tourville 2012, CC BY-NC-SA 3.0)::

    <root>/[mindboggle101/]<subset>_volumes/<subset>-<n>/t1weighted_brain.nii.gz
                                                       /labels.DKT31.manual.nii.gz

with subsets ``OASIS-TRT-20``, ``MMRR-21``, ``NKI-RS-22``, ``NKI-TRT-20``, ``HLN-12`` (and a few
single subjects).  The shared test-data folder holds 15 OASIS-TRT-20 subjects in this layout.

Labels: the DKT31 protocol labels each cortical region twice, ``1000 + k`` (left) and
``2000 + k`` (right), 31 regions.  DeepAtlas §3: "We fuse corresponding segmentation labels of
the left and right brain hemispheres" -> :data:`DKT31_FUSED` (31 classes + background; Table 2
"31 cortical regions").

Preprocessing (§3): "All images are 1mm isotropic, affinely-aligned, histogram-matched, and
cropped to size 168 x 200 x 169" -> :func:`mindboggle_recipe` (affine registration to the
skull-stripped MNI152 template shipped with nilearn, histogram matching to it, a box in MNI
space, intensities to [0, 1]).  "We apply sagittal flipping for training data augmentation":
done by the training pipeline, not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import DataError
from .labels import LabelMapping
from .recipes import MapLabels, MinMax, Recipe
from .subjects import Splits, Subject, SubjectDataset

__all__ = ["DKT31_REGIONS", "DKT31_FUSED", "PAPER_SUBSETS", "PAPER_BOX_1MM", "DKT31_LABELS",
           "ASEG_LABELS", "mindboggle_folder", "mindboggle_subjects", "mindboggle_recipe",
           "mindboggle_splits", "mindboggle_name", "mindboggle_ureSnet_recipe"]

#: The 31 DKT cortical regions (protocol id ``k``; left ``1000 + k``, right ``2000 + k``).
DKT31_REGIONS: dict[str, int] = {
    "caudal anterior cingulate": 2, "caudal middle frontal": 3, "cuneus": 5, "entorhinal": 6,
    "fusiform": 7, "inferior parietal": 8, "inferior temporal": 9, "isthmus cingulate": 10,
    "lateral occipital": 11, "lateral orbitofrontal": 12, "lingual": 13,
    "medial orbitofrontal": 14, "middle temporal": 15, "parahippocampal": 16, "paracentral": 17,
    "pars opercularis": 18, "pars orbitalis": 19, "pars triangularis": 20, "pericalcarine": 21,
    "postcentral": 22, "posterior cingulate": 23, "precentral": 24, "precuneus": 25,
    "rostral anterior cingulate": 26, "rostral middle frontal": 27, "superior frontal": 28,
    "superior parietal": 29, "superior temporal": 30, "supramarginal": 31,
    "transverse temporal": 34, "insula": 35,
}
#: Left and right labels of each region fused into one class (DeepAtlas §3).
DKT31_FUSED = LabelMapping(list(DKT31_REGIONS),
                           {name: [1000 + k, 2000 + k] for name, k in DKT31_REGIONS.items()})
#: Subsets of the release, in the paper's order of mention (§3) then the rest.
PAPER_SUBSETS = ("OASIS-TRT-20", "MMRR-21", "HLN-12", "NKI-TRT-20", "NKI-RS-22")
#: The paper's crop (§3) in RAS voxels at 1 mm, 168 x 200 x 169, padded to multiples of 16 so
#: that the registration network's four stride-2 levels divide it.
PAPER_BOX_1MM = (176, 208, 176)

_IMAGE, _LABELS = "t1weighted_brain.nii.gz", "labels.DKT31.manual.nii.gz"
#: Label files of a subject folder: the manual DKT cortex alone, and the cortex plus the
#: subcortical labels in FreeSurfer ids (``labels.DKT31.manual+aseg.nii.gz``).
DKT31_LABELS, ASEG_LABELS = _LABELS, "labels.DKT31.manual+aseg.nii.gz"


def mindboggle_folder(root: str | os.PathLike) -> Path:
    """``root/mindboggle101`` if it holds ``*_volumes`` folders, else ``root`` if it does.

    Raises:
        FileNotFoundError: no ``*_volumes`` folder (the message names the layout expected).
    """
    root = Path(root)
    for candidate in (root / "mindboggle101", root):
        if candidate.is_dir() and any(p.is_dir() for p in candidate.glob("*_volumes")):
            return candidate
    raise FileNotFoundError(
        f"{root}: no Mindboggle-101 data found; expected <root>/mindboggle101/<subset>_volumes/"
        f"<subject>/{_IMAGE} and {_LABELS} (the release's layout)")


def mindboggle_subjects(root: str | os.PathLike, subsets=None, exclude=(),
                        labels: str = DKT31_LABELS) -> list[Subject]:
    """Subjects of the native layout, sorted by id; ``group`` is the subset.

    Args:
        root: see :func:`mindboggle_folder`.
        subsets: subset names to keep (default: every ``*_volumes`` folder).
        exclude: subject ids to leave out (e.g. images with problematic labels, §3).
        labels: the label file of each subject folder (:data:`DKT31_LABELS`, default, or
            :data:`ASEG_LABELS`), read as the label map ``"labels"``.

    Raises:
        FileNotFoundError: no layout, or no subject found.
        DataError: a subject folder without its image or its label file (both named).
    """
    folder = mindboggle_folder(root)
    subjects = []
    for volumes in sorted(folder.glob("*_volumes")):
        subset = volumes.name[: -len("_volumes")]
        if subsets is not None and subset not in subsets:
            continue
        for subject in sorted(p for p in volumes.iterdir() if p.is_dir()):
            if subject.name in exclude:
                continue
            image, label_file = subject / _IMAGE, subject / labels
            for path in (image, label_file):
                if not path.is_file():
                    raise DataError(f"{path}: missing (Mindboggle-101 subject folder {subject} "
                                    f"needs {_IMAGE} and {labels})")
            subjects.append(Subject(subject.name, {"t1": str(image)}, {"labels": str(label_file)},
                                    group=subset))
    if not subjects:
        raise FileNotFoundError(f"{folder}: no subject folders found"
                                + (f" for subsets {list(subsets)}" if subsets else ""))
    return sorted(subjects, key=lambda s: s.subject_id)


def mindboggle_recipe(spacing_mm: float = 1.0, box=PAPER_BOX_1MM) -> Recipe:
    """DeepAtlas §3 brain preprocessing.

    Steps: affine registration to the skull-stripped MNI152 template and resampling onto a
    ``box`` of ``spacing_mm`` voxels centred on the template's brain
    (:class:`~regseg.datasets.alignment.AffineToReference`), histogram matching of the brain
    voxels to the template (:class:`~regseg.datasets.alignment.HistogramMatch`), intensities to
    [0, 1], left/right labels fused into the 31 regions of :data:`DKT31_FUSED` (label maps
    ``structures`` and ``segmentation``; every region must be present).

    Args:
        spacing_mm: voxel size (1 mm in the paper).
        box: RAS box in voxels at that spacing.
    """
    from .alignment import MNI152, AffineToReference, HistogramMatch

    classes = {"structures": DKT31_FUSED, "segmentation": DKT31_FUSED}
    return Recipe([AffineToReference(MNI152, float(spacing_mm), tuple(int(b) for b in box)),
                   HistogramMatch(MNI152), MinMax(), MapLabels("labels", classes)],
                  name="DeepAtlas §3 (brain)")


def mindboggle_ureSnet_recipe(normalisation: str = "paper") -> Recipe:
    """U-ReSNet §3.5 preprocessing of the ixi10-trained networks, for Mindboggle-101 subjects.

    The same steps as :func:`~regseg.datasets.ixi10.ixi10_recipe` (the networks' training
    data) except where the data differ: the images are resampled to 2 mm (ixi10's voxel size;
    Mindboggle ships 1 mm), and the brain mask is the skull-stripped image itself (``image != 0``,
    the intensities are non-negative, so ``> 0``) made on the 1 mm grid and resampled nearest
    neighbour, since Mindboggle has no cerebral white-matter label (ixi10: label > 0). Then skull
    strip, z-score over the brain, crop :data:`~regseg.datasets.ixi10.IXI10_CROP` (80 x 104 x 88
    voxels, RAS) around the brain's centre of mass, and the subject's ``labels`` (read from
    :data:`ASEG_LABELS`) mapped to the 14 Table 1 structures of
    :data:`~regseg.datasets.labels.MINDBOGGLE_TABLE1` (label map ``structures``; each must
    be present).

    Args:
        normalisation: ``"paper"`` or ``"released"``, see
            :func:`~regseg.datasets.recipes.ureSnet_normalisation` (match the networks' runs).
    Raises:
        ValueError: unknown ``normalisation``.
    """
    from .ixi10 import IXI10_CROP, IXI10_SPACING_MM
    from .labels import MINDBOGGLE_TABLE1
    from .recipes import (CropAroundCentreOfMass, MaskFromImage, Resample, SkullStrip, ZScore,
                          ureSnet_normalisation)

    recipe = Recipe([MaskFromImage(mask="brain"), Resample(IXI10_SPACING_MM), SkullStrip("brain"),
                     ZScore(mask="brain"), CropAroundCentreOfMass(IXI10_CROP, mask="brain"),
                     MapLabels("labels", {"structures": MINDBOGGLE_TABLE1})],
                    name="U-ReSNet §3.5 on Mindboggle-101 (2 mm, brain = image > 0)")
    return ureSnet_normalisation(recipe, normalisation)


def mindboggle_name(subjects, spacing_mm: float) -> str:
    """Dataset name for titles, e.g. ``Mindboggle-101, 15 OASIS-TRT-20 subjects at 2 mm``."""
    groups = sorted({s.group for s in subjects})
    return (f"Mindboggle-101 ({len(subjects)} subjects of {', '.join(groups)}, manual DKT31 "
            f"labels, {spacing_mm:g} mm)")


def mindboggle_splits(root: str | os.PathLike, *, sizes=None, test_subset: str = "OASIS-TRT-20",
                      seed: int = 0, spacing_mm: float = 1.0,
                      box=PAPER_BOX_1MM, exclude=(), cache: bool = True,
                      recipe: Recipe | None = None) -> Splits:
    """Train / validation / test splits of Mindboggle-101.

    Two modes:

    * ``sizes=None`` (the paper, §3): validation and test come from ``test_subset``
      (OASIS-TRT-20: the first 5 of a seeded permutation validate, the other 15 test), every
      other subject trains.
    * ``sizes=(train, validation, test)``: a seeded permutation of all subjects is cut in that
      order (e.g. the 15 OASIS-TRT-20 subjects of the shared folder).

    Args:
        root: data root (see :func:`mindboggle_folder`).
        sizes: see above.
        test_subset: subset holding validation and test images in the paper mode.
        seed: permutation seed.
        spacing_mm, box: see :func:`mindboggle_recipe`.
        exclude: subject ids to leave out.
        cache: keep preprocessed samples in memory.
        recipe: another recipe.

    Returns:
        :class:`~regseg.datasets.subjects.Splits`; ``is_paper_dataset`` only for the paper mode
        at 1 mm.

    Raises:
        FileNotFoundError / DataError: see :func:`mindboggle_subjects`.
        ValueError: not enough subjects for the split (named sizes).
    """
    subjects = mindboggle_subjects(root, exclude=exclude)
    rng = np.random.default_rng(seed)
    if sizes is None:
        held = [s for s in subjects if s.group == test_subset]
        if len(held) < 20:
            raise ValueError(f"the paper's split needs the 20 {test_subset} subjects for "
                             f"validation (5) and test (15), found {len(held)}")
        held = [held[k] for k in rng.permutation(len(held))]
        parts = ([s for s in subjects if s.group != test_subset], held[:5], held[5:20])
        paper = float(spacing_mm) == 1.0
    else:
        n_train, n_val, n_test = (int(v) for v in sizes)
        if n_train + n_val + n_test > len(subjects) or min(n_train, n_val, n_test) < 1:
            raise ValueError(f"mindboggle split {tuple(sizes)} needs {n_train + n_val + n_test} "
                             f"subjects (each part >= 1), found {len(subjects)}")
        order = [subjects[k] for k in rng.permutation(len(subjects))]
        parts = (order[:n_train], order[n_train:n_train + n_val],
                 order[n_train + n_val:n_train + n_val + n_test])
        paper = False
    name = mindboggle_name([s for p in parts for s in p], spacing_mm)
    recipe = recipe or mindboggle_recipe(spacing_mm, box)
    store: dict = {}

    def make(part):
        return SubjectDataset(name, paper, sorted(part, key=lambda s: s.subject_id), recipe,
                              cache=cache, _cache_store=store)

    return Splits(*(make(p) for p in parts))
