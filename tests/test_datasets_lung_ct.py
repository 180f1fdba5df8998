"""Lung CT stand-ins (lung mask by thresholding, right-lung crop, the shared lung pair), random
smooth augmentation, and the intensity scores of Bouabid et al. §5.1."""

import numpy as np
import pytest
from scipy import ndimage

from regseg.datasets.augmentation import (AugmentedSamples, SampleList, deform_sample,
                                          random_smooth_displacement)
from regseg.datasets.lung_ct import CropToMaskBox, lung_mask_from_ct
from regseg.datasets.subjects import Sample
from regseg.evaluation.intensity import (mean_squared_error, squared_cross_correlation,
                                         voxel_agreement)


def _thorax(shape=(40, 32, 20)):
    """Outside air -1000, body 0 HU, two lungs -850 HU (left at low x, right at high x in RAS)."""
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    body = ((x - 19.5) / 18) ** 2 + ((y - 15.5) / 13) ** 2 <= 1
    hu[body] = 0.0
    right = ((x - 28) / 6) ** 2 + ((y - 15.5) / 8) ** 2 + ((z - 10) / 12) ** 2 <= 1
    left = ((x - 11) / 6) ** 2 + ((y - 15.5) / 8) ** 2 + ((z - 10) / 12) ** 2 <= 1
    hu[right | left] = -850.0
    hu[28, 15, 10] = 60.0  # a vessel: a hole the mask must fill
    return hu, right, left


def test_lung_mask_from_ct_finds_both_lungs():
    hu, right, left = _thorax()
    mask = lung_mask_from_ct(hu)
    # the lungs touch the first and last slices: still kept (only in-plane borders are "outside")
    np.testing.assert_array_equal(mask, right | left)
    with pytest.raises(ValueError, match="no air region"):
        lung_mask_from_ct(np.zeros((8, 8, 8)))


def test_crop_to_the_right_lung_keeps_world_coordinates():
    hu, right, left = _thorax()
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-40.0, 5.0, 7.0)
    sample = Sample("t", {"ct": hu.astype(np.float32)}, masks={"lung": right | left},
                    affine=affine.copy())
    out = CropToMaskBox("lung", margin_mm=4.0, side="right")(sample)
    lo = np.argwhere(right).min(0) - [2, 2, 2]  # 4 mm = 2, 2, 2 voxels (ceil 4/3 = 2 in z)
    hi = np.argwhere(right).max(0) + [2, 2, 2] + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, hu.shape)
    assert out.shape == tuple(hi - lo)
    np.testing.assert_array_equal(out.masks["lung"], (right | left)[tuple(slice(a, b) for a, b in
                                                                          zip(lo, hi))])
    # the same world point holds the same value
    np.testing.assert_allclose(out.affine @ np.r_[0, 0, 0, 1], affine @ np.r_[lo, 1])
    with pytest.raises(ValueError, match="side"):
        CropToMaskBox("lung", side="up")(sample)


def test_random_smooth_deformation_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    zero = random_smooth_displacement((16, 16, 16), rng, max_displacement=0.0)
    assert not zero.any()
    image = np.zeros((24, 24, 24), np.float32)
    image[8:16, 6:18, 9:15] = 1.0
    sample = Sample("s", {"ct": image}, labels={"lung": image.astype(np.int32)},
                    masks={"lung": image > 0}, landmarks=np.zeros((2, 3)))
    np.testing.assert_array_equal(deform_sample(sample, np.zeros((24, 24, 24, 3))).image, image)
    # a uniform shift of one voxel along axis 0: output voxel v reads input v + (1, 0, 0)
    shift = np.zeros((24, 24, 24, 3))
    shift[..., 0] = 1.0
    moved = deform_sample(sample, shift)
    np.testing.assert_array_equal(moved.image[7:15, 6:18, 9:15], 1.0)
    assert moved.landmarks is None
    aug = AugmentedSamples(sample, 3, seed=5, max_displacement=2.0)
    a, b = aug.load(1), AugmentedSamples(sample, 3, seed=5, max_displacement=2.0).load(1)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.subject_id == "s-aug1" and not np.array_equal(a.image, aug.load(0).image)
    # the nearest-neighbour mask matches the thresholded trilinear image
    assert np.mean((a.image > 0.5) == a.masks["lung"]) > 0.99
    both = SampleList([sample, aug])
    assert len(both) == 4 and both.subject_ids == ["s", "s-aug0", "s-aug1", "s-aug2"]
    with pytest.raises(IndexError):
        aug.load(3)


