"""Tests of regseg.datasets.recipes (and the data model it acts on, regseg.datasets.subjects).

Every expected value is computed another way than the module does: numpy formulas, hand values,
world coordinates through the affines, scipy's centre of mass, SimpleITK reading the NIfTI files
itself, or the lower-level functions of regseg.datasets.preprocessing called directly.
"""

from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from regseg.datasets import (
    DLMUSE_SEGMENTATION,
    DLMUSE_TABLE1,
    DataError,
    LabelMapping,
    crop_around_centre_of_mass,
    load_volume,
    normalise_zscore,
)
from regseg.datasets.io import Volume
from regseg.datasets.preprocessing import resample_to_spacing
from regseg.datasets.recipes import (
    STEPS,
    Clip,
    CropAroundCentreOfMass,
    CropOrPad,
    Flip,
    HounsfieldWindow,
    MapLabels,
    MaskFromImage,
    MaskFromLabels,
    MinMax,
    Recipe,
    Resample,
    ResampleToShape,
    SkullStrip,
    ZScore,
    ureSnet_recipe,
)
from regseg.datasets.subjects import (
    Sample,
    Subject,
    SubjectDataset,
    read_landmarks_csv,
    read_subject,
    split_subjects,
)

SHAPE = (12, 10, 8)
SPACING = (1.5, 2.0, 2.5)
ORIGIN = (-20.0, 7.5, 3.25)

MAPPING = LabelMapping(["A", "B", "C"], {"A": [10, 11], "B": [20], "C": [30]})
MAPPING_AC = MAPPING.subset(["A", "C"])


# --------------------------------------------------------------------------- helpers
def _affine(spacing=SPACING, origin=ORIGIN):
    a = np.diag([*map(float, spacing), 1.0])
    a[:3, 3] = origin
    return a


def _rotated_affine():
    """A non-axis-aligned voxel -> world matrix (rotation about z, anisotropic spacing, offset)."""
    t = np.deg2rad(30.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(SPACING)
    a[:3, 3] = ORIGIN
    return a


def _save(path, data, affine):
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return str(path)


def _raw_labels(shape=SHAPE):
    lab = np.zeros(shape, dtype=np.int32)
    lab[2:6, 2:6, 2:6] = 10       # A
    lab[6:8, 2:6, 2:6] = 11       # A (second id)
    lab[2:9, 6:9, 1:4] = 20       # B
    lab[8:11, 1:5, 5:7] = 30      # C
    lab[1, 1, 1] = 99             # an id no class uses -> background
    return lab


def _image(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).normal(100.0, 20.0, shape).astype(np.float32)


def _sample(affine=None, landmarks=None):
    affine = _rotated_affine() if affine is None else affine
    lab = _raw_labels()
    return Sample("s1", {"t1": _image(seed=0), "t2": _image(seed=1)}, {"labels": lab},
                  {"brain": lab > 0}, affine=affine, landmarks=landmarks,
                  sources={"t1": "/x/t1.nii.gz", "t2": "/x/t2.nii.gz",
                           "labels": "/x/labels.nii.gz", "brain": "/x/labels.nii.gz"})


def _indices(shape):
    return np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)


def _to_world(affine, idx):
    idx = np.asarray(idx, dtype=np.float64)
    return (np.c_[idx, np.ones(len(idx))] @ np.asarray(affine).T)[:, :3]


def _assert_world_kept(old, old_affine, new, new_affine):
    """Every voxel of ``new`` holds the value of the ``old`` voxel at the same world point, or 0.

    Returns the number of kept (inside the old grid) voxels.
    """
    idx = _indices(new.shape[:3])
    world = _to_world(new_affine, idx)
    old_idx = np.linalg.solve(old_affine, np.c_[world, np.ones(len(world))].T).T[:, :3]
    rounded = np.rint(old_idx)
    assert np.allclose(old_idx, rounded, atol=1e-9), "crop/pad/flip must move by whole voxels"
    rounded = rounded.astype(int)
    inside = np.all((rounded >= 0) & (rounded < np.asarray(old.shape[:3])), axis=1)
    values = new[tuple(idx.T)]
    np.testing.assert_array_equal(values[inside], old[tuple(rounded[inside].T)])
    assert not values[~inside].any(), "voxels outside the old grid must be 0 (padding)"
    assert new.dtype == old.dtype
    return int(inside.sum())


