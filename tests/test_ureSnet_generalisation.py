"""U-ReSNet generalisation to Mindboggle-101 (reproductions/ureSnet/generalisation.py).

* the Mindboggle aseg -> Table 1 mapping on a hand-built label array (each structure gets
  exactly its ids, every other id is background), and on one real file;
* the pairs (each subject moving twice and fixed twice);
* the command on 3 real subjects with the centre-of-mass row only: its pair list, and its Dice
  equal to the Dice computed with numpy on the preprocessed label maps;
* seconds reported by a registrar (cached ANTs results) replace the measured ones;
* ``--dataset ixi10`` with the Rigid row only: the pairs are the quick preset's test pairs of
  each fold (no subject of a fold's training set in them), the Rigid Dice equals the Dice
  computed with numpy on the preprocessed label maps, and the table is over unordered pairs;
* the paired comparisons chosen for each dataset, and the unordered Dice table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from regseg.datasets.labels import MINDBOGGLE_TABLE1, TABLE1_STRUCTURES
from regseg.reproductions.ureSnet import generalisation as gen

#: the mapping written out independently of the module (see regseg.datasets.labels)
EXPECTED = {
    "BS": [16], "CSF": [24], "CblmC": [6, 8, 45, 47, 630, 631, 632], "CblmWM": [7, 46],
    "Pu": [12, 51], "VDC": [28, 60], "Pa": [13, 52], "Ca": [11, 50], "LV": [4, 43],
    "Hi": [17, 53], "3V": [14], "4V": [15], "Am": [18, 54],
    "CeblC": list(range(1000, 1036)) + list(range(2000, 2036)),
}
#: ids of the Mindboggle files (or FreeSurfer) that belong to no Table 1 structure
BACKGROUND = [0, 2, 3, 5, 10, 26, 30, 31, 41, 42, 44, 49, 58, 62, 63, 72, 74, 77, 85, 91, 92,
              251, 999, 3002, 4002]


def _subjects_folder(data_root):
    folder = data_root / "mindboggle101" / "OASIS-TRT-20_volumes"
    if not folder.is_dir():
        pytest.skip("mindboggle101 not in the shared data")
    return folder


def test_mindboggle_table1_mapping_gives_each_structure_exactly_its_ids():
    assert MINDBOGGLE_TABLE1.names == [s for s in TABLE1_STRUCTURES if s != "CeblWM"]
    assert list(EXPECTED) == MINDBOGGLE_TABLE1.names
    ids = [v for values in EXPECTED.values() for v in values] + BACKGROUND
    aseg = np.asarray(ids, dtype=np.int32).reshape(1, 1, -1)  # one voxel per id
    mapped = MINDBOGGLE_TABLE1.apply(aseg).ravel()
    got = {name: sorted(np.asarray(ids)[mapped == k + 1].tolist())
           for k, name in enumerate(MINDBOGGLE_TABLE1.names)}
    assert got == {name: sorted(v) for name, v in EXPECTED.items()}
    assert sorted(np.asarray(ids)[mapped == 0].tolist()) == sorted(BACKGROUND)


def test_every_id_of_a_real_file_is_mapped_or_documented_background(data_root):
    import nibabel as nib

    folder = _subjects_folder(data_root) / "OASIS-TRT-20-1"
    labels = np.asarray(nib.load(folder / "labels.DKT31.manual+aseg.nii.gz").dataobj)
    present = set(np.unique(labels).astype(int).tolist())
    mapped = {v for values in EXPECTED.values() for v in values}
    assert present - mapped <= set(BACKGROUND)
    for name, values in EXPECTED.items():  # every structure occurs
        assert present & set(values), name


def test_ring_pairs_move_and_fix_every_subject_twice():
    pairs = gen.ring_pairs(15)
    assert pairs.shape == (30, 2) and (pairs[:, 0] != pairs[:, 1]).all()
    assert (np.bincount(pairs[:, 0], minlength=15) == 2).all()
    assert (np.bincount(pairs[:, 1], minlength=15) == 2).all()
    assert pairs[:3].tolist() == [[0, 1], [1, 2], [2, 3]] and pairs[15].tolist() == [0, 2]
    every = gen.ring_pairs(15, 15 * 14)
    assert len({tuple(p) for p in every.tolist()}) == 210
    assert gen.ring_pairs(3).tolist() == [[0, 1], [1, 2], [2, 0], [0, 2], [1, 0], [2, 1]]
    with pytest.raises(ValueError, match="--pairs must be 1..6"):
        gen.ring_pairs(3, 7)


def _dice(a, b, k):
    a, b = a == k, b == k
    total = a.sum() + b.sum()
    return 0.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


@pytest.mark.slow
def test_command_on_three_subjects_centre_of_mass_equals_numpy_dice(data_root, tmp_path, capsys):
    source = _subjects_folder(data_root)
    root = tmp_path / "data"
    volumes = root / "mindboggle101" / "OASIS-TRT-20_volumes"
    volumes.mkdir(parents=True)
    for k in (1, 2, 3):
        (volumes / f"OASIS-TRT-20-{k}").symlink_to(source / f"OASIS-TRT-20-{k}")
    out = tmp_path / "results"
    code = gen.main(["--data-root", str(root), "--methods", "com,ureSnet", "--pairs", "4",
                     "--runs", str(tmp_path / "no-runs"), "--no-cache", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "ureSnet: no run under" in printed  # networks skipped with a note

    per_pair = pd.read_csv(out / "per_pair_dice.csv", index_col=0)
    assert set(per_pair["method"]) == {"centre-of-mass"}
    ids = [f"OASIS-TRT-20-{k}" for k in (1, 2, 3)]
    assert list(per_pair.index) == [f"{ids[0]}->{ids[1]}", f"{ids[1]}->{ids[2]}",
                                    f"{ids[2]}->{ids[0]}", f"{ids[0]}->{ids[2]}"]
    names = MINDBOGGLE_TABLE1.names
    assert list(per_pair.columns[1:]) == names

    # the centre-of-mass row is the Dice of the preprocessed label maps themselves
    dataset = gen.mindboggle_dataset(root)
    moving, fixed = dataset.load(2), dataset.load(0)
    assert moving.shape == fixed.shape == (80, 104, 88)
    assert np.allclose(moving.spacing, 2.0) and moving.masks["brain"].any()
    expected = [_dice(moving.structures, fixed.structures, k + 1) for k in range(len(names))]
    np.testing.assert_allclose(per_pair.loc[f"{ids[2]}->{ids[0]}", names].to_numpy(float),
                               expected, rtol=1e-12)

    table = (out / "generalisation_dice.md").read_text()
    name = "MindBoggle-101 OASIS-TRT-20, 3 subjects, 2 mm — networks trained on ixi10 only"
    assert name in table
    assert "| mean of 14 |" in table and "| SDlogJ | 0.000 ± 0.000 |" in table
    readme = (out / "README.md").read_text()
    assert "generalisation.py" in readme and "commit:" in readme and "wall time:" in readme
    assert "| LV (lateral ventricle) | 4, 43 |" in readme
    assert not list(tmp_path.glob(".results*"))  # the new folder was swapped in whole


def test_reported_seconds_replace_the_measured_ones():
    from regseg.datasets.subjects import Sample
    from regseg.evaluation.pairs import evaluate_pairs

    shape = (8, 8, 8)
    labels = np.zeros(shape, np.int32)
    labels[2:5, 2:5, 2:5] = 1
    samples = [Sample(f"s{k}", {"image": np.random.default_rng(k).random(shape, np.float32)},
                      labels={"structures": labels}, masks={"brain": labels > 0})
               for k in range(2)]

    class Cached:
        def register(self, moving, fixed):
            return {"displacement": np.zeros((*shape, 3), np.float32), "seconds": 7.5}

    wrapped = gen._ReportedSeconds(Cached())
    ev = evaluate_pairs({"cached": wrapped}, samples, [[0, 1], [1, 0]], jacobian_mask="brain")
    # evaluate_pairs itself takes a registrar's own "seconds" (since 0ec9e7c) ...
    assert ev.seconds["seconds"].tolist() == [7.5, 7.5]
    # ... and _use_reported_seconds puts them back over measured ones
    ev.seconds["seconds"] = [0.01, 0.02]
    gen._use_reported_seconds(ev, {"cached": wrapped})
    assert ev.seconds["seconds"].tolist() == [7.5, 7.5]
    table = gen.generalisation_table(ev, ["cached"], identity=["cached"])
    assert table.loc["seconds per pair", "cached mean"] == 7.5
    assert table.loc["mean of 1", "cached mean"] == 1.0 and table.loc["folded %", "cached std"] == 0


def _ixi10_ids(ixi10_root):
    return sorted(p.name[:-len("-T1.nii.gz")] for p in (ixi10_root / "images").glob("*-T1.nii.gz"))


@pytest.mark.slow
def test_ixi10_mode_scores_the_quick_presets_test_pairs(data_root, ixi10_root, tmp_path, capsys):
    from regseg.datasets import ixi10_splits
    from regseg.evaluation.comparison import unordered

    out = tmp_path / "classical-ixi10"
    code = gen.main(["--dataset", "ixi10", "--data-root", str(data_root), "--methods", "com",
                     "--no-cache", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    per_pair = pd.read_csv(out / "per_pair_dice.csv", index_col=0)
    assert set(per_pair["method"]) == {"Rigid"} and set(per_pair["rule"]) == {"argmax"}

    # the quick preset's folds, written out independently: the 10 subjects sorted by id in two
    # contiguous blocks of 5; fold k tests all ordered pairs of block k and trains on the other
    ids = _ixi10_ids(ixi10_root)
    assert len(ids) == 10
    blocks = [ids[:5], ids[5:]]
    expected = [f"{a}->{b}" for block in blocks for a in block for b in block if a != b]
    assert list(per_pair.index) == expected and len(expected) == 40
    assert per_pair["fold"].tolist() == [1] * 20 + [2] * 20
    for pair, k in per_pair["fold"].items():
        moving, fixed = pair.split("->")
        train = set(ids) - set(blocks[k - 1])
        assert {moving, fixed} <= set(blocks[k - 1]) and not {moving, fixed} & train
    # ... and the folds the module loads (those the quick preset's networks were trained on)
    folds = gen.ixi10_folds(data_root).folds
    assert [f.test.subject_ids for f in folds] == blocks
    assert [sorted(f.train.subject_ids) for f in folds] == [blocks[1], blocks[0]]

    # Rigid = the Dice of the preprocessed label maps themselves (loaded another way)
    splits = ixi10_splits(data_root, cache=False)
    samples = {s.subject_id: s for part in (splits.train, splits.validation, splits.test)
               for s in (part.load(i) for i in range(len(part)))}
    moving, fixed = samples[ids[7]], samples[ids[5]]
    assert moving.shape == fixed.shape == (80, 104, 88)
    names = list(per_pair.columns[3:])
    assert len(names) == 15 and names[0] == "BS" and names[-1] == "CeblC"
    numpy_dice = [_dice(moving.structures, fixed.structures, k + 1) for k in range(15)]
    np.testing.assert_allclose(per_pair.loc[f"{ids[7]}->{ids[5]}", names].to_numpy(float),
                               numpy_dice, rtol=1e-12)

    # the table is over the 20 unordered pairs (directions averaged), as Table 1
    table = pd.read_csv(out / "generalisation_dice.csv", index_col=0, comment="#")
    means = unordered(per_pair[names]).mean(axis=1)
    assert len(means) == 20
    assert table.loc["mean of 15", "Rigid mean"] == pytest.approx(means.mean(), abs=1e-12)
    assert table.loc["mean of 15", "Rigid std"] == pytest.approx(means.std(ddof=0), abs=1e-12)
    md = (out / "generalisation_dice.md").read_text()
    assert "ixi10 (real IXI T1, 2 mm), stand-in for OASIS-3" in md.splitlines()[0]
    assert "| mean of 15 |" in md and "| SDlogJ | 0.000 ± 0.000 |" in md
    assert not (out / "paired_comparison.md").exists()  # nothing to compare Rigid with
    readme = (out / "README.md").read_text()
    assert "--dataset ixi10" in readme and "commit:" in readme and "wall time:" in readme
    assert not list(tmp_path.glob(".classical-ixi10*"))


def test_ixi10_mode_refuses_pairs():
    assert gen.main(["--dataset", "ixi10", "--pairs", "4", "--methods", "com"]) == 2


def test_paired_comparisons_of_each_dataset():
    table1 = ["Rigid", "ANTs Affine", "ANTs SyN", "Christodoulidis et al.", "U-ReSNet"]
    assert gen.comparison_pairs(table1, ixi10=True) == [
        ("U-ReSNet", "ANTs SyN"), ("U-ReSNet", "ANTs Affine"),
        ("Christodoulidis et al.", "ANTs Affine"), ("ANTs Affine", "Rigid"),
        ("ANTs SyN", "Rigid")]
    assert gen.comparison_pairs(["Rigid", "ANTs SyN"], ixi10=True) == [("ANTs SyN", "Rigid")]
    assert gen.comparison_pairs(["Rigid"], ixi10=True) == []
    mindboggle = ["centre-of-mass", "ANTs Affine", "ANTs SyN", "U-ReSNet (fold 1)"]
    assert gen.comparison_pairs(mindboggle, "centre-of-mass") == [
        ("U-ReSNet (fold 1)", "ANTs SyN"), ("U-ReSNet (fold 1)", "ANTs Affine"),
        ("U-ReSNet (fold 1)", "centre-of-mass"), ("ANTs Affine", "centre-of-mass"),
        ("ANTs SyN", "centre-of-mass")]


def test_unordered_table_averages_the_two_directions():
    from regseg.evaluation.pairs import PairEvaluation

    pairs = ["a->b", "b->a", "a->c"]
    ev = PairEvaluation(pairs=pairs)
    ev.dice = {"m": pd.DataFrame({"S": [0.2, 0.4, 0.9]}, index=pd.Index(pairs, name="pair"))}
    ev.seconds = pd.DataFrame({"pair": pairs, "method": "m", "seconds": [1.0, 2.0, 3.0]})
    ev.deformation = pd.DataFrame({"pair": pairs, "method": "m", "folding fraction": 0.0,
                                   "SDlogJ": [0.1, 0.2, 0.3]})
    table = gen.generalisation_table(ev, ["m"], unordered_dice=True)
    assert table.loc["S", "m mean"] == pytest.approx(0.6)  # (0.3 + 0.9) / 2
    assert table.loc["S", "m std"] == pytest.approx(0.3)
    assert table.loc["seconds per pair", "m mean"] == pytest.approx(2.0)  # ordered
    assert table.loc["SDlogJ", "m mean"] == pytest.approx(0.2)
    ordered = gen.generalisation_table(ev, ["m"])
    assert ordered.loc["S", "m mean"] == pytest.approx(0.5)
