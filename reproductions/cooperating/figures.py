"""Figures of Couteaux et al.: Fig. 2 (a toy pair), Fig. 3 (similarity gain against λ_r) and
Fig. 4 (both modalities with annotation and prediction).

Matplotlib through :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot), PNGs written
atomically, as :mod:`regseg.evaluation.figures`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from regseg.evaluation.tables import atomic_write_bytes


def _save(fig: Figure, path, dpi: int = 90) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(Path(path), buf.getvalue())


def toy_pair_figure(example: dict, path) -> Path:
    """Fig. 2: a toy pair (``x1``, ``x2`` with the contours of ``s1``, ``s2``) and, per λ_p, the
    predicted masks (ŝ1 and ŝ2 contours over the annotations).

    Args:
        example: ``{"pair": toy pair dict, "predictions": {λ_p: predict() output of the pair}}``.
        path: output PNG.
    Returns:
        the written path.
    """
    pair, preds = example["pair"], example["predictions"]
    lams = sorted(preds)
    shown = [lams[0], lams[-1]] if len(lams) > 1 else lams
    fig = Figure(figsize=(3.2 * (2 + len(shown)), 6.4))
    axes = fig.subplots(2, 2 + len(shown))
    t = pair["translation"]
    for row, (x, s, name) in enumerate(((pair["x1"], pair["s1"], "x1 (angle)"),
                                        (pair["x2"], pair["s2"], "x2 (frequency)"))):
        axes[row, 0].imshow(x, cmap="gray")
        axes[row, 0].set_title(name)
        axes[row, 1].imshow(s, cmap="gray")
        axes[row, 1].set_title(f"s{row + 1}" + (f" (translated by {tuple(int(v) for v in t)})"
                                                 if row else ""))
        for k, lam in enumerate(shown):
            ax = axes[row, 2 + k]
            ax.imshow(x, cmap="gray")
            ax.contour(s, levels=[0.5], colors="red", linewidths=1.0)
            ax.contour(preds[lam][f"s_hat{row + 1}"], levels=[0.5], colors="lime", linewidths=1.0)
            ax.set_title(f"λ_p = {lam:.2f}: ŝ{row + 1} (green), s{row + 1} (red)", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Toy pair (our §3.1 generator): modality 1 encodes the foreground by the sine "
                 "angle, modality 2 by its frequency")
    return _save(fig, path, dpi=70)


def similarity_gain_boxplot(toy, path) -> Path:
    """Fig. 3: per λ_r = 1 - λ_p, box plot over the test pairs of D_S(ŝ1, ŝ2) - D_S(s1, s2).

    Args:
        toy: the per-pair frame (columns ``lambda_r``, ``gain``).
        path: output PNG.
    Returns:
        the written path.
    """
    groups = sorted(toy.groupby("lambda_r"), key=lambda g: g[0])
    fig = Figure(figsize=(max(6.0, 0.45 * len(groups) + 3), 4.2))
    ax = fig.subplots()
    gains = [g["gain"].to_numpy() for _, g in groups]
    ax.boxplot([v[np.isfinite(v)] for v in gains], showfliers=True)
    ax.set_xticks(range(1, len(groups) + 1), [f"{lam:.2f}" for lam, _ in groups],
                  rotation=90 if len(groups) > 10 else 0)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("λ_r = 1 - λ_p  (λ_g = 1)")
    ax.set_ylabel("D_S(predictions) - D_S(ground truth)")
    empty = [int((~np.isfinite(v)).sum()) for v in gains]
    ax.set_title("Gain in similarity relative to translations (toy test set)"
                 + (f"\npairs with an empty prediction (left out): {empty}" if any(empty) else ""))
    return _save(fig, path)


def pairs_figure(examples: list, path, title: str = "") -> Path:
    """Fig. 4: per example, the mid axial slice of both modalities with the annotation (red) and
    the prediction (green).

    Args:
        examples: dicts ``pair``, ``x1``, ``x2``, ``s1``, ``s2``, ``p1``, ``p2`` (volumes
            ``(X, Y, Z)``, RAS).
        path: output PNG.
        title: figure title.
    Returns:
        the written path.
    """
    fig = Figure(figsize=(3.6 * len(examples), 7.0))
    axes = np.asarray(fig.subplots(2, len(examples))).reshape(2, -1)
    for k, ex in enumerate(examples):
        z = int(np.argmax(ex["s1"].sum(axis=(0, 1)))) if ex["s1"].any() else ex["x1"].shape[2] // 2
        for row in range(2):
            ax = axes[row, k]
            img = ex[f"x{row + 1}"][:, :, z].T
            ax.imshow(img, cmap="gray", origin="lower")
            for key, colour in ((f"s{row + 1}", "red"), (f"p{row + 1}", "lime")):
                m = ex[key][:, :, z].T.astype(float)
                if m.any():
                    ax.contour(m, levels=[0.5], colors=colour, linewidths=1.0)
            modality = ex["pair"].split(":")[-1].split("-")[row]
            ax.set_title(f"{ex['pair'].split(':')[0]} {modality}")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle((title + "\n" if title else "") + "red: annotation, green: prediction")
    return _save(fig, path)
