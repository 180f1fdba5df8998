"""Reading and writing 3-D medical volumes in the suite's one canonical orientation.

Every volume that enters the suite goes through :func:`load_volume`, which

* reads NIfTI (``.nii``, ``.nii.gz``) and FreeSurfer MGH (``.mgz``/``.mgh``) files with nibabel,
* reorients the voxel array to **RAS+** (first array axis points to the subject's Right, second
  to Anterior, third to Superior) with :func:`nibabel.as_closest_canonical`, so that the same
  array axis means the same anatomical direction for every file, whatever the scanner or the
  software that wrote it (IXI files are stored PSR, FreeSurfer ``.mgz`` files LIA),
* validates the content and raises :class:`DataError` with a message that names the file
  and the problem.

World coordinates are in millimetres (scanner / RAS world of nibabel), voxel indices are in voxels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from regseg.fileio import atomic_path

__all__ = ["DataError", "Volume", "load_volume", "check_same_grid", "save_volume"]


class DataError(ValueError):
    """A data file is missing, unreadable or has content the suite cannot use.

    The message always names the offending file path(s) and the problem, so that a user can
    fix the data without reading a traceback.
    """


@dataclass
class Volume:
    """A 3-D volume on a voxel grid with its geometry.

    Attributes:
        data: array of shape ``(X, Y, Z)`` in RAS+ voxel order (float32 for images, int32 for
            label maps).
        affine: ``(4, 4)`` float64 matrix mapping voxel indices ``(i, j, k, 1)`` to world
            coordinates in mm (RAS+ world, nibabel convention).
        path: the file the volume was read from (used in error messages).
    """

    data: np.ndarray
    affine: np.ndarray
    path: str

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis, shape ``(3,)``: norms of the affine's columns."""
        return np.sqrt((np.asarray(self.affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`data` in voxels."""
        return tuple(self.data.shape)


def _read_array(img, path: str, label: bool) -> np.ndarray:
    """Read the voxel values of a nibabel image; any failure becomes a DataError naming ``path``."""
    try:
        if label:
            # float64 represents every integer up to 2**53 exactly, so integrality can be checked.
            return np.asarray(img.get_fdata(dtype=np.float64))
        return np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated gzip stream, short data block, bad dtype, ...
        raise DataError(f"{path}: cannot read the voxel data (file truncated or corrupt?): "
                        f"{type(exc).__name__}: {exc}") from exc


def load_volume(path: str | os.PathLike, *, label: bool = False) -> Volume:
    """Load a 3-D image or label map and reorient it to the canonical RAS+ orientation.

    Source: suite convention (one canonical orientation, RAS+, for every dataset); the
    preprocessing that follows is U-ReSNet §3.5 (Estienne et al., MICCAI 2019).

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.mgz`` or ``.mgh`` file (anything nibabel reads), or
            an ITK ``.mhd`` / ``.mha`` / ``.nrrd`` file (read with SimpleITK, LPS -> RAS; e.g.
            LUNA16 scans, :mod:`regseg.datasets.itk_io`).
        label: ``True`` for a label (segmentation) map: values must be whole numbers and not all
            zero; the result is int32. ``False`` for an intensity image; the result is float32.

    Returns:
        :class:`Volume` with ``data`` of shape ``(X, Y, Z)`` voxels in RAS+ order (trailing
        singleton dimensions such as ``(X, Y, Z, 1)`` are squeezed) and ``affine`` (4x4,
        voxel -> world mm) updated for the reorientation, so world coordinates of every voxel are
        unchanged.

    Raises:
        DataError: (message names the file) the file does not exist; it is not a readable image
            (corrupt, truncated, unknown format); it is not 3-D after squeezing trailing
            singleton axes; it contains NaN or infinite values; for ``label=True`` it contains
            non-integer values, values outside the int32 range, or no non-zero voxel at all.
    """
    from .itk_io import is_itk_path, read_itk_image

    path_str = str(path)
    if not os.path.isfile(path_str):
        raise DataError(f"{path_str}: file not found")
    try:
        img = read_itk_image(path_str) if is_itk_path(path_str) else nib.load(path_str)
    except DataError:
        raise
    except Exception as exc:  # ImageFileError, gzip.BadGzipFile, EOFError, OSError ...
        raise DataError(f"{path_str}: not a readable NIfTI/MGH image (corrupt file or unknown "
                        f"format): {type(exc).__name__}: {exc}") from exc

    data = _read_array(img, path_str, label)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path_str}: expected a 3-D volume, got an array of shape "
                        f"{tuple(img.shape)}")
    check_geometry(img.affine, path_str)
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - np.count_nonzero(finite))
        raise DataError(f"{path_str}: contains {n_bad} NaN or infinite voxel value(s)")

    if label:
        if not np.array_equal(data, np.round(data)):
            raise DataError(f"{path_str}: label map contains non-integer values "
                            f"(is this an intensity image rather than a label map?)")
        info = np.iinfo(np.int32)
        if data.min() < info.min or data.max() > info.max:
            raise DataError(f"{path_str}: label values outside the int32 range")
        data = data.astype(np.int32)
        if not data.any():
            raise DataError(f"{path_str}: label map is empty (every voxel is 0)")
    else:
        data = data.astype(np.float32, copy=False)

    # Reorient through a NIfTI wrapper: as_closest_canonical permutes/flips the array axes to
    # RAS+ and updates the affine accordingly (no interpolation).
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    out = np.ascontiguousarray(np.asanyarray(canonical.dataobj)).astype(data.dtype, copy=False)
    return Volume(data=out, affine=np.array(canonical.affine, dtype=np.float64), path=path_str)


#: Accepted voxel sizes in mm (min, max); anything else is refused as a likely header error.
#: Widen it with the runners' ``--spacing-range LO HI`` (or by assigning this name).
SPACING_RANGE_MM: tuple[float, float] = (0.1, 10.0)


def check_geometry(affine, path: str) -> None:
    """Refuse a singular (non-invertible) affine or a voxel size outside :data:`SPACING_RANGE_MM`.

    Args:
        affine: ``(4, 4)`` voxel -> world (mm) matrix.
        path: the file, for the message.
    Raises:
        DataError: naming the file and the problem.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise DataError(f"{path}: invalid affine (shape {a.shape} or non-finite values)")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise DataError(f"{path}: singular affine (voxel axes are not independent); the "
                        f"header's geometry is broken")
    spacing = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    lo, hi = SPACING_RANGE_MM
    if spacing.min() < lo or spacing.max() > hi:
        raise DataError(f"{path}: voxel size {np.round(spacing, 4).tolist()} mm is outside "
                        f"{lo}-{hi} mm (a header error?); pass --spacing-range to accept it")


def check_same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> None:
    """Check that two volumes lie on the same voxel grid (e.g. an image and its label map).

    Args:
        a, b: volumes to compare.
        atol: absolute tolerance in mm for spacings and affine entries.

    Raises:
        DataError: naming BOTH files, if the shapes (voxels), the spacings (mm) or the affines
            (voxel -> world mm) differ.
    """
    where = f"{a.path} and {b.path}"
    if a.data.shape[:3] != b.data.shape[:3]:
        raise DataError(f"{where}: shape mismatch {tuple(a.data.shape[:3])} vs "
                        f"{tuple(b.data.shape[:3])} voxels")
    if not np.allclose(a.spacing, b.spacing, atol=atol, rtol=0):
        raise DataError(f"{where}: spacing mismatch {np.round(a.spacing, 4).tolist()} vs "
                        f"{np.round(b.spacing, 4).tolist()} mm")
    if not np.allclose(a.affine, b.affine, atol=atol, rtol=0):
        raise DataError(f"{where}: affine (voxel-to-world) mismatch:\n{np.round(a.affine, 4)}\n"
                        f"vs\n{np.round(b.affine, 4)}")


def _nifti_suffix(name: str) -> str:
    low = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if low.endswith(suffix):
            return suffix
    raise ValueError(f"{name}: save_volume writes NIfTI only; use a .nii or .nii.gz file name")


def save_volume(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a volume to NIfTI atomically (temporary file in the same folder, then ``os.replace``).

    A reader never sees a half-written file, and an interrupted write leaves the previous file
    (if any) intact.

    Args:
        path: destination ending in ``.nii`` or ``.nii.gz`` (parent folders are created).
        data: ``(X, Y, Z)`` volume, or ``(X, Y, Z, C)`` vector field (e.g. a displacement field,
            last axis = components). Stored with its own dtype, except bool -> uint8,
            int64 -> int32 and float64 -> float32.
        affine: ``(4, 4)`` voxel -> world (mm) matrix.

    Returns:
        The destination path.

    Raises:
        ValueError: ``data`` is not 3-D or 4-D, ``affine`` is not 4x4, or the name is not NIfTI.
    """
    path = Path(path)
    suffix = _nifti_suffix(path.name)
    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        raise ValueError(f"{path}: save_volume expects a 3-D volume or a 4-D vector field, "
                         f"got shape {arr.shape}")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"{path}: affine must be 4x4, got shape {aff.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(arr, aff)
    img.set_data_dtype(arr.dtype)
    with atomic_path(path, suffix=suffix) as tmp:  # nibabel picks gzip from the extension
        nib.save(img, tmp)
    return path
