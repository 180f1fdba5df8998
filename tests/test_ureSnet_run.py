"""End to end: ``run.py --preset smoke`` on ixi10 writes Table 1, figures and NIfTI; --resume."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from regseg.evaluation.tables import read_result_csv
from regseg.reproductions.ureSnet import published
from regseg.reproductions.ureSnet.experiment import main


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
        main(args)
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
