"""Recipe steps that align subjects to a reference: affine registration and histogram matching.

DeepAtlas (Xu & Niethammer, MICCAI 2019), §3: knee MRIs "are affinely registered, resampled to
isotropic spacing of 1mm, cropped to 160 x 160 x 160 and intensity normalized to [0, 1]"; brain
MRIs "are 1mm isotropic, affinely-aligned, histogram-matched, and cropped to size
168 x 200 x 169".  The paper does not name the reference or the tool; here:

* :class:`AffineToReference` — SimpleITK affine registration (12 degrees of freedom,
  normalised correlation, multi-resolution, moments initialisation) of the subject's first image to
  a reference image, then every image (linear), label map and mask (nearest neighbour) resampled
  onto a box of the reference's space.  The reference is an image file or ``"mni152"``: the
  skull-stripped MNI152 2009 template shipped with nilearn (nothing is downloaded), the space in
  which the Mindboggle-101 release also provides its volumes.
* :class:`HistogramMatch` — ``skimage.exposure.match_histograms`` of the foreground (non-zero)
  voxels of every image to those of the reference.

Both are registered recipe steps (:func:`~regseg.datasets.recipes.register_step`), so a run's
recipe JSON rebuilds them (``python -m regseg register``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .io import DataError, Volume
from .recipes import Step, _image_names, register_step

__all__ = ["MNI152", "AffineToReference", "HistogramMatch", "reference_volume", "output_grid"]

#: Reference name of the skull-stripped MNI152 2009 template shipped with nilearn (1 mm).
MNI152 = "mni152"


@functools.lru_cache(maxsize=8)
def _reference(reference: str) -> tuple[np.ndarray, np.ndarray]:
    if reference == MNI152:
        from nilearn import datasets as nd  # slow import; only when the template is used

        img = nd.load_mni152_template(resolution=1)
        mask = np.asarray(nd.load_mni152_brain_mask(resolution=1).dataobj) > 0
        import nibabel as nib

        canonical = nib.as_closest_canonical(nib.Nifti1Image(
            np.where(mask, np.asarray(img.dataobj, dtype=np.float32), 0).astype(np.float32),
            img.affine))
        return np.asarray(canonical.dataobj, dtype=np.float32), np.asarray(canonical.affine)
    from .io import load_volume

    vol = load_volume(reference)
    return vol.data.astype(np.float32), np.asarray(vol.affine, dtype=np.float64)


def reference_volume(reference: str) -> Volume:
    """The reference image (RAS+, float32): a file (any format of ``load_volume``) or ``"mni152"``.

    Raises:
        DataError: the file cannot be read (named).
    """
    data, affine = _reference(str(reference))
    return Volume(data.copy(), affine.copy(), str(reference))


def output_grid(reference: Volume, spacing_mm=None, shape=None) -> tuple[tuple, np.ndarray]:
    """The grid ``(shape, affine)`` of a box in the reference's space.

    The box has the reference's axis directions, voxels of ``spacing_mm`` (default: the
    reference's) and ``shape`` voxels (default: the reference's field of view at that spacing),
    centred on the centre of the bounding box of the reference's non-zero voxels (for a
    skull-stripped template: the brain; for an image without zeros: its grid centre).

    Args:
        reference: the reference :class:`~regseg.datasets.io.Volume`.
        spacing_mm: output voxel size (mm), a number or 3 numbers, or ``None``.
        shape: output box ``(X, Y, Z)`` in voxels, or ``None``.
    Returns:
        ``(shape, affine)``: 3 ints and the ``(4, 4)`` voxel -> world (mm, RAS+) matrix.
    """
    ref_spacing = reference.spacing
    spacing = ref_spacing if spacing_mm is None else np.broadcast_to(
        np.asarray(spacing_mm, dtype=np.float64), (3,))
    if shape is None:
        shape = np.maximum(1, np.round(np.asarray(reference.data.shape) * ref_spacing / spacing))
    shape = tuple(int(s) for s in shape)
    nonzero = np.argwhere(reference.data != 0)
    if len(nonzero):
        centre_vox = (nonzero.min(0) + nonzero.max(0)) / 2.0
    else:
        centre_vox = (np.asarray(reference.data.shape) - 1) / 2.0
    directions = reference.affine[:3, :3] / ref_spacing
    centre_world = reference.affine[:3, :3] @ centre_vox + reference.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    affine[:3, 3] = centre_world - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return shape, affine


def _affine_transform(fixed, moving, fov, iterations: int, sampling: float, seed: int,
                      shrink: tuple, metric: str = "correlation"):
    """The registration, single-threaded: ITK's multi-threaded metric sums in an order that
    depends on the threads, so the transform (hence the preprocessing) would vary between runs."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return _register(fixed, moving, fov, iterations, sampling, seed, shrink, metric)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _register(fixed, moving, fov, iterations: int, sampling: float, seed: int, shrink: tuple,
              metric: str):
    import SimpleITK as sitk

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    if metric == "correlation":
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(float(sampling), int(seed))
    method.SetMetricFixedMask(fov)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=int(iterations),
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([f / 2.0 if f > 1 else 0.0 for f in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


@register_step
@dataclass(frozen=True)
class AffineToReference(Step):
    """Affinely register the subject to a reference and resample every part onto a box of it.

    The first image (moving) is registered to the reference (fixed; resampled onto the output
    box, the metric restricted to the reference's field of view) with SimpleITK: a
    12-parameter ``AffineTransform`` initialised by aligning the intensity centres of mass and
    principal axes (``CenteredTransformInitializer``, MOMENTS), the normalised correlation of
    intensities (single-modality T1 MRI; on ``sampling`` of the voxels drawn at random with a
    fixed ``seed``; Mattes mutual information drifted towards a magnified moving image when a
    test image was registered to itself, correlation returned the identity), regular-step gradient
    descent with physical-shift scales, three levels (shrink 4, 2, 1, Gaussian smoothing of
    2, 1, 0 voxels) for boxes of at least 128 voxels a side, else two (shrink 2, 1; smoothing 1,
    0), at the output voxel size (a finer image is first resampled to it), single-threaded so
    that the result is the same in every run.  Every image is then
    resampled linearly, every label map and mask by nearest neighbour, onto the box of
    :func:`output_grid` (``spacing_mm``, ``shape``); values outside the subject's field of view
    are 0.  The sample's affine becomes the box's (world = the reference's space).

    Attributes:
        reference: an image file, or ``"mni152"`` (nilearn's skull-stripped MNI152 2009, 1 mm).
        spacing_mm: output voxel size in mm (``None``: the reference's).
        shape: output box in voxels (``None``: the reference's field of view).
        iterations: optimiser iterations per level.
        sampling: fraction of the reference's voxels sampled for the metric.
        seed: seed of that sampling, >= 1 (SimpleITK reads 0 as "seed from the wall clock",
            which would make the preprocessing differ from run to run).
        metric: ``"correlation"`` (default, single-modality) or ``"mattes"`` (Mattes mutual
            information, 32 bins, for different contrasts).

    Raises (when applied):
        DataError: the registration fails (named subject and reference).

    Source: DeepAtlas §3 ("affinely registered", "affinely-aligned"); the reference and the
    tool are our choice (the paper names neither).
    """

    reference: str = MNI152
    spacing_mm: float | tuple | None = None
    shape: tuple | None = None
    iterations: int = 100
    sampling: float = 0.1
    seed: int = 1
    metric: str = "correlation"
    name: ClassVar[str] = "affine-to-reference"
    source: ClassVar[str] = ("DeepAtlas §3 (affinely registered); SimpleITK affine, "
                             "normalised correlation")

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 1:
            raise ValueError(f"affine-to-reference: seed must be an int >= 1 (0 means the wall "
                             f"clock in SimpleITK), got {self.seed!r}")
        if self.metric not in ("correlation", "mattes"):
            raise ValueError(f"affine-to-reference: metric must be 'correlation' or 'mattes', "
                             f"got {self.metric!r}")
        if not 0 < float(self.sampling) <= 1:
            raise ValueError(f"affine-to-reference: sampling must be in (0, 1], got "
                             f"{self.sampling!r}")

    def __call__(self, sample):
        import SimpleITK as sitk

        from .preprocessing import _to_sitk, resample_to_spacing

        ref = reference_volume(self.reference)
        shape, affine = output_grid(ref, self.spacing_mm, self.shape)
        grid = _to_sitk(np.zeros(shape, dtype=np.float32), affine)
        # the reference on the output box (the metric is computed there), and its field of view
        fixed = sitk.Resample(_to_sitk(ref.data.astype(np.float32), ref.affine), grid,
                              sitk.Transform(), sitk.sitkLinear, 0.0)
        fov = sitk.Resample(_to_sitk(np.ones(ref.data.shape, dtype=np.uint8), ref.affine), grid,
                            sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        # registered at the output voxel size: a finer moving image is resampled to it first
        first = Volume(np.asarray(sample.image, dtype=np.float32), np.asarray(sample.affine),
                       sample.image_path or sample.subject_id)
        out_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        if np.any(first.spacing < out_spacing - 1e-3):
            first = resample_to_spacing(first, np.maximum(first.spacing, out_spacing))
        moving = _to_sitk(first.data.astype(np.float32), first.affine)
        shrink = (4, 2, 1) if min(shape) >= 128 else (2, 1)
        try:
            transform = _affine_transform(fixed, moving, fov, self.iterations, self.sampling,
                                          self.seed, shrink, self.metric)
        except RuntimeError as exc:
            raise DataError(f"{sample.image_path or sample.subject_id}: affine registration to "
                            f"{self.reference} failed ({exc})") from exc
        for kind, label in (("images", False), ("labels", True), ("masks", True)):
            parts = getattr(sample, kind)
            for key, data in parts.items():
                dtype = np.int32 if label else np.float32
                image = _to_sitk(np.asarray(data, dtype=dtype), np.asarray(sample.affine))
                out = sitk.Resample(image, grid, transform,
                                    sitk.sitkNearestNeighbor if label else sitk.sitkLinear, 0)
                values = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
                parts[key] = values.astype(bool) if kind == "masks" else values.astype(dtype)
        sample.affine = affine
        return sample


@register_step
@dataclass(frozen=True)
class HistogramMatch(Step):
    """Match the intensity histogram of every image's foreground to the reference's.

    ``skimage.exposure.match_histograms`` on the non-zero voxels of the image (a skull-stripped
    brain) against the non-zero voxels of the reference; zero voxels stay 0.

    Attributes:
        reference: an image file, or ``"mni152"`` (see :class:`AffineToReference`).
        image: the image to match (``None``: every image).

    Raises (when applied):
        DataError: an image without non-zero voxels (named).

    Source: DeepAtlas §3 (brain MRIs "histogram-matched"; the reference is our choice).
    """

    reference: str = MNI152
    image: str | None = None
    name: ClassVar[str] = "histogram-match"
    source: ClassVar[str] = "DeepAtlas §3 (histogram-matched); skimage.exposure.match_histograms"

    def __call__(self, sample):
        from skimage.exposure import match_histograms

        ref = reference_volume(self.reference).data
        ref_values = ref[ref != 0]
        for key in _image_names(sample, self.image):
            data = np.asarray(sample.images[key], dtype=np.float32)
            inside = data != 0
            if not inside.any():
                raise DataError(f"{sample.sources.get(key, sample.subject_id)}: no non-zero voxel "
                                f"to match to the reference histogram")
            out = np.zeros_like(data)
            out[inside] = match_histograms(data[inside], ref_values).astype(np.float32)
            sample.images[key] = out
        return sample
