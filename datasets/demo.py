"""An offline DEMO dataset: the MNI152 template deformed by known random smooth fields.

For a user with no data and no network. It reproduces nothing from any paper: it only lets every
pipeline (training, evaluation, reports) run end to end. Built entirely from files shipped inside
the installed ``nilearn`` package (nothing is downloaded):

* image: ``nilearn.datasets.load_mni152_template(resolution=2)`` (MNI152 2009 symmetric T1,
  skull-stripped, 2 mm, 99 x 117 x 95 voxels, RAS);
* tissue labels: ``load_mni152_gm_template`` / ``load_mni152_wm_template`` (probability maps)
  inside ``load_mni152_brain_mask``: each brain voxel gets the most probable of
  1 = "CSF/other" (probability ``1 - p_GM - p_WM``), 2 = "GM", 3 = "WM".

Subject ``i`` is the template warped by a seeded smooth random displacement field ``u_i``
(:func:`demo_displacement_field`; Gaussian-smoothed white noise, largest displacement
``magnitude_vox`` voxels): ``image_i(x) = T(x + u_i(x))`` (linear interpolation) and
``labels_i(x) = L(x + u_i(x))`` (nearest neighbour), with ``scipy.ndimage.map_coordinates``,
plus Gaussian intensity noise. The 15 structures of U-ReSNet Table 1 do not exist here: the
structures and the segmentation classes are the three tissues.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import save_volume
from .labels import LabelMapping
from .preprocessing import PAPER_CROP_RAS_1MM, crop_shape_for_spacing
from .recipes import Recipe, ureSnet_recipe
from .subjects import Splits, Subject, SubjectDataset, split_subjects

__all__ = ["DEMO_NAME", "DEMO_TISSUES", "DEMO_CROP", "demo_template", "demo_displacement_field",
           "build_demo", "demo_splits"]

#: Dataset name used in table titles.
DEMO_NAME = "DEMO: MNI152 template deformed by random smooth fields — reproduces nothing"
#: Tissue classes of the demo label maps (ids 1, 2, 3).
DEMO_TISSUES = LabelMapping(names=["CSF/other", "GM", "WM"],
                            ids={"CSF/other": [1], "GM": [2], "WM": [3]})
#: Crop box (voxels, RAS, 2 mm): the paper's field of view, as for ixi10.
DEMO_CROP = crop_shape_for_spacing(PAPER_CROP_RAS_1MM, 2.0)

_VERSION = 1  # bump when the generation recipe changes (invalidates caches)


def demo_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 template and its tissue labels from nilearn's shipped files (no download).

    Returns:
        ``(image, labels, affine)``: image ``(99, 117, 95)`` float32 (intensities 0..1),
        labels ``(99, 117, 95)`` int32 (0 background, 1 CSF/other, 2 GM, 3 WM), affine ``(4, 4)``
        voxel -> world mm (RAS, 2 mm).
    """
    from nilearn import datasets as nd  # imported lazily: slow import, optional for most users

    template = nd.load_mni152_template(resolution=2)
    gm = nd.load_mni152_gm_template(resolution=2).get_fdata()
    wm = nd.load_mni152_wm_template(resolution=2).get_fdata()
    brain = nd.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = (np.argmax(np.stack([other, gm, wm]), axis=0) + 1).astype(np.int32)
    labels[~brain] = 0
    image = np.clip(template.get_fdata(), 0, None).astype(np.float32)
    return image, labels, np.asarray(template.affine, dtype=np.float64)


