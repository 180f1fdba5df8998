"""Preprocessing as a pipeline of named, cited steps (a *recipe*).

A :class:`Recipe` turns a :class:`~regseg.datasets.subjects.Sample` read from disk (every image,
label map and mask already in RAS+ canonical orientation, see :func:`~regseg.datasets.io.load_volume`)
into the arrays a network sees. Each step is a small dataclass with a ``name`` and the ``source``
that justifies it; a recipe serialises to JSON (:meth:`Recipe.to_dict` / :meth:`Recipe.from_dict`)
so that a trained run can apply the same preprocessing to a user's own images
(``python -m regseg register``).

Steps act on named parts of a sample: ``images`` (float), ``labels`` (int) and ``masks`` (bool).
A step that needs a part that is absent raises :class:`~regseg.datasets.io.DataError` naming the
subject, the step and the missing part; optional parts (labels, masks, landmarks) may otherwise be
missing. Geometry is kept exact: every crop, pad and flip updates the affine so that the world
coordinate (mm) of each kept voxel is unchanged; landmarks are held in world coordinates and need
no update.

>>> r = Recipe([MaskFromLabels(), ZScore(mask="brain")], name="example")
>>> Recipe.from_dict(r.to_dict()) == r
True

U-ReSNet §3.5 (Estienne et al., MICCAI 2019) is one recipe among several:
:func:`ureSnet_recipe`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .io import DataError, Volume
from .labels import LabelMapping, check_structures_present
from .preprocessing import crop_around_centre_of_mass, normalise_zscore, resample_to_spacing

__all__ = [
    "Step", "Recipe", "STEPS", "register_step",
    "Resample", "ResampleToShape", "MaskFromLabels", "MaskFromImage", "SkullStrip", "ZScore",
    "MinMax", "Clip", "HounsfieldWindow", "CropOrPad", "CropAroundCentreOfMass", "Flip",
    "MapLabels", "ureSnet_recipe", "ureSnet_normalisation", "UReSNET_NORMALISATIONS",
]

#: name -> step class, for :meth:`Recipe.from_dict`.
STEPS: dict[str, type] = {}


def register_step(cls):
    """Class decorator: make a :class:`Step` subclass known to :meth:`Recipe.from_dict`."""
    STEPS[cls.name] = cls
    return cls


class Step:
    """One preprocessing step: ``step(sample) -> sample`` (the sample is modified in place).

    Subclasses are frozen dataclasses with class attributes ``name`` (used in JSON) and
    ``source`` (the paper, section or library that defines the step).
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def __call__(self, sample):  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:
        """``{"step": name, **parameters}`` (JSON-serialisable)."""
        out = {"step": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, LabelMapping):
                value = value.to_dict()
            elif isinstance(value, dict):
                value = {k: (v.to_dict() if isinstance(v, LabelMapping) else v)
                         for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def describe(self) -> str:
        """One line: the step, its parameters and its source."""
        params = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "step"
                           and not isinstance(v, dict))
        return f"{self.name}({params}) — {self.source}"


def _need(sample, kind: str, name: str, step: Step):
    parts = getattr(sample, kind)
    if name not in parts:
        have = ", ".join(sorted(parts)) or "none"
        raise DataError(f"{sample.subject_id}: preprocessing step '{step.name}' needs the "
                        f"{kind[:-1]} '{name}', which this subject does not have ({kind}: {have})")
    return parts[name]


def _image_names(sample, image):
    return list(sample.images) if image is None else [image]


