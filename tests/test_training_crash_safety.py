"""Crash safety of the shared training loop and run folders (issue 12, items 2, 4 and 5).

Every case is checked against an uninterrupted run of the same tiny model, or against the
files it must (not) leave behind.
"""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf
import keras

from regseg.fileio import LockedError, RunLock, check_writable, replace_folder
from regseg.training.fit import (BACKUP, FINAL_WEIGHTS, CheckpointError, SettingsMismatch,
                                 completed_epochs, fit, run_state, step_decay)

EPOCHS, STEPS = 4, 3
SETTINGS = {"model": {"units": 1}, "epochs": EPOCHS, "seed": 0}


def _make_dataset(first_epoch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EPOCHS * STEPS * 2, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 1))).astype("float32")
    start = first_epoch * STEPS * 2
    return tf.data.Dataset.from_tensor_slices((x[start:], y[start:])).batch(2)


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated kill after epoch {epoch + 1}")


def _fit(model, run, **kw):
    return fit(model, _make_dataset, run, epochs=EPOCHS, steps_per_epoch=STEPS,
               schedule=step_decay(0.05, 2), verbose=0, **kw)


def _interrupted(run, after=2):
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), run, settings=SETTINGS, extra_callbacks=[_StopAfter(after - 1)])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = _model()
    _fit(model, tmp_path_factory.mktemp("ref") / "run")
    return model.get_weights()


def _same(weights, reference):
    for a, b in zip(weights, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_truncated_latest_backup_falls_back_to_the_previous_epoch(tmp_path, reference):
    run = tmp_path / "run"
    _interrupted(run, after=3)
    latest = run / BACKUP / "latest.weights.h5"
    latest.write_bytes(latest.read_bytes()[:100])                       # truncated on disk
    with pytest.warns(UserWarning, match="latest.weights.h5: corrupt or truncated"):
        assert completed_epochs(run) == 2                               # previous backup
    model = _model()
    out = _fit(model, run, resume=True, settings=SETTINGS)
    assert out["epochs_run"] == 2
    _same(model.get_weights(), reference)


def test_an_empty_metadata_file_without_a_previous_backup_is_named(tmp_path):
    run = tmp_path / "run"
    _interrupted(run, after=1)                                          # no .bkp after epoch 1
    (run / BACKUP / "training_metadata.json").write_text("")
    with pytest.raises(CheckpointError, match="training_metadata.json: corrupt or truncated"):
        _fit(_model(), run, resume=True, settings=SETTINGS)


def test_history_is_rebuilt_from_the_backup_after_a_lost_row(tmp_path, reference):
    run = tmp_path / "run"
    _interrupted(run, after=2)
    lines = (run / "history.csv").read_text().splitlines()
    (run / "history.csv").write_text("\n".join(lines[:-1]) + "\n")      # the kill lost a row
    model = _model()
    _fit(model, run, resume=True, settings=SETTINGS)
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    header = rows[0].split(",")
    assert "learning_rate" in header and "loss" in header
    lr = [float(r.split(",")[header.index("learning_rate")]) for r in rows[1:]]
    np.testing.assert_allclose(lr, [0.05, 0.05, 0.025, 0.025], rtol=1e-6)
    _same(model.get_weights(), reference)


def test_checkpoints_are_complete_files_and_no_temporary_file_is_left(tmp_path):
    run = tmp_path / "run"
    _fit(_model(), run, settings=SETTINGS)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"epoch_{e:03d}.weights.h5" for e in range(1, EPOCHS + 1)]
    for p in (run / "checkpoints").iterdir():
        with h5py.File(p, "r"):
            pass
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]


def test_resume_refuses_other_settings_naming_each_difference(tmp_path, reference):
    run = tmp_path / "run"
    _interrupted(run, after=2)
    changed = {**SETTINGS, "epochs": 9, "seed": 1}
    with pytest.raises(SettingsMismatch, match=r"epochs: 4 -> 9; seed: 0 -> 1"):
        _fit(_model(), run, resume=True, settings=changed)
    out = _fit(_model(), run, resume=True, settings=changed, allow_changes=True)
    assert out["changes"] == ["epochs: 4 -> 9", "seed: 0 -> 1"]
    stored = json.loads((run / "settings.json").read_text())
    assert stored["resumed_with_changes"] == [["epochs: 4 -> 9", "seed: 0 -> 1"]]
    assert stored["settings"]["epochs"] == 9 and stored["code"]


def test_a_run_that_stopped_before_its_first_epoch_is_new(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)                           # an early crash's stub
    (run / "logs").mkdir()
    assert run_state(run) == "new"
    _fit(_model(), run)                                                 # no --resume needed
    assert run_state(run) == "complete"


def test_the_dataset_is_built_before_any_folder(tmp_path):
    def broken(first_epoch):
        raise ValueError("cannot read the training data")

    with pytest.raises(ValueError, match="training data"):
        fit(_model(), broken, tmp_path / "run", epochs=2, steps_per_epoch=1,
            schedule=lambda e: 0.1, verbose=0)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- locks and folders
def test_a_live_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(tmp_path):
    folder = tmp_path / "out"
    with RunLock(folder):
        with pytest.raises(LockedError, match="this process already holds"):
            RunLock(folder).acquire()
    assert not (folder / RunLock.NAME).exists()
    # a live process elsewhere holds it
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (folder / RunLock.NAME).write_text(json.dumps({"pid": holder.pid,
                                                       "host": os.uname().nodename}))
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            RunLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over with a warning
    with pytest.warns(UserWarning, match=f"stale lock of dead process {holder.pid}"):
        lock = RunLock(folder).acquire()
    assert json.loads((folder / RunLock.NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_results_are_replaced_as_a_whole_keeping_the_users_files(tmp_path):
    target, new = tmp_path / "results", tmp_path / ".results.tmp"
    target.mkdir()
    (target / "stale_figure.png").write_text("old")
    (target / "table.csv").write_text("old")
    (target / "README.md").write_text("my notes")
    new.mkdir()
    (new / "table.csv").write_text("new")
    replace_folder(new, target, keep=["README.md"])
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "table.csv"]
    assert (target / "table.csv").read_text() == "new"
    assert (target / "README.md").read_text() == "my notes"
    assert not new.exists() and [p.name for p in tmp_path.iterdir()] == ["results"]


def test_an_unwritable_output_folder_is_named_before_training(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OSError, match="a_file/out: cannot write here"):
        check_writable(tmp_path / "a_file" / "out")
