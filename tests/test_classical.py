"""ANTs baselines (regseg.evaluation.classical): conventions checked against other methods.

* a known translation of a smooth synthetic image is recovered by ANTs Affine, in voxels of the
  moving grid, for isotropic and anisotropic voxels;
* the suite's own warp (``regseg.layers.warp``) with the returned displacement gives the image
  ANTs' ``apply_transforms`` gives (moving and fixed on different grids);
* the per-pair disk cache returns the stored field and the original seconds, and misses on a
  changed image; the module imports and fails in one line without antspyx.

Small images (about 24 x 28 x 20) and one ITK thread (deterministic); a few seconds in all.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from regseg.datasets.subjects import Sample
from regseg.evaluation import classical
from regseg.evaluation.classical import AntsRegistrar

SHAPE = (24, 28, 20)


def _blobs(shape=SHAPE, shift=(0.0, 0.0, 0.0), n=24) -> np.ndarray:
    """``n`` Gaussian blobs (seeded), every centre moved by ``shift`` voxels: ``f(x - shift)``."""
    rng = np.random.default_rng(3)
    x = np.indices(shape, dtype=np.float64)
    image = np.zeros(shape)
    for _ in range(n):
        centre = rng.uniform(np.asarray(SHAPE) * 0.2, np.asarray(SHAPE) * 0.8) + np.asarray(shift)
        sigma, amplitude = rng.uniform(1.5, 3.0), rng.uniform(0.4, 1.0)
        image += amplitude * np.exp(-sum((x[a] - centre[a]) ** 2 for a in range(3))
                                    / (2 * sigma ** 2))
    return image.astype(np.float32)


def _sample(image, spacing, name) -> Sample:
    return Sample(name, {"image": np.asarray(image, np.float32)},
                  affine=np.diag([*map(float, spacing), 1.0]))


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (2.0, 3.0, 1.5)])
def test_affine_recovers_a_known_translation_in_voxels(spacing):
    pytest.importorskip("ants")
    shift = np.array([2.0, -1.0, 1.0])  # voxels; moving(x) = fixed(x - shift)
    fixed = _sample(_blobs(), spacing, "fixed")
    moving = _sample(_blobs(shift=shift), spacing, "moving")
    out = AntsRegistrar("Affine", threads=1).register(moving, fixed)
    disp = out["displacement"]
    assert disp.dtype == np.float32 and disp.shape == (*SHAPE, 3)
    assert out["seconds"] > 0
    # backward warping: fixed voxel x is matched by moving voxel x + shift. ANTs' default affine
    # (10 iterations at full resolution, sampled Mattes MI) is not exact on a small image: the
    # mean translation is within 0.2 voxel, the error mostly within 0.5 voxel (a wrong sign,
    # axis order or voxel size would be off by 0.5 to 4 voxels everywhere)
    inner = disp[6:18, 7:21, 5:15].reshape(-1, 3)
    error = np.abs(inner - shift)
    np.testing.assert_allclose(inner.mean(0), shift, atol=0.2)
    assert np.median(error) < 0.3 and np.percentile(error, 95) < 0.75


def test_suite_warp_with_the_displacement_matches_ants_apply_transforms(tmp_path):
    """Moving and fixed on different grids (shape and voxel size): ANTs' mm field on the fixed
    grid converted to voxels of the moving grid, checked by warping with the suite's warp
    against ANTs' own resampling with the same transforms."""
    ants = pytest.importorskip("ants")
    from regseg.layers import warp

    fixed_spacing, moving_spacing = (2.2, 2.8, 1.4), (2.0, 3.0, 1.5)
    fixed_shape = (22, 24, 22)
    fixed = _sample(_blobs(fixed_shape), fixed_spacing, "fixed")
    moving = _sample(_blobs(shift=(1.0, 0.5, -1.0)), moving_spacing, "moving")
    out = AntsRegistrar("SyN", threads=1, seed=1).register(moving, fixed)
    f_img, m_img = classical.ants_image(fixed), classical.ants_image(moving)
    assert f_img.spacing == fixed_spacing and np.array_equal(f_img.numpy(), fixed.image)
    ants.config._random_seed = 1  # the registrar's settings, by hand
    try:
        reg = ants.registration(f_img, m_img, type_of_transform="SyN",
                                initial_transform="Identity", outprefix=str(tmp_path / "reg_"))
    finally:
        ants.config._random_seed = None
    path = ants.apply_transforms(f_img, m_img, reg["fwdtransforms"],
                                 compose=str(tmp_path / "field_"))
    field = ants.image_read(path).numpy()
    disp = classical.displacement_from_field(field, fixed_spacing, moving_spacing)
    assert disp.shape == (*fixed_shape, 3) and np.abs(disp).max() > 0.5  # a real deformation
    grid = np.indices(fixed_shape, dtype=np.float32).transpose(1, 2, 3, 0) + disp
    ours = np.asarray(warp(moving.image[None, ..., None], grid[None]))[0, ..., 0]
    theirs = ants.apply_transforms(f_img, m_img, reg["fwdtransforms"],
                                   interpolator="linear").numpy()
    inside = np.all((grid >= 1) & (grid <= np.asarray(SHAPE) - 2), axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-3 * moving.image.max())

    # the registrar computed the same field (one ITK thread and one seed: deterministic)
    assert out["displacement"].shape == (*fixed_shape, 3)
    if classical._ITK_THREADS == 1:
        np.testing.assert_allclose(out["displacement"], disp, atol=1e-5)