@register_step
@dataclass(frozen=True)
class Resample(Step):
    """Resample every part to a voxel size (mm) with SimpleITK, keeping the field of view.

    Images linear, label maps and masks nearest neighbour
    (:func:`~regseg.datasets.preprocessing.resample_to_spacing`). Parts already at the spacing
    (within 1e-3 mm) are left untouched.
    """

    spacing_mm: float | tuple = 1.0
    name: ClassVar[str] = "resample"
    source: ClassVar[str] = "SimpleITK ResampleImageFilter (linear / nearest neighbour)"

    def __call__(self, sample):
        target = np.broadcast_to(np.asarray(self.spacing_mm, dtype=np.float64), (3,))
        spacing = np.sqrt((np.asarray(sample.affine)[:3, :3] ** 2).sum(axis=0))
        if np.allclose(spacing, target, atol=1e-3, rtol=0):
            return sample
        affine = None
        for kind, label in (("images", False), ("labels", True), ("masks", True)):
            parts = getattr(sample, kind)
            for key, data in parts.items():
                vol = resample_to_spacing(Volume(np.asarray(data), sample.affine,
                                                 sample.sources.get(key, sample.subject_id)),
                                          target, label=label)
                parts[key] = vol.data.astype(bool) if kind == "masks" else vol.data
                affine = vol.affine
        sample.affine = affine
        return sample


@register_step
@dataclass(frozen=True)
class ResampleToShape(Step):
    """Resample every part to a grid of ``shape`` voxels covering the same field of view.

    The voxel size becomes ``old spacing * old shape / shape`` per axis (SimpleITK; images
    linear, labels and masks nearest). Used by the registration pyramid (Gunnarsson et al. 2020,
    §3: every volume resampled to 64^3) and the diffeomorphic U-Net (Bouabid et al., §4.2: a cube).
    """

    shape: tuple = (64, 64, 64)
    name: ClassVar[str] = "resample-to-shape"
    source: ClassVar[str] = "SimpleITK ResampleImageFilter; Gunnarsson et al. 2020 §3"

    def __call__(self, sample):
        shape = np.asarray(self.shape, dtype=np.float64)
        first = next(iter(sample.images.values()))
        spacing = np.sqrt((np.asarray(sample.affine)[:3, :3] ** 2).sum(axis=0))
        new_spacing = spacing * np.asarray(first.shape) / shape
        out = Resample(tuple(float(s) for s in new_spacing))(sample)
        got = next(iter(out.images.values())).shape
        if tuple(got) != tuple(int(s) for s in self.shape):  # pragma: no cover - rounding guard
            raise DataError(f"{sample.subject_id}: resampling gave {got}, not {self.shape}")
        return out


@register_step
@dataclass(frozen=True)
class MaskFromLabels(Step):
    """Mask ``mask`` = ``label > 0`` (e.g. the brain from a whole-brain parcellation).

    With ``if_missing=True`` an existing mask of that name (e.g. from a skull-stripped image) is
    kept and the labels are used only when it is absent.
    """

    label: str = "labels"
    mask: str = "brain"
    if_missing: bool = False
    name: ClassVar[str] = "mask-from-labels"
    source: ClassVar[str] = "U-ReSNet §3.5 (skull removed; brain = labelled voxels on ixi10)"

    def __call__(self, sample):
        if self.if_missing and self.mask in sample.masks:
            return sample
        labels = _need(sample, "labels", self.label, self)
        sample.masks[self.mask] = np.asarray(labels) > 0
        sample.sources.setdefault(self.mask, sample.sources.get(self.label, sample.subject_id))
        return sample


@register_step
@dataclass(frozen=True)
class MaskFromImage(Step):
    """Mask ``mask`` = ``image != 0`` (e.g. FreeSurfer's skull-stripped ``brainmask.mgz``)."""

    image: str | None = None
    mask: str = "brain"
    name: ClassVar[str] = "mask-from-image"
    source: ClassVar[str] = "skull-stripped input: brain = non-zero voxels"

    def __call__(self, sample):
        key = self.image or next(iter(sample.images))
        sample.masks[self.mask] = np.asarray(_need(sample, "images", key, self)) != 0
        return sample


