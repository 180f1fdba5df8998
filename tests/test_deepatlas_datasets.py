"""DeepAtlas data: Mindboggle-101 (label fusion, native layout), OAI-ZIB (right knees mirrored,
masks without pose), MSD hippocampus (unlabeled images), the affine-alignment and histogram
matching steps.  Synthetic volumes are written in the native layouts in tmp_path; the real
folders of the shared data are read where present."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from regseg.datasets.alignment import AffineToReference, HistogramMatch, output_grid
from regseg.datasets.io import DataError, Volume
from regseg.datasets.mindboggle import (DKT31_FUSED, DKT31_REGIONS, mindboggle_splits,
                                        mindboggle_subjects)
from regseg.datasets.msd_hippocampus import msd_hippocampus_splits, msd_hippocampus_subjects
from regseg.datasets.oai_zib import KNEE_CLASSES, oai_zib_splits, oai_zib_subjects, read_sides
from regseg.datasets.recipes import MapLabels, Recipe
from regseg.datasets.subjects import Sample, read_subject

RAS = np.diag([1.0, 1.0, 1.0, 1.0])


def _save(path, data, affine=RAS):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


# ------------------------------------------------------------------------------ Mindboggle
def test_dkt31_fusion_has_31_regions_left_and_right():
    assert len(DKT31_FUSED) == 31
    assert DKT31_FUSED.ids["insula"] == [1035, 2035]
    assert sorted(DKT31_REGIONS.values()) == sorted(set(range(2, 36)) - {4, 32, 33})


def test_mindboggle_native_layout_fuses_left_and_right_labels(tmp_path):
    rng = np.random.default_rng(0)
    for subset, n in (("OASIS-TRT-20", 3), ("MMRR-21", 2)):
        for k in range(1, n + 1):
            folder = tmp_path / "mindboggle101" / f"{subset}_volumes" / f"{subset}-{k}"
            labels = np.zeros((8, 8, 8), np.int16)
            labels[:4, :4] = 1002            # left caudal anterior cingulate
            labels[4:, :4] = 2002            # right caudal anterior cingulate
            labels[:, 4:6] = 2035            # right insula
            labels[0, 7, 7] = 1035           # left insula
            _save(folder / "labels.DKT31.manual.nii.gz", labels)
            _save(folder / "t1weighted_brain.nii.gz", rng.random((8, 8, 8)).astype(np.float32))
    subjects = mindboggle_subjects(tmp_path)
    assert [s.subject_id for s in subjects][:2] == ["MMRR-21-1", "MMRR-21-2"]
    assert {s.group for s in subjects} == {"OASIS-TRT-20", "MMRR-21"}
    recipe = Recipe([MapLabels("labels", {"segmentation": DKT31_FUSED},
                               require_present=False)])
    splits = mindboggle_splits(tmp_path, sizes=(3, 1, 1), recipe=recipe)
    assert len(splits.train) == 3 and not splits.is_paper_dataset
    sample = splits.train.load(0)
    fused = sample.segmentation
    names = list(DKT31_FUSED.names)
    cingulate, insula = names.index("caudal anterior cingulate") + 1, names.index("insula") + 1
    assert (fused[:, :4] == cingulate).all()                 # left and right: one class
    assert (fused[:, 4:6] == insula).all() and fused[0, 7, 7] == insula
    assert (fused[1:, 6:] == 0).all()
    with pytest.raises(ValueError, match="20 OASIS-TRT-20"):   # the paper's split needs 20
        mindboggle_splits(tmp_path, recipe=recipe)


def test_mindboggle_missing_labels_are_named(tmp_path):
    folder = tmp_path / "HLN-12_volumes" / "HLN-12-1"
    _save(folder / "t1weighted_brain.nii.gz", np.ones((4, 4, 4), np.float32))
    with pytest.raises(DataError, match="labels.DKT31.manual.nii.gz"):
        mindboggle_subjects(tmp_path)
    with pytest.raises(FileNotFoundError, match="_volumes"):
        mindboggle_subjects(tmp_path / "nothing")


def test_mindboggle_shared_folder_has_31_fused_regions(data_root):
    if not (data_root / "mindboggle101").is_dir():
        pytest.skip("mindboggle101 not in the shared data")
    subjects = mindboggle_subjects(data_root)
    assert len(subjects) == 15 and {s.group for s in subjects} == {"OASIS-TRT-20"}
    sample = MapLabels("labels", {"segmentation": DKT31_FUSED})(read_subject(subjects[0]))
    assert set(np.unique(sample.segmentation)) == set(range(32))


# --------------------------------------------------------------------------------- OAI-ZIB
def _knee(tmp_path, key, side, shape=(6, 5, 4), mask_shape=None, write_mask=True):
    root = tmp_path / "OAI-ZIB"
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    mask = np.zeros(mask_shape or shape, np.uint8)
    mask[0] = 1          # femur on the first x slice
    mask[-1, 0, 0] = 4   # one voxel of tibial cartilage
    # an image file written as from DICOM: left-right axis first, LAS orientation
    affine = np.diag([-0.36, 0.36, 0.7, 1.0])
    _save(root / "images" / f"{key}.nii.gz", image, affine)
    if write_mask:
        itk = sitk.GetImageFromArray(mask.transpose(2, 1, 0))   # ITK index (i, j, k)
        path = root / "segmentation" / "segmentation_masks" / f"{key}.segmentation_masks.mhd"
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(itk, str(path))
    with open(root / "knee_sides.csv", "a") as f:
        f.write(f"{key},{side}\n")
    return image, mask


def test_oai_zib_masks_follow_their_image_and_right_knees_are_mirrored(tmp_path):
    img_l, mask_l = _knee(tmp_path, "9001", "left")
    img_r, mask_r = _knee(tmp_path, "9002", "right")
    _knee(tmp_path, "9003", "left", write_mask=False)       # unlabeled image
    subjects = oai_zib_subjects(tmp_path)
    assert [(s.subject_id, s.group, bool(s.labels)) for s in subjects] == [
        ("9001", "left", True), ("9002", "right", True), ("9003", "left", False)]
    recipe = Recipe([MapLabels("labels", {"segmentation": KNEE_CLASSES}, require_present=False)])
    splits = oai_zib_splits(tmp_path, sizes=(1, 1, 0), recipe=recipe)
    assert "9003" in splits.train.subject_ids            # unlabeled images train
    from regseg.datasets.oai_zib import OAIZIBDataset
    data = OAIZIBDataset("knee", True, subjects, recipe)
    left, right, unlabeled = (data.load(i) for i in range(3))
    # the file's first axis points left (affine -0.36): RAS+ flips it, for image and mask alike
    np.testing.assert_array_equal(left.image, img_l[::-1])
    np.testing.assert_array_equal(left.segmentation, mask_l[::-1])
    assert left.segmentation[-1].max() == 1 and left.segmentation[0, 0, 0] == 4
    # the right knee: the same arrays mirrored once more along RAS axis 0, affine unchanged
    np.testing.assert_array_equal(right.image, img_r)
    np.testing.assert_array_equal(right.segmentation, mask_r)
    np.testing.assert_allclose(right.affine, left.affine)
    assert "segmentation" not in unlabeled.labels


def test_oai_zib_errors_name_the_file(tmp_path):
    _knee(tmp_path, "9001", "left", mask_shape=(6, 5, 3))
    with pytest.raises(DataError, match=r"9001.segmentation_masks.mhd: mask of shape"):
        from regseg.datasets.oai_zib import read_oai_zib_subject
        read_oai_zib_subject(oai_zib_subjects(tmp_path)[0])
    (tmp_path / "OAI-ZIB" / "knee_sides.csv").write_text("ID,side\n9001,up\n")
    with pytest.raises(DataError, match="line 2: side must be 'left' or 'right'"):
        oai_zib_subjects(tmp_path)
    (tmp_path / "OAI-ZIB" / "knee_sides.csv").write_text("ID,side\n")
    with pytest.raises(DataError, match="9001: knee side unknown|9001.nii.gz: knee side"):
        oai_zib_subjects(tmp_path)
    assert read_sides(_write(tmp_path / "s.csv", "id,side\n1,Left\n2, right\n")) == {
        "1": "left", "2": "right"}


def _write(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- MSD hippocampus
def test_msd_release_layout_reads_unlabeled_test_images(tmp_path):
    root = tmp_path / "Task04_Hippocampus"
    for folder, name in (("imagesTr", "hippocampus_001"), ("imagesTr", "hippocampus_002"),
                         ("imagesTs", "hippocampus_005")):
        _save(root / folder / f"{name}.nii.gz", np.ones((4, 4, 4), np.float32))
    for name in ("hippocampus_001", "hippocampus_002"):
        _save(root / "labelsTr" / f"{name}.nii.gz", np.ones((4, 4, 4), np.uint8))
    subjects = msd_hippocampus_subjects(tmp_path)
    assert [(s.subject_id, bool(s.labels)) for s in subjects] == [
        ("hippocampus_001", True), ("hippocampus_002", True), ("hippocampus_005", False)]


def test_msd_hippocampus_split_keeps_the_unlabeled_image_in_training(data_root):
    if not (data_root / "msd_hippocampus").is_dir():
        pytest.skip("msd_hippocampus not in the shared data")
    splits = msd_hippocampus_splits(data_root)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (200, 10, 51)
    train = {s.subject_id: s for s in splits.train.subjects}
    assert "hippocampus_118" in train and not train["hippocampus_118"].labels
    assert "hippocampus_001" in train                       # the affine reference trains
    assert all(s.labels for s in splits.validation.subjects + splits.test.subjects)
    ids = [set(p.subject_ids) for p in (splits.train, splits.validation, splits.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    sample = splits.test.load(0)
    assert sample.shape == (48, 64, 48) and sample.image.min() == 0 and sample.image.max() == 1
    assert set(np.unique(sample.structures)) == {0, 1, 2}


# ------------------------------------------------------------------ alignment steps
def _texture(shape, seed=0):
    """A few Gaussian blobs of different sizes and brightness (no symmetry to exploit)."""
    rng = np.random.default_rng(seed)
    x = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    out = np.zeros(shape)
    for _ in range(7):
        centre = rng.uniform(0.3, 0.7, 3) * np.asarray(shape)
        width = rng.uniform(2.5, 6.0, 3)
        out += rng.uniform(0.3, 1.0) * np.exp(-0.5 * (((x - centre) / width) ** 2).sum(-1))
    return out.astype(np.float32)


def test_affine_to_reference_recovers_a_known_affine(tmp_path):
    from scipy import ndimage

    shape = (40, 40, 40)
    reference = _texture(shape)
    _save(tmp_path / "ref.nii.gz", reference)
    # moving(y) = reference(A y + b): a known affine (scales 1.06-0.95, a shear, a shift)
    a = np.array([[1.06, 0.04, 0.0], [0.0, 0.95, 0.03], [0.02, 0.0, 1.02]])
    b = np.array([-3.0, 2.5, -1.5])
    moving = ndimage.affine_transform(reference, a, b, order=1).astype(np.float32)
    sample = Sample("s", {"t1": moving}, {"labels": (moving > 0.4).astype(np.int32)},
                    affine=RAS.copy())
    step = AffineToReference(str(tmp_path / "ref.nii.gz"), 1.0, (32, 32, 32), sampling=0.5)
    out = step(sample)
    shape_out, affine = output_grid(Volume(reference, RAS, "ref"), 1.0, (32, 32, 32))
    assert out.image.shape == shape_out == (32, 32, 32)
    np.testing.assert_allclose(out.affine, affine)
    # the reference on the same box (world = voxel indices of the reference here)
    box = np.indices((32, 32, 32)).reshape(3, -1) + affine[:3, 3:4]
    target = ndimage.map_coordinates(reference, box, order=1).reshape(32, 32, 32)
    unaligned = ndimage.map_coordinates(moving, box, order=1).reshape(32, 32, 32)
    error_before = np.abs(unaligned - target).mean()
    error_after = np.abs(out.image - target).mean()
    assert error_after < 0.25 * error_before
    assert np.corrcoef(out.image.ravel(), target.ravel())[0, 1] > 0.97
    # the same transform in every run (SimpleITK's seed 0 would mean the wall clock)
    again = step(Sample("s", {"t1": moving}, {"labels": (moving > 0.4).astype(np.int32)},
                        affine=RAS.copy()))
    np.testing.assert_array_equal(again.image, out.image)
    np.testing.assert_array_equal(again.labels["labels"], out.labels["labels"])
    with pytest.raises(ValueError, match="seed must be an int >= 1"):
        AffineToReference("ref", seed=0)


def test_histogram_match_maps_foreground_quantiles_to_the_reference(tmp_path):
    rng = np.random.default_rng(1)
    reference = np.zeros((10, 10, 10), np.float32)
    reference[2:8, 2:8, 2:8] = rng.gamma(2.0, 10.0, (6, 6, 6))
    _save(tmp_path / "ref.nii.gz", reference)
    image = np.zeros((10, 10, 10), np.float32)
    image[1:9, 1:9, 1:9] = rng.normal(100, 5, (8, 8, 8)) ** 2
    out = HistogramMatch(str(tmp_path / "ref.nii.gz"))(Sample("s", {"t1": image.copy()}))
    inside = image != 0
    assert (out.image[~inside] == 0).all()
    q = np.linspace(0.05, 0.95, 7)
    np.testing.assert_allclose(np.quantile(out.image[inside], q),
                               np.quantile(reference[reference != 0], q), rtol=0.08)
    # the order of intensities is kept
    order = np.argsort(image[inside])
    assert (np.diff(out.image[inside][order]) >= -1e-4).all()
