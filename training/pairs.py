"""Pairing strategies and the ``tf.data`` pipeline of (moving, fixed) pairs.

Strategies (all return int arrays ``(P, 2)`` of (moving, fixed) subject indices):
:func:`training_pairs` (random pairs per epoch), :func:`all_ordered_pairs`,
:func:`consecutive_pairs`, :func:`atlas_pairs`, :func:`listed_pairs` (e.g. Learn2Reg's JSON),
:func:`same_subject_pairs` (two modalities of one subject) and :func:`validation_pairs`.
:func:`pair_dataset` turns any of them into batches through a paper's own mapping
``(moving sample, fixed sample) -> (inputs, targets)``.

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


def consecutive_pairs(n_subjects: int):
    """``i -> (i + 1) mod n`` for every subject: ``(n, 2)`` array (U-ReSNet's test pairs)."""
    return np.array([(i, (i + 1) % n_subjects) for i in range(n_subjects)],
                    dtype=np.int64).reshape(-1, 2)


def atlas_pairs(n_subjects: int, atlas: int, *, include_atlas: bool = False):
    """Every subject to one fixed atlas: rows ``(i, atlas)``; ``(n - 1, 2)`` (or ``(n, 2)``).

    Bouabid et al. §4.2: every source scan registered to one fixed atlas scan.

    Raises:
        ValueError: ``atlas`` out of range.
    """
    if not 0 <= atlas < n_subjects:
        raise ValueError(f"atlas index {atlas} out of range for {n_subjects} subjects")
    return np.array([(i, atlas) for i in range(n_subjects) if include_atlas or i != atlas],
                    dtype=np.int64).reshape(-1, 2)


def same_subject_pairs(n_subjects: int):
    """``(i, i)`` for every subject: pairs of two modalities of one subject (cooperating networks).

    The pair mapping given to :func:`pair_dataset` picks the moving modality from the first
    sample and the fixed modality from the second.
    """
    return np.stack([np.arange(n_subjects)] * 2, axis=1).astype(np.int64).reshape(-1, 2)


def listed_pairs(subject_ids, pairs, *, moving_ids=None):
    """Indices of pairs listed by subject id (e.g. Learn2Reg's registration pairs).

    Args:
        subject_ids: ids of the fixed dataset, in dataset order (and of the moving dataset,
            unless ``moving_ids`` is given).
        pairs: iterable of ``(moving id, fixed id)``.
        moving_ids: ids of the moving dataset when it differs.
    Returns:
        int array ``(P, 2)`` of (moving, fixed) indices.
    Raises:
        KeyError: an id that is not in the dataset (named).
    """
    fixed_index = {s: k for k, s in enumerate(subject_ids)}
    moving_index = fixed_index if moving_ids is None else {s: k for k, s in enumerate(moving_ids)}
    out = []
    for moving, fixed in pairs:
        for sid, index, role in ((moving, moving_index, "moving"), (fixed, fixed_index, "fixed")):
            if sid not in index:
                raise KeyError(f"listed pair ({moving} -> {fixed}): {role} subject {sid!r} is not "
                               f"in the dataset")
        out.append((moving_index[moving], fixed_index[fixed]))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _flatten(inputs, targets):
    keys = [("in", k) for k in inputs] + [("out", k) for k in targets]
    arrays = [np.asarray(inputs[k]) for k in inputs] + [np.asarray(targets[k]) for k in targets]
    return keys, arrays


def pair_dataset(sources, pairs, batch_size: int, mapping, *, repeat=False):
    """``tf.data`` pipeline of ``(inputs, targets)`` built from (moving, fixed) sample pairs.

    Args:
        sources: pair of objects with ``load(i) -> Sample`` (e.g.
            :class:`~regseg.datasets.subjects.SubjectDataset`); the first serves the moving, the
            second the fixed index (they may be the same dataset).
        pairs: int array ``(P, 2)`` of (moving, fixed) indices.
        batch_size: GLOBAL batch (per-replica batch x replicas); the last incomplete batch is
            dropped.
        mapping: ``f(moving: Sample, fixed: Sample) -> (inputs, targets)``, two dicts of numpy
            arrays without the batch axis (e.g. U-ReSNet: inputs ``{"moving", "reference"}``
            ``(X, Y, Z, 1)``, targets ``{"deformed", "moving_seg", "warped_seg"}``). Keys,
            shapes and dtypes must be the same for every pair (taken from the first pair).
        repeat: repeat the pairs forever.
    Returns:
        ``tf.data.Dataset`` of ``(inputs, targets)`` dicts batched to ``(B, ...)``; pairs are
        read in order (deterministic) with ``tf.data.AUTOTUNE`` parallelism and prefetching.
    Raises:
        ValueError: no pairs, or a batch larger than the pairs.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        raise ValueError("pair_dataset: no pairs")
    if not repeat and batch_size > len(pairs):
        raise ValueError(f"pair_dataset: batch {batch_size} is larger than the {len(pairs)} pairs")
    moving_src, fixed_src = sources
    probe_in, probe_out = mapping(moving_src.load(int(pairs[0][0])), fixed_src.load(int(pairs[0][1])))
    keys, probe = _flatten(probe_in, probe_out)
    dtypes = [tf.as_dtype(a.dtype) for a in probe]
    shapes = [a.shape for a in probe]

    def _load(i, j):
        inputs, targets = mapping(moving_src.load(int(i)), fixed_src.load(int(j)))
        _, arrays = _flatten(inputs, targets)
        return [np.asarray(a, dtype=p.dtype) for a, p in zip(arrays, probe)]

    def _map(pair):
        flat = tf.numpy_function(_load, [pair[0], pair[1]], dtypes, stateful=False)
        inputs, targets = {}, {}
        for (kind, key), tensor, shape in zip(keys, flat, shapes):
            tensor.set_shape(shape)
            (inputs if kind == "in" else targets)[key] = tensor
        return inputs, targets

    ds = tf.data.Dataset.from_tensor_slices(pairs)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
