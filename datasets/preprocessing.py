"""Preprocessing of U-ReSNet (Estienne et al., MICCAI 2019, §3.5).

The paper: "we performed some additional pre-processing of the images including N(0,1)
normalization, cropping of the images to a 160 x 176 x 208 and translation of the volumes such that
the center of mass of the brain is moved to the center of the volume."

Crop size and orientation
-------------------------
The authors read FreeSurfer's conformed ``.mgz`` arrays directly. Those arrays are in **LIA**
voxel order (first axis Left, second Inferior, third Anterior, 1 mm, 256^3). So the paper's crop
160 x 176 x 208 is: left-right 160 voxels, superior-inferior 176, anterior-posterior 208.
This suite reorients every volume to RAS+ (see :mod:`regseg.datasets.io`), where the axes are
(left-right, anterior-posterior, superior-inferior); the same physical box is therefore
:data:`PAPER_CROP_RAS_1MM` = ``(160, 208, 176)`` voxels at 1 mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .io import Volume

__all__ = [
    "PAPER_CROP_RAS_1MM",
    "PAPER_CROP_LIA_1MM",
    "normalise_zscore",
    "crop_around_centre_of_mass",
    "resample_to_spacing",
    "crop_shape_for_spacing",
    "resample_onto",
]

#: The paper's crop as written (U-ReSNet §3.5), in FreeSurfer's conformed LIA voxel order, 1 mm voxels.
PAPER_CROP_LIA_1MM: tuple[int, int, int] = (160, 176, 208)
#: The same box in this suite's canonical RAS+ voxel order (left-right, anterior-posterior,
#: inferior-superior), 1 mm voxels: LIA (160, 176, 208) -> RAS (160, 208, 176).
PAPER_CROP_RAS_1MM: tuple[int, int, int] = (160, 208, 176)


def normalise_zscore(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """N(0, 1) intensity normalisation over a mask (U-ReSNet §3.5, "N(0,1) normalization").

    Args:
        image: ``(X, Y, Z)`` intensities (any real dtype).
        mask: ``(X, Y, Z)`` brain mask; voxels where ``mask`` is non-zero are normalised.

    Returns:
        float32 array of shape ``(X, Y, Z)``: ``(image - mean) / std`` inside the mask, where mean
        and (population, ddof=0) standard deviation are taken over the mask voxels; 0 outside.

    Raises:
        ValueError: shapes differ, the mask is empty, or the image is constant inside the mask.
    """
    image = np.asarray(image)
    mask = np.asarray(mask).astype(bool, copy=False)
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} and mask shape {mask.shape} differ")
    if not mask.any():
        raise ValueError("cannot normalise over an empty mask")
    values = image[mask].astype(np.float64)
    mean = values.mean()
    std = values.std()
    if not std > 0:
        raise ValueError("image is constant inside the mask; cannot scale to unit variance")
    out = np.zeros(image.shape, dtype=np.float32)
    out[mask] = ((values - mean) / std).astype(np.float32)
    return out


def crop_around_centre_of_mass(
    arrays: Sequence[np.ndarray],
    mask: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Translate the mask's centre of mass to the centre of a box and crop (U-ReSNet §3.5).

    Implements the paper's "translation of the volumes such that the center of mass of the brain
    is moved to the center of the volume" together with the "cropping to 160x176x208". The
    translation is by a whole number of voxels (the centre of mass is rounded), so no
    interpolation happens: output voxel ``j`` is input voxel ``start + j`` with

        ``start = floor(com - (shape - 1) / 2 + 0.5)``  (per axis, in voxels),

    i.e. the centre of mass lands within +-0.5 voxel of the geometric box centre
    ``(shape - 1) / 2``. Where the box leaves the input volume the output is zero-padded.

    Args:
        arrays: arrays of shape ``(X, Y, Z, ...)`` (same first three axes as ``mask``) to crop
            identically, e.g. ``[image, label]``; dtypes are kept.
        mask: ``(X, Y, Z)`` brain mask (non-zero = brain); its binary centre of mass
            (``scipy.ndimage.center_of_mass``) is used.
        shape: output box ``(x, y, z)`` in voxels.
        affine: ``(4, 4)`` voxel -> world (mm) matrix of the input grid.

    Returns:
        ``(cropped, new_affine)``: the cropped arrays, each of shape ``shape + trailing axes``,
        and ``new_affine = affine @ T(start)`` (T = translation by ``start`` voxels), so the world
        coordinate of every kept voxel is exactly preserved.

    Raises:
        ValueError: the mask is empty, ``shape`` is not 3 positive integers, or an array's first
            three axes differ from the mask's.
    """
    mask = np.asarray(mask)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"crop shape must be 3 positive integers, got {shape}")
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {mask.shape}")
    binary = mask != 0
    if not binary.any():
        raise ValueError("cannot crop around the centre of mass of an empty mask")
    com = np.asarray(ndimage.center_of_mass(binary), dtype=np.float64)
    box = np.asarray(shape)
    start = np.floor(com - (box - 1) / 2.0 + 0.5).astype(np.int64)
    stop = start + box

    vol = np.asarray(mask.shape)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(stop, vol)
    dst_lo = src_lo - start
    dst_hi = src_hi - start
    overlap = bool(np.all(src_hi > src_lo))
    src = tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))
    dst = tuple(slice(int(a), int(b)) for a, b in zip(dst_lo, dst_hi))

    cropped = []
    for arr in arrays:
        arr = np.asarray(arr)
        if arr.shape[:3] != mask.shape:
            raise ValueError(f"array of shape {arr.shape} does not match the mask shape {mask.shape}")
        out = np.zeros(shape + arr.shape[3:], dtype=arr.dtype)
        if overlap:
            out[dst] = arr[src]
        cropped.append(out)

    translation = np.eye(4)
    translation[:3, 3] = start
    new_affine = np.asarray(affine, dtype=np.float64) @ translation
    return cropped, new_affine


