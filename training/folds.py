"""Cross-validation: the folds of a paper's subjects and one training run per fold.

A paper with too few subjects for one train / test split (the stand-in datasets) trains one
network per fold and tests every subject once, by a network that never saw it. This module holds
both halves, so that no paper folder writes its own fold loop:

* the split side: :func:`kfold` (indices: contiguous blocks or strided, optionally one
  validation subject per fold), :func:`cross_validation_splits` and :class:`CrossValidationSplits`
  (datasets: the runner validates and caches every fold);
* the training side: :func:`fit_folds` (a method's fit once per fold, each into its own run
  folder; ``ctx.fold`` is the fold being trained) returning :class:`FoldRegistrars`, and
  :func:`fold_registrars` (each method's registrar for one fold, for the evaluation).

Per-fold results are merged by :func:`regseg.evaluation.comparison.merge_folds`.
"""

from __future__ import annotations

import contextlib

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regseg.datasets.subjects import Splits, SubjectDataset

__all__ = ["Fold", "kfold", "cross_validation_splits", "CrossValidationSplits",
           "FoldRegistrars", "fit_folds", "fold_context", "fold_registrars", "epochs_run",
           "METHOD_IN_FOLD", "FOLD_IN_METHOD"]

#: run-folder layouts of :func:`fit_folds` (relative to the parent of the method's run folder):
#: ``<run>/fold<k>/<method>`` (U-ReSNet) and ``<run>/<method>/fold<k>`` (diffeomorphic U-Net)
METHOD_IN_FOLD = "fold{name}/{method}"
FOLD_IN_METHOD = "{method}/fold{name}"


@dataclass(frozen=True)
class Fold:
    """One fold: indices of the training, validation and test subjects (disjoint)."""

    train: tuple
    validation: tuple
    test: tuple


def kfold(n: int, k: int, *, assignment: str = "blocks", validation: bool = False,
          min_test: int = 1) -> list[Fold]:
    """``k`` folds over subjects ``0 .. n-1``; fold ``j`` tests its part and trains on the rest.

    Args:
        n: number of subjects (in the order the caller chose, e.g. sorted by id).
        k: number of folds (>= 2).
        assignment: ``"blocks"``: contiguous parts (``numpy.array_split``: the first ``n % k``
            parts one longer); ``"strided"``: fold ``j`` tests ``j, j + k, j + 2k, ...``.
        validation: give each fold one validation subject, the first test subject of fold
            ``j + 1`` (mod ``k``); it neither trains nor is tested in that fold.
        min_test: the fewest test subjects a fold may have (e.g. 2 to pair test subjects).
    Returns:
        ``k`` :class:`Fold` s; every subject is tested exactly once.
    Raises:
        ValueError: ``k < 2``, an unknown ``assignment``, a fold with fewer than ``min_test``
            test subjects or with no training subject.
    """
    if k < 2:
        raise ValueError(f"need k >= 2 folds, got k={k}")
    if assignment == "blocks":
        parts = [tuple(int(i) for i in b) for b in np.array_split(np.arange(n), k)]
    elif assignment == "strided":
        parts = [tuple(range(j, n, k)) for j in range(k)]
    else:
        raise ValueError(f"assignment must be 'blocks' or 'strided', got {assignment!r}")
    if min(len(p) for p in parts) < max(1, min_test):
        raise ValueError(f"{k} folds of {n} subjects: fewer than {max(1, min_test)} test "
                         f"subject(s) per fold")
    folds = []
    for j in range(k):
        test = parts[j]
        val = (parts[(j + 1) % k][0],) if validation else ()
        train = tuple(i for i in range(n) if i not in test and i not in val)
        if not train:
            raise ValueError(f"{k} folds of {n} subjects: fold {j + 1} has no training subject")
        folds.append(Fold(train, val, test))
    return folds


@dataclass
class CrossValidationSplits(Splits):
    """Splits holding every fold (``folds``, each a :class:`Splits`); its own train /
    validation / test are fold 1's. The runner validates and caches all of them."""

    folds: list = None

    def use_disk_cache(self, cache):
        from regseg.datasets.cache import PreprocessingCache
        cache = cache if isinstance(cache, PreprocessingCache) else PreprocessingCache(cache)
        for f in self.folds:
            Splits.use_disk_cache(f, cache)
        return self

    def validate(self, progress=None) -> int:
        return sum(Splits.validate(f, progress) for f in self.folds)


