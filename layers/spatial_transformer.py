"""Dense spatial transformer: backward warping of an image by a dense sampling grid.

Conventions used throughout the suite
-------------------------------------
* Tensors are channels-last: images ``(batch, *spatial, channels)`` with
  ``spatial = (D, H, W)`` in 3-D or ``(H, W)`` in 2-D.
* A **sampling grid** ``(batch, *spatial_out, ndim)`` holds, for every output
  voxel, the position in the *input* image to read from, in **voxel units**,
  0-based: component ``i`` is the coordinate along spatial axis ``i`` (so
  ``grid[..., 0]`` indexes ``D``).  The identity grid of a ``(D, H, W)`` volume
  is ``grid[d, h, w] = (d, h, w)``.
* A **displacement field** has the same layout and is ``grid - identity``.

This is the sampling operation W(.) of U-ReSNet (Estienne et al. 2019, eq. 1,
"backward trilinear interpolation sampling"), of Christodoulidis et al. 2018,
of the registration pyramid (Gunnarsson et al. 2020, module W) and of the
diffeomorphic U-Net (Bouabid et al.).

Written with ``keras.ops`` only, so it runs on every Keras backend.

Implementations and XLA (issue 11)
----------------------------------
Two samplers compute the same values (to float rounding, ~1e-7):

* ``"reference"``: one gather per cell corner (``2**ndim`` gathers of the flattened image), the
  gradient by automatic differentiation.  The only sampler before issue 11; the fastest without
  XLA, and under XLA for images of several channels.
* ``"fused"``: the image is first expanded into a table holding, for every voxel, the values of
  its ``2**ndim`` cell corners (edge-replicated for ``"border"``, zero-padded for ``"zeros"``), so
  that the sampling is **one** gather of one row per output voxel.  Linear interpolation only
  (``"nearest"`` is already one gather and always uses the reference sampler); needs a static
  spatial shape.  The fastest under XLA for single-channel images (the table is ``2**ndim`` times
  the image, which stops paying from two channels on).

``jit_compile`` compiles the warp alone with XLA (TensorFlow backend), backward pass included
(:mod:`regseg.layers._xla`).  ``"auto"`` (the default) compiles when the warp runs inside a
TensorFlow graph (``Model.fit`` / ``predict``, ``tf.function``) and op determinism is off; eager
calls run the reference sampler uncompiled (exactly as before).  ``implementation="auto"`` (the
default) picks the fused sampler for a compiled single-channel warp, the reference sampler
otherwise.  Measured
on 2 CPU cores (``benchmarks/run.py``): at 128^3, one channel, forward+backward about 4x faster
than the reference sampler without XLA and about 2x faster than PyTorch's ``grid_sample``; at
80x104x88 with 4 channels the compiled reference sampler is about 3x faster than uncompiled.
Change the process-wide defaults with :func:`set_warp_defaults` (the sampler) and
:func:`~regseg.layers.set_layers_jit_compile` (XLA, shared with the cost volume; ``False`` keeps
XLA out entirely), or per call / per layer with the ``implementation`` and ``jit_compile``
arguments.  ``implementation="reference", jit_compile=False`` is exactly the warp before issue
11.  Other backends ignore ``jit_compile``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools

import keras
from keras import ops

from . import _xla
from ._checks import (Float32UnderMixedPrecision, check_batch, check_finite as _check_finite,
                      check_option, float_input)

_INTERPOLATIONS = ("linear", "nearest")
_PADDINGS = ("border", "zeros")
_FIELDS = ("sampling_grid", "displacement")
_IMPLEMENTATIONS = ("auto", "fused", "reference")
_HALF = ("float16", "bfloat16")

#: process-wide default sampler of :func:`warp` and :class:`SpatialTransformer` (see
#: :func:`set_warp_defaults`; the XLA default is shared: :func:`_xla.set_layers_jit_compile`)
_DEFAULTS = {"implementation": "auto"}


def warp_defaults() -> dict:
    """The process-wide defaults ``{"implementation": ..., "jit_compile": ...}`` of the warp
    (``jit_compile`` is the layers' shared XLA default)."""
    return {**_DEFAULTS, "jit_compile": _xla.layers_jit_compile()}


def set_warp_defaults(*, implementation=None, jit_compile=None) -> dict:
    """Set the process-wide defaults used when a call or a layer leaves them unset (``None``).

    Args:
        implementation: ``"auto"`` (``"fused"`` for a single-channel warp compiled with XLA,
            else ``"reference"``), ``"fused"`` or ``"reference"``; ``None`` keeps the current
            value.
        jit_compile: ``"auto"`` (XLA inside TensorFlow graphs unless op determinism is on),
            ``True`` (always, eager calls included) or ``False`` (never); ``None`` keeps it.
            This is the XLA default shared with the cost volume
            (:func:`~regseg.layers.set_layers_jit_compile`).
    Returns:
        The previous defaults (a dict to pass back as ``set_warp_defaults(**previous)``).
    Raises:
        ValueError: a value outside those listed (naming the option).

    >>> previous = set_warp_defaults(jit_compile=False)
    >>> warp_defaults()["jit_compile"], set_warp_defaults(**previous)["jit_compile"]
    (False, False)
    """
    previous = warp_defaults()
    if implementation is not None:
        _DEFAULTS["implementation"] = check_option("implementation", implementation,
                                                   _IMPLEMENTATIONS)
    if jit_compile is not None:
        _xla.set_layers_jit_compile(jit_compile)
    return previous


@contextlib.contextmanager
def warp_options(*, implementation=None, jit_compile=None):
    """Context manager: :func:`set_warp_defaults` inside the ``with`` block, restored after."""
    previous = set_warp_defaults(implementation=implementation, jit_compile=jit_compile)
    try:
        yield warp_defaults()
    finally:
        set_warp_defaults(**previous)


def identity_grid(spatial_shape, dtype="float32"):
    """Return the 0-based identity sampling grid of shape ``(*spatial_shape, ndim)``.

    Args:
        spatial_shape: tuple of ints, e.g. ``(D, H, W)``.
    Returns:
        Tensor ``(*spatial_shape, ndim)``, voxel units; ``grid[..., i]`` is the
        index along spatial axis ``i``.

    >>> np.asarray(identity_grid((2, 3)))[1, 2].tolist()
    [1.0, 2.0]
    """
    axes = [ops.arange(int(s), dtype=dtype) for s in spatial_shape]
    mesh = ops.meshgrid(*axes, indexing="ij")
    return ops.stack(mesh, axis=-1)


def check_warp_shapes(where, image_shape, grid_shape, grid_name="grid"):
    """Static shape rules of :func:`warp` (``None`` entries are unknown and pass).

    * the image is batched and channels-last, ``(batch, *spatial, channels)``: rank >= 3;
    * the grid (or displacement) is ``(batch, *spatial_out, ndim)`` with ``ndim`` the image's
      number of spatial dimensions: the same rank as the image, last axis ``ndim``;
    * known batch sizes are equal.

    Raises:
        ValueError: starting with ``where``, naming the rule and both shapes.
    """
    image_shape, grid_shape = tuple(image_shape), tuple(grid_shape)
    shapes = f"image shape {image_shape}, {grid_name} shape {grid_shape}"
    if len(image_shape) < 3:
        raise ValueError(f"{where}: the image must be batched and channels-last, "
                         f"(batch, *spatial, channels), got {shapes}")
    ndim = len(image_shape) - 2
    if len(grid_shape) != len(image_shape):
        hint = (f"; an unbatched {grid_name}? add a batch axis ({grid_name}[None])"
                if len(grid_shape) == len(image_shape) - 1 else "")
        raise ValueError(f"{where}: the {grid_name} must be (batch, *spatial_out, {ndim}) for an "
                         f"image with {ndim} spatial dimensions (rank {len(image_shape)}), got "
                         f"rank {len(grid_shape)}: {shapes}{hint}")
    if grid_shape[-1] is not None and grid_shape[-1] != ndim:
        raise ValueError(f"{where}: the {grid_name} has {grid_shape[-1]} components (last axis) "
                         f"but the image has {ndim} spatial dimensions: {shapes}")
    if None not in (image_shape[0], grid_shape[0]) and image_shape[0] != grid_shape[0]:
        raise ValueError(f"{where}: the batch sizes (axis 0) differ: {shapes}")


def _prepare(where, image, grid, grid_name, check_finite):
    """Checks and dtype rule shared by :func:`warp` and :class:`SpatialTransformer`."""
    check_warp_shapes(where, image.shape, grid.shape, grid_name)
    image = float_input(where, "image", image)
    grid = float_input(where, grid_name, grid)
    image, grid = check_batch(where, image=image, **{grid_name: grid})
    if check_finite:
        grid = _check_finite(where, grid_name, grid)
    return image, grid


def warp(image, grid, *, interpolation="linear", padding="border", check_finite=False,
         implementation=None, jit_compile=None):
    """Sample ``image`` at the voxel coordinates ``grid`` (batched, any ndim).

    Args:
        image: ``(batch, *spatial_in, channels)`` tensor.  Float images keep their dtype;
            integer and bool images are cast to float32 first (so a label map comes back as
            float32: warp one-hot labels linearly, or label ids with ``"nearest"`` and cast back).
            Other dtypes raise.
        grid: ``(batch, *spatial_out, ndim)`` sampling coordinates in voxels of
            ``image`` (0-based, component i along spatial axis i); same batch size as ``image``.
        interpolation: ``"linear"`` (bi/trilinear; differentiable w.r.t. image
            and grid) or ``"nearest"`` (rounds half up, ``floor(x + 0.5)``; not
            differentiable w.r.t. the grid).
        padding: ``"border"`` clamps coordinates to the volume (edge
            replication, as in the papers' released code; equals
            ``scipy.ndimage.map_coordinates(mode="nearest")``), ``"zeros"``
            treats voxels outside the volume as 0 and interpolates towards them
            (equals ``map_coordinates(mode="grid-constant", cval=0)``, and
            PyTorch ``grid_sample(padding_mode="zeros", align_corners=True)``).
        check_finite: raise if ``grid`` holds NaN or ±Inf (see below).  Off by default.
        implementation: ``"auto"``, ``"fused"`` or ``"reference"`` (module docstring); ``None``
            follows :func:`set_warp_defaults` (``"auto"``).
        jit_compile: ``"auto"``, ``True`` or ``False``: compile the warp alone with XLA (module
            docstring); ``None`` follows :func:`set_warp_defaults` (``"auto"``).
    Returns:
        ``(batch, *spatial_out, channels)`` tensor, dtype of ``image`` (float32 for integer or
        bool images).  float16 and bfloat16 images and grids are sampled in float32 (a 16-bit
        coordinate cannot address a voxel of a 256-voxel axis to better than one voxel) and the
        result is cast back to the image's dtype.
    Raises:
        ValueError: unknown ``interpolation`` or ``padding`` (the message names the option and
            its allowed values); and, naming ``warp`` and both shapes: an image that is not
            ``(batch, *spatial, channels)``, a grid of another rank (e.g. unbatched), a grid whose
            last axis is not the image's number of spatial dimensions, different batch sizes, a
            non-numeric dtype; with ``check_finite``, a grid holding NaN or ±Inf.
        tf.errors.InvalidArgumentError: on the TensorFlow backend, inside a graph
            (``tf.function``, ``Model.fit``), the same batch and ``check_finite`` rules when the
            batch size or the values are only known at run time (see ``layers/_checks.py``).

    Non-finite coordinates (``check_finite=False``): a NaN coordinate gives NaN at that output
    voxel (every interpolation and padding); ±Inf is a coordinate far outside the volume (the
    edge value with ``"border"``, 0 with ``"zeros"``).  ``check_finite=True`` raises instead:
    ``ValueError`` for concrete values, a graph assertion inside ``tf.function`` (dropped by XLA,
    ``jit_compile=True``, with a warning), no check on symbolic Keras tensors.

    Source: the sampler W(M, Phi) of Estienne et al. 2019, eq. 1 ("backward
    trilinear interpolation sampling"); Gunnarsson et al. 2020, module W.

    >>> grid = np.full((1, 2, 2, 2), 1.5, "float32")
    >>> float(warp(np.ones((1, 4, 4, 1), "float32"), grid)[0, 0, 0, 0])
    1.0
    """
    check_option("interpolation", interpolation, _INTERPOLATIONS)
    check_option("padding", padding, _PADDINGS)
    _check_choice(implementation, jit_compile)
    image, grid = _prepare("warp", image, grid, "grid", check_finite)
    return _sample(image, grid, interpolation, padding, implementation, jit_compile)


def _check_choice(implementation, jit_compile):
    if implementation is not None:
        check_option("implementation", implementation, _IMPLEMENTATIONS)
    _xla.check_jit_compile(jit_compile)


def _resolve(image, grid, interpolation, implementation, jit_compile):
    """``(sampler name, compile with XLA)`` for one call (see the module docstring)."""
    implementation = _DEFAULTS["implementation"] if implementation is None else implementation
    jit = _xla.resolve_jit_compile(jit_compile)
    static = all(s is not None for s in image.shape[1:])
    if interpolation == "nearest" or not static:
        return "reference", jit
    if implementation == "auto":
        compiled = jit or keras.backend.backend() == "jax"
        implementation = "fused" if compiled and image.shape[-1] == 1 else "reference"
    return implementation, jit


def _sample(image, grid, interpolation, padding, implementation=None, jit_compile=None):
    """The sampling of :func:`warp`, on checked inputs (dtype rule, sampler, XLA)."""
    out_dtype = keras.backend.standardize_dtype(image.dtype)
    if out_dtype in _HALF:
        image = ops.cast(image, "float32")
    if keras.backend.standardize_dtype(grid.dtype) in _HALF:
        grid = ops.cast(grid, "float32")
    name, jit = _resolve(image, grid, interpolation, implementation, jit_compile)
    if jit:
        sample = functools.partial(_SAMPLERS[name], interpolation=interpolation, padding=padding,
                                   xla=True)
        compiled = _xla.compiled_with_gradient(("warp", name, interpolation, padding), sample)
        out = compiled(image, grid)
    else:
        out = _SAMPLERS[name](image, grid, interpolation, padding)
    return ops.cast(out, out_dtype) if out_dtype in _HALF else out


def _sample_reference(image, grid, interpolation, padding, xla=False):
    """The reference sampler: one gather per cell corner (the only sampler before issue 11).

    ``xla=True`` adds :func:`_propagate_nan` (needed under XLA only); without it this is exactly
    the warp before issue 11 (the extra ops were measured to make ``--deterministic`` CPU runs
    differ in the last bits from run to run).
    """
    ndim = len(image.shape) - 2
    grid = ops.cast(grid, image.dtype)
    in_shape = ops.shape(image)
    batch = in_shape[0]
    sizes = [in_shape[1 + i] for i in range(ndim)]
    channels = in_shape[-1]
    # strides of the flattened (batch * voxels, channels) image
    strides = [1] * ndim
    for i in range(ndim - 2, -1, -1):
        strides[i] = strides[i + 1] * sizes[i + 1]
    n_in = strides[0] * sizes[0]
    flat = ops.reshape(image, (-1, channels))
    out_spatial = ops.shape(grid)[1:-1]
    grid_flat = ops.reshape(grid, (batch, -1, ndim))  # (B, M, ndim)
    batch_offset = ops.reshape(ops.arange(batch, dtype="int32") * n_in, (-1, 1))  # (B,1)

    def _gather(index):  # index (B, M) int32 -> (B, M, C)
        values = ops.take(flat, ops.reshape(index + batch_offset, (-1,)), axis=0)
        return ops.reshape(values, (batch, -1, channels))

    coords = [grid_flat[..., i] for i in range(ndim)]
    maxes = [ops.cast(s - 1, image.dtype) for s in sizes]

    if interpolation == "nearest":
        index = 0
        inside = None
        probe = None
        for i in range(ndim):
            c = coords[i]
            r = ops.floor(c + 0.5)
            if padding == "zeros":
                ok = ops.logical_and(r >= 0, r <= maxes[i])
                inside = ok if inside is None else ops.logical_and(inside, ok)
            r = ops.clip(r, 0, maxes[i])  # finite, or NaN for a NaN coordinate (without XLA)
            probe = r if probe is None else probe + r
            # the cast of NaN to int32 is undefined: clip again as integers, so that the gather
            # stays inside the volume (the voxel is made NaN below)
            hi = ops.cast(maxes[i], "int32")
            index = index + ops.clip(ops.cast(r, "int32"), 0, hi) * strides[i]
        out = _gather(index)
        if padding == "zeros":
            out = out * ops.cast(inside, image.dtype)[..., None]
        if xla:
            out = _propagate_nan(out, grid_flat)
        else:
            out = out + (probe * 0.0)[..., None]  # + 0, or NaN where a coordinate is NaN
        return ops.reshape(out, (batch, *out_spatial, channels))

    lows, fracs, valid = [], [], []
    for i in range(ndim):
        c = coords[i]
        if padding == "border":
            c = ops.clip(c, 0, maxes[i])
        else:
            # beyond one voxel outside, every corner is outside: the same zero output, and ±Inf
            # (or a huge value) then gives 0, not inf - inf = NaN nor an int32 overflow
            c = ops.clip(c, -1, maxes[i] + 1)
        low = ops.floor(c)
        frac = c - low
        low_i = ops.cast(low, "int32")
        high_i = low_i + 1
        if padding == "zeros":
            valid.append((
                ops.cast(ops.logical_and(low >= 0, low <= maxes[i]), image.dtype),
                ops.cast(ops.logical_and(low + 1 >= 0, low + 1 <= maxes[i]), image.dtype),
            ))
        hi_clip = ops.cast(maxes[i], "int32")
        lows.append((ops.clip(low_i, 0, hi_clip), ops.clip(high_i, 0, hi_clip)))
        fracs.append(frac)

    out = None
    for corner in itertools.product((0, 1), repeat=ndim):
        index = 0
        weight = None
        for i, bit in enumerate(corner):
            index = index + lows[i][bit] * strides[i]
            w = fracs[i] if bit else 1.0 - fracs[i]
            if padding == "zeros":
                w = w * valid[i][bit]
            weight = w if weight is None else weight * w
        term = _gather(index) * weight[..., None]
        out = term if out is None else out + term
    if xla:
        out = _propagate_nan(out, grid_flat)
    return ops.reshape(out, (batch, *out_spatial, channels))


def _propagate_nan(out, grid_flat):
    """``out`` ``(B, M, C)`` made NaN where a coordinate of ``grid_flat`` ``(B, M, ndim)`` is NaN.

    Explicit, because XLA's CPU min / max may return the bound for a NaN operand (so that a
    clipped NaN coordinate would silently read the edge voxel); the added term is 0 elsewhere.
    """
    bad = ops.any(ops.isnan(grid_flat), axis=-1)
    nan = ops.cast(float("nan"), out.dtype)
    return out + ops.where(bad, nan, ops.cast(0.0, out.dtype))[..., None]


def _sample_fused(image, grid, interpolation, padding, xla=False):
    """The fused sampler: one gather of one row of ``2**ndim`` corner values per output voxel.

    Linear interpolation, static spatial shape (the dispatcher sends the rest to
    :func:`_sample_reference`).  The same values as the reference sampler to float rounding:
    the same clipped coordinates, fractions and weights; a corner outside the volume reads the
    edge value (``"border"``: a one-voxel symmetric pad, i.e. edge replication) or 0
    (``"zeros"``: one voxel of zeros before, two after, so that the reference sampler's
    validity masks are the padding itself). NaN coordinates give NaN (:func:`_propagate_nan`,
    with or without XLA; ``xla`` is passed on where the reference sampler takes over).
    """
    if interpolation != "linear":
        return _sample_reference(image, grid, interpolation, padding, xla=xla)
    ndim = len(image.shape) - 2
    sizes = [int(s) for s in image.shape[1:-1]]
    channels = int(image.shape[-1])
    corners = 2 ** ndim
    grid = ops.cast(grid, image.dtype)
    batch = ops.shape(image)[0]
    if padding == "border":
        padded = ops.pad(image, [[0, 0]] + [[0, 1]] * ndim + [[0, 0]], mode="symmetric")
        extent, offset = sizes, 0          # cell origins 0..s-1
    else:
        padded = ops.pad(image, [[0, 0]] + [[1, 2]] * ndim + [[0, 0]])
        extent, offset = [s + 2 for s in sizes], 1   # cell origins -1..s, shifted by one
    parts = []
    for corner in itertools.product((0, 1), repeat=ndim):
        window = tuple(slice(b, b + n) for b, n in zip(corner, extent))
        parts.append(padded[(slice(None), *window, slice(None))])
    # (batch * cells, corners * channels): row = the cell's corner values, corner-major
    table = ops.reshape(ops.concatenate(parts, axis=-1), (-1, corners * channels))
    strides = [1] * ndim
    for i in range(ndim - 2, -1, -1):
        strides[i] = strides[i + 1] * extent[i + 1]
    cells = strides[0] * extent[0]
    out_spatial = ops.shape(grid)[1:-1]
    grid_flat = ops.reshape(grid, (batch, -1, ndim))
    index = ops.reshape(ops.arange(batch, dtype="int32") * cells, (-1, 1))
    weight = None
    for i in range(ndim):
        if padding == "border":
            c = ops.clip(grid_flat[..., i], 0.0, sizes[i] - 1.0)
        else:
            c = ops.clip(grid_flat[..., i], -1.0, float(sizes[i]))
        low = ops.floor(c)
        frac = c - low
        # NaN coordinates: the int cast is undefined, the integer clip keeps the gather inside
        index = index + ops.clip(ops.cast(low, "int32") + offset, 0, extent[i] - 1) * strides[i]
        w = ops.stack([1.0 - frac, frac], axis=-1)
        weight = w if weight is None else ops.reshape(weight[..., :, None] * w[..., None, :],
                                                       (batch, -1, 2 ** (i + 1)))
    values = ops.take(table, ops.reshape(index, (-1,)), axis=0)
    values = ops.reshape(values, (batch, -1, corners, channels))
    out = _propagate_nan(ops.sum(values * weight[..., None], axis=2), grid_flat)
    return ops.reshape(out, (batch, *out_spatial, channels))


_SAMPLERS = {"reference": _sample_reference, "fused": _sample_fused}


@keras.saving.register_keras_serializable(package="regseg")
class SpatialTransformer(Float32UnderMixedPrecision, keras.layers.Layer):
    """Warp an image with a dense sampling grid or displacement field.

    Call: ``SpatialTransformer(...)([image, field])``

    * ``image``: ``(batch, *spatial_in, channels)``.
    * ``field``: ``(batch, *spatial_out, ndim)`` in voxel units: a sampling grid
      (``field="sampling_grid"``, the U-ReSNet / Christodoulidis convention) or a
      displacement (``field="displacement"``, voxelmorph convention; the grid is
      identity + displacement).
    * returns ``(batch, *spatial_out, channels)``.

    Args:
        interpolation: ``"linear"`` or ``"nearest"`` (see :func:`warp`).
        padding: ``"border"`` (default; clamp, as the papers' released code)
            or ``"zeros"``.
        field: ``"sampling_grid"`` (default) or ``"displacement"``.
        check_finite: raise when the field holds NaN or ±Inf (default False; see :func:`warp`
            for the checks and for what non-finite values give without it).
        implementation, jit_compile: the sampler and XLA choice of :func:`warp`; ``None``
            (default) follows :func:`set_warp_defaults` at call time.

    Under a mixed-precision global policy (``mixed_bfloat16``, ``mixed_float16``) the layer
    computes in float32 (its dtype policy is ``"float32"`` unless ``dtype`` is given): image and
    field are cast to float32 and the output is float32.

    Inputs follow :func:`warp`'s rules: integer and bool images are cast to float32; shapes are
    checked at call time (and by ``compute_output_shape`` while a model is built).

    Source: U-ReSNet (Estienne et al. 2019) eq. 1 and eq. 3 (W(M, D));
    Jaderberg et al. 2015.

    Raises:
        ValueError: unknown ``interpolation``, ``padding`` or ``field`` (at
            construction; the message names the option and its allowed
            values); at call, naming the layer and the shapes: an image that is not
            ``(batch, *spatial, channels)``, a field of another rank (e.g. unbatched) or whose
            last axis is not the image's number of spatial dimensions, different batch sizes,
            a non-numeric dtype, ``field="displacement"`` with a dynamic spatial shape, and with
            ``check_finite`` a field holding NaN or ±Inf.

    >>> image, disp = np.ones((1, 4, 4, 1), "float32"), np.zeros((1, 4, 4, 2), "float32")
    >>> tuple(SpatialTransformer(field="displacement")([image, disp]).shape)
    (1, 4, 4, 1)
    """

    def __init__(self, interpolation="linear", padding="border", field="sampling_grid",
                 check_finite=False, implementation=None, jit_compile=None, **kwargs):
        super().__init__(**kwargs)
        check_option("interpolation", interpolation, _INTERPOLATIONS)
        check_option("padding", padding, _PADDINGS)
        check_option("field", field, _FIELDS)
        _check_choice(implementation, jit_compile)
        self.interpolation = interpolation
        self.padding = padding
        self.field = field
        self.check_finite = bool(check_finite)
        self.implementation = implementation
        self.jit_compile = jit_compile

    def _where(self):
        return f"SpatialTransformer {self.name!r}"

    def call(self, inputs):
        image, field = inputs
        name = "displacement" if self.field == "displacement" else "grid"
        image, field = _prepare(self._where(), image, field, name, self.check_finite)
        if self.field == "displacement":
            spatial = field.shape[1:-1]
            if any(s is None for s in spatial):
                raise ValueError(f"{self._where()}: field='displacement' needs a static spatial "
                                 f"shape, got displacement shape {tuple(field.shape)}")
            field = field + ops.cast(identity_grid(spatial), field.dtype)[None]
        return _sample(image, field, self.interpolation, self.padding, self.implementation,
                       self.jit_compile)

    def compute_output_shape(self, input_shape):
        image_shape, field_shape = input_shape
        name = "displacement" if self.field == "displacement" else "grid"
        check_warp_shapes(self._where(), image_shape, field_shape, name)
        return (image_shape[0], *field_shape[1:-1], image_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(interpolation=self.interpolation, padding=self.padding, field=self.field,
                      check_finite=self.check_finite)
        # only when set, so that configs stay loadable by versions without these options
        if self.implementation is not None:
            config["implementation"] = self.implementation
        if self.jit_compile is not None:
            config["jit_compile"] = self.jit_compile
        return config
