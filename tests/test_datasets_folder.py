"""Tests of folder_splits: any images/ + labels/ folder with a JSON label mapping."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from regseg.datasets import DataError, folder_splits
from regseg.datasets.folder import folder_subjects, read_mapping_json


def _save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def _mapping(tmp_path, content):
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(content))
    return path


def test_msd_hippocampus_folder(data_root, tmp_path):
    """Real data: the MSD hippocampus folder (images/ + labels/, labels 1 = head, 2 = body)."""
    root = data_root / "msd_hippocampus"
    if not (root / "images").is_dir():
        pytest.skip(f"{root} not found")
    mapping = _mapping(tmp_path, {"structures": {"head": [1], "body": [2]}})
    # The real folder has an image without a label map (hippocampus_118): a clear DataError.
    with pytest.raises(DataError, match="hippocampus_118.nii.gz: no label map"):
        folder_splits(root, mapping, sizes=(3, 1, 1))
    # A folder of links to 6 complete subjects (links only: the data is never copied).
    sub = tmp_path / "msd6"
    for k in ("001", "003", "004", "006", "007", "008"):
        for part in ("images", "labels"):
            (sub / part).mkdir(parents=True, exist_ok=True)
            (sub / part / f"hippocampus_{k}.nii.gz").symlink_to(
                root / part / f"hippocampus_{k}.nii.gz")
    splits = folder_splits(sub, mapping, sizes=(3, 1, 1), seed=0, crop_shape=(40, 56, 40),
                           skull_strip="none")
    assert [len(d) for d in (splits.train, splits.validation, splits.test)] == [3, 1, 1]
    assert not splits.train.is_paper_dataset and splits.train.class_names == ["head", "body"]
    sample = splits.test.load(0)
    assert sample.image.shape == (40, 56, 40)
    raw_img = nib.load(splits.test.subjects[0].image_path)
    raw_lab = np.asanyarray(nib.load(splits.test.subjects[0].label_path).dataobj)
    img = raw_img.get_fdata()
    # no skull stripping: z-score over the whole volume, labels unchanged (1 -> 1, 2 -> 2)
    z = (img - img.mean()) / img.std()
    assert np.bincount(sample.structures.ravel(), minlength=3)[1:].tolist() == \
        np.bincount(raw_lab.astype(int).ravel(), minlength=3)[1:].tolist()
    np.testing.assert_allclose(np.sort(sample.image[sample.image != 0])[-20:],
                               np.sort(z.ravel())[-20:], rtol=1e-5)


def test_image_without_label_is_an_error(tmp_path):
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    _save(tmp_path / "images" / "a.nii.gz", np.ones((6, 6, 6), np.float32))
    _save(tmp_path / "labels" / "a.nii.gz", lab)
    _save(tmp_path / "images" / "b.nii", np.ones((6, 6, 6), np.float32))
    with pytest.raises(DataError) as e:
        folder_subjects(tmp_path)
    assert "b.nii" in str(e.value) and "no label map" in str(e.value)
    with pytest.raises(FileNotFoundError, match="expected <root>/images"):
        folder_subjects(tmp_path / "nothing")


def test_mapping_json_variants_and_loading(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(3):
        lab = np.zeros((12, 12, 12), np.int16)
        lab[3:9, 3:9, 3:6] = 5
        lab[3:9, 3:9, 6:9] = 7
        lab[5, 5, 5] = 9
        _save(tmp_path / "images" / f"s{k}.nii.gz", rng.random((12, 12, 12)).astype(np.float32))
        _save(tmp_path / "labels" / f"s{k}.nii.gz", lab)
    only = _mapping(tmp_path, {"structures": {"A": [5], "B": [7, 9]}})
    s, c = read_mapping_json(only)
    assert s.names == c.names == ["A", "B"]
    listed = _mapping(tmp_path, {"structures": {"A": [5], "B": [7, 9]}, "segmentation_classes": ["B"]})
    s, c = read_mapping_json(listed)
    assert c.names == ["B"] and c.ids == {"B": [7, 9]}
    bad = _mapping(tmp_path, {"structures": {"A": [5]}, "segmentation_classes": ["Z"]})
    with pytest.raises(DataError, match="mapping.json: segmentation_classes"):
        read_mapping_json(bad)

    listed = _mapping(tmp_path, {"structures": {"A": [5], "B": [7, 9]},
                                 "segmentation_classes": {"all": [5, 7, 9]}})
    splits = folder_splits(tmp_path, listed, sizes=(1, 1, 1), seed=0, crop_shape=None)
    sample = splits.train.load(0)
    assert sample.image.shape == (12, 12, 12)          # already a multiple of 4
    raw = np.asanyarray(nib.load(splits.train.subjects[0].label_path).dataobj)
    # the brain (label > 0) is centred already, so the crop is the identity here
    np.testing.assert_array_equal(sample.structures, np.select([raw == 5, raw > 5], [1, 2], 0))
    np.testing.assert_array_equal(sample.segmentation, (raw > 0).astype(np.int32))


def test_label_without_image_and_duplicate_ids_are_named(tmp_path):
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    img = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
    for part in ("images", "labels"):
        (tmp_path / part).mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / "images" / name))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "labels" / name))
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "labels" / "c.nii.gz"))
    with pytest.raises(DataError, match="c.nii.gz: label map without an image"):
        folder_subjects(tmp_path)
    (tmp_path / "labels" / "c.nii.gz").unlink()
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / "images" / "a.nii"))
    with pytest.raises(DataError, match=r"a.nii(.gz)? and .*a.nii(.gz)?: two files for subject 'a'"):
        folder_subjects(tmp_path)
