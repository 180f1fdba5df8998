"""The registration pyramid (Gunnarsson et al. 2020): blocks checked against numpy by hand.

* the DenseNet estimator (module D) against a numpy re-implementation (3x3x3 convolutions,
  LeakyReLU, batch norm in inference mode, dense concatenation) with random weights;
* the cost volume inside the model against a brute-force loop over voxels and offsets;
* the per-level loss weights of §3 against the values written out by hand, and the total loss
  of the training model against the weighted sum of its per-level terms, each term recomputed in
  numpy (pooled images, global NCC, soft Dice over present labels);
* the affine module, global NCC and the present-label Dice against hand computations.
"""

import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from regseg.layers.pyramid import (AffineDisplacement, normalised_cross_correlation,
                                   soft_dice_present)
from regseg.reproductions.pyramid.model import (PyramidConfig, build_pyramid, compile_losses,
                                                densenet_estimator, loss_weights,
                                                upsample_displacement)


# ----------------------------------------------------------------------------- numpy references
def _conv3d_same(x, kernel, bias):
    """x (D, H, W, Ci), kernel (3, 3, 3, Ci, Co): cross-correlation, zero 'same' padding."""
    pad = np.pad(x, ((1, 1), (1, 1), (1, 1), (0, 0)))
    d, h, w, _ = x.shape
    out = np.zeros((d, h, w, kernel.shape[-1]))
    for a, b, c in itertools.product(range(3), repeat=3):
        out += np.einsum("xyzi,io->xyzo", pad[a:a + d, b:b + h, c:c + w], kernel[a, b, c])
    return out + bias


def _block_numpy(model, name, x, slope):
    k, b = model.get_layer(f"{name}_conv").get_weights()
    y = _conv3d_same(x, k, b)
    y = np.where(y > 0, y, slope * y)
    gamma, beta, mean, var = model.get_layer(f"{name}_norm").get_weights()
    eps = model.get_layer(f"{name}_norm").epsilon
    return gamma * (y - mean) / np.sqrt(var + eps) + beta