def demo_displacement_field(index: int, shape: tuple[int, int, int], *, seed: int = 0,
                            smoothing_vox: float = 6.0, magnitude_vox: float = 4.0) -> np.ndarray:
    """The known displacement field of demo subject ``index`` (deterministic).

    White noise from ``numpy.random.default_rng([seed, index])``, smoothed per component with
    ``scipy.ndimage.gaussian_filter(sigma=smoothing_vox, mode="wrap")`` (periodic, so the
    field has no edge artefacts), scaled so that the largest
    displacement length is ``magnitude_vox``.

    Args:
        index: subject index.
        shape: grid ``(X, Y, Z)`` in voxels.
        seed: dataset seed.
        smoothing_vox: Gaussian sigma in voxels.
        magnitude_vox: maximum displacement length in voxels.

    Returns:
        float32 array ``(X, Y, Z, 3)``: displacement in voxels along each array axis; subject
        ``index`` samples the template at ``x + u(x)``.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    noise = rng.standard_normal((3, *shape))
    field = np.stack([ndimage.gaussian_filter(c, smoothing_vox, mode="wrap") for c in noise], -1)
    field *= magnitude_vox / np.sqrt((field ** 2).sum(-1)).max()
    return field.astype(np.float32)


def _manifest(n_subjects: int, seed: int, smoothing_vox: float, magnitude_vox: float,
              noise_std: float) -> dict:
    return {"version": _VERSION, "n_subjects": n_subjects, "seed": seed,
            "smoothing_vox": smoothing_vox, "magnitude_vox": magnitude_vox, "noise_std": noise_std}


def build_demo(cache_dir: str | os.PathLike, *, n_subjects: int = 10, seed: int = 0,
               smoothing_vox: float = 6.0, magnitude_vox: float = 4.0,
               noise_std: float = 0.02) -> list[Subject]:
    """Write the demo volumes into ``cache_dir/demo_mni152/{images,labels}/demo_NNN.nii.gz`` once.

    Files are written atomically; a ``manifest.json`` with the generation parameters is written
    last, and the volumes are regenerated only when it is missing or differs.

    Args:
        cache_dir: folder for the generated NIfTI files.
        n_subjects: number of deformed copies.
        seed: seed of fields and noise.
        smoothing_vox, magnitude_vox: see :func:`demo_displacement_field`.
        noise_std: standard deviation of the added Gaussian noise (template intensities are 0..1).

    Returns:
        The subjects, sorted by id.
    """
    folder = Path(cache_dir) / "demo_mni152"
    ids = [f"demo_{i:03d}" for i in range(n_subjects)]
    subjects = [Subject(sid, str(folder / "images" / f"{sid}.nii.gz"),
                        str(folder / "labels" / f"{sid}.nii.gz")) for sid in ids]
    manifest = _manifest(n_subjects, seed, smoothing_vox, magnitude_vox, noise_std)
    manifest_path = folder / "manifest.json"
    try:
        fresh = json.loads(manifest_path.read_text()) == manifest and all(
            Path(s.image_path).is_file() and Path(s.label_path).is_file() for s in subjects)
    except (OSError, ValueError):
        fresh = False
    if fresh:
        return subjects

    image, labels, affine = demo_template()
    grid = np.indices(image.shape, dtype=np.float32)
    for i, subject in enumerate(subjects):
        u = demo_displacement_field(i, image.shape, seed=seed, smoothing_vox=smoothing_vox,
                                    magnitude_vox=magnitude_vox)
        coords = grid + np.moveaxis(u, -1, 0)
        warped = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
        warped_labels = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
        rng = np.random.default_rng([int(seed), i, 1])
        warped = warped + rng.normal(0.0, noise_std, warped.shape).astype(np.float32)
        save_volume(subject.image_path, warped.astype(np.float32), affine)
        save_volume(subject.label_path, warped_labels.astype(np.int32), affine)
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)
    return subjects


def demo_splits(cache_dir: str | os.PathLike, *, n_subjects: int = 10, seed: int = 0,
                sizes: tuple[int, int, int] = (7, 1, 2), cache: bool = True,
                recipe: Recipe | None = None) -> Splits:
    """Splits of the offline DEMO dataset (builds it in ``cache_dir`` on first use).

    Subjects sorted by id; the first ``sizes[0]`` train, next ``sizes[1]`` validation, the rest up
    to ``sizes[2]`` test (scaled proportionally if ``n_subjects < sum(sizes)``). Preprocessing as
    for ixi10: 2 mm, brain = label > 0, z-score over the brain, crop (80, 104, 88) voxels around
    the brain's centre of mass. Structures and segmentation classes are the three tissues of
    :data:`DEMO_TISSUES`.

    Returns:
        :class:`~regseg.datasets.subjects.Splits` named :data:`DEMO_NAME`, ``is_paper_dataset=False``.
    """
    subjects = build_demo(cache_dir, n_subjects=n_subjects, seed=seed)
    parts = split_subjects(subjects, sizes, seed=seed, shuffle=False)

    def make(part):
        return SubjectDataset(DEMO_NAME, False, part,
                              recipe or ureSnet_recipe(DEMO_CROP, DEMO_TISSUES, DEMO_TISSUES),
                              cache=cache)

    return Splits(*(make(p) for p in parts))
