"""Relative similarity D_S of two masks with respect to a class of transformations Ω.

Couteaux et al., §2.2:

    D_S(s1, s2, Ω) = max_{τ ∈ Ω} Dice(τ(s1), s2)

"When Ω is the set of smooth and dense deformations, we compute an approximation of D_S by
blurring s1 and s2 to convexify the problem, and finding the optimal τ by iterative gradient
descent: τ_0 = Id, τ_{k+1} = τ_k - α ∂/∂τ_k ||τ_k(s1 * f) - (s2 * f)||², where f is a low-pass
filter [...] a simple separable [1, 2, 1]".

Two classes Ω and two ways of computing the maximum:

* ``transform="translation"`` (the toy experiment, §3.1): τ is a translation ``d`` (one vector,
  voxels) with ``|d_i| <= max_translation``;
* ``transform="elastic"`` (the liver experiment, §3.2.2): τ is a displacement field given on a
  grid ``grid_factor`` (16) times coarser than the image and (tri)linearly interpolated between
  vectors (:func:`regseg.layers.coarse_fields.upsample_field`);
* :func:`relative_similarity` with ``method="gradient_descent"`` is the approximation of §2.2
  for either class;
* :func:`exhaustive_translation_similarity` is the exact maximum over every integer translation
  (FFT cross-correlation), the reference the approximation is tested against, and the way the
  toy evaluation computes D_S (gradient descent from the identity sees no gradient when a
  translation of up to 32 pixels moves small blobs off each other; see the reproduction's README).

Conventions: τ is applied by backward warping, ``τ(s)(x) = s(x + d(x))`` (``d`` a displacement in
voxels, the suite's convention, :func:`regseg.layers.warp`), outside the image is 0. The Dice of the
final τ is that of the binary mask ``τ(s1) >= 0.5`` (``s1`` warped linearly, then thresholded)
against ``s2``; for an integer translation this is the exactly shifted mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["relative_similarity", "relative_similarities", "exhaustive_translation_similarity",
           "shift_mask", "SimilarityResult", "TRANSFORMS"]

TRANSFORMS = ("translation", "elastic")


def _binary(mask, name):
    arr = np.asarray(mask)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must be a binary mask (bool or 0/1 values), got dtype "
                             f"{arr.dtype} with other values")
    return arr != 0


def _dice(a, b) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def shift_mask(mask, displacement) -> np.ndarray:
    """``τ(mask)(x) = mask(x + d)`` for an integer displacement ``d``, 0 outside the image.

    Args:
        mask: ``(*spatial)`` array.
        displacement: ``ndim`` integers (voxels).
    Returns:
        array of ``mask``'s shape and dtype.
    Raises:
        ValueError: ``displacement`` not ``ndim`` integers.
    """
    mask = np.asarray(mask)
    d = np.asarray(displacement)
    if d.shape != (mask.ndim,) or not np.allclose(d, np.rint(d)):
        raise ValueError(f"shift_mask: displacement must be {mask.ndim} integers, got {displacement}")
    d = np.rint(d).astype(int)
    out = np.zeros_like(mask)
    src, dst = [], []
    for n, k in zip(mask.shape, d):
        lo, hi = max(0, -k), min(n, n - k)  # x in [lo, hi): x + k in [0, n)
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo + k, hi + k))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def exhaustive_translation_similarity(s1, s2, max_translation: int = 32):
    """Exact ``max Dice(τ(s1), s2)`` over every integer translation ``|d_i| <= max_translation``.

    ``|τ(s1) ∩ s2|`` and ``|τ(s1)|`` (voxels of ``s1`` still inside the image) for every ``d``
    come from FFT cross-correlations (rounded to the integer counts they are).

    Args:
        s1, s2: binary masks of one shape ``(*spatial)`` (2-D or 3-D).
        max_translation: the largest translation per axis, voxels (32 in §3.1).
    Returns:
        ``(D_S, d)``: the maximum Dice and one displacement ``d`` (int array ``(ndim,)``,
        ``τ(s1)(x) = s1(x + d)``) that attains it (the smallest ``|d|`` among ties).
    Raises:
        ValueError: masks of different shapes, not binary, or a negative ``max_translation``.

    Source: Couteaux et al. §2.2 (definition of D_S), §3.1 (Ω = translations of at most 32 px).
    """
    from scipy.signal import fftconvolve

    a, b = _binary(s1, "s1"), _binary(s2, "s2")
    if a.shape != b.shape:
        raise ValueError(f"exhaustive_translation_similarity: masks differ in shape, {a.shape} vs "
                         f"{b.shape}")
    m = int(max_translation)
    if m < 0:
        raise ValueError(f"max_translation must be >= 0, got {max_translation}")
    if not a.any() and not b.any():
        return float("nan"), np.zeros(a.ndim, dtype=int)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    flip = tuple(slice(None, None, -1) for _ in range(a.ndim))
    # full[d + N - 1] = sum_x s1[x + d] * g[x]
    inter = np.rint(fftconvolve(af, bf[flip], mode="full"))
    kept = np.rint(fftconvolve(af, np.ones_like(bf), mode="full"))
    centre = [n - 1 for n in a.shape]
    window = tuple(slice(c - min(m, c), c + min(m, c) + 1) for c in centre)
    inter, kept = inter[window], kept[window]
    denom = kept + b.sum()
    dice = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 0.0)
    best = dice.max()
    offsets = np.stack(np.meshgrid(*[np.arange(-min(m, c), min(m, c) + 1) for c in centre],
                                   indexing="ij"), axis=-1)
    ties = np.argwhere(dice >= best - 1e-12)
    pick = ties[np.argmin([np.abs(offsets[tuple(t)]).sum() for t in ties])]
    return float(best), offsets[tuple(pick)].astype(int)


@dataclass
class SimilarityResult:
    """D_S of a batch of pairs by gradient descent.

    Attributes:
        dice: ``(batch,)`` D_S, the Dice of ``τ(s1) >= 0.5`` against ``s2`` with the final τ.
        initial_dice: ``(batch,)`` the Dice before registration (τ = identity).
        parameters: the final τ: ``(batch, ndim)`` translations, or ``(batch, *coarse, ndim)``
            coarse displacements (voxels).
        displacement: ``(batch, *spatial, ndim)`` the full-resolution displacement field.
        objective: ``(batch,)`` final ``||τ(s1 * f) - s2 * f||²``.
        steps: gradient steps taken.
    """

    dice: np.ndarray
    initial_dice: np.ndarray
    parameters: np.ndarray
    displacement: np.ndarray
    objective: np.ndarray
    steps: int


def relative_similarities(s1, s2, transform: str = "elastic", *, max_translation: float | None = 32,
                          grid_factor: int = 16, steps: int = 300, step_size: float = 0.1,
                          backtracking: bool = True, min_step: float = 1e-7,
                          blur_passes: int = 1) -> SimilarityResult:
    """D_S of a batch of mask pairs by the gradient descent of §2.2.

    Starting from τ_0 = identity, ``steps`` gradient steps on
    ``E(τ) = ||τ(s1 * f) - s2 * f||²`` (sum over voxels, ``f`` the separable [1, 2, 1] / 4
    filter, :func:`regseg.layers.filters.binomial_blur`), every pair of the batch on its own.
    With ``backtracking`` (default) a step that would increase ``E`` is refused and that pair's
    step size halved (plain gradient descent with step ``α`` otherwise); a translation is
    projected back into ``|d_i| <= max_translation`` after every step.

    Args:
        s1, s2: binary masks ``(batch, *spatial)`` (2-D or 3-D spatial).
        transform: ``"translation"`` or ``"elastic"`` (see the module docstring).
        max_translation: bound of Ω for translations (voxels; ``None``: unbounded).
        grid_factor: the elastic grid is this many times coarser than the image (16, §3.2.2);
            ``ceil(size / grid_factor)`` vectors per axis.
        steps: gradient steps.
        step_size: α (voxels per unit of ``E``'s gradient), the initial one with backtracking.
        backtracking: halve a pair's step when its objective would rise (and refuse the step).
        min_step: stop when every pair's step is below this.
        blur_passes: applications of the [1, 2, 1] filter (1 in the paper).
    Returns:
        :class:`SimilarityResult`.
    Raises:
        ValueError: unknown ``transform``, masks of different shapes, not binary, not 2-D or
            3-D batched, or a non-positive ``steps``/``step_size``/``grid_factor``.

    Source: Couteaux et al. §2.2 (D_S and its approximation), §3.2.2 (the elastic class).
    """
    import tensorflow as tf

    from regseg.layers import warp
    from regseg.layers.coarse_fields import upsample_field
    from regseg.layers.filters import binomial_blur

    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    a, b = _binary(s1, "s1"), _binary(s2, "s2")
    if a.shape != b.shape:
        raise ValueError(f"relative_similarities: masks differ in shape, {a.shape} vs {b.shape}")
    if a.ndim not in (3, 4):
        raise ValueError(f"relative_similarities: masks must be (batch, H, W) or (batch, D, H, W), "
                         f"got shape {a.shape}")
    if steps < 0 or not step_size > 0 or grid_factor < 1:
        raise ValueError("relative_similarities: steps >= 0, step_size > 0 and grid_factor >= 1 "
                         f"are needed (got {steps}, {step_size}, {grid_factor})")
    batch, spatial = a.shape[0], a.shape[1:]
    ndim = len(spatial)
    sa = tf.constant(a[..., None].astype(np.float32))
    sb = tf.constant(b[..., None].astype(np.float32))
    fa, fb = binomial_blur(sa, blur_passes), binomial_blur(sb, blur_passes)
    identity = tf.stack(tf.meshgrid(*[tf.range(n, dtype=tf.float32) for n in spatial],
                                    indexing="ij"), axis=-1)[None]
    if transform == "translation":
        shape = (batch, ndim)
        coarse = None
    else:
        coarse = tuple(-(-n // grid_factor) for n in spatial)
        shape = (batch, *coarse, ndim)

    def field(p):
        if transform == "translation":
            return tf.broadcast_to(tf.reshape(p, (batch, *([1] * ndim), ndim)),
                                   (batch, *spatial, ndim))
        full = upsample_field(p, grid_factor)
        return full[(slice(None), *[slice(0, n) for n in spatial])]

    def energy(p):
        moved = warp(fa, identity + field(p), padding="zeros")
        return tf.reduce_sum(tf.square(moved - fb), axis=list(range(1, ndim + 2)))

    def bounded(p):
        if transform == "translation" and max_translation is not None:
            return tf.clip_by_value(p, -float(max_translation), float(max_translation))
        return p

    @tf.function(reduce_retracing=True)
    def value_and_gradient(p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            e = energy(p)
            total = tf.reduce_sum(e)
        return e, tape.gradient(total, p)

    @tf.function(reduce_retracing=True)
    def step(p, e, g, alpha):
        """One evaluation at the candidate ``p - alpha g``: accept it, or halve alpha."""
        expand = (batch, *([1] * (len(shape) - 1)))
        trial = bounded(p - tf.reshape(alpha, expand) * g)
        e_new, g_new = value_and_gradient(trial)
        ok = e_new <= e if backtracking else tf.ones_like(e_new, dtype=tf.bool)
        okb = tf.reshape(ok, expand)
        return (tf.where(okb, trial, p), tf.where(ok, e_new, e), tf.where(okb, g_new, g),
                tf.where(ok, alpha, alpha * 0.5))

    # each iteration evaluates E and its gradient once, at the candidate step; a refused
    # candidate leaves tau where it was and halves that pair's step
    p = tf.zeros(shape, tf.float32)
    alpha = tf.fill((batch,), float(step_size))
    e, g = value_and_gradient(p)
    taken = 0
    for taken in range(1, steps + 1):
        p, e, g, alpha = step(p, e, g, alpha)
        if backtracking and float(tf.reduce_max(alpha)) < min_step:
            break
    disp = field(p)
    moved = np.asarray(warp(sa, identity + disp, padding="zeros"))[..., 0] >= 0.5
    dice = np.array([_dice(moved[k], b[k]) for k in range(batch)])
    initial = np.array([_dice(a[k], b[k]) for k in range(batch)])
    return SimilarityResult(dice, initial, np.asarray(p), np.asarray(disp), np.asarray(e), taken)


def relative_similarity(s1, s2, transform: str = "elastic", **options) -> float:
    """D_S of one pair of masks ``(*spatial)`` by gradient descent (§2.2).

    Args:
        s1, s2: binary masks of one shape, 2-D or 3-D.
        transform: ``"translation"`` or ``"elastic"``.
        **options: as :func:`relative_similarities`.
    Returns:
        D_S, in [0, 1] (NaN if both masks are empty).
    Raises:
        ValueError: as :func:`relative_similarities`.
    """
    a, b = np.asarray(s1), np.asarray(s2)
    return float(relative_similarities(a[None], b[None], transform, **options).dice[0])
