"""Tests of regseg.datasets.labels (U-ReSNet Table 1 structures and §4.1 classes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from regseg.datasets.io import DataError
from regseg.datasets.labels import (
    DLMUSE_SEGMENTATION,
    DLMUSE_TABLE1,
    FREESURFER_SEGMENTATION,
    FREESURFER_TABLE1,
    SEGMENTATION_CLASSES,
    TABLE1_FULL_NAMES,
    TABLE1_STRUCTURES,
    LabelMapping,
    check_structures_present,
)


def test_apply_against_hand_written_array():
    mapping = LabelMapping(["A", "B", "C"], {"A": [1, 5], "B": [7], "C": [300]})
    source = np.array([[[0, 1, 5], [7, 9, -1]], [[300, 301, 2], [5, 7, 1000]]])
    expected = np.array([[[0, 1, 1], [2, 0, 0]], [[3, 0, 0], [1, 2, 0]]])
    out = mapping.apply(source)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(mapping.apply(source.astype(np.float64)), expected)
    with pytest.raises(ValueError):
        mapping.apply(np.array([1.5]))


def test_apply_matches_isin_on_real_sized_input():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 260, (30, 31, 32))
    out = DLMUSE_TABLE1.apply(source)
    expected = np.zeros_like(out)
    for k, name in enumerate(DLMUSE_TABLE1.names):   # slow reference, different method
        expected[np.isin(source, DLMUSE_TABLE1.ids[name])] = k + 1
    np.testing.assert_array_equal(out, expected)


def test_json_round_trip_preserves_order(tmp_path):
    path = tmp_path / "m.json"
    text = FREESURFER_TABLE1.to_json(path)
    content = json.loads(path.read_text())
    assert list(content) == ["structures"]
    assert list(content["structures"]) == TABLE1_STRUCTURES
    assert content["structures"]["BS"] == [16] and json.loads(text) == content
    back = LabelMapping.from_json(path)
    assert back.names == FREESURFER_TABLE1.names and back.ids == FREESURFER_TABLE1.ids

    reordered = tmp_path / "r.json"
    reordered.write_text('{"structures": {"LV": [4, 43], "BS": 16}}')
    m = LabelMapping.from_json(reordered)
    assert m.names == ["LV", "BS"] and m.ids == {"LV": [4, 43], "BS": [16]}


def test_from_json_errors(tmp_path):
    with pytest.raises(DataError, match="missing.json: label mapping file not found"):
        LabelMapping.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        LabelMapping.from_json(bad)
    nokey = tmp_path / "nokey.json"
    nokey.write_text('{"BS": [16]}')
    with pytest.raises(DataError, match='nokey.json: expected an object with a "structures" key'):
        LabelMapping.from_json(nokey)
    overlap = tmp_path / "overlap.json"
    overlap.write_text('{"structures": {"A": [1, 2], "B": [2]}}')
    with pytest.raises(DataError, match="overlap.json: label id 2 is listed for both"):
        LabelMapping.from_json(overlap)
    strings = tmp_path / "strings.json"
    strings.write_text('{"structures": {"A": ["1"]}}')
    with pytest.raises(DataError, match="strings.json: structure 'A'"):
        LabelMapping.from_json(strings)


def test_subset():
    seg = FREESURFER_TABLE1.subset(["LV", "CeblC"])
    assert seg.names == ["LV", "CeblC"] and seg.ids == {"LV": [4, 43], "CeblC": [3, 42]}
    np.testing.assert_array_equal(seg.apply(np.array([4, 3, 42, 2, 43])), [1, 2, 2, 0, 1])
    with pytest.raises(KeyError):
        FREESURFER_TABLE1.subset(["nope"])


def test_table1_constants():
    assert TABLE1_STRUCTURES == ["BS", "CSF", "CblmC", "CblmWM", "CeblWM", "Pu", "VDC", "Pa", "Ca",
                                 "LV", "Hi", "3V", "4V", "Am", "CeblC"]
    assert set(TABLE1_FULL_NAMES) == set(TABLE1_STRUCTURES)
    assert SEGMENTATION_CLASSES == ["CeblWM", "CeblC", "LV"]
    assert FREESURFER_SEGMENTATION.names == DLMUSE_SEGMENTATION.names == SEGMENTATION_CLASSES
    expected_fs = {"BS": [16], "CSF": [24], "CblmC": [8, 47], "CblmWM": [7, 46],
                   "CeblWM": [2, 41], "Pu": [12, 51], "VDC": [28, 60], "Pa": [13, 52],
                   "Ca": [11, 50], "LV": [4, 43], "Hi": [17, 53], "3V": [14], "4V": [15],
                   "Am": [18, 54], "CeblC": [3, 42]}
    assert FREESURFER_TABLE1.ids == expected_fs
    d = DLMUSE_TABLE1.ids
    assert d["CblmC"] == [38, 39, 71, 72, 73]                  # vermis included
    assert d["LV"] == [51, 52] and 49 not in sum(d.values(), []) and 50 not in sum(d.values(), [])
    assert d["CeblWM"] == list(range(81, 96))
    assert d["CeblC"] == list(range(100, 208)) and len(d["CeblC"]) == 108
    assert d["CSF"] == [1] and d["BS"] == [35] and d["3V"] == [4] and d["4V"] == [11]


def test_check_structures_present():
    names = ["A", "B", "C"]
    check_structures_present(np.array([0, 1, 2, 3]), names, "ok.nii.gz")
    with pytest.raises(DataError) as e:
        check_structures_present(np.array([[0, 2], [0, 0]]), names, "/x/subj.nii.gz")
    assert "/x/subj.nii.gz" in str(e.value) and "A, C" in str(e.value)


def test_mapping_validation():
    with pytest.raises(ValueError, match="no label ids"):
        LabelMapping(["A", "B"], {"A": [1]})
    with pytest.raises(ValueError, match="not in `names`"):
        LabelMapping(["A"], {"A": [1], "Z": [2]})
    with pytest.raises(ValueError, match="negative"):
        LabelMapping(["A"], {"A": [-1]})