@register_step
@dataclass(frozen=True)
class SkullStrip(Step):
    """Set every image to 0 outside the mask (U-ReSNet §3.5: "skull removed")."""

    mask: str = "brain"
    image: str | None = None
    name: ClassVar[str] = "skull-strip"
    source: ClassVar[str] = "U-ReSNet §3.5"

    def __call__(self, sample):
        mask = _need(sample, "masks", self.mask, self)
        if not mask.any():
            raise DataError(f"{sample.sources.get(self.mask, sample.subject_id)}: "
                            f"mask '{self.mask}' is empty")
        for key in _image_names(sample, self.image):
            sample.images[key] = np.where(mask, sample.images[key], 0).astype(np.float32)
        return sample


@register_step
@dataclass(frozen=True)
class ZScore(Step):
    """N(0, 1) normalisation over a mask (or the whole volume); 0 outside the mask.

    :func:`~regseg.datasets.preprocessing.normalise_zscore` (population std).
    """

    mask: str | None = "brain"
    image: str | None = None
    name: ClassVar[str] = "z-score"
    source: ClassVar[str] = "U-ReSNet §3.5 (N(0,1) normalisation)"

    def __call__(self, sample):
        for key in _image_names(sample, self.image):
            data = _need(sample, "images", key, self)
            mask = (np.ones(data.shape, dtype=bool) if self.mask is None
                    else _need(sample, "masks", self.mask, self))
            try:
                sample.images[key] = normalise_zscore(data, mask)
            except ValueError as exc:
                raise DataError(f"{sample.sources.get(key, sample.subject_id)}: {exc}") from exc
        return sample


@register_step
@dataclass(frozen=True)
class Clip(Step):
    """Clip intensities to ``[low, high]`` (e.g. the released U-ReSNet code's ±5 after z-score)."""

    low: float = -5.0
    high: float = 5.0
    image: str | None = None
    name: ClassVar[str] = "clip"
    source: ClassVar[str] = "numpy.clip"

    def __call__(self, sample):
        if not self.low < self.high:
            raise ValueError(f"clip: low {self.low} must be below high {self.high}")
        for key in _image_names(sample, self.image):
            sample.images[key] = np.clip(sample.images[key], self.low, self.high).astype(np.float32)
        return sample


@register_step
@dataclass(frozen=True)
class MinMax(Step):
    """Rescale intensities linearly to ``[0, 1]`` over the volume (min -> 0, max -> 1).

    Gunnarsson et al. 2020 §3 ("normalised to [0, 1]"); the released U-ReSNet code after its clip.
    """

    image: str | None = None
    name: ClassVar[str] = "min-max"
    source: ClassVar[str] = "Gunnarsson et al. 2020 §3"

    def __call__(self, sample):
        for key in _image_names(sample, self.image):
            data = np.asarray(sample.images[key], dtype=np.float64)
            lo, hi = float(data.min()), float(data.max())
            if not hi > lo:
                raise DataError(f"{sample.sources.get(key, sample.subject_id)}: constant image, "
                                f"cannot rescale to [0, 1]")
            sample.images[key] = ((data - lo) / (hi - lo)).astype(np.float32)
        return sample


@register_step
@dataclass(frozen=True)
class HounsfieldWindow(Step):
    """CT window: clip to ``[level - width/2, level + width/2]`` HU, then rescale to [0, 1]."""

    level: float = -600.0
    width: float = 1500.0
    image: str | None = None
    name: ClassVar[str] = "hounsfield-window"
    source: ClassVar[str] = "standard CT display window (HU)"

    def __call__(self, sample):
        if not self.width > 0:
            raise ValueError(f"hounsfield-window: width must be positive, got {self.width}")
        lo, hi = self.level - self.width / 2.0, self.level + self.width / 2.0
        for key in _image_names(sample, self.image):
            data = np.clip(np.asarray(sample.images[key], dtype=np.float64), lo, hi)
            sample.images[key] = ((data - lo) / (hi - lo)).astype(np.float32)
        return sample


