"""End to end: ``run.py --preset smoke`` on the real MSD hippocampus images trains every kind of
DeepAtlas run (Baseline, Semi-DA, DA for N = 1 and 2) on the shared runner, writes the Table 1
analogue beside the published numbers, the significance tests, the claims and Fig. 2; --resume
reuses the finished runs; a finished DA run registers a pair through ``Method.load``."""

import numpy as np
import pandas as pd
import pytest

from regseg.evaluation.tables import read_result_csv
from regseg.reproductions.deepatlas.reproduction import REPRODUCTION
from regseg.training.runner import read_run_manifest


@pytest.fixture(scope="module")
def smoke(data_root, tmp_path_factory):
    if not (data_root / "msd_hippocampus").is_dir():
        pytest.skip("msd_hippocampus not in the shared data")
    out = tmp_path_factory.mktemp("deepatlas")
    args = ["--preset", "smoke", "--data-root", str(data_root), "--output-dir",
            str(out / "runs"), "--results-dir", str(out / "results")]
    assert REPRODUCTION.main(args) == 0
    return out, args


@pytest.mark.slow
def test_smoke_writes_the_tables_beside_the_published_numbers(smoke):
    out, _ = smoke
    table, header = read_result_csv(out / "results" / "table1_dice.csv")
    assert list(table.index) == ["N=0 Baseline", "N=1 Semi-DA", "N=1 DA", "N=2 Baseline",
                                 "N=2 Semi-DA", "N=2 DA"]
    assert table.at["N=1 DA", "published reg All mean"] == 83.27          # Table 1, N = 1 DA
    assert table.at["N=1 DA", "published seg Cartilages mean"] == 77.63
    assert np.isnan(table.at["N=0 Baseline", "seg All mean"])             # "-" in the paper
    assert "STAND-IN" in (out / "results" / "table1_dice.md").read_text().splitlines()[0]
    assert header["dataset"].startswith("MSD Task04 hippocampus")
    # the table's registration "All" is the mean over pairs of the per-pair mean Dice, in %
    per_pair = pd.read_csv(out / "results" / "per_pair_dice.csv", comment="#", index_col=0)
    da = per_pair[per_pair["method"] == "DA (N=1)"][["anterior", "posterior"]]
    assert len(da) == 4                                                   # the smoke's 4 pairs
    np.testing.assert_allclose(table.at["N=1 DA", "reg All mean"], 100 * da.mean(axis=1).mean())
    seg = pd.read_csv(out / "results" / "per_image_segmentation_dice.csv", comment="#")
    semi = seg[seg["method"] == "Semi-DA segmentation (N=1)"]
    assert len(semi) == 3                                                 # the 3 test images
    np.testing.assert_allclose(table.at["N=1 Semi-DA", "seg anterior mean"],
                               100 * semi["anterior"].mean())
    tests, _ = read_result_csv(out / "results" / "statistics.csv")
    assert {"Mann-Whitney p", "Wilcoxon p", "q (BH, MWU)"} <= set(tests.columns)
    assert (out / "results" / "claims.md").is_file()
    assert (out / "results" / "fig2_examples.png").stat().st_size > 10_000


@pytest.mark.slow
def test_smoke_runs_keep_both_networks_and_resume_reuses_them(smoke):
    out, args = smoke
    da = out / "runs" / "da_n2"
    manifest = read_run_manifest(da)
    assert manifest["model_config"]["kind"] == "da"
    assert manifest["model_config"]["init"] == {"segmentation": "baseline_seg_n2",
                                                "registration": "baseline_reg_n2"}
    for name in ("segmentation", "registration"):
        assert (da / f"{name}.weights.h5").is_file()
    assert (out / "runs" / "baseline_seg_n2" / "segmentation.weights.h5").is_file()
    assert not (out / "runs" / "baseline_seg_n2" / "registration.weights.h5").exists()
    assert (da / "validation.csv").read_text().startswith("epoch,segmentation,registration")
    before = read_result_csv(out / "results" / "table1_dice.csv")[0]
    assert REPRODUCTION.main(args) == 2                      # the folders hold finished runs
    assert REPRODUCTION.main(args + ["--resume"]) == 0       # ... reused, not retrained
    after = read_result_csv(out / "results" / "table1_dice.csv")[0]
    pd.testing.assert_frame_equal(before, after, rtol=1e-6)
    # a finished run loads as a registrar (python -m regseg register)
    REPRODUCTION.active_preset = None
    method = REPRODUCTION.methods()["da_n2"]
    registrar = method.load(da, manifest)
    from regseg.datasets.msd_hippocampus import msd_hippocampus_splits
    from regseg.reproductions.deepatlas.reproduction import PRESETS
    splits = msd_hippocampus_splits(args[3], sizes=PRESETS["smoke"].split_sizes,
                                    box=PRESETS["smoke"].box)
    result = registrar.register(splits.test.load(0), splits.test.load(1))
    assert result["displacement"].shape == (32, 48, 32, 3)
    assert result["moving_seg"].shape == (32, 48, 32, 3)
    with pytest.raises(FileNotFoundError, match="segmentation only"):
        REPRODUCTION.methods()["baseline_seg_n2"].load(out / "runs" / "baseline_seg_n2",
                                                        read_run_manifest(
                                                            out / "runs" / "baseline_seg_n2"))
