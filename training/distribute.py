"""tf.distribute set-up shared by every reproduction's ``run.py``.

One ``MirroredStrategy`` for all: every visible GPU on a GPU machine (the
papers trained with 3-4 GPUs, one sample per GPU), one replica on the CPU
otherwise.  Tests use two *logical* CPU devices to check that the loss does
not depend on the number of replicas.
"""

from __future__ import annotations

import tensorflow as tf


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


def make_strategy(n_cpu_replicas: int | None = None) -> tf.distribute.MirroredStrategy:
    """Return a MirroredStrategy over all GPUs, else over CPU device(s).

    Args:
        n_cpu_replicas: on a machine without GPU, the number of logical CPU
            devices to mirror over (default 1; >1 only for tests, see
            :func:`split_cpu`).
    Returns:
        ``tf.distribute.MirroredStrategy``; ``num_replicas_in_sync`` tells the
        number of replicas; the global batch is per-replica batch x replicas.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    n = n_cpu_replicas or 1
    if n > 1:
        split_cpu(n)
    cpus = tf.config.list_logical_devices("CPU")[:n]
    # one replica: MirroredStrategy on the CPU device (same code path as GPUs)
    return tf.distribute.MirroredStrategy([d.name for d in cpus],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line naming the strategy, its replicas and their devices."""
    devices = getattr(strategy.extended, "worker_devices", ())
    return (f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s): "
            + ", ".join(devices))