# --------------------------------------------------------------------------- serialisation
def _every_step_recipe():
    return Recipe([
        Resample((2.0, 2.0, 2.5)),
        ResampleToShape((10, 10, 8)),
        MaskFromLabels("labels", "brain", if_missing=True),
        MaskFromImage("t2", "nonzero"),
        SkullStrip("brain", "t1"),
        ZScore(mask="brain"),
        Clip(-3.0, 3.0),
        MinMax(image="t1"),
        HounsfieldWindow(level=0.25, width=3.0, image="t2"),
        CropOrPad((11, 9, 8)),
        CropAroundCentreOfMass((10, 8, 8), mask="brain"),
        Flip((0, 2)),
        MapLabels("labels", {"structures": MAPPING, "segmentation": MAPPING_AC},
                  require_present=False, keep_source=True),
    ], name="every step")


def test_recipe_json_round_trip_with_every_step():
    recipe = _every_step_recipe()
    # every step of this module (papers' own modules register more steps and test them)
    shared = {k for k, v in STEPS.items() if v.__module__ == Recipe.__module__}
    assert shared <= {s.name for s in recipe.steps}, "the recipe must use every known step"
    text = json.dumps(recipe.to_dict())
    back = Recipe.from_dict(json.loads(text))
    assert back == recipe
    assert back.name == "every step"
    assert back.to_dict() == recipe.to_dict()
    # step by step: same classes, same parameters (tuples restored, LabelMapping objects rebuilt)
    for a, b in zip(recipe.steps, back.steps):
        assert type(a) is type(b) and a == b
    maps = back.steps[-1].mappings
    assert isinstance(maps["structures"], LabelMapping) and maps["structures"] == MAPPING
    assert maps["segmentation"].ids == {"A": [10, 11], "C": [30]}
    assert back.label_names() == {"structures": ["A", "B", "C"], "segmentation": ["A", "C"]}
    # the round-tripped recipe preprocesses identically
    s1, s2 = recipe(_sample(_affine())), back(_sample(_affine()))
    np.testing.assert_array_equal(s1.affine, s2.affine)
    for kind in ("images", "labels", "masks"):
        a, b = getattr(s1, kind), getattr(s2, kind)
        assert list(a) == list(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_unknown_step_name_is_named():
    with pytest.raises(ValueError, match="no-such-step"):
        Recipe.from_dict({"name": "x", "steps": [{"step": "z-score"}, {"step": "no-such-step"}]})
    with pytest.raises(ValueError, match="bogus"):
        Recipe.from_dict({"steps": [{"step": "clip", "bogus": 1}]})


# --------------------------------------------------------------------------- intensity steps
def test_zscore_against_numpy_over_the_mask():
    s = _sample()
    t1, t2, brain = s.images["t1"].copy(), s.images["t2"].copy(), s.masks["brain"]
    ZScore(mask="brain")(s)
    for key, raw in (("t1", t1), ("t2", t2)):
        v = raw[brain].astype(np.float64)
        expected = np.where(brain, (raw - v.mean()) / v.std(ddof=0), 0.0)
        np.testing.assert_allclose(s.images[key], expected, rtol=0, atol=1e-5)
        assert s.images[key].dtype == np.float32
        assert not s.images[key][~brain].any()
        assert abs(float(s.images[key][brain].mean())) < 1e-5
        assert abs(float(s.images[key][brain].std()) - 1.0) < 1e-5
    # one image only, whole volume
    s = _sample()
    t2 = s.images["t2"].copy()
    ZScore(mask=None, image="t1")(s)
    np.testing.assert_allclose(s.images["t1"], (t1 - t1.mean(dtype=np.float64)) / t1.std(dtype=np.float64),
                               atol=1e-5)
    np.testing.assert_array_equal(s.images["t2"], t2)


def test_zscore_constant_image_names_the_file():
    s = _sample()
    s.images["t1"][:] = 7.0
    with pytest.raises(DataError, match="/x/t1.nii.gz"):
        ZScore(mask="brain", image="t1")(s)


def test_minmax_clip_and_hounsfield_window_hand_values():
    values = np.array([-1000.0, -160.0, 0.0, 40.0, 240.0, 1000.0, 3.5, -7.25], dtype=np.float32)
    data = np.zeros((2, 2, 2), dtype=np.float32)
    data.flat[:] = values

    def one(step):
        s = Sample("ct", {"ct": data.copy()})
        out = step(s).images["ct"]
        assert out.dtype == np.float32
        return out.ravel()

    # window level 40, width 400 -> [-160, 240] HU -> [0, 1]
    np.testing.assert_allclose(one(HounsfieldWindow(40.0, 400.0)),
                               [0.0, 0.0, 0.4, 0.5, 1.0, 1.0, 163.5 / 400, 152.75 / 400], atol=1e-7)
    np.testing.assert_allclose(one(Clip(-5.0, 5.0)), [-5, -5, 0, 5, 5, 5, 3.5, -5], atol=0)
    np.testing.assert_allclose(one(MinMax()), (values + 1000.0) / 2000.0, atol=1e-7)
    with pytest.raises(ValueError):
        one(Clip(1.0, 1.0))
    with pytest.raises(ValueError):
        one(HounsfieldWindow(0.0, 0.0))
    with pytest.raises(DataError, match="/c.nii: constant"):
        MinMax()(Sample("c", {"ct": np.ones((2, 2, 2), np.float32)}, sources={"ct": "/c.nii"}))


def test_skull_strip_zeroes_outside_the_mask_only():
    s = _sample()
    t1, t2, brain = s.images["t1"].copy(), s.images["t2"].copy(), s.masks["brain"]
    SkullStrip("brain", image="t1")(s)
    np.testing.assert_array_equal(s.images["t1"], np.where(brain, t1, 0))
    np.testing.assert_array_equal(s.images["t2"], t2)          # only the named image
    SkullStrip("brain")(s)
    np.testing.assert_array_equal(s.images["t2"], np.where(brain, t2, 0))
    s.masks["empty"] = np.zeros(SHAPE, bool)
    with pytest.raises(DataError, match="empty"):
        SkullStrip("empty")(s)


# --------------------------------------------------------------------------- geometry steps
def _landmark_setup(affine):
    """A sample with bright marker voxels (values 1000, 2000, 3000) at three landmarks."""
    s = _sample(affine)
    marks = np.array([[3, 4, 2], [8, 2, 5], [5, 7, 6]])
    for n, p in enumerate(marks):
        s.images["t1"][tuple(p)] = 1000.0 * (n + 1)
    s.landmarks = _to_world(affine, marks)
    return s


def _assert_landmarks_on_markers(sample):
    vox = sample.landmarks_voxels()
    rounded = np.rint(vox)
    np.testing.assert_allclose(vox, rounded, atol=1e-9)
    for n, p in enumerate(rounded.astype(int)):
        assert sample.image[tuple(p)] == 1000.0 * (n + 1)


@pytest.mark.parametrize("affine", [_affine(), _rotated_affine()], ids=["diagonal", "rotated"])
def test_crop_or_pad_keeps_world_coordinates(affine):
    s = _landmark_setup(affine)
    old = copy.deepcopy(s)
    # crop axis 0 (12 -> 9), pad axis 1 (10 -> 13), keep axis 2
    out = CropOrPad((9, 13, 8))(s)
    assert out.shape == (9, 13, 8)
    # the documented centred start: (old - new) // 2 = (1, -2, 0)
    expected_affine = affine @ np.array([[1, 0, 0, 1], [0, 1, 0, -2], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(out.affine, expected_affine, atol=1e-12)
    # one kept voxel by hand: new (0, 2, 0) is old (1, 0, 0)
    np.testing.assert_allclose(out.affine @ [0, 2, 0, 1], affine @ [1, 0, 0, 1], atol=1e-12)
    assert out.images["t1"][0, 2, 0] == old.images["t1"][1, 0, 0]
    for kind in ("images", "labels", "masks"):
        for k in getattr(old, kind):
            kept = _assert_world_kept(getattr(old, kind)[k], affine, getattr(out, kind)[k],
                                      out.affine)
            assert kept == 9 * 10 * 8
    _assert_landmarks_on_markers(old)
    _assert_landmarks_on_markers(out)
    np.testing.assert_array_equal(out.landmarks, old.landmarks)   # world mm, unchanged


@pytest.mark.parametrize("affine", [_affine(), _rotated_affine()], ids=["diagonal", "rotated"])
def test_crop_around_centre_of_mass_keeps_world_coordinates(affine):
    s = _landmark_setup(affine)
    # an off-centre brain, so the crop really translates
    brain = np.zeros(SHAPE, bool)
    brain[5:12, 4:10, 1:6] = True
    brain[3:5, 5:7, 2:4] = True
    s.masks["brain"] = brain
    old = copy.deepcopy(s)
    box = (10, 12, 8)   # crops x and pads z (start -1): every landmark stays inside
    out = CropAroundCentreOfMass(box, mask="brain")(s)
    com = np.asarray(ndimage.center_of_mass(brain))
    start = np.floor(com - (np.asarray(box) - 1) / 2.0 + 0.5).astype(int)
    t = np.eye(4)
    t[:3, 3] = start
    np.testing.assert_allclose(out.affine, affine @ t, atol=1e-12)
    # the centre of mass is now within half a voxel of the box centre
    new_com = np.asarray(ndimage.center_of_mass(out.masks["brain"]))
    assert np.all(np.abs(new_com - (np.asarray(box) - 1) / 2.0) <= 0.5 + 1e-9)
    for kind in ("images", "labels", "masks"):
        for k in getattr(old, kind):
            _assert_world_kept(getattr(old, kind)[k], affine, getattr(out, kind)[k], out.affine)
    _assert_landmarks_on_markers(out)
    # shape=None keeps the volume's shape rounded up to a multiple of 4: (12, 12, 8)
    out2 = CropAroundCentreOfMass(None)(copy.deepcopy(old))
    assert out2.shape == (12, 12, 8)
    _assert_world_kept(old.images["t1"], affine, out2.images["t1"], out2.affine)


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 2), (0, 1, 2), (-1,)])
def test_flip_keeps_world_coordinates(axes):
    affine = _rotated_affine()
    s = _landmark_setup(affine)
    old = copy.deepcopy(s)
    out = Flip(axes)(s)
    pos = sorted({a % 3 for a in axes})
    np.testing.assert_array_equal(out.images["t1"], np.flip(old.images["t1"], axis=tuple(pos)))
    # voxel 0 along a flipped axis is the old last voxel, at the same world point
    last = np.zeros(3)
    last[pos] = np.asarray(SHAPE)[pos] - 1
    np.testing.assert_allclose(out.affine @ [0, 0, 0, 1], affine @ [*last, 1], atol=1e-9)
    np.testing.assert_allclose(out.affine[3], [0, 0, 0, 1])
    for kind in ("images", "labels", "masks"):
        for k in getattr(old, kind):
            assert _assert_world_kept(getattr(old, kind)[k], affine, getattr(out, kind)[k],
                                      out.affine) == int(np.prod(SHAPE))
    _assert_landmarks_on_markers(out)


