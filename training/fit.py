"""Training loop shared by the reproductions: Keras ``fit`` + standard callbacks.

A *run folder* holds one model's training:

* ``checkpoints/epoch_NNN.weights.h5`` — weights after every epoch
  (``keras.callbacks.ModelCheckpoint``);
* ``backup/`` — model + optimiser state for resuming an interrupted run
  (``keras.callbacks.BackupAndRestore``, removed when training ends);
* ``logs/`` — TensorBoard; ``history.csv`` — per-epoch losses (``CSVLogger``);
* ``final.weights.h5`` — written (atomically) when training completed.

Nothing is overwritten: starting a run in a folder that already holds one
raises ``FileExistsError`` unless ``resume=True``, which continues an
interrupted run from its last epoch or, for a completed run, loads its final
weights without training again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras

from regseg.fileio import atomic_path

FINAL_WEIGHTS = "final.weights.h5"


def step_decay(initial_lr: float, every: int, factor: float = 0.5):
    """Learning rate ``initial_lr * factor ** floor(epoch / every)``.

    U-ReSNet §4: Adam, 1e-3, "a decrease of the learning by half every 15
    epochs" (the released code halves every 20).
    """
    def schedule(epoch, lr=None):
        return float(initial_lr * factor ** math.floor(epoch / every))
    return schedule


def completed_epochs(run_dir: Path) -> int:
    """Epochs completed by an interrupted run (from BackupAndRestore's metadata), else 0."""
    backup = Path(run_dir) / "backup"
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        path = backup / name
        if path.exists():
            try:
                return int(json.loads(path.read_text())["epoch"])
            except (ValueError, KeyError):
                continue
    return 0


def run_state(run_dir: Path) -> str:
    """``"new"``, ``"interrupted"`` or ``"complete"`` for a run folder."""
    run_dir = Path(run_dir)
    if (run_dir / FINAL_WEIGHTS).exists():
        return "complete"
    if (run_dir / "backup").exists() or (run_dir / "checkpoints").exists():
        return "interrupted"
    return "new"


def check_run_dir(run_dir: Path, resume: bool) -> str:
    """Return the run state; refuse to reuse a folder without ``resume``.

    Raises:
        FileExistsError: the folder holds a run and ``resume`` is False.
    """
    state = run_state(run_dir)
    if state != "new" and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a {state} training run; pass --resume to continue it "
            f"(or load its final weights), or choose another --output-dir")
    return state


def fit(model, make_train_dataset, run_dir, *, epochs, steps_per_epoch, schedule,
        validation_data=None, resume=False, verbose=1, extra_callbacks=()):
    """Train ``model`` (compiled, inside its strategy scope) with checkpoints and resume.

    Args:
        model: compiled ``keras.Model``.
        make_train_dataset: ``f(first_epoch) -> tf.data.Dataset`` yielding the
            batches of epochs ``first_epoch .. epochs-1`` in order (so that a
            resumed run sees the pairs it would have seen).
        run_dir: the run folder (see module docstring).
        epochs, steps_per_epoch: as in ``Model.fit``.
        schedule: ``f(epoch) -> learning rate``.
        validation_data: optional dataset evaluated after every epoch.
        resume: continue an interrupted run / reuse a completed one.
        verbose: Keras progress bar (1) or one line per epoch (2).
        extra_callbacks: more Keras callbacks (run after the built-in ones).
    Returns:
        dict ``{"state": "trained" | "loaded", "epochs_run": int}``.
    Raises:
        FileExistsError: see :func:`check_run_dir`.
    """
    run_dir = Path(run_dir)
    state = check_run_dir(run_dir, resume)
    if state == "complete":
        model.load_weights(run_dir / FINAL_WEIGHTS)
        return {"state": "loaded", "epochs_run": 0}
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    first = completed_epochs(run_dir) if state == "interrupted" else 0
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "checkpoints" / "epoch_{epoch:03d}.weights.h5"), save_weights_only=True),
        keras.callbacks.LearningRateScheduler(lambda e, lr: schedule(e)),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=first > 0),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        *extra_callbacks,
    ]
    if first < epochs:
        model.fit(make_train_dataset(first), epochs=epochs, steps_per_epoch=steps_per_epoch,
                  validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
    with atomic_path(run_dir / FINAL_WEIGHTS, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    return {"state": "trained", "epochs_run": epochs - first}
