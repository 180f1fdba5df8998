"""DeepAtlas (Xu & Niethammer 2019) losses: eq. 3, 4, 5 against hand computation, and the
labeled / unlabeled case analysis of §2.2 (which loss terms reach which network)."""

import numpy as np
import pytest
import tensorflow as tf

from regseg.layers.correlation import NCCLoss, normalized_cross_correlation
from regseg.layers.normalised_coordinates import (NormalisedToVoxels, normalised_to_voxels,
                                                  voxel_scale, voxels_to_normalised)
from regseg.reproductions.deepatlas.model import (DeepAtlasConfig, DeepAtlasLosses,
                                                  anatomy_and_supervised,
                                                  build_registration_network,
                                                  build_segmentation_network, dice_loss, one_hot,
                                                  regularity_loss)


# ------------------------------------------------------------------------------------ eq. 3
def test_eq3_dice_against_hand_computation():
    # one sample, 4 voxels, K + 1 = 2 channels
    s = np.array([[[[[0.9, 0.1]], [[0.2, 0.8]], [[0.5, 0.5]], [[1.0, 0.0]]]]], np.float32)
    t = np.array([[[[[1, 0]], [[0, 1]], [[0, 1]], [[1, 0]]]]], np.float32)
    inter = (s * t).sum(axis=(1, 2, 3))[0]          # per channel: [1.9, 1.3]
    total = (s.sum(axis=(1, 2, 3)) + t.sum(axis=(1, 2, 3)))[0]  # [2.6 + 2, 1.4 + 2]
    np.testing.assert_allclose(inter, [1.9, 1.3], rtol=1e-6)
    np.testing.assert_allclose(total, [4.6, 3.4], rtol=1e-6)
    vnet = 1 - np.mean(2 * inter / total)
    printed = 1 - np.mean(inter / total)
    np.testing.assert_allclose(dice_loss(s, t, smooth=0.0), [vnet], rtol=1e-6)
    np.testing.assert_allclose(dice_loss(s, t, variant="as-printed", smooth=0.0), [printed],
                               rtol=1e-6)
    np.testing.assert_allclose(dice_loss(s, t, include_background=False, smooth=0.0),
                               [1 - 2 * 1.3 / 3.4], rtol=1e-6)
    # a perfect one-hot prediction: 0 (v-net) and 1/2 (as printed: its best value)
    np.testing.assert_allclose(dice_loss(t, t), [0.0], atol=1e-6)
    np.testing.assert_allclose(dice_loss(t, t, variant="as-printed"), [0.5], atol=1e-6)
    with pytest.raises(ValueError, match="dice variant"):
        dice_loss(s, t, variant="twice")


# ------------------------------------------------------------------------------------ eq. 4
def test_eq4_global_ncc_matches_numpy_pearson_and_spans_0_to_2():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 6, 5, 4, 1)).astype(np.float32)
    b = (0.5 * a + rng.normal(size=a.shape)).astype(np.float32)
    expected = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(2)]
    np.testing.assert_allclose(normalized_cross_correlation(a, b), expected, rtol=1e-5)
    loss = NCCLoss(reduction=None)
    np.testing.assert_allclose(loss(a, b), 1 - np.array(expected), rtol=1e-5)
    np.testing.assert_allclose(loss(a, 3 * a + 2), [0, 0], atol=1e-5)    # in [0, 2]
    np.testing.assert_allclose(loss(a, -a), [2, 2], atol=1e-5)
    assert NCCLoss.from_config(NCCLoss(eps=1e-3).get_config()).eps == 1e-3
    with pytest.raises(ValueError, match="shapes differ"):
        normalized_cross_correlation(a, b[:, :3])


def test_normalised_coordinates_to_voxels():
    assert voxel_scale((5, 9, 3)) == (2.0, 4.0, 1.0)     # (n - 1) / 2
    u = np.ones((1, 5, 9, 3, 3), np.float32)
    np.testing.assert_allclose(np.asarray(normalised_to_voxels(u))[0, 0, 0, 0], [2, 4, 1])
    np.testing.assert_allclose(voxels_to_normalised(normalised_to_voxels(u)), u, rtol=1e-6)
    np.testing.assert_allclose(NormalisedToVoxels()(u), normalised_to_voxels(u))
    with pytest.raises(ValueError, match=">= 2"):
        voxel_scale((1, 4))


# ------------------------------------------------------------------------------------ eq. 5
def _quadratic_field(shape, hessians):
    """u_k(x) = x^T A_k x / 2 (x in voxel indices): Hessian of component k is A_k."""
    x = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    u = np.stack([0.5 * np.einsum("...i,ij,...j->...", x, a, x) for a in hessians], -1)
    return u[None].astype(np.float32)