# --------------------------------------------------------------------------- resampling
def test_resample_equals_resample_to_spacing():
    affine = _affine()
    s = _sample(affine, landmarks=np.array([[1.0, 2.0, 3.0]]))
    old = copy.deepcopy(s)
    out = Resample(2.0)(s)
    ref = {}
    for kind, label in (("images", False), ("labels", True), ("masks", True)):
        for k, arr in getattr(old, kind).items():
            vol = resample_to_spacing(Volume(np.asarray(arr), affine, k), 2.0, label=label)
            got = getattr(out, kind)[k]
            if kind == "masks":
                assert got.dtype == bool
                np.testing.assert_array_equal(got, vol.data != 0)
            else:
                assert got.dtype == (np.int32 if label else np.float32)
                np.testing.assert_array_equal(got, vol.data)
            ref[k] = vol.affine
    for a in ref.values():
        np.testing.assert_allclose(out.affine, a, atol=1e-9)
    np.testing.assert_allclose(out.spacing, 2.0, atol=1e-9)
    np.testing.assert_array_equal(out.landmarks, old.landmarks)
    # already at the spacing: untouched (same objects)
    again = Resample(2.0)(out)
    assert again.images["t1"] is out.images["t1"]


def test_resample_to_shape_exact_shape_same_field_of_view_and_linear_values():
    affine = _affine()
    # a linear ramp in world coordinates: linear interpolation reproduces it exactly inside
    world = _to_world(affine, _indices(SHAPE)).reshape(*SHAPE, 3)
    coef = np.array([0.5, -1.25, 2.0])
    ramp = (world @ coef + 3.0).astype(np.float32)
    lab = _raw_labels()
    s = Sample("r", {"ramp": ramp}, {"labels": lab}, {"brain": lab > 0}, affine=affine)
    shape = (9, 7, 5)
    out = ResampleToShape(shape)(s)
    assert out.shape == shape and out.labels["labels"].shape == shape
    assert out.masks["brain"].shape == shape and out.masks["brain"].dtype == bool
    assert out.labels["labels"].dtype == np.int32
    # field of view: both outer corners keep their world coordinates
    for old_c, new_c in (([-0.5] * 3, [-0.5] * 3),
                         (np.asarray(SHAPE) - 0.5, np.asarray(shape) - 0.5)):
        np.testing.assert_allclose(out.affine @ [*new_c, 1], affine @ [*old_c, 1], atol=1e-6)
    np.testing.assert_allclose(out.spacing, np.asarray(SPACING) * np.asarray(SHAPE) / shape,
                               atol=1e-9)
    # values: the ramp at new voxel centres that lie inside the old voxel centres' hull
    idx = _indices(shape)
    new_world = _to_world(out.affine, idx)
    old_idx = np.linalg.solve(affine, np.c_[new_world, np.ones(len(idx))].T).T[:, :3]
    inside = np.all((old_idx >= 0) & (old_idx <= np.asarray(SHAPE) - 1), axis=1)
    assert inside.sum() > 50
    np.testing.assert_allclose(out.images["ramp"][tuple(idx[inside].T)],
                               new_world[inside] @ coef + 3.0, atol=2e-4)
    # labels: the old voxel nearest to each new voxel centre (ties skipped)
    frac = old_idx - np.floor(old_idx)
    clear = np.all(np.abs(frac - 0.5) > 1e-6, axis=1) & np.all(
        (np.floor(old_idx + 0.5) >= 0) & (np.floor(old_idx + 0.5) <= np.asarray(SHAPE) - 1), axis=1)
    near = np.floor(old_idx[clear] + 0.5).astype(int)
    np.testing.assert_array_equal(out.labels["labels"][tuple(idx[clear].T)], lab[tuple(near.T)])
    np.testing.assert_array_equal(out.masks["brain"], out.labels["labels"] > 0)