def test_intensity_scores_by_hand():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    b = np.array([[1.0, 1.0], [2.0, 5.0]])
    assert mean_squared_error(a, b) == pytest.approx((1 + 0 + 0 + 4) / 4)
    assert squared_cross_correlation(a, b, eps=0.0) == pytest.approx(
        np.corrcoef(a.ravel(), b.ravel())[0, 1] ** 2)
    # the released "dice_score": 2 * (equal voxels) / (2 * size); background counts
    m1 = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    m2 = np.array([0, 0, 1, 1, 0, 0, 0, 0])
    assert voxel_agreement(m1, m2) == pytest.approx(4 / 8)  # disjoint masks, yet 0.5
    with pytest.raises(ValueError, match="shape"):
        mean_squared_error(a, b[:1])


def test_evaluate_pairs_pair_metrics_hook():
    from regseg.evaluation.pairs import IdentityRegistrar, evaluate_pairs

    rng = np.random.default_rng(3)
    samples = [Sample(f"s{i}", {"im": rng.normal(size=(6, 6, 6)).astype(np.float32)},
                      labels={"m": (rng.random((6, 6, 6)) > 0.5).astype(np.int32)})
               for i in range(2)]
    ev = evaluate_pairs({"id": IdentityRegistrar()}, samples, [[0, 1]], structures="m",
                        pair_metrics={"MSE": lambda m, f, out: mean_squared_error(
                            out["warped"], f.image)})
    assert list(ev.extra.columns) == ["pair", "method", "MSE"]
    assert ev.extra["MSE"].iloc[0] == pytest.approx(
        np.mean((samples[0].image - samples[1].image) ** 2))


def test_the_shared_lung_pair_loads_aligned(data_root):
    from regseg.datasets.lung_ct import lung_pair_dataset

    if not (data_root / "lung_ct_pair_elastix").is_dir():
        pytest.skip("lung_ct_pair_elastix not in the shared data")
    pair = lung_pair_dataset(data_root, 32)
    for i in range(2):
        s = pair.load(i)
        assert s.shape == (32, 32, 32) and abs(s.image.mean()) < 1e-4
        # every landmark falls inside the lung mask of its own cube grid
        vox = np.clip(np.rint(s.landmarks_voxels()).astype(int), 0, 31)
        inside = ndimage.binary_dilation(s.masks["lung"])[tuple(vox.T)]
        assert inside.mean() > 0.95


def test_recipes_of_the_diffeomorphic_unet_round_trip_through_json():
    import json

    from regseg.datasets.luna16 import (ClipToInFieldBackground, LabelsFromMask, bouabid_recipe,
                                        brain_mask_recipe, luna16_recipe)
    from regseg.datasets.lung_ct import LungMaskFromCT
    from regseg.datasets.recipes import Recipe

    recipes = [luna16_recipe(32, lung_values=(3, 4)), brain_mask_recipe(48),
               bouabid_recipe(16, mask_steps=[LungMaskFromCT(threshold_hu=-500.0),
                                              CropToMaskBox("lung", 8.0, side="right"),
                                              LabelsFromMask("lung", "lung")])]
    names = set()
    for recipe in recipes:
        back = Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
        assert back == recipe and [type(s) for s in back.steps] == [type(s) for s in recipe.steps]
        names |= {s.name for s in back.steps}
    assert {ClipToInFieldBackground.name, LabelsFromMask.name, LungMaskFromCT.name,
            CropToMaskBox.name} <= names
