"""Moving/reference pairs and their ``tf.data`` pipelines.

U-ReSNet §4: "we randomly shuffle the training set to generate different pairs
of moving and reference images per epoch, fixing however the ones on
validation and testing".  As in the released code, each training epoch pairs
two independent permutations of the training subjects; validation pairs are
``i -> i+1``; the test set is evaluated on every ordered pair ``i != j``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def training_pairs(n_subjects: int, epochs: int, seed: int, pairs_per_epoch: int | None = None):
    """Pairs for every epoch: two independent permutations per epoch.

    Args:
        n_subjects: training subjects (>= 2).
        epochs: number of epochs.
        seed: the run's seed; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``
            so a resumed run sees the same pairs.
        pairs_per_epoch: default ``n_subjects`` (one pass, as the paper).
    Returns:
        int array ``(epochs, pairs_per_epoch, 2)`` of (moving, reference) indices.
    Raises:
        ValueError: fewer than 2 subjects.
    """
    if n_subjects < 2:
        raise ValueError(f"need at least 2 training subjects, got {n_subjects}")
    per_epoch = pairs_per_epoch or n_subjects
    out = np.empty((epochs, per_epoch, 2), dtype=np.int64)
    for e in range(epochs):
        rng = np.random.default_rng([seed, e])
        reps = -(-per_epoch // n_subjects)
        moving = np.concatenate([rng.permutation(n_subjects) for _ in range(reps)])[:per_epoch]
        reference = np.concatenate([rng.permutation(n_subjects) for _ in range(reps)])[:per_epoch]
        out[e, :, 0], out[e, :, 1] = moving, reference
    return out


def validation_pairs(n_subjects: int):
    """Fixed validation pairs ``i -> i+1`` (released code); ``(n-1, 2)`` array.

    With a single validation subject this is empty: callers then validate on
    nothing (the quick preset pairs its validation subject with a training
    subject instead, see the reproduction's README).
    """
    return np.array([(i, i + 1) for i in range(n_subjects - 1)], dtype=np.int64).reshape(-1, 2)


def all_ordered_pairs(n_subjects: int):
    """Every ordered pair ``(i, j)``, ``i != j``: ``(n (n-1), 2)`` array."""
    return np.array([(i, j) for i in range(n_subjects) for j in range(n_subjects) if i != j],
                    dtype=np.int64).reshape(-1, 2)


def pair_dataset(sources, pairs, batch_size: int, n_classes: int | None, *, repeat=False):
    """``tf.data`` pipeline of (inputs, targets) for Keras ``fit``.

    Args:
        sources: pair of objects with ``load(i) -> Sample`` (``image`` float32
            (X, Y, Z), ``segmentation`` int (X, Y, Z) with 0 = background); the
            first serves the moving, the second the reference index (they may
            be the same dataset).
        pairs: int array ``(P, 2)`` of (moving, reference) indices.
        batch_size: GLOBAL batch (per-replica batch x replicas); the last
            incomplete batch is dropped.
        n_classes: foreground segmentation classes; ``None`` for a
            registration-only model (no segmentation targets).
    Returns:
        Dataset of ``({"moving", "reference"}: (B, X, Y, Z, 1),
        {"deformed": reference, "moving_seg", "warped_seg": one-hot
        (B, X, Y, Z, n_classes + 1)})``.
    """
    moving_src, reference_src = sources
    probe = moving_src.load(int(pairs[0][0]))
    shape = tuple(probe.image.shape)

    def _load(i, j):
        a, b = moving_src.load(int(i)), reference_src.load(int(j))
        return (a.image[..., None].astype(np.float32), b.image[..., None].astype(np.float32),
                a.segmentation.astype(np.int32), b.segmentation.astype(np.int32))

    def _map(pair):
        m, r, ms, rs = tf.numpy_function(_load, [pair[0], pair[1]],
                                         [tf.float32, tf.float32, tf.int32, tf.int32],
                                         stateful=False)
        m.set_shape((*shape, 1))
        r.set_shape((*shape, 1))
        ms.set_shape(shape)
        rs.set_shape(shape)
        inputs = {"moving": m, "reference": r}
        targets = {"deformed": r}
        if n_classes is not None:
            targets["moving_seg"] = tf.one_hot(ms, n_classes + 1, dtype=tf.float32)
            targets["warped_seg"] = tf.one_hot(rs, n_classes + 1, dtype=tf.float32)
        return inputs, targets

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(pairs, dtype=np.int64))
    if repeat:
        ds = ds.repeat()
    ds = ds.map(_map, num_parallel_calls=2, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
