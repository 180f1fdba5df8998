"""End to end: ``reproductions/pyramid/run.py --preset smoke`` on the real stand-ins.

One training epoch (one pair per task), evaluation of Initial and Ours as the Learn2Reg scorer
does, Table 1 beside the published values, the Table 2 figure, per-pair CSVs and the Learn2Reg
displacement files. The Initial rows are recomputed here independently: the lung pair's TRE from
the elastix point files, a hippocampus pair's Dice from the label files padded by hand.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from regseg.evaluation.tables import read_result_csv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(data_root, tmp_path_factory):
    from regseg.reproductions.pyramid.reproduction import REPRODUCTION

    out = tmp_path_factory.mktemp("pyramid")
    ctx = REPRODUCTION.run(["--preset", "smoke", "--data-root", str(data_root),
                            "--output-dir", str(out / "run"), "--results-dir",
                            str(out / "results")])
    return out, ctx


@pytest.mark.slow
def test_smoke_preset_writes_table1_and_table2(smoke_run, data_root):
    out, ctx = smoke_run
    results = out / "results"
    table, header = read_result_csv(results / "table1.csv")
    assert "STAND-IN" in (results / "table1.md").read_text().splitlines()[0]
    for task in ("Task 2 stand-in", "Task 3 stand-in", "Task 4 stand-in"):
        assert f"{task} — Ours" in table.index or f"{task.replace(' stand-in', '')} — Ours" \
            in table.index
    assert table.loc["Task 4 published (Learn2Reg 2020 test) — Ours", "DSC"] == 0.74
    assert table.loc["Task 2 published (Learn2Reg 2020 test) — Ours", "CPU s"] == 4.83
    assert header["preset"].startswith("smoke") and "reproductions/pyramid/run.py" in \
        header["command"] and header["commit"] and header["wall time"]
    per_pair = pd.read_csv(results / "per_pair_learn2reg.csv", comment="#")
    assert len(per_pair) == 2 * (1 + 2 + 2)          # 2 methods x (lung 1, CHAOS 2, hippo 2)
    assert (results / "table2_levels.png").stat().st_size > 10_000
    assert (results / "per_landmark_tre.csv").is_file()
    assert json.loads((results / "run.json").read_text())["methods"] == {
        "initial": "Initial", "pyramid": "Ours"}

    # Initial TRE on the lung pair = mean world distance of the elastix landmarks
    folder = data_root / "lung_ct_pair_elastix"
    fixed = np.loadtxt(folder / "ITKElastix_CT_3D_lung_fixed_point_set_corrected.txt", skiprows=2)
    moving = np.loadtxt(folder / "ITKElastix_CT_3D_lung_moving_point_set_corrected.txt",
                        skiprows=2)
    initial_tre = per_pair[(per_pair.task == "task2") & (per_pair.method == "Initial")]["TRE mm"]
    assert float(initial_tre.iloc[0]) == pytest.approx(
        np.linalg.norm(fixed - moving, axis=1).mean(), abs=1e-3)

    # Initial DSC of a hippocampus pair: both label maps padded to 64^3 by hand, overlap by index
    spec = ctx.splits.tasks["task4"]
    m_i, f_i = spec.pairs[0]
    labs = []
    for i in (m_i, f_i):
        lab = np.asarray(nib.as_closest_canonical(nib.load(spec.test.subjects[i].label_path))
                         .dataobj).astype(int)
        pad = np.zeros((64, 64, 64), int)
        start = (np.asarray(lab.shape) - 64) // 2          # CropOrPad's centred box
        src = tuple(slice(max(s, 0), max(s, 0) + min(n, 64)) for s, n in zip(start, lab.shape))
        dst = tuple(slice(max(-s, 0), max(-s, 0) + min(n, 64)) for s, n in zip(start, lab.shape))
        pad[dst] = lab[src]
        labs.append(pad)
    dice = [2 * np.sum((labs[0] == k) & (labs[1] == k)) / (np.sum(labs[0] == k) +
                                                           np.sum(labs[1] == k)) for k in (1, 2)]
    row = per_pair[(per_pair.task == "task4") & (per_pair.method == "Initial")].iloc[0]
    assert row["DSC"] == pytest.approx(np.mean(dice), abs=1e-9)

    # the Learn2Reg displacement file of the first hippocampus pair: on the fixed file's grid
    files = sorted((out / "run" / "learn2reg_submission" / "task4").glob("disp_*.nii.gz"))
    assert len(files) == 1
    disp = nib.load(str(files[0]))
    fixed_file = nib.load(spec.test.subjects[f_i].image_path)
    assert disp.shape == (*fixed_file.shape, 3)
    assert np.isfinite(disp.get_fdata()).all()


@pytest.mark.slow
def test_describe_ends_with_the_parameter_count():
    out = subprocess.run([sys.executable, str(REPO / "reproductions" / "pyramid" / "run.py"),
                          "--describe"], capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("parameters: ") and int(last.split()[-1]) == 5_864_214