# --------------------------------------------------------------------------- labels
def _label_subject(tmp_path, shape=SHAPE, **kw):
    affine = _affine()
    img = _save(tmp_path / "img.nii.gz", _image(shape), affine)
    lab = _save(tmp_path / "lab.nii.gz", _raw_labels(shape).astype(np.int16), affine)
    return Subject("s1", img, lab, **kw), lab


def test_map_labels_maps_ids_and_drops_the_raw_map(tmp_path):
    subject, lab_path = _label_subject(tmp_path)
    raw = _raw_labels()
    sample = MapLabels("labels", {"structures": MAPPING, "segmentation": MAPPING_AC})(
        read_subject(subject))
    expected = np.zeros(SHAPE, np.int32)
    expected[np.isin(raw, [10, 11])] = 1
    expected[raw == 20] = 2
    expected[raw == 30] = 3
    np.testing.assert_array_equal(sample.labels["structures"], expected)
    assert sample.labels["structures"].dtype == np.int32
    seg = np.where(expected == 3, 2, np.where(expected == 1, 1, 0))
    np.testing.assert_array_equal(sample.labels["segmentation"], seg)
    assert set(sample.labels) == {"structures", "segmentation"}     # raw map dropped
    assert sample.sources["structures"] == lab_path
    kept = MapLabels("labels", {"structures": MAPPING}, keep_source=True)(read_subject(subject))
    np.testing.assert_array_equal(kept.labels["labels"], raw)
    # mapping onto the source's own name replaces it
    same = MapLabels("labels", {"labels": MAPPING})(read_subject(subject))
    np.testing.assert_array_equal(same.labels["labels"], expected)


