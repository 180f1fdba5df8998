"""The toy dataset of Couteaux et al. §3.1: two "modalities" of random blobs, randomly translated.

§3.1: "We generate 240 x 240 images, where the foreground to segment is made of random blobs,
slightly different and randomly translated (Ω is the set of translations of 32 pixels maximum)
in s1 and s2. To simulate two different modalities, we fill the images with sine patterns where
the foreground/background is encoded by the angle in one modality, and frequency in the other
(see Figure 2)."  Figure 2 did not survive the text conversion; every choice the paper leaves
open is a field of :class:`ToyBlobsConfig` (defaults recorded in the reproduction's fidelity
table).

One pair, seeded by ``numpy.random.default_rng([seed, index])`` (so pair ``index`` of a stream is
the same whatever else was generated):

* **Blobs** (metaballs). ``n`` blobs, ``n`` uniform in ``n_blobs``; blob ``k`` has a centre
  ``c_k`` and a width ``sigma_k`` uniform in ``sigma_px``; the mask is
  ``sum_k exp(-|x - c_k|^2 / (2 sigma_k^2)) > level`` (a lone blob is a disc of radius
  ``sigma sqrt(2 ln(1 / level))``, overlapping blobs merge).
* **Slightly different.** ``s2``'s blobs are ``s1``'s with every centre moved by
  ``N(0, shape_jitter_px^2)`` per axis and every width scaled by ``1 + N(0, size_jitter^2)``.
* **Randomly translated.** ``s2``'s blobs are then translated by ``t``, each component an integer
  uniform in ``[-max_translation, max_translation]`` (Ω: translations of at most 32 pixels
  along each axis). The centres are drawn so that every blob of both masks, translated, stays
  ``margin_sigmas`` widths inside the image.
* **Modality 1** (``x1``, drawn on ``s1``): ``sin(2 pi <x, u(a)> / period_px + phase)`` with
  ``u(a) = (cos a, sin a)``, ``a = angle_foreground_deg`` inside the mask and
  ``angle_background_deg`` outside: foreground and background differ by the pattern's angle.
* **Modality 2** (``x2``, drawn on ``s2``): the same with the angle ``angle2_deg`` and the period
  ``period_foreground_px`` inside, ``period_background_px`` outside: they differ by frequency.
* Each image gets its own random phase (``random_phase``) and Gaussian noise
  ``N(0, noise_std^2)``.

Axis ``0`` of the arrays is the first spatial axis (rows); translations are ``(rows, columns)``
in pixels: ``s2[i + t0, j + t1] ~ s1[i, j]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["ToyBlobsConfig", "toy_pair", "toy_pairs", "toy_dataset", "TEST_SEED"]

#: Seed of the fixed test set (independent of a run's seed: every model sees the same pairs).
TEST_SEED = 3101


@dataclass(frozen=True)
class ToyBlobsConfig:
    """Parameters of the toy generator (§3.1 gives the size and Ω; the rest is ours, named).

    Attributes:
        size: image side, pixels (§3.1: 240).
        max_translation: largest translation per axis, pixels (§3.1: 32).
        n_blobs: ``(min, max)`` number of blobs, inclusive (not stated).
        sigma_px: ``(min, max)`` blob width, pixels (not stated).
        level: metaball threshold (not stated).
        shape_jitter_px: std of the per-blob centre change between ``s1`` and ``s2``, pixels
            ("slightly different", not quantified).
        size_jitter: std of the relative per-blob width change between ``s1`` and ``s2``.
        margin_sigmas: blobs stay this many widths inside the image after translation.
        period_px: modality 1 sine period, pixels (not stated).
        angle_foreground_deg, angle_background_deg: modality 1 pattern angles (not stated).
        angle2_deg: modality 2 pattern angle.
        period_foreground_px, period_background_px: modality 2 periods (not stated).
        random_phase: a random phase per image (else 0).
        noise_std: additive Gaussian noise (not stated).
    """

    size: int = 240
    max_translation: int = 32
    n_blobs: tuple = (2, 4)
    sigma_px: tuple = (10.0, 18.0)
    level: float = 0.5
    shape_jitter_px: float = 4.0
    size_jitter: float = 0.15
    margin_sigmas: float = 1.5
    period_px: float = 8.0
    angle_foreground_deg: float = 45.0
    angle_background_deg: float = -45.0
    angle2_deg: float = 0.0
    period_foreground_px: float = 5.0
    period_background_px: float = 10.0
    random_phase: bool = True
    noise_std: float = 0.2

    def __post_init__(self):
        if self.size < 16:
            raise ValueError(f"ToyBlobsConfig: size must be at least 16 pixels, got {self.size}")
        if not 0 <= self.max_translation < self.size // 2:
            raise ValueError(f"ToyBlobsConfig: max_translation must be in [0, size/2), got "
                             f"{self.max_translation}")
        lo, hi = self.n_blobs
        if not 1 <= lo <= hi:
            raise ValueError(f"ToyBlobsConfig: n_blobs must be (min, max) with 1 <= min <= max, "
                             f"got {self.n_blobs}")
        if not 0 < self.sigma_px[0] <= self.sigma_px[1]:
            raise ValueError(f"ToyBlobsConfig: sigma_px must be (min, max) > 0, got {self.sigma_px}")
        if not 0 < self.level < 1:
            raise ValueError(f"ToyBlobsConfig: level must be in (0, 1), got {self.level}")
        room = self.size - 2 * (self.margin_sigmas * self.sigma_px[1] * (1 + 3 * self.size_jitter)
                                + 3 * self.shape_jitter_px) - 2 * self.max_translation
        if room <= 0:
            raise ValueError("ToyBlobsConfig: blobs this wide and translations this large do not "
                             "fit in the image; lower sigma_px, margin_sigmas or max_translation")

    def to_dict(self) -> dict:
        """JSON-serialisable parameters."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


