"""Learn2Reg displacement files and the Learn2Reg scorer's definitions.

Displacement convention (Learn2Reg, and the suite's): a field ``u`` on the FIXED image's voxel
grid, in voxels, such that fixed voxel ``x`` corresponds to moving voxel ``x + u(x)`` (the
moving image is warped by sampling it at ``x + u(x)``). Component ``c`` is along array axis
``c`` of the file as stored (no reorientation: the scorer reads the arrays with nibabel's
``get_fdata()``).

* :func:`resample_displacement` brings a field predicted on a network grid (e.g. the pyramid's
  64^3) to another grid, typically the original image grid, through world coordinates:
  fixed target voxel ``x_t`` -> world -> fixed network voxel ``x_s``; ``u_s`` interpolated there
  (trilinear, ``scipy.ndimage.map_coordinates(order=1, mode="nearest")``); moving network voxel
  ``x_s + u_s`` -> world -> moving target voxel ``y_t``; ``u_t(x_t) = y_t - x_t``. When fixed and
  moving share a grid and the network grid rescales it by ``s`` per axis, this is trilinear
  upsampling of each component multiplied by ``1 / s`` (voxel units of the finer grid).
* Files: the **2020** submission ``disp_<fixed:04d>_<moving:04d>.npz`` (array ``arr_0``,
  float16, shape ``(3, X/2, Y/2, Z/2)``; written with ``scipy.ndimage.zoom(0.5, order=2)``, read
  back as the 2020 scorer does, ``zoom(2, order=2)``), and the **current**
  ``disp_<fixed>_<moving>.nii.gz`` (float32 ``(X, Y, Z, 3)``, the fixed image's affine).
* :func:`learn2reg_scores`: DSC, HD95, SDlogJ (the scorer's ``+3`` and 2-voxel crop, and the
  plain one), folded fraction and TRE, as the Learn2Reg 2020 scorer defines them
  (``../shared/papers/metric-conventions.md``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import metrics

__all__ = ["resample_displacement", "displacement_name", "write_displacement_2020",
           "read_displacement_2020", "write_displacement_nifti", "read_displacement_nifti",
           "warp_labels_l2r", "learn2reg_scores"]


def _affine(a, what):
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"{what} must be a 4x4 voxel-to-world matrix, got shape {a.shape}")
    return a


def resample_displacement(displacement, fixed_affine, moving_affine, target_shape,
                          target_fixed_affine, target_moving_affine=None) -> np.ndarray:
    """Express a displacement field on another pair of grids (e.g. the original images').

    Args:
        displacement: ``(X, Y, Z, 3)`` voxels of the source grids (fixed source grid -> moving
            source grid), e.g. the network's 64^3 output.
        fixed_affine, moving_affine: ``(4, 4)`` voxel -> world (mm) of the source fixed and
            moving grids.
        target_shape: ``(X', Y', Z')`` of the target fixed grid.
        target_fixed_affine: ``(4, 4)`` of the target fixed grid.
        target_moving_affine: ``(4, 4)`` of the target moving grid (default: the target fixed
            grid's, i.e. a pair on one grid as Learn2Reg gives it).
    Returns:
        float32 ``(X', Y', Z', 3)``: target moving voxel minus target fixed voxel.
    Raises:
        ValueError: a field that is not ``(X, Y, Z, 3)`` or a matrix that is not 4x4.
    """
    u = np.asarray(displacement, dtype=np.float64)
    if u.ndim != 4 or u.shape[-1] != 3:
        raise ValueError(f"displacement must be (X, Y, Z, 3), got {u.shape}")
    a_fs, a_ms = _affine(fixed_affine, "fixed_affine"), _affine(moving_affine, "moving_affine")
    a_ft = _affine(target_fixed_affine, "target_fixed_affine")
    a_mt = a_ft if target_moving_affine is None else _affine(target_moving_affine,
                                                             "target_moving_affine")
    shape = tuple(int(s) for s in target_shape)
    x_t = np.indices(shape, dtype=np.float64).reshape(3, -1)
    to_source = np.linalg.solve(a_fs, a_ft)              # target fixed voxel -> source fixed voxel
    x_s = to_source[:3, :3] @ x_t + to_source[:3, 3:]
    u_s = np.stack([ndimage.map_coordinates(u[..., c], x_s, order=1, mode="nearest")
                    for c in range(3)])
    to_target = np.linalg.solve(a_mt, a_ms)              # source moving voxel -> target moving voxel
    y_t = to_target[:3, :3] @ (x_s + u_s) + to_target[:3, 3:]
    return np.moveaxis((y_t - x_t).reshape(3, *shape), 0, -1).astype(np.float32)


def displacement_name(fixed_id, moving_id, layout: str = "nifti") -> str:
    """File name of a pair's displacement in a Learn2Reg submission.

    Args:
        fixed_id, moving_id: case ids: ints, or strings whose first number is taken
            (``case_001_exp`` -> ``0001``, ``LungCT_0001_0000`` -> ``0001``); a string without a
            number is used as it is (``baseline``).
        layout: ``"2020"`` -> ``disp_<fixed:04d>_<moving:04d>.npz``; ``"nifti"`` (current
            layout) -> ``disp_<fixed:04d>_<moving:04d>.nii.gz``.
    Raises:
        ValueError: an unknown layout.
    """
    import re

    def number(v):
        if isinstance(v, (int, np.integer)):
            return f"{int(v):04d}"
        m = re.search(r"(\d+)", str(v))
        return f"{int(m.group(1)):04d}" if m else re.sub(r"[^A-Za-z0-9-]", "-", str(v))

    if layout not in ("2020", "nifti"):
        raise ValueError(f"layout must be '2020' or 'nifti', got {layout!r}")
    ext = "npz" if layout == "2020" else "nii.gz"
    return f"disp_{number(fixed_id)}_{number(moving_id)}.{ext}"


def write_displacement_2020(path, displacement) -> Path:
    """Write the Learn2Reg 2020 submission file of a full-resolution field.

    The field ``(X, Y, Z, 3)`` (voxels, even sizes) is halved per component with
    ``scipy.ndimage.zoom(0.5, order=2)`` and stored as ``arr_0`` float16 ``(3, X/2, Y/2, Z/2)``
    in a compressed npz (the 2020 format; the scorer checks the dtype and shape).

    Raises:
        ValueError: a field that is not ``(X, Y, Z, 3)`` or odd sizes (the scorer doubles the
            half-resolution shape).
    """
    from regseg.fileio import atomic_path

    u = np.asarray(displacement, dtype=np.float32)
    if u.ndim != 4 or u.shape[-1] != 3:
        raise ValueError(f"{path}: displacement must be (X, Y, Z, 3), got {u.shape}")
    if any(s % 2 for s in u.shape[:3]):
        raise ValueError(f"{path}: the 2020 format stores half resolution; sizes must be even, "
                         f"got {u.shape[:3]}")
    half = np.stack([ndimage.zoom(u[..., c], 0.5, order=2) for c in range(3)]).astype(np.float16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, half)
    return path


def read_displacement_2020(path) -> np.ndarray:
    """Read a 2020 npz as the 2020 scorer does: ``arr_0`` as float32, ``zoom(2, order=2)``.

    Returns:
        float32 ``(X, Y, Z, 3)``.
    Raises:
        ValueError: a file without ``arr_0`` of shape ``(3, x, y, z)`` (named).
    """
    with np.load(path) as data:
        if "arr_0" not in data:
            raise ValueError(f"{path}: no arr_0 in the npz file")
        half = data["arr_0"].astype(np.float32)
    if half.ndim != 4 or half.shape[0] != 3:
        raise ValueError(f"{path}: arr_0 must be (3, x, y, z), got {half.shape}")
    return np.stack([ndimage.zoom(half[c], 2, order=2) for c in range(3)], axis=-1)


def write_displacement_nifti(path, displacement, affine) -> Path:
    """Write ``disp_<fixed>_<moving>.nii.gz``: float32 ``(X, Y, Z, 3)`` with the fixed affine.

    Raises:
        ValueError: a field that is not ``(X, Y, Z, 3)``.
    """
    import nibabel as nib

    from regseg.fileio import atomic_path

    u = np.asarray(displacement, dtype=np.float32)
    if u.ndim != 4 or u.shape[-1] != 3:
        raise ValueError(f"{path}: displacement must be (X, Y, Z, 3), got {u.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(nib.Nifti1Image(u, np.asarray(affine, dtype=np.float64)), str(tmp))
    return path


def read_displacement_nifti(path) -> np.ndarray:
    """Read a current-layout displacement as the scorer does (``get_fdata()``, no reorientation).

    Returns:
        float32 ``(X, Y, Z, 3)``.
    """
    import nibabel as nib

    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)


def warp_labels_l2r(moving_labels, displacement) -> np.ndarray:
    """The scorer's label warp: ``map_coordinates(moving, identity + u, order=0)``.

    Nearest neighbour, 0 outside the moving volume (scipy's default ``mode="constant"``).

    Args:
        moving_labels: int ``(X, Y, Z)``.
        displacement: ``(X', Y', Z', 3)`` on the fixed grid.
    Returns:
        int32 ``(X', Y', Z')``.
    """
    u = np.asarray(displacement, dtype=np.float64)
    coords = np.indices(u.shape[:3], dtype=np.float64) + np.moveaxis(u, -1, 0)
    return ndimage.map_coordinates(np.asarray(moving_labels), coords, order=0).astype(np.int32)


def learn2reg_scores(displacement, *, fixed_labels=None, moving_labels=None, labels=(),
                     spacing=(1.0, 1.0, 1.0), mask=None, fixed_points=None,
                     moving_points=None) -> dict:
    """One pair's scores as the Learn2Reg 2020 scorer computes them, plus the plain variants.

    Args:
        displacement: ``(X, Y, Z, 3)`` voxels on the fixed grid (fixed and moving share it).
        fixed_labels, moving_labels: int ``(X, Y, Z)`` label maps, or ``None`` (no DSC / HD95).
        labels: label ids to score (the scorer skips a label absent from the fixed or the
            moving map, and averages the others).
        spacing: voxel size in mm (TRE; HD95 in mm).
        mask: bool ``(X, Y, Z)`` of the fixed image for SDlogJ and folding (Task 2: the lungs).
        fixed_points, moving_points: ``(N, 3)`` voxel indices of corresponding landmarks.
    Returns:
        ``{"DSC", "HD95" (voxels, the scorer's unit spacing), "HD95 mm", "Dice <id>", ...,
        "SDlogJ L2R" (+3, 2-voxel crop), "SDlogJ" (plain), "folding fraction",
        "TRE mm", "TRE landmarks"}``; absent keys for absent inputs. DSC / HD95 are NaN when no
        label is present in both maps.

    Source: Learn2Reg 2020 scorer: Dice and DeepMind surface-distance HD95 on labels warped with
    ``map_coordinates(order=0)``; ``std(log(clip(det J + 3, 1e-9, 1e9)))`` on the 2-voxel
    cropped field (masked for Task 2); TRE from fixed landmarks moved by the field
    (``map_coordinates`` order 3) to the moving landmarks, times the spacing.
    """
    u = np.asarray(displacement, dtype=np.float64)
    out = {}
    if fixed_labels is not None and moving_labels is not None:
        fixed_labels = np.asarray(fixed_labels)
        moving_labels = np.asarray(moving_labels)
        warped = warp_labels_l2r(moving_labels, u)
        dices, hds, hds_mm = [], [], []
        for k in labels:
            if not (fixed_labels == k).any() or not (moving_labels == k).any():
                out[f"Dice {k}"] = np.nan
                continue
            d = float(metrics.dice(warped, fixed_labels, [k], empty=0.0)[0])
            out[f"Dice {k}"] = d
            dices.append(d)
            hds.append(metrics.hd95(fixed_labels == k, warped == k, spacing=1.0))
            hds_mm.append(metrics.hd95(fixed_labels == k, warped == k, spacing=spacing))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["DSC"] = float(np.mean(dices)) if dices else np.nan
            out["HD95"] = float(np.nanmean(hds)) if hds else np.nan
            out["HD95 mm"] = float(np.nanmean(hds_mm)) if hds_mm else np.nan
    jac = metrics.jacobian_determinant(u, displacement=True)
    out["SDlogJ L2R"] = metrics.sd_log_jacobian(jac, mask=mask, learn2reg=True)
    out["SDlogJ"] = metrics.sd_log_jacobian(jac, mask=mask)
    out["folding fraction"] = metrics.folding_fraction(jac, mask=mask)
    if fixed_points is not None and moving_points is not None:
        errors = metrics.tre(fixed_points, moving_points, u, spacing,
                             **metrics.L2R_TRE_INTERPOLATION)
        out["TRE mm"] = float(np.mean(errors))
        out["TRE landmarks"] = errors
    return out
