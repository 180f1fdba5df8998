"""Smoothness regularisers of dense displacement fields (first and second order).

A displacement field is ``(batch, *spatial, ndim)``, channels-last, component
``k`` along spatial axis ``k`` (see :mod:`regseg.layers.spatial_transformer`),
``spatial = (D, H, W)`` in 3-D or ``(H, W)`` in 2-D.  Both regularisers return
one value per sample, shape ``(batch,)``; the Keras ``Loss`` wrappers let Keras
average them over the batch (so values do not depend on the number of
replicas).

* :func:`gradient_penalty` — diffusion regulariser, first derivatives:
  Gunnarsson et al. 2020, eq. 2c (``beta ||grad phi_d||_2^2``); the diffusion
  term Xu & Niethammer 2019 (DeepAtlas) contrast with eq. 5; the ``"l1"``
  variant is the mean-absolute gradient penalty.
* :func:`bending_energy` — second derivatives: Xu & Niethammer 2019, eq. 5.

Written with ``keras.ops`` only.
"""

from __future__ import annotations

import numbers

import keras
from keras import ops

from ._checks import check_option, compute_float

_PENALTIES = ("l2", "l1")


def _field(displacement, what):
    displacement = compute_float(displacement)  # float32 for float16 / bfloat16 (mixed precision)
    if len(displacement.shape) < 3:
        raise ValueError(f"{what} needs a field (batch, *spatial, ndim) with at least one spatial "
                         f"axis, got shape {tuple(displacement.shape)}")
    return displacement


def _spacing(spacing, ndim):
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, numbers.Real):
        spacing = (spacing,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be None, a positive number or {ndim} positive numbers "
                         f"(one per spatial axis), got {spacing!r}")
    return spacing


def _slice(x, axis, sl):
    index = [slice(None)] * len(x.shape)
    index[axis] = sl
    return x[tuple(index)]


def gradient_penalty(displacement, penalty="l2", spacing=None):
    """Diffusion regulariser: mean squared (or absolute) forward differences.

    For every spatial axis ``i`` the forward difference
    ``d_i(x) = (u(x + e_i) - u(x)) / spacing[i]`` is taken on the voxels that
    have a successor along ``i`` (the last slice along ``i`` is dropped, no
    padding), as VoxelMorph's ``Grad`` loss does.  The value is the mean over
    the axes of the mean over voxels and components of ``d_i^2`` (``"l2"``)
    or ``|d_i|`` (``"l1"``):

        ``R(u) = (1/ndim) sum_i mean_{x, k} f(d_i u_k(x))``.

    For a linear field ``u(x) = A x`` (every ``d_i u_k = A[k, i]``) the
    ``"l2"`` value is ``||A||_F^2 / ndim^2``, the mean of the squared
    Jacobian entries; the sum ``sum_x ||grad u(x)||^2 / N`` of eq. 2c is
    ``ndim^2`` times it (a constant factor absorbed in ``beta``).

    Args:
        displacement: ``(batch, *spatial, C)`` field (``C = ndim`` for a
            displacement), any units; every spatial size >= 2.
        penalty: ``"l2"`` (squared, Gunnarsson et al. 2020, eq. 2c) or
            ``"l1"`` (absolute values).
        spacing: ``None`` (derivatives per voxel), one positive number or
            ``ndim`` numbers (voxel size along each spatial axis, e.g. mm):
            derivatives in field units per spacing unit.
    Returns:
        ``(batch,)`` tensor, units (field units / spacing unit)^2 for
        ``"l2"``, field units / spacing unit for ``"l1"``.
    Raises:
        ValueError: unknown ``penalty`` (the message names the option and its
            allowed values), bad ``spacing``, a field without spatial axes, or
            a static spatial size < 2.

    Source: Gunnarsson et al. 2020, eq. 2c (``||grad phi_d||_2^2``; forward
    differences as in their released code); Xu & Niethammer 2019, eq. 5 and
    the sentence after it (the diffusion regulariser ``||grad u_i||_2^2``).

    >>> float(gradient_penalty(np.zeros((1, 4, 4, 4, 3), "float32"))[0])
    0.0
    """
    check_option("penalty", penalty, _PENALTIES)
    u = _field(displacement, "gradient_penalty")
    ndim = len(u.shape) - 2
    h = _spacing(spacing, ndim)
    for size in u.shape[1:-1]:
        if size is not None and size < 2:
            raise ValueError(f"gradient_penalty needs every spatial size >= 2, got shape "
                             f"{tuple(u.shape)}")
    reduce_axes = tuple(range(1, ndim + 2))
    terms = []
    for i in range(ndim):
        axis = 1 + i
        d = _slice(u, axis, slice(1, None)) - _slice(u, axis, slice(None, -1))
        if h[i] != 1.0:
            d = d / h[i]
        d = ops.square(d) if penalty == "l2" else ops.abs(d)
        terms.append(ops.mean(d, axis=reduce_axes))
    return sum(terms[1:], terms[0]) / ndim