def _metaballs(shape, centres, sigmas, level):
    rows = np.arange(shape[0], dtype=np.float64)[:, None]
    cols = np.arange(shape[1], dtype=np.float64)[None, :]
    field = np.zeros(shape, dtype=np.float64)
    for (r, c), s in zip(centres, sigmas):
        field += np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2.0 * s * s))
    return field > level


def _sines(shape, angle_deg, period_px, phase):
    """``sin(2 pi <x, u(angle)> / period + phase)`` (angles, periods: arrays of the shape)."""
    rows, cols = np.indices(shape, dtype=np.float64)
    a = np.deg2rad(angle_deg)
    return np.sin(2.0 * np.pi * (rows * np.cos(a) + cols * np.sin(a)) / period_px + phase)


def toy_pair(index: int, seed: int, config: ToyBlobsConfig = ToyBlobsConfig()) -> dict:
    """Pair ``index`` of the stream ``seed``.

    Args:
        index: pair number (>= 0).
        seed: stream seed (a run's seed for training pairs, :data:`TEST_SEED` for the test set).
        config: generator parameters.
    Returns:
        dict with ``x1``, ``x2`` float32 ``(size, size)`` (modality 1 and 2 images), ``s1``,
        ``s2`` uint8 ``(size, size)`` (their masks), ``translation`` int ``(2,)`` (pixels, rows
        then columns, the translation of ``s2``'s blobs), ``centres`` ``(n, 2)`` and ``sigmas``
        ``(n,)`` of ``s1``'s blobs.
    Raises:
        ValueError: negative ``index``.
    """
    if index < 0:
        raise ValueError(f"toy_pair: index must be >= 0, got {index}")
    cfg = config
    rng = np.random.default_rng([int(seed), int(index)])
    size, shape = cfg.size, (cfg.size, cfg.size)
    t = rng.integers(-cfg.max_translation, cfg.max_translation + 1, size=2)
    n = int(rng.integers(cfg.n_blobs[0], cfg.n_blobs[1] + 1))
    sigmas = rng.uniform(cfg.sigma_px[0], cfg.sigma_px[1], size=n)
    margin = cfg.margin_sigmas * cfg.sigma_px[1] * (1 + 3 * cfg.size_jitter) + 3 * cfg.shape_jitter_px
    lo = margin + np.maximum(0, -t)
    hi = size - 1 - margin - np.maximum(0, t)
    centres = rng.uniform(lo, hi, size=(n, 2))
    jitter = rng.normal(0.0, cfg.shape_jitter_px, size=(n, 2))
    jitter = np.clip(jitter, -3 * cfg.shape_jitter_px, 3 * cfg.shape_jitter_px)
    scale = np.clip(1.0 + rng.normal(0.0, cfg.size_jitter, size=n), 1 - 3 * cfg.size_jitter,
                    1 + 3 * cfg.size_jitter)
    scale = np.maximum(scale, 0.1)
    s1 = _metaballs(shape, centres, sigmas, cfg.level)
    s2 = _metaballs(shape, centres + jitter + t, sigmas * scale, cfg.level)
    phases = rng.uniform(0, 2 * np.pi, size=2) if cfg.random_phase else np.zeros(2)
    x1 = _sines(shape, np.where(s1, cfg.angle_foreground_deg, cfg.angle_background_deg),
                cfg.period_px, phases[0])
    x2 = _sines(shape, cfg.angle2_deg,
                np.where(s2, cfg.period_foreground_px, cfg.period_background_px), phases[1])
    x1 = x1 + rng.normal(0.0, cfg.noise_std, size=shape)
    x2 = x2 + rng.normal(0.0, cfg.noise_std, size=shape)
    return {"x1": x1.astype(np.float32), "x2": x2.astype(np.float32),
            "s1": s1.astype(np.uint8), "s2": s2.astype(np.uint8),
            "translation": t.astype(np.int64), "centres": centres, "sigmas": sigmas}


