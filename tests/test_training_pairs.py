"""Tests of regseg.training.pairs: pairing strategies and the tf.data pipeline of pairs.

Expected pairs are written out by hand; the pipeline's batches are compared with the arrays the
mapping returns, computed directly in the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from regseg.datasets.subjects import Sample
from regseg.training.pairs import (
    all_ordered_pairs,
    atlas_pairs,
    consecutive_pairs,
    listed_pairs,
    pair_dataset,
    same_subject_pairs,
    validation_pairs,
)


def _rows(a):
    assert a.dtype == np.int64 and a.ndim == 2 and a.shape[1] == 2
    return [tuple(int(v) for v in r) for r in a]


# --------------------------------------------------------------------------- strategies
def test_atlas_pairs():
    assert _rows(atlas_pairs(4, 2)) == [(0, 2), (1, 2), (3, 2)]
    assert _rows(atlas_pairs(4, 0, include_atlas=True)) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert atlas_pairs(1, 0).shape == (0, 2)
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=str(bad)):
            atlas_pairs(4, bad)


def test_consecutive_and_validation_pairs():
    assert _rows(consecutive_pairs(4)) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert _rows(consecutive_pairs(1)) == [(0, 0)]
    assert consecutive_pairs(0).shape == (0, 2)
    assert _rows(validation_pairs(4)) == [(0, 1), (1, 2), (2, 3)]
    assert validation_pairs(1).shape == (0, 2)


def test_same_subject_pairs():
    assert _rows(same_subject_pairs(3)) == [(0, 0), (1, 1), (2, 2)]
    assert same_subject_pairs(0).shape == (0, 2)


def test_all_ordered_pairs():
    assert _rows(all_ordered_pairs(3)) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    got = _rows(all_ordered_pairs(6))
    assert len(got) == 30 and len(set(got)) == 30
    assert set(got) == {(i, j) for i in range(6) for j in range(6) if i != j}
    assert all_ordered_pairs(1).shape == (0, 2)


def test_listed_pairs_ids_to_indices():
    ids = ["a", "b", "c", "d"]
    got = listed_pairs(ids, [("b", "a"), ("d", "c"), ("a", "a")])
    assert _rows(got) == [(1, 0), (3, 2), (0, 0)]
    assert listed_pairs(ids, []).shape == (0, 2)
    # separate moving ids (e.g. a moving modality dataset in another order)
    moving = ["m2", "m0", "m1"]
    got = listed_pairs(ids, [("m0", "c"), ("m2", "a"), ("m1", "d")], moving_ids=moving)
    assert _rows(got) == [(1, 2), (0, 0), (2, 3)]


def test_listed_pairs_unknown_id_is_named():
    ids = ["a", "b"]
    with pytest.raises(KeyError, match="zzz") as err:
        listed_pairs(ids, [("a", "b"), ("zzz", "a")])
    assert "moving" in str(err.value)
    with pytest.raises(KeyError, match="nope") as err:
        listed_pairs(ids, [("a", "nope")])
    assert "fixed" in str(err.value)
    # with separate moving ids a fixed id is not a moving id
    with pytest.raises(KeyError, match="'a'"):
        listed_pairs(ids, [("a", "b")], moving_ids=["m0"])


# --------------------------------------------------------------------------- pair_dataset
SHAPE = (4, 3, 2)


class FakeSource:
    """``load(i)`` returns a small Sample whose arrays encode the index ``i``."""

    def __init__(self, n, offset=0.0):
        self.n, self.offset = n, offset
        self.calls = []

    def load(self, i):
        self.calls.append(i)
        assert 0 <= i < self.n
        rng = np.random.default_rng(int(i) + int(self.offset))
        image = (rng.normal(size=SHAPE) + 100.0 * i + self.offset).astype(np.float32)
        labels = rng.integers(0, 4, size=SHAPE).astype(np.int32) + 10 * int(i)
        return Sample(f"s{i}", {"t1": image}, {"seg": labels}, affine=np.eye(4))


def mapping(moving, fixed):
    inputs = {"moving": moving.image[..., None], "fixed": fixed.image[..., None]}
    targets = {"moving_seg": moving.label("seg"),
               "diff": (fixed.image - moving.image).astype(np.float32)}
    return inputs, targets


def _expected(mov_src, fix_src, pairs):
    return [mapping(mov_src.load(int(i)), fix_src.load(int(j))) for i, j in pairs]


def test_pair_dataset_batches_hold_the_mapping_outputs_in_order():
    src = FakeSource(6)
    pairs = np.array([[0, 1], [2, 5], [4, 3], [1, 1], [5, 0]])
    ds = pair_dataset((src, src), pairs, 2, mapping)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 2                     # 5 pairs, batch 2: the 5th pair is dropped
    expected = _expected(src, src, pairs[:4])
    for b, (inputs, targets) in enumerate(batches):
        assert set(inputs) == {"moving", "fixed"} and set(targets) == {"moving_seg", "diff"}
        assert inputs["moving"].dtype == np.float32 and inputs["moving"].shape == (2, *SHAPE, 1)
        assert targets["moving_seg"].dtype == np.int32 and targets["moving_seg"].shape == (2, *SHAPE)
        assert targets["diff"].dtype == np.float32
        for k in range(2):
            exp_in, exp_out = expected[2 * b + k]
            for key in exp_in:
                np.testing.assert_array_equal(inputs[key][k], exp_in[key])
            for key in exp_out:
                np.testing.assert_array_equal(targets[key][k], exp_out[key])


def test_pair_dataset_two_sources_and_element_spec():
    moving_src, fixed_src = FakeSource(3, offset=0.0), FakeSource(4, offset=1000.0)
    pairs = np.array([[2, 3], [0, 0], [1, 2]])
    ds = pair_dataset((moving_src, fixed_src), pairs, 3, mapping)
    spec_in, spec_out = ds.element_spec
    assert spec_in["moving"].shape.as_list() == [3, *SHAPE, 1]
    assert spec_out["moving_seg"].dtype.name == "int32"
    (inputs, targets), = list(ds.as_numpy_iterator())
    for k, (i, j) in enumerate(pairs):
        np.testing.assert_array_equal(inputs["moving"][k, ..., 0], moving_src.load(int(i)).image)
        np.testing.assert_array_equal(inputs["fixed"][k, ..., 0], fixed_src.load(int(j)).image)
        np.testing.assert_array_equal(targets["moving_seg"][k], moving_src.load(int(i)).label("seg"))


def test_pair_dataset_repeat_cycles_the_pairs():
    src = FakeSource(3)
    pairs = np.array([[0, 1], [1, 2], [2, 0]])
    ds = pair_dataset((src, src), pairs, 2, mapping, repeat=True)
    got = [b[0]["moving"][:, 0, 0, 0, 0] for b in ds.take(3).as_numpy_iterator()]
    order = [0, 1, 2, 0, 1, 2]
    exp = [src.load(i).image[0, 0, 0] for i in order]
    np.testing.assert_array_equal(np.concatenate(got), exp)


def test_pair_dataset_errors():
    src = FakeSource(3)
    with pytest.raises(ValueError, match="larger"):
        pair_dataset((src, src), np.array([[0, 1], [1, 2]]), 3, mapping)
    with pytest.raises(ValueError, match="no pairs"):
        pair_dataset((src, src), np.zeros((0, 2), np.int64), 1, mapping)
    with pytest.raises(ValueError, match="no pairs"):
        pair_dataset((src, src), [], 1, mapping)
