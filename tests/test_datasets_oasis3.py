"""Tests of the OASIS-3 FreeSurfer folder discovery and loading.

OASIS-3 cannot be shipped, so these tests build tiny FreeSurfer-like ``.mgz`` files (LIA
orientation, like FreeSurfer's conformed space) in the layouts the loader must accept.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from regseg.datasets import (
    FREESURFER_SEGMENTATION,
    FREESURFER_TABLE1,
    PAPER_CROP_RAS_1MM,
    SubjectDataset,
)
from regseg.datasets.io import DataError
from regseg.datasets.recipes import ureSnet_recipe
from regseg.datasets.oasis3 import find_oasis3_sessions, oasis3_splits, oasis3_subject_of

# FreeSurfer conformed orientation (LIA), 1 mm, centred.
N = 40
LIA = np.array([[-1.0, 0, 0, N / 2], [0, 0, 1.0, -N / 2], [0, -1.0, 0, N / 2], [0, 0, 0, 1]])
ALL_IDS = sorted(sum(FREESURFER_TABLE1.ids.values(), [])) + [10]   # 26 mapped ids + thalamus


def _aseg(shift):
    aseg = np.zeros((N, N, N), np.int32)
    cells = [(a, b, c) for a in range(3) for b in range(3) for c in range(3)]
    for (a, b, c), label in zip(cells, ALL_IDS):
        x, y, z = 6 + 9 * a + shift, 6 + 9 * b, 6 + 9 * c
        aseg[x:x + 8, y:y + 8, z:z + 8] = label
    return aseg


def _write_session(mri, shift=0, brainmask=True, seed=0):
    rng = np.random.default_rng(seed)
    mri.mkdir(parents=True)
    aseg = _aseg(shift)
    orig = (rng.random((N, N, N)) * 100 + 20).astype(np.float32)    # skull everywhere
    nib.save(nib.MGHImage(aseg, LIA), str(mri / "aseg.mgz"))
    nib.save(nib.MGHImage(orig, LIA), str(mri / "orig.mgz"))
    if brainmask:
        inside = np.zeros_like(aseg, bool)
        inside[4:36, 3:37, 3:37] = True                              # larger than aseg > 0
        nib.save(nib.MGHImage(np.where(inside, orig, 0).astype(np.float32), LIA),
                 str(mri / "brainmask.mgz"))


@pytest.fixture()
def oasis_root(tmp_path):
    root = tmp_path / "oasis3"
    _write_session(root / "OAS30001_Freesurfer53_d0129" / "DATA" / "OAS30001_MR_d0129" / "mri")
    _write_session(root / "OAS30001_Freesurfer53_d1000" / "DATA" / "OAS30001_MR_d1000" / "mri",
                   shift=2, brainmask=False, seed=1)
    _write_session(root / "OAS30002_MR_d0000" / "mri", seed=2)
    _write_session(root / "OAS30003_MR_d0050" / "mri", seed=3)
    _write_session(root / "nested" / "OAS30004_MR_d0010" / "mri", seed=4)
    return root


def test_subject_of():
    assert oasis3_subject_of("OAS30001_MR_d0129") == "OAS30001"
    assert oasis3_subject_of("OAS30123_Freesurfer53_d0129") == "OAS30123"
    with pytest.raises(ValueError):
        oasis3_subject_of("sub-01")


def test_find_sessions(oasis_root):
    sessions = find_oasis3_sessions(oasis_root)
    assert [s.subject_id for s in sessions] == ["OAS30001_MR_d0129", "OAS30001_MR_d1000",
                                                "OAS30002_MR_d0000", "OAS30003_MR_d0050",
                                                "OAS30004_MR_d0010"]
    first, second = sessions[0], sessions[1]
    assert first.image_path.endswith("brainmask.mgz") and first.brain_mask_path == first.image_path
    assert second.image_path.endswith("orig.mgz") and second.brain_mask_path is None
    assert all(s.label_path.endswith("/mri/aseg.mgz") for s in sessions)


def test_splits_group_sessions_and_load(oasis_root):
    splits = oasis3_splits(oasis_root, sizes=(3, 1, 1), seed=0)
    assert splits.train.is_paper_dataset and splits.name.startswith("OASIS-3")
    where = {sid: k for k, ds in enumerate((splits.train, splits.validation, splits.test))
             for sid in ds.subject_ids}
    assert where["OAS30001_MR_d0129"] == where["OAS30001_MR_d1000"]
    assert sum(len(ds) for ds in (splits.train, splits.validation, splits.test)) == 5

    # load both sessions of OAS30001: one with brainmask.mgz, one with orig.mgz only
    ds = (splits.train, splits.validation, splits.test)[where["OAS30001_MR_d0129"]]
    for sid in ("OAS30001_MR_d0129", "OAS30001_MR_d1000"):
        i = ds.subject_ids.index(sid)
        subject = ds.subjects[i]
        sample = ds.load(i)
        assert sample.image.shape == PAPER_CROP_RAS_1MM
        assert sample.structures.max() == 15 and sample.segmentation.max() == 3
        # reference, computed from the raw LIA arrays
        raw = nib.load(subject.image_path)
        img = np.asarray(raw.get_fdata())
        aseg = np.asanyarray(nib.load(subject.label_path).dataobj)
        brain = img > 0 if subject.brain_mask_path else aseg > 0
        z = np.where(brain, (img - img[brain].mean()) / img[brain].std(), 0.0)
        idx = np.argwhere(brain)
        world = idx @ raw.affine[:3, :3].T + raw.affine[:3, 3]
        out = np.rint((world - sample.affine[:3, 3]) @ np.linalg.inv(sample.affine[:3, :3]).T)
        out = out.astype(int)
        assert np.all((out >= 0) & (out < np.array(PAPER_CROP_RAS_1MM)))  # whole brain kept
        o, s = tuple(out.T), tuple(idx.T)
        np.testing.assert_allclose(sample.image[o], z[s], atol=1e-5)
        np.testing.assert_array_equal(sample.structures[o], FREESURFER_TABLE1.apply(aseg[s]))
        np.testing.assert_array_equal(sample.segmentation[o], FREESURFER_SEGMENTATION.apply(aseg[s]))
        assert np.count_nonzero(sample.image) == np.count_nonzero(z)
        # brain centre of mass at the box centre (+-0.5 voxel)
        com = np.argwhere(sample.image != 0).mean(0)
        assert np.all(np.abs(com - (np.array(PAPER_CROP_RAS_1MM) - 1) / 2) <= 0.5 + 1e-6)


def test_missing_structure_is_reported(tmp_path):
    mri = tmp_path / "OAS30009_MR_d0001" / "mri"
    _write_session(mri, brainmask=False)
    aseg = np.asanyarray(nib.load(str(mri / "aseg.mgz")).dataobj).copy()
    aseg[aseg == 15] = 0                                               # no 4th ventricle
    nib.save(nib.MGHImage(aseg, LIA), str(mri / "aseg.mgz"))
    sessions = find_oasis3_sessions(tmp_path)
    ds = SubjectDataset("t", True, sessions,
                        ureSnet_recipe((48, 48, 48), FREESURFER_TABLE1, FREESURFER_SEGMENTATION))
    with pytest.raises(DataError) as e:
        ds.load(0)
    assert "aseg.mgz" in str(e.value) and "4V" in str(e.value)


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected FreeSurfer outputs"):
        find_oasis3_sessions(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no OASIS-3 FreeSurfer session found; expected"):
        find_oasis3_sessions(tmp_path / "empty")
    bare = tmp_path / "bare" / "OAS30005_MR_d0001" / "mri"
    bare.mkdir(parents=True)
    nib.save(nib.MGHImage(_aseg(0), LIA), str(bare / "aseg.mgz"))
    with pytest.raises(DataError, match="neither brainmask.mgz nor orig.mgz"):
        find_oasis3_sessions(tmp_path / "bare")
    _write_session(tmp_path / "anon" / "subject1" / "mri")
    with pytest.raises(DataError, match="no OASIS-3 session id"):
        find_oasis3_sessions(tmp_path / "anon")


def test_resampling_path(oasis_root):
    """spacing_mm: image/labels/mask resampled to 2 mm before preprocessing; volumes kept (mm^3)."""
    sessions = find_oasis3_sessions(oasis_root)[:1]
    ds = SubjectDataset("t", False, sessions,
                        ureSnet_recipe((24, 24, 24), FREESURFER_TABLE1, FREESURFER_SEGMENTATION,
                                       spacing_mm=2.0, skull_strip="brainmask"))
    sample = ds.load(0)
    assert sample.image.shape == (24, 24, 24)
    np.testing.assert_allclose(np.linalg.norm(sample.affine[:3, :3], axis=0), [2.0, 2.0, 2.0])
    aseg = np.asanyarray(nib.load(sessions[0].label_path).dataobj)
    at_1mm = np.bincount(FREESURFER_TABLE1.apply(aseg).ravel(), minlength=16)[1:]       # mm^3
    at_2mm = np.bincount(sample.structures.ravel(), minlength=16)[1:] * 8.0              # mm^3
    # 8 mm cubes on a 2 mm grid: each side becomes 3-5 voxels (6-10 mm): volume within x0.4..x2
    assert np.all(at_2mm > 0.4 * at_1mm) and np.all(at_2mm < 2.0 * at_1mm)
    assert abs(at_2mm.sum() - at_1mm.sum()) < 0.15 * at_1mm.sum()
    brain = sample.image != 0
    assert abs(sample.image[brain].mean()) < 1e-4 and abs(sample.image[brain].std() - 1) < 1e-4