def bending_energy(displacement, scale_to_unit=False):
    """Bending energy: mean over voxels of ``sum_k ||H(u_k)||_F^2``.

    ``H(u_k)`` is the Hessian of component ``k``; its squared Frobenius norm
    is ``sum_i (d_ii u_k)^2 + 2 sum_{i<j} (d_ij u_k)^2`` (the symmetric
    Hessian counts each mixed derivative twice).  Central differences with
    spacing ``h_i``:

    * ``d_ii u = (u(x + e_i) - 2 u(x) + u(x - e_i)) / h_i^2``
    * ``d_ij u = (u(x+e_i+e_j) - u(x+e_i-e_j) - u(x-e_i+e_j) + u(x-e_i-e_j))
      / (4 h_i h_j)``

    evaluated on the interior voxels (first and last slice dropped along every
    axis, no padding), ``N = prod_i (n_i - 2)`` voxels; both stencils are
    exact for quadratic fields.  Summed over the components ``k`` and averaged
    over the ``N`` voxels as in eq. 5.

    Coordinates: ``scale_to_unit=False`` differentiates per voxel
    (``h_i = 1``); ``scale_to_unit=True`` scales the coordinates to
    ``[-1, 1]`` along each axis (first voxel centre at -1, last at +1), i.e.
    ``h_i = 2 / (n_i - 1)``, which multiplies ``d_ij`` by
    ``(n_i - 1)(n_j - 1) / 4`` (DeepAtlas, §3: "the image coordinates are
    scaled to [-1, 1] for each dimension").  The displacement values are
    used as given: for DeepAtlas' ``lambda_r`` they must be in the same
    normalised units (voxels times ``2 / (n_k - 1)`` for component ``k``).

    Args:
        displacement: ``(batch, *spatial, C)`` field (``C = ndim`` for a
            displacement); every spatial size >= 3 (static sizes needed for
            ``scale_to_unit``).
        scale_to_unit: see above.
    Returns:
        ``(batch,)`` tensor, units (field units)^2 / (coordinate units)^4
        (voxels^-2 for a displacement in voxels with ``h = 1``).
    Raises:
        ValueError: a field without spatial axes, a static spatial size < 3,
            or ``scale_to_unit=True`` with a dynamic spatial size.

    Source: Xu & Niethammer 2019 (DeepAtlas), eq. 5 and §3.

    >>> float(bending_energy(np.zeros((1, 4, 4, 4, 3), "float32"))[0])
    0.0
    """
    u = _field(displacement, "bending_energy")
    ndim = len(u.shape) - 2
    sizes = tuple(u.shape[1:-1])
    for size in sizes:
        if size is not None and size < 3:
            raise ValueError(f"bending_energy needs every spatial size >= 3 (central "
                             f"differences), got shape {tuple(u.shape)}")
    if scale_to_unit:
        if any(s is None for s in sizes):
            raise ValueError("bending_energy(scale_to_unit=True) needs a static spatial shape, "
                             f"got {sizes}")
        h = tuple(2.0 / (s - 1) for s in sizes)
    else:
        h = (1.0,) * ndim

    def shifted(offsets):
        """u(x + offsets) on the interior voxels."""
        out = u
        for i, o in enumerate(offsets):
            stop = -1 + o
            out = _slice(out, 1 + i, slice(1 + o, stop if stop != 0 else None))
        return out

    zero = (0,) * ndim

    def unit(i, sign):
        return tuple(sign if a == i else 0 for a in range(ndim))

    def add(a, b):
        return tuple(x + y for x, y in zip(a, b))

    centre = shifted(zero)
    total = 0.0
    for i in range(ndim):
        d_ii = (shifted(unit(i, 1)) - 2.0 * centre + shifted(unit(i, -1))) / (h[i] * h[i])
        total = total + ops.square(d_ii)
        for j in range(i + 1, ndim):
            d_ij = (shifted(add(unit(i, 1), unit(j, 1))) - shifted(add(unit(i, 1), unit(j, -1)))
                    - shifted(add(unit(i, -1), unit(j, 1)))
                    + shifted(add(unit(i, -1), unit(j, -1)))) / (4.0 * h[i] * h[j])
            total = total + 2.0 * ops.square(d_ij)
    per_voxel = ops.sum(total, axis=-1)  # sum over the components k
    return ops.mean(per_voxel, axis=tuple(range(1, ndim + 1)))


