"""Figures of regseg.evaluation: non-empty PNGs whose pixels depend on the inputs."""

import os

import numpy as np
import pytest
from matplotlib.image import imread

from regseg.evaluation import mid_slices, registration_figure, segmentation_figure


def _volume(rng, shape=(16, 18, 14)):
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    img = np.exp(-(x**2 + y**2 + z**2) * 3) + 0.05 * rng.standard_normal(shape)
    return img.astype(np.float32)


def _read(p):
    assert p.exists() and p.stat().st_size > 1000
    return imread(p)


def test_mid_slices_orientation():
    v = np.zeros((4, 6, 8))
    v[3, 0, 0] = 1  # right, posterior, inferior corner
    planes = dict(mid_slices(v, index=(3, 0, 0)))
    assert planes["axial"].shape == (6, 4)  # rows y (P->A), cols x (L->R)
    assert planes["axial"][0, 3] == 1
    assert planes["coronal"].shape == (8, 4) and planes["coronal"][0, 3] == 1
    assert planes["sagittal"].shape == (8, 6) and planes["sagittal"][0, 0] == 1


def test_registration_figure_png_depends_on_input(tmp_path):
    rng = np.random.default_rng(0)
    mov, ref = _volume(rng), _volume(rng)
    u = np.zeros(mov.shape + (3,), np.float32)
    p1 = registration_figure(mov, ref, ref, u, tmp_path / "a.png", title="pair 1")
    u2 = u.copy()
    u2[4:12, 4:12, 4:10, 0] = 3.0
    p2 = registration_figure(mov, ref, mov, u2, tmp_path / "b.png", title="pair 1")
    a, b = _read(p1), _read(p2)
    assert a.ndim == 3 and a.shape[0] > 50 and a.shape[1] > 50
    assert a.std() > 0.01  # not blank
    assert a.shape == b.shape
    assert np.abs(a - b).mean() > 1e-3
    p3 = registration_figure(mov, ref, mov, u2, tmp_path / "c.png", components=True)
    c = _read(p3)
    assert c.shape[1] > a.shape[1]  # two more columns
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png", "c.png"]  # no temp files
    with pytest.raises(FileExistsError):
        registration_figure(mov, ref, mov, u2, p3, overwrite=False)
    with pytest.raises(ValueError):
        registration_figure(mov, ref, mov, u2[..., :2], tmp_path / "d.png")


def test_registration_figure_2d(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.random((20, 24))
    u = np.zeros((20, 24, 2))
    a = _read(registration_figure(img, img, img, u, tmp_path / "a.png"))
    u[5:15, 5:15, 1] = 2.0
    b = _read(registration_figure(img, img, img, u, tmp_path / "b.png"))
    assert a.shape == b.shape and np.abs(a - b).mean() > 1e-4


def test_segmentation_figure_png_depends_on_prediction(tmp_path):
    rng = np.random.default_rng(2)
    shape = (16, 18, 14)
    mov, ref = _volume(rng, shape), _volume(rng, shape)
    seg = np.zeros(shape, np.int32)
    seg[3:13, 3:15, :] = 1
    seg[5:11, 5:13, :] = 2
    seg[7:9, 7:11, :] = 3
    pred_good = seg.copy()
    pred_bad = np.zeros_like(seg)
    pred_bad[2:6, 2:6, :] = 3
    names = ["CeblWM", "CeblC", "LV"]
    a = _read(segmentation_figure(mov, ref, ref, seg, pred_good, names, tmp_path / "a.png"))
    b = _read(segmentation_figure(mov, ref, ref, seg, pred_bad, names, tmp_path / "b.png"))
    assert a.shape == b.shape and np.abs(a - b).mean() > 1e-3
    # default colours: some strongly blue pixels (CeblWM overlay, blue over grey)
    rgb = a[..., :3]
    assert np.any((rgb[..., 2] - rgb[..., 0] > 0.3) & (rgb[..., 2] - rgb[..., 1] > 0.3))
    with pytest.raises(ValueError):
        segmentation_figure(mov, ref, ref, seg, pred_good, names[:2], tmp_path / "c.png")