def test_cache_returns_the_stored_field_and_the_original_seconds(tmp_path, monkeypatch):
    pytest.importorskip("ants")
    fixed = _sample(_blobs(), (2.0, 2.0, 2.0), "fixed")
    moving = _sample(_blobs(shift=(1.0, 0.0, 0.0)), (2.0, 2.0, 2.0), "moving")
    registrar = AntsRegistrar("Affine", threads=1, cache_dir=tmp_path / "cache")
    first = registrar.register(moving, fixed)
    assert (registrar.hits, registrar.misses) == (0, 1)
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2 and entries[0].endswith(".json") and entries[1].endswith(".npz")
    info = json.loads((tmp_path / "cache" / entries[0]).read_text())
    assert info["seconds"] == first["seconds"] and info["moving"] == "moving"

    def no_ants(*args):  # a hit must not register again
        raise AssertionError("registered again despite a cache entry")

    monkeypatch.setattr(registrar, "_run", no_ants)
    again = AntsRegistrar("Affine", threads=1, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(again, "_run", no_ants)
    for reg in (registrar, again):
        hit = reg.register(moving, fixed)
        np.testing.assert_array_equal(hit["displacement"], first["displacement"])
        assert hit["displacement"].dtype == np.float32
        assert hit["seconds"] == first["seconds"]  # the original registration's seconds
    assert registrar.hits == 1 and again.hits == 1

    # a changed image, voxel size or parameter misses the cache
    changed = _sample(moving.image + np.float32(1e-3), (2.0, 2.0, 2.0), "moving")
    other_spacing = _sample(moving.image, (2.0, 2.0, 2.5), "moving")
    keys = {registrar.cache_key(moving, fixed), registrar.cache_key(changed, fixed),
            registrar.cache_key(other_spacing, fixed), registrar.cache_key(fixed, moving),
            AntsRegistrar("SyN", threads=1).cache_key(moving, fixed),
            AntsRegistrar("Affine", threads=1, seed=2).cache_key(moving, fixed)}
    assert len(keys) == 6
    monkeypatch.undo()
    out = registrar.register(changed, fixed)
    assert registrar.misses == 2 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert out["displacement"].shape == (*SHAPE, 3)


def test_without_antspyx_the_module_imports_and_fails_in_one_line(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setitem(sys.modules, "ants", None)  # "import ants" raises ImportError
    monkeypatch.setattr(metadata, "version", missing)
    fixed = _sample(_blobs(), (2.0, 2.0, 2.0), "fixed")
    for registrar in (AntsRegistrar("Affine"), AntsRegistrar("SyN", cache_dir="unused")):
        with pytest.raises(ImportError, match="pip install antspyx") as info:
            registrar.register(fixed, fixed)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="non-zero"):
        AntsRegistrar("Affine", seed=0)
    with pytest.raises(ValueError, match="initialisation"):
        AntsRegistrar("Affine", initialisation="moments")
    assert classical.ANTS_TRANSFORMS["SyN"] == "ANTs SyN"


def test_modules_import_without_antspyx():
    import subprocess

    code = ("import sys; sys.modules['ants'] = None\n"
            "import regseg.evaluation, regseg.evaluation.classical\n"
            "import regseg.reproductions.ureSnet.generalisation\n"
            "assert 'ants' not in {m for m in sys.modules if sys.modules[m] is not None}\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
