"""End to end: ``reproductions/cooperating/run.py --preset smoke`` trains the toy sweep and the
§3.2 methods on the brain stand-in, writes the Fig. 3 table and box plot, the §3.2.3 table beside
the published liver values and Figs. 2 and 4; the tables agree with the per-pair files and with
values recomputed here from the data; ``--resume`` reuses the trained models."""

import json

import numpy as np
import pandas as pd
import pytest

from regseg.evaluation.relative_similarity import exhaustive_translation_similarity
from regseg.evaluation.tables import read_result_csv
from regseg.reproductions.cooperating import published
from regseg.reproductions.cooperating.reproduction import PRESETS, REPRODUCTION

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(data_root, tmp_path_factory):
    if not (data_root / "brats_toolkit_unregistered").is_dir():
        pytest.skip("brats_toolkit_unregistered not in the data root")
    out = tmp_path_factory.mktemp("cooperating")
    args = ["--preset", "smoke", "--data-root", str(data_root), "--output-dir", str(out / "run"),
            "--results-dir", str(out / "results"), "--no-cache"]
    assert REPRODUCTION.main(args) == 0
    return out, args, data_root


def test_fig3_table_and_figures(smoke_run):
    out, _, _ = smoke_run
    res = out / "results"
    for name in ("fig2_toy_pair.png", "fig3_toy_similarity_gain.png", "fig4_pairs_examples.png",
                 "toy_per_pair.csv", "pairs_per_pair.csv", "per_pair_dice.csv", "run.json"):
        assert (res / name).is_file(), name
    table, header = read_result_csv(res / "fig3_toy_similarity_gain.csv")
    per_pair = pd.read_csv(res / "toy_per_pair.csv", comment="#")
    lambdas = PRESETS["smoke"].toy_lambdas_p
    assert sorted(per_pair["lambda_p"].unique()) == sorted(lambdas)
    assert len(per_pair) == len(lambdas) * PRESETS["smoke"].toy_test_pairs
    for lam in lambdas:
        rows = per_pair[per_pair["lambda_p"] == lam]
        gain = (rows["ds_prediction"] - rows["ds_truth"]).to_numpy()
        median = np.median(gain[np.isfinite(gain)]) if np.isfinite(gain).any() else np.nan
        np.testing.assert_allclose(table.loc[table["lambda_p"] == lam, "median gain"], median)
        assert table.loc[table["lambda_p"] == lam, "pairs with an empty prediction"].item() == \
            (~np.isfinite(gain)).sum()
    # D_S of the ground truth, recomputed here from the generator (exact over translations)
    from regseg.datasets.toy_blobs import TEST_SEED, toy_pair
    first = per_pair[(per_pair["lambda_p"] == lambdas[0]) & (per_pair["pair"] == 0)].iloc[0]
    pair = toy_pair(0, TEST_SEED)
    assert first["ds_truth"] == pytest.approx(
        exhaustive_translation_similarity(pair["s1"], pair["s2"], 32)[0])
    assert header["seed"] == "0" and "smoke" in header["preset"] and header["commit"]
    assert "run.py --preset smoke" in header["command"] and "min" in header["wall time"]


def test_pairs_table_beside_the_published_liver_values(smoke_run):
    out, _, data_root = smoke_run
    res = out / "results"
    table, header = read_result_csv(res / "table_3_2_3_pairs.csv")
    for quantity, value in published.LIVER.items():
        assert table.at[quantity, "published (liver)"] == value
    md = (res / "table_3_2_3_pairs.md").read_text().splitlines()[0]
    assert "brain stand-in" in md and "STAND-IN" in md
    per_pair = pd.read_csv(res / "pairs_per_pair.csv", comment="#")
    ours = per_pair[per_pair["method"] == "cooperating"]
    assert set(per_pair["method"]) == {"cooperating", "segmentor_only", "single_unet"}
    assert len(ours) == 2  # one modality pair per patient, leave-one-patient-out
    np.testing.assert_allclose(table.at["D_S ours", "ours mean"], ours["ds_prediction"].mean())
    np.testing.assert_allclose(table.at["Dice second modality, ours", "ours mean"],
                               ours["dice_second"].mean())
    assert table["ours mean"].drop(index=[i for i in table.index if "Wilcoxon" in i]).between(
        0, 1).all()
    # the Dice of the annotations before registration, recomputed from the files here
    from regseg.datasets.paired_modalities import brats_toolkit_subjects, paired_recipe
    from regseg.datasets.subjects import SubjectDataset
    p = PRESETS["smoke"]
    subjects = brats_toolkit_subjects(data_root, p.pairs_modalities)
    dataset = SubjectDataset("b", False, subjects, paired_recipe(p.pairs_spacing_mm, p.pairs_shape))
    dices = []
    for i in range(len(dataset)):
        s = dataset.load(i)
        a, b = s.masks["s1"], s.masks["s2"]
        dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    np.testing.assert_allclose(table.at["Dice of the annotations before registration", "ours mean"],
                               np.mean(dices))
    run = json.loads((res / "run.json").read_text())
    assert set(run["methods"]) == {"toy", "cooperating", "segmentor_only", "single_unet"}


def test_resume_reuses_the_trained_models(smoke_run, capsys):
    out, args, _ = smoke_run
    before = pd.read_csv(out / "results" / "toy_per_pair.csv", comment="#")
    assert REPRODUCTION.main(args) == 2                       # refused without --resume
    assert "--resume" in capsys.readouterr().err
    assert REPRODUCTION.main(args + ["--resume", "--methods", "toy"]) == 0
    after = pd.read_csv(out / "results" / "toy_per_pair.csv", comment="#")
    np.testing.assert_allclose(after["ds_prediction"], before["ds_prediction"])
    assert "Epoch" not in capsys.readouterr().out             # nothing trained again
