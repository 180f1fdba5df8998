"""elastix point files and the TRE in world coordinates, against hand-computed cases."""

import numpy as np
import pytest
import SimpleITK as sitk

from regseg.datasets.elastix_points import (elastix_points_ras, read_elastix_points,
                                            write_elastix_points)
from regseg.datasets.io import DataError
from regseg.datasets.subjects import Sample
from regseg.evaluation.landmarks import world_landmark_errors
from regseg.evaluation.pairs import evaluate_pairs


def test_point_file_in_lps_becomes_ras(tmp_path):
    path = tmp_path / "fixed.txt"
    path.write_text("point\n2\n-36.351 -36.974 -1204.5\n\n1 2.5 3\n")
    pts = read_elastix_points(path)
    assert pts.kind == "point" and pts.points.shape == (2, 3)
    np.testing.assert_allclose(elastix_points_ras(pts), [[36.351, 36.974, -1204.5],
                                                         [-1.0, -2.5, 3.0]])
    again = write_elastix_points(tmp_path / "again.txt", pts.points)
    np.testing.assert_allclose(read_elastix_points(again).points, pts.points)


def test_index_file_uses_the_image_geometry(tmp_path):
    img = sitk.Image(10, 10, 10, sitk.sitkInt16)
    img.SetSpacing((2.0, 3.0, 4.0))
    img.SetOrigin((10.0, -5.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "im.mha"))
    (tmp_path / "idx.txt").write_text("index\n1\n1 2 0.5\n")
    pts = read_elastix_points(tmp_path / "idx.txt")
    # LPS = origin + spacing * index = (12, 1, 3) -> RAS (-12, -1, 3)
    np.testing.assert_allclose(elastix_points_ras(pts, tmp_path / "im.mha"), [[-12.0, -1.0, 3.0]])
    with pytest.raises(DataError, match="idx.txt"):
        elastix_points_ras(pts)


@pytest.mark.parametrize("text, message", [
    ("points\n1\n1 2 3\n", "line 1"),
    ("point\ntwo\n1 2 3\n", "line 2"),
    ("point\n2\n1 2 3\n", "announces 2 points"),
    ("point\n1\n1 2\n", "line 3: expected 3 numbers"),
])
def test_bad_point_files_are_named(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_elastix_points(path)
    assert "bad.txt" in str(info.value) and "\n" not in str(info.value)


def test_tre_in_world_coordinates_by_hand():
    """Two grids: fixed 2 mm voxels at origin (10, 0, 0), moving 1 mm voxels at the origin."""
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed_affine[:3, 3] = (10.0, 0.0, 0.0)
    moving_affine = np.eye(4)
    shape = (8, 8, 8)
    identity = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), -1)
    # sampling grid: fixed voxel v -> moving voxel 2 v + (10, 1, 0) (world of v, plus 1 mm in y)
    grid = 2.0 * identity + np.array([10.0, 1.0, 0.0])
    fixed_pts = np.array([[14.0, 4.0, 6.0], [16.0, 2.0, 2.0]])  # fixed voxels (2, 2, 3), (3, 1, 1)
    # the grid maps them to world (14, 5, 6) and (16, 3, 2); moving landmarks by hand:
    moving_pts = np.array([[14.0, 5.0, 6.0], [19.0, 7.0, 2.0]])
    errors = world_landmark_errors(fixed_pts, fixed_affine, moving_pts, moving_affine, grid)
    np.testing.assert_allclose(errors, [0.0, 5.0])  # (3, 4, 0) -> 5 mm
    # evaluate_pairs averages the same errors into its TRE (mm)
    fixed = Sample("f", {"ct": np.zeros(shape, np.float32)}, affine=fixed_affine,
                   landmarks=fixed_pts)
    moving = Sample("m", {"ct": np.zeros((40, 40, 40), np.float32)}, affine=moving_affine,
                    landmarks=moving_pts)

    class Fixed:
        def register(self, m, f):
            return {"grid": grid, "displacement": grid - identity}

    ev = evaluate_pairs({"net": Fixed()}, [moving, fixed], [[0, 1]], structures=None)
    assert ev.tre["TRE mm"].iloc[0] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="landmarks"):
        world_landmark_errors(fixed_pts, fixed_affine, moving_pts[:1], moving_affine, grid)


def test_the_shared_lung_pair_landmarks(data_root):
    folder = data_root / "lung_ct_pair_elastix"
    if not folder.is_dir():
        pytest.skip("lung_ct_pair_elastix not in the shared data")
    fixed = elastix_points_ras(read_elastix_points(
        folder / "ITKElastix_CT_3D_lung_fixed_point_set_corrected.txt"))
    moving = elastix_points_ras(read_elastix_points(
        folder / "ITKElastix_CT_3D_lung_moving_point_set_corrected.txt"))
    assert fixed.shape == moving.shape == (51, 3)
    # the data README: mean landmark distance before registration 35.3 mm
    assert np.linalg.norm(fixed - moving, axis=1).mean() == pytest.approx(35.3, abs=0.05)
    # every baseline landmark lies inside the baseline lung mask (RAS world -> voxel)
    from regseg.datasets.io import load_volume
    mask = load_volume(folder / "3DCT_lung_baseline_mask.mha", label=True)
    vox = np.linalg.solve(mask.affine, np.c_[fixed, np.ones(51)].T).T[:, :3]
    assert mask.data[tuple(np.rint(vox).astype(int).T)].all()
