"""LUNA16 loader (Bouabid et al. §4.2) on a small .mhd scan and mask written with SimpleITK:
reading (LPS -> RAS), resample to 1 mm, cube, in-field background clip, normalisation and the
alignment of the mask with the scan."""

import numpy as np
import pytest
import SimpleITK as sitk

from regseg.datasets.io import DataError, load_volume
from regseg.datasets.luna16 import (ClipToInFieldBackground, in_field_background, luna16_recipe,
                                    luna16_splits, luna16_subjects)

SPACING = (1.5, 1.25, 2.5)  # ITK x, y, z (mm)
ORIGIN = (-30.0, -20.0, 100.0)  # LPS (mm)
SIZE = (40, 48, 16)  # ITK x, y, z (voxels)
AIR, PADDING, BODY, LUNG = -1000.0, -2048.0, 40.0, -850.0


def _phantom():
    """(scan, mask) arrays in ITK index order (x, y, z); a circular field of view."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in SIZE], indexing="ij")
    cx, cy = (SIZE[0] - 1) / 2, (SIZE[1] - 1) / 2
    # field of view: a circle in mm touching the edges of x at the middle row of y
    r_mm = np.hypot((x - cx) * SPACING[0], (y - cy) * SPACING[1])
    scan = np.where(r_mm <= cx * SPACING[0] + 0.1, AIR, PADDING)
    body = ((x - cx) / 15) ** 2 + ((y - cy) / 16) ** 2 <= 1
    scan = np.where(body, BODY, scan)
    left = ((x - cx - 7) / 5) ** 2 + ((y - cy) / 9) ** 2 + ((z - 8) / 6) ** 2 <= 1   # +x ITK = L
    right = ((x - cx + 7) / 5) ** 2 + ((y - cy) / 9) ** 2 + ((z - 8) / 6) ** 2 <= 1
    scan = np.where(left | right, LUNG, scan)
    mask = np.zeros(SIZE, np.uint8)
    mask[left], mask[right] = 3, 4
    mask[(np.abs(x - cx) < 1) & (np.abs(y - cy) < 1) & (z > 12)] = 5  # trachea, not lung
    return scan.astype(np.int16), mask


def _write(path, array):
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


@pytest.fixture()
def luna(tmp_path):
    scan, mask = _phantom()
    for uid in ("1.2.3", "1.2.4", "1.2.5", "1.2.6", "1.2.7"):
        _write(tmp_path / "subset0" / f"{uid}.mhd", scan)
        _write(tmp_path / "seg-lungs-LUNA16" / f"{uid}.mhd", mask)
    return tmp_path, scan, mask


def test_mhd_is_read_in_ras_world_coordinates(luna):
    root, scan, _ = luna
    vol = load_volume(root / "subset0" / "1.2.3.mhd")
    # ITK index (i, j, k) lies at LPS origin + spacing * index, i.e. RAS (-x, -y, z)
    i, j, k = 3, 10, 5
    lps = np.asarray(ORIGIN) + np.asarray(SPACING) * (i, j, k)
    ras = lps * (-1, -1, 1)
    voxel = np.linalg.solve(vol.affine, np.r_[ras, 1.0])[:3]
    assert vol.data[tuple(np.rint(voxel).astype(int))] == scan[i, j, k]
    np.testing.assert_allclose(np.abs(np.diag(vol.affine)[:3]), SPACING)
    assert np.diag(vol.affine)[0] > 0 and np.diag(vol.affine)[1] > 0  # canonical RAS+


def test_in_field_background_and_clip_by_hand():
    image = np.full((12, 6, 3), 5.0)
    image[0, :, :] = -9.0           # outside the field of view (corner padding)
    image[3, 3, :] = -2.0           # inside the strip 2:5 of the middle row
    image[-4, 3, 1] = -3.0          # inside the strip -5:-2 of the middle row
    image[6, 1, 0] = -7.0           # not on the middle row: ignored
    assert in_field_background(image) == -3.0
    from regseg.datasets.subjects import Sample
    out = ClipToInFieldBackground()(Sample("s", {"ct": image.copy()}))
    assert out.image.min() == -3.0 and out.image[6, 1, 0] == -3.0 and out.image[0, 0, 0] == -3.0
    with pytest.raises(ValueError, match="at least 10 voxels"):
        in_field_background(np.zeros((8, 4, 4)))


def test_luna16_recipe_resample_cube_clip_normalise_and_mask_alignment(luna):
    root, scan, mask = luna
    subjects = luna16_subjects(root)
    assert [s.subject_id for s in subjects] == ["1.2.3", "1.2.4", "1.2.5", "1.2.6", "1.2.7"]
    from regseg.datasets.subjects import read_subject
    raw = read_subject(subjects[0])
    # step 1 alone: resample to 1 mm keeps the field of view (60 x 60 x 40 mm)
    from regseg.datasets.recipes import Resample
    one_mm = Resample(1.0)(read_subject(subjects[0]))
    assert one_mm.shape == (60, 60, 40)
    np.testing.assert_allclose(one_mm.spacing, 1.0)
    sample = luna16_recipe(cube=32)(raw)
    assert sample.shape == (32, 32, 32)
    np.testing.assert_allclose(sample.spacing, [60 / 32, 60 / 32, 40 / 32], atol=1e-6)
    img = sample.image
    # normalised after the clip: mean 0, std 1, and no padding value survives: the minimum is
    # the in-field air, so the normalised air and the minimum coincide
    assert abs(img.mean()) < 1e-5 and img.std() == pytest.approx(1.0, abs=1e-5)
    air = img[in_field_background(img) == img]
    assert img.min() == pytest.approx(in_field_background(img))
    assert len(air) > 100
    # lung mask = values 3 and 4 only (trachea excluded), nearest neighbour, aligned with the
    # dark lung voxels of the scan
    lung = sample.masks["lung"]
    assert set(np.unique(sample.label("lung"))) == {0, 1}
    lo, hi = img.min(), img.max()  # normalised air and body
    expected = lo + (LUNG - AIR) / (BODY - AIR) * (hi - lo)
    assert np.median(img[lung]) == pytest.approx(expected, abs=1e-3)
    from scipy import ndimage
    core = ndimage.binary_erosion(lung, iterations=2)  # beyond the partial-volume rim
    assert np.mean(np.abs(img[core] - expected) < 1e-3) > 0.95  # inside the mask: pure lung
    pure = np.abs(img - expected) < 1e-3
    assert (pure & lung).sum() >= 0.95 * pure.sum()  # pure lung voxels: inside the mask
    # the lung of the patient's right (ITK label 4, at -x in LPS = +x in RAS) lies at high RAS x
    world = sample.affine @ np.c_[np.argwhere(lung), np.ones(lung.sum())].T
    right = world[0] > world[0].mean()
    assert right.any() and (~right).any()


def test_luna16_splits_and_errors(luna, tmp_path):
    root, _, _ = luna
    splits = luna16_splits(root, cube=16, split=(0.6, 0.2, 0.2))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (3, 1, 1)
    assert splits.is_paper_dataset
    (root / "seg-lungs-LUNA16" / "1.2.5.mhd").unlink()
    with pytest.raises(DataError, match="1.2.5.mhd: no lung mask"):
        luna16_subjects(root)
    bad = tmp_path / "bad.mhd"
    bad.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                   "ElementDataFile = missing.raw\n")
    with pytest.raises(DataError, match="bad.mhd"):
        load_volume(bad)
    with pytest.raises(FileNotFoundError, match="subset0"):
        luna16_subjects(tmp_path / "nothing")


def test_mask_without_lung_values_is_named(luna):
    root, scan, mask = luna
    _write(root / "seg-lungs-LUNA16" / "1.2.3.mhd", np.where(mask > 0, 5, 0).astype(np.uint8))
    sub = luna16_subjects(root)[0]
    from regseg.datasets.subjects import read_subject
    with pytest.raises(DataError, match="1.2.3.mhd"):
        luna16_recipe(cube=16)(read_subject(sub))