def test_map_labels_missing_class_after_cropping_names_the_file(tmp_path):
    subject, lab_path = _label_subject(tmp_path)
    # class C (id 30) lies at x 8..10: a centred 6-voxel crop along x (start 3) keeps x 3..8 only
    # -> C still present at x = 8; a 4-voxel crop (start 4, x 4..7) removes it
    recipe = Recipe([CropOrPad((4, 10, 8)), MapLabels("labels", {"structures": MAPPING})])
    with pytest.raises(DataError) as err:
        recipe(read_subject(subject))
    assert lab_path in str(err.value) and "C" in str(err.value)
    ds = SubjectDataset("t", False, [subject], recipe)
    with pytest.raises(DataError, match="lab.nii.gz"):
        ds.load(0)
    ok = Recipe([CropOrPad((6, 10, 8)), MapLabels("labels", {"structures": MAPPING})])
    assert set(np.unique(ok(read_subject(subject)).labels["structures"])) == {0, 1, 2, 3}
    lenient = Recipe([CropOrPad((4, 10, 8)),
                      MapLabels("labels", {"structures": MAPPING}, require_present=False)])
    assert 3 not in lenient(read_subject(subject)).labels["structures"]


def test_map_labels_without_the_source_does_nothing(tmp_path):
    img = _save(tmp_path / "img.nii.gz", _image(), _affine())
    sample = read_subject(Subject("u", img))
    before = sample.images["image"].copy()
    out = MapLabels("labels", {"structures": MAPPING})(sample)
    assert out.labels == {} and out.masks == {}
    np.testing.assert_array_equal(out.images["image"], before)
    with pytest.raises(DataError, match="structures"):
        out.structures