def toy_pairs(n: int, seed: int = TEST_SEED, config: ToyBlobsConfig = ToyBlobsConfig(),
              start: int = 0) -> dict:
    """Pairs ``start .. start + n - 1`` of the stream ``seed``, stacked.

    Returns:
        dict ``x1``, ``x2`` float32 ``(n, size, size)``, ``s1``, ``s2`` uint8
        ``(n, size, size)``, ``translation`` int ``(n, 2)``.
    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"toy_pairs: n must be >= 1, got {n}")
    pairs = [toy_pair(start + i, seed, config) for i in range(n)]
    return {k: np.stack([p[k] for p in pairs]) for k in ("x1", "x2", "s1", "s2", "translation")}


def toy_dataset(seed: int, batch_size: int, config: ToyBlobsConfig = ToyBlobsConfig(), *,
                start: int = 0, count: int | None = None):
    """``tf.data`` of batches ``{"x1", "x2", "s1", "s2"}``, each ``(batch, size, size, 1)`` float32.

    Pairs ``start, start + 1, ...`` of the stream ``seed`` (all of them when ``count`` is
    ``None``: an endless stream), generated in parallel, in order (deterministic), so a training
    run resumed after ``k`` steps continues with pair ``start + k * batch_size``.

    Raises:
        ValueError: ``batch_size < 1``.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise ValueError(f"toy_dataset: batch_size must be >= 1, got {batch_size}")
    size = config.size

    def make(i):
        p = toy_pair(int(i), seed, config)
        return [p[k].astype(np.float32)[..., None] for k in ("x1", "x2", "s1", "s2")]

    def tf_make(i):
        out = tf.numpy_function(make, [i], [tf.float32] * 4, stateful=False)
        for o in out:
            o.set_shape((size, size, 1))
        return dict(zip(("x1", "x2", "s1", "s2"), out))

    ds = tf.data.Dataset.range(start, start + count) if count is not None else \
        tf.data.Dataset.range(start, np.iinfo(np.int64).max)
    ds = ds.map(tf_make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
