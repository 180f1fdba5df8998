"""Training loop shared by the reproductions: Keras ``fit`` + standard callbacks.

A *run folder* holds one model's training:

* ``settings.json`` — the run's settings and code version (``--resume`` checks them);
* ``checkpoints/epoch_NNN.weights.h5`` — weights after every epoch (:class:`EpochCheckpoint`,
  written atomically);
* ``backup/`` — model + optimiser state for resuming an interrupted run
  (:class:`SafeBackupAndRestore`: Keras ``BackupAndRestore`` with ``double_checkpoint=True``
  and atomic writes; removed when training ends);
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
import shutil
import warnings
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


class CheckpointError(RuntimeError):
    """A run folder's checkpoint or metadata file is unusable (the message names it)."""


class SettingsMismatch(ValueError):
    """``--resume`` with settings other than the run's (the message names each difference)."""


class NonFiniteLoss(RuntimeError):
    """A training loss became NaN or infinite (the message names the loss, epoch and step)."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise :class:`NonFiniteLoss` at the first NaN or infinite ``*loss`` value of a batch.

    Unlike ``keras.callbacks.TerminateOnNaN`` it raises, so no checkpoint, backup or final
    weights of the broken epoch are written and an earlier epoch's backup stays the one
    ``--resume`` continues from.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        import numpy as np

        for key, value in (logs or {}).items():
            if key.endswith("loss"):
                value = float(np.asarray(value))
                if not math.isfinite(value):
                    from regseg.training.performance import current
                    raise NonFiniteLoss(
                        f"training loss {key!r} is {value} at epoch {self._epoch + 1}, step "
                        f"{batch + 1} (precision {current()['precision']}); lower the learning "
                        f"rate or use --precision float32; --resume continues from the last "
                        f"finished epoch")


BACKUP = "backup"
_WEIGHTS, _META = "latest.weights.h5", "training_metadata.json"


def _weights_ok(path: Path) -> bool:
    import h5py
    try:
        with h5py.File(path, "r"):
            return True
    except (OSError, ValueError):
        return False


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text())
        int(meta["epoch"])
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def restore_backup(run_dir: Path) -> int:
    """Make the backup of an interrupted run usable and return its completed epochs.

    The latest backup (``backup/latest.weights.h5`` + ``training_metadata.json``) is checked;
    if either is truncated or corrupt, the previous one (``*.bkp``, kept by
    ``double_checkpoint=True``) replaces it with a warning naming the file.

    Returns:
        completed epochs (0 when there is no backup).
    Raises:
        CheckpointError: the latest backup is corrupt and there is no usable previous one
            (naming the file).
    """
    backup = Path(run_dir) / BACKUP
    weights, meta_path = backup / _WEIGHTS, backup / _META
    if not weights.exists() and not meta_path.exists():
        return 0
    meta = _read_meta(meta_path)
    if meta is not None and _weights_ok(weights):
        return int(meta["epoch"])
    bad = meta_path if meta is None else weights
    prev_w, prev_m = Path(f"{weights}.bkp"), Path(f"{meta_path}.bkp")
    prev_meta = _read_meta(prev_m) if prev_m.exists() else None
    if prev_meta is None or not _weights_ok(prev_w):
        raise CheckpointError(f"{bad}: corrupt or truncated backup and no usable previous backup "
                              f"({prev_w.name}); delete {backup} to restart from the last "
                              f"per-epoch checkpoint, or start a new run")
    warnings.warn(f"{bad}: corrupt or truncated; resuming from the previous backup "
                  f"(epoch {int(prev_meta['epoch'])})", stacklevel=2)
    shutil.copyfile(prev_w, weights)
    shutil.copyfile(prev_m, meta_path)
    return int(prev_meta["epoch"])


def completed_epochs(run_dir: Path) -> int:
    """Epochs completed by an interrupted run (after :func:`restore_backup`'s checks), else 0."""
    return restore_backup(run_dir)


def run_state(run_dir: Path) -> str:
    """``"new"``, ``"interrupted"`` or ``"complete"`` for a run folder.

    A folder with neither final weights, a backup nor a per-epoch checkpoint (e.g. a run that
    stopped before its first epoch ended) is ``"new"``.
    """
    run_dir = Path(run_dir)
    if (run_dir / FINAL_WEIGHTS).exists():
        return "complete"
    backup = run_dir / BACKUP
    if any((backup / n).exists() for n in (_META, _WEIGHTS, f"{_META}.bkp")):
        return "interrupted"
    if any((run_dir / "checkpoints").glob("epoch_*.weights.h5")):
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


SETTINGS = "settings.json"


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_settings(run_dir: Path, settings: dict, *, allow_changes: bool = False) -> list[str]:
    """Compare a resumed run's settings with the stored ``settings.json``.

    Args:
        run_dir: the run folder.
        settings: the current settings (JSON-serialisable; nested dicts are compared per key).
        allow_changes: accept differences (``--resume-with-changes``); they are returned and
            appended to the stored file's ``resumed_with_changes`` list.
    Returns:
        the differences, ``"key: stored -> now"`` (empty when identical or no file).
    Raises:
        SettingsMismatch: differences and not ``allow_changes`` (each named).
        CheckpointError: the stored file is unreadable (named).
    """
    from regseg.fileio import atomic_write_text

    path = Path(run_dir) / SETTINGS
    if not path.exists():
        return []
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable run settings ({exc})") from exc
    now = json.loads(json.dumps(settings, default=str))
    a, b = _flatten(stored.get("settings", {})), _flatten(now)
    diffs = [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs and not allow_changes:
        raise SettingsMismatch(f"{path}: --resume with other settings than the run's: "
                               + "; ".join(diffs) + " (pass --resume-with-changes to accept)")
    if diffs:
        stored.setdefault("resumed_with_changes", []).append(diffs)
        stored["settings"] = now
        atomic_write_text(path, json.dumps(stored, indent=2) + "\n")
    return diffs


def _check_finished_epochs(run_dir: Path, epochs: int) -> None:
    """Refuse other epochs for a finished run: it is only loaded, never trained to them.

    Raises:
        SettingsMismatch: ``settings.json`` records other epochs than ``epochs`` (named).
    """
    path = Path(run_dir) / SETTINGS
    try:
        done = int(json.loads(path.read_text())["settings"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # unreadable: check_settings names it
    if done != epochs:
        raise SettingsMismatch(f"{path}: the run finished after {done} epoch(s); "
                               f"--resume-with-changes cannot make it {epochs} (a finished run is "
                               f"loaded, not trained again); start a new run in another "
                               f"--output-dir")


def write_settings(run_dir: Path, settings: dict) -> Path:
    """Write ``settings.json`` (settings + code version) for a new run, atomically."""
    from regseg.evaluation.tables import git_commit
    from regseg.fileio import atomic_write_text

    data = {"settings": json.loads(json.dumps(settings, default=str)), "code": git_commit()}
    return atomic_write_text(Path(run_dir) / SETTINGS, json.dumps(data, indent=2) + "\n")


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` with ``double_checkpoint=True`` whose files are written atomically.

    The metadata also keeps every completed epoch's logs, so ``history.csv`` can be rebuilt on
    resume (:func:`fit`). Corrupt files are handled before training by :func:`restore_backup`.
    """

    def __init__(self, backup_dir):
        super().__init__(str(backup_dir), double_checkpoint=True)
        self.history_rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": int(epoch)}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.history_rows = [r for r in self.history_rows if r["epoch"] < epoch] + [row]
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        from regseg.fileio import atomic_write_text

        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        weights, meta = Path(self._weights_path), Path(self._training_metadata_path)
        if weights.exists():
            shutil.copyfile(weights, self._prev_weights_path)
        if meta.exists():
            shutil.copyfile(meta, self._prev_training_metadata_path)
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        atomic_write_text(meta, json.dumps({"epoch": self._current_epoch,
                                            "batch": self._last_batch_seen,
                                            "history": self.history_rows}))


class EpochCheckpoint(keras.callbacks.Callback):
    """Weights after every epoch, ``checkpoints/epoch_NNN.weights.h5`` (1-based), written atomically."""

    def __init__(self, folder):
        super().__init__()
        self.folder = Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"epoch_{epoch + 1:03d}.weights.h5",
                         suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)


def _rebuild_history(run_dir: Path, first: int) -> list[dict]:
    """Rewrite ``history.csv`` with the epochs before ``first`` from the backup's metadata."""
    import csv
    import io

    from regseg.fileio import atomic_write_text

    meta = _read_meta(run_dir / BACKUP / _META) or {}
    rows = [r for r in meta.get("history", []) if r["epoch"] < first]
    path = run_dir / "history.csv"
    if not rows:
        if path.exists() and first == 0:
            path.unlink()
        return rows
    keys = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return rows


def fit(model, make_train_dataset, run_dir, *, epochs, steps_per_epoch, schedule,
        validation_data=None, resume=False, verbose=1, extra_callbacks=(), settings=None,
        allow_changes=False):
    """Train ``model`` (compiled, inside its strategy scope) with checkpoints and resume.

    Crash safety: per-epoch checkpoints and the resume backup are written atomically (a
    temporary file, then a rename); the backup keeps the previous epoch too
    (``double_checkpoint``) and a corrupt latest backup falls back to it with a warning;
    ``history.csv`` is rebuilt from the backup on resume. Folders are created only once the
    training dataset has been built.

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
        settings: the run's settings (JSON-serialisable); stored in ``settings.json`` for a new
            run and compared on resume (:func:`check_settings`).
        allow_changes: accept different settings on resume (recorded).
    Returns:
        dict ``{"state": "trained" | "loaded", "epochs_run": int, "changes": [...]}``.
    Raises:
        FileExistsError: see :func:`check_run_dir`.
        SettingsMismatch: resumed with other settings (see :func:`check_settings`).
        CheckpointError: unusable backup or settings files (named).
    """
    from regseg.training.distribute import worker_dir
    from regseg.training.performance import apply_to_model

    apply_to_model(model)  # --jit-compile's whole-step setting
    # several workers: the chief works in run_dir, the others in a private copy of its state
    run_dir = worker_dir(run_dir, getattr(model, "distribute_strategy", None),
                         copy=(SETTINGS, BACKUP, FINAL_WEIGHTS, "checkpoints/epoch_*.weights.h5"))
    state = check_run_dir(run_dir, resume)
    changes = []
    if settings is not None and state == "complete" and allow_changes:
        _check_finished_epochs(run_dir, epochs)
    if settings is not None and state != "new":
        changes = check_settings(run_dir, settings, allow_changes=allow_changes)
    if state == "complete":
        model.load_weights(run_dir / FINAL_WEIGHTS)
        return {"state": "loaded", "epochs_run": 0, "changes": changes}
    first = completed_epochs(run_dir) if state == "interrupted" else 0
    train_data = make_train_dataset(first) if first < epochs else None
    run_dir.mkdir(parents=True, exist_ok=True)
    if settings is not None and (state == "new" or not (run_dir / SETTINGS).exists()):
        write_settings(run_dir, settings)
    backup = SafeBackupAndRestore(run_dir / BACKUP)
    backup.history_rows = _rebuild_history(run_dir, first)
    callbacks = [  # the scheduler first, so that the backup's history holds the learning rate
        keras.callbacks.LearningRateScheduler(lambda e, lr: schedule(e)),
        StopOnNonFiniteLoss(),  # before the backup and checkpoints: nothing of a NaN epoch
        backup,
        EpochCheckpoint(run_dir / "checkpoints"),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=first > 0),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        *extra_callbacks,
    ]
    if train_data is not None:
        model.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                  validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
    with atomic_path(run_dir / FINAL_WEIGHTS, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    return {"state": "trained", "epochs_run": epochs - first, "changes": changes}