# --------------------------------------------------------------------------- absent parts
@pytest.mark.parametrize("step, kind, part", [
    (MaskFromLabels(), "label", "labels"),
    (ZScore(mask="liver"), "mask", "liver"),
    (SkullStrip("liver"), "mask", "liver"),
    (CropAroundCentreOfMass((4, 4, 4), mask="liver"), "mask", "liver"),
    (MaskFromImage("t2"), "image", "t2"),
    (ZScore(mask=None, image="t2"), "image", "t2"),
])
def test_step_needing_an_absent_part_names_subject_step_and_part(tmp_path, step, kind, part):
    img = _save(tmp_path / "img.nii.gz", _image(), _affine())
    subject = Subject("IXI999-unlabelled", img)
    with pytest.raises(DataError) as err:
        step(read_subject(subject))
    msg = str(err.value)
    assert "IXI999-unlabelled" in msg and f"'{step.name}'" in msg and f"{kind} '{part}'" in msg
    with pytest.raises(DataError, match="IXI999-unlabelled"):
        SubjectDataset("t", False, [subject], Recipe([step])).load(0)


def test_mask_from_labels_and_from_image(tmp_path):
    subject, _ = _label_subject(tmp_path)
    s = MaskFromLabels()(read_subject(subject))
    np.testing.assert_array_equal(s.masks["brain"], _raw_labels() > 0)
    # if_missing keeps an existing mask
    s.masks["brain"] = np.zeros(SHAPE, bool)
    s.masks["brain"][0, 0, 0] = True
    MaskFromLabels(if_missing=True)(s)
    assert s.masks["brain"].sum() == 1
    img = _image()
    img[:3] = 0
    sample = Sample("m", {"t1": img})
    np.testing.assert_array_equal(MaskFromImage(mask="head")(sample).masks["head"], img != 0)


# --------------------------------------------------------------------------- U-ReSNet on ixi10
def test_ureSnet_recipe_equals_the_hand_pipeline_on_real_ixi10(ixi10_root):
    sid = "IXI012-HH-1211"
    img_path = ixi10_root / "images" / f"{sid}-T1.nii.gz"
    lab_path = ixi10_root / "labels" / f"{sid}-T1.nii.gz"
    if not img_path.is_file():
        pytest.skip(f"{img_path} not found")
    recipe = ureSnet_recipe((80, 104, 88), DLMUSE_TABLE1, DLMUSE_SEGMENTATION)
    sample = SubjectDataset("ixi", False, [Subject(sid, {"t1": str(img_path)},
                                                   {"labels": str(lab_path)})], recipe).load(0)

    image, label = load_volume(img_path), load_volume(lab_path, label=True)
    brain = label.data > 0
    norm = normalise_zscore(image.data, brain)
    (img_c, lab_c, brain_c), affine = crop_around_centre_of_mass(
        [norm, label.data, brain], brain, (80, 104, 88), image.affine)

    assert list(sample.images) == ["t1"] and set(sample.labels) == {"structures", "segmentation"}
    np.testing.assert_array_equal(sample.images["t1"], img_c)
    assert sample.images["t1"].dtype == np.float32
    np.testing.assert_array_equal(sample.labels["structures"], DLMUSE_TABLE1.apply(lab_c))
    np.testing.assert_array_equal(sample.labels["segmentation"], DLMUSE_SEGMENTATION.apply(lab_c))
    np.testing.assert_array_equal(sample.masks["brain"], brain_c)
    np.testing.assert_array_equal(sample.affine, affine)
    assert sample.shape == (80, 104, 88)


