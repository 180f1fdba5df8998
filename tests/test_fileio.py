"""Atomic writers give new files the usual mode (0666 minus umask), not mkstemp's 0600."""

import os
import stat

import numpy as np

from regseg.datasets.io import save_volume
from regseg.evaluation.tables import atomic_write_text


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        text = atomic_write_text(tmp_path / "t.md", "x\n")
        vol = save_volume(tmp_path / "v.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    finally:
        os.umask(old)
    for path in (text, vol):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
