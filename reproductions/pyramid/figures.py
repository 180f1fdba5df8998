"""Table 2 of Gunnarsson et al. 2020 as a figure: the moving image warped level by level."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy import ndimage

#: Table 2's columns: the levels whose displacement warps the moving image
LEVELS = (4, 2, 0)


def warp_image(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``identity + displacement`` (trilinear, border values repeated)."""
    coords = np.indices(image.shape, dtype=np.float64) + np.moveaxis(
        np.asarray(displacement, np.float64), -1, 0)
    return ndimage.map_coordinates(np.asarray(image, np.float32), coords, order=1, mode="nearest")


def table2_figure(rows, path, *, title: str = "", levels=LEVELS) -> Path:
    """One row per task: ``I_m``, ``I_m o phi_d^(l)`` for ``l`` in ``levels``, ``I_f``.

    Each level's displacement (voxels of level ``l``) is upsampled to the full grid
    (:func:`~regseg.reproductions.pyramid.model.upsample_displacement`) and warps the full-
    resolution moving image; the axial middle slice is shown.

    Args:
        rows: ``[(task title, example)]`` with ``example`` from ``evaluate_pairs``'s
            ``examples`` (``moving``, ``fixed`` samples and ``outputs["levels"]``).
        path: the PNG to write (atomically).
        title: the figure's title (says "stand-in" where it is one).
        levels: the levels shown (Table 2: 4, 2, 0).
    Returns:
        the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from regseg.evaluation.tables import atomic_write_bytes

    from .model import upsample_displacement

    fig = Figure(figsize=(2.4 * (len(levels) + 2), 2.6 * len(rows) + 0.6))
    FigureCanvasAgg(fig)
    columns = ["I_m"] + [f"I_m o phi({l})" for l in levels] + ["I_f"]
    for r, (task, ex) in enumerate(rows):
        moving, fixed = ex["moving"].image, ex["fixed"].image
        panels = [moving]
        for level in levels:
            disp = ex["outputs"]["levels"][level]
            panels.append(warp_image(moving, upsample_displacement(disp, 2 ** level)))
        panels.append(fixed)
        z = moving.shape[2] // 2
        for c, (name, vol) in enumerate(zip(columns, panels)):
            ax = fig.add_subplot(len(rows), len(columns), r * len(columns) + c + 1)
            ax.imshow(np.asarray(vol)[:, :, z].T, cmap="gray", origin="lower", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(task[:40], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(Path(path), buf.getvalue())