def _randomise(model, rng):
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = weights
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, .1, beta.shape),
                               rng.normal(0, .1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
        else:
            layer.set_weights([rng.normal(0, 0.2, w.shape) for w in weights])


def test_densenet_estimator_matches_numpy():
    config = PyramidConfig(densenet_filters=(3, 2, 2, 1, 2))
    x_in = keras.Input((4, 5, 3, 2))
    model = keras.Model(x_in, densenet_estimator(x_in, config, "d"))
    rng = np.random.default_rng(0)
    _randomise(model, rng)
    x = rng.normal(size=(1, 4, 5, 3, 2)).astype(np.float32)
    got = np.asarray(model(x, training=False))[0]

    feats = x[0].astype(np.float64)
    for k in range(1, 6):                      # each block sees everything before it
        y = _block_numpy(model, f"d_dense{k}", feats, config.negative_slope)
        feats = np.concatenate([feats, y], axis=-1)
    assert feats.shape[-1] == 2 + 3 + 2 + 2 + 1 + 2
    k, b = model.get_layer("d_flow").get_weights()
    expected = _conv3d_same(feats, k, b)
    assert got.shape == (4, 5, 3, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_paper_densenet_widths_and_parameter_count_by_hand():
    """§2.1's DenseNet (64, 64, 32, 18, 8 + 3) on c input channels, parameters counted by hand."""
    config = PyramidConfig()
    c = 125 + 32 + 3                           # cost volume, fixed features, displacement
    x_in = keras.Input((4, 4, 4, c))
    model = keras.Model(x_in, densenet_estimator(x_in, config, "d"))
    expected, width = 0, c
    for f in (64, 64, 32, 18, 8):
        expected += 27 * width * f + f + 4 * f  # conv kernel + bias + batch norm (4 per channel)
        width += f
    expected += 27 * width * 3 + 3
    assert model.count_params() == expected


# ----------------------------------------------------------------------------- cost volume
def _brute_cost_volume(fixed, moving, d):
    spatial = fixed.shape[:3]
    offsets = list(itertools.product(range(-d, d + 1), repeat=3))
    out = np.zeros((*spatial, len(offsets)))
    for x in np.ndindex(*spatial):
        for k, o in enumerate(offsets):
            y = tuple(a + b for a, b in zip(x, o))
            if all(0 <= a < s for a, s in zip(y, spatial)):
                out[(*x, k)] = np.mean(fixed[x] * moving[y])
    return out


@pytest.fixture(scope="module")
def small_pyramid():
    config = PyramidConfig(input_shape=(32, 32, 32), n_labels=3)
    train, predict = build_pyramid(config)
    return config, train, predict


def test_cost_volume_inside_the_model_matches_brute_force(small_pyramid):
    _, _, predict = small_pyramid
    layer = predict.get_layer("l3_cost_volume")
    probe = keras.Model(predict.inputs, [layer.input[0], layer.input[1], layer.output])
    rng = np.random.default_rng(1)
    x = {k: rng.random((1, 32, 32, 32, 1), dtype=np.float32) for k in ("moving", "fixed")}
    fixed, moving, cv = (np.asarray(t)[0] for t in probe(x, training=False))
    assert cv.shape == (4, 4, 4, 125)          # level 3 of a 32^3 input, d = 2 (§3)
    np.testing.assert_allclose(cv, _brute_cost_volume(fixed.astype(np.float64),
                                                      moving.astype(np.float64), 2),
                               rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- losses
def test_loss_weights_are_section_3_values_written_out():
    w = loss_weights(4, "paper")
    assert w["lambda"] == 5.0
    assert w["gamma"] == [5.0, 2.5, 1.25, 0.625, 0.3125]
    assert w["alpha"] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert w["beta"] == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert loss_weights(4, "released")["beta"] == [10.0, 5.0, 2.5, 1.25, 0.625]
    with pytest.raises(ValueError, match="weights"):
        loss_weights(4, "other")
    _, weights = compile_losses(PyramidConfig())
    assert weights["dice"] == 5.0 and weights["ncc_3"] == 0.625 and weights["affine_4"] == 16.0
    assert weights["grad_2"] == 0.25 and len(weights) == 1 + 3 * 5


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-5))


def _pool(x, f):
    if f == 1:
        return x
    s = x.shape
    return x.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def test_total_loss_is_the_weighted_sum_of_the_per_level_terms(small_pyramid):
    config, train, _ = small_pyramid
    loss, weights = compile_losses(config)
    train.compile(optimizer="adam", loss=loss, loss_weights=weights, run_eagerly=True)
    rng = np.random.default_rng(2)
    fixed = rng.random((32, 32, 32)).astype(np.float32)
    moving = np.clip(fixed + rng.normal(0, 0.3, fixed.shape), 0, 1).astype(np.float32)
    f_lab = np.zeros((32, 32, 32), int)
    f_lab[8:20, 8:20, 8:20] = 1
    m_lab = np.zeros_like(f_lab)
    m_lab[10:22, 8:20, 8:20] = 1               # label 2 and 3 absent: must not count
    eye = np.eye(4, dtype=np.float32)
    x = {"moving": moving[None, ..., None], "fixed": fixed[None, ..., None],
         "moving_seg": eye[m_lab][None], "fixed_seg": eye[f_lab][None]}
    y = {k: np.zeros((1,), np.float32) for k in loss}
    terms = {k: float(np.asarray(v)[0]) for k, v in train(x, training=False).items()}
    # at initialisation the displacement is ~0 (flow convolutions ~N(0, 1e-5), affine = I), so
    # each term equals its numpy value for the identity
    for level in range(5):
        f = 2 ** level
        assert terms[f"ncc_{level}"] == pytest.approx(-_ncc(_pool(fixed, f), _pool(moving, f)),
                                                      abs=2e-3)
        assert abs(terms[f"affine_{level}"]) < 1e-6 and abs(terms[f"grad_{level}"]) < 1e-4
    inter = np.logical_and(f_lab == 1, m_lab == 1).sum()
    dice = (2 * inter + 1e-5) / ((f_lab == 1).sum() + (m_lab == 1).sum() + 1e-5)
    assert terms["dice"] == pytest.approx(1 - dice, abs=2e-3)
    result = train.test_on_batch(x, y, return_dict=True)
    expected = sum(weights[k] * result[f"{k}_loss"] for k in loss)
    assert result["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert expected == pytest.approx(sum(weights[k] * terms[k] for k in loss), abs=1e-4)


def test_global_ncc_against_numpy_and_local_variant_range():
    rng = np.random.default_rng(3)
    a = rng.random((2, 6, 7, 5, 1)).astype(np.float32)
    b = (0.5 * a + rng.random(a.shape) * 0.5).astype(np.float32)
    got = np.asarray(normalised_cross_correlation(a, b))
    np.testing.assert_allclose(got, [_ncc(a[i], b[i]) for i in range(2)], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(normalised_cross_correlation(a, 3 * a + 1)), 1.0,
                               atol=1e-4)
    local = np.asarray(normalised_cross_correlation(a, b, kind="local", window=3))
    assert np.all((local >= 0) & (local <= 1))
    with pytest.raises(ValueError, match="kind"):
        normalised_cross_correlation(a, b, kind="mutual")


def test_soft_dice_over_present_labels_by_hand():
    eye = np.eye(4, dtype=np.float32)
    t = eye[np.array([[0, 1, 1, 2]])]          # labels 1, 2 present; 3 absent everywhere
    p = eye[np.array([[0, 1, 0, 0]])]
    s = 1e-5
    d1 = (2 * 1 + s) / (2 + 1 + s)
    d2 = (0 + s) / (1 + 0 + s)
    got = float(np.asarray(soft_dice_present(t, p))[0])
    assert got == pytest.approx((d1 + d2) / 2, rel=1e-5)  # label 3 does not count
    empty = eye[np.zeros((1, 4), int)]
    assert float(np.asarray(soft_dice_present(empty, empty))[0]) == 1.0


def test_affine_module_by_hand():
    shape = (4, 5, 6)
    centre = (np.asarray(shape) - 1) / 2
    params = np.zeros((1, 12), np.float32)
    params[0, 0] = 1.0                          # A[0, 0] = 2: doubling along axis 0
    params[0, 7] = 1.5                          # translation 1.5 voxels along axis 1
    u = np.zeros((1, *shape, 3), np.float32)
    u[..., 2] = 0.25
    composed, phi_a = (np.asarray(t)[0] for t in AffineDisplacement()([params, u]))
    x = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    expect_a = np.zeros_like(x)
    expect_a[..., 0] = x[..., 0] - centre[0]   # 2 (x - c) + c - x
    expect_a[..., 1] = 1.5
    np.testing.assert_allclose(phi_a, expect_a, atol=1e-5)
    expect_c = expect_a.copy()
    expect_c[..., 2] += 0.25                    # A [x + u; 1] - x, u only along axis 2
    np.testing.assert_allclose(composed, expect_c, atol=1e-5)
    released, _ = (np.asarray(t)[0] for t in
                   AffineDisplacement(affine_on="displacements")([params, u]))
    expect_r = np.zeros_like(x)
    expect_r[..., 1] = 1.5                      # A [u; 1]: the doubling acts on u (0 on axis 0)
    expect_r[..., 2] = 0.25
    np.testing.assert_allclose(released, expect_r, atol=1e-6)
    with pytest.raises(ValueError, match="affine_on"):
        AffineDisplacement(affine_on="grid")


def test_upsample_displacement_of_a_linear_field():
    coarse = np.stack(np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij"), -1)[..., :1] * \
        np.ones(3)                              # u = (x0, x0, x0) in coarse voxels
    fine = upsample_displacement(coarse.astype(np.float32), 2)
    assert fine.shape == (8, 8, 8, 3)
    i = np.arange(8)
    expected = np.clip((i + 0.5) / 2 - 0.5, 0, 3) * 2
    np.testing.assert_allclose(fine[:, 3, 3, 0], expected, atol=1e-5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiples of 2\\^levels"):
        build_pyramid(PyramidConfig(input_shape=(40, 32, 32)))


def test_training_pairs_stay_within_a_task_and_a_group():
    from regseg.datasets.learn2reg import TaskDatasets, TaskSpec
    from regseg.reproductions.pyramid.reproduction import task_pairs

    class Part:
        def __init__(self, n):
            self.n, self.subject_ids = n, [str(i) for i in range(n)]

        def __len__(self):
            return self.n

    train = TaskDatasets("x", False, {"lung": Part(6), "hippo": Part(5), "one": Part(1)}, None)
    tasks = {"lung": TaskSpec("lung", "", None, np.zeros((0, 2)), train_groups=[0, 0, 0, 1, 1, 2])}
    pairs = task_pairs(train, tasks, 7, 3, seed=5)
    assert pairs.shape == (3, 14, 2)                # 7 per task with >= 2 samples, 3 epochs
    np.testing.assert_array_equal(pairs, task_pairs(train, tasks, 7, 3, seed=5))
    group = {0: 0, 1: 0, 2: 0, 3: 1, 4: 1}          # sample 5 is alone in its group
    for m, f in pairs.reshape(-1, 2):
        assert m != f and (m < 6) == (f < 6) and 5 not in (m, f)
        if m < 6:
            assert group[m] == group[f]
