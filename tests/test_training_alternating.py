"""Alternating training of two networks (training/alternating.py).

DeepAtlas §2.3: one network is trained while the other is fixed, 1:20
segmentation:registration steps; Couteaux et al. §2.2: stages updating
different sets of weights.  Tiny linear "networks" ``a: R^3 -> R^2`` and
``b: R^2 -> R^1`` stand for the two networks; every phase loss goes through
both, so a phase that updated more than its own variables would show.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import keras

from regseg.training.alternating import (AlternatingModel, Phase, PhaseOptimizers,
                                         alternation_schedule)
from regseg.training.fit import FINAL_WEIGHTS, completed_epochs, fit, step_decay

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 3)).astype("float32")
Y = RNG.normal(size=(64, 1)).astype("float32")


def _nets(seed=0):
    keras.utils.set_random_seed(seed)
    a = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="net_a")
    b = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)], name="net_b")
    return a, b


def _mse(a, b):
    """Scalar loss: mean over the batch of (b(a(x)) - y)^2 (data = (x, y[, sample_weight]))."""
    def loss(data, training):
        x, y = data[0], data[1]
        return tf.reduce_mean(tf.square(b(a(x, training=training), training=training) - y))
    return loss


def _per_sample(a, b):
    """Vector loss (batch,): per-sample squared error."""
    def loss(data, training):
        x, y = data[0], data[1]
        return tf.reduce_mean(tf.square(b(a(x)) - y), axis=-1)
    return loss


def _model(pattern=(("a", 1), ("b", 20)), optimizer=lambda: keras.optimizers.SGD(0.05),
           seed=0, **kwargs):
    a, b = _nets(seed)
    trains = {"a": a, "b": b}
    losses = {"a": _mse(a, b), "b": _per_sample(a, b)}
    phases = [Phase(name, steps, trains[name], losses[name], optimizer()) for name, steps in pattern]
    model = AlternatingModel({"a": a, "b": b}, phases, **kwargs)
    model.compile()
    return model, a, b


def _weights(net):
    return [np.array(w) for w in net.get_weights()]


def _equal(ws1, ws2):
    return all(np.array_equal(u, v) for u, v in zip(ws1, ws2))


# --------------------------------------------------------------------------- schedule (pure python)
def test_alternation_schedule_1_to_20():
    s = alternation_schedule({"segmentation": 1, "registration": 20})
    assert s.cycle_length == 21
    assert [s(k) for k in (0, 1, 20, 21, 22, 41, 42)] == [
        "segmentation", "registration", "registration", "segmentation", "registration",
        "registration", "segmentation"]
    # 100 steps = 4 full cycles (84 steps) + 16: segmentation at 0, 21, 42, 63, 84
    assert s.counts(100) == {"segmentation": 5, "registration": 95}
    for n in (0, 1, 21, 22, 100):
        assert s.counts(n) == {name: sum(s(k) == name for k in range(n)) for name in s.names}
    three = alternation_schedule([("seg", 2), ("reg", 3), ("joint", 1)])
    assert [three(k) for k in range(7)] == ["seg", "seg", "reg", "reg", "reg", "joint", "seg"]


@pytest.mark.parametrize("pattern, match", [
    ({}, "empty"),
    ({"seg": 0}, "int >= 1"),
    ({"seg": 1.5}, "int >= 1"),
    ({"seg": True}, "int >= 1"),
    ([("seg", 1), ("seg", 2)], "twice"),
    ({"": 1}, "identifier"),
    ({"seg mentation": 1}, "identifier"),
    ([("seg", 1, 2)], r"\(name, steps\) pairs"),
])
def test_bad_alternation_pattern(pattern, match):
    with pytest.raises(ValueError, match=match):
        alternation_schedule(pattern)


def test_bad_phase_specs():
    a, b = _nets()
    loss = _mse(a, b)
    sgd = keras.optimizers.SGD
    with pytest.raises(ValueError, match="no trainable variables"):
        AlternatingModel([a, b], [Phase("a", 1, [], loss, sgd())])
    with pytest.raises(ValueError, match="outside `networks`"):
        AlternatingModel([a], [Phase("b", 1, b, loss, sgd())])
    shared = sgd()
    with pytest.raises(ValueError, match="own optimizer"):
        AlternatingModel([a, b], [Phase("a", 1, a, loss, shared), Phase("b", 1, b, loss, shared)])
    with pytest.raises(ValueError, match="callable"):
        AlternatingModel([a, b], [Phase("a", 1, a, "mse", sgd())])
    with pytest.raises(ValueError, match="keras optimizer"):
        AlternatingModel([a, b], [Phase("a", 1, a, loss, "sgd")])
    with pytest.raises(ValueError, match="int >= 1"):
        AlternatingModel([a, b], [Phase("a", 0, a, loss, sgd())])
    with pytest.raises(ValueError, match="a phase must be"):
        AlternatingModel([a, b], [("a", 1, a)])
    unbuilt = keras.layers.Dense(1)
    with pytest.raises(ValueError, match="not built"):
        AlternatingModel([a, b, unbuilt], [Phase("a", 1, a, loss, sgd())])
    model = AlternatingModel([a, b], [("a", 1, a, loss, sgd()), {"name": "b", "steps": 2, "train": b,
                                                                "loss": loss, "optimizer": sgd()}])
    with pytest.raises(ValueError, match="takes no"):
        model.compile(optimizer="adam")
    assert not model.compiled


# --------------------------------------------------------------------------- 1. the 1:20 alternation
def test_one_to_twenty_alternation_counts_and_frozen_network():
    model, a, b = _model(pattern=(("a", 1), ("b", 20)))
    n_steps = 45  # 2 cycles of 21 + 3 steps: "a" at 0, 21, 42
    expected = {"a": 3, "b": 42}
    for k in range(n_steps):
        before_a, before_b = _weights(a), _weights(b)
        i = 8 * k % 64
        logs = model.train_on_batch(X[i:i + 8], Y[i:i + 8], return_dict=True)
        after_a, after_b = _weights(a), _weights(b)
        if k % 21 == 0:  # hand rule: a segmentation step opens every cycle of 21
            assert _equal(before_b, after_b), f"b changed during a step of a (step {k})"
            assert not _equal(before_a, after_a), f"a did not move at step {k}"
        else:
            assert _equal(before_a, after_a), f"a changed during a step of b (step {k})"
            assert not _equal(before_b, after_b), f"b did not move at step {k}"
        assert logs["steps_a"] == 1 + k // 21
    assert model.step_counts() == {"step": n_steps, **expected}
    assert logs["steps_a"] == expected["a"] and logs["steps_b"] == expected["b"]
    # every optimiser stepped only for its own phase; the container counted all steps
    assert [int(o.iterations.numpy()) for o in model.phase_optimizers] == [3, 42]
    assert int(model.optimizer.iterations.numpy()) == n_steps
    assert isinstance(model.optimizer, PhaseOptimizers)


# --------------------------------------------------------------------------- 2. own variables only
class _Snapshots(keras.callbacks.Callback):
    def __init__(self, variables):
        super().__init__()
        self.variables, self.states = variables, []

    def on_train_begin(self, logs=None):
        self.states.append([keras.ops.convert_to_numpy(v) for v in self.variables])

    def on_train_batch_end(self, batch, logs=None):
        self.states.append([keras.ops.convert_to_numpy(v) for v in self.variables])


def test_each_phase_updates_only_its_variables_with_a_shared_pipeline():
    a, b = _nets()
    loss = _mse(a, b)  # every phase's loss depends on every variable
    a_kernel = a.layers[0].kernel
    phases = [
        Phase("a_kernel", 2, [a_kernel], loss, keras.optimizers.Adam(0.01)),   # a variable list
        Phase("b", 1, b, loss, keras.optimizers.SGD(0.1)),                      # a network
        Phase("joint", 1, [a, b], loss, keras.optimizers.SGD(0.1)),            # both (Couteaux)
    ]
    model = AlternatingModel({"a": a, "b": b}, phases)
    model.compile()
    variables = [*a.trainable_variables, *b.trainable_variables]
    updated = {"a_kernel": {0}, "b": {2, 3}, "joint": {0, 1, 2, 3}}
    assert [v.path for v in model.phase_variables("a_kernel")] == [a_kernel.path]
    snap = _Snapshots(variables)
    # one tf.data pipeline feeds all phases: batch k goes to the phase of step k
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8).repeat()
    hist = model.fit(ds, epochs=1, steps_per_epoch=9, verbose=0, callbacks=[snap])
    sched = alternation_schedule({"a_kernel": 2, "b": 1, "joint": 1})
    for k in range(9):
        changed = {j for j, (u, v) in enumerate(zip(snap.states[k], snap.states[k + 1]))
                   if not np.array_equal(u, v)}
        assert changed == updated[sched(k)], (k, sched(k), changed)
    assert model.step_counts() == {"step": 9, "a_kernel": 5, "b": 2, "joint": 2}
    assert {k: hist.history[k][-1] for k in ("steps_a_kernel", "steps_b", "steps_joint")} == {
        "steps_a_kernel": 5, "steps_b": 2, "steps_joint": 2}
    for name in ("loss", "loss_a_kernel", "loss_b", "loss_joint"):
        assert np.isfinite(hist.history[name][-1])
    # evaluation: every phase's loss, no update; `loss` weights them by steps per cycle (2:1:1)
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    val = model.evaluate(ds.take(2), return_dict=True, verbose=0)
    assert set(val) == {"loss", "loss_a_kernel", "loss_b", "loss_joint"}
    np.testing.assert_allclose(val["loss"], val["loss_b"], rtol=1e-6)  # same loss function
    assert _equal(before, [keras.ops.convert_to_numpy(v) for v in model.weights])


# --------------------------------------------------------------------------- 3. hand-computed SGD
def _hand_sgd_step(wa, ba, wb, bb, x, y, lr, phase):
    """One SGD step on mean((x wa + ba) wb + bb - y)^2, float64, analytic gradients."""
    wa, ba, wb, bb, x, y = (np.asarray(t, np.float64) for t in (wa, ba, wb, bb, x, y))
    h = x @ wa + ba
    r = h @ wb + bb - y                       # (B, 1)
    d_pred = 2.0 * r / r.size                 # d mean / d pred
    g_wb, g_bb = h.T @ d_pred, d_pred.sum(0)
    d_h = d_pred @ wb.T
    g_wa, g_ba = x.T @ d_h, d_h.sum(0)
    if phase == "a":
        return wa - lr * g_wa, ba - lr * g_ba, wb, bb
    return wa, ba, wb - lr * g_wb, bb - lr * g_bb


def test_update_equals_hand_computed_sgd_step_for_each_phase():
    lr = 0.1
    model, a, b = _model(pattern=(("a", 1), ("b", 1)), optimizer=lambda: keras.optimizers.SGD(lr))
    x, y = X[:8], Y[:8]
    for phase in ("a", "b", "a"):  # phase a: scalar loss; phase b: per-sample vector loss
        wa, ba = _weights(a)
        wb, bb = _weights(b)
        expected = _hand_sgd_step(wa, ba, wb, bb, x, y, lr, phase)
        model.train_on_batch(x, y, return_dict=True)
        for got, want in zip([*_weights(a), *_weights(b)], expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # the frozen network is bit-for-bit unchanged
        frozen = (wb, bb) if phase == "a" else (wa, ba)
        now = _weights(b) if phase == "a" else _weights(a)
        assert _equal(frozen, now)


def test_train_step_switch_without_strategy_matches_fit_path():
    """``train_step`` (switch inside the step) gives what ``fit``'s train function gives."""
    m1, a1, b1 = _model(pattern=(("a", 2), ("b", 3)), optimizer=lambda: keras.optimizers.Adam(0.01))
    m2, a2, b2 = _model(pattern=(("a", 2), ("b", 3)), optimizer=lambda: keras.optimizers.Adam(0.01))
    step = tf.function(m2.train_step)
    for k in range(7):
        x, y = X[8 * k:8 * k + 8], Y[8 * k:8 * k + 8]
        m1.train_on_batch(x, y, return_dict=True)
        step((tf.constant(x), tf.constant(y)))
    assert m1.step_counts() == m2.step_counts() == {"step": 7, "a": 4, "b": 3}  # a at 0, 1, 5, 6
    for u, v in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- 4. resume mid-cycle
