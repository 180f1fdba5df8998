"""Tests of regseg.evaluation.pairs (evaluate_pairs, warp_labels) against hand computations.

Synthetic samples on a 2 mm grid hold boxes of labels away from the borders, so a registrar
that returns a constant whole-voxel translation warps them by a known shift (numpy slicing /
``np.roll``); the expected Dice, TRE, Jacobian statistics and NIfTI contents are worked out by
hand (the numbers are written in the comments) or with plain numpy formulas.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from regseg.datasets.subjects import Sample
from regseg.evaluation.pairs import IdentityRegistrar, evaluate_pairs, warp_labels

SHAPE = (16, 14, 12)
AFFINE = np.array([[2.0, 0, 0, -10.0], [0, 2.0, 0, 4.0], [0, 0, 2.0, 6.0], [0, 0, 0, 1]])


class Translation:
    """A constant displacement (voxels of the moving grid) on the fixed grid."""

    def __init__(self, d):
        self.d = np.asarray(d, dtype=np.float32)
        self.calls = 0

    def register(self, moving, fixed):
        self.calls += 1
        return {"displacement": np.broadcast_to(self.d, (*fixed.shape, 3)).copy()}


class Returns:
    """Returns fixed outputs (e.g. a folding field, or predicted segmentations)."""

    def __init__(self, **outputs):
        self.outputs = outputs

    def register(self, moving, fixed):
        return dict(self.outputs)


def _structures():
    s = np.zeros(SHAPE, np.int32)
    s[3:7, 3:8, 3:7] = 1         # 4 x 5 x 4 = 80 voxels
    s[8:12, 4:9, 3:8] = 2        # 4 x 5 x 5 = 100
    s[5:10, 9:12, 7:10] = 3      # 5 x 3 x 3 = 45
    return s


def _segmentation(structures):
    return np.where(np.isin(structures, [1, 2]), 1, np.where(structures == 3, 2, 0)).astype(np.int32)


def _samples(landmarks=True):
    """Moving "m" and fixed "f": f's content is m's moved by one voxel back along x and y,
    i.e. ``f[p] = m[p + (1, 1, 0)]`` (the true displacement is (1, 1, 0) voxels = (2, 2, 0) mm)."""
    rng = np.random.default_rng(0)
    ms = _structures()
    fs = np.roll(ms, (-1, -1), axis=(0, 1))
    mi = rng.normal(size=SHAPE).astype(np.float32)
    brain = np.zeros(SHAPE, bool)
    brain[4:12, 2:12, 2:10] = True               # 8 x 10 x 8 = 640 voxels
    fixed_vox = np.array([[5.5, 6.25, 4.0], [10.0, 7.0, 6.5], [7.0, 4.0, 8.0]])
    lf = (np.c_[fixed_vox, np.ones(3)] @ AFFINE.T)[:, :3]
    lm = lf + np.array([2.0, 2.0, 0.0])
    m = Sample("m", {"t1": mi}, {"structures": ms, "segmentation": _segmentation(ms)},
               {"brain": np.roll(brain, (1, 1), axis=(0, 1))}, affine=AFFINE.copy(),
               landmarks=lm if landmarks else None)
    f = Sample("f", {"t1": np.roll(mi, (-1, -1), axis=(0, 1))},
               {"structures": fs, "segmentation": _segmentation(fs)}, {"brain": brain},
               affine=AFFINE.copy(), landmarks=lf if landmarks else None)
    return m, f


def _dice(a, b, k):
    a, b = a == k, b == k
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# --------------------------------------------------------------------------- Dice
def test_dice_per_structure_for_a_translation_and_the_identity():
    m, f = _samples()
    res = evaluate_pairs({"shift": Translation((1, 0, 0)), "identity": IdentityRegistrar(),
                          "exact": Translation((1, 1, 0))}, [m, f], [[0, 1], [1, 0]])
    assert res.pairs == ["m->f", "f->m"]
    d = res.dice["shift"]
    assert list(d.columns) == ["1", "2", "3"] and list(d.index) == ["m->f", "f->m"]
    # m -> f, shift (1, 0, 0): boxes move one voxel back in x, f is back one in x AND y:
    # boxes 1, 2 overlap 4 of 5 rows in y -> 0.8; box 3 overlaps 2 of 3 rows in y -> 2/3
    np.testing.assert_allclose(d.loc["m->f"], [0.8, 0.8, 2 / 3], atol=1e-12)
    # identity: x overlap 3/4 and y 4/5 -> 0.6; box 3: x 4/5, y 2/3 -> 8/15
    np.testing.assert_allclose(res.dice["identity"].loc["m->f"], [0.6, 0.6, 8 / 15], atol=1e-12)
    np.testing.assert_allclose(res.dice["exact"].loc["m->f"], [1.0, 1.0, 1.0])
    # f -> m, shift (1, 0, 0): f moved back once more in x -> 2 voxels off in x, 1 in y: all 0.4
    np.testing.assert_allclose(d.loc["f->m"], [0.4, 0.4, 0.4], atol=1e-12)
    # the same numbers from the numpy shift
    for pair, (mov, fix) in (("m->f", (m, f)), ("f->m", (f, m))):
        warped = np.roll(mov.structures, -1, axis=0)
        for k in (1, 2, 3):
            assert d.loc[pair, str(k)] == pytest.approx(_dice(warped, fix.structures, k))
            assert res.dice["identity"].loc[pair, str(k)] == pytest.approx(
                _dice(mov.structures, fix.structures, k))
    np.testing.assert_array_equal(res.examples["shift"]["warped_labels"],
                                  np.roll(m.structures, -1, axis=0))


@pytest.mark.parametrize("d", [(1, 0, 0), (-2, 1, 1), (0, -1, 2)])
def test_nearest_and_argmax_agree_for_whole_voxel_shifts(d):
    m, f = _samples()
    out = {}
    for rule in ("nearest", "argmax"):
        res = evaluate_pairs({"t": Translation(d)}, [m, f], [[0, 1]], label_rule=rule)
        out[rule] = res
        expected = np.roll(m.structures, tuple(-v for v in d), axis=(0, 1, 2))
        np.testing.assert_array_equal(res.examples["t"]["warped_labels"], expected)
        for k in (1, 2, 3):
            assert res.dice["t"].loc["m->f", str(k)] == pytest.approx(
                _dice(expected, f.structures, k))
    pd.testing.assert_frame_equal(out["nearest"].dice["t"], out["argmax"].dice["t"])


def test_half_voxel_shift_nearest_vs_argmax_by_hand():
    shape = (12, 6, 6)
    lab = np.zeros(shape, np.int32)
    lab[3:6, 1:5, 1:5] = 1
    lab[6:9, 1:5, 1:5] = 2
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape],
                                indexing="ij"), -1)
    grid[..., 0] += 0.5                                 # sample at x + 1/2
    # nearest rounds half up: output x takes input x + 1 -> label 1 at x 2..4, label 2 at x 5..7
    nearest = np.zeros(shape, np.int32)
    nearest[2:5, 1:5, 1:5] = 1
    nearest[5:8, 1:5, 1:5] = 2
    # argmax of the averaged one-hot maps of x and x + 1; a 50/50 tie goes to the lower class:
    # x=2: (0, 1) -> 0; x=3, 4: 1; x=5: (1, 2) -> 1; x=6, 7: 2; x=8: (2, 0) -> 0
    argmax = np.zeros(shape, np.int32)
    argmax[3:6, 1:5, 1:5] = 1
    argmax[6:8, 1:5, 1:5] = 2
    assert not np.array_equal(nearest, argmax)
    np.testing.assert_array_equal(warp_labels(lab, grid, 2, "nearest"), nearest)
    np.testing.assert_array_equal(warp_labels(lab, grid, 2, "argmax"), argmax)
    assert warp_labels(lab, grid, 2).dtype == np.int32

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    s = Sample("a", {"t1": np.zeros(shape, np.float32)}, {"structures": lab}, affine=affine)
    t = Sample("b", {"t1": np.zeros(shape, np.float32)}, {"structures": lab}, affine=affine)
    reg = {"half": Translation((0.5, 0, 0))}
    near = evaluate_pairs(reg, [s, t], [[0, 1]], label_rule="nearest").dice["half"]
    arg = evaluate_pairs(reg, [s, t], [[0, 1]], label_rule="argmax").dice["half"]
    # nearest: both boxes one voxel off in x (2 of 3 rows) -> 2/3, 2/3
    np.testing.assert_allclose(near.loc["a->b"], [2 / 3, 2 / 3], atol=1e-12)
    # argmax: box 1 intact -> 1; box 2 lost a row -> 2 * 2 / (2 + 3) = 0.8
    np.testing.assert_allclose(arg.loc["a->b"], [1.0, 0.8], atol=1e-12)
    with pytest.raises(ValueError, match="label rule"):
        evaluate_pairs(reg, [s, t], [[0, 1]], label_rule="linear")
    with pytest.raises(ValueError, match="label rule"):
        warp_labels(lab, grid, 2, "linear")


# --------------------------------------------------------------------------- TRE
def test_tre_in_mm_for_translations():
    m, f = _samples()
    res = evaluate_pairs({"x": Translation((1, 0, 0)), "xy": Translation((1, 1, 0)),
                          "y": Translation((0, 1, 0)), "identity": IdentityRegistrar()},
                         [m, f], [[0, 1]])
    tre = res.tre.set_index("method")["TRE mm"]
    # true correspondence: (2, 2, 0) mm. A 1-voxel shift is 2 mm (spacing 2 mm).
    assert tre["xy"] == pytest.approx(0.0, abs=1e-5)
    assert tre["x"] == pytest.approx(2.0, abs=1e-5)                  # |(0, 2, 0)|
    assert tre["y"] == pytest.approx(2.0, abs=1e-5)                  # |(2, 0, 0)|
    assert tre["identity"] == pytest.approx(np.sqrt(8.0), abs=1e-5)  # |(2, 2, 0)|
    assert set(res.tre["pair"]) == {"m->f"}
    # no landmarks: no TRE rows
    m2, f2 = _samples(landmarks=False)
    assert evaluate_pairs({"x": Translation((1, 0, 0))}, [m2, f2], [[0, 1]]).tre.empty


def test_tre_uses_the_moving_affine():
    m, f = _samples()
    # the moving grid's origin is 6 mm further along y: the landmarks (world) are unchanged, so
    # the moving voxel of each landmark is 3 voxels lower along y
    m.affine = AFFINE.copy()
    m.affine[1, 3] += 6.0
    res = evaluate_pairs({"xy": Translation((1, 1, 0)), "fix": Translation((1, -2, 0))},
                         [m, f], [[0, 1]], structures=None)
    tre = res.tre.set_index("method")["TRE mm"]
    assert tre["fix"] == pytest.approx(0.0, abs=1e-5)
    assert tre["xy"] == pytest.approx(6.0, abs=1e-5)
    assert res.dice == {}


# --------------------------------------------------------------------------- Jacobian
def _folding_displacement(columns, x0=8):
    """u_x = -1.5 at x0 + 1 and +1.5 at x0 - 1 in the given (y, z) columns, 0 elsewhere.

    det J = d(phi_x)/dx (central differences): -0.5 at x0 (folded), 1.75 at x0 +- 2, 1 elsewhere.
    """
    u = np.zeros((*SHAPE, 3), np.float32)
    for y, z in columns:
        u[x0 + 1, y, z, 0] = -1.5
        u[x0 - 1, y, z, 0] = 1.5
    return u


def test_jacobian_statistics_translation_and_folds_inside_the_mask():
    m, f = _samples()
    inside = [(5, 5), (6, 5), (7, 7)]
    outside = [(0, 0), (13, 11), (1, 5)]          # y outside the mask's 2..11
    u = _folding_displacement(inside + outside)
    regs = {"shift": Translation((1, 0, 0)), "folds": Returns(displacement=u),
            "identity": IdentityRegistrar()}
    masked = evaluate_pairs(regs, [m, f], [[0, 1]], jacobian_mask="brain")
    whole = evaluate_pairs(regs, [m, f], [[0, 1]])
    for res in (masked, whole):
        dfm = res.deformation.set_index("method")
        assert "identity" not in dfm.index
        assert dfm.loc["shift", "folding fraction"] == 0.0
        assert dfm.loc["shift", "SDlogJ"] == pytest.approx(0.0, abs=1e-12)
    n_mask = 8 * 10 * 8
    dm = masked.deformation.set_index("method").loc["folds"]
    assert dm["folding fraction"] == pytest.approx(3 / n_mask)
    logs = np.zeros(n_mask)
    logs[:3] = np.log(1e-9)                      # folded voxels, clipped
    logs[3:9] = np.log(1.75)                     # x0 - 2 = 6 and x0 + 2 = 10, inside the mask
    assert dm["SDlogJ"] == pytest.approx(np.std(logs), rel=1e-9)
    dw = whole.deformation.set_index("method").loc["folds"]
    assert dw["folding fraction"] == pytest.approx(6 / np.prod(SHAPE))


# --------------------------------------------------------------------------- segmentation
class FakeDataset:
    def __init__(self, samples, structure_names, class_names):
        self.samples, self.structure_names, self.class_names = samples, structure_names, class_names

    def __len__(self):
        return len(self.samples)

    def load(self, i):
        return self.samples[i]


def _predicted_segmentation(m):
    pred = m.segmentation.copy()
    pred[3][pred[3] == 1] = 0         # drop a 5 x 4 slab of class 1 (180 -> 160 voxels)
    pred[5:10, 12, 7:10] = 2          # 15 extra voxels of class 2 (45 -> 60)
    probs = 0.1 + 0.6 * np.eye(3, dtype=np.float32)[pred]
    return pred, probs / probs.sum(-1, keepdims=True)


def test_segmentation_dice_of_moving_seg_by_hand():
    m, f = _samples()
    pred, probs = _predicted_segmentation(m)
    assert (m.segmentation == 1).sum() == 180 and (pred == 1).sum() == 160
    regs = {"seg": Returns(displacement=np.zeros((*SHAPE, 3), np.float32), moving_seg=probs),
            "identity": IdentityRegistrar()}
    # class 1: 2 * 160 / (160 + 180) = 16/17; class 2: 2 * 45 / (45 + 60) = 6/7
    expected = [16 / 17, 6 / 7]
    ds = FakeDataset([m, f], ["A", "B", "C"], ["white", "cortex"])
    res = evaluate_pairs(regs, ds, [[0, 1]], segmentation="segmentation")
    assert list(res.segmentation) == ["seg"]                  # only methods that predict one
    seg = res.segmentation["seg"]
    assert list(seg.columns) == ["white", "cortex"] and list(seg.index) == ["m->f"]
    np.testing.assert_allclose(seg.loc["m->f"], expected, atol=1e-12)
    assert list(res.dice["seg"].columns) == ["A", "B", "C"]
    # plain list of samples: classes numbered from the label map
    res = evaluate_pairs(regs, [m, f], [[0, 1]], segmentation="segmentation")
    seg = res.segmentation["seg"]
    assert list(seg.columns) == ["1", "2"]
    np.testing.assert_allclose(seg.loc["m->f"], expected, atol=1e-12)
    # no segmentation requested: nothing scored
    assert evaluate_pairs(regs, [m, f], [[0, 1]]).segmentation == {}


# --------------------------------------------------------------------------- outputs
def test_nifti_outputs_in_the_fixed_geometry(tmp_path):
    m, f = _samples()
    f.affine = AFFINE.copy()
    f.affine[:3, 3] = (-12.0, 2.0, 8.0)          # fixed geometry differs from the moving one
    d = (1, -1, 0)
    res = evaluate_pairs({"shift": Translation(d), "identity": IdentityRegistrar()}, [m, f],
                         [[0, 1]], nifti_dir=tmp_path, folder_names={"shift": "my_model"})
    assert res.pairs == ["m->f"]
    folder = tmp_path / "my_model"
    disp_img = nib.load(folder / "m_to_f_displacement_voxels.nii.gz")
    np.testing.assert_array_equal(disp_img.affine, f.affine)
    disp = np.asarray(disp_img.dataobj)
    assert disp.shape == (*SHAPE, 3)
    np.testing.assert_array_equal(disp, np.broadcast_to(np.float32(d), (*SHAPE, 3)))
    lab_img = nib.load(folder / "m_to_f_warped_structures.nii.gz")
    np.testing.assert_array_equal(lab_img.affine, f.affine)
    np.testing.assert_array_equal(np.asarray(lab_img.dataobj),
                                  np.roll(m.structures, (-1, 1), axis=(0, 1)))
    warped_img = nib.load(folder / "m_to_f_warped.nii.gz")
    np.testing.assert_array_equal(warped_img.affine, f.affine)
    # warped[x, y, z] = moving[min(x + 1, 15), max(y - 1, 0), z] (border clamping)
    xs = np.minimum(np.arange(SHAPE[0]) + 1, SHAPE[0] - 1)
    ys = np.maximum(np.arange(SHAPE[1]) - 1, 0)
    expected = m.image[xs][:, ys]
    np.testing.assert_allclose(np.asarray(warped_img.dataobj), expected, atol=1e-6)
    # identity: the moving image itself, zero displacement, in its method's folder
    ident = tmp_path / "identity"
    np.testing.assert_allclose(np.asarray(nib.load(ident / "m_to_f_warped.nii.gz").dataobj),
                               m.image, atol=1e-6)
    assert not np.asarray(nib.load(ident / "m_to_f_displacement_voxels.nii.gz").dataobj).any()
    np.testing.assert_array_equal(
        np.asarray(nib.load(ident / "m_to_f_warped_structures.nii.gz").dataobj), m.structures)


def test_per_pair_dice_long_table_and_seconds():
    m, f = _samples()
    g = Sample("g", {"t1": m.image.copy()}, {"structures": np.roll(m.structures, 1, axis=2)},
               affine=AFFINE.copy())
    pairs = [[0, 1], [1, 2], [2, 0]]
    shift = Translation((1, 0, 0))
    regs = {"identity": IdentityRegistrar(), "shift": shift}
    res = evaluate_pairs(regs, [m, f, g], pairs)
    assert shift.calls == 3
    long = res.per_pair_dice()
    assert long.index.name == "pair"
    assert list(long.columns) == ["method", "1", "2", "3"]
    assert len(long) == 6
    assert list(long["method"]) == ["identity"] * 3 + ["shift"] * 3
    assert list(long.index) == ["m->f", "f->g", "g->m"] * 2
    for method in regs:
        part = long[long["method"] == method].drop(columns="method")
        pd.testing.assert_frame_equal(part, res.dice[method], check_names=False)
    samples = {"m": m, "f": f, "g": g}
    for pair in res.pairs:
        a, b = (samples[s] for s in pair.split("->"))
        for k in (1, 2, 3):
            assert res.dice["identity"].loc[pair, str(k)] == pytest.approx(
                _dice(a.structures, b.structures, k))
            assert res.dice["shift"].loc[pair, str(k)] == pytest.approx(
                _dice(np.roll(a.structures, -1, axis=0), b.structures, k))
    sec = res.seconds
    assert len(sec) == 6
    assert set(zip(sec["pair"], sec["method"])) == {(p, mth) for p in res.pairs for mth in regs}
    assert (sec["seconds"] >= 0).all() and np.isfinite(sec["seconds"]).all()
    assert evaluate_pairs({}, [m, f], [[0, 1]]).per_pair_dice().empty


def test_jacobian_mask_missing_from_the_fixed_sample_is_an_error():
    from regseg.datasets.io import DataError

    m, f = _samples()
    with pytest.raises(DataError) as err:
        evaluate_pairs({"shift": Translation((1, 0, 0))}, [m, f], [[0, 1]], jacobian_mask="liver")
    assert str(err.value).startswith("f: ") and "'liver'" in str(err.value)


def test_a_returned_sampling_grid_is_used_as_is():
    m, f = _samples()
    d = np.float32([1, 1, 0])
    ident = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SHAPE],
                                 indexing="ij"), -1)
    # the grid says "shift (1, 1, 0)"; the displacement is only a non-zero placeholder
    reg = Returns(displacement=np.full((*SHAPE, 3), 0.25, np.float32), grid=ident + d)
    res = evaluate_pairs({"grid": reg}, [m, f], [[0, 1]])
    np.testing.assert_allclose(res.dice["grid"].loc["m->f"], [1.0, 1.0, 1.0])
    assert res.tre["TRE mm"].iloc[0] == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_array_equal(res.examples["grid"]["outputs"]["grid"], ident + d)


def test_seconds_reported_by_the_registrar_replace_the_call_time():
    """A registrar's own "seconds" (e.g. a cached registration's original time) is reported."""
    m, f = _samples(landmarks=False)
    zero = np.zeros((*SHAPE, 3), np.float32)
    res = evaluate_pairs({"cached": Returns(displacement=zero, seconds=42.5),
                          "timed": Returns(displacement=zero)}, [m, f], [[0, 1]])
    sec = res.seconds.set_index("method")["seconds"]
    assert sec["cached"] == 42.5
    assert 0 <= sec["timed"] < 42.5
