"""``--precision`` and ``--jit-compile`` on a run, and the stop on a non-finite loss (issue 11).

Stated tolerances, on the toy reproduction of ``test_runner_toy`` (16^3 boxes, 2 epochs, the same
pairs in every run): the per-epoch training losses of each XLA choice agree with the uncompiled
run within a relative 1e-4 (float32 arithmetic in another order); under ``mixed_bfloat16`` (the
convolutions in bfloat16, 8 mantissa bits) within a relative 5e-2.
"""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from regseg.training import performance
from regseg.training import runner as R

from test_runner_toy import Toy


@pytest.fixture(autouse=True)
def _reset():
    yield
    performance.configure("float32", "auto")


def _history(out):
    return pd.read_csv(out / "run" / "toy" / "history.csv")


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    runs = {}
    try:
        for name, extra in {"off": ["--jit-compile", "off"], "on": ["--jit-compile", "on"],
                            "layers": ["--jit-compile", "layers"],
                            "bf16": ["--precision", "mixed_bfloat16"]}.items():
            out = tmp_path_factory.mktemp(f"toy-{name}")
            args = ["--output-dir", str(out / "run"), "--results-dir", str(out / "results"), *extra]
            Toy().run(args)
            runs[name] = (out, args)
    finally:
        performance.configure("float32", "auto")
    return runs


def test_each_xla_choice_gives_the_same_losses(toy_runs):
    reference = _history(toy_runs["off"][0])["loss"].to_numpy()
    assert np.all(np.isfinite(reference)) and np.all(reference > 0)
    for name in ("on", "layers"):
        np.testing.assert_allclose(_history(toy_runs[name][0])["loss"], reference, rtol=1e-4,
                                   err_msg=name)


def test_mixed_bfloat16_gives_the_same_losses_within_its_tolerance(toy_runs):
    reference = _history(toy_runs["off"][0])["loss"].to_numpy()
    got = _history(toy_runs["bf16"][0])["loss"].to_numpy()
    np.testing.assert_allclose(got, reference, rtol=5e-2)
    assert not np.allclose(got, reference, rtol=1e-7)  # bfloat16 did run (not a float32 copy)


def test_the_choices_are_recorded(toy_runs):
    for name, precision, jit in [("off", "float32", "off"), ("on", "float32", "on"),
                                 ("bf16", "mixed_bfloat16", "auto")]:
        out = toy_runs[name][0]
        run = json.loads((out / "results" / "run.json").read_text())
        assert run["precision"] == precision and run["XLA (--jit-compile)"] == jit
        assert run["preset_settings"]["precision"] == precision
        manifest = R.read_run_manifest(out / "run" / "toy")
        assert manifest["precision"] == precision and manifest["jit_compile"] == jit


def test_resume_refuses_another_precision_but_not_another_xla_choice(toy_runs, capsys):
    out, args = toy_runs["off"]
    base = [a for a in args if a not in ("--jit-compile", "off")]
    assert Toy().main(base + ["--resume", "--precision", "mixed_bfloat16"]) == 2
    assert "precision" in capsys.readouterr().err
    assert Toy().main(base + ["--resume", "--jit-compile", "layers"]) == 0  # numerics only


def test_configure_sets_the_policy_and_the_layers_and_rejects_unknown_values():
    from regseg.layers import layers_jit_compile

    assert performance.configure("mixed_bfloat16", "layers") == {
        "precision": "mixed_bfloat16", "jit_compile": "layers"}
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert layers_jit_compile() is True
    performance.configure("float32", "off")
    assert keras.config.dtype_policy().name == "float32" and layers_jit_compile() is False
    with pytest.raises(ValueError, match="precision"):
        performance.configure("float16")
    with pytest.raises(ValueError, match="jit_compile"):
        performance.configure("float32", "yes")


def test_a_nan_loss_stops_training_before_any_checkpoint(tmp_path):
    import tensorflow as tf

    from regseg.training.fit import FINAL_WEIGHTS, NonFiniteLoss, fit

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 4), np.float32)
    x[5] = np.nan  # the third batch of the first epoch

    def make_train(first_epoch):
        return tf.data.Dataset.from_tensor_slices((x, np.zeros((8, 1), np.float32))).batch(2).repeat()

    with pytest.raises(NonFiniteLoss, match=r"'loss' is nan at epoch 1, step 3"):
        fit(model, make_train, tmp_path / "run", epochs=2, steps_per_epoch=4,
            schedule=lambda e: 0.01, verbose=0)
    assert not (tmp_path / "run" / FINAL_WEIGHTS).exists()
    assert not list((tmp_path / "run").glob("checkpoints/*.weights.h5"))


def test_a_run_loads_with_the_precision_it_was_trained_with(toy_runs):
    for name, policy in (("bf16", "mixed_bfloat16"), ("off", "float32")):
        run_dir = toy_runs[name][0] / "run" / "toy"
        registrar = Toy().methods()["toy"].load(run_dir, R.read_run_manifest(run_dir))
        convs = [l for l in registrar.model.layers if isinstance(l, keras.layers.Conv3D)]
        assert convs and all(l.dtype_policy.name == policy for l in convs), name
        assert keras.config.dtype_policy().name == "float32"  # restored after the build
