"""Subjects, preprocessed samples, datasets and deterministic train/validation/test splits.

The preprocessing chain of :meth:`SubjectDataset.load` is U-ReSNet §3.5 (Estienne et al., MICCAI
2019): skull removed, N(0, 1) normalisation over the brain, translation of the brain's centre of
mass to the centre of the volume and cropping (160 x 176 x 208 at 1 mm in the paper's LIA order,
:data:`~regseg.datasets.preprocessing.PAPER_CROP_RAS_1MM` in this suite's RAS order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .io import DataError, Volume, check_same_grid, load_volume
from .labels import LabelMapping, check_structures_present
from .preprocessing import crop_around_centre_of_mass, normalise_zscore, resample_to_spacing

__all__ = ["Subject", "Sample", "SubjectDataset", "Splits", "split_subjects", "SKULL_STRIP_MODES"]

#: Allowed values of ``SubjectDataset(skull_strip=...)``.
SKULL_STRIP_MODES = ("label", "brainmask", "none")


@dataclass(frozen=True)
class Subject:
    """One image with its label map (paths only; nothing is read on construction).

    Attributes:
        subject_id: unique id of this image (for OASIS-3: the session id).
        image_path: intensity image (NIfTI / MGH).
        label_path: label map on the same voxel grid.
        brain_mask_path: optional skull-stripped image or brain mask on the same grid
            (e.g. FreeSurfer ``brainmask.mgz``); brain = its non-zero voxels.
    """

    subject_id: str
    image_path: str
    label_path: str
    brain_mask_path: str | None = None


@dataclass
class Sample:
    """A preprocessed subject, ready for a network (U-ReSNet §3.5).

    Attributes:
        subject_id: the :class:`Subject`'s id.
        image: ``(X, Y, Z)`` float32, RAS+ voxel order: N(0, 1) over the brain, 0 outside.
        structures: ``(X, Y, Z)`` int32, 0 = background, ``k + 1`` = ``structure_names[k]``
            (the 15 Table 1 structures in table order for the brain datasets).
        segmentation: ``(X, Y, Z)`` int32, 0 = background, ``k + 1`` = ``class_names[k]``
            (CeblWM, CeblC, LV for the brain datasets).
        affine: ``(4, 4)`` voxel -> world (mm) matrix of the cropped grid.
        image_path: the source image file.
    """

    subject_id: str
    image: np.ndarray
    structures: np.ndarray
    segmentation: np.ndarray
    affine: np.ndarray
    image_path: str


def _round_up4(shape: Sequence[int]) -> tuple[int, int, int]:
    return tuple(int(4 * -(-int(s) // 4)) for s in shape)


class SubjectDataset:
    """A list of subjects plus the recipe that turns each into a :class:`Sample`.

    Args:
        name: the dataset's name, used in table titles (e.g. "IXI (ixi10 sample, 2 mm) —
            stand-in for OASIS-3").
        is_paper_dataset: ``True`` only when this is the data a paper used (e.g. OASIS-3 for
            U-ReSNet); stand-ins must be ``False`` so that reports never present their numbers as
            a reproduction of the paper's.
        subjects: the subjects.
        structure_mapping: label ids -> registration-evaluation structures (Table 1).
        segmentation_mapping: label ids -> segmentation classes (§4.1).
        crop_shape: output box ``(X, Y, Z)`` in voxels (RAS order), or ``None`` for the input
            shape rounded up to a multiple of 4 (shapes then may differ between subjects).
        spacing_mm: resample to this voxel size (mm; scalar or 3 values) before anything else, or
            ``None`` to keep the files' grid.
        skull_strip: how the brain is found and the skull removed:
            ``"label"``: brain = label map > 0;
            ``"brainmask"``: brain = non-zero voxels of the subject's ``brain_mask_path`` (e.g.
            FreeSurfer ``brainmask.mgz``, a skull-stripped image); a subject without one falls
            back to label > 0;
            ``"none"``: nothing is removed and the z-score is over the whole volume; the crop is
            centred on the centre of mass of label > 0.
            In the first two modes the image is set to 0 outside the brain and the z-score uses
            the brain voxels only.
        cache: keep each loaded :class:`Sample` in memory (shared with :meth:`subset` datasets).

    Raises:
        ValueError: unknown ``skull_strip``, duplicate subject ids, or a bad ``crop_shape``.
    """

    def __init__(
        self,
        name: str,
        is_paper_dataset: bool,
        subjects: Sequence[Subject],
        structure_mapping: LabelMapping,
        segmentation_mapping: LabelMapping,
        crop_shape: Sequence[int] | None,
        spacing_mm: float | Sequence[float] | None = None,
        skull_strip: str = "label",
        cache: bool = False,
        *,
        _cache_store: dict | None = None,
    ):
        if skull_strip not in SKULL_STRIP_MODES:
            raise ValueError(f"skull_strip must be one of {SKULL_STRIP_MODES}, got {skull_strip!r}")
        ids = [s.subject_id for s in subjects]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"duplicate subject ids: {dup}")
        if crop_shape is not None:
            crop_shape = tuple(int(c) for c in crop_shape)
            if len(crop_shape) != 3 or min(crop_shape) < 1:
                raise ValueError(f"crop_shape must be 3 positive integers, got {crop_shape}")
        self.name = name
        self.is_paper_dataset = bool(is_paper_dataset)
        self.subjects = list(subjects)
        self.structure_mapping = structure_mapping
        self.segmentation_mapping = segmentation_mapping
        self.crop_shape = crop_shape
        self.spacing_mm = spacing_mm
        self.skull_strip = skull_strip
        self.cache = bool(cache)
        self._cache: dict[str, Sample] = {} if _cache_store is None else _cache_store

    # -- basic container protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)

    def __iter__(self):
        for i in range(len(self)):
            yield self.load(i)

    def __repr__(self) -> str:
        return (f"SubjectDataset(name={self.name!r}, n={len(self)}, crop_shape={self.crop_shape}, "
                f"spacing_mm={self.spacing_mm}, skull_strip={self.skull_strip!r})")

    @property
    def structure_names(self) -> list[str]:
        """Names of the evaluation structures; ``structures == k + 1`` is ``structure_names[k]``."""
        return list(self.structure_mapping.names)

    @property
    def class_names(self) -> list[str]:
        """Names of the segmentation classes; ``segmentation == k + 1`` is ``class_names[k]``."""
        return list(self.segmentation_mapping.names)

    @property
    def subject_ids(self) -> list[str]:
        """Subject ids in dataset order."""
        return [s.subject_id for s in self.subjects]

    def subset(self, indices: Sequence[int]) -> "SubjectDataset":
        """A dataset with the subjects at ``indices`` (same recipe, shared in-memory cache)."""
        return SubjectDataset(
            self.name, self.is_paper_dataset, [self.subjects[int(i)] for i in indices],
            self.structure_mapping, self.segmentation_mapping, self.crop_shape, self.spacing_mm,
            self.skull_strip, self.cache, _cache_store=self._cache,
        )

    # -- loading ------------------------------------------------------------------------------
    def _maybe_resample(self, vol: Volume, label: bool) -> Volume:
        if self.spacing_mm is None:
            return vol
        target = np.broadcast_to(np.asarray(self.spacing_mm, dtype=np.float64), (3,))
        if np.allclose(vol.spacing, target, atol=1e-3, rtol=0):
            return vol
        return resample_to_spacing(vol, target, label=label)

    def load(self, i: int) -> Sample:
        """Load and preprocess subject ``i`` (U-ReSNet §3.5).

        Steps: read image and label map (RAS+, :func:`~regseg.datasets.io.load_volume`); check
        they share a grid; resample if ``spacing_mm`` is set (linear for the image, nearest for
        labels and mask); find the brain (``skull_strip``) and zero the image outside it; z-score
        over the brain; crop ``crop_shape`` voxels around the brain's (binary) centre of mass;
        map labels to structures and classes; check that every structure and class is present.

        Returns:
            :class:`Sample` (arrays of shape ``crop_shape``).

        Raises:
            IndexError: ``i`` out of range.
            DataError: (naming the file) unreadable or invalid files, image/label (or mask) grid
                mismatch, an empty brain, or a structure/class missing after cropping.
        """
        subject = self.subjects[i]
        if self.cache and subject.subject_id in self._cache:
            return self._cache[subject.subject_id]

        image = load_volume(subject.image_path)
        label = load_volume(subject.label_path, label=True)
        check_same_grid(image, label)
        brain_vol = None
        if self.skull_strip == "brainmask" and subject.brain_mask_path is not None:
            brain_vol = load_volume(subject.brain_mask_path)
            check_same_grid(image, brain_vol)
            brain_vol = Volume((brain_vol.data != 0).astype(np.int32), brain_vol.affine,
                               brain_vol.path)

        image = self._maybe_resample(image, label=False)
        label = self._maybe_resample(label, label=True)
        if brain_vol is not None:
            brain_vol = self._maybe_resample(brain_vol, label=True)

        if brain_vol is not None:
            brain = brain_vol.data > 0
            brain_source = brain_vol.path
        else:
            brain = label.data > 0
            brain_source = label.path
        if not brain.any():
            raise DataError(f"{brain_source}: brain mask is empty")

        if self.skull_strip == "none":
            data = normalise_zscore(image.data, np.ones(image.data.shape, dtype=bool))
        else:
            try:
                data = normalise_zscore(image.data, brain)
            except ValueError as exc:
                raise DataError(f"{image.path}: {exc}") from exc

        crop_shape = self.crop_shape or _round_up4(data.shape)
        (img_c, lab_c), affine = crop_around_centre_of_mass(
            [data, label.data], brain, crop_shape, image.affine)
        structures = self.structure_mapping.apply(lab_c)
        segmentation = self.segmentation_mapping.apply(lab_c)
        check_structures_present(structures, self.structure_names, label.path)
        check_structures_present(segmentation, self.class_names, label.path)

        sample = Sample(subject_id=subject.subject_id, image=img_c, structures=structures,
                        segmentation=segmentation, affine=affine, image_path=subject.image_path)
        if self.cache:
            self._cache[subject.subject_id] = sample
        return sample


@dataclass
class Splits:
    """Train / validation / test datasets (U-ReSNet §3.5: 520 / 67 / 156 OASIS-3 images)."""

    train: SubjectDataset
    validation: SubjectDataset
    test: SubjectDataset

    @property
    def name(self) -> str:
        """The dataset name (for table titles)."""
        return self.train.name

    @property
    def is_paper_dataset(self) -> bool:
        """Whether this is the data the paper used."""
        return self.train.is_paper_dataset

    def as_dict(self) -> dict[str, SubjectDataset]:
        """``{"train": ..., "validation": ..., "test": ...}``."""
        return {"train": self.train, "validation": self.validation, "test": self.test}


def _proportional_targets(sizes: Sequence[int], n: int) -> list[int]:
    """Scale ``sizes`` to sum to ``n`` (largest-remainder rounding; ties go to the earlier split)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    exact = sizes * n / sizes.sum()
    base = np.floor(exact).astype(int)
    remainder = exact - base
    order = sorted(range(len(sizes)), key=lambda k: (-remainder[k], k))
    for k in order[: n - int(base.sum())]:
        base[k] += 1
    return [int(b) for b in base]


