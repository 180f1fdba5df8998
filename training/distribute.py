"""tf.distribute set-up shared by every reproduction's ``run.py``: one machine or several.

One machine: one ``MirroredStrategy`` for all, every visible GPU on a GPU machine (the papers
trained with 3-4 GPUs, one sample per GPU), one replica on the CPU otherwise.  Tests use two
*logical* CPU devices to check that the loss does not depend on the number of replicas.

Several machines: ``tf.distribute.MultiWorkerMirroredStrategy`` (synchronous data parallelism,
TensorFlow's own collective all-reduce), one process ("worker") per machine, each mirroring over
its local GPUs (or its CPU).  The cluster comes from ``TF_CONFIG`` or from SLURM
(``tf.distribute.cluster_resolver.SlurmClusterResolver``); :func:`make_strategy` picks it
(``cluster=``, the runner's ``--cluster``, or ``$REGSEG_CLUSTER``).  See ``docs/multi_machine.md``.

Who writes what (TensorFlow's multi-worker guide): every worker runs the same code, but only the
*chief* writes into the run and results folders; the other workers write their checkpoints,
logs and results into a private temporary folder (:func:`worker_dir`), deleted when the process
ends.  :func:`is_chief` tells which one this process is.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
import zlib
from pathlib import Path

import tensorflow as tf

__all__ = ["CLUSTERS", "split_cpu", "make_strategy", "resolve_cluster", "slurm_cluster_resolver",
           "is_chief", "task_info", "num_workers", "worker_dir", "describe"]

#: Values of ``make_strategy(cluster=...)`` / ``--cluster`` / ``$REGSEG_CLUSTER``.
CLUSTERS = ("auto", "none", "tf_config", "slurm")


def split_cpu(n_devices: int) -> None:
    """Expose ``n_devices`` logical CPU devices (call before TensorFlow runs anything).

    Raises:
        RuntimeError: TensorFlow was already initialised with another layout.
    """
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) == n_devices:
        return
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n_devices)])


# ------------------------------------------------------------------------------ cluster choice
def _tf_config_tasks(environ) -> int:
    """Number of tasks (chief + workers) in ``TF_CONFIG``; 0 when unset.

    Raises:
        ValueError: ``TF_CONFIG`` is not JSON with a ``cluster`` mapping (the message shows it).
    """
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return 0
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        return sum(len(cluster.get(job, ())) for job in ("chief", "worker"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster' of workers "
                         f"({exc}): {raw[:200]!r}") from exc


def resolve_cluster(cluster: str = "auto", environ=None) -> str:
    """The cluster kind :func:`make_strategy` uses: ``"none"``, ``"tf_config"`` or ``"slurm"``.

    ``"auto"`` reads ``$REGSEG_CLUSTER`` when set (one of :data:`CLUSTERS`), else selects
    ``"tf_config"`` when ``TF_CONFIG`` describes more than one task (chief + workers), else
    ``"none"`` (one machine).  SLURM is never guessed from ``SLURM_*`` variables (several tasks of
    one ``srun`` may be independent runs): ask for it with ``--cluster slurm`` or
    ``REGSEG_CLUSTER=slurm``; inside a SLURM step of several tasks ``"auto"`` warns instead.

    Args:
        cluster: one of :data:`CLUSTERS`.
        environ: the environment (default ``os.environ``).
    Raises:
        ValueError: an unknown value (named, with the allowed ones), ``"tf_config"`` without a
            ``TF_CONFIG``, or a ``TF_CONFIG`` that is not valid.
    """
    environ = os.environ if environ is None else environ
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be one of {CLUSTERS}, got {cluster!r}")
    if cluster == "auto" and environ.get("REGSEG_CLUSTER"):
        cluster = environ["REGSEG_CLUSTER"].strip().lower()
        if cluster not in CLUSTERS:
            raise ValueError(f"REGSEG_CLUSTER must be one of {CLUSTERS}, got {cluster!r}")
    tasks = _tf_config_tasks(environ)
    if cluster == "tf_config" and tasks == 0:
        raise ValueError("cluster 'tf_config' needs the environment variable TF_CONFIG "
                         "(see docs/multi_machine.md)")
    if cluster != "auto":
        return cluster
    if tasks > 1:
        return "tf_config"
    if int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
        warnings.warn(f"this process is task {environ.get('SLURM_PROCID', '?')} of a SLURM step of "
                      f"{environ['SLURM_STEP_NUM_TASKS']} tasks, but --cluster is auto: each task "
                      f"trains on its own. Pass --cluster slurm (or REGSEG_CLUSTER=slurm) to train "
                      f"them together", stacklevel=2)
    return "none"


def _slurm_port_base(environ) -> int:
    if environ.get("REGSEG_SLURM_PORT_BASE"):
        return int(environ["REGSEG_SLURM_PORT_BASE"])
    # a different base per job, 8 ports apart: two jobs sharing a node rarely collide
    return 20000 + 8 * (int(environ.get("SLURM_JOB_ID", "0") or 0) % 5000)


def slurm_cluster_resolver(environ=None):
    """A ``SlurmClusterResolver`` for the current ``srun`` step: one worker per SLURM task.

    Ports: ``$REGSEG_SLURM_PORT_BASE`` (default ``20000 + 8 * (SLURM_JOB_ID % 5000)``), plus the
    task's rank on its node.  GPUs are left as SLURM binds them (``auto_set_gpu=False``): each task
    uses the GPUs it sees (``srun --gpus-per-task=N``, or one task per node seeing all of them).
    TensorFlow's own default asks ``nvidia-smi`` and fails on CPU-only nodes; here a CPU node works.

    Raises:
        RuntimeError: not inside a SLURM job step (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``,
            ``SLURM_STEP_NODELIST`` or ``SLURM_STEP_TASKS_PER_NODE`` missing; named).
    """
    environ = os.environ if environ is None else environ
    needed = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
              "SLURM_STEP_TASKS_PER_NODE")
    missing = [v for v in needed if not environ.get(v)]
    if missing:
        raise RuntimeError(f"cluster 'slurm': {', '.join(missing)} not set; start every worker "
                           f"with srun inside a SLURM allocation (see docs/multi_machine.md)")
    # "2(x3),1" -> [2, 2, 2, 1] (SLURM's compressed tasks-per-node list)
    per_node = []
    for part in environ["SLURM_STEP_TASKS_PER_NODE"].split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise RuntimeError(f"SLURM_STEP_TASKS_PER_NODE={environ['SLURM_STEP_TASKS_PER_NODE']!r}"
                               f" is not a SLURM tasks-per-node list")
        per_node += [int(m.group(1))] * int(m.group(2) or 1)
    most = max(per_node)
    # gpus_per_node / gpus_per_task only drive TensorFlow's GPU allocation, disabled here; these
    # values make it list every task of every node.
    return tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=_slurm_port_base(environ), gpus_per_node=most, gpus_per_task=1,
        auto_set_gpu=False)


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` that Keras 3's ``Model.fit`` can use.

    Keras 3 (up to 3.15 at least; keras-team/keras#20585, tensorflow/tensorflow#72388) calls
    ``strategy.reduce`` with a nested structure (one batch, to build the model) and with
    ``axis=0`` on the scalar per-replica losses; the multi-worker strategy rejects both.  This
    ``reduce`` maps over the structure and reduces scalars over the replicas (``axis=None``,
    what ``axis=0`` means for ``MirroredStrategy`` there).  Nothing else differs.
    """

    def reduce(self, reduce_op, value, axis):
        def one(v):
            ax = axis
            shape = getattr(self.experimental_local_results(v)[0], "shape", ())
            if ax is not None and (shape.rank if hasattr(shape, "rank") else len(shape)) == 0:
                ax = None
            return super(_MultiWorkerMirroredStrategy, self).reduce(reduce_op, v, ax)
        return tf.nest.map_structure(one, value)


