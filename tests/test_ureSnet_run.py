"""End to end: ``run.py --preset smoke`` on ixi10 writes Table 1, figures and NIfTI; --resume;
``python -m regseg register`` with the trained smoke run."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from regseg.evaluation.tables import read_result_csv
from regseg.reproductions.ureSnet import published
from regseg.reproductions.ureSnet.reproduction import REPRODUCTION


def main(argv):
    return REPRODUCTION.main(argv)


def run(argv):
    return REPRODUCTION.run(argv)


@pytest.fixture(scope="module")
def ixi_root(ixi10_root):
    return str(ixi10_root.parent)


@pytest.fixture(scope="module")
def smoke_run(ixi_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    args = ["--preset", "smoke", "--data-root", ixi_root, "--output-dir", str(out / "run"),
            "--results-dir", str(out / "results"), "--no-download"]
    assert main(args) == 0
    return out, args


def _dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_table1_written_beside_published(smoke_run, ixi_root):
    out, _ = smoke_run
    table, header = read_result_csv(out / "results" / "table1_registration_dice.csv")
    assert list(table.index) == published.STRUCTURES + ["mean of 15"]
    for method in published.METHODS:
        for s in published.STRUCTURES:
            assert table.at[s, f"{method} published mean"] == published.TABLE1[method][s][0]
        diff = table[f"{method} ours mean"] - table[f"{method} published mean"]
        np.testing.assert_allclose(table[f"{method} diff"], diff)
        assert table[f"{method} ours mean"].between(0, 1).all()
    assert "stand-in" in header["dataset"].lower()
    assert header["seed"] == "0" and header["commit"] and "smoke" in header["preset"]
    md = (out / "results" / "table1_registration_dice.md").read_text()
    assert "STAND-IN" in md.splitlines()[0]

    # Rigid = Dice of the centred label maps, recomputed here with numpy
    from regseg.datasets import ixi10_splits
    test = ixi10_splits(ixi_root).test
    a, b = test.load(0).structures, test.load(1).structures
    rigid = [np.mean([_dice(a == k, b == k), _dice(b == k, a == k)]) for k in range(1, 16)]
    np.testing.assert_allclose(table.loc[published.STRUCTURES, "Rigid ours mean"], rigid, atol=1e-9)

    seg, _ = read_result_csv(out / "results" / "segmentation_dice.csv")
    assert list(seg.index) == ["CeblWM", "CeblC", "LV"]
    for name in ("fig2_registration.png", "fig3_segmentation.png", "run.json", "per_pair_dice.csv"):
        assert (out / "results" / name).stat().st_size > 0


def test_nifti_outputs_are_consistent(smoke_run, ixi_root):
    out, _ = smoke_run
    from regseg.datasets import ixi10_splits
    test = ixi10_splits(ixi_root).test
    mov, ref = test.load(0), test.load(1)
    folder = out / "run" / "nifti" / "ureSnet"
    stem = f"{mov.subject_id}_to_{ref.subject_id}"
    disp = nib.load(folder / f"{stem}_displacement_voxels.nii.gz")
    warped = nib.load(folder / f"{stem}_warped.nii.gz")
    np.testing.assert_allclose(disp.affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(warped.affine, ref.affine, atol=1e-5)
    # the saved warped image is the moving image sampled at identity + displacement
    d = np.asarray(disp.dataobj, dtype=np.float64)
    coords = np.indices(mov.image.shape) + np.moveaxis(d, -1, 0)
    expected = ndimage.map_coordinates(mov.image, coords, order=1, mode="nearest")
    np.testing.assert_allclose(np.asarray(warped.dataobj), expected, atol=1e-4)


def test_existing_run_is_not_overwritten_and_resume_reuses_it(smoke_run):
    out, args = smoke_run
    before, _ = read_result_csv(out / "results" / "table1_registration_dice.csv")
    with pytest.raises(FileExistsError, match="--resume"):
        run(args)
    assert main(args + ["--resume"]) == 0
    after, _ = read_result_csv(out / "results" / "table1_registration_dice.csv")
    np.testing.assert_allclose(after["U-ReSNet ours mean"], before["U-ReSNet ours mean"], atol=1e-6)


def test_describe_prints_parameter_count(capsys):
    assert main(["--describe"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("parameters: ")
    assert int(last.split()[-1]) == 39183 < 40000


def test_offline_without_data_falls_back_to_a_labelled_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("REGSEG_DATA_ROOT", raising=False)
    monkeypatch.setenv("REGSEG_CACHE", str(tmp_path / "cache"))
    assert main(["--preset", "smoke", "--no-download", "--methods", "ureSnet",
                 "--output-dir", str(tmp_path / "run"), "--results-dir", str(tmp_path / "res")]) == 0
    assert "REPRODUCES NOTHING" in capsys.readouterr().out
    md = (tmp_path / "res" / "table1_registration_dice.md").read_text()
    assert "DEMO" in md.splitlines()[0]
    table, header = read_result_csv(tmp_path / "res" / "table1_registration_dice.csv")
    assert header["dataset"].startswith("DEMO")
    # the demo has tissue labels only: no row of it may carry a published value
    demo_rows = [r for r in table.index if r not in published.STRUCTURES]
    assert demo_rows and table.loc[demo_rows, "U-ReSNet published mean"].isna().all()
    assert table.loc[demo_rows, "U-ReSNet ours mean"].notna().all()


def test_cli_errors_are_one_line_with_exit_codes(smoke_run, capsys):
    out, args = smoke_run
    assert main(args) == 2                                  # existing run, no --resume
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--resume" in err[0]
    assert main(args + ["--resume", "--methods", "ureSnett"]) == 2
    assert "ureSnett" in capsys.readouterr().err
    assert main(args + ["--resume", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_run_manifest_describes_the_trained_method(smoke_run):
    from regseg.datasets.recipes import Recipe
    from regseg.training.runner import read_run_manifest
    out, _ = smoke_run
    manifest = read_run_manifest(out / "run" / "ureSnet")
    assert manifest["method"] == "ureSnet" and manifest["model_config"]["segmentation"] is True
    assert manifest["model_config"]["input_shape"] == [80, 104, 88]
    recipe = Recipe.from_dict(manifest["recipe"])
    assert [s.name for s in recipe.steps] == ["mask-from-labels", "skull-strip", "z-score",
                                              "crop-around-centre-of-mass", "map-labels"]
    assert manifest["label_names"]["structures"] == published.STRUCTURES
    assert manifest["spacing_mm"] == [2.0, 2.0, 2.0]


# ----------------------------------------------------------------------------- register command
def _ixi(ixi_root, sid, kind="images"):
    return f"{ixi_root}/ixi10/{kind}/{sid}-T1.nii.gz"


def test_register_command_writes_outputs_in_the_fixed_geometry(smoke_run, ixi_root, tmp_path,
                                                               capsys):
    import pandas as pd

    from regseg.__main__ import main as regseg_main
    out, _ = smoke_run
    mov, fix = "IXI049-HH-1358", "IXI051-HH-1328"
    args = ["register", "--run", str(out / "run" / "ureSnet"), "--moving", _ixi(ixi_root, mov),
            "--fixed", _ixi(ixi_root, fix), "--moving-labels", _ixi(ixi_root, mov, "labels"),
            "--fixed-labels", _ixi(ixi_root, fix, "labels"), "--out", str(tmp_path / "reg")]
    assert regseg_main(args) == 0
    printed = capsys.readouterr().out
    fixed_img = nib.load(_ixi(ixi_root, fix))
    for name in ("warped", "displacement_mm", "jacobian_determinant", "warped_labels"):
        img = nib.load(tmp_path / "reg" / f"{name}.nii.gz")
        np.testing.assert_allclose(img.affine, fixed_img.affine, atol=1e-4)
        assert img.shape[:3] == fixed_img.shape[:3]
    # the warped image is the moving image sampled at (fixed world point + displacement)
    moving_img = nib.load(_ixi(ixi_root, mov))
    disp = np.asarray(nib.load(tmp_path / "reg" / "displacement_mm.nii.gz").dataobj, np.float64)
    warped = np.asarray(nib.load(tmp_path / "reg" / "warped.nii.gz").dataobj)
    ijk = np.indices(fixed_img.shape[:3]).reshape(3, -1)
    world = fixed_img.affine[:3, :3] @ ijk + fixed_img.affine[:3, 3:4]
    target = world + disp.reshape(-1, 3).T
    vox = np.linalg.solve(moving_img.affine[:3, :3], target - moving_img.affine[:3, 3:4])
    expected = ndimage.map_coordinates(np.asarray(moving_img.dataobj, np.float64), vox, order=1,
                                       mode="constant", cval=0.0).reshape(fixed_img.shape[:3])
    np.testing.assert_allclose(warped, expected, rtol=1e-4, atol=1e-2)
    # the Dice it prints is the evaluation's Dice of this pair (per_pair_dice.csv)
    per_pair = pd.read_csv(out / "results" / "per_pair_dice.csv", comment="#", index_col=0)
    row = per_pair[(per_pair.index == f"{mov}->{fix}") & (per_pair["method"] == "U-ReSNet")]
    for s in ("BS", "LV", "CeblC"):
        assert f"  {s}: {row[s].iloc[0]:.3f}" in printed


@pytest.mark.parametrize("case", ["missing", "two_d", "labels_as_image", "no_model"])
def test_register_command_rejects_bad_inputs(smoke_run, ixi_root, tmp_path, capsys, case):
    from regseg.__main__ import main as regseg_main
    out, _ = smoke_run
    run_dir = out / "run" / "ureSnet"
    mov, fix = _ixi(ixi_root, "IXI049-HH-1358"), _ixi(ixi_root, "IXI051-HH-1328")
    labels = ["--moving-labels", _ixi(ixi_root, "IXI049-HH-1358", "labels"),
              "--fixed-labels", _ixi(ixi_root, "IXI051-HH-1328", "labels")]
    if case == "missing":
        mov, culprit = str(tmp_path / "nope.nii.gz"), "nope.nii.gz"
    elif case == "two_d":
        nib.save(nib.Nifti1Image(np.random.rand(20, 20).astype(np.float32), np.eye(4)),
                 str(tmp_path / "flat.nii.gz"))
        mov, culprit = str(tmp_path / "flat.nii.gz"), "flat.nii.gz"
    elif case == "labels_as_image":
        fix, culprit = _ixi(ixi_root, "IXI051-HH-1328", "labels"), "label map"
    else:
        (tmp_path / "empty_run").mkdir()
        run_dir, culprit = tmp_path / "empty_run", "not a trained run folder"
    code = regseg_main(["register", "--run", str(run_dir), "--moving", mov, "--fixed", fix,
                        "--out", str(tmp_path / "o"), *labels])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and culprit in err[0]
    assert not (tmp_path / "o").exists()