@keras.saving.register_keras_serializable(package="regseg")
class GradientLoss(keras.losses.Loss):
    """Keras loss ``gradient_penalty(y_pred)``; ``y_true`` is ignored.

    Compile it on the output that holds the displacement
    ``(batch, *spatial, ndim)``, with any ``y_true`` (e.g. zeros of one
    element per sample); :meth:`call` returns ``(batch,)``.

    Args:
        penalty: ``"l2"`` (default) or ``"l1"``; see :func:`gradient_penalty`.
        spacing: ``None``, a number or ``ndim`` numbers; see
            :func:`gradient_penalty`.
    Raises:
        ValueError: unknown ``penalty`` (names the option and its allowed
            values) or bad ``spacing``, at construction.

    Source: Gunnarsson et al. 2020, eq. 2c; Xu & Niethammer 2019, eq. 5.

    >>> float(GradientLoss(penalty="l1")(np.zeros(2), np.zeros((2, 4, 4, 2), "float32")))
    0.0
    """

    def __init__(self, penalty="l2", spacing=None, name="gradient_penalty", **kwargs):
        super().__init__(name=name, **kwargs)
        self.penalty = check_option("penalty", penalty, _PENALTIES)
        if isinstance(spacing, numbers.Real):
            spacing = float(spacing)
            _spacing(spacing, 1)  # positivity now; the number of axes is checked at call
        elif spacing is not None:
            spacing = [float(s) for s in spacing]
            _spacing(spacing, len(spacing))
        self.spacing = spacing

    def call(self, y_true, y_pred):
        return gradient_penalty(y_pred, self.penalty, self.spacing)

    def get_config(self):
        config = super().get_config()
        config.update(penalty=self.penalty, spacing=self.spacing)
        return config


@keras.saving.register_keras_serializable(package="regseg")
class BendingEnergyLoss(keras.losses.Loss):
    """Keras loss ``bending_energy(y_pred)``; ``y_true`` is ignored.

    Compile it on the output that holds the displacement
    ``(batch, *spatial, ndim)``; :meth:`call` returns ``(batch,)``.

    Args:
        scale_to_unit: differentiate with coordinates scaled to ``[-1, 1]``
            (``h_i = 2 / (n_i - 1)``); see :func:`bending_energy`.

    Source: Xu & Niethammer 2019, eq. 5 and §3.

    >>> float(BendingEnergyLoss()(np.zeros(2), np.zeros((2, 4, 4, 2), "float32")))
    0.0
    """

    def __init__(self, scale_to_unit=False, name="bending_energy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale_to_unit = bool(scale_to_unit)

    def call(self, y_true, y_pred):
        return bending_energy(y_pred, self.scale_to_unit)

    def get_config(self):
        config = super().get_config()
        config.update(scale_to_unit=self.scale_to_unit)
        return config
