"""Training on several machines: MultiWorkerMirroredStrategy, chief-only writes, SLURM.

The main test starts two worker processes on 127.0.0.1 (free ports, one ``TF_CONFIG`` each) that
train a tiny warping network with the shared :func:`regseg.training.fit.fit`: two epochs, an
interruption, then ``resume=True`` for the third.  One process with two logical CPU devices
(``MirroredStrategy``) trains the same network on the same fixed batch without interruption.
Losses and weights must agree within 1e-6, the chief alone writes the run folder, the other
worker writes into its own temporary folder (removed at exit).  Every process has a timeout and
is killed in a ``finally`` block: the test cannot hang.

The other tests check the cluster choice (``TF_CONFIG``, ``REGSEG_CLUSTER``, SLURM variables), the
SLURM cluster resolver on a fake ``srun`` environment, and the chief / worker folders.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from regseg.training import distribute as D

TIMEOUT_S = 150  # per test, all processes together

SCRIPT = textwrap.dedent(r'''
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    from pathlib import Path
    import numpy as np
    import tensorflow as tf
    from regseg.training.distribute import (describe, is_chief, make_strategy, split_cpu,
                                            worker_dir)

    role, run_dir = sys.argv[1], Path(sys.argv[2])
    if role == "reference":
        split_cpu(2)
        strategy = make_strategy(n_cpu_replicas=2, cluster="none")
    else:
        strategy = make_strategy(cluster="tf_config")   # TF_CONFIG set by the test
    print("STRATEGY", describe(strategy), flush=True)
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync

    import keras
    from regseg.layers import SpatialTransformer
    from regseg.training.fit import fit

    shape, batch = (6, 7), 4
    rng = np.random.default_rng(0)
    moving = rng.normal(size=(batch, *shape, 1)).astype("float32")
    fixed = np.roll(moving, 1, axis=1) + 0.1 * rng.normal(size=moving.shape).astype("float32")
    x = np.concatenate([moving, fixed], -1)

    def build():
        pair = keras.Input((*shape, 2))
        disp = keras.layers.Conv2D(2, 3, padding="same", activation="tanh")(pair)
        warped = SpatialTransformer(field="displacement", padding="zeros")([pair[..., :1], disp])
        return keras.Model(pair, warped)

    with strategy.scope():
        model = build()
        model.set_weights([np.random.default_rng(1).normal(size=w.shape).astype("float32") * 0.3
                           for w in model.get_weights()])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")

    def make_train(first_epoch):  # the same fixed global batch at every step
        ds = tf.data.Dataset.from_tensors((x, fixed)).repeat(2 * (3 - first_epoch))
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return ds.with_options(options)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated interruption after epoch 2")

    common = dict(epochs=3, steps_per_epoch=2, schedule=lambda e: 0.5, verbose=0,
                  settings={"test": "multiworker"})
    if role == "reference":
        fit(model, make_train, run_dir, **common)
    else:
        try:
            fit(model, make_train, run_dir, extra_callbacks=[Interrupt()], **common)
            raise AssertionError("the interruption did not happen")
        except KeyboardInterrupt:
            pass
        result = fit(model, make_train, run_dir, resume=True, **common)
        assert result == {"state": "trained", "epochs_run": 1, "changes": []}, result
    own = worker_dir(run_dir, strategy)
    import csv
    with open(own / "history.csv") as f:
        history = [float(row["loss"]) for row in csv.DictReader(f)]
    print("RESULT" + json.dumps({
        "chief": is_chief(strategy), "own": str(own),
        "own_files": sorted(str(p.relative_to(own)) for p in own.rglob("*") if p.is_file()),
        "history": history,
        "weights": [w.ravel().tolist() for w in model.get_weights()]}), flush=True)
''')


def _free_ports(n):
    """``n`` distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(**extra):
    """A clean environment: CPU only, no proxy for the loopback gRPC, no inherited cluster."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")
           and k not in ("TF_CONFIG", "REGSEG_CLUSTER") and not k.startswith("SLURM_")}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _result(out):
    lines = [line for line in out.splitlines() if line.startswith("RESULT")]
    return json.loads(lines[-1][len("RESULT"):]) if lines else None


def _run_all(commands, deadline):
    """Start every ``(args, env)`` at once; return their ``(returncode, stdout, stderr)``.

    Each process is waited for until ``deadline`` (time.monotonic()); any still running then, or
    left by an error, is killed (by its own handle) in the ``finally`` block.
    """
    procs = []
    try:
        for args, env in commands:
            procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outputs = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                err += f"\n[killed after the test's {TIMEOUT_S} s limit]"
            outputs.append((proc.returncode, out, err))
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_two_workers_match_two_replicas_and_only_the_chief_writes(tmp_path):
    deadline = time.monotonic() + TIMEOUT_S
    shared, reference = tmp_path / "shared_run", tmp_path / "reference_run"
    for attempt in range(2):  # a free port can be taken between choosing it and binding it
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        commands = [([sys.executable, "-c", SCRIPT, "worker", str(shared)],
                     _env(TF_CONFIG=json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": i}})))
                    for i in range(2)]
        if attempt == 0:
            commands.append(([sys.executable, "-c", SCRIPT, "reference", str(reference)], _env()))
        outputs = _run_all(commands, deadline)
        if attempt == 0:
            ref_out = outputs.pop()
        workers = outputs
        if all(code == 0 for code, _, _ in workers) or not any(
                "address already in use" in err.lower() for _, _, err in workers):
            break
        import shutil
        shutil.rmtree(shared, ignore_errors=True)
    for code, out, err in [*workers, ref_out]:
        assert code == 0, (out[-2000:], err[-4000:])
    chief, other = (_result(out) for _, out, _ in workers)
    ref = _result(ref_out[1])

    # the same losses (per epoch) and weights as one process with two replicas
    assert chief["chief"] and not other["chief"] and ref["chief"]
    for res in (chief, other):
        np.testing.assert_allclose(res["history"], ref["history"], rtol=1e-6, atol=1e-6)
        for a, b in zip(res["weights"], ref["weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert ref["history"][0] > ref["history"][-1]  # it did train

    # the chief wrote the shared run folder; the other worker its own temporary copy
    assert Path(chief["own"]) == shared
    assert Path(other["own"]) != shared and Path(other["own"]).name == shared.name
    assert not Path(other["own"]).exists()                    # removed when the worker ended
    expected = {"final.weights.h5", "history.csv", "settings.json",
                "checkpoints/epoch_001.weights.h5", "checkpoints/epoch_002.weights.h5",
                "checkpoints/epoch_003.weights.h5"}
    assert expected <= set(chief["own_files"])
    # the worker resumed from its copy of the chief's state (newest checkpoint only), then wrote
    assert expected - {"checkpoints/epoch_001.weights.h5"} <= set(other["own_files"])
    written = {str(p.relative_to(shared)) for p in shared.rglob("*") if p.is_file()}
    assert written == set(chief["own_files"])                 # nothing else in the shared folder
    assert not any(name.endswith(".tmp") or "lock" in name for name in written)
    assert len((shared / "history.csv").read_text().splitlines()) == 4   # header + 3 epochs


# ----------------------------------------------------------------------------- cluster choice
def test_cluster_choice_from_the_environment():
    two = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                      "task": {"type": "worker", "index": 0}})
    one = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                      "task": {"type": "worker", "index": 0}})
    assert D.resolve_cluster("auto", {}) == "none"
    assert D.resolve_cluster("auto", {"TF_CONFIG": two}) == "tf_config"
    assert D.resolve_cluster("auto", {"TF_CONFIG": one}) == "none"        # one worker: one machine
    assert D.resolve_cluster("none", {"TF_CONFIG": two}) == "none"
    assert D.resolve_cluster("auto", {"REGSEG_CLUSTER": "slurm"}) == "slurm"
    assert D.resolve_cluster("auto", {"REGSEG_CLUSTER": "none", "TF_CONFIG": two}) == "none"
    assert D.resolve_cluster("slurm", {}) == "slurm"
    with pytest.warns(UserWarning, match="--cluster slurm"):
        slurm_step = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "1"}
        assert D.resolve_cluster("auto", slurm_step) == "none"


@pytest.mark.parametrize("cluster, environ, match", [
    ("mpi", {}, r"cluster must be one of .*'mpi'"),
    ("auto", {"REGSEG_CLUSTER": "k8s"}, r"REGSEG_CLUSTER must be one of .*'k8s'"),
    ("tf_config", {}, "needs the environment variable TF_CONFIG"),
    ("auto", {"TF_CONFIG": "{not json"}, "TF_CONFIG is not a JSON object"),
    ("auto", {"TF_CONFIG": '{"task": {}}'}, "TF_CONFIG is not a JSON object"),
])
def test_bad_cluster_settings_are_named(cluster, environ, match):
    with pytest.raises(ValueError, match=match):
        D.resolve_cluster(cluster, environ)


def test_runner_has_a_cluster_option():
    from regseg.training import runner as R

    class Empty(R.Reproduction):
        key, presets, default_preset = "empty", {"p": R.Preset("p", "d", 1, 1)}, "p"

        def methods(self):
            return {}

    parser = Empty().parser()
    assert parser.parse_args([]).cluster == "auto"
    assert parser.parse_args(["--cluster", "slurm"]).cluster == "slurm"
    with pytest.raises(SystemExit):
        parser.parse_args(["--cluster", "mpi"])


def test_one_machine_is_unchanged():
    strategy = D.make_strategy(cluster="none")
    assert type(strategy).__name__ == "MirroredStrategy"
    assert D.is_chief(strategy) and D.num_workers(strategy) == 1
    assert D.task_info(strategy) == (None, None)
    assert D.worker_dir("/some/run", strategy) == Path("/some/run")
    assert "workers" not in D.describe(strategy)


# ----------------------------------------------------------------------------- SLURM
def _slurm_env(monkeypatch, procid, ntasks, nodelist, tasks_per_node, port=None):
    for key in [k for k in os.environ if k.startswith("SLURM_") or k.startswith("REGSEG_SLURM")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", str(procid))
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", str(ntasks))
    monkeypatch.setenv("SLURM_STEP_NODELIST", nodelist)
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", tasks_per_node)
    monkeypatch.setenv("SLURM_JOB_ID", "123457")
    if port is not None:
        monkeypatch.setenv("REGSEG_SLURM_PORT_BASE", str(port))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_slurm_resolver_lists_every_task_and_leaves_gpus_alone(monkeypatch):
    _slurm_env(monkeypatch, 1, 2, "127.0.0.1", "2", port=23456)
    resolver = D.slurm_cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {"worker": ["127.0.0.1:23456",
                                                            "127.0.0.1:23457"]}
    assert resolver.get_task_info() == ("worker", 1)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ      # GPU binding is SLURM's

    # 3 nodes, 2 + 2 + 1 tasks, default port base from the job id; this is rank 3
    _slurm_env(monkeypatch, 3, 5, "gpu[07-08],cpu1", "2(x2),1")
    resolver = D.slurm_cluster_resolver()
    base = 20000 + 8 * (123457 % 5000)
    assert resolver.cluster_spec().as_dict() == {"worker": [
        f"cpu1:{base}", f"gpu07:{base}", f"gpu07:{base + 1}", f"gpu08:{base}",
        f"gpu08:{base + 1}"]}
    assert resolver.get_task_info() == ("worker", 3)


def test_slurm_outside_a_job_step_is_named(monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(RuntimeError, match="SLURM_STEP_NUM_TASKS.*srun"):
        D.slurm_cluster_resolver()
    with pytest.raises(RuntimeError, match="SLURM_STEP_NUM_TASKS"):
        D.make_strategy(cluster="slurm")


# ----------------------------------------------------------------------------- chief and workers
class _FakeResolver:
    def __init__(self, task_type, task_id, cluster):
        self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

    def cluster_spec(self):
        return SimpleNamespace(as_dict=lambda: self._cluster)


class _FakeStrategy:
    """Enough of a multi-worker strategy for is_chief / worker_dir (the gather sees ``others``)."""

    def __init__(self, task_type, task_id, cluster, others=()):
        self.cluster_resolver = _FakeResolver(task_type, task_id, cluster)
        self.others = list(others)

    def experimental_distribute_values_from_function(self, fn):
        return fn(None)

    def gather(self, value, axis):
        import tensorflow as tf
        return tf.concat([value, tf.constant(self.others, tf.int64)], axis)


TWO = {"worker": ["a:1", "b:1"]}
WITH_CHIEF = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}


def test_chief_rule():
    assert D.is_chief(_FakeStrategy("worker", 0, TWO))
    assert not D.is_chief(_FakeStrategy("worker", 1, TWO))
    assert D.is_chief(_FakeStrategy("chief", 0, WITH_CHIEF))
    assert not D.is_chief(_FakeStrategy("worker", 0, WITH_CHIEF))   # a chief task exists
    assert D.num_workers(_FakeStrategy("worker", 0, WITH_CHIEF)) == 3


def test_worker_dir_copies_the_chiefs_state_and_checks_it_is_shared(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "backup").mkdir()
    for name in ("settings.json", "backup/latest.weights.h5", "backup/training_metadata.json",
                 "checkpoints/epoch_001.weights.h5", "checkpoints/epoch_002.weights.h5",
                 "history.csv"):
        (run / name).write_text(name)
    copy = ("settings.json", "backup", "final.weights.h5", "checkpoints/epoch_*.weights.h5")
    chief = _FakeStrategy("worker", 0, TWO)
    assert D.worker_dir(run, chief, copy=copy) == run            # the chief works in place

    worker = _FakeStrategy("worker", 1, TWO)
    own = D.worker_dir(run, worker, copy=copy)
    assert own != run and own.name == "run" and not str(own).startswith(str(tmp_path))
    files = {str(p.relative_to(own)) for p in own.rglob("*") if p.is_file()}
    assert files == {"settings.json", "backup/latest.weights.h5", "backup/training_metadata.json",
                     "checkpoints/epoch_002.weights.h5"}          # the newest checkpoint only
    (own / "stale.txt").write_text("from an earlier call")
    assert D.worker_dir(run, worker) == own                       # the same folder each time
    assert D.worker_dir(own / "nifti", worker) == own / "nifti"   # already private
    assert not (D.worker_dir(run, worker, copy=copy) / "stale.txt").exists()   # an exact mirror

    # a worker that sees other files at the same path (no shared file system) is stopped
    differs = _FakeStrategy("worker", 1, TWO, others=[12345])
    with pytest.raises(RuntimeError, match="file system that all of them share"):
        D.worker_dir(run, differs, copy=copy)


def test_runner_on_a_worker_that_is_not_the_chief_writes_nothing_shared(tmp_path, monkeypatch,
                                                                          tmp_path_factory):
    """The whole runner flow as worker 1 of 2: run folder, manifest, NIfTI and results go to its
    temporary folders; the shared output and results folders stay untouched."""
    from test_runner_toy import Toy  # the toy paper of tests/test_runner_toy.py

    monkeypatch.setenv("REGSEG_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(D, "is_chief", lambda strategy=None: False)
    monkeypatch.setattr(D, "num_workers", lambda strategy=None: 2)
    data = tmp_path / "data"
    Toy().datasets["toy"].load(None, SimpleNamespace(args=SimpleNamespace(output_dir=str(data))))
    out, results = tmp_path / "run", tmp_path / "results"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    class SharedDataToy(Toy):  # reads the toy data without writing it again
        datasets = {"toy": Toy.datasets["toy"].__class__(
            "toy", lambda root, ctx: Toy.datasets["toy"].load(
                None, SimpleNamespace(args=SimpleNamespace(output_dir=str(data)))),
            needs_root=False)}

    ctx = SharedDataToy().run(["--output-dir", str(out), "--results-dir", str(results),
                               "--cluster", "none"])
    assert ctx.results_dir != results and (ctx.results_dir / "table1.csv").is_file()
    assert ctx.out_dir != out and ctx.out_dir.name == out.name
    assert (D.worker_dir(out / "toy") / "regseg_run.json").is_file()
    assert (D.worker_dir(out / "toy") / "final.weights.h5").is_file()
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before                       # nothing new under the shared folders