def test_eq5_on_a_quadratic_field_with_known_hessian():
    shape = (7, 9, 8)
    rng = np.random.default_rng(3)
    hessians = []
    for _ in range(3):
        m = rng.normal(scale=1e-3, size=(3, 3))
        hessians.append(m + m.T)
    u = _quadratic_field(shape, hessians)
    frobenius = sum(float((a ** 2).sum()) for a in hessians)  # sum_k ||A_k||_F^2 at every voxel
    np.testing.assert_allclose(regularity_loss(u, "eq5-voxel"), [frobenius], rtol=1e-3)
    np.testing.assert_allclose(regularity_loss(u, "released"), [frobenius / 27], rtol=1e-3)
    # literal reading: derivative w.r.t. x' = 2 x / (n - 1) multiplies H_ij by (n_i-1)(n_j-1)/4
    s = np.array([(n - 1) / 2 for n in shape])
    literal = sum(float(((a * np.outer(s, s)) ** 2).sum()) for a in hessians)
    np.testing.assert_allclose(regularity_loss(u, "eq5-unit"), [literal], rtol=1e-3)
    # affine fields bend nothing
    lin = _quadratic_field(shape, [np.zeros((3, 3))] * 3) + np.arange(3, dtype=np.float32)
    np.testing.assert_allclose(regularity_loss(lin), [0.0], atol=1e-10)
    with pytest.raises(ValueError, match="regulariser variant"):
        regularity_loss(u, "sum")


# -------------------------------------------------------------------- case analysis of §2.2
def _hand_dice(s, t):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    inter = (s * t).sum(axis=(1, 2, 3))
    total = s.sum(axis=(1, 2, 3)) + t.sum(axis=(1, 2, 3))
    return 1 - ((2 * inter + 1e-6) / (total + 1e-6)).mean(-1)


