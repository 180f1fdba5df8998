"""Tests on the real ixi10 sample (10 IXI T1 MRIs with DLMUSE labels) from the shared data folder."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from regseg.datasets import DLMUSE_SEGMENTATION, DLMUSE_TABLE1, load_volume
from regseg.datasets.ixi10 import IXI10_CROP, ixi10_folder, ixi10_splits, ixi10_subjects

IDS = ["IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236", "IXI015-HH-1258", "IXI033-HH-1259",
       "IXI034-HH-1260", "IXI039-HH-1261", "IXI048-HH-1326", "IXI049-HH-1358", "IXI051-HH-1328"]


@pytest.fixture(scope="module")
def ixi_labels(ixi10_root):
    """The 10 label maps, loaded once per module: {subject id: Volume}."""
    return {s.subject_id: load_volume(s.label_path, label=True) for s in ixi10_subjects(ixi10_root)}


@pytest.fixture(scope="module")
def ixi_splits(data_root, ixi10_root):
    return ixi10_splits(data_root)


@pytest.fixture(scope="module")
def muse_volumes(ixi10_root):
    """ROI volumes (mm^3) shipped with the sample: {subject: {roi id: volume}}."""
    with open(ixi10_root / "muse_roi_volumes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["MRID"]: {int(k): float(v) for k, v in r.items() if k != "MRID"} for r in rows}


def test_all_structures_and_classes_present_in_every_subject(ixi_labels):
    assert sorted(ixi_labels) == IDS
    for sid, vol in ixi_labels.items():
        counts = np.bincount(DLMUSE_TABLE1.apply(vol.data).ravel(), minlength=16)[1:]
        empty = [n for n, c in zip(DLMUSE_TABLE1.names, counts) if c == 0]
        assert not empty, f"{sid}: empty structures {empty}"
        seg = np.bincount(DLMUSE_SEGMENTATION.apply(vol.data).ravel(), minlength=4)[1:]
        assert np.all(seg > 0), sid


def test_structure_volumes_match_shipped_roi_table(ixi_labels, muse_volumes):
    """Volumes from our mapping equal the sums of DLMUSE's own ROI volumes (independent source)."""
    checked = 0
    for sid, vol in ixi_labels.items():
        voxel_mm3 = float(np.prod(vol.spacing))
        counts = np.bincount(DLMUSE_TABLE1.apply(vol.data).ravel(), minlength=16)[1:]
        for k, name in enumerate(DLMUSE_TABLE1.names):
            ids = DLMUSE_TABLE1.ids[name]
            listed = [i for i in ids if i in muse_volumes[sid]]
            unlisted = [i for i in ids if i not in muse_volumes[sid]]
            # ids the table lacks (unused cortical ids 110, 111, ...) must be absent from the map;
            # CSF (id 1) is not in the table at all and cannot be checked this way.
            if listed and not np.isin(vol.data, unlisted).any():
                expected = sum(muse_volumes[sid][i] for i in listed)
                assert counts[k] * voxel_mm3 == pytest.approx(expected, abs=1e-6), (sid, name)
                checked += 1
    assert checked >= 10 * 14


def test_splits_are_the_documented_ones(ixi_splits):
    assert ixi_splits.train.subject_ids == IDS[:7]
    assert ixi_splits.validation.subject_ids == IDS[7:8]
    assert ixi_splits.test.subject_ids == IDS[8:]
    assert ixi_splits.train.is_paper_dataset is False
    assert "stand-in for OASIS-3" in ixi_splits.name
    assert ixi_splits.train.structure_names == DLMUSE_TABLE1.names
    assert ixi_splits.train.class_names == ["CeblWM", "CeblC", "LV"]


def test_root_may_be_the_ixi10_folder_itself(data_root, ixi10_root):
    assert ixi10_folder(data_root) == ixi10_folder(ixi10_root) == ixi10_root
    with pytest.raises(FileNotFoundError, match="download"):
        ixi10_folder(ixi10_root / "images")


def _world(affine, ijk):
    return np.asarray(ijk, np.float64) @ affine[:3, :3].T + affine[:3, 3]


def test_samples_against_the_raw_files(ixi_splits, muse_volumes):
    """Every preprocessed sample is checked voxel by voxel against the raw (PSR-stored) files."""
    for ds in (ixi_splits.train, ixi_splits.validation, ixi_splits.test):
        for i, subject in enumerate(ds.subjects):
            sample = ds.load(i)
            assert sample.image.shape == sample.structures.shape == IXI10_CROP == (80, 104, 88)
            assert sample.image.dtype == np.float32 and sample.structures.dtype == np.int32
            raw_img = nib.load(subject.image_path)
            raw_lab = np.asanyarray(nib.load(subject.label_path).dataobj).astype(np.int64)
            img = raw_img.get_fdata()
            brain = raw_lab > 0
            z = np.where(brain, (img - img[brain].mean()) / img[brain].std(), 0.0)

            # 100k random output voxels (of 732k) keep the test fast; the same ones every run
            rng = np.random.default_rng(i)
            out_idx = np.stack([rng.integers(0, n, 100_000) for n in sample.image.shape], 1)
            src = _world(np.linalg.inv(raw_img.affine), _world(sample.affine, out_idx))
            np.testing.assert_allclose(src, np.rint(src), atol=1e-4)
            src = np.rint(src).astype(int)
            inside = np.all((src >= 0) & (src < np.array(img.shape)), axis=1)
            o, s = tuple(out_idx[inside].T), tuple(src[inside].T)
            np.testing.assert_allclose(sample.image[o], z[s], atol=2e-5)
            np.testing.assert_array_equal(sample.structures[o], DLMUSE_TABLE1.apply(raw_lab[s]))
            np.testing.assert_array_equal(sample.segmentation[o],
                                          DLMUSE_SEGMENTATION.apply(raw_lab[s]))
            assert np.all(sample.image[tuple(out_idx[~inside].T)] == 0)
            # no brain voxel is lost by the crop: structure volumes equal the shipped ROI table
            lv = np.count_nonzero(sample.structures == DLMUSE_TABLE1.names.index("LV") + 1) * 8.0
            assert lv == muse_volumes[subject.subject_id][51] + muse_volumes[subject.subject_id][52]
            assert np.count_nonzero(sample.image) == np.count_nonzero(brain)
            # in RAS order: first axis left->right, so the brain spans ~70 voxels (140 mm) on it
            assert sample.affine[0, 0] > 0 and sample.affine[1, 1] > 0 and sample.affine[2, 2] > 0


def test_cache_returns_same_sample(ixi_splits):
    assert ixi_splits.test.load(0) is ixi_splits.test.load(0)
    sub = ixi_splits.train.subset([6, 0])
    assert sub.subject_ids == [IDS[6], IDS[0]] and len(sub) == 2
    assert sub.load(1) is ixi_splits.train.load(0)
