"""Qualitative figures in the style of U-ReSNet (Estienne et al. 2019) Figs. 2 and 3.

Matplotlib is used through :class:`matplotlib.figure.Figure` with the Agg
canvas only (no pyplot, no display, no global backend switch), and PNGs are
written atomically.

Orientation: volumes are indexed ``[x, y, z]`` in RAS order (x: left → right,
y: posterior → anterior, z: inferior → superior). Slices are shown in the
neurological convention (patient left on the left of the panel):

* axial (z = mid): horizontal x (L → R), vertical y (P bottom → A top);
* coronal (y = mid): horizontal x (L → R), vertical z (I bottom → S top);
* sagittal (x = mid): horizontal y (P → A), vertical z (I bottom → S top).

2-D inputs ``(H, W)`` are shown as a single row with ``H`` horizontal and
``W`` vertical (the same ``[x, y]`` reading as the axial plane).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .tables import atomic_write_bytes

__all__ = ["registration_figure", "segmentation_figure", "mid_slices", "DEFAULT_SEG_COLOURS"]

#: U-ReSNet Fig. 3 colours: blue CeblWM, green CeblC, yellow LV (labels 1, 2, 3).
DEFAULT_SEG_COLOURS = ("blue", "green", "yellow")


def mid_slices(volume: np.ndarray, index: Sequence[int] | None = None) -> list[tuple[str, np.ndarray]]:
    """Axial, coronal and sagittal slices of a RAS volume, ready for ``imshow``.

    Args:
        volume: np.ndarray, shape ``(X, Y, Z)``, ``(X, Y, Z, C)`` or
            ``(H, W)``. ``C`` trailing channels are kept (e.g. displacement
            components). A 3-D array is always read as a volume, never as
            ``(H, W, C)``.
        index: ``(ix, iy, iz)``, optional. Slice positions; default the
            middle of each axis.

    Returns:
        list of (plane name, 2-D array transposed for
        ``imshow(origin='lower')``): for 3-D:
        ``[("axial", ...), ("coronal", ...), ("sagittal", ...)]``; for 2-D:
        ``[("2-D", ...)]``.
    """
    v = np.asarray(volume)
    spatial = v.ndim if v.ndim in (2, 3) else v.ndim - 1
    return _slices(v, spatial, index)


def _slices(v: np.ndarray, spatial: int, index) -> list[tuple[str, np.ndarray]]:
    if spatial == 2:
        return [("2-D", np.swapaxes(v, 0, 1))]
    if index is None:
        index = tuple(s // 2 for s in v.shape[:3])
    ix, iy, iz = index
    return [
        ("axial", np.swapaxes(v[:, :, iz], 0, 1)),
        ("coronal", np.swapaxes(v[:, iy, :], 0, 1)),
        ("sagittal", np.swapaxes(v[ix, :, :], 0, 1)),
    ]


def _save(fig: Figure, path, dpi: int, overwrite: bool) -> Path:
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"refusing to overwrite existing file {path} (pass overwrite=True)")
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def _intensity_range(*images: np.ndarray) -> tuple[float, float]:
    vals = np.concatenate([np.asarray(im, dtype=np.float64).ravel() for im in images])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(vals.min()), float(vals.max())
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def _check_images(names: Sequence[str], arrays: Sequence[np.ndarray], fname: str) -> tuple[int, ...]:
    shape = None
    for n, a in zip(names, arrays):
        if a.ndim not in (2, 3):
            raise ValueError(f"{fname}: {n} must be 2-D or 3-D, got shape {a.shape}")
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise ValueError(f"{fname}: {n} has shape {a.shape}, expected {shape}")
    return shape


def registration_figure(
    moving,
    reference,
    deformed,
    displacement,
    path,
    *,
    title: str | None = None,
    components: bool = False,
    slice_index: Sequence[int] | None = None,
    dpi: int = 100,
    overwrite: bool = True,
) -> Path:
    """Registration panel like U-ReSNet Fig. 2, saved as PNG.

    One row per plane (axial, coronal, sagittal mid-slices; one row for 2-D
    inputs); columns: moving, reference, deformed image, then the
    displacement — its magnitude ``||u||`` in voxels as a heat map with a
    colour bar (default), or with ``components=True`` one diverging map per
    component (u_x, u_y, u_z, voxels, symmetric colour range).

    Args:
        moving, reference, deformed: array_like, shape ``(X, Y, Z)`` or
            ``(H, W)``. Intensity images on the same grid, RAS order (see
            module docstring). The three share one grey-level window
            (0.5–99.5 percentiles).
        displacement: array_like, shape ``(X, Y, Z, 3)`` or ``(H, W, 2)``.
            Displacement field in voxels, component ``c`` along array axis
            ``c``.
        path: str or os.PathLike. Output PNG (written atomically; folders
            created).
        title: str, optional, keyword-only. Figure title.
        components: bool, keyword-only. Show the components instead of the
            magnitude.
        slice_index: ``(ix, iy, iz)``, optional, keyword-only. Slice positions
            (default: middle of each axis).
        dpi: int, keyword-only.
        overwrite: bool, keyword-only. If False, raise FileExistsError when
            ``path`` exists.

    Returns:
        pathlib.Path: the written PNG.

    Raises:
        ValueError: On inconsistent shapes.
        FileExistsError: If ``path`` exists and ``overwrite`` is False.

    Source: Estienne et al. 2019 (U-ReSNet), Fig. 2: "the moving, reference,
    deformed image and the computed displacements in axial, coronal and
    sagittal planes".
    """
    imgs = [np.asarray(x, dtype=np.float64) for x in (moving, reference, deformed)]
    shape = _check_images(("moving", "reference", "deformed"), imgs, "registration_figure")
    u = np.asarray(displacement, dtype=np.float64)
    d = len(shape)
    if u.shape != tuple(shape) + (d,):
        raise ValueError(
            f"registration_figure: displacement must have shape {tuple(shape) + (d,)}, got {u.shape}"
        )
    vmin, vmax = _intensity_range(*imgs)
    img_slices = [_slices(im, d, slice_index) for im in imgs]
    mag = np.sqrt(np.sum(u**2, axis=-1))
    if components:
        disp_slices = _slices(u, d, slice_index)
        umax = float(np.max(np.abs(u))) or 1.0
        disp_titles = [f"u_{'xyz'[c]} (voxels)" for c in range(d)]
    else:
        disp_slices = _slices(mag, d, slice_index)
        mmax = float(np.max(mag)) or 1.0
        disp_titles = ["|u| (voxels)"]
    n_rows = len(img_slices[0])
    n_cols = 3 + len(disp_titles)
    fig = Figure(figsize=(2.6 * n_cols + 0.6, 2.6 * n_rows + (0.5 if title else 0.2)))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    col_titles = ["moving", "reference", "deformed"] + disp_titles
    for r in range(n_rows):
        plane = img_slices[0][r][0]
        for c in range(3):
            ax = axes[r, c]
            ax.imshow(img_slices[c][r][1], cmap="gray", vmin=vmin, vmax=vmax, origin="lower",
                      interpolation="nearest")
        if components:
            for k in range(d):
                ax = axes[r, 3 + k]
                im = ax.imshow(disp_slices[r][1][..., k], cmap="RdBu_r", vmin=-umax, vmax=umax,
                               origin="lower", interpolation="nearest")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        else:
            ax = axes[r, 3]
            im = ax.imshow(disp_slices[r][1], cmap="inferno", vmin=0.0, vmax=mmax, origin="lower",
                           interpolation="nearest")
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            cb.set_label("voxels")
        axes[r, 0].set_ylabel(plane)
        for c in range(n_cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(col_titles[c], fontsize=10)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi, overwrite)


def _overlay_rgba(labels: np.ndarray, colours: Sequence, alpha: float) -> np.ndarray:
    rgba = np.zeros(labels.shape + (4,), dtype=np.float64)
    for k, col in enumerate(colours, start=1):
        m = labels == k
        if m.any():
            r, g, b, _ = to_rgba(col)
            rgba[m] = (r, g, b, alpha)
    return rgba


def segmentation_figure(
    image_moving,
    image_reference,
    deformed,
    seg_true,
    seg_pred,
    class_names: Sequence[str],
    path,
    *,
    colours: Sequence | None = None,
    overlay_on: str = "reference",
    slice_index: int | None = None,
    alpha: float = 0.5,
    title: str | None = None,
    dpi: int = 100,
    overwrite: bool = True,
) -> Path:
    """Segmentation panel like U-ReSNet Fig. 3, saved as PNG.

    One row (a mid axial slice, ``z = Z // 2``, or the 2-D image): moving,
    reference and deformed images, then the ground-truth and the predicted
    label maps overlaid in colour on the ``overlay_on`` image, with a legend.

    Args:
        image_moving, image_reference, deformed: array_like, shape
            ``(X, Y, Z)`` or ``(H, W)``. Intensity images on one grid, RAS
            order.
        seg_true, seg_pred: array_like of int, same shape. Hard label maps
            with labels ``0`` (background) and ``1..K``.
        class_names: sequence of str, length K. Name of label ``k`` is
            ``class_names[k-1]`` (e.g. ``["CeblWM", "CeblC", "LV"]``).
        path: str or os.PathLike. Output PNG (atomic write).
        colours: sequence of matplotlib colours, length K, optional,
            keyword-only. Default for K = 3: blue, green, yellow (U-ReSNet
            Fig. 3: blue CeblWM, green CeblC, yellow LV); otherwise the
            ``tab10`` cycle.
        overlay_on: {"reference", "moving", "deformed"}, keyword-only. Image
            under the masks. Default "reference": the masks are compared in
            the reference space (ground truth of the reference vs. the
            prediction warped to it), as in the U-ReSNet evaluation.
        slice_index: int, optional, keyword-only. Axial slice (default
            ``Z // 2``); ignored for 2-D inputs.
        alpha: float, keyword-only. Overlay opacity.
        title, dpi, overwrite: keyword-only. As :func:`registration_figure`.

    Returns:
        pathlib.Path.

    Raises:
        ValueError: On inconsistent shapes, too few colours / names for the
            labels present, or an unknown ``overlay_on``.
        FileExistsError: If ``path`` exists and ``overwrite`` is False.

    Source: Estienne et al. 2019 (U-ReSNet), Fig. 3.
    """
    imgs = {
        "moving": np.asarray(image_moving, dtype=np.float64),
        "reference": np.asarray(image_reference, dtype=np.float64),
        "deformed": np.asarray(deformed, dtype=np.float64),
    }
    segs = [np.asarray(seg_true), np.asarray(seg_pred)]
    shape = _check_images(
        list(imgs) + ["seg_true", "seg_pred"], list(imgs.values()) + segs, "segmentation_figure"
    )
    if overlay_on not in imgs:
        raise ValueError(f"segmentation_figure: overlay_on must be one of {list(imgs)}, got {overlay_on!r}")
    k = len(class_names)
    if colours is None:
        if k == 3:
            colours = DEFAULT_SEG_COLOURS
        else:
            from matplotlib import colormaps

            tab = colormaps["tab10"]
            colours = [tab(i % 10) for i in range(k)]
    if len(colours) < k:
        raise ValueError(f"segmentation_figure: {k} classes but only {len(colours)} colours")
    max_label = int(max(segs[0].max(initial=0), segs[1].max(initial=0)))
    if max_label > k:
        raise ValueError(f"segmentation_figure: label {max_label} present but only {k} class names")

    def sl(a: np.ndarray) -> np.ndarray:
        if len(shape) == 2:
            return np.swapaxes(a, 0, 1)
        z = shape[2] // 2 if slice_index is None else int(slice_index)
        return np.swapaxes(a[:, :, z], 0, 1)

    vmin, vmax = _intensity_range(*imgs.values())
    panels = [("moving", imgs["moving"], None), ("reference", imgs["reference"], None),
              ("deformed", imgs["deformed"], None),
              ("ground truth", imgs[overlay_on], segs[0]), ("prediction", imgs[overlay_on], segs[1])]
    fig = Figure(figsize=(2.6 * len(panels) + 1.8, 3.0 + (0.4 if title else 0.0)))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, im, seg) in zip(axes, panels):
        ax.imshow(sl(im), cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
        if seg is not None:
            ax.imshow(_overlay_rgba(sl(seg), colours[:k], alpha), origin="lower", interpolation="nearest")
            name = f"{name} (on {overlay_on})"
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=to_rgba(colours[i]), label=str(class_names[i])) for i in range(k)]
    fig.legend(handles=handles, loc="center right", frameon=False)
    fig.subplots_adjust(right=0.86)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi, overwrite)
