"""Issue 6 pieces of the U-ReSNet reproduction: eq. 6 Dice variants, the LCC window in mm, the
released Dice rule, deformation statistics in a mask. The cross-validation folds and the paired
tests are shared code: tests/test_training_folds.py and tests/test_evaluation_comparison.py."""

import numpy as np
import pytest

from regseg.reproductions.ureSnet.model import SegmentationDiceLoss, lcc_window_voxels


def _arrays():
    # one sample, 4 voxels, K = 4 (background + 3); hand-chosen probabilities
    t = np.eye(4, dtype="float32")[[[0, 1, 2, 3]]]                    # (1, 4, 4)
    p = np.array([[[1, 0, 0, 0], [0, .5, .5, 0], [0, 0, 1, 0], [.5, 0, 0, .5]]], "float32")
    return t[:, :, None, None], p[:, :, None, None]                  # (1, 4, 1, 1, 4)


# per-class soft Dice, by hand: c0: 2*1/(1+1.5)=0.8; c1: 2*.5/(1+.5)=2/3; c2: 2*1/(1+1.5)=0.8;
# c3: 2*.5/(1+.5)=2/3 (smoothing 1e-5 negligible)
D = np.array([0.8, 2 / 3, 0.8, 2 / 3])


def test_released_dice_sums_the_three_foreground_terms():
    t, p = _arrays()
    got = float(SegmentationDiceLoss("released")(t, p))
    assert got == pytest.approx(np.sum(1 - D[1:]), abs=1e-4)        # 1/3 + 0.2 + 1/3


def test_mean_with_background_dice():
    t, p = _arrays()
    assert float(SegmentationDiceLoss("mean-with-background")(t, p)) == pytest.approx(
        1 - D.mean(), abs=1e-4)


def test_generalised_dice_sudre():
    t, p = _arrays()
    # every class has 1 voxel in t: w_c = 1; 1 - 2 sum(inter) / sum(total) = 1 - 2*3/(4+4)
    assert float(SegmentationDiceLoss("generalised")(t, p)) == pytest.approx(0.25, abs=1e-4)
    # weights 1/n^2: class 0 with 2 voxels weighs 1/4
    t2 = np.eye(2, dtype="float32")[[[0, 0, 1]]][:, :, None, None]
    p2 = np.array([[[1, 0], [0, 1], [0, 1]]], "float32")[:, :, None, None]
    w = np.array([1 / 4, 1.0])
    inter, total = np.array([1, 1]), np.array([3, 3])
    assert float(SegmentationDiceLoss("generalised")(t2, p2)) == pytest.approx(
        1 - 2 * (w * inter).sum() / (w * total).sum(), abs=1e-4)


def test_unknown_dice_variant_is_refused():
    with pytest.raises(ValueError, match="seg_dice"):
        SegmentationDiceLoss("dice")


@pytest.mark.parametrize("mm, spacing, voxels", [(9, 2.0, 5), (9, 1.0, 9), (9, (2, 2, 2), 5),
                                                 (9, 3.0, 3), (5, 1.0, 5), (1, 2.0, 1)])
def test_lcc_window_in_millimetres(mm, spacing, voxels):
    assert lcc_window_voxels(mm, spacing) == voxels


def test_released_rule_thresholds_each_warped_channel():
    from regseg.evaluation.pairs import _rule_dice, warp_labels
    labels = np.zeros((6, 1, 1), np.int64)
    labels[2, 0, 0] = 1
    labels[3, 0, 0] = 2
    grid = np.stack(np.meshgrid(np.arange(6.), [0.], [0.], indexing="ij"), -1).astype("float32")
    grid[..., 0] += 0.5                                              # half a voxel along x
    w = warp_labels(labels, grid, 2, "released")
    # label 1 at x = 2 is sampled (weight 0.5) by x = 1 and x = 2; label 2 (x = 3) by 2 and 3
    assert w.shape == (6, 1, 1, 3)
    np.testing.assert_array_equal(np.flatnonzero(w[..., 1]), [1, 2])
    np.testing.assert_array_equal(np.flatnonzero(w[..., 2]), [2, 3])
    np.testing.assert_array_equal(warp_labels(labels, grid, 2, "argmax").ravel(),
                                  [0, 0, 1, 0, 0, 0])  # 0.5/0.5 ties -> lowest label
    # Dice of the released masks vs the target itself: 2*1/(2+1) for both labels
    np.testing.assert_allclose(_rule_dice(w, labels, [1, 2], "released"), [2 / 3, 2 / 3])


def test_deformation_statistics_inside_the_mask_on_known_folds():
    from regseg.evaluation.pairs import evaluate_pairs
    from regseg.datasets.subjects import Sample

    shape = (12, 8, 8)
    disp = np.zeros((*shape, 3), np.float32)
    disp[6, :, :, 0] = -3.0          # x = 6 samples x = 3: det J < 0 at x = 5
    mask = np.zeros(shape, bool)
    mask[3:9] = True

    class R:
        def register(self, m, f):
            return {"displacement": disp}

    img = np.random.default_rng(0).random(shape).astype(np.float32)
    s = Sample("a", {"image": img}, {"structures": np.zeros(shape, np.int64)}, {"brain": mask},
               np.eye(4))
    ev = evaluate_pairs({"R": R()}, [s, s], [[0, 1]], structures=None, jacobian_mask="brain",
                        learn2reg_sdlogj=True)
    row = ev.deformation.iloc[0]
    from regseg.evaluation import metrics
    jac = metrics.jacobian_determinant(np.stack(np.meshgrid(*map(np.arange, shape),
                                                            indexing="ij"), -1) + disp)
    folded = (jac <= 0) & mask
    assert folded.any() and row["folding fraction"] == pytest.approx(folded.sum() / mask.sum())
    assert row["SDlogJ non-folded"] == pytest.approx(np.std(np.log(jac[mask & (jac > 0)])))
    assert row["SDlogJ Learn2Reg (+3, border crop)"] == pytest.approx(
        metrics.sd_log_jacobian(jac, mask=mask, learn2reg=True))
    assert row["SDlogJ non-folded"] < row["SDlogJ"]