def cross_validation_splits(splits: Splits, k: int, *, assignment: str = "blocks",
                            validation: bool = False, min_test: int = 1) -> CrossValidationSplits:
    """:func:`kfold` over all subjects of ``splits`` (train, validation and test pooled, sorted
    by id): ``k`` :class:`Splits`, each with its own datasets (recipe of ``splits.train``).

    Raises:
        ValueError: as :func:`kfold`.
    """
    base = splits.train
    subjects = sorted((s for part in (splits.train, splits.validation, splits.test)
                       for s in part.subjects), key=lambda s: s.subject_id)

    def make(idx):
        return SubjectDataset(base.name, base.is_paper_dataset, [subjects[i] for i in idx],
                              base.recipe, cache=True)

    result = [Splits(make(f.train), make(f.validation), make(f.test))
              for f in kfold(len(subjects), k, assignment=assignment, validation=validation,
                             min_test=min_test)]
    return CrossValidationSplits(result[0].train, result[0].validation, result[0].test,
                                 folds=result)


def epochs_run(run_dir) -> int:
    """Rows of ``run_dir/history.csv``: the epochs trained (early stopping included), else 0."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return 0
    return max(0, len([line for line in path.read_text().splitlines() if line.strip()]) - 1)


class FoldRegistrars(list):
    """What a method trained on every fold: one result (a registrar, or a paper's trained
    networks) per fold, in fold order.

    Attributes:
        names: the folds' names (``fold<name>`` in the run folders; e.g. 1, 2, ... or a
            held-out patient).
        folders: each fold's run folder.
        epochs_run: epochs each fold trained (rows of its ``history.csv``).
    """

    def __init__(self, results=(), names=None, folders=None):
        super().__init__(results)
        self.names = list(names) if names is not None else list(range(1, len(self) + 1))
        self.folders = [Path(f) for f in folders] if folders is not None else []
        self.epochs_run = [epochs_run(f) for f in self.folders]


def fold_registrars(registrars: dict, k: int) -> dict:
    """Each method's result for fold ``k`` (0-based); a method not trained per fold (e.g. the
    identity) is the same on every fold."""
    return {m: (r[k] if isinstance(r, FoldRegistrars) else r) for m, r in registrars.items()}


def _sizes(fold) -> str:
    parts = [(name, getattr(fold, name, None)) for name in ("train", "validation", "test")]
    return ", ".join(f"{name} {len(p)}" for name, p in parts if p is not None)


def fit_folds(base_fit: Callable, ctx, run_dir, folds: Sequence | None = None, *,
              names: Sequence | None = None, layout: str = METHOD_IN_FOLD,
              describe: Callable = _sizes):
    """``base_fit(ctx, folder)`` once per fold, each into its own run folder.

    While a fold trains, ``ctx.fold`` is that fold and, when the fold is a :class:`Splits`
    (:class:`CrossValidationSplits`), ``ctx.splits`` is it too; both are restored afterwards.

    Args:
        base_fit: ``f(ctx, run folder) -> registrar`` (e.g. ``KerasMethod.fit``).
        ctx: the :class:`~regseg.training.runner.RunContext`.
        run_dir: the method's run folder ``<run>/<method>``.
        folds: the folds (any objects the paper's ``base_fit`` reads from ``ctx.fold``);
            default ``ctx.splits.folds``; when that is absent or empty, ``base_fit(ctx, run_dir)``
            is returned as it is (a single split).
        names: the folds' names, default 1, 2, ...
        layout: each fold's run folder relative to ``<run>``, formatted with ``name`` and
            ``method`` (:data:`METHOD_IN_FOLD`: ``<run>/fold<k>/<method>``).
        describe: ``f(fold) -> str`` for the progress line (default: the split sizes).
    Returns:
        :class:`FoldRegistrars`.
    """
    run_dir = Path(run_dir)
    if folds is None:
        folds = getattr(ctx.splits, "folds", None)
        if not folds:
            return base_fit(ctx, run_dir)
    names = list(names) if names is not None else list(range(1, len(folds) + 1))
    if len(names) != len(folds):
        raise ValueError(f"{len(names)} fold names for {len(folds)} folds")
    results, folders = [], []
    for i, (name, fold) in enumerate(zip(names, folds), 1):
        with fold_context(ctx, fold):
            folder = run_dir.parent / layout.format(name=name, method=run_dir.name)
            print(f"--- {run_dir.name}: fold {name} ({i}/{len(folds)}): {describe(fold)}",
                  flush=True)
            results.append(base_fit(ctx, folder))
            folders.append(folder)
    return FoldRegistrars(results, names, folders)


@contextlib.contextmanager
def fold_context(ctx, fold):
    """Inside the block ``ctx.fold`` is ``fold`` and, when ``fold`` is a :class:`Splits`,
    ``ctx.splits`` is it too; both are restored afterwards (``fold=None``: no change)."""
    if fold is None:
        yield ctx
        return
    whole, previous = ctx.splits, ctx.fold
    try:
        ctx.fold = fold
        if isinstance(fold, Splits):
            ctx.splits = fold
        yield ctx
    finally:
        ctx.splits, ctx.fold = whole, previous