def _crop_all(sample, start: np.ndarray, shape: tuple[int, ...]):
    """Crop/pad every part to ``shape`` starting at voxel ``start`` (may be negative)."""
    box = np.asarray(shape)
    first = next(iter(sample.images.values()))
    vol = np.asarray(first.shape[:3])
    src_lo, src_hi = np.maximum(start, 0), np.minimum(start + box, vol)
    dst_lo, dst_hi = src_lo - start, src_hi - start
    overlap = bool(np.all(src_hi > src_lo))
    src = tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))
    dst = tuple(slice(int(a), int(b)) for a, b in zip(dst_lo, dst_hi))
    for kind in ("images", "labels", "masks"):
        parts = getattr(sample, kind)
        for key, arr in parts.items():
            out = np.zeros(tuple(shape) + arr.shape[3:], dtype=arr.dtype)
            if overlap:
                out[dst] = arr[src]
            parts[key] = out
    translation = np.eye(4)
    translation[:3, 3] = start
    sample.affine = np.asarray(sample.affine, dtype=np.float64) @ translation
    return sample


@register_step
@dataclass(frozen=True)
class CropOrPad(Step):
    """Centred crop or zero-pad of every part to ``shape`` voxels (whole voxels, no interpolation)."""

    shape: tuple = (64, 64, 64)
    name: ClassVar[str] = "crop-or-pad"
    source: ClassVar[str] = "centred box, world coordinates kept"

    def __call__(self, sample):
        first = next(iter(sample.images.values()))
        start = (np.asarray(first.shape[:3]) - np.asarray(self.shape)) // 2
        return _crop_all(sample, start.astype(np.int64), tuple(int(s) for s in self.shape))


