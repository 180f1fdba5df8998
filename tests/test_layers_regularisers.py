"""Tests of the displacement regularisers against fields with known derivatives and numpy loops."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import itertools

import keras
import numpy as np
import pytest

from regseg.layers import BendingEnergyLoss, GradientLoss, bending_energy, gradient_penalty


def _coords(spatial):
    """Voxel coordinates, ``(*spatial, ndim)``, float64."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in spatial], indexing="ij"), -1)


def _linear_field(matrix, offset, spatial):
    """u(x) = matrix @ x + offset on the voxel grid, ``(*spatial, ndim)``."""
    return np.einsum("ki,...i->...k", matrix, _coords(spatial)) + offset


def _quadratic_field(hessians, matrix, spatial):
    """u_k(x) = x^T Q_k x / 2 + (matrix @ x)_k; the Hessian of u_k is Q_k everywhere."""
    x = _coords(spatial)
    quad = 0.5 * np.einsum("...i,kij,...j->...k", x, hessians, x)
    return quad + np.einsum("ki,...i->...k", matrix, x)


# --------------------------------------------------------------------------- gradient penalty

@pytest.mark.parametrize("spatial", [(5, 6), (4, 5, 6)])
def test_gradient_penalty_of_a_linear_field_is_the_mean_squared_jacobian(spatial):
    """Every forward difference of u = A x + c along axis i of component k is A[k, i]."""
    ndim = len(spatial)
    rng = np.random.default_rng(ndim)
    a = rng.normal(size=(ndim, ndim))
    u = _linear_field(a, rng.normal(size=ndim), spatial)[None]
    np.testing.assert_allclose(np.asarray(gradient_penalty(u)), [np.mean(a ** 2)], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gradient_penalty(u, penalty="l1")),
                               [np.mean(np.abs(a))], rtol=1e-12)
    # l2: ||A||_F^2 / ndim^2 (the eq. 2c sum is ndim^2 times the mean)
    np.testing.assert_allclose(float(gradient_penalty(u)[0]) * ndim ** 2, np.sum(a ** 2),
                               rtol=1e-12)
    # physical spacing: d u_k / d x_i = A[k, i] / h_i
    h = np.arange(1, ndim + 1) * 0.5
    np.testing.assert_allclose(np.asarray(gradient_penalty(u, spacing=tuple(h))),
                               [np.mean((a / h[None, :]) ** 2)], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gradient_penalty(u, penalty="l1", spacing=2.0)),
                               [np.mean(np.abs(a)) / 2.0], rtol=1e-12)
    # a constant field (pure translation) costs nothing
    assert float(gradient_penalty(np.ones((1, *spatial, ndim)) * 3.0)[0]) == 0.0


def test_gradient_penalty_quadratic_2d_hand_computed():
    """u_0 = a x^2 + b x y, u_1 = c y^2 on a 4 x 5 grid, forward differences written out."""
    a, b, c = 0.5, -1.5, 2.0
    nx, ny = 4, 5
    u = np.zeros((1, nx, ny, 2))
    for x, y in itertools.product(range(nx), range(ny)):
        u[0, x, y] = (a * x * x + b * x * y, c * y * y)
    # forward difference along x (x = 0..nx-2): u_0: a (2x + 1) + b y ; u_1: 0
    # forward difference along y (y = 0..ny-2): u_0: b x ; u_1: c (2y + 1)
    along_x = [(a * (2 * x + 1) + b * y, 0.0) for x in range(nx - 1) for y in range(ny)]
    along_y = [(b * x, c * (2 * y + 1)) for x in range(nx) for y in range(ny - 1)]
    for penalty, f in (("l2", np.square), ("l1", np.abs)):
        expected = 0.5 * (np.mean(f(np.array(along_x))) + np.mean(f(np.array(along_y))))
        np.testing.assert_allclose(np.asarray(gradient_penalty(u, penalty=penalty)), [expected],
                                   rtol=1e-12)


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 6)])
def test_gradient_penalty_random_field_matches_numpy_diff(spatial):
    ndim = len(spatial)
    rng = np.random.default_rng(10 + ndim)
    u = rng.normal(size=(3, *spatial, ndim))
    for penalty, f in (("l2", np.square), ("l1", np.abs)):
        expected = np.mean([f(np.diff(u, axis=1 + i)).mean(axis=tuple(range(1, ndim + 2)))
                            for i in range(ndim)], axis=0)
        got = np.asarray(gradient_penalty(u, penalty=penalty))
        assert got.shape == (3,)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        # float32 agrees to float32 precision
        np.testing.assert_allclose(np.asarray(gradient_penalty(u.astype(np.float32), penalty)),
                                   expected, rtol=1e-5)


# --------------------------------------------------------------------------- bending energy

@pytest.mark.parametrize("spatial", [(5, 6), (4, 5, 6)])
def test_bending_energy_of_a_quadratic_field_is_the_sum_of_squared_hessians(spatial):
    ndim = len(spatial)
    rng = np.random.default_rng(20 + ndim)
    q = rng.normal(size=(ndim, ndim, ndim))
    q = q + np.swapaxes(q, 1, 2)  # symmetric Hessians Q_k
    u = _quadratic_field(q, rng.normal(size=(ndim, ndim)), spatial)[None]
    expected = np.sum(q ** 2)  # sum_k ||Q_k||_F^2, the same at every voxel
    np.testing.assert_allclose(np.asarray(bending_energy(u)), [expected], rtol=1e-10)
    # linear fields have zero bending energy (but a non-zero gradient penalty)
    lin = _linear_field(rng.normal(size=(ndim, ndim)), 1.0, spatial)[None]
    np.testing.assert_allclose(np.asarray(bending_energy(lin)), [0.0], atol=1e-20)
    assert float(gradient_penalty(lin)[0]) > 0.1


def test_bending_energy_2d_hand_computed_with_mixed_term_counted_twice():
    """u_0 = a x^2 + b x y, u_1 = c y^2: H(u_0) = [[2a, b], [b, 0]], H(u_1) = [[0, 0], [0, 2c]]."""
    a, b, c = 0.5, -1.5, 2.0
    x, y = np.meshgrid(np.arange(5.0), np.arange(4.0), indexing="ij")
    u = np.stack([a * x * x + b * x * y, c * y * y], -1)[None]
    np.testing.assert_allclose(np.asarray(bending_energy(u)),
                               [4 * a * a + 2 * b * b + 4 * c * c], rtol=1e-12)
    # only the mixed derivative: b x y -> 2 b^2
    np.testing.assert_allclose(np.asarray(bending_energy(np.stack([x * y, 0 * x], -1)[None])),
                               [2.0], rtol=1e-12)


@pytest.mark.parametrize("spatial", [(6, 5), (5, 4, 6)])
def test_bending_energy_random_field_matches_numpy_loops(spatial):
    """Explicit per-voxel Hessian (3-point / 4-point stencils) on the interior voxels."""
    ndim = len(spatial)
    rng = np.random.default_rng(30 + ndim)
    u = rng.normal(size=(2, *spatial, ndim))
    expected = np.zeros(2)
    interior = list(itertools.product(*[range(1, n - 1) for n in spatial]))
    for bi in range(2):
        total = 0.0
        for p in interior:
            p = np.array(p)
            for k in range(ndim):
                def at(offset):
                    return u[(bi, *(p + offset), k)]
                hess = np.zeros((ndim, ndim))
                for i in range(ndim):
                    ei = np.eye(ndim, dtype=int)[i]
                    hess[i, i] = at(ei) - 2 * at(0 * ei) + at(-ei)
                    for j in range(ndim):
                        if j != i:
                            ej = np.eye(ndim, dtype=int)[j]
                            hess[i, j] = (at(ei + ej) - at(ei - ej) - at(-ei + ej)
                                          + at(-ei - ej)) / 4
                total += np.sum(hess ** 2)
        expected[bi] = total / len(interior)
    got = np.asarray(bending_energy(u))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("spatial", [(5, 9), (5, 7, 9)])
def test_bending_energy_scale_to_unit(spatial):
    """A quadratic written in [-1, 1] coordinates: its Hessian there is known exactly."""
    ndim = len(spatial)
    rng = np.random.default_rng(40 + ndim)
    q = rng.normal(size=(ndim, ndim, ndim))
    q = q + np.swapaxes(q, 1, 2)
    axes = [np.linspace(-1.0, 1.0, n) for n in spatial]  # h = 2 / (n - 1)
    xn = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    u = 0.5 * np.einsum("...i,kij,...j->...k", xn, q, xn)[None]
    np.testing.assert_allclose(np.asarray(bending_energy(u, scale_to_unit=True)),
                               [np.sum(q ** 2)], rtol=1e-10)
    # per voxel the same field has Hessian Q_k,ij * h_i * h_j
    h = np.array([2.0 / (n - 1) for n in spatial])
    np.testing.assert_allclose(np.asarray(bending_energy(u)),
                               [np.sum((q * h[None, :, None] * h[None, None, :]) ** 2)],
                               rtol=1e-10)


# --------------------------------------------------------------------------- errors

def test_bad_options_and_shapes_raise():
    u2 = np.zeros((1, 4, 5, 2), np.float32)
    with pytest.raises(ValueError, match="penalty"):
        gradient_penalty(u2, penalty="l3")
    with pytest.raises(ValueError, match="penalty"):
        GradientLoss(penalty="L2")
    with pytest.raises(ValueError, match="spacing"):
        gradient_penalty(u2, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="spacing"):
        gradient_penalty(u2, spacing=0.0)
    with pytest.raises(ValueError, match="spacing"):
        GradientLoss(spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match=">= 2"):
        gradient_penalty(np.zeros((1, 1, 5, 2), np.float32))
    with pytest.raises(ValueError, match=">= 3"):
        bending_energy(np.zeros((1, 2, 5, 2), np.float32))
    with pytest.raises(ValueError):
        bending_energy(np.zeros((4, 2), np.float32))


# --------------------------------------------------------------------------- Keras losses

def test_keras_losses_ignore_y_true_and_average_over_the_batch():
    rng = np.random.default_rng(50)
    u = rng.normal(size=(3, 4, 5, 6, 3)).astype(np.float32)
    dummy = np.full((3,), 7.0, np.float32)
    grad, bend = GradientLoss(penalty="l1"), BendingEnergyLoss()
    np.testing.assert_allclose(np.asarray(grad.call(dummy, u)),
                               np.asarray(gradient_penalty(u, "l1")), rtol=1e-6)
    np.testing.assert_allclose(float(grad(dummy, u)), np.mean(gradient_penalty(u, "l1")),
                               rtol=1e-6)
    np.testing.assert_allclose(float(bend(u, u)), np.mean(bending_energy(u)), rtol=1e-6)
    # compiled on a model output, with a dummy target
    inp = keras.Input((4, 5, 6, 3))
    model = keras.Model(inp, keras.layers.Identity()(inp))
    model.compile(loss=GradientLoss(spacing=(1.0, 2.0, 0.5)))
    got = model.evaluate(u, np.zeros((3, 1), np.float32), batch_size=3, verbose=0)
    np.testing.assert_allclose(got, np.mean(gradient_penalty(u, spacing=(1.0, 2.0, 0.5))),
                               rtol=1e-5)


def test_keras_losses_serialisation_round_trip():
    rng = np.random.default_rng(60)
    u = rng.normal(size=(2, 5, 6, 2)).astype(np.float32)
    for loss in (GradientLoss(penalty="l1", spacing=(0.5, 2.0), name="grad"),
                 GradientLoss(spacing=1.5), BendingEnergyLoss(scale_to_unit=True, name="bend")):
        config = keras.saving.serialize_keras_object(loss)
        clone = keras.saving.deserialize_keras_object(config)
        assert type(clone) is type(loss)
        assert clone.get_config() == loss.get_config()
        np.testing.assert_allclose(float(clone(u, u)), float(loss(u, u)), rtol=1e-7)
    clone = keras.losses.deserialize(keras.losses.serialize(GradientLoss(penalty="l1")))
    assert (clone.penalty, clone.spacing) == ("l1", None)
    assert keras.losses.get(keras.losses.serialize(BendingEnergyLoss())).scale_to_unit is False
