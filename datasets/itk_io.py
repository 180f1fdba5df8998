"""ITK image files (MetaImage ``.mhd``/``.raw`` and ``.mha``, NRRD) read with SimpleITK.

LUNA16 ships its CT scans and its ``seg-lungs-LUNA16`` lung masks as MetaImage ``.mhd`` headers
with ``.raw`` voxel data (Bouabid et al. §4.2 "We use the SimpleITK library to read the file");
the elastix lung CT pair of the shared test data is ``.mha``. :func:`read_itk_image` turns such a
file into a ``nibabel.Nifti1Image`` whose affine maps voxel indices to **RAS+** world millimetres,
so that :func:`regseg.datasets.io.load_volume` then treats it like any NIfTI file (canonical
RAS+ reorientation, validation).

ITK geometry is LPS+: world point = ``origin + direction @ (spacing * index)``, index ``(i, j, k)``
along the file's x, y, z axes; RAS+ flips the signs of the first two world coordinates.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["ITK_SUFFIXES", "is_itk_path", "read_itk_image", "itk_affine_ras"]

#: File name endings read through SimpleITK.
ITK_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr")

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def is_itk_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` ends in one of :data:`ITK_SUFFIXES` (case-insensitive)."""
    return str(path).lower().endswith(ITK_SUFFIXES)


def itk_affine_ras(spacing, origin, direction) -> np.ndarray:
    """Voxel -> RAS+ world (mm) ``(4, 4)`` matrix of an ITK image's geometry.

    Args:
        spacing: 3 voxel sizes (mm) along the image's index axes.
        origin: LPS world position (mm) of voxel ``(0, 0, 0)``.
        direction: 9 numbers, the 3x3 direction cosine matrix in row-major order (column ``j``
            is the LPS direction of index axis ``j``), as ``sitk.Image.GetDirection()``.
    Returns:
        ``A`` with ``A @ [i, j, k, 1] = [R, A, S, 1]``.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ d * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def read_itk_image(path: str | os.PathLike):
    """Read a 3-D scalar ITK image (``.mhd``, ``.mha``, ``.nrrd``) as a ``nibabel.Nifti1Image``.

    Args:
        path: the file (a ``.mhd`` header must have its ``.raw``/``.zraw`` data beside it).
    Returns:
        ``nibabel.Nifti1Image`` with the voxel array in the file's index order ``(i, j, k)``
        (x fastest in the file) and the RAS+ affine of :func:`itk_affine_ras`; its data type is
        the file's.
    Raises:
        DataError: (naming the file) SimpleITK cannot read it (corrupt header, missing ``.raw``
            file, unknown format), or it is not a 3-D scalar image.
    """
    import nibabel as nib
    import SimpleITK as sitk

    from .io import DataError

    path = str(path)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "rror" in line or "annot" in line), "")
        raise DataError(f"{path}: not a readable ITK image (corrupt header or missing voxel "
                        f"data file?){': ' + detail.strip() if detail else ''}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: expected a 3-D scalar volume, got a {image.GetDimension()}-D "
                        f"image with {image.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    data = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    affine = itk_affine_ras(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return nib.Nifti1Image(data, affine)