def _round_up4(shape) -> tuple[int, int, int]:
    return tuple(int(4 * -(-int(s) // 4)) for s in shape)


@register_step
@dataclass(frozen=True)
class CropAroundCentreOfMass(Step):
    """Move the mask's centre of mass to the box centre and crop (U-ReSNet §3.5).

    See :func:`~regseg.datasets.preprocessing.crop_around_centre_of_mass` (whole-voxel
    translation, zero padding, affine updated). ``shape=None`` keeps the volume's shape rounded
    up to a multiple of 4. ``mask`` names the mask whose centre of mass is used; if that mask is
    absent, the step raises :class:`~regseg.datasets.io.DataError` naming it.
    """

    shape: tuple | None = None
    mask: str = "brain"
    name: ClassVar[str] = "crop-around-centre-of-mass"
    source: ClassVar[str] = "U-ReSNet §3.5 (centre of mass to the centre, crop 160x176x208)"

    def __call__(self, sample):
        mask = _need(sample, "masks", self.mask, self)
        if not mask.any():
            raise DataError(f"{sample.sources.get(self.mask, sample.subject_id)}: "
                            f"mask '{self.mask}' is empty")
        first = next(iter(sample.images.values()))
        shape = tuple(int(s) for s in self.shape) if self.shape is not None else \
            _round_up4(first.shape[:3])
        # reuse the tested crop to compute the start voxel, then crop every part the same way
        _, affine = crop_around_centre_of_mass([], mask, shape, sample.affine)
        start = np.rint(np.linalg.solve(np.asarray(sample.affine), affine[:, 3])[:3]).astype(np.int64)
        return _crop_all(sample, start, shape)


@register_step
@dataclass(frozen=True)
class Flip(Step):
    """Flip every part along array ``axes`` (e.g. right knees to left, DeepAtlas §3).

    The affine is updated so that world coordinates are unchanged (only the voxel order flips).
    ``axes`` are spatial axes 0..2 (a negative axis counts back from axis 2; others: ValueError).
    """

    axes: tuple = (0,)
    name: ClassVar[str] = "flip"
    source: ClassVar[str] = "numpy.flip; DeepAtlas §3 (right knees flipped)"

    def __call__(self, sample):
        first = next(iter(sample.images.values()))
        # spatial axes only; a negative axis counts from the third (not the array's last) axis
        axes = tuple(int(a) + 3 if int(a) < 0 else int(a) for a in self.axes)
        if not all(0 <= a < 3 for a in axes):
            raise ValueError(f"flip: axes must be spatial axes in -3..2, got {self.axes}")
        for kind in ("images", "labels", "masks"):
            parts = getattr(sample, kind)
            for key, arr in parts.items():
                parts[key] = np.ascontiguousarray(np.flip(arr, axis=axes))
        flip = np.eye(4)
        for ax in axes:
            flip[ax, ax] = -1.0
            flip[ax, 3] = first.shape[ax] - 1
        sample.affine = np.asarray(sample.affine, dtype=np.float64) @ flip
        return sample


@register_step
@dataclass(frozen=True)
class MapLabels(Step):
    """Map a raw label map to named label maps with :class:`~regseg.datasets.labels.LabelMapping`.

    ``mappings`` = ``{output name: LabelMapping}``, e.g. U-ReSNet's ``structures`` (the 15
    structures of Table 1) and ``segmentation`` (CeblWM, CeblC, LV, §4.1). With
    ``require_present`` every class must occur after cropping (else DataError naming the file).
    When the subject has no ``source`` label map the step does nothing (labels are optional,
    e.g. a user's unlabelled images); code that needs a mapped label map then says so by name.
    ``keep_source=False`` drops the raw map afterwards.
    """

    source_label: str = "labels"
    mappings: dict = field(default_factory=dict)
    require_present: bool = True
    keep_source: bool = False
    name: ClassVar[str] = "map-labels"
    source: ClassVar[str] = "label mapping of the dataset (see regseg.datasets.labels)"

    def __post_init__(self):
        fixed = {k: (v if isinstance(v, LabelMapping) else
                     LabelMapping.from_dict(v["structures"] if "structures" in v else v,
                                            source=f"recipe step map-labels/{k}"))
                 for k, v in dict(self.mappings).items()}
        object.__setattr__(self, "mappings", fixed)

    def __hash__(self):
        return hash((self.source_label, tuple(self.mappings)))

    def __call__(self, sample):
        if self.source_label not in sample.labels:
            return sample
        raw = sample.labels[self.source_label]
        path = sample.sources.get(self.source_label, sample.subject_id)
        for out, mapping in self.mappings.items():
            mapped = mapping.apply(raw)
            if self.require_present:
                check_structures_present(mapped, list(mapping.names), path)
            sample.labels[out] = mapped
            sample.sources[out] = path
        if not self.keep_source and self.source_label not in self.mappings:
            del sample.labels[self.source_label]
        return sample


@dataclass
class Recipe:
    """An ordered list of :class:`Step`; ``recipe(sample) -> sample``.

    Attributes:
        steps: the steps, applied in order.
        name: a short name for reports (e.g. ``"U-ReSNet §3.5"``).
    """

    steps: list = field(default_factory=list)
    name: str = ""

    def __call__(self, sample):
        for step in self.steps:
            sample = step(sample)
        return sample

    def label_names(self) -> dict[str, list[str]]:
        """``{label map name: class names}`` produced by the recipe's :class:`MapLabels` steps."""
        out = {}
        for step in self.steps:
            if isinstance(step, MapLabels):
                out.update({k: list(m.names) for k, m in step.mappings.items()})
        return out

    def describe(self) -> str:
        """One line per step: the step, its parameters and its source."""
        return "\n".join(f"{i + 1}. {s.describe()}" for i, s in enumerate(self.steps))

    def to_dict(self) -> dict:
        """JSON-serialisable ``{"name": ..., "steps": [{"step": name, ...}, ...]}``."""
        return {"name": self.name, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: an unknown step name or parameter (the message names it).
        """
        steps = []
        for raw in data.get("steps", []):
            raw = dict(raw)
            kind = raw.pop("step", None)
            if kind not in STEPS:
                raise ValueError(f"unknown preprocessing step {kind!r}; known: {sorted(STEPS)}")
            params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()}
            try:
                steps.append(STEPS[kind](**params))
            except TypeError as exc:
                raise ValueError(f"preprocessing step {kind!r}: {exc}") from exc
        return cls(steps, data.get("name", ""))

    def __eq__(self, other):
        return isinstance(other, Recipe) and self.to_dict() == other.to_dict()


def ureSnet_recipe(crop_shape: Sequence[int] | None, structures: LabelMapping,
                   segmentation: LabelMapping, *, spacing_mm=None,
                   skull_strip: str = "label") -> Recipe:
    """U-ReSNet §3.5 preprocessing as a recipe.

    Steps: (resample to ``spacing_mm``), find the brain, remove the skull, N(0, 1) over the
    brain, crop ``crop_shape`` voxels around the brain's centre of mass, map the labels to the
    Table 1 ``structures`` and the §4.1 ``segmentation`` classes (each must be present).

    Args:
        crop_shape: box ``(X, Y, Z)`` in RAS voxels, or ``None`` (shape rounded up to 4).
        structures, segmentation: label mappings of the dataset.
        spacing_mm: resample first (mm), or ``None`` to keep the files' grid.
        skull_strip: ``"label"`` (brain = label > 0), ``"brainmask"`` (the subject's ``brain``
            mask, e.g. FreeSurfer ``brainmask.mgz``, else label > 0) or ``"none"`` (z-score over
            the whole volume, crop centred on label > 0).

    Raises:
        ValueError: unknown ``skull_strip``.
    """
    if skull_strip not in ("label", "brainmask", "none"):
        raise ValueError(f"skull_strip must be one of ('label', 'brainmask', 'none'), "
                         f"got {skull_strip!r}")
    steps: list = [] if spacing_mm is None else [Resample(spacing_mm)]
    if skull_strip == "none":
        steps += [MaskFromLabels(mask="foreground"), ZScore(mask=None),
                  CropAroundCentreOfMass(crop_shape, mask="foreground")]
    else:
        steps += [MaskFromLabels(if_missing=skull_strip == "brainmask"), SkullStrip("brain"),
                  ZScore(mask="brain"), CropAroundCentreOfMass(crop_shape, mask="brain")]
    steps.append(MapLabels("labels", {"structures": structures, "segmentation": segmentation}))
    return Recipe(steps, name="U-ReSNet §3.5")


#: U-ReSNet intensity normalisations: "paper" (§3.5, N(0, 1) over the brain) or "released"
UReSNET_NORMALISATIONS = ("paper", "released")


def ureSnet_normalisation(recipe: Recipe, normalisation: str = "paper") -> Recipe:
    """A U-ReSNet recipe with the chosen intensity normalisation.

    ``"paper"`` returns ``recipe`` unchanged (§3.5: z-score over the brain).  ``"released"``
    follows the authors' released code (z-score, clip to ±5, min-max to [0, 1]): after the
    recipe's :class:`ZScore` it inserts :class:`Clip` (-5, 5), :class:`MinMax` and, where the
    z-score used a mask, :class:`SkullStrip` on that mask so that the background is 0, the
    darkest value, as in the released code's skull-stripped images (our :class:`ZScore` writes 0
    outside the brain, which min-max alone would turn into mid-grey).

    Raises:
        ValueError: unknown ``normalisation``, or no z-score step to follow.
    """
    if normalisation not in UReSNET_NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {UReSNET_NORMALISATIONS}, "
                         f"got {normalisation!r}")
    if normalisation == "paper":
        return recipe
    steps, done = [], False
    for step in recipe.steps:
        steps.append(step)
        if isinstance(step, ZScore) and not done:
            steps += [Clip(-5.0, 5.0, image=step.image), MinMax(image=step.image)]
            if step.mask is not None:
                steps.append(SkullStrip(step.mask, image=step.image))
            done = True
    if not done:
        raise ValueError(f"recipe {recipe.name!r} has no z-score step to follow")
    return Recipe(steps, name=f"{recipe.name} + released normalisation (clip ±5, min-max)")


# Steps defined in other modules register themselves when imported; import them here so that
# Recipe.from_dict knows them (e.g. ``python -m regseg register`` on a DeepAtlas run).
from . import alignment as _alignment  # noqa: E402,F401
from . import luna16 as _luna16, lung_ct as _lung_ct  # noqa: E402,F401  (diffeomorphic U-Net)