def split_subjects(
    subjects: Sequence[Subject],
    sizes: Sequence[int],
    seed: int = 0,
    group_key: Callable[[Subject], str] | None = None,
    *,
    shuffle: bool = True,
) -> tuple[list[Subject], list[Subject], list[Subject]]:
    """Deterministic train/validation/test split.

    Subjects are first sorted by ``subject_id``; groups (``group_key(subject)``, default: each
    subject alone) are ordered by key and, if ``shuffle``, permuted with
    ``numpy.random.default_rng(seed)``. Groups are then assigned in that order to the first split
    (train, validation, test) that still has room for the whole group; a group that fits nowhere is
    left out. So all sessions of one OASIS-3 subject end up in the same split; with groups a split
    may be a few images short of its size, never over it. The result depends only on the subject
    ids, ``sizes``, ``seed`` and ``group_key``, not on the input order.

    If there are fewer subjects than ``sum(sizes)``, the sizes are scaled proportionally to the
    number of subjects (largest-remainder rounding), e.g. ``(520, 67, 156)`` with 10 subjects ->
    ``(7, 1, 2)``. If there are more, the extra subjects are not used.

    Args:
        subjects: the subjects (ids must be unique).
        sizes: ``(train, validation, test)`` numbers of subjects (images).
        seed: random seed of the permutation.
        group_key: maps a subject to its group (e.g. the OASIS-3 subject of a session).
        shuffle: ``False`` keeps the sorted order (first ``train`` to train, and so on).

    Returns:
        ``(train, validation, test)`` lists of subjects, each in ``subject_id`` order.

    Raises:
        ValueError: ``sizes`` is not 3 non-negative integers, duplicate ids, or a split would be
            empty.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) != 3 or min(sizes) < 0:
        raise ValueError(f"sizes must be 3 non-negative integers (train, validation, test), got {sizes}")
    subjects = sorted(subjects, key=lambda s: s.subject_id)
    ids = [s.subject_id for s in subjects]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate subject ids")
    n = len(subjects)
    targets = sizes if n >= sum(sizes) else _proportional_targets(sizes, n) if sum(sizes) else sizes
    names = ("train", "validation", "test")
    for name, t in zip(names, targets):
        if t < 1:
            raise ValueError(f"the {name} split would be empty ({n} subjects, sizes {sizes})")

    groups: dict[str, list[Subject]] = {}
    for s in subjects:
        groups.setdefault(str(group_key(s)) if group_key else s.subject_id, []).append(s)
    keys = sorted(groups)
    if shuffle:
        keys = [keys[k] for k in np.random.default_rng(seed).permutation(len(keys))]

    out: list[list[Subject]] = [[], [], []]
    for key in keys:
        group = groups[key]
        for k in range(3):
            if len(out[k]) + len(group) <= targets[k]:
                out[k].extend(group)
                break
        if all(len(out[k]) == targets[k] for k in range(3)):
            break
    for name, part in zip(names, out):
        if not part:
            raise ValueError(f"the {name} split would be empty: no group of subjects fits its size "
                             f"{targets[names.index(name)]}")
    return tuple(sorted(part, key=lambda s: s.subject_id) for part in out)  # type: ignore[return-value]
