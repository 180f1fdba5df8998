"""Any folder of images with label maps: ``<root>/images/*.nii[.gz]`` + ``<root>/labels/<same name>``.

The label mapping comes from a JSON file::

    {
      "structures": {"BS": [16], "CSF": [24], ...},          # required: evaluation structures
      "segmentation_classes": {"CeblWM": [2, 41], ...}       # optional: dict of ids, or
      # "segmentation_classes": ["CeblWM", "CeblC", "LV"]    # a list of structure names
    }

Without ``"segmentation_classes"`` the segmentation classes are the structures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .io import DataError
from .labels import LabelMapping
from .recipes import Recipe, ureSnet_recipe
from .subjects import Splits, Subject, SubjectDataset, split_subjects

__all__ = ["folder_subjects", "read_mapping_json", "folder_splits"]


def _stem(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def folder_subjects(root: str | os.PathLike) -> list[Subject]:
    """Subjects of ``<root>/images/*.nii[.gz]`` with labels ``<root>/labels/<same file name>``.

    Subject id = file name without ``.nii``/``.nii.gz``.

    Raises:
        FileNotFoundError: ``<root>/images`` or ``<root>/labels`` is missing, or no image found.
        DataError: an image has no label file (message names the image and the expected label
            path), a label file has no image, or two files give the same subject id (e.g.
            ``X.nii`` beside ``X.nii.gz``; both named).
    """
    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: folder not found; expected <root>/images/*.nii[.gz] "
                                    f"and <root>/labels/<same file name>")
    images = sorted(p for p in images_dir.iterdir()
                    if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")))
    if not images:
        raise FileNotFoundError(f"{images_dir}: no .nii or .nii.gz image found")
    for folder, files in ((images_dir, images), (labels_dir, sorted(
            p for p in labels_dir.iterdir()
            if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz"))))):
        seen: dict[str, Path] = {}
        for f in files:
            if _stem(f.name) in seen:
                raise DataError(f"{seen[_stem(f.name)]} and {f}: two files for subject "
                                f"{_stem(f.name)!r}; keep one")
            seen[_stem(f.name)] = f
    subjects = []
    for image in images:
        label = labels_dir / image.name
        if not label.is_file():
            raise DataError(f"{image}: no label map; expected {label}")
        subjects.append(Subject(_stem(image.name), str(image),
                                str(label)))
    image_names = {p.name for p in images}
    for label in sorted(labels_dir.iterdir()):
        if label.is_file() and label.name.lower().endswith((".nii", ".nii.gz")) \
                and label.name not in image_names:
            raise DataError(f"{label}: label map without an image; expected "
                            f"{images_dir / label.name}")
    return subjects


def read_mapping_json(path: str | os.PathLike) -> tuple[LabelMapping, LabelMapping]:
    """Read ``(structure_mapping, segmentation_mapping)`` from a JSON file (format in module doc).

    Raises:
        DataError: naming the file if it is missing, not JSON, lacks "structures", or
            "segmentation_classes" is malformed or names unknown structures.
    """
    path = str(path)
    structures = LabelMapping.from_json(path)
    with open(path, encoding="utf-8") as fh:
        content = json.load(fh)
    seg = content.get("segmentation_classes")
    if seg is None:
        return structures, structures
    if isinstance(seg, list):
        try:
            return structures, structures.subset(seg)
        except KeyError as exc:
            raise DataError(f"{path}: segmentation_classes: {exc.args[0]}") from exc
    if isinstance(seg, dict):
        return structures, LabelMapping.from_dict(seg, source=f"{path} (segmentation_classes)")
    raise DataError(f"{path}: segmentation_classes must be a list of structure names or an "
                    f"object of name -> ids")


def folder_splits(
    root: str | os.PathLike,
    mapping_json: str | os.PathLike,
    *,
    sizes: Sequence[int],
    seed: int = 0,
    spacing_mm: float | Sequence[float] | None = None,
    crop_shape: Sequence[int] | None = None,
    skull_strip: str = "label",
    name: str | None = None,
    cache: bool = False,
    recipe: Recipe | None = None,
) -> Splits:
    """Splits of a user folder of images and label maps.

    Args:
        root: folder with ``images/`` and ``labels/``.
        mapping_json: label mapping JSON (see module docstring).
        sizes: (train, validation, test) numbers of images (scaled down proportionally if fewer).
        seed: seed of the shuffled split (:func:`~regseg.datasets.subjects.split_subjects`).
        spacing_mm: resample to this voxel size (mm), or ``None`` to keep the files' grid.
        crop_shape: crop box in voxels (RAS), or ``None`` for each volume's shape rounded up to a
            multiple of 4 (still centred on the centre of mass of the brain / label foreground).
        skull_strip: ``"label"`` (brain = label > 0, image zeroed outside) or ``"none"`` (keep the
            whole image, e.g. for non-brain data); see :class:`~regseg.datasets.subjects.SubjectDataset`.
        name: dataset name for table titles (default: "folder <root>").
        cache: keep preprocessed samples in memory.
        recipe: another preprocessing recipe; default U-ReSNet §3.5 with the options above
            (:func:`~regseg.datasets.recipes.ureSnet_recipe`).

    Returns:
        :class:`~regseg.datasets.subjects.Splits` with ``is_paper_dataset=False``.

    Raises:
        FileNotFoundError: missing folders; DataError: image without label, bad mapping JSON;
        ValueError: a split would be empty.
    """
    subjects = folder_subjects(root)
    structures, classes = read_mapping_json(mapping_json)
    parts = split_subjects(subjects, sizes, seed=seed)
    title = name or f"folder {Path(root)}"
    default = ureSnet_recipe(crop_shape, structures, classes, spacing_mm=spacing_mm,
                             skull_strip=skull_strip)

    def make(part):
        return SubjectDataset(title, False, part, recipe or default, cache=cache)

    return Splits(*(make(p) for p in parts))
