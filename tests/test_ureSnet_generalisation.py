"""U-ReSNet generalisation to Mindboggle-101 (reproductions/ureSnet/generalisation.py).

* the Mindboggle aseg -> Table 1 mapping on a hand-built label array (each structure gets
  exactly its ids, every other id is background), and on one real file;
* the pairs (each subject moving twice and fixed twice);
* the command on 3 real subjects with the centre-of-mass row only: its pair list, and its Dice
  equal to the Dice computed with numpy on the preprocessed label maps;
* seconds reported by a registrar (cached ANTs results) replace the measured ones.
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
    assert (ev.seconds["seconds"] < 7.5).all()
    gen._use_reported_seconds(ev, {"cached": wrapped})
    assert ev.seconds["seconds"].tolist() == [7.5, 7.5]
    table = gen.generalisation_table(ev, ["cached"], identity=["cached"])
    assert table.loc["seconds per pair", "cached mean"] == 7.5
    assert table.loc["mean of 1", "cached mean"] == 1.0 and table.loc["folded %", "cached std"] == 0
