"""Checkpointing and resume of the shared training loop (training/fit.py)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from regseg.training.fit import FINAL_WEIGHTS, check_run_dir, completed_epochs, fit, step_decay
from regseg.training.pairs import all_ordered_pairs, training_pairs, validation_pairs

EPOCHS, STEPS = 4, 3


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EPOCHS * STEPS * 2, 5)).astype("float32")
    y = (x @ rng.normal(size=(5, 1))).astype("float32")
    return x, y


def _make_dataset(first_epoch):
    x, y = _data()
    start = first_epoch * STEPS * 2
    return tf.data.Dataset.from_tensor_slices((x[start:], y[start:])).batch(2)


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption after epoch 2")


def test_step_decay_halves_every_15_epochs():
    s = step_decay(1e-3, 15)
    assert [s(e) for e in (0, 14, 15, 29, 30, 79)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1e-3 / 32]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    schedule = step_decay(0.05, 2)
    full = _model()
    fit(full, _make_dataset, tmp_path / "full", epochs=EPOCHS, steps_per_epoch=STEPS,
        schedule=schedule, verbose=0)
    reference = full.get_weights()

    run = tmp_path / "interrupted"
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, _make_dataset, run, epochs=EPOCHS, steps_per_epoch=STEPS, schedule=schedule,
            verbose=0, extra_callbacks=[_Interrupt()])
    assert completed_epochs(run) == 2
    assert not (run / FINAL_WEIGHTS).exists()
    with pytest.raises(FileExistsError, match="--resume"):
        fit(_model(), _make_dataset, run, epochs=EPOCHS, steps_per_epoch=STEPS,
            schedule=schedule, verbose=0)
    resumed = _model()  # fresh process-like state: new weights, restored from the backup
    out = fit(resumed, _make_dataset, run, epochs=EPOCHS, steps_per_epoch=STEPS,
              schedule=schedule, verbose=0, resume=True)
    assert out == {"state": "trained", "epochs_run": 2, "changes": []}
    for a, b in zip(reference, resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history = (run / "history.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2", "3"]
    assert len(list((run / "checkpoints").glob("epoch_*.weights.h5"))) == EPOCHS

    # a completed run is reused with --resume, refused without
    again = _model()
    assert fit(again, _make_dataset, run, epochs=EPOCHS, steps_per_epoch=STEPS,
               schedule=schedule, verbose=0, resume=True)["state"] == "loaded"
    for a, b in zip(reference, again.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileExistsError):
        check_run_dir(run, resume=False)


def test_training_pairs_are_two_permutations_per_epoch():
    pairs = training_pairs(7, epochs=3, seed=5)
    assert pairs.shape == (3, 7, 2)
    for e in range(3):
        assert sorted(pairs[e, :, 0]) == list(range(7))
        assert sorted(pairs[e, :, 1]) == list(range(7))
    assert not np.array_equal(pairs[0], pairs[1])  # reshuffled every epoch
    np.testing.assert_array_equal(pairs, training_pairs(7, epochs=3, seed=5))  # reproducible
    assert training_pairs(3, epochs=1, seed=0, pairs_per_epoch=7).shape == (1, 7, 2)
    with pytest.raises(ValueError):
        training_pairs(1, 1, 0)


def test_fixed_validation_and_test_pairs():
    np.testing.assert_array_equal(validation_pairs(3), [[0, 1], [1, 2]])
    assert validation_pairs(1).shape == (0, 2)
    np.testing.assert_array_equal(all_ordered_pairs(3),
                                  [[0, 1], [0, 2], [1, 0], [1, 2], [2, 0], [2, 1]])