def _multi_worker(resolver=None):
    try:
        return _MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as exc:
        if "program startup" in str(exc):
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created before TensorFlow runs any "
                "operation: call make_strategy() first in the program (before building models "
                "or datasets)") from exc
        raise


def make_strategy(n_cpu_replicas: int | None = None, *, cluster: str = "auto"):
    """Return the strategy of this run: multi-worker when a cluster is configured, else mirrored.

    Args:
        n_cpu_replicas: one machine without GPU: the number of logical CPU devices to mirror over
            (default 1; >1 only for tests, see :func:`split_cpu`).
        cluster: ``"auto"`` (default), ``"none"`` (one machine, whatever the environment),
            ``"tf_config"`` (the cluster of ``TF_CONFIG``) or ``"slurm"`` (the tasks of the current
            ``srun`` step, :func:`slurm_cluster_resolver`); see :func:`resolve_cluster`.
    Returns:
        One machine: ``tf.distribute.MirroredStrategy`` over all GPUs, else over CPU device(s).
        Several: a ``tf.distribute.MultiWorkerMirroredStrategy`` (the subclass
        ``_MultiWorkerMirroredStrategy``, for Keras 3) over each worker's GPUs (else its CPU).
        ``num_replicas_in_sync`` counts the replicas of all workers; the global batch is
        per-replica batch x replicas.
    Raises:
        ValueError: see :func:`resolve_cluster`.
        RuntimeError: a multi-worker strategy asked for after TensorFlow ran an operation
            (it must come first), or ``"slurm"`` outside a SLURM step.
    """
    kind = resolve_cluster(cluster)
    if kind == "tf_config":
        return _multi_worker()
    if kind == "slurm":
        return _multi_worker(slurm_cluster_resolver())
    # physical devices first: listing logical ones would initialise TensorFlow before split_cpu
    gpus = tf.config.list_logical_devices("GPU") if tf.config.list_physical_devices("GPU") else []
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    n = n_cpu_replicas or 1
    if n > 1:
        split_cpu(n)
    cpus = tf.config.list_logical_devices("CPU")[:n]
    # one replica: MirroredStrategy on the CPU device (same code path as GPUs)
    return tf.distribute.MirroredStrategy([d.name for d in cpus],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


# ------------------------------------------------------------------------------ chief and workers
def task_info(strategy=None) -> tuple[str | None, int | None]:
    """``(task type, task index)`` of this process in its cluster, ``(None, None)`` on one machine.

    Args:
        strategy: the run's strategy (default: the current one, ``tf.distribute.get_strategy()``).
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, None
    return resolver.task_type, int(resolver.task_id)


def num_workers(strategy=None) -> int:
    """Number of worker processes (chief included) training together; 1 on one machine."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or task_info(strategy)[0] is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in ("chief", "worker")) or 1


def is_chief(strategy=None) -> bool:
    """Whether this process writes the run's files: always on one machine; with several
    workers, the ``chief`` task if the cluster has one, else worker 0 (TensorFlow's rule)."""
    strategy = strategy or tf.distribute.get_strategy()
    task_type, task_id = task_info(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in spec


_WORKER_ROOT: list[Path] = []


def _worker_root(strategy) -> Path:
    """This process's private temporary folder (created once, removed at exit)."""
    if not _WORKER_ROOT:
        task_type, task_id = task_info(strategy)
        root = Path(tempfile.mkdtemp(prefix=f"regseg-{task_type or 'worker'}{task_id or 0}-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _WORKER_ROOT.append(root)
    return _WORKER_ROOT[0]


def _copy_latest(src: Path, dst: Path, patterns) -> None:
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = sorted(src.glob(pattern))
            matches = matches[-1:]
        else:
            matches = [src / pattern] if (src / pattern).exists() else []
        for item in matches:
            target = dst / item.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)


def _fingerprint(src: Path, patterns) -> str:
    """Names and sizes of what ``patterns`` match under ``src`` (what a worker copies)."""
    seen = []
    for pattern in patterns:
        for item in sorted(src.glob(pattern)):
            files = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
            seen += [f"{p.relative_to(src)}:{p.stat().st_size}" for p in files]
    return ";".join(seen)


def _check_same_view(path: Path, patterns, strategy) -> None:
    """All workers must see the same run state at ``path`` (a shared file system); a barrier."""
    mine = zlib.crc32(_fingerprint(path, patterns).encode())
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([mine], tf.int64))
    seen = sorted(set(int(v) for v in strategy.gather(values, axis=0).numpy()))
    if len(seen) > 1:
        task_type, task_id = task_info(strategy)
        raise RuntimeError(
            f"{path}: the {num_workers(strategy)} workers do not see the same files in this run "
            f"folder (this is {task_type} {task_id}); with several machines --output-dir must be "
            f"on a file system that all of them share, at the same path")


def worker_dir(path, strategy=None, *, copy=()) -> Path:
    """Where this process writes what belongs in ``path``: ``path`` itself on the chief (and on
    one machine); on any other worker a private temporary folder, the same one for the same
    ``path`` during the process, deleted when it ends (TensorFlow's multi-worker rule: the workers
    must write their checkpoints too, but never over the chief's).

    Args:
        path: a folder of the run (run folder, results folder...).
        strategy: the run's strategy (default: the current one).
        copy: glob patterns, relative to ``path``, of what a worker copies from ``path`` into its
            folder, to read the chief's state (e.g. a resumed run's backup); a pattern with a
            wildcard copies its last match only (sorted: the newest ``epoch_NNN`` checkpoint).
            With ``copy``, every worker (chief included) must call this at the same point: the
            workers then check that they all see the same files at ``path`` (so that they all
            resume from the same epoch), which needs a file system they share.
    Returns:
        The folder to write (``Path``); a worker's is created, with the copies in it.
    Raises:
        RuntimeError: with ``copy``, the workers see different files at ``path``.
    """
    path = Path(path)
    strategy = strategy or tf.distribute.get_strategy()
    if is_chief(strategy):
        target = path
    elif _worker_root(strategy) in path.absolute().parents:
        target = path  # already this worker's own folder
    else:
        key = hashlib.sha1(str(path.absolute()).encode()).hexdigest()[:10]
        target = _worker_root(strategy) / key / path.name
        if copy:  # an exact mirror of the chief's state: nothing left from an earlier call
            shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        if copy and path.is_dir():
            _copy_latest(path, target, copy)
    if copy and num_workers(strategy) > 1:
        _check_same_view(path, copy, strategy)
    return target


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line naming the strategy, its replicas and their devices (and the workers)."""
    devices = getattr(strategy.extended, "worker_devices", ())
    line = (f"{type(strategy).__name__.lstrip('_')} with {strategy.num_replicas_in_sync} "
            f"replica(s): " + ", ".join(devices))
    task_type, task_id = task_info(strategy)
    if task_type is not None:
        line += (f" ({num_workers(strategy)} workers; this is {task_type} {task_id}"
                 f"{', the chief' if is_chief(strategy) else ''})")
    return line
