"""Result tables of regseg.evaluation: content, provenance header, overwrite policy, atomicity."""

import os

import numpy as np
import pandas as pd
import pytest

from regseg.evaluation import (
    atomic_write_csv,
    atomic_write_text,
    comparison_table,
    git_commit,
    read_result_csv,
    summarise,
    write_result_table,
)
from regseg.evaluation import tables as tables_mod


def test_atomic_write_text_no_temp_left(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "first\n")
    atomic_write_text(p, "second\n")
    assert p.read_text() == "second\n"
    assert sorted(os.listdir(p.parent)) == ["a.txt"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")

    def boom(src, dst):
        raise OSError("simulated failure")

    monkeypatch.setattr(tables_mod.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_write_csv_header_roundtrip(tmp_path):
    df = pd.DataFrame({"dice": [0.5, 0.25]}, index=pd.Index(["a", "b"], name="case"))
    p = atomic_write_csv(df, tmp_path / "x.csv", header={"dataset": "toy", "seed": 3})
    lines = p.read_text().splitlines()
    assert lines[:3] == ["# dataset: toy", "# seed: 3", "case,dice"]
    back, header = read_result_csv(p)
    assert header == {"dataset": "toy", "seed": "3"}
    pd.testing.assert_frame_equal(back, df)


def test_summarise_against_numpy():
    per_case = pd.DataFrame({"CeblWM": [0.8, 0.7, 0.9, np.nan], "LV": [0.6, 0.65, 0.7, 0.75], "name": list("abcd")})
    s = summarise(per_case, ["LV", "CeblWM"])
    assert list(s.index) == ["LV", "CeblWM"]
    assert s.at["CeblWM", "mean"] == pytest.approx(0.8)
    assert s.at["CeblWM", "std"] == pytest.approx(np.sqrt(((0.0**2) + 0.1**2 + 0.1**2) / 3))
    assert s.at["CeblWM", "n"] == 3
    assert s.at["LV", "std"] == pytest.approx(np.std([0.6, 0.65, 0.7, 0.75]))
    assert summarise(per_case, ["LV"], ddof=1).at["LV", "std"] == pytest.approx(np.std([0.6, 0.65, 0.7, 0.75], ddof=1))
    with pytest.raises(KeyError):
        summarise(per_case, ["missing"])


def test_comparison_table_columns_and_diff():
    ours = {"U-ReSNet": pd.DataFrame({"mean": [0.71, 0.80], "std": [0.14, 0.02]}, index=["BS", "CeblWM"])}
    published = {
        "U-ReSNet": {"BS": (0.706, 0.141), "CeblWM": (0.80, 0.02), "LV": (0.70, None)},
        "VoxelMorph": {"BS": 0.68},
    }
    t = comparison_table(ours, published, ["CeblWM", "BS", "LV"])
    assert list(t.index) == ["CeblWM", "BS", "LV"]
    assert list(t.columns) == [
        "U-ReSNet ours mean", "U-ReSNet ours std", "U-ReSNet published mean", "U-ReSNet published std", "U-ReSNet diff",
        "VoxelMorph ours mean", "VoxelMorph ours std", "VoxelMorph published mean", "VoxelMorph published std",
        "VoxelMorph diff",
    ]
    assert t.at["BS", "U-ReSNet diff"] == pytest.approx(0.71 - 0.706)
    assert t.at["CeblWM", "U-ReSNet diff"] == pytest.approx(0.0)
    assert np.isnan(t.at["LV", "U-ReSNet ours mean"]) and np.isnan(t.at["LV", "U-ReSNet published std"])
    assert t.at["LV", "U-ReSNet published mean"] == pytest.approx(0.70)
    assert t.at["BS", "VoxelMorph published mean"] == pytest.approx(0.68)
    assert np.isnan(t.at["BS", "VoxelMorph diff"])


HEADER = {
    "command": "python -m regseg.reproductions.ureSnet.evaluate --preset smoke",
    "dataset": "synthetic stand-in (not OASIS-3)",
    "preset": "smoke",
    "commit": "abc1234",
    "seed": 0,
    "wall time": "12.3 s",
    "gpu": "none",
}


def _table():
    return pd.DataFrame(
        {"mean": [0.706, 0.5], "std": [0.141, np.nan], "diff": [0.0123, -0.02]},
        index=pd.Index(["BS", "LV"], name="structure"),
    )


def test_write_result_table_content(tmp_path):
    csv_p, md_p = write_result_table(_table(), tmp_path / "out", "table1", HEADER, title="Table 1 registration Dice")
    assert csv_p.name == "table1.csv" and md_p.name == "table1.md"
    # CSV: provenance comment lines first (dataset, preset, commit, seed, wall time, command, rest), then the data
    lines = csv_p.read_text().splitlines()
    assert lines[:7] == [
        "# dataset: synthetic stand-in (not OASIS-3)",
        "# preset: smoke",
        "# commit: abc1234",
        "# seed: 0",
        "# wall time: 12.3 s",
        "# command: python -m regseg.reproductions.ureSnet.evaluate --preset smoke",
        "# gpu: none",
    ]
    assert lines[7] == "structure,mean,std,diff"
    back, header = read_result_csv(csv_p)
    pd.testing.assert_frame_equal(back, _table())
    assert header["dataset"] == HEADER["dataset"]
    # Markdown: title with the dataset name, bullet list, mean ± std cells
    md = md_p.read_text().splitlines()
    assert md[0] == "# Table 1 registration Dice — dataset: synthetic stand-in (not OASIS-3)"
    assert md[1] == ""
    assert md[2] == "- **dataset**: synthetic stand-in (not OASIS-3)"
    assert "- **seed**: 0" in md and "- **wall time**: 12.3 s" in md and "- **commit**: abc1234" in md
    assert "- **command**: python -m regseg.reproductions.ureSnet.evaluate --preset smoke" in md
    assert "| structure | mean ± std | diff |" in md
    assert "| BS | 0.706 ± 0.141 | +0.012 |" in md
    assert "| LV | 0.500 | -0.020 |" in md
    assert sorted(os.listdir(tmp_path / "out")) == ["table1.csv", "table1.md"]  # no temp files


def test_write_result_table_comparison_markdown(tmp_path):
    ours = {"U-ReSNet": pd.DataFrame({"mean": [0.72], "std": [0.1]}, index=["BS"])}
    t = comparison_table(ours, {"U-ReSNet": {"BS": (0.706, 0.141)}}, ["BS"])
    _, md_p = write_result_table(t, tmp_path, "cmp", {"dataset": "OASIS-3"})
    text = md_p.read_text()
    assert text.splitlines()[0] == "# cmp — dataset: OASIS-3"
    assert "| structure | U-ReSNet ours | U-ReSNet published | U-ReSNet diff |" in text
    assert "| BS | 0.720 ± 0.100 | 0.706 ± 0.141 | +0.014 |" in text
    assert "- **commit**: " in text  # filled in automatically


def test_write_result_table_refuses_overwrite(tmp_path):
    write_result_table(_table(), tmp_path, "t", HEADER)
    before = (tmp_path / "t.md").read_text()
    with pytest.raises(FileExistsError, match="t.csv"):
        write_result_table(_table() * 2, tmp_path, "t", HEADER)
    assert (tmp_path / "t.md").read_text() == before
    # only the .md existing is refused too, naming that file
    os.remove(tmp_path / "t.csv")
    with pytest.raises(FileExistsError, match=r"t\.md"):
        write_result_table(_table(), tmp_path, "t", HEADER)
    assert not (tmp_path / "t.csv").exists()  # nothing written when refusing
    write_result_table(_table() * 2, tmp_path, "t", HEADER, overwrite=True)
    assert "| BS | 1.412 ± 0.282 | +0.025 |" in (tmp_path / "t.md").read_text()
    assert sorted(os.listdir(tmp_path)) == ["t.csv", "t.md"]


def test_write_result_table_requires_dataset(tmp_path):
    with pytest.raises(ValueError, match="dataset"):
        write_result_table(_table(), tmp_path, "t", {"preset": "smoke"})
    with pytest.raises(ValueError):
        write_result_table(_table(), tmp_path, "../t", HEADER)


def test_git_commit_never_raises(tmp_path):
    c = git_commit()
    assert isinstance(c, str) and c
    assert c == "unknown" or all(ch in "0123456789abcdef" for ch in c.removesuffix("-dirty"))
    assert git_commit(path=tmp_path / "does-not-exist") == "unknown"


def test_structure_table_against_hand_values():
    from regseg.evaluation.tables import structure_table

    per_pair = {"A": pd.DataFrame({"x": [0.5, 0.7], "y": [0.1, 0.3]}, index=["p1", "p2"])}
    pub = {"A": {"x": (0.6, 0.1), "y": (0.2, None)}, "B": {"x": (0.9, 0.0)}}
    t = structure_table(per_pair, pub, ["x", "y"], mean_row="mean", published_mean={"A": 0.4})
    assert list(t.index) == ["x", "y", "mean of 2"]
    np.testing.assert_allclose(t.loc["x", ["A ours mean", "A ours std"]], [0.6, 0.1])
    # mean row: per-pair means 0.3 and 0.5 -> mean 0.4, population std 0.1
    np.testing.assert_allclose(t.loc["mean of 2", ["A ours mean", "A ours std"]], [0.4, 0.1])
    assert t.at["mean of 2", "A published mean"] == 0.4 and t.at["mean of 2", "A diff"] == pytest.approx(0)
    assert t.at["x", "B published mean"] == 0.9 and np.isnan(t.at["x", "B ours mean"])
    # our data lacks "y" and has "z": paper rows first (empty), extra rows, renamed mean row
    other = {"A": pd.DataFrame({"x": [0.5], "z": [0.9]}, index=["p1"])}
    t2 = structure_table(other, pub, ["x", "y"], mean_row="mean", published_mean={"A": 0.4})
    assert list(t2.index) == ["y", "x", "z", "mean of 2 (no published value)"]
    assert np.isnan(t2.at["mean of 2 (no published value)", "A published mean"])
    assert np.isnan(t2.at["z", "A published mean"]) and t2.at["z", "A ours mean"] == 0.9
    assert list(structure_table(per_pair, pub, ["x", "y"], mean_row=None).index) == ["x", "y"]


def test_markdown_keeps_integer_counts_and_small_p_values():
    """Counts stay integers beside float columns; p-values never print as 0.000."""
    df = pd.DataFrame({"unordered pairs": [20, 7], "mean difference": [0.0081, -0.0114],
                       "Wilcoxon p": [3.8e-5, 0.0583]},
                      index=pd.Index(["a - b", "b - c"], name="comparison"))
    md = tables_mod.to_markdown(df)
    rows = [line.split(" | ") for line in md.splitlines()[2:]]
    assert rows[0] == ["| a - b", "20", "0.008", "3.8e-05 |"]
    assert rows[1] == ["| b - c", "7", "-0.011", "0.058 |"]