# --------------------------------------------------------------------------- grids
def test_two_modalities_on_different_grids_check_names_both_files(tmp_path):
    a = _save(tmp_path / "t1.nii.gz", _image(), _affine())
    b = _save(tmp_path / "t2.nii.gz", _image()[1:], _affine())
    with pytest.raises(DataError) as err:
        read_subject(Subject("s", {"t1": a, "t2": b}))
    assert a in str(err.value) and b in str(err.value)
    c = _save(tmp_path / "t2b.nii.gz", _image(), _affine(origin=(0.0, 0.0, 0.0)))
    with pytest.raises(DataError) as err:
        read_subject(Subject("s", {"t1": a, "t2": c}, common_grid="check"))
    assert a in str(err.value) and c in str(err.value)
    lab = _save(tmp_path / "lab.nii.gz", _raw_labels()[:, :, 1:].astype(np.int16), _affine())
    with pytest.raises(DataError) as err:
        read_subject(Subject("s", a, lab))
    assert a in str(err.value) and lab in str(err.value)


def test_resample_onto_the_first_grid_whole_voxel_shift(tmp_path):
    affine = _affine()
    t1 = _image()
    raw = _raw_labels()
    shift = np.array([2, 1, 0])
    t1_path = _save(tmp_path / "t1.nii.gz", t1, affine)
    # the second image, its labels and mask: the first grid's content from voxel (2, 1, 0) on,
    # stored on a grid whose voxel 0 is at the first grid's voxel (2, 1, 0)
    t = np.eye(4)
    t[:3, 3] = shift
    aff2 = affine @ t
    t2_path = _save(tmp_path / "t2.nii.gz", 3.0 * t1[2:, 1:, :] + 1.0, aff2)
    lab_path = _save(tmp_path / "lab.nii.gz", raw[2:, 1:, :].astype(np.int16), aff2)
    mask_path = _save(tmp_path / "mask.nii.gz", (raw[2:, 1:, :] > 0).astype(np.uint8) * 255, aff2)
    s = read_subject(Subject("s", {"t1": t1_path, "t2": t2_path}, lab_path, mask_path,
                             common_grid="resample"))
    np.testing.assert_array_equal(s.affine, load_volume(t1_path).affine)
    expected = np.zeros(SHAPE, np.float32)
    expected[2:, 1:, :] = 3.0 * t1[2:, 1:, :] + 1.0
    np.testing.assert_allclose(s.images["t2"], expected, atol=1e-3)
    assert s.images["t2"].dtype == np.float32
    exp_lab = np.zeros(SHAPE, np.int32)
    exp_lab[2:, 1:, :] = raw[2:, 1:, :]
    np.testing.assert_array_equal(s.labels["labels"], exp_lab)
    assert s.masks["brain"].dtype == bool
    np.testing.assert_array_equal(s.masks["brain"], exp_lab > 0)
    np.testing.assert_array_equal(s.images["t1"], t1)


def test_resample_onto_the_first_grid_matches_simpleitk(tmp_path):
    affine = _affine()
    t1_path = _save(tmp_path / "t1.nii.gz", _image(), affine)
    # second modality: other spacing, other origin, other shape
    aff2 = _affine(spacing=(2.0, 1.75, 3.0), origin=(-18.3, 8.1, 2.0))
    t2 = _image((9, 11, 7), seed=5)
    t2_path = _save(tmp_path / "t2.nii.gz", t2, aff2)
    lab2 = np.zeros((9, 11, 7), np.int16)
    lab2[2:7, 3:9, 1:6] = 4
    lab2[4:6, 5:7, 2:4] = 9
    lab_path = _save(tmp_path / "lab.nii.gz", lab2, aff2)
    s = read_subject(Subject("s", {"t1": t1_path, "t2": t2_path}, lab_path,
                             common_grid="resample"))
    # SimpleITK reads both files itself (its own NIfTI -> LPS conversion) and resamples
    ref = sitk.ReadImage(t1_path)
    for path, interp, got in ((t2_path, sitk.sitkLinear, s.images["t2"]),
                              (lab_path, sitk.sitkNearestNeighbor, s.labels["labels"])):
        moving = sitk.Cast(sitk.ReadImage(path), sitk.sitkFloat32)
        res = sitk.Resample(moving, ref, sitk.Transform(), interp, 0.0)
        expected = sitk.GetArrayFromImage(res).transpose(2, 1, 0)
        np.testing.assert_allclose(got, expected, atol=1e-3)
    assert set(np.unique(s.labels["labels"])) <= {0, 4, 9} and (s.labels["labels"] == 9).any()


