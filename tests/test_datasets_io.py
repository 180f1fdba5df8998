"""Tests of regseg.datasets.io: canonical orientation, validation errors, atomic writes."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from regseg.datasets.io import DataError, Volume, check_same_grid, load_volume, save_volume


def _write(path, data, affine, dtype=None):
    img = nib.Nifti1Image(np.asarray(data), affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def _world(affine, ijk):
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


# --------------------------------------------------------------------------- orientation
def test_lps_file_loads_as_ras_flipped(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((4, 5, 6)).astype(np.float32)
    # LPS: i -> Left (-x), j -> Posterior (-y), k -> Superior (+z); spacing 1.5 x 2 x 3 mm.
    aff = np.array([[-1.5, 0, 0, 10.0], [0, -2.0, 0, 20.0], [0, 0, 3.0, -5.0], [0, 0, 0, 1]])
    vol = load_volume(_write(tmp_path / "lps.nii.gz", data, aff))
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(vol.data, data[::-1, ::-1, :])  # hand-built expectation
    np.testing.assert_allclose(vol.spacing, [1.5, 2.0, 3.0])
    # world coordinates of every voxel are unchanged: new voxel (a,b,c) = old (3-a, 4-b, c)
    new_idx = np.argwhere(np.ones(vol.data.shape, bool))
    old_idx = np.stack([3 - new_idx[:, 0], 4 - new_idx[:, 1], new_idx[:, 2]], 1)
    np.testing.assert_allclose(_world(vol.affine, new_idx), _world(aff, old_idx), atol=1e-9)


def test_freesurfer_lia_mgz_loads_as_ras(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 50, (6, 7, 8)).astype(np.uint8)
    # FreeSurfer conformed orientation: i -> Left, j -> Inferior, k -> Anterior.
    aff = np.array([[-1.0, 0, 0, 3.0], [0, 0, 1.0, -4.0], [0, -1.0, 0, 3.5], [0, 0, 0, 1]])
    path = tmp_path / "orig.mgz"
    nib.save(nib.MGHImage(data, aff), str(path))
    vol = load_volume(path)
    assert vol.data.dtype == np.float32
    # RAS axes: R = reversed i, A = k, S = reversed j
    expected = data[::-1, ::-1, :].transpose(0, 2, 1)
    np.testing.assert_array_equal(vol.data, expected)
    # and the same as nibabel's own orientation tools
    ornt = nib.orientations.io_orientation(aff)
    np.testing.assert_array_equal(vol.data, nib.orientations.apply_orientation(data, ornt))
    # every voxel: its world position maps back to an old voxel holding the same value
    idx = np.argwhere(np.ones(vol.data.shape, bool))
    old = np.rint(_world(np.linalg.inv(aff), _world(vol.affine, idx))).astype(int)
    np.testing.assert_array_equal(vol.data[tuple(idx.T)], data[tuple(old.T)])


def test_trailing_singleton_squeezed_and_labels_int32(tmp_path):
    data = np.zeros((3, 4, 5, 1), dtype=np.int16)
    data[1, 2, 3, 0] = 7
    vol = load_volume(_write(tmp_path / "lab.nii.gz", data, np.eye(4)), label=True)
    assert vol.data.shape == (3, 4, 5) and vol.data.dtype == np.int32
    assert vol.data[1, 2, 3] == 7 and vol.data.sum() == 7


def test_float_stored_integer_labels_accepted(tmp_path):
    data = np.zeros((3, 3, 3), dtype=np.float64)
    data[0, 0, 0] = 4.0
    vol = load_volume(_write(tmp_path / "lab.nii.gz", data, np.eye(4)), label=True)
    assert vol.data.dtype == np.int32 and vol.data[0, 0, 0] == 4


# --------------------------------------------------------------------------- errors
def _message(excinfo):
    return str(excinfo.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(DataError) as e:
        load_volume(path)
    assert "nope.nii.gz" in _message(e) and "not found" in _message(e)


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(DataError) as e:
        load_volume(path)
    assert "garbage.nii.gz" in _message(e) and "corrupt" in _message(e)


def test_truncated_file(tmp_path):
    good = _write(tmp_path / "good.nii", np.ones((20, 20, 20), np.float32), np.eye(4))
    raw = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    with pytest.raises(DataError) as e:
        load_volume(bad)
    assert "truncated.nii.gz" in _message(e)


def test_nan_image(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    with pytest.raises(DataError) as e:
        load_volume(_write(tmp_path / "nan.nii.gz", data, np.eye(4)))
    assert "nan.nii.gz" in _message(e) and "NaN" in _message(e) and "2 " in _message(e)


def test_not_3d(tmp_path):
    with pytest.raises(DataError) as e:
        load_volume(_write(tmp_path / "four.nii.gz", np.ones((3, 3, 3, 2), np.float32), np.eye(4)))
    assert "four.nii.gz" in _message(e) and "3-D" in _message(e)


def test_empty_label_map(tmp_path):
    with pytest.raises(DataError) as e:
        load_volume(_write(tmp_path / "empty.nii.gz", np.zeros((3, 3, 3), np.uint8), np.eye(4)),
                    label=True)
    assert "empty.nii.gz" in _message(e) and "empty" in _message(e).split(":", 1)[1]


def test_non_integer_label_map(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[0, 0, 0] = 1.5
    with pytest.raises(DataError) as e:
        load_volume(_write(tmp_path / "frac.nii.gz", data, np.eye(4)), label=True)
    assert "frac.nii.gz" in _message(e) and "non-integer" in _message(e)


def test_shape_mismatch_names_both_files(tmp_path):
    img = load_volume(_write(tmp_path / "img.nii.gz", np.ones((4, 4, 4), np.float32), np.eye(4)))
    lab = load_volume(_write(tmp_path / "lab.nii.gz", np.ones((4, 4, 5), np.uint8), np.eye(4)),
                      label=True)
    with pytest.raises(DataError) as e:
        check_same_grid(img, lab)
    assert "img.nii.gz" in _message(e) and "lab.nii.gz" in _message(e)
    assert "shape mismatch" in _message(e)


def test_spacing_mismatch_names_both_files(tmp_path):
    img = load_volume(_write(tmp_path / "img.nii.gz", np.ones((4, 4, 4), np.float32), np.eye(4)))
    lab = load_volume(_write(tmp_path / "lab.nii.gz", np.ones((4, 4, 4), np.uint8),
                             np.diag([1.0, 1.0, 2.0, 1.0])), label=True)
    with pytest.raises(DataError) as e:
        check_same_grid(img, lab)
    assert "img.nii.gz" in _message(e) and "lab.nii.gz" in _message(e)
    assert "spacing mismatch" in _message(e)


def test_affine_mismatch(tmp_path):
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 5.0, 0.0]
    a = Volume(np.ones((4, 4, 4)), np.eye(4), "a.nii.gz")
    b = Volume(np.ones((4, 4, 4)), shifted, "b.nii.gz")
    with pytest.raises(DataError, match="a.nii.gz and b.nii.gz: affine"):
        check_same_grid(a, b)
    check_same_grid(a, Volume(np.zeros((4, 4, 4)), np.eye(4) + 1e-5, "c.nii.gz"))  # within atol


def test_spacing_property():
    aff = np.array([[0, 0, 3.0, 0], [-2.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(Volume(np.zeros((1, 1, 1)), aff, "x").spacing, [2.0, 1.5, 3.0])


# --------------------------------------------------------------------------- saving
def test_save_round_trip_3d_and_4d(tmp_path):
    rng = np.random.default_rng(2)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-10, 4, 7]
    img = rng.random((5, 6, 7))
    save_volume(tmp_path / "img.nii.gz", img, aff)
    vol = load_volume(tmp_path / "img.nii.gz")
    np.testing.assert_allclose(vol.data, img.astype(np.float32))
    np.testing.assert_allclose(vol.affine, aff)

    field = rng.standard_normal((5, 6, 7, 3)).astype(np.float32)
    save_volume(tmp_path / "sub" / "field.nii", field, aff)
    back = nib.load(str(tmp_path / "sub" / "field.nii"))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), field)
    assert sorted(os.listdir(tmp_path)) == ["img.nii.gz", "sub"]  # no temp files left


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "keep.nii.gz"
    save_volume(path, np.ones((3, 3, 3), np.float32), np.eye(4))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_volume(path, np.zeros((3, 3, 3), np.float32), np.eye(4))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.nii.gz"]


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        save_volume(tmp_path / "x.nii.gz", np.ones((3, 3)), np.eye(4))
    with pytest.raises(ValueError):
        save_volume(tmp_path / "x.mgz", np.ones((3, 3, 3)), np.eye(4))


@pytest.mark.parametrize("diag, problem", [((20.0, 1.0, 1.0), "outside 0.1-10.0 mm"),
                                           ((0.001, 1.0, 1.0), "outside 0.1-10.0 mm"),
                                           (None, "singular affine")])
def test_implausible_geometry_is_refused(tmp_path, diag, problem, monkeypatch):
    import regseg.datasets.io as io_mod

    path = tmp_path / "odd.nii.gz"
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None)
    if diag is None:  # two voxel axes along the same world direction (sform only)
        img.header.set_sform(np.array([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
                             code=1)
        img.header.set_qform(None, code=0)
    else:
        img.header.set_sform(np.diag([*diag, 1.0]), code=1)
    nib.save(img, str(path))
    with pytest.raises(DataError, match=f"odd.nii.gz: .*{problem}"):
        load_volume(path)
    if problem.startswith("outside"):
        monkeypatch.setattr(io_mod, "SPACING_RANGE_MM", (1e-4, 100.0))   # --spacing-range
        np.testing.assert_allclose(load_volume(path).spacing, diag, rtol=1e-6)
