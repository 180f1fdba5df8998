"""Tests of split_subjects, SubjectDataset options and resolve_data_root."""

from __future__ import annotations

import numpy as np
import pytest

from regseg.datasets import DataError, resolve_data_root
from regseg.datasets.subjects import Subject, split_subjects


def _subjects(ids):
    return [Subject(i, f"/img/{i}.nii.gz", f"/lab/{i}.nii.gz") for i in ids]


def _ids(part):
    return [s.subject_id for s in part]


def test_exact_sizes_deterministic_and_order_independent():
    subjects = _subjects([f"s{i:03d}" for i in range(50)])
    a = split_subjects(subjects, (30, 5, 10), seed=3)
    b = split_subjects(list(reversed(subjects)), (30, 5, 10), seed=3)
    assert [_ids(p) for p in a] == [_ids(p) for p in b]
    assert [len(p) for p in a] == [30, 5, 10]
    assert len(set(sum((_ids(p) for p in a), []))) == 45          # disjoint
    c = split_subjects(subjects, (30, 5, 10), seed=4)
    assert [_ids(p) for p in a] != [_ids(p) for p in c]
    # the permutation is numpy's default_rng(seed) over the sorted ids (independent recomputation)
    order = np.random.default_rng(3).permutation(50)
    ids = [f"s{i:03d}" for i in order]
    assert _ids(a[0]) == sorted(ids[:30]) and _ids(a[1]) == sorted(ids[30:35])
    assert _ids(a[2]) == sorted(ids[35:45])


def test_unshuffled_keeps_sorted_order():
    subjects = _subjects(["c", "a", "e", "b", "d"])
    tr, va, te = split_subjects(subjects, (2, 1, 2), seed=0, shuffle=False)
    assert (_ids(tr), _ids(va), _ids(te)) == (["a", "b"], ["c"], ["d", "e"])


def test_proportional_sizes_when_fewer_subjects():
    subjects = _subjects([f"s{i}" for i in range(10)])
    parts = split_subjects(subjects, (520, 67, 156), seed=0)
    assert [len(p) for p in parts] == [7, 1, 2]   # 6.99, 0.90, 2.10 -> largest remainders


def test_groups_never_straddle_splits():
    # 12 OASIS-like subjects with 1-3 sessions each
    sessions = []
    for k in range(12):
        sessions += [f"OAS3{k:04d}_MR_d{d:04d}" for d in range(1 + k % 3)]
    subjects = _subjects(sessions)
    parts = split_subjects(subjects, (12, 4, 6), seed=1, group_key=lambda s: s.subject_id[:8])
    owner = {}
    for k, part in enumerate(parts):
        for s in part:
            assert owner.setdefault(s.subject_id[:8], k) == k
    for part, size in zip(parts, (12, 4, 6)):
        assert 0 < len(part) <= size


def test_empty_split_raises():
    with pytest.raises(ValueError, match="validation split would be empty"):
        split_subjects(_subjects(["a", "b"]), (5, 1, 1), seed=0)
    with pytest.raises(ValueError, match="empty"):
        split_subjects(_subjects(["a", "b", "c"]), (3, 0, 0), seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        split_subjects(_subjects(["a", "a", "b"]), (1, 1, 1), seed=0)


def test_resolve_data_root(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.delenv("REGSEG_DATA_ROOT", raising=False)
    assert resolve_data_root(None) is None
    monkeypatch.setenv("REGSEG_DATA_ROOT", str(env_dir))
    assert resolve_data_root(None) == env_dir.resolve()
    assert resolve_data_root(str(tmp_path)) == tmp_path.resolve()          # CLI wins
    with pytest.raises(DataError, match="does-not-exist: data root from the command-line"):
        resolve_data_root(tmp_path / "does-not-exist")
    monkeypatch.setenv("REGSEG_DATA_ROOT", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"gone: data root from \$REGSEG_DATA_ROOT"):
        resolve_data_root()
