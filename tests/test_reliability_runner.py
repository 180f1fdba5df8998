"""Reliability of the runner (issue 12): the preprocessing cache, validation before training,
no hang on a bad file met inside the input pipeline, and --deterministic."""

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from regseg.datasets import LabelMapping, Recipe, Subject, SubjectDataset
from regseg.datasets.cache import PreprocessingCache
from regseg.datasets.recipes import MapLabels, MinMax, ZScore

REPO = Path(__file__).resolve().parents[1]


def _subject(folder, name="s", value=1.0):
    folder.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32) * value
    lab = np.zeros((6, 5, 4), np.int16)
    lab[1:4, 1:3, 1:3] = 1
    nib.save(nib.Nifti1Image(img, np.diag([2.0, 2, 2, 1])), str(folder / f"{name}_img.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2, 2, 1])), str(folder / f"{name}_lab.nii.gz"))
    return Subject(name, str(folder / f"{name}_img.nii.gz"), str(folder / f"{name}_lab.nii.gz"),
                   landmarks=[[1.0, 2.0, 3.0]])


def _recipe(step=None):
    return Recipe([step or MinMax(), MapLabels("labels", {"box": LabelMapping(["b"], {"b": [1]})})])


def test_cache_returns_the_same_sample_and_is_invalidated_by_file_or_recipe(tmp_path, monkeypatch):
    import regseg.datasets.subjects as subjects_mod

    calls = []
    real = subjects_mod.read_subject
    monkeypatch.setattr(subjects_mod, "read_subject", lambda s: calls.append(s) or real(s))
    subject = _subject(tmp_path / "data")
    cache = PreprocessingCache(tmp_path / "cache")
    first = SubjectDataset("t", False, [subject], _recipe(), disk_cache=cache).load(0)
    again = SubjectDataset("t", False, [subject], _recipe(), disk_cache=cache).load(0)
    assert len(calls) == 1                                               # second: from disk
    np.testing.assert_array_equal(again.image, first.image)
    np.testing.assert_array_equal(again.labels["box"], first.labels["box"])
    np.testing.assert_array_equal(again.affine, first.affine)
    np.testing.assert_array_equal(again.landmarks, first.landmarks)
    assert again.sources == first.sources and list(again.images) == ["image"]
    # another recipe: another entry
    z = SubjectDataset("t", False, [subject], _recipe(ZScore(mask=None)), disk_cache=cache).load(0)
    assert len(calls) == 2 and not np.allclose(z.image, first.image)
    # the file changes: the old entry is never used
    _subject(tmp_path / "data", value=3.0)
    changed = SubjectDataset("t", False, [subject], _recipe(ZScore(mask=None)),
                             disk_cache=cache).load(0)
    assert len(calls) == 3
    np.testing.assert_allclose(changed.image, z.image, atol=1e-5)      # z-score of 3x = same
    # a damaged entry is recomputed
    for entry in (tmp_path / "cache").glob("*.npz"):
        entry.write_bytes(b"garbage")
    SubjectDataset("t", False, [subject], _recipe(), disk_cache=cache).load(0)
    assert len(calls) == 4


_PIPELINE_SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    import test_runner_toy as toy
    from regseg.datasets.io import DataError
    from regseg.training import runner as R

    class Breaking(toy.Toy):
        def methods(self):
            return {{"toy": BreakingNet()}}

    class BreakingNet(toy.ToyNet):
        def training_mapping(self, config):
            calls = []
            inner = super().training_mapping(config)
            def mapping(m, f):
                calls.append(1)
                if len(calls) > 3:   # after validation and the first batches: a file goes bad
                    raise DataError("/data/t3_img.nii.gz: not a readable NIfTI/MGH image")
                return inner(m, f)
            return mapping

    sys.argv = ["run.py", "--output-dir", {out!r}, "--results-dir", {res!r}, "--no-cache",
                "--epochs", "3"]
    Breaking().main()
    print("UNREACHABLE")
''')


def test_a_file_that_breaks_inside_the_input_pipeline_ends_the_run_cleanly(tmp_path):
    script = tmp_path / "breaking.py"
    script.write_text(_PIPELINE_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path / "run"),
                                              res=str(tmp_path / "res")))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: /data/t3_img.nii.gz: not a readable NIfTI/MGH image"]
    assert "UNREACHABLE" not in proc.stdout


def test_a_corrupt_subject_is_found_before_training(tmp_path, ixi10_root):
    """A truncated image among the subjects: one line naming it, exit 1, no run folder."""
    root = tmp_path / "data"
    for part in ("images", "labels"):
        (root / part).mkdir(parents=True)
        for f in sorted((ixi10_root / part).glob("*.nii.gz")):
            (root / part / f.name).symlink_to(f)
    bad = root / "images" / "IXI014-HH-1236-T1.nii.gz"
    bad.unlink()
    bad.write_bytes((ixi10_root / "images" / bad.name).read_bytes()[:5000])
    cmd = [sys.executable, str(REPO / "reproductions/ureSnet/run.py"), "--preset", "smoke",
           "--data-root", str(tmp_path), "--no-download", "--no-cache",
           "--output-dir", str(tmp_path / "run"), "--results-dir", str(tmp_path / "res")]
    (tmp_path / "ixi10").symlink_to(root)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "IXI014-HH-1236-T1.nii.gz" in errors[0]
    assert not (tmp_path / "run" / "registration_only").exists()


@pytest.mark.slow
def test_deterministic_runs_are_bit_identical(tmp_path, ixi10_root):
    """Two runs of 3 epochs, each in a fresh process (as a user runs them): identical tables and
    weights. (The running mean of the training loss in history.csv may differ in its last bit.)"""
    outputs = []
    for k in range(2):
        cmd = [sys.executable, str(REPO / "reproductions/ureSnet/run.py"), "--preset", "smoke",
               "--epochs", "3", "--methods", "registration_only", "--deterministic",
               "--data-root", str(ixi10_root.parent), "--no-download",
               "--output-dir", str(tmp_path / f"run{k}"), "--results-dir", str(tmp_path / f"r{k}")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append([(tmp_path / f"r{k}" / name).read_bytes()
                        for name in ("per_pair_dice.csv", "deformation_statistics.csv")])
        with h5py.File(tmp_path / f"run{k}" / "registration_only" / "final.weights.h5", "r") as f:
            weights = []
            f.visititems(lambda name, obj: weights.append((name, obj[()].tobytes()))
                         if isinstance(obj, h5py.Dataset) else None)
        outputs[-1].append(sorted(weights))
    assert outputs[0] == outputs[1]


def test_help_and_usage_errors_exit_like_argparse():
    cmd = [sys.executable, str(REPO / "reproductions/ureSnet/run.py")]
    ok = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "--preset" in ok.stdout and "Traceback" not in ok.stderr
    bad = subprocess.run(cmd + ["--preset", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr
