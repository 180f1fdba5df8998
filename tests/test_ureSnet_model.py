"""U-ReSNet model: parameter budget (§3.4), identity at initialisation (§4), loss wiring (eq. 7)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from regseg.layers import identity_grid, local_cross_correlation
from regseg.reproductions.ureSnet.model import UReSNetConfig, build_ureSnet, losses_and_weights

SHAPE = (12, 16, 8)


def _pair(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(batch, *SHAPE, 1)).astype("float32")
    r = rng.normal(size=(batch, *SHAPE, 1)).astype("float32")
    return {"moving": m, "reference": r}


def test_parameter_count_below_40000():
    # §3.4: "a relatively small network with less than 40000 parameters"
    for seg, expected in ((True, 39183), (False, 24631)):
        _, full = build_ureSnet(UReSNetConfig(input_shape=SHAPE, segmentation=seg))
        # hand count: encoder 10,188; registration decoder 10,212; deformable 4,123;
        # affine 108; segmentation decoder 10,212 + block 4,340
        assert full.count_params() == expected
        assert full.count_params() < 40000


def test_identity_at_initialisation():
    # §4: zero weights and an identity bias -> A = I and grad Phi = 1, so the
    # deformed image is the moving image exactly (0-based grid)
    _, full = build_ureSnet(UReSNetConfig(input_shape=SHAPE))
    x = _pair()
    out = {k: np.asarray(v) for k, v in full(x).items()}
    np.testing.assert_array_equal(out["affine"], 0.0)
    np.testing.assert_array_equal(out["gradients"], 1.0)
    np.testing.assert_array_equal(out["grid"][0], np.asarray(identity_grid(SHAPE)))
    np.testing.assert_array_equal(out["deformed"], x["moving"])
    # the warped segmentation is the moving segmentation warped by the identity
    np.testing.assert_allclose(out["warped_seg"], out["moving_seg"], atol=1e-6)
    np.testing.assert_allclose(out["moving_seg"].sum(-1), 1.0, atol=1e-5)


def test_released_grid_origin_shifts_by_one_voxel():
    _, full = build_ureSnet(UReSNetConfig(input_shape=SHAPE, grid_origin="one"))
    x = _pair()
    deformed = np.asarray(full(x)["deformed"])
    m = x["moving"]
    # sampling at index + 1 along every axis, clamped at the far border
    idx = [np.minimum(np.arange(s) + 1, s - 1) for s in SHAPE]
    expected = m[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]
    np.testing.assert_allclose(deformed, expected, atol=1e-6)


@pytest.mark.parametrize("background", [True, False])
def test_total_loss_is_equation_7_at_initialisation(background):
    cfg = UReSNetConfig(input_shape=SHAPE, dice_background=background)
    train, full = build_ureSnet(cfg)
    loss, weights = losses_and_weights(cfg)
    train.compile(optimizer="adam", loss=loss, loss_weights=weights)
    x = _pair(1)
    rng = np.random.default_rng(2)
    seg_m = np.eye(4, dtype="float32")[rng.integers(0, 4, (2, *SHAPE))]
    seg_r = np.eye(4, dtype="float32")[rng.integers(0, 4, (2, *SHAPE))]
    y = {"deformed": x["reference"], "moving_seg": seg_m, "warped_seg": seg_r}
    got = train.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    out = {k: np.asarray(v) for k, v in full(x).items()}
    m, r = x["moving"], x["reference"]
    mse = np.mean((m - r) ** 2)
    lcc = float(np.mean(np.asarray(local_cross_correlation(r, m, 9, 1e-5))))

    def dice_loss(t, p):
        if not background:  # released code: the 3 foreground channels only
            t, p = t[..., 1:], p[..., 1:]
        d = (2 * (t * p).sum((1, 2, 3)) + 1e-5) / (t.sum((1, 2, 3)) + p.sum((1, 2, 3)) + 1e-5)
        return np.mean(1 - d.mean(-1))

    # eq. 7 with w1 = w2 = gamma = delta = 1; eq. 5 terms are 0 at identity
    expected = (mse - lcc) + dice_loss(seg_m, out["moving_seg"]) + dice_loss(seg_r, out["warped_seg"])
    assert got["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_regularisers_are_equation_5():
    # alpha ||A - A_I||_1 + beta ||grad Phi - 1||_1, mean over the batch
    cfg = UReSNetConfig(input_shape=SHAPE, segmentation=False, alpha=0.1, beta=1e-3)
    train, full = build_ureSnet(cfg)
    rng = np.random.default_rng(3)
    dense = full.get_layer("affine_dense")
    dense.set_weights([rng.normal(size=w.shape).astype("float32") * 0.01 for w in dense.get_weights()])
    conv = full.get_layer("deform3")
    conv.set_weights([rng.normal(size=w.shape).astype("float32") * 0.1 for w in conv.get_weights()])
    x = _pair(4)
    out = {k: np.asarray(v) for k, v in full(x, training=True).items()}
    expected = (0.1 * np.abs(out["affine"]).sum() / 2
                + 1e-3 * np.abs(out["gradients"] - 1.0).sum() / 2)
    got = float(sum(np.asarray(l) for l in full.losses))
    assert got == pytest.approx(expected, rel=1e-4)


def test_equation_7_weights_scale_every_term():
    # w1 scales L_recon and the eq. 5 penalties, w2 * gamma / w2 * delta the Dice terms
    x = _pair(6)
    rng = np.random.default_rng(7)
    seg = np.eye(4, dtype="float32")[rng.integers(0, 4, (2, *SHAPE))]
    y = {"deformed": x["reference"], "moving_seg": seg, "warped_seg": seg[::-1]}
    values = {}
    for w1, w2 in ((1.0, 1.0), (2.0, 1.0), (1.0, 3.0)):
        cfg = UReSNetConfig(input_shape=SHAPE, alpha=0.5, beta=1e-2, w1=w1, w2=w2, gamma=1.0, delta=0.5)
        keras.utils.set_random_seed(0)
        train, full = build_ureSnet(cfg)
        dense, conv = full.get_layer("affine_dense"), full.get_layer("deform3")
        dense.set_weights([np.full(w.shape, 0.01, "float32") for w in dense.get_weights()])
        conv.set_weights([np.full(w.shape, 0.01, "float32") for w in conv.get_weights()])
        loss, weights = losses_and_weights(cfg)
        train.compile(optimizer="adam", loss=loss, loss_weights=weights)
        r = train.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
        full(x, training=True)  # records the eq. 5 penalties of this call in full.losses
        values[(w1, w2)] = (r, float(sum(np.asarray(l) for l in full.losses)))
    (base, pen1), (double, pen2), (seg3, pen3) = values[(1.0, 1.0)], values[(2.0, 1.0)], values[(1.0, 3.0)]
    assert pen2 == pytest.approx(2 * pen1, rel=1e-5) and pen1 > 0
    assert pen3 == pytest.approx(pen1, rel=1e-5)
    seg_part = base["moving_seg_loss"] + 0.5 * base["warped_seg_loss"]
    assert double["loss"] == pytest.approx(base["loss"] + base["deformed_loss"] + pen1, rel=1e-4)
    assert seg3["loss"] == pytest.approx(base["loss"] + 2 * seg_part, rel=1e-4)


def test_model_serialises(tmp_path):
    train, full = build_ureSnet(UReSNetConfig(input_shape=SHAPE))
    path = tmp_path / "m.keras"
    full.save(path)
    loaded = keras.models.load_model(path)
    x = _pair(5)
    a, b = full(x), loaded(x)
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-6)
