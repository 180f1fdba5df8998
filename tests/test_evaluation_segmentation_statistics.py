"""Segmentation Dice on test images and the significance tests (Mann-Whitney U, Wilcoxon,
Benjamini-Hochberg) against hand computation."""

import numpy as np
import pandas as pd
import pytest

from regseg.datasets.subjects import Sample
from regseg.evaluation.segmentation import evaluate_segmentations, hard_labels
from regseg.evaluation.statistics import compare, fdr


class _Oracle:
    """Predicts the manual labels with one voxel of class 1 turned into class 2."""

    def segment(self, sample):
        labels = sample.label("segmentation").copy()
        labels[labels == 1] = np.where(np.arange((labels == 1).sum()) == 0, 2, 1)
        return np.eye(3, dtype=np.float32)[labels]            # probabilities (X, Y, Z, 3)


def test_segmentation_dice_per_image_and_class_by_hand():
    labels = np.zeros((4, 4, 4), np.int32)
    labels[:2] = 1                                           # 32 voxels of class 1
    labels[3, :2, :2] = 2                                    # 4 voxels of class 2
    samples = [Sample("a", {"t1": np.zeros((4, 4, 4), np.float32)}, {"segmentation": labels})]
    out = evaluate_segmentations({"oracle": _Oracle()}, samples, class_names=["x", "y"])
    frame = out["oracle"]
    assert list(frame.columns) == ["x", "y"] and list(frame.index) == ["a"]
    # class 1: 31 of 32 kept -> 2*31/(31+32); class 2: 4 kept + 1 extra -> 2*4/(5+4)
    np.testing.assert_allclose(frame.loc["a"].to_numpy(), [62 / 63, 8 / 9])
    with pytest.raises(ValueError, match="probabilities"):
        hard_labels(np.zeros((4, 4, 4), np.float32))
    np.testing.assert_array_equal(hard_labels(labels), labels)


def test_mann_whitney_and_wilcoxon_against_hand_computation():
    a = np.array([0.80, 0.82, 0.85, 0.90])
    b = np.array([0.70, 0.81, 0.75, 0.60])
    result = compare(a, b)
    # U of a: pairs (a_i, b_j) with a_i > b_j: 0.80 beats 3, the others beat 4 -> 15
    assert result["U"] == 15.0 and result["n"] == 4
    assert result["mean difference"] == pytest.approx(a.mean() - b.mean())
    # exact two-sided p: P(U >= 15) + P(U <= 1) over the C(8, 4) = 70 rank splits
    from itertools import combinations
    us = [sum(x > y for x in combo for y in set(range(8)) - set(combo))
          for combo in combinations(range(8), 4)]
    hand = (sum(u >= 15 for u in us) + sum(u <= 1 for u in us)) / len(us)
    assert result["Mann-Whitney p"] == pytest.approx(hand)
    # Wilcoxon, paired: every difference positive -> exact two-sided p = 2 / 2^4
    assert result["Wilcoxon p"] == pytest.approx(2 / 16)
    assert np.isnan(compare(a, a.copy())["Wilcoxon p"])      # no difference at all
    with pytest.raises(ValueError, match="at least 2"):
        compare([1.0], [2.0, 3.0])


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): p * m / rank = 0.04, 0.06, 0.0533, 0.5; then the
    # running minimum from the top: 0.04, 0.0533, 0.0533, 0.5
    np.testing.assert_allclose(fdr(p), [0.04, 0.16 / 3, 0.16 / 3, np.nan, 0.5])
    assert pd.isna(fdr([np.nan])[0])


def test_paired_wilcoxon_drops_non_finite_pairs_and_matches_scipy():
    from scipy import stats

    from regseg.evaluation.statistics import paired_wilcoxon
    a = [0.9, 0.8, np.nan, 0.7, 0.95, 0.6]
    b = [0.85, 0.81, 0.5, 0.6, 0.9, np.inf]
    expected = stats.wilcoxon([0.9, 0.8, 0.7, 0.95], [0.85, 0.81, 0.6, 0.9]).pvalue
    assert paired_wilcoxon(a, b) == pytest.approx(expected)
    assert np.isnan(paired_wilcoxon([0.5, 0.6], [0.5, 0.6]))        # no difference
    assert np.isnan(paired_wilcoxon([0.5], [0.4]))                  # one pair