EPOCHS, STEPS = 4, 3
PATTERN = (("a", 1), ("b", 4))  # cycle of 5 steps: epochs of 3 steps end mid-cycle


def _make_dataset(first_epoch):
    start = first_epoch * STEPS * 4
    xs, ys = np.tile(X, (2, 1)), np.tile(Y, (2, 1))
    return tf.data.Dataset.from_tensor_slices((xs[start:], ys[start:])).batch(4)


def _resume_model():
    opt = {"a": lambda: keras.optimizers.Adam(0.02, name="adam_a"),
           "b": lambda: keras.optimizers.Adam(0.05, name="adam_b")}
    a, b = _nets()
    phases = [Phase(n, s, {"a": a, "b": b}[n], _mse(a, b), opt[n]()) for n, s in PATTERN]
    model = AlternatingModel({"a": a, "b": b}, phases, relative_learning_rates=True)
    model.compile()
    return model


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption after epoch 2")


def test_interrupted_alternating_run_resumes_mid_cycle_to_the_same_state(tmp_path):
    schedule = step_decay(1.0, 2)  # factor of each optimiser's initial rate
    full = _resume_model()
    fit(full, _make_dataset, tmp_path / "full", epochs=EPOCHS, steps_per_epoch=STEPS,
        schedule=schedule, verbose=0)
    n = EPOCHS * STEPS
    hand = {"a": sum(k % 5 == 0 for k in range(n))}
    hand["b"] = n - hand["a"]
    assert full.step_counts() == {"step": n, **hand} == {"step": 12, "a": 3, "b": 9}

    run = tmp_path / "interrupted"
    model = _resume_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, _make_dataset, run, epochs=EPOCHS, steps_per_epoch=STEPS, schedule=schedule,
            verbose=0, extra_callbacks=[_Interrupt()])
    assert completed_epochs(run) == 2
    assert model.step_counts() == {"step": 6, "a": 2, "b": 4}  # step 6 = position 1 of a cycle
    resumed = _resume_model()  # fresh state, restored from the backup
    out = fit(resumed, _make_dataset, run, epochs=EPOCHS, steps_per_epoch=STEPS,
              schedule=schedule, verbose=0, resume=True)
    assert out == {"state": "trained", "epochs_run": 2, "changes": []}
    assert resumed.step_counts() == full.step_counts()
    for u, v in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)
    for o1, o2 in zip(full.phase_optimizers, resumed.phase_optimizers):
        assert int(o1.iterations.numpy()) == int(o2.iterations.numpy())
        for u, v in zip(o1.variables, o2.variables):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(u), keras.ops.convert_to_numpy(v),
                                       rtol=1e-6, atol=1e-7)
    # relative learning rates: epoch 3 -> factor 0.5 of 0.02 / 0.05
    np.testing.assert_allclose([float(o.learning_rate) for o in resumed.phase_optimizers],
                               [0.01, 0.025], rtol=1e-6)
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "loss_a", "loss_b", "steps_a", "steps_b",
            "learning_rate_adam_a", "learning_rate_adam_b"} <= set(header)

    # save_weights / load_weights carry the counters and the optimisers' state
    again = _resume_model()
    again.load_weights(run / FINAL_WEIGHTS)
    assert again.step_counts() == full.step_counts()
    x, y = X[:4], Y[:4]
    la = full.train_on_batch(x, y, return_dict=True)
    lb = again.train_on_batch(x, y, return_dict=True)
    assert la["steps_b"] == lb["steps_b"] == 10  # step 12 is position 2 of a cycle -> "b"
    for u, v in zip(full.get_weights(), again.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- 5. two replicas
SCRIPT = textwrap.dedent(r'''
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    from regseg.training.distribute import make_strategy, split_cpu
    split_cpu(2)
    import keras
    from regseg.training.alternating import AlternatingModel, Phase

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3)).astype("float32")
    y = rng.normal(size=(4, 1)).astype("float32")
    results = {}
    for n in (1, 2):
        strategy = make_strategy(n_cpu_replicas=n)
        assert strategy.num_replicas_in_sync == n
        with strategy.scope():
            keras.utils.set_random_seed(0)
            a = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            b = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            def scalar(data, training):
                return tf.reduce_mean(tf.square(b(a(data[0])) - data[1]))
            def per_sample(data, training):
                return tf.reduce_mean(tf.square(b(a(data[0])) - data[1]), axis=-1)
            # SGD phases see the loss scale (Adam is nearly scale-invariant)
            model = AlternatingModel([a, b], [
                Phase("a", 1, a, scalar, keras.optimizers.SGD(0.1)),
                Phase("b", 2, b, per_sample, keras.optimizers.SGD(0.05, momentum=0.9)),
                Phase("joint", 1, [a, b], scalar, keras.optimizers.Adam(0.01))])
            model.compile()
        ds = tf.data.Dataset.from_tensors((x, y)).repeat()  # the same global batch every step
        hist = model.fit(ds, epochs=2, steps_per_epoch=4, verbose=0)
        results[n] = {"weights": [w.tolist() for w in model.get_weights()],
                      "counts": model.step_counts(),
                      "history": {k: v for k, v in hist.history.items()}}
    print("RESULT" + json.dumps(results))
''')


def test_one_and_two_replicas_give_the_same_alternating_updates():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    one, two = res["1"], res["2"]
    assert one["counts"] == two["counts"] == {"step": 8, "a": 2, "b": 4, "joint": 2}
    for u, v in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(np.array(u), np.array(v), rtol=0, atol=1e-6)
    for key in ("loss", "loss_a", "loss_b", "loss_joint", "steps_a", "steps_b", "steps_joint"):
        np.testing.assert_allclose(one["history"][key], two["history"][key], rtol=1e-6, atol=1e-6)
