"""Subjects, samples, datasets and deterministic train/validation/test splits: the data model.

* :class:`Subject` — what a dataset holds for one subject, as file paths: one or more named
  images (modalities), optional label maps (one per modality where they differ), optional masks
  and optional landmarks (world mm). Nothing is read on construction.
* :class:`Sample` — a subject read from disk (RAS+ canonical, validated) and preprocessed by a
  :class:`~regseg.datasets.recipes.Recipe`: numpy arrays on one voxel grid with its affine.
* :class:`SubjectDataset` — subjects plus the recipe that turns each into a sample.
* :class:`Splits` and :func:`split_subjects` — deterministic train / validation / test splits.

Which parts a paper needs is its recipe's business: U-ReSNet §3.5
(:func:`~regseg.datasets.recipes.ureSnet_recipe`) needs an image and a label map; an
unlabelled image is a valid subject for a recipe that does not map labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .io import DataError, Volume, check_same_grid, load_volume
from .recipes import Recipe

__all__ = ["Subject", "Sample", "read_subject", "SubjectDataset", "Splits", "split_subjects",
           "read_landmarks_csv"]


def _as_parts(value, default_name: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, (str, os.PathLike)):
        return {default_name: str(value)}
    return {str(k): str(v) for k, v in dict(value).items()}


@dataclass(frozen=True, eq=True)
class Subject:
    """One subject of a dataset, as paths (nothing is read on construction).

    ``Subject("IXI012", "img.nii.gz", "lab.nii.gz")`` is one image named ``"image"`` with one
    label map named ``"labels"``; the general form names every part:
    ``Subject("s1", {"t1": ..., "t2": ...}, {"labels_t1": ..., "labels_t2": ...},
    {"liver_t1": ...}, landmarks="s1_points.csv")``.

    Attributes:
        subject_id: unique id (for OASIS-3: the session id).
        images: ``{modality: path}`` (a single path means ``{"image": path}``); the first image
            defines the sample's voxel grid.
        labels: ``{name: path}`` of integer label maps (a single path means ``{"labels": path}``).
        masks: ``{name: path}`` of masks, non-zero = inside (a single path means
            ``{"brain": path}``; e.g. FreeSurfer ``brainmask.mgz``).
        landmarks: optional path of a CSV of points in world coordinates (RAS mm, one ``x,y,z``
            per row, optional header), or an ``(N, 3)`` array of them.
        group: optional group key (e.g. the OASIS-3 subject of a session) for splits.
        common_grid: ``"check"`` (default): every part must share the first image's grid
            (else :class:`~regseg.datasets.io.DataError` naming both files); ``"resample"``:
            parts on another grid are resampled onto it in world coordinates (SimpleITK; linear
            for images, nearest for labels and masks), e.g. unregistered sequences of one session.
    """

    subject_id: str
    images: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    masks: Mapping[str, str] = field(default_factory=dict)
    landmarks: object = None
    group: str | None = None
    common_grid: str = "check"

    def __post_init__(self):
        object.__setattr__(self, "images", _as_parts(self.images, "image"))
        object.__setattr__(self, "labels", _as_parts(self.labels, "labels"))
        object.__setattr__(self, "masks", _as_parts(self.masks, "brain"))
        if not self.images:
            raise ValueError(f"subject {self.subject_id!r} has no image")
        if self.common_grid not in ("check", "resample"):
            raise ValueError(f"common_grid must be 'check' or 'resample', got {self.common_grid!r}")

    __hash__ = None  # holds dicts

    @property
    def image_path(self) -> str:
        """Path of the first image."""
        return next(iter(self.images.values()))

    @property
    def label_path(self) -> str | None:
        """Path of the first label map, or ``None``."""
        return next(iter(self.labels.values()), None)

    @property
    def brain_mask_path(self) -> str | None:
        """Path of the ``brain`` mask, or ``None``."""
        return self.masks.get("brain")


@dataclass
class Sample:
    """A subject read from disk and preprocessed: arrays on one voxel grid.

    Attributes:
        subject_id: the :class:`Subject`'s id.
        images: ``{modality: (X, Y, Z) float32}``, RAS+ voxel order.
        labels: ``{name: (X, Y, Z) int32}``; after U-ReSNet's recipe ``"structures"``
            (0 = background, ``k + 1`` = the k-th Table 1 structure) and ``"segmentation"``.
        masks: ``{name: (X, Y, Z) bool}``.
        affine: ``(4, 4)`` voxel -> world (mm, RAS+) matrix of the grid.
        landmarks: ``(N, 3)`` float64 points in world coordinates (mm, RAS+), or ``None``.
        sources: ``{part name: source file}`` for messages and provenance.
    """

    subject_id: str
    images: dict
    labels: dict = field(default_factory=dict)
    masks: dict = field(default_factory=dict)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    landmarks: np.ndarray | None = None
    sources: dict = field(default_factory=dict)

    @property
    def image(self) -> np.ndarray:
        """The first image ``(X, Y, Z)``."""
        return next(iter(self.images.values()))

    @property
    def image_path(self) -> str:
        """Source file of the first image."""
        return self.sources.get(next(iter(self.images)), "")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape in voxels."""
        return tuple(self.image.shape[:3])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm per array axis, ``(3,)``."""
        return np.sqrt((np.asarray(self.affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))

    def label(self, name: str) -> np.ndarray:
        """The label map ``name``.

        Raises:
            DataError: the sample has no such label map (the message names the subject and the
                label maps it has).
        """
        if name not in self.labels:
            have = ", ".join(sorted(self.labels)) or "none"
            raise DataError(f"{self.subject_id}: no label map {name!r} (label maps: {have})")
        return self.labels[name]

    @property
    def structures(self) -> np.ndarray:
        """``label("structures")``: the registration-evaluation structures."""
        return self.label("structures")

    @property
    def segmentation(self) -> np.ndarray:
        """``label("segmentation")``: the segmentation classes."""
        return self.label("segmentation")

    def landmarks_voxels(self) -> np.ndarray | None:
        """Landmarks in voxel coordinates of this grid, ``(N, 3)``, or ``None``."""
        if self.landmarks is None:
            return None
        pts = np.c_[np.asarray(self.landmarks, dtype=np.float64), np.ones(len(self.landmarks))]
        return np.linalg.solve(np.asarray(self.affine, dtype=np.float64), pts.T).T[:, :3]


def read_landmarks_csv(path: str | os.PathLike) -> np.ndarray:
    """Read ``(N, 3)`` world points (mm, RAS+) from a CSV with one ``x,y,z`` per row.

    A first row that is not numeric is taken as a header.

    Raises:
        DataError: unreadable file or rows without 3 numbers (naming the file).
    """
    try:
        rows = [r.strip() for r in open(path, encoding="utf-8").read().splitlines() if r.strip()]
    except OSError as exc:
        raise DataError(f"{path}: cannot read landmarks ({exc.strerror or exc})") from exc
    try:
        float(rows[0].replace(";", ",").split(",")[0])
    except (ValueError, IndexError):
        rows = rows[1:]
    try:
        pts = np.array([[float(v) for v in r.replace(";", ",").split(",")[:3]] for r in rows],
                       dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: landmarks must be rows of 3 numbers x,y,z ({exc})") from exc
    if pts.ndim != 2 or pts.shape[1] != 3 or not len(pts):
        raise DataError(f"{path}: landmarks must be rows of 3 numbers x,y,z")
    return pts


def read_subject(subject: Subject) -> Sample:
    """Read every part of a subject (RAS+, validated) onto the first image's grid.

    Raises:
        DataError: unreadable or invalid files (named), or a part on another grid when
            ``subject.common_grid == "check"``.
    """
    from .preprocessing import resample_onto

    first_name = next(iter(subject.images))
    reference = load_volume(subject.images[first_name])
    sample = Sample(subject.subject_id, {first_name: reference.data.astype(np.float32, copy=False)},
                    affine=reference.affine, sources={first_name: reference.path})

    def onto_grid(vol: Volume, label: bool) -> np.ndarray:
        if subject.common_grid == "resample":
            try:
                check_same_grid(reference, vol)
            except DataError:
                return resample_onto(vol, reference, label=label).data
        check_same_grid(reference, vol)
        return vol.data

    for name, path in list(subject.images.items())[1:]:
        sample.images[name] = onto_grid(load_volume(path), False).astype(np.float32, copy=False)
        sample.sources[name] = str(path)
    for name, path in subject.labels.items():
        sample.labels[name] = onto_grid(load_volume(path, label=True), True)
        sample.sources[name] = str(path)
    for name, path in subject.masks.items():
        mask = load_volume(path)
        # binarise BEFORE any resampling: "non-zero = inside" (an int cast would drop 0 < v < 1)
        mask.data = (mask.data != 0).astype(np.uint8)
        sample.masks[name] = onto_grid(mask, True) != 0
        sample.sources[name] = str(path)
    if subject.landmarks is not None:
        if isinstance(subject.landmarks, (str, os.PathLike)):
            sample.landmarks = read_landmarks_csv(subject.landmarks)
        else:
            sample.landmarks = np.asarray(subject.landmarks, dtype=np.float64).reshape(-1, 3)
    return sample


class SubjectDataset:
    """A list of subjects plus the recipe that turns each into a :class:`Sample`.

    Args:
        name: the dataset's name, used in table titles (e.g. "IXI (ixi10 sample, 2 mm) —
            stand-in for OASIS-3").
        is_paper_dataset: ``True`` only when this is the data a paper used (e.g. OASIS-3 for
            U-ReSNet); stand-ins must be ``False`` so that reports never present their numbers as
            a reproduction of the paper's.
        subjects: the subjects.
        recipe: the preprocessing :class:`~regseg.datasets.recipes.Recipe`.
        cache: keep each loaded :class:`Sample` in memory (shared with :meth:`subset` datasets).
        disk_cache: a :class:`~regseg.datasets.cache.PreprocessingCache` (or its folder) keeping
            preprocessed samples on disk, keyed by file checksums and the recipe.

    Raises:
        ValueError: duplicate subject ids (named).
    """

    def __init__(self, name: str, is_paper_dataset: bool, subjects: Sequence[Subject],
                 recipe: Recipe, cache: bool = False, *, disk_cache=None,
                 _cache_store: dict | None = None):
        ids = [s.subject_id for s in subjects]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"duplicate subject ids: {dup}")
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a regseg.datasets.recipes.Recipe, got {type(recipe)}")
        self.name = name
        self.is_paper_dataset = bool(is_paper_dataset)
        self.subjects = list(subjects)
        self.recipe = recipe
        self.cache = bool(cache)
        self._cache: dict[str, Sample] = {} if _cache_store is None else _cache_store
        self.disk_cache = None
        if disk_cache is not None:
            self.use_disk_cache(disk_cache)

    def use_disk_cache(self, cache) -> "SubjectDataset":
        """Keep preprocessed samples on disk (a folder or a ``PreprocessingCache``); returns self."""
        from .cache import PreprocessingCache

        self.disk_cache = cache if isinstance(cache, PreprocessingCache) else PreprocessingCache(cache)
        return self

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)

    def __iter__(self):
        for i in range(len(self)):
            yield self.load(i)

    def __repr__(self) -> str:
        return f"SubjectDataset(name={self.name!r}, n={len(self)}, recipe={self.recipe.name!r})"

    @property
    def label_names(self) -> dict[str, list[str]]:
        """``{label map: class names}`` produced by the recipe (class ``k + 1`` = ``names[k]``)."""
        return self.recipe.label_names()

    @property
    def structure_names(self) -> list[str]:
        """Class names of the ``structures`` label map (U-ReSNet: the 15 of Table 1)."""
        return self.label_names.get("structures", [])

    @property
    def class_names(self) -> list[str]:
        """Class names of the ``segmentation`` label map (U-ReSNet: CeblWM, CeblC, LV)."""
        return self.label_names.get("segmentation", [])

    @property
    def subject_ids(self) -> list[str]:
        """Subject ids in dataset order."""
        return [s.subject_id for s in self.subjects]

    def subset(self, indices: Sequence[int]) -> "SubjectDataset":
        """A dataset with the subjects at ``indices`` (same recipe, shared in-memory cache)."""
        return SubjectDataset(self.name, self.is_paper_dataset,
                              [self.subjects[int(i)] for i in indices], self.recipe, self.cache,
                              disk_cache=self.disk_cache, _cache_store=self._cache)

    def with_recipe(self, recipe: Recipe) -> "SubjectDataset":
        """The same subjects under another recipe (its own cache)."""
        return SubjectDataset(self.name, self.is_paper_dataset, self.subjects, recipe, self.cache,
                              disk_cache=self.disk_cache)

    def load(self, i: int) -> Sample:
        """Read subject ``i`` (:func:`read_subject`) and apply the recipe.

        Raises:
            IndexError: ``i`` out of range.
            DataError: (naming the file) unreadable or invalid files, grid mismatch, or a recipe
                step that cannot be applied (e.g. an empty mask, a structure missing after
                cropping, a part the step needs).
        """
        subject = self.subjects[i]
        if self.cache and subject.subject_id in self._cache:
            return self._cache[subject.subject_id]
        sample = self.disk_cache.get(subject, self.recipe) if self.disk_cache else None
        if sample is None:
            sample = self.recipe(read_subject(subject))
            if self.disk_cache is not None:
                try:
                    self.disk_cache.put(subject, self.recipe, sample)
                except OSError as exc:  # a full or read-only cache never stops a run
                    import warnings
                    warnings.warn(f"{self.disk_cache.folder}: cannot write the preprocessing "
                                  f"cache ({exc})", stacklevel=2)
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

    @property
    def recipe(self) -> Recipe:
        """The preprocessing recipe (the training split's)."""
        return self.train.recipe

    def use_disk_cache(self, cache) -> "Splits":
        """:meth:`SubjectDataset.use_disk_cache` for every split (one cache); returns self."""
        from .cache import PreprocessingCache

        cache = cache if isinstance(cache, PreprocessingCache) else PreprocessingCache(cache)
        for part in (self.train, self.validation, self.test):
            part.use_disk_cache(cache)
        return self

    def validate(self, progress=None) -> int:
        """Load (and so check and cache) every subject of every split once.

        Args:
            progress: optional ``f(done, total, subject_id)`` called after each subject.
        Returns:
            the number of subjects checked.
        Raises:
            DataError: the first subject that cannot be read or preprocessed (named).
        """
        parts = [(p, i) for p in (self.train, self.validation, self.test) for i in range(len(p))]
        for k, (part, i) in enumerate(parts):
            part.load(i)
            if progress is not None:
                progress(k + 1, len(parts), part.subjects[i].subject_id)
        return len(parts)


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
        group_key: maps a subject to its group (e.g. the OASIS-3 subject of a session); default
            the subject's ``group`` attribute where set, else the subject alone.
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
        key = group_key(s) if group_key else (s.group or s.subject_id)
        groups.setdefault(str(key), []).append(s)
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
