"""Cross-validation folds and the per-fold training loop (``regseg.training.folds``), shared by
U-ReSNet (contiguous blocks by id, no validation), the diffeomorphic U-Net (strided, one
validation source per fold) and the cooperating networks (one model per held-out patient)."""

from types import SimpleNamespace

import pytest

from regseg.datasets.recipes import Recipe
from regseg.datasets.subjects import Splits, Subject, SubjectDataset
from regseg.training.folds import (FOLD_IN_METHOD, METHOD_IN_FOLD, CrossValidationSplits, Fold,
                                   FoldRegistrars, cross_validation_splits, fit_folds,
                                   fold_registrars, kfold)


def _check_partition(folds, n):
    tested = []
    for f in folds:
        train, val, test = set(f.train), set(f.validation), set(f.test)
        assert not train & test and not val & test and not train & val
        assert train | val | test == set(range(n))
        tested += list(f.test)
    assert sorted(tested) == list(range(n))  # every subject tested exactly once


@pytest.mark.parametrize("n, k", [(4, 2), (10, 2), (10, 3), (9, 3), (7, 7), (23, 5)])
def test_blocks_partition_every_subject_into_contiguous_test_blocks(n, k):
    folds = kfold(n, k)
    _check_partition(folds, n)
    sizes = [len(f.test) for f in folds]
    # contiguous, in order, the first n % k blocks one longer
    assert sizes == [n // k + (j < n % k) for j in range(k)]
    start = 0
    for f, size in zip(folds, sizes):
        assert f.test == tuple(range(start, start + size)) and f.validation == ()
        start += size


def test_blocks_by_hand():
    assert [f.test for f in kfold(10, 3)] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert kfold(10, 3)[1].train == (0, 1, 2, 3, 7, 8, 9)


def test_strided_with_validation_by_hand():
    # the diffeomorphic U-Net's quick preset: 9 sources, 3 folds (5 train / 1 validation / 3 test)
    assert kfold(9, 3, assignment="strided", validation=True) == [
        Fold((2, 4, 5, 7, 8), (1,), (0, 3, 6)),
        Fold((0, 3, 5, 6, 8), (2,), (1, 4, 7)),
        Fold((1, 3, 4, 6, 7), (0,), (2, 5, 8))]


@pytest.mark.parametrize("n, k", [(9, 2), (9, 3), (10, 4), (5, 3)])
def test_strided_validation_is_the_next_folds_first_test_subject(n, k):
    folds = kfold(n, k, assignment="strided", validation=True)
    _check_partition(folds, n)
    for j, f in enumerate(folds):
        assert f.test == tuple(range(j, n, k))
        assert f.validation == (folds[(j + 1) % k].test[0],)


def test_impossible_folds_are_refused():
    with pytest.raises(ValueError, match="k >= 2"):
        kfold(10, 1)
    with pytest.raises(ValueError, match="fewer than 2 test"):
        kfold(5, 3, min_test=2)                          # blocks of 2, 2, 1
    with pytest.raises(ValueError, match="fewer than 1 test"):
        kfold(2, 3)
    with pytest.raises(ValueError, match="no training subject"):
        kfold(3, 2, assignment="strided", validation=True)  # fold 1: test 0, 2; validation 1
    with pytest.raises(ValueError, match="assignment"):
        kfold(10, 2, assignment="random")


def _dataset(ids):
    return SubjectDataset("d", False, [Subject(i, f"{i}.nii.gz") for i in ids], Recipe([]))


def test_cross_validation_splits_pool_all_parts_sorted_by_id():
    splits = Splits(_dataset(["s5", "s1", "s3"]), _dataset(["s0"]), _dataset(["s4", "s2"]))
    cv = cross_validation_splits(splits, 2, min_test=2)
    assert isinstance(cv, CrossValidationSplits) and len(cv.folds) == 2
    assert [f.test.subject_ids for f in cv.folds] == [["s0", "s1", "s2"], ["s3", "s4", "s5"]]
    assert [f.train.subject_ids for f in cv.folds] == [["s3", "s4", "s5"], ["s0", "s1", "s2"]]
    assert all(len(f.validation) == 0 for f in cv.folds)
    assert cv.train is cv.folds[0].train and cv.test is cv.folds[0].test
    with pytest.raises(ValueError, match="fewer than 2"):
        cross_validation_splits(splits, 4, min_test=2)


def test_cross_validation_folds_of_ixi10_are_disjoint(ixi10_root):
    from regseg.datasets import ixi10_splits
    cv = cross_validation_splits(ixi10_splits(ixi10_root.parent), 2, min_test=2)
    tested = []
    for fold in cv.folds:
        train, test = set(fold.train.subject_ids), set(fold.test.subject_ids)
        assert len(train) == 5 and len(test) == 5 and not train & test
        assert len(fold.validation) == 0
        tested += list(test)
    assert len(set(tested)) == 10


def _recording_fit(calls, epochs=2):
    def base_fit(ctx, folder):
        calls.append((ctx.splits, ctx.fold, folder))
        folder.mkdir(parents=True)
        (folder / "history.csv").write_text("epoch,loss\n" + "".join(
            f"{e},0.5\n" for e in range(epochs)))
        return f"registrar {len(calls)}"
    return base_fit


def test_fit_folds_trains_each_fold_of_the_splits_into_fold_k_method(tmp_path):
    splits = Splits(_dataset(["a", "b", "c"]), _dataset([]), _dataset(["d"]))
    cv = cross_validation_splits(splits, 2)
    ctx = SimpleNamespace(splits=cv, fold=None)
    calls = []
    regs = fit_folds(_recording_fit(calls, epochs=3), ctx, tmp_path / "run" / "ureSnet")
    assert isinstance(regs, FoldRegistrars) and list(regs) == ["registrar 1", "registrar 2"]
    assert regs.names == [1, 2] and regs.epochs_run == [3, 3]
    # U-ReSNet's layout: <run>/fold<k>/<method>, with ctx.splits and ctx.fold the fold's
    assert [c[2] for c in calls] == [tmp_path / "run" / "fold1" / "ureSnet",
                                     tmp_path / "run" / "fold2" / "ureSnet"]
    assert [c[0] for c in calls] == cv.folds and [c[1] for c in calls] == cv.folds
    assert ctx.splits is cv and ctx.fold is None                      # restored
    assert fold_registrars({"net": regs, "identity": "I"}, 1) == {"net": "registrar 2",
                                                                  "identity": "I"}


def test_fit_folds_other_layouts_and_fold_objects(tmp_path):
    whole = object()
    ctx = SimpleNamespace(splits=whole, fold=None)
    folds = [Fold((1, 2), (), (0,)), Fold((0, 2), (), (1,))]
    calls = []
    regs = fit_folds(_recording_fit(calls), ctx, tmp_path / "a1e-5", folds, names=[0, 1],
                     layout=FOLD_IN_METHOD)
    assert [c[2] for c in calls] == [tmp_path / "a1e-5" / "fold0", tmp_path / "a1e-5" / "fold1"]
    assert [c[1] for c in calls] == folds and all(c[0] is whole for c in calls)
    assert regs.names == [0, 1] and regs.folders == [c[2] for c in calls]
    calls = []
    fit_folds(_recording_fit(calls), ctx, tmp_path / "cooperating", [("p1",), ("p2",)],
              names=["p1", "p2"], layout="{method}/fold-{name}")
    assert [c[2].name for c in calls] == ["fold-p1", "fold-p2"]
    assert METHOD_IN_FOLD.format(name=3, method="m") == "fold3/m"


def test_fit_folds_without_folds_fits_once_and_restores_the_context_on_error(tmp_path):
    ctx = SimpleNamespace(splits=Splits(_dataset(["a"]), _dataset([]), _dataset(["b"])),
                          fold=None)
    calls = []
    assert fit_folds(_recording_fit(calls), ctx, tmp_path / "m") == "registrar 1"
    assert calls[0][2] == tmp_path / "m"
    cv = cross_validation_splits(Splits(_dataset(["a", "b"]), _dataset([]), _dataset([])), 2)
    ctx.splits = cv

    def fails(ctx, folder):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fit_folds(fails, ctx, tmp_path / "m")
    assert ctx.splits is cv and ctx.fold is None
    with pytest.raises(ValueError, match="fold names"):
        fit_folds(fails, ctx, tmp_path / "m", names=[1])
