"""Pairs of unregistered NIfTI images with a mask each (Couteaux et al. §3.2.1): the CSV layout,
the brats_toolkit_unregistered stand-in, and patient-wise folds."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from regseg.datasets.io import DataError
from regseg.datasets.paired_modalities import (BRATS_TOOLKIT_PAIRS, brats_toolkit_subjects,
                                               hold_out_groups, leave_one_group_out,
                                               paired_recipe, read_pairs_csv)
from regseg.datasets.recipes import Recipe
from regseg.datasets.subjects import SubjectDataset


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


@pytest.fixture()
def csv_pairs(tmp_path):
    """Two patients; the second image of each pair is on another grid (2 mm, shifted origin)."""
    rows = ["patient,image1,image2,mask1,mask2,pair"]
    for patient in ("p1", "p2"):
        for k in range(2 if patient == "p1" else 1):
            img = np.zeros((16, 16, 16), np.float32)
            img[4:12, 5:11, 6:10] = 1.0
            a1 = np.diag([1.0, 1.0, 1.0, 1.0])
            a2 = np.diag([2.0, 2.0, 2.0, 1.0])
            a2[:3, 3] = [1.0, 0.0, 0.0]
            names = [f"{patient}_{k}_{n}.nii.gz" for n in ("t1", "t2", "m1", "m2")]
            _write(tmp_path / names[0], img, a1)
            _write(tmp_path / names[1], img[::2, ::2, ::2], a2)
            _write(tmp_path / names[2], (img > 0).astype(np.uint8), a1)
            _write(tmp_path / names[3], (img[::2, ::2, ::2] > 0).astype(np.uint8), a2)
            rows.append(f"{patient},{','.join(names)},study{k}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.csv"


def test_csv_pairs_are_subjects_on_the_first_images_grid(csv_pairs):
    subjects = read_pairs_csv(csv_pairs)
    assert [s.subject_id for s in subjects] == ["p1:study0", "p1:study1", "p2:study0"]
    assert [s.group for s in subjects] == ["p1", "p1", "p2"]
    sample = SubjectDataset("t", False, subjects, Recipe([])).load(0)
    assert set(sample.images) == {"x1", "x2"} and set(sample.masks) == {"s1", "s2"}
    assert sample.images["x2"].shape == (16, 16, 16)
    # x2 resampled onto x1's grid in world coordinates: voxel i of x1 is at i mm, voxel j of x2 at
    # 1 + 2j mm along the first axis, so the mask of x2 shows up where SimpleITK puts it
    moving = sitk.ReadImage(str(csv_pairs.parent / "p1_0_m2.nii.gz"))
    ref = sitk.ReadImage(str(csv_pairs.parent / "p1_0_m1.nii.gz"))
    expected = sitk.GetArrayFromImage(sitk.Resample(moving, ref, sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0)).T > 0
    # (nibabel's RAS+ voxel order vs. ITK's LPS: both images have the same direction, so the
    # canonical reorientation flips both the same way)
    flips = tuple(i for i in range(3) if nib.aff2axcodes(nib.load(
        str(csv_pairs.parent / "p1_0_m1.nii.gz")).affine)[i] != "RAS"[i])
    np.testing.assert_array_equal(sample.masks["s2"], np.flip(expected, flips) if flips else expected)


def test_csv_errors_name_the_file_and_row(csv_pairs, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,image1,image2,mask1\np1,a,b,c\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) mask2"):
        read_pairs_csv(bad)
    bad.write_text("patient,image1,image2,mask1,mask2\np1,nope.nii.gz,b,c,d\n")
    with pytest.raises(DataError, match=r"bad\.csv, row 2: .*nope\.nii\.gz: image1 of patient p1"):
        read_pairs_csv(bad)


def test_folds_never_split_a_patient(csv_pairs):
    dataset = SubjectDataset("t", False, read_pairs_csv(csv_pairs), Recipe([]))
    folds = leave_one_group_out(dataset)
    assert [f[0] for f in folds] == ["p1", "p2"]
    for held_out, train, test in folds:
        assert {s.group for s in test.subjects} == {held_out}
        assert held_out not in {s.group for s in train.subjects}
        assert len(train) + len(test) == 3
    (name, train, test), = hold_out_groups(dataset, 1, seed=0)
    assert len({s.group for s in test.subjects} & {s.group for s in train.subjects}) == 0
    with pytest.raises(ValueError, match="nothing to train"):
        hold_out_groups(dataset, 3)


def test_brats_toolkit_pairs(data_root):
    if not (data_root / "brats_toolkit_unregistered").is_dir():
        pytest.skip("brats_toolkit_unregistered not in the data root")
    subjects = brats_toolkit_subjects(data_root)
    assert len(subjects) == 2 * len(BRATS_TOOLKIT_PAIRS)
    assert {s.group for s in subjects} == {"TCGA-FG-6692", "TCGA-DU-7294"}
    one = next(s for s in subjects if s.subject_id == "TCGA-FG-6692:t1-t2")
    assert one.images["x1"].endswith("_t1.nii.gz") and one.masks["s2"].endswith("_t2.nii.gz")
    sample = SubjectDataset("b", False, [one], paired_recipe(4.0, (48, 48, 32))).load(0)
    assert sample.images["x1"].shape == (48, 48, 32) and sample.masks["s2"].dtype == bool
    assert 0.0 <= sample.images["x2"].min() and sample.images["x2"].max() <= 1.0
    np.testing.assert_allclose(sample.spacing, 4.0)
    s1, s2 = sample.masks["s1"], sample.masks["s2"]
    dice = 2 * (s1 & s2).sum() / (s1.sum() + s2.sum())
    assert 0.6 < dice < 0.9   # the T1 and T2 brain masks of this patient are misaligned
    with pytest.raises(ValueError, match="unknown modality"):
        brats_toolkit_subjects(data_root, [("t1", "dwi")])