def test_case_analysis_values_match_the_four_cases():
    rng = np.random.default_rng(0)
    shape = (4, 3, 4, 3, 3)
    manual_m, manual_t = (np.eye(3, dtype=np.float32)[rng.integers(0, 3, shape[:4])]
                          for _ in range(2))
    pred_m, pred_t = (rng.dirichlet(np.ones(3), shape[:4]).astype(np.float32) for _ in range(2))
    shift = lambda x: np.roll(np.asarray(x), 1, axis=1)  # noqa: E731  (a stand-in warp)
    lm = np.array([1, 0, 1, 0], np.float32)   # cases: target unlabeled, moving unlabeled,
    lt = np.array([0, 1, 1, 0], np.float32)   # both labeled, both unlabeled
    l_a, l_sp = anatomy_and_supervised(shift, manual_m, manual_t, pred_m, pred_t, lm, lt,
                                       dice_fn=lambda a, b: dice_loss(a, b))
    expected_a = [_hand_dice(shift(manual_m)[0:1], pred_t[0:1])[0],      # S_m o Phi vs F_s(I_t)
                  _hand_dice(shift(pred_m)[1:2], manual_t[1:2])[0],      # F_s(I_m) o Phi vs S_t
                  _hand_dice(shift(manual_m)[2:3], manual_t[2:3])[0],    # S_m o Phi vs S_t
                  0.0]
    expected_sp = [_hand_dice(pred_m[0:1], manual_m[0:1])[0],            # F_s(I_m) vs S_m
                   _hand_dice(pred_t[1:2], manual_t[1:2])[0],            # F_s(I_t) vs S_t
                   _hand_dice(pred_m[2:3], manual_m[2:3])[0],            # F_s(I_m) vs S_m
                   0.0]
    np.testing.assert_allclose(l_a, expected_a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(l_sp, expected_sp, rtol=1e-5, atol=1e-7)
    # the baseline rule (§3): L_a only between two labeled images, no L_sp
    l_a, l_sp = anatomy_and_supervised(shift, manual_m, manual_t, None, None, lm, lt,
                                       dice_fn=lambda a, b: dice_loss(a, b), joint=False)
    np.testing.assert_allclose(l_a, [0, 0, expected_a[2], 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(l_sp, [0, 0, 0, 0])


@pytest.fixture(scope="module")
def tiny_networks():
    import keras

    keras.utils.set_random_seed(0)
    config = DeepAtlasConfig((16, 16, 16), 1, lambda_r=10.0,
                             seg_encoder=((2,), (2,), (2,)), seg_decoder=((2,), (2,), (2,), (2,)),
                             reg_encoder=(2, 2, 2, 2), reg_decoder=(2, 2, 2, 2, 2))
    return config, build_segmentation_network(config), build_registration_network(config)


def _pair_batch(lm, lt, seed=0):
    rng = np.random.default_rng(seed)
    image = lambda: rng.normal(size=(1, 16, 16, 16, 1)).astype(np.float32)  # noqa: E731
    labels = lambda: (rng.random((1, 16, 16, 16)) > 0.6).astype(np.int32)   # noqa: E731
    inputs = {"moving": image(), "fixed": image(), "moving_labeled": np.float32([lm]),
              "fixed_labeled": np.float32([lt])}
    targets = {"moving_labels": labels(), "fixed_labels": labels()}
    return ({k: tf.constant(v) for k, v in inputs.items()},
            {k: tf.constant(v) for k, v in targets.items()})


def _reaches(loss_fn, variables):
    """Whether any variable gets a non-zero gradient from ``loss_fn()``."""
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(loss_fn())
    grads = tape.gradient(value, variables)
    return any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("lm, lt, a_reaches_seg, sp_nonzero", [
    (1, 0, True, True),    # target unlabeled: L_a teaches F_s on I_t
    (0, 1, True, True),    # moving unlabeled: L_a teaches F_s on I_m
    (1, 1, False, True),   # both labeled: "L_a does not train the segmentation network"
    (0, 0, False, False),  # both unlabeled: L_a = L_sp = 0
])
def test_case_analysis_gradients_reach_the_right_network(tiny_networks, lm, lt, a_reaches_seg,
                                                         sp_nonzero):
    config, seg, reg = tiny_networks
    losses = DeepAtlasLosses(config, seg, reg)
    data = _pair_batch(lm, lt)
    seg_vars, reg_vars = seg.trainable_variables, reg.trainable_variables
    # segmentation phase (eq. 2): F_R fixed, so nothing reaches it
    term = lambda name: (lambda: losses.terms(data, True, "segmentation")[name])  # noqa: E731
    assert _reaches(term("anatomy"), seg_vars) is a_reaches_seg
    assert _reaches(term("supervised"), seg_vars) is sp_nonzero
    assert not _reaches(term("anatomy"), reg_vars)
    # registration phase (eq. 1): F_s fixed; L_a reaches F_R whenever one image is labeled
    rterm = lambda name: (lambda: losses.terms(data, True, "registration")[name])  # noqa: E731
    assert _reaches(rterm("anatomy"), reg_vars) is (lm + lt > 0)
    assert _reaches(rterm("similarity"), reg_vars) and _reaches(rterm("regularity"), reg_vars)
    assert not _reaches(rterm("anatomy"), seg_vars)
    if not lm and not lt:
        t = losses.terms(data, True, "segmentation")
        assert float(t["anatomy"][0]) == 0.0 and float(t["supervised"][0]) == 0.0


def test_phase_losses_weigh_the_terms_as_eq1_and_eq2(tiny_networks):
    config, seg, reg = tiny_networks
    losses = DeepAtlasLosses(config, seg, reg)
    data = _pair_batch(1, 0, seed=4)
    r = losses.terms(data, False, "registration")
    expected = r["similarity"] + 10.0 * r["regularity"] + 3.0 * r["anatomy"]
    np.testing.assert_allclose(losses.registration(data, False), expected, rtol=1e-5)
    s = losses.terms(data, False, "segmentation")
    np.testing.assert_allclose(losses.segmentation(data, False),
                               3.0 * s["anatomy"] + 3.0 * s["supervised"], rtol=1e-5)
    manual = one_hot(data[1]["moving_labels"], 1)
    np.testing.assert_allclose(losses.supervised(data, False),
                               3.0 * dice_loss(seg(data[0]["moving"], training=False), manual),
                               rtol=1e-5)
    # the warp of L_a is trilinear on the one-hot map, so L_a has a gradient w.r.t. the
    # displacement (a nearest-neighbour warp would have none)
    assert _reaches(lambda: losses.terms(data, True, "registration")["anatomy"],
                    reg.trainable_variables)


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="divisible by 16"):
        DeepAtlasConfig((48, 64, 40), 2)
    with pytest.raises(ValueError, match="dice"):
        DeepAtlasConfig((16, 16, 16), 2, dice="x")
    with pytest.raises(ValueError, match="regulariser"):
        DeepAtlasConfig((16, 16, 16), 2, regulariser="x")
    config = DeepAtlasConfig((16, 16, 32), 3)
    assert DeepAtlasConfig.from_dict(config.to_dict()) == config


def test_segmentation_network_is_the_released_light_unet():
    config = DeepAtlasConfig((16, 16, 16), 31)
    seg = build_segmentation_network(config)
    # released UNet_light (bias, batch norm): convolutions 1->8->16 | 16->16->32 | 32->32->64 |
    # 64->64->64, transposed 64->64, 64->64, 32->32, decoder convolutions 128->64->64,
    # 96->32->32, 48->16->16, then 1x1 16->32
    conv = lambda i, o, k=3: k ** 3 * i * o + o  # noqa: E731
    bn = lambda c: 4 * c                          # noqa: E731  (gamma, beta, mean, variance)
    convs = [(1, 8), (8, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 64),
             (128, 64), (64, 64), (96, 32), (32, 32), (48, 16), (16, 16)]
    expected = sum(conv(i, o) + bn(o) for i, o in convs)
    expected += conv(64, 64, 2) + conv(64, 64, 2) + conv(32, 32, 2) + conv(16, 32, 1)
    assert seg.count_params() == expected
    assert seg.output_shape == (None, 16, 16, 16, 32)