# --------------------------------------------------------------------------- landmarks
def test_read_landmarks_csv_with_and_without_header(tmp_path):
    pts = np.array([[1.5, -2.0, 3.25], [0.0, 10.0, -7.5]])
    plain = tmp_path / "plain.csv"
    plain.write_text("1.5,-2,3.25\n0,10,-7.5\n")
    header = tmp_path / "header.csv"
    header.write_text("x,y,z\n1.5,-2,3.25\n\n0,10,-7.5\n")
    semi = tmp_path / "semi.csv"
    semi.write_text("x;y;z\n1.5;-2;3.25\n0;10;-7.5\n")
    for path in (plain, header, semi):
        got = read_landmarks_csv(path)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, pts)
    # through a subject: world mm kept on the sample
    img = _save(tmp_path / "img.nii.gz", _image(), _affine())
    s = read_subject(Subject("s", img, landmarks=str(header)))
    np.testing.assert_array_equal(s.landmarks, pts)
    np.testing.assert_allclose(s.landmarks_voxels(),
                               (pts - np.asarray(ORIGIN)) / np.asarray(SPACING), atol=1e-12)


@pytest.mark.parametrize("text", ["x,y,z\n1,2,three\n", "1,2\n3,4\n", "1,2,3\n4,5\n", "x,y,z\n",
                                  ""])
def test_read_landmarks_csv_bad_rows_name_the_file(tmp_path, text):
    path = tmp_path / "bad_points.csv"
    path.write_text(text)
    with pytest.raises(DataError, match="bad_points.csv"):
        read_landmarks_csv(path)
    with pytest.raises(DataError, match="missing.csv"):
        read_landmarks_csv(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- splits
def test_split_subjects_groups_by_subject_group_by_default():
    subjects = []
    for g in range(8):
        for k in range(1 + g % 3):
            subjects.append(Subject(f"sess{g}_{k}", f"/i/{g}_{k}.nii.gz", group=f"subj{g}"))
    # 8 groups of 1, 2, 3, 1, 2, 3, 1, 2 sessions (15 in all)
    for seed in range(6):
        parts = split_subjects(subjects, (8, 3, 4), seed=seed)
        owner = {}
        for k, part in enumerate(parts):
            for s in part:
                assert owner.setdefault(s.group, k) == k, f"group {s.group} straddles splits"
        for part, size in zip(parts, (8, 3, 4)):
            assert 0 < len(part) <= size
        # every group taken is taken whole
        for g in owner:
            n = sum(1 for s in subjects if s.group == g)
            assert sum(1 for p in parts for s in p if s.group == g) == n
    # without groups (group None) each subject is alone: exact sizes
    alone = [Subject(f"a{i}", f"/i/{i}.nii.gz") for i in range(15)]
    assert [len(p) for p in split_subjects(alone, (8, 3, 4), seed=0)] == [8, 3, 4]
    # an explicit group_key overrides Subject.group
    parts = split_subjects(subjects, (8, 3, 4), seed=0, group_key=lambda s: s.subject_id)
    assert [len(p) for p in parts] == [8, 3, 4]


def test_flip_rejects_non_spatial_axes():
    with pytest.raises(ValueError, match="axes"):
        Flip((3,))(_sample())


def test_fractional_mask_resampled_onto_the_first_grid_stays_inside(tmp_path):
    """'non-zero = inside' must hold whether or not the mask needs resampling."""
    affine = _affine()
    t1_path = _save(tmp_path / "t1.nii.gz", _image(), affine)
    t = np.eye(4)
    t[:3, 3] = (1, 0, 0)
    soft = np.zeros((11, 10, 8), np.float32)
    soft[2:6, 3:7, 2:5] = 0.6             # e.g. a probabilistic mask
    same = _save(tmp_path / "same.nii.gz", np.concatenate([np.zeros((1, 10, 8), np.float32), soft]),
                 affine)
    shifted = _save(tmp_path / "shifted.nii.gz", soft, affine @ t)
    expected = np.zeros(SHAPE, bool)
    expected[3:7, 3:7, 2:5] = True
    on_grid = read_subject(Subject("s", t1_path, masks=same))
    np.testing.assert_array_equal(on_grid.masks["brain"], expected)
    resampled = read_subject(Subject("s", t1_path, masks=shifted, common_grid="resample"))
    np.testing.assert_array_equal(resampled.masks["brain"], expected)