def _as_spacing3(spacing_mm) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if not np.all(sp > 0):
        raise ValueError(f"spacing must be positive, got {spacing_mm}")
    return sp


# RAS (nibabel) <-> LPS (ITK) world coordinates: flip x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = _RAS_TO_LPS @ (affine[:3, :3] / spacing)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    # SimpleITK's array order is (z, y, x): transpose so that ITK index (i, j, k) = our data[i, j, k].
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(spacing.tolist())
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin(origin.tolist())
    return img


def _from_sitk(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    spacing = np.asarray(img.GetSpacing())
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction * spacing
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(img.GetOrigin())
    return np.ascontiguousarray(data), affine


def resample_to_spacing(volume: Volume, spacing_mm, *, label: bool = False) -> Volume:
    """Resample a volume to a new voxel size with SimpleITK, keeping its world geometry.

    Used where a reproduction works at a different resolution than the data (e.g. 1 mm data at 2 mm);
    the paper itself works at 1 mm (U-ReSNet §3.5).

    The axes' directions are kept, and the physical field of view (the outer edges of the voxel
    grid) is kept: new size ``n' = max(1, round(n * s / s'))`` per axis, and the first voxel's
    centre moves by ``(s' - s) / 2`` mm along each axis so that the grid's corner stays put
    (e.g. 1 mm -> 2 mm: new voxel 0 is centred between old voxels 0 and 1). Values outside the
    input grid are 0.

    Args:
        volume: input :class:`Volume`, data ``(X, Y, Z)``.
        spacing_mm: new voxel size in mm, a scalar or 3 values (per array axis).
        label: ``True`` for label maps (nearest-neighbour interpolation, int32 output);
            ``False`` for images (linear interpolation, float32 output).

    Returns:
        A new :class:`Volume` (same ``path``) with the new data and affine (voxel -> world mm).

    Raises:
        ValueError: non-positive spacing or a volume that is not 3-D.
    """
    if volume.data.ndim != 3:
        raise ValueError(f"{volume.path}: resample_to_spacing expects a 3-D volume")
    new_sp = _as_spacing3(spacing_mm)
    old_sp = volume.spacing
    dtype = np.int32 if label else np.float32
    image = _to_sitk(np.asarray(volume.data, dtype=dtype), np.asarray(volume.affine, dtype=np.float64))
    old_size = np.asarray(volume.data.shape, dtype=np.float64)
    new_size = np.maximum(1, np.round(old_size * old_sp / new_sp)).astype(int)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    new_origin = np.asarray(image.GetOrigin()) + direction @ ((new_sp - old_sp) / 2.0)

    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(new_sp.tolist())
    resampler.SetSize([int(s) for s in new_size])
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetOutputOrigin(new_origin.tolist())
    resampler.SetTransform(sitk.Transform())
    resampler.SetDefaultPixelValue(0)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if label else sitk.sitkLinear)
    out = resampler.Execute(image)
    data, affine = _from_sitk(out)
    return Volume(data=data.astype(dtype, copy=False), affine=affine, path=volume.path)


