"""Apply a trained run to a user's own pair of images: ``python -m regseg register``.

::

    python -m regseg register --run runs/ureSnet/quick-ixi10/ureSnet \\
        --moving m.nii.gz --fixed f.nii.gz --out DIR [--moving-labels ml.nii.gz] \\
        [--fixed-labels fl.nii.gz]

The run folder's ``regseg_run.json`` (written when the method finished training) names the
reproduction, the method, the model settings and the preprocessing recipe. Both images go
through that recipe (resampled first to the training voxel size if they differ), the network
registers the preprocessed pair, and the result is mapped back, in world coordinates, onto the
fixed image's own voxel grid. Written into ``--out``, all in the fixed image's geometry (its
affine, its voxel order):

* ``warped.nii.gz`` — the moving image (its original intensities) resampled (linear);
* ``displacement_mm.nii.gz`` — ``(X, Y, Z, 3)``: for each fixed voxel at world point ``p``, the
  moving world point minus ``p``, components along the RAS+ world axes, in mm;
* ``jacobian_determinant.nii.gz`` — det of d(moving world point)/d(fixed world point);
* ``warped_labels.nii.gz`` — the moving label map (original ids, nearest neighbour), when
  ``--moving-labels`` is given.

Outside the preprocessed crop the displacement of the nearest crop voxel is used. With both
label maps the Dice per structure of the run's evaluation label map is printed (computed on the
preprocessed grid, labels warped by the argmax rule as in the evaluation).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np

__all__ = ["register_files", "main"]

_LABEL_LIKE_MAX_VALUES = 64
_LABEL_LIKE_SAME_NEIGHBOUR = 0.6


def _check_intensity_image(vol, role: str) -> None:
    """Refuse a label map given as an intensity image (whole numbers, piecewise constant)."""
    from regseg.datasets.io import DataError

    data = vol.data
    if not np.allclose(data, np.round(data)):
        return
    values, counts = np.unique(data, return_counts=True)
    mode = values[counts.argmax()]
    inside = data[:-1] != mode
    same = float((data[1:] == data[:-1])[inside].mean()) if inside.any() else 1.0
    if len(values) <= _LABEL_LIKE_MAX_VALUES or same >= _LABEL_LIKE_SAME_NEIGHBOUR:
        raise DataError(f"{vol.path}: the {role} image looks like a label map, not an intensity "
                        f"image ({len(values)} whole-number values, {same:.0%} of voxels equal "
                        f"to their neighbour); pass label maps with --{role}-labels")


def _to_original_orientation(data: np.ndarray, canonical_affine, original_affine):
    import nibabel as nib

    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(canonical_affine),
        nib.orientations.io_orientation(original_affine))
    img = nib.Nifti1Image(data, canonical_affine).as_reoriented(ornt)
    return np.asarray(img.dataobj), img.affine


def register_files(run_dir, moving, fixed, out_dir, *, moving_labels=None, fixed_labels=None,
                   overwrite: bool = False) -> dict:
    """Register ``moving`` to ``fixed`` with a trained run and write the outputs.

    Args:
        run_dir: a trained method's run folder (holding ``regseg_run.json`` and
            ``final.weights.h5``).
        moving, fixed: NIfTI/MGH intensity images (3-D).
        out_dir: output folder (created).
        moving_labels, fixed_labels: optional label maps on the images' grids.
        overwrite: replace existing outputs (else refuse).
    Returns:
        ``{"outputs": {name: path}, "dice": {structure: value} or None}``.
    Raises:
        FileNotFoundError: the run folder is not a trained run (named).
        DataError: missing or invalid image files, a label map given as an image, grid
            mismatches, or a preprocessing step that needs a part that was not given (named).
        FileExistsError: outputs exist and ``overwrite`` is False.
    """
    from scipy import ndimage

    from regseg.datasets.io import DataError, load_volume, save_volume
    from regseg.datasets.recipes import Recipe, Resample
    from regseg.datasets.subjects import Subject, read_subject
    from regseg.evaluation import metrics
    from regseg.evaluation.pairs import warp_labels
    from regseg.training.runner import read_run_manifest

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    manifest = read_run_manifest(run_dir)
    names = {"warped": "warped.nii.gz", "displacement": "displacement_mm.nii.gz",
             "jacobian": "jacobian_determinant.nii.gz"}
    if moving_labels is not None:
        names["warped_labels"] = "warped_labels.nii.gz"
    outputs = {k: out_dir / v for k, v in names.items()}
    if not overwrite:
        for path in outputs.values():
            if path.exists():
                raise FileExistsError(f"{path} exists; pass --overwrite or choose another --out")

    recipe = Recipe.from_dict(manifest["recipe"])
    if manifest.get("spacing_mm"):
        recipe = Recipe([Resample(tuple(manifest["spacing_mm"])), *recipe.steps], recipe.name)
    originals = {}
    samples = {}
    for role, image, labels in (("moving", moving, moving_labels), ("fixed", fixed, fixed_labels)):
        vol = load_volume(image)
        _check_intensity_image(vol, role)
        originals[role] = vol
        subject = Subject(role, {"image": str(image)},
                          {"labels": str(labels)} if labels is not None else {})
        try:
            samples[role] = recipe(read_subject(subject))
        except DataError as exc:
            hint = f" (pass --{role}-labels)" if "needs the label" in str(exc) else ""
            raise DataError(f"{exc}{hint}") from exc
    import nibabel as nib
    from regseg.datasets.itk_io import is_itk_path, read_itk_image
    fixed_file_affine = (read_itk_image(fixed) if is_itk_path(fixed) else nib.load(str(fixed))).affine

    repro = importlib.import_module(manifest["reproduction"]).REPRODUCTION
    method = repro.methods()[manifest["method"]]
    registrar = method.load(run_dir, manifest)
    mov_s, fix_s = samples["moving"], samples["fixed"]
    expected = tuple(manifest["model_config"].get("input_shape", fix_s.shape))
    for role, s in samples.items():
        if tuple(s.shape) != expected:
            raise ValueError(f"{role}: preprocessed shape {s.shape} differs from the model's "
                             f"{expected}; the run's recipe does not crop to a fixed box")
    out = registrar.register(mov_s, fix_s)
    disp = np.asarray(out["displacement"], dtype=np.float64)

    # fixed voxel (original canonical grid) -> world -> crop voxel -> moving crop voxel -> world
    fo, mo = originals["fixed"], originals["moving"]
    idx = np.indices(fo.data.shape, dtype=np.float64).reshape(3, -1)
    world = fo.affine[:3, :3] @ idx + fo.affine[:3, 3:4]
    crop = np.linalg.solve(fix_s.affine[:3, :3], world - fix_s.affine[:3, 3:4])
    d = np.stack([ndimage.map_coordinates(disp[..., a], crop, order=1, mode="nearest")
                  for a in range(3)])
    moving_world = mov_s.affine[:3, :3] @ (crop + d) + mov_s.affine[:3, 3:4]
    moving_vox = np.linalg.solve(mo.affine[:3, :3], moving_world - mo.affine[:3, 3:4])
    shape = fo.data.shape
    warped = ndimage.map_coordinates(mo.data, moving_vox, order=1, mode="constant",
                                     cval=0.0).reshape(shape).astype(np.float32)
    displacement = (moving_world - world).T.reshape(*shape, 3).astype(np.float32)
    grid = np.indices(disp.shape[:-1]).transpose(1, 2, 3, 0) + disp
    scale = np.linalg.det(mov_s.affine[:3, :3]) / np.linalg.det(fix_s.affine[:3, :3])
    jac_crop = metrics.jacobian_determinant(grid) * scale
    jac = ndimage.map_coordinates(jac_crop, crop, order=1, mode="nearest").reshape(shape)
    arrays = {"warped": warped, "displacement": displacement,
              "jacobian": jac.astype(np.float32)}
    if moving_labels is not None:
        ml = load_volume(moving_labels, label=True)
        arrays["warped_labels"] = ndimage.map_coordinates(
            ml.data, moving_vox, order=0, mode="constant", cval=0).reshape(shape).astype(np.int32)
    for key, data in arrays.items():
        data, affine = _to_original_orientation(data, fo.affine, fixed_file_affine)
        save_volume(outputs[key], data, affine)

    dice = None
    if moving_labels is not None and fixed_labels is not None:
        label_names = manifest.get("label_names") or {}
        key = "structures" if "structures" in label_names else next(iter(label_names), None)
        if key is not None and key in mov_s.labels and key in fix_s.labels:
            names_k = label_names[key]
            grid32 = out.get("grid", grid)
            warped_k = warp_labels(mov_s.labels[key], grid32, len(names_k))
            values = metrics.dice(warped_k, fix_s.labels[key], range(1, len(names_k) + 1),
                                  empty=np.nan)
            dice = dict(zip(names_k, (float(v) for v in values)))
    return {"outputs": {k: str(v) for k, v in outputs.items()}, "dice": dice}


def main(argv=None) -> int:
    """``python -m regseg register ...``; one-line errors, exit 1 (data) or 2 (usage)."""
    from regseg.datasets.io import DataError

    p = argparse.ArgumentParser(prog="python -m regseg register",
                                description="Register a moving image to a fixed image with a "
                                            "trained run; outputs in the fixed image's geometry.")
    p.add_argument("--run", required=True, help="a trained method's run folder")
    p.add_argument("--moving", required=True)
    p.add_argument("--fixed", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--moving-labels", default=None)
    p.add_argument("--fixed-labels", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    try:
        result = register_files(args.run, args.moving, args.fixed, args.out,
                                moving_labels=args.moving_labels, fixed_labels=args.fixed_labels,
                                overwrite=args.overwrite)
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, FileExistsError) else 1
    for name, path in result["outputs"].items():
        print(f"{name}: {path}")
    if result["dice"]:
        print("Dice per structure (preprocessed grid):")
        for name, value in result["dice"].items():
            print(f"  {name}: {value:.3f}")
        print(f"  mean: {np.nanmean(list(result['dice'].values())):.3f}")
    return 0
