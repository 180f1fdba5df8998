"""Learn2Reg loaders on tiny folders built here, in both layouts (2020 task folders, dataset.json).

Checked: subjects and their parts, the listed pairs (moving, fixed), keypoints converted from
voxel indices to world millimetres through each file's affine (computed by hand here), the
splits for the pyramid (test scans held out of training), and one-line errors naming the file.
"""

import json

import nibabel as nib
import numpy as np
import pytest

from regseg.datasets.io import DataError
from regseg.datasets.learn2reg import (TaskDatasets, cyclic_pairs, disjoint_pairs,
                                       learn2reg_splits, read_learn2reg2020_task,
                                       read_learn2reg_json)

AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 2.0, 0, 5.0], [0, 0, 1.0, 2.0], [0, 0, 0, 1]])


def _save(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


def _volume(seed, shape=(8, 10, 6)):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _labels(shape=(8, 10, 6), n=2):
    lab = np.zeros(shape, np.int16)
    for k in range(1, n + 1):
        lab[k:k + 3, 2:6, 1:4] = k
    return lab


def _task2_2020(root):
    for case in (1, 2):
        for phase in ("exp", "insp"):
            name = f"case_{case:03d}_{phase}.nii.gz"
            _save(root / "training" / "scans" / name, _volume(case))
            _save(root / "training" / "lungMasks" / name, _labels(n=1))
    kp = root / "keypoints"
    kp.mkdir()
    (kp / "case_001_exp.csv").write_text("1,2,3\n4.5,0,1\n")
    (kp / "case_001_insp.csv").write_text("1,2,4\n4.5,1,1\n")
    (root / "pairs_val.csv").write_text("fixed,moving\n1,1\n")


def _task4_2020(root, n=4):
    for i in range(1, n + 1):
        _save(root / "Training" / "img" / f"hippocampus_{i:03d}.nii.gz", _volume(i))
        _save(root / "Training" / "label" / f"hippocampus_{i:03d}.nii.gz", _labels())
    (root / "pairs_val.csv").write_text("fixed,moving\n2,1\n4,3\n")


def test_learn2reg2020_task2_lung_layout(tmp_path):
    _task2_2020(tmp_path)
    task = read_learn2reg2020_task(tmp_path, "task2")
    ids = [s.subject_id for s in task.subjects]
    assert ids == ["case_001_exp", "case_001_insp", "case_002_exp", "case_002_insp"]
    assert task.pairs == [("case_001_insp", "case_001_exp")]   # (moving, fixed): exp is fixed
    assert read_learn2reg2020_task(tmp_path, "task2", fixed_phase="insp").pairs == [
        ("case_001_exp", "case_001_insp")]
    exp = task.subjects[0]
    assert exp.masks == {"lung": str(tmp_path / "training" / "lungMasks" / "case_001_exp.nii.gz")}
    # voxel (1, 2, 3) -> world by hand with the file's affine
    np.testing.assert_allclose(exp.landmarks, [[-8.5, 9.0, 5.0], [-3.25, 5.0, 3.0]])
    assert task.subjects[2].landmarks is None                  # no keypoint file for case 2
    assert task.labels.names == ["lung"]


def test_learn2reg2020_task4_layout_and_errors(tmp_path):
    _task4_2020(tmp_path)
    task = read_learn2reg2020_task(tmp_path, "task4")
    assert len(task.subjects) == 4 and task.labels.names == ["anterior", "posterior"]
    assert task.pairs == [("hippocampus_001", "hippocampus_002"),
                          ("hippocampus_003", "hippocampus_004")]
    (tmp_path / "Training" / "label" / "hippocampus_004.nii.gz").unlink()
    with pytest.raises(DataError, match="hippocampus_004.nii.gz: no label map"):
        read_learn2reg2020_task(tmp_path, "task4")
    (tmp_path / "pairs_val.csv").write_text("first,second\n1,2\n")
    _save(tmp_path / "Training" / "label" / "hippocampus_004.nii.gz", _labels())
    with pytest.raises(DataError, match="pairs_val.csv: the pairs file needs a header"):
        read_learn2reg2020_task(tmp_path, "task4")
    with pytest.raises(DataError, match="Training/img"):
        read_learn2reg2020_task(tmp_path / "Training", "task3")


def _json_dataset(root):
    entries = []
    for case in (1, 2, 3):
        for mod in (0, 1):
            stem = f"HippocampusMR_{case:04d}_{mod:04d}"
            _save(root / "imagesTr" / f"{stem}.nii.gz", _volume(10 * case + mod))
            _save(root / "labelsTr" / f"{stem}.nii.gz", _labels())
            (root / "keypointsTr").mkdir(exist_ok=True)
            (root / "keypointsTr" / f"{stem}.csv").write_text("0,0,0\n2,1,1\n")
            entries.append({"image": f"./imagesTr/{stem}.nii.gz",
                            "label": f"./labelsTr/{stem}.nii.gz",
                            "keypoints": f"./keypointsTr/{stem}.csv"})
    entries.append({"image": "./imagesTr/missing_0009_0000.nii.gz"})   # not on disk: skipped
    data = {"name": "HippocampusMR", "tensorImageShape": {"0": [8, 10, 6]},
            "labels": {"0": {"0": "background", "1": "anterior", "2": "posterior"}},
            "training": entries,
            "registration_val": [{"fixed": "./imagesTr/HippocampusMR_0003_0000.nii.gz",
                                  "moving": "./imagesTr/HippocampusMR_0003_0001.nii.gz"}]}
    (root / "HippocampusMR_dataset.json").write_text(json.dumps(data))


def test_current_dataset_json_layout(tmp_path):
    _json_dataset(tmp_path)
    task = read_learn2reg_json(tmp_path)
    assert task.key == "HippocampusMR" and task.grid_shape == (8, 10, 6)
    assert len(task.subjects) == 6 and task.labels.names == ["anterior", "posterior"]
    assert task.pairs == [("HippocampusMR_0003_0001", "HippocampusMR_0003_0000")]
    np.testing.assert_allclose(task.subjects[0].landmarks, [[-10, 5, 2], [-7, 7, 3]])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "X_dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="X_dataset.json: not valid JSON"):
        read_learn2reg_json(bad)


def test_shared_lungct_evaluation_config_pairs_format(data_root):
    """The current evaluation config of ../shared/data lists pairs as the reader expects."""
    config = json.loads((data_root / "learn2reg_lungct_ground_truth" /
                         "LungCT_VAL_evaluation_config.json").read_text())
    pair = config["eval_pairs"][0]
    assert pair["fixed"].endswith("_0000.nii.gz") and pair["moving"].endswith("_0001.nii.gz")
    kp = np.loadtxt(data_root / "learn2reg_lungct_ground_truth" / "keypointsTr" /
                    "LungCT_0001_0000.csv", delimiter=",")
    assert kp.ndim == 2 and kp.shape[1] == 3


def test_learn2reg_splits_hold_the_test_scans_out_of_training(tmp_path):
    _task4_2020(tmp_path / "task_04", n=6)
    splits = learn2reg_splits(tmp_path, (16, 16, 16), layout="2020", cache=False)
    spec = splits.tasks["task4"]
    assert [s.subject_id for s in spec.test.subjects] == [f"hippocampus_{i:03d}" for i in (1, 2, 3, 4)]
    np.testing.assert_array_equal(spec.pairs, [[0, 1], [2, 3]])
    assert splits.train.subject_ids == ["task4/hippocampus_005", "task4/hippocampus_006"]
    sample = splits.train.load(1)
    assert sample.image.shape == (16, 16, 16)
    assert 0.0 <= sample.image.min() and sample.image.max() == pytest.approx(1.0)
    assert set(np.unique(sample.label("structures"))) <= {0, 1, 2}
    assert splits.is_paper_dataset and splits.n_labels == 2
    with pytest.raises(DataError, match="no Learn2Reg task folder"):
        learn2reg_splits(tmp_path / "task_04" / "Training", layout="2020")


def test_task_datasets_index_and_pairings():
    class Part:
        def __init__(self, n, tag):
            self.n, self.tag, self.subject_ids = n, tag, [f"{tag}{i}" for i in range(n)]

        def __len__(self):
            return self.n

        def load(self, i):
            return (self.tag, i)

    td = TaskDatasets("x", False, {"a": Part(2, "a"), "b": Part(3, "b")}, recipe=None)
    assert len(td) == 5 and td.load(3) == ("b", 1) and td.locate(2) == ("b", 0)
    np.testing.assert_array_equal(td.indices("b"), [2, 3, 4])
    assert td.subject_ids == ["a/a0", "a/a1", "b/b0", "b/b1", "b/b2"]
    with pytest.raises(IndexError):
        td.load(5)
    np.testing.assert_array_equal(disjoint_pairs(5), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(cyclic_pairs(3, (1, 2)), [[0, 1], [1, 2], [2, 0], [0, 2],
                                                            [1, 0], [2, 1]])