def crop_shape_for_spacing(shape_at_1mm: Sequence[int], spacing_mm) -> tuple[int, int, int]:
    """Crop box in voxels that keeps a 1 mm crop's field of view (mm) at another voxel size.

    Each side becomes ``shape_at_1mm / spacing_mm`` voxels, rounded to the nearest multiple of 4
    (at least 4) because the U-ReSNet encoder downsamples twice by 2 (§3.4).
    Example: ``(160, 208, 176)`` at 2 mm -> ``(80, 104, 88)``.

    Args:
        shape_at_1mm: box in voxels at 1 mm (i.e. in mm).
        spacing_mm: target voxel size in mm, scalar or 3 values.

    Returns:
        Tuple of 3 ints, each a multiple of 4 (voxels at ``spacing_mm``).

    Raises:
        ValueError: non-positive spacing or a shape that is not 3 values.
    """
    shape = np.asarray(shape_at_1mm, dtype=np.float64)
    if shape.shape != (3,):
        raise ValueError(f"shape_at_1mm must have 3 values, got {shape_at_1mm}")
    sp = _as_spacing3(spacing_mm)
    n = np.maximum(4, 4 * np.round(shape / sp / 4.0)).astype(int)
    return tuple(int(v) for v in n)


def resample_onto(volume: Volume, reference: Volume, *, label: bool = False) -> Volume:
    """Resample ``volume`` onto ``reference``'s voxel grid in world coordinates (SimpleITK).

    No registration happens: each reference voxel takes the value of ``volume`` at the same world
    point (mm), linear for images, nearest neighbour for labels; 0 outside ``volume``.

    Args:
        volume: the volume to resample, data ``(X, Y, Z)``.
        reference: the grid to resample onto (its data only gives the shape).
        label: nearest neighbour and int32 output (labels, masks) instead of linear float32.

    Returns:
        A :class:`Volume` with ``reference``'s shape and affine (``path`` of ``volume``).

    Raises:
        ValueError: a volume that is not 3-D.
    """
    if volume.data.ndim != 3 or reference.data.ndim != 3:
        raise ValueError(f"{volume.path}: resample_onto expects 3-D volumes")
    dtype = np.int32 if label else np.float32
    moving = _to_sitk(np.asarray(volume.data, dtype=dtype), np.asarray(volume.affine, np.float64))
    ref = _to_sitk(np.zeros(reference.data.shape, dtype=dtype),
                   np.asarray(reference.affine, np.float64))
    out = sitk.Resample(moving, ref, sitk.Transform(),
                        sitk.sitkNearestNeighbor if label else sitk.sitkLinear, 0)
    data, _ = _from_sitk(out)
    return Volume(data=data.astype(dtype, copy=False),
                  affine=np.asarray(reference.affine, dtype=np.float64), path=volume.path)
