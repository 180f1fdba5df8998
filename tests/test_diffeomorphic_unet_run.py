"""End to end: ``run.py --preset smoke`` of the diffeomorphic U-Net on ixi10 and the lung CT
pair writes Tables 1-3 beside the published values, the lung pair's TRE, the claims and figures;
the folds test every source once (the fold assignment itself: tests/test_training_folds.py)."""

import json

import numpy as np
import pandas as pd
import pytest

from regseg.evaluation.tables import read_result_csv
from regseg.reproductions.diffeomorphic_unet import published
from regseg.reproductions.diffeomorphic_unet.reproduction import CONFIGS, REPRODUCTION


def test_describe_counts_parameters(capsys):
    REPRODUCTION.main(["--preset", "smoke", "--describe"])
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("parameters: ")


@pytest.mark.slow
def test_smoke_run_end_to_end(data_root, tmp_path):
    if not (data_root / "ixi10").is_dir() or not (data_root / "lung_ct_pair_elastix").is_dir():
        pytest.skip("ixi10 or lung_ct_pair_elastix not in the shared data")
    out = tmp_path
    args = ["--preset", "smoke", "--data-root", str(data_root), "--output-dir", str(out / "run"),
            "--results-dir", str(out / "results"), "--no-download",
            "--methods", "a1e-5,a1e-5_b1e-7,lung_pair"]
    assert REPRODUCTION.main(args) == 0
    results = out / "results"

    table1, header = read_result_csv(results / "table1_regularisation.csv")
    label = CONFIGS["a1e-5"][0]
    assert table1.at["test MSE", f"{label} published mean"] == published.TABLE1["a1e-5"]["test"]["MSE"]
    assert table1.at["train Dice", f"{label} published mean"] == published.TABLE1["a1e-5"]["train"]["Dice"]
    assert table1.at["epochs run", f"{label} published mean"] == 125
    assert table1.at["epochs run", f"{label} ours mean"] == 1
    np.testing.assert_allclose(table1[f"{label} diff"],
                               table1[f"{label} ours mean"] - table1[f"{label} published mean"])
    assert "stand-in" in header["dataset"].lower()
    assert "STAND-IN" in (results / "table1_regularisation.md").read_text().splitlines()[0]
    table3, _ = read_result_csv(results / "table3_segmentation.csv")
    assert table3.at["test Hausdorff (voxels)", f"{CONFIGS['a1e-5_b1e-7'][0]} published mean"] == 61.0

    # per-pair scores: every source -> atlas tested once (2 folds), and the table's mean is theirs
    per_pair, _ = read_result_csv(results / "per_pair_metrics.csv")
    test = per_pair[(per_pair["set"] == "test") & (per_pair["method"] == "a1e-5")]
    assert len(test) == 9 and test.index.is_unique
    assert all(p.endswith("->IXI012-HH-1211") for p in test.index)
    assert table1.at["test Dice", f"{label} ours mean"] == pytest.approx(test["Dice"].mean())
    assert test["Dice"].between(0, 1).all() and (test["Hausdorff (voxels)"] > 0).all()

    # the lung pair: before = the landmarks' world distance (35.3 mm, data README)
    lung, _ = read_result_csv(results / "lung_pair.csv")
    before = lung.loc["no registration (world coordinates, native grids)"]
    assert before["TRE mean (mm)"] == pytest.approx(35.27, abs=0.01)
    net = lung.loc["diffeomorphic U-Net (α = 1e-5)"]
    assert 0 < net["TRE mean (mm)"] < 35 and 0 < net["Dice"] <= 1
    landmarks, _ = read_result_csv(results / "lung_pair_landmarks.csv")
    assert len(landmarks) == 51
    assert landmarks.mean()["diffeomorphic U-Net (α = 1e-5)"] == pytest.approx(net["TRE mean (mm)"])
    manifest = json.loads((out / "run" / "lung_pair" / "regseg_run.json").read_text())
    assert "lung CT pair" in manifest["recipe"]["name"]

    claims, _ = read_result_csv(results / "claims_paired_tests.csv")
    assert set(claims["metric"]) >= {"Dice", "Hausdorff (voxels)"}
    for name in ("fig_brain_atlas_registration.png", "fig_lung_pair_registration.png",
                 "run.json", "per_pair_dice.csv", "per_pair_tre.csv"):
        assert (results / name).stat().st_size > 0
    assert (out / "run" / "a1e-5" / "fold1" / "final.weights.h5").is_file()
    tre = pd.read_csv(results / "per_pair_tre.csv", comment="#")
    assert len(tre) == 2

    # the trained lung network applied to the pair's files by ``python -m regseg register``
    from regseg.register import register_files
    pair = data_root / "lung_ct_pair_elastix"
    done = register_files(out / "run" / "lung_pair", pair / "3DCT_lung_followup.mha",
                          pair / "3DCT_lung_baseline.mha", out / "applied",
                          moving_labels=pair / "3DCT_lung_followup_mask.mha",
                          fixed_labels=pair / "3DCT_lung_baseline_mask.mha")
    assert 0.5 < done["dice"]["lung"] <= 1
    import nibabel as nib
    warped = nib.load(done["outputs"]["warped"])
    assert warped.shape == (115, 157, 129)  # the baseline's own grid
