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
"""

from __future__ import annotations

import itertools

import keras
from keras import ops

from ._checks import check_option

_INTERPOLATIONS = ("linear", "nearest")
_PADDINGS = ("border", "zeros")
_FIELDS = ("sampling_grid", "displacement")


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


def warp(image, grid, *, interpolation="linear", padding="border"):
    """Sample ``image`` at the voxel coordinates ``grid`` (batched, any ndim).

    Args:
        image: ``(batch, *spatial_in, channels)`` float tensor.
        grid: ``(batch, *spatial_out, ndim)`` sampling coordinates in voxels of
            ``image`` (0-based, component i along spatial axis i).
        interpolation: ``"linear"`` (bi/trilinear; differentiable w.r.t. image
            and grid) or ``"nearest"`` (rounds half up, ``floor(x + 0.5)``; not
            differentiable w.r.t. the grid).
        padding: ``"border"`` clamps coordinates to the volume (edge
            replication, as in the papers' released code; equals
            ``scipy.ndimage.map_coordinates(mode="nearest")``), ``"zeros"``
            treats voxels outside the volume as 0 and interpolates towards them
            (equals ``map_coordinates(mode="grid-constant", cval=0)``, and
            PyTorch ``grid_sample(padding_mode="zeros", align_corners=True)``).
    Returns:
        ``(batch, *spatial_out, channels)`` tensor, dtype of ``image``.
    Raises:
        ValueError: unknown ``interpolation`` or ``padding`` (the message names
            the option and its allowed values), or ``grid``'s last axis differs
            from the image's number of spatial dimensions.

    Source: the sampler W(M, Phi) of Estienne et al. 2019, eq. 1 ("backward
    trilinear interpolation sampling"); Gunnarsson et al. 2020, module W.

    >>> grid = np.full((1, 2, 2, 2), 1.5, "float32")
    >>> float(warp(np.ones((1, 4, 4, 1), "float32"), grid)[0, 0, 0, 0])
    1.0
    """
    check_option("interpolation", interpolation, _INTERPOLATIONS)
    check_option("padding", padding, _PADDINGS)
    ndim = len(image.shape) - 2
    if grid.shape[-1] is not None and grid.shape[-1] != ndim:
        raise ValueError(
            f"grid has {grid.shape[-1]} components but the image has {ndim} spatial "
            f"dimensions (image shape {tuple(image.shape)}, grid shape {tuple(grid.shape)})")

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
        for i in range(ndim):
            c = coords[i]
            r = ops.floor(c + 0.5)
            if padding == "zeros":
                ok = ops.logical_and(r >= 0, r <= maxes[i])
                inside = ok if inside is None else ops.logical_and(inside, ok)
            r = ops.clip(r, 0, maxes[i])
            index = index + ops.cast(r, "int32") * strides[i]
        out = _gather(index)
        if padding == "zeros":
            out = out * ops.cast(inside, image.dtype)[..., None]
        return ops.reshape(out, (batch, *out_spatial, channels))

    lows, fracs, valid = [], [], []
    for i in range(ndim):
        c = coords[i]
        if padding == "border":
            c = ops.clip(c, 0, maxes[i])
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
    return ops.reshape(out, (batch, *out_spatial, channels))


@keras.saving.register_keras_serializable(package="regseg")
class SpatialTransformer(keras.layers.Layer):
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

    Source: U-ReSNet (Estienne et al. 2019) eq. 1 and eq. 3 (W(M, D));
    Jaderberg et al. 2015.

    Raises:
        ValueError: unknown ``interpolation``, ``padding`` or ``field`` (at
            construction; the message names the option and its allowed
            values), mismatched ``ndim``, or ``field="displacement"`` with a
            dynamic spatial shape (at call).

    >>> image, disp = np.ones((1, 4, 4, 1), "float32"), np.zeros((1, 4, 4, 2), "float32")
    >>> tuple(SpatialTransformer(field="displacement")([image, disp]).shape)
    (1, 4, 4, 1)
    """

    def __init__(self, interpolation="linear", padding="border", field="sampling_grid", **kwargs):
        super().__init__(**kwargs)
        check_option("interpolation", interpolation, _INTERPOLATIONS)
        check_option("padding", padding, _PADDINGS)
        check_option("field", field, _FIELDS)
        self.interpolation = interpolation
        self.padding = padding
        self.field = field

    def call(self, inputs):
        image, field = inputs
        if self.field == "displacement":
            spatial = field.shape[1:-1]
            if any(s is None for s in spatial):
                raise ValueError("field='displacement' needs a static spatial shape")
            field = field + ops.cast(identity_grid(spatial), field.dtype)[None]
        return warp(image, field, interpolation=self.interpolation, padding=self.padding)

    def compute_output_shape(self, input_shape):
        image_shape, field_shape = input_shape
        return (image_shape[0], *field_shape[1:-1], image_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(interpolation=self.interpolation, padding=self.padding, field=self.field)
        return config
