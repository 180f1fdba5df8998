"""Tests of the offline DEMO dataset (MNI152 template shipped with nilearn, known deformations)."""

from __future__ import annotations

import os
import socket

import nibabel as nib
import numpy as np
import pytest

from regseg.datasets.demo import (
    DEMO_CROP,
    DEMO_NAME,
    build_demo,
    demo_displacement_field,
    demo_splits,
    demo_template,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Build a 3-subject demo with every network connection forbidden (nothing may download)."""
    cache = tmp_path_factory.mktemp("demo_cache")
    mp = pytest.MonkeyPatch()

    def no_network(*args, **kwargs):
        raise AssertionError("the demo dataset tried to use the network")

    mp.setattr(socket.socket, "connect", no_network)
    mp.setattr(socket, "create_connection", no_network)
    try:
        splits = demo_splits(cache, n_subjects=3, sizes=(1, 1, 1))
        template = demo_template()
    finally:
        mp.undo()
    return cache, splits, template


def test_demo_builds_offline_with_nonempty_labels(demo):
    _, splits, _ = demo
    assert splits.name == DEMO_NAME and "reproduces nothing" in DEMO_NAME
    assert not splits.train.is_paper_dataset
    assert splits.train.structure_names == ["CSF/other", "GM", "WM"] == splits.train.class_names
    for ds in (splits.train, splits.validation, splits.test):
        sample = ds.load(0)
        assert sample.image.shape == DEMO_CROP == (80, 104, 88)
        counts = np.bincount(sample.structures.ravel(), minlength=4)
        assert np.all(counts[1:] > 1000), counts
        brain = sample.structures > 0
        assert abs(sample.image[brain].mean()) < 1e-4
        assert abs(sample.image[brain].std() - 1) < 1e-4


def test_demo_volumes_are_the_template_warped_by_the_known_field(demo):
    cache, splits, (image, labels, affine) = demo
    subject = splits.validation.subjects[0]                       # demo_001
    assert subject.subject_id == "demo_001"
    warped_lab = np.asanyarray(nib.load(subject.label_path).dataobj)
    warped_img = nib.load(subject.image_path).get_fdata()
    np.testing.assert_allclose(nib.load(subject.label_path).affine, affine)
    u = demo_displacement_field(1, image.shape, seed=0)
    length = np.sqrt((u ** 2).sum(-1))
    assert length.max() == pytest.approx(4.0, rel=1e-5) and length.mean() > 0.5
    # independent nearest-neighbour lookup: labels_i(x) = L(round(x + u(x)))
    grid = np.indices(image.shape).transpose(1, 2, 3, 0)
    pos = grid + u
    frac = np.abs(pos - np.floor(pos) - 0.5)
    inside = np.all((pos >= 0) & (pos <= np.array(image.shape) - 1), -1)
    ok = inside & np.all(frac > 1e-3, -1)                            # avoid exact .5 ties
    src = np.rint(pos[ok]).astype(int)
    np.testing.assert_array_equal(warped_lab[ok], labels[tuple(src.T)])
    # the deformation changed the labels (it is not the identity)
    assert np.count_nonzero(warped_lab != labels) > 1000
    # image: trilinear interpolation by hand at a few voxels, plus noise of std 0.02
    rng = np.random.default_rng(5)
    pick = np.argwhere(inside & (labels > 0))[rng.integers(0, 10_000, 200)]
    p = pos[tuple(pick.T)]
    f = np.floor(p).astype(int)
    t = p - f
    expected = np.zeros(len(p))
    for corner in np.ndindex(2, 2, 2):
        c = np.array(corner)
        w = np.prod(np.where(c, t, 1 - t), axis=1)
        idx = np.minimum(f + c, np.array(image.shape) - 1)
        expected += w * image[tuple(idx.T)]
    residual = warped_img[tuple(pick.T)] - expected
    assert np.abs(residual).max() < 0.1 and 0.01 < residual.std() < 0.03


def test_demo_cache_is_reused(demo):
    cache, splits, _ = demo
    path = splits.train.subjects[0].image_path
    before = nib.load(path).get_fdata()
    mtime = os.stat(path).st_mtime_ns
    build_demo(cache, n_subjects=3)
    assert os.stat(path).st_mtime_ns == mtime
    np.testing.assert_array_equal(nib.load(path).get_fdata(), before)
