"""One evaluation of registration methods on test pairs, shared by every paper.

The registration-model protocol
-------------------------------
Every method, trained or not, is a *registrar*: an object with

``register(moving: Sample, fixed: Sample) -> dict``

returning numpy arrays without a batch axis:

* ``"displacement"`` (required): ``(X, Y, Z, 3)`` in voxels of the moving grid; the moving
  image is sampled at ``identity + displacement`` for every fixed voxel (backward warping);
* ``"grid"`` (optional): that sampling grid itself, when the model outputs it (avoids the round
  trip ``identity + (grid - identity)``);
* ``"warped"`` (optional): ``(X, Y, Z)`` the warped moving image (else computed here);
* ``"moving_seg"`` / ``"fixed_seg"`` (optional): ``(X, Y, Z, K + 1)`` class probabilities
  predicted for the moving / fixed image (segmentation Dice is reported for them).
* ``"seconds"`` (optional): the wall seconds of the registration as the registrar measured it
  (e.g. the original registration behind a cached result), reported instead of the call's time.

:class:`IdentityRegistrar` is the "Initial" / "Rigid after preprocessing" row.

:func:`evaluate_pairs` computes, per pair and method: Dice per structure (labels warped by the
argmax of the trilinearly warped one-hot maps, or by nearest neighbour), optionally HD95 (mm),
TRE (mm) where both samples have landmarks, the Jacobian statistics (folded fraction, SDlogJ)
inside a mask of the fixed image when given, the segmentation Dice of predicted segmentations,
the seconds per pair, and writes the NIfTI outputs in the fixed image's geometry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from . import metrics

__all__ = ["Registrar", "IdentityRegistrar", "PairEvaluation", "evaluate_pairs", "warp_labels",
           "LABEL_RULES"]

#: Rules for warping label maps: "argmax" (one-hot, trilinear, argmax; U-ReSNet's released
#: evaluation default in this suite) or "nearest" (nearest-neighbour sampling).
LABEL_RULES = ("argmax", "nearest", "released")
#: "released": U-ReSNet's released evaluation (``metrics.evaluate``, ``--use-mask``): each
#: trilinearly warped one-hot channel thresholded at > 0 separately, so the warped structures may
#: overlap; :func:`warp_labels` then returns ``(X, Y, Z, n_labels + 1)`` booleans.


class Registrar(Protocol):
    """Anything with ``register(moving, fixed) -> {"displacement": (X, Y, Z, 3), ...}``."""

    def register(self, moving, fixed) -> dict:  # pragma: no cover - protocol
        ...


class IdentityRegistrar:
    """The identity transform: zero displacement (the "Initial" row of a table)."""

    def register(self, moving, fixed) -> dict:
        """Zero displacement on the fixed grid; raises ValueError if the grids differ."""
        if tuple(moving.shape) != tuple(fixed.shape):
            raise ValueError(f"identity registration needs equal grids: moving {moving.shape}, "
                             f"fixed {fixed.shape}")
        return {"displacement": np.zeros((*fixed.shape, 3), dtype=np.float32)}


def _identity(shape) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"),
                    axis=-1)


def warp_labels(labels: np.ndarray, grid: np.ndarray, n_labels: int, rule: str = "argmax"):
    """Warp a label map with a sampling grid.

    Args:
        labels: int ``(X, Y, Z)`` with values ``0..n_labels``.
        grid: ``(X', Y', Z', 3)`` sampling grid, voxels of ``labels``.
        n_labels: number of foreground labels.
        rule: ``"argmax"``: one-hot, trilinear, argmax (border clamping); ``"nearest"``:
            nearest-neighbour sampling (border clamping); ``"released"``: one-hot, trilinear,
            each channel ``> 0`` (U-ReSNet's released ``--use-mask`` evaluation).
    Returns:
        int32 ``(X', Y', Z')``; for ``"released"`` bool ``(X', Y', Z', n_labels + 1)``.
    Raises:
        ValueError: unknown rule.
    """
    from regseg.layers import warp

    if rule not in LABEL_RULES:
        raise ValueError(f"label rule must be one of {LABEL_RULES}, got {rule!r}")
    grid = np.asarray(grid, dtype=np.float32)
    if rule == "nearest":
        out = warp(np.asarray(labels, np.float32)[None, ..., None], grid[None],
                   interpolation="nearest")
        return np.rint(np.asarray(out)[0, ..., 0]).astype(np.int32)
    onehot = np.eye(n_labels + 1, dtype=np.float32)[labels]
    warped = np.asarray(warp(onehot[None], grid[None]))[0]
    if rule == "released":
        return warped > 0
    return warped.argmax(-1).astype(np.int32)


def _rule_dice(warped, target, labels, rule):
    """Dice per label of labels warped by ``rule`` (``"released"``: channel masks)."""
    if rule != "released":
        return metrics.dice(warped, target, labels, empty=0.0)
    out = []
    for k in labels:
        a, b = warped[..., k], target == k
        total = a.sum() + b.sum()
        out.append(0.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total)
    return np.asarray(out, dtype=np.float64)


@dataclass
class PairEvaluation:
    """Per-pair results of :func:`evaluate_pairs`.

    Attributes:
        pairs: pair ids ``"moving->fixed"`` in evaluation order.
        dice: ``{method: DataFrame}`` rows = pairs, columns = structures.
        hd95: same layout (mm), when requested.
        segmentation: ``{method: DataFrame}`` Dice of predicted moving segmentations, rows =
            pairs, columns = classes (methods that predict one).
        tre: DataFrame rows (pair, method, TRE mm mean over landmarks), where landmarks exist.
        deformation: DataFrame rows (pair, method, folding fraction, SDlogJ).
        seconds: DataFrame rows (pair, method, seconds of ``register``).
        examples: ``{method: {"moving", "fixed", "outputs", "warped_labels"}}`` of the first pair.
        dice_rules: ``{rule: {method: DataFrame}}`` Dice by the ``extra_label_rules`` of
            :func:`evaluate_pairs` (same layout as ``dice``).
        extra: DataFrame rows (pair, method, one column per ``pair_metrics`` entry).
    """

    pairs: list = field(default_factory=list)
    dice: dict = field(default_factory=dict)
    hd95: dict = field(default_factory=dict)
    segmentation: dict = field(default_factory=dict)
    tre: pd.DataFrame = field(default_factory=pd.DataFrame)
    deformation: pd.DataFrame = field(default_factory=pd.DataFrame)
    seconds: pd.DataFrame = field(default_factory=pd.DataFrame)
    examples: dict = field(default_factory=dict)
    dice_rules: dict = field(default_factory=dict)
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)

    def per_pair_dice(self) -> pd.DataFrame:
        """All methods' Dice in one long table: index pair, column ``method`` then structures."""
        frames = []
        for method, df in self.dice.items():
            d = df.copy()
            d.insert(0, "method", method)
            frames.append(d)
        return pd.concat(frames).rename_axis("pair") if frames else pd.DataFrame()


def evaluate_pairs(registrars: Mapping[str, Registrar], samples: Sequence, pairs, *,
                   structures: str | None = "structures", segmentation: str | None = None,
                   label_rule: str = "argmax", hd95: bool = False, jacobian_mask: str | None = None,
                   nifti_dir: str | Path | None = None, folder_names: Mapping[str, str] | None = None,
                   pair_metrics: Mapping[str, object] | None = None,
                   extra_label_rules: Sequence[str] = (),
                   learn2reg_sdlogj: bool = False) -> PairEvaluation:
    """Evaluate every registrar on the same (moving, fixed) pairs.

    Args:
        registrars: ``{method name: registrar}`` (see the module docstring).
        samples: the test :class:`~regseg.datasets.subjects.Sample` objects (or a dataset).
        pairs: int ``(P, 2)`` of (moving, fixed) indices into ``samples``.
        structures: label map scored with Dice (classes named by ``structure_names`` of the
            dataset when ``samples`` is one; else ``"1", "2", ...``); ``None`` for no Dice.
        segmentation: label map the predicted ``moving_seg`` is scored against (classes named by
            ``class_names`` of the dataset when ``samples`` is one; else ``"1", "2", ...``), or
            ``None``.
        label_rule: see :func:`warp_labels`.
        hd95: also compute the 95th-percentile Hausdorff distance per structure (mm).
        jacobian_mask: name of a mask of the fixed sample inside which the folded fraction and
            SDlogJ are computed (``None``: the whole volume); a fixed sample without it raises
            DataError.
        nifti_dir: write ``<folder>/<moving>_to_<fixed>_{warped,warped_structures,
            displacement_voxels}.nii.gz`` in the fixed sample's geometry.
        folder_names: ``{method: folder}`` for ``nifti_dir`` (default: the method name).
        pair_metrics: more per-pair scores, ``{name: f(moving, fixed, outputs) -> float}``
            with ``outputs`` the registrar's dict plus ``"grid"``, ``"warped"`` and
            ``"warped_labels"`` (``None`` without ``structures``); one column each in
            :attr:`PairEvaluation.extra`.
        extra_label_rules: more label rules (of :data:`LABEL_RULES`) whose Dice goes to
            :attr:`PairEvaluation.dice_rules` (``label_rule``'s stays in ``dice``).
        learn2reg_sdlogj: also report, beside ``"SDlogJ"``, ``"SDlogJ non-folded"`` (the log
            over voxels with det J > 0 only) and ``"SDlogJ Learn2Reg (+3, border crop)"``
            (:func:`~regseg.evaluation.metrics.sd_log_jacobian` with ``learn2reg=True``), all
            within ``jacobian_mask``.
    Returns:
        :class:`PairEvaluation`.
    Raises:
        ValueError: unknown label rule; DataError: a sample without a label map or the
            ``jacobian_mask`` it needs.
    """
    from regseg.datasets.io import save_volume
    from regseg.layers import warp

    for rule in (label_rule, *extra_label_rules):
        if rule not in LABEL_RULES:
            raise ValueError(f"label rule must be one of {LABEL_RULES}, got {rule!r}")
    names = list(getattr(samples, "structure_names", []) or [])
    classes = list(getattr(samples, "class_names", []) or [])
    loaded = [samples.load(i) for i in range(len(samples))] if hasattr(samples, "load") \
        else list(samples)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if structures is not None and not names:
        n = int(max(int(s.label(structures).max()) for s in loaded))
        names = [str(k) for k in range(1, n + 1)]
    if segmentation is not None and not classes:
        n = int(max(int(s.label(segmentation).max()) for s in loaded))
        classes = [str(k) for k in range(1, n + 1)]
    labels = list(range(1, len(names) + 1))
    result = PairEvaluation()
    dice_rows = {m: [] for m in registrars}
    rule_rows = {r: {m: [] for m in registrars} for r in extra_label_rules}
    hd_rows = {m: [] for m in registrars}
    seg_rows: dict = {}
    tre_rows, def_rows, sec_rows, extra_rows = [], [], [], []
    for i, j in pairs:
        mov, fix = loaded[int(i)], loaded[int(j)]
        pair_id = f"{mov.subject_id}->{fix.subject_id}"
        result.pairs.append(pair_id)
        for method, registrar in registrars.items():
            t0 = time.perf_counter()
            out = registrar.register(mov, fix)
            elapsed = time.perf_counter() - t0
            reported = out.get("seconds")  # e.g. the original time of a cached registration
            sec_rows.append({"pair": pair_id, "method": method,
                             "seconds": float(reported) if reported is not None else elapsed})
            disp = np.asarray(out["displacement"], dtype=np.float32)
            moved = bool(disp.any())
            grid = out.get("grid")
            if grid is None:
                grid = _identity(disp.shape[:-1]) + disp
            grid = np.asarray(grid, dtype=np.float32)
            warped_labels = None
            if structures is not None:
                source = mov.label(structures)
                warped_labels = (warp_labels(source, grid, len(names), label_rule) if moved
                                 else np.asarray(source, dtype=np.int32))
                target = fix.label(structures)
                if label_rule == "released" and not moved:
                    warped_labels = np.eye(len(names) + 1, dtype=bool)[warped_labels]
                dice_rows[method].append(_rule_dice(warped_labels, target, labels, label_rule))
                for rule in extra_label_rules:
                    w = warp_labels(source, grid, len(names), rule) if moved else \
                        np.asarray(source, dtype=np.int32)
                    if rule == "released" and not moved:
                        w = np.eye(len(names) + 1, dtype=bool)[w]
                    rule_rows[rule][method].append(_rule_dice(w, target, labels, rule))
                if hd95:
                    hd_rows[method].append([
                        metrics.hd95(warped_labels == k, target == k, spacing=fix.spacing)
                        if (warped_labels == k).any() and (target == k).any() else np.nan
                        for k in labels])
            if mov.landmarks is not None and fix.landmarks is not None:
                fixed_vox = fix.landmarks_voxels()
                from scipy import ndimage
                mapped = np.stack([ndimage.map_coordinates(grid[..., a], fixed_vox.T, order=1,
                                                           mode="nearest") for a in range(3)], 1)
                world = (np.c_[mapped, np.ones(len(mapped))] @ np.asarray(mov.affine).T)[:, :3]
                tre_rows.append({"pair": pair_id, "method": method,
                                 "TRE mm": float(np.linalg.norm(world - mov.landmarks, axis=1).mean())})
            if moved:
                jac = metrics.jacobian_determinant(grid)
                mask = None
                if jacobian_mask:
                    if jacobian_mask not in fix.masks:
                        from regseg.datasets.io import DataError
                        have = ", ".join(sorted(fix.masks)) or "none"
                        raise DataError(f"{fix.subject_id}: no mask {jacobian_mask!r} for the "
                                        f"Jacobian statistics (masks: {have})")
                    mask = fix.masks[jacobian_mask]
                row = {"pair": pair_id, "method": method,
                       "folding fraction": metrics.folding_fraction(jac, mask=mask),
                       "SDlogJ": metrics.sd_log_jacobian(jac, mask=mask)}
                if learn2reg_sdlogj:
                    inside = np.ones(jac.shape, bool) if mask is None else np.asarray(mask, bool)
                    row["SDlogJ non-folded"] = metrics.sd_log_jacobian(
                        jac, mask=inside & (jac > 0))
                    row["SDlogJ Learn2Reg (+3, border crop)"] = metrics.sd_log_jacobian(
                        jac, mask=inside, learn2reg=True)
                def_rows.append(row)
            if "moving_seg" in out and segmentation is not None:
                pred = np.asarray(out["moving_seg"]).argmax(-1)
                seg_rows.setdefault(method, []).append(metrics.dice(
                    pred, mov.label(segmentation), list(range(1, len(classes) + 1)), empty=0.0))
                out = {**out, "moving_seg_labels": pred}
            warped = out.get("warped")
            if warped is None:
                warped = np.asarray(warp(np.asarray(mov.image, np.float32)[None, ..., None],
                                         grid[None]))[0, ..., 0]
            warped = np.asarray(warped).reshape(fix.shape)
            if pair_metrics:
                full = {**out, "grid": grid, "warped": warped, "warped_labels": warped_labels}
                extra_rows.append({"pair": pair_id, "method": method, **{
                    name: f(mov, fix, full) for name, f in pair_metrics.items()}})
            if method not in result.examples:
                result.examples[method] = {"pair": pair_id, "moving": mov, "fixed": fix,
                                           "outputs": {**out, "grid": grid, "warped": warped},
                                           "warped_labels": warped_labels}
            if nifti_dir is not None:
                folder = Path(nifti_dir) / (folder_names or {}).get(method, method)
                stem = f"{mov.subject_id}_to_{fix.subject_id}"
                save_volume(folder / f"{stem}_warped.nii.gz", warped.astype(np.float32), fix.affine)
                if warped_labels is not None:
                    save_volume(folder / f"{stem}_warped_structures.nii.gz",
                                warped_labels.astype(np.int16), fix.affine)
                save_volume(folder / f"{stem}_displacement_voxels.nii.gz",
                            (grid - _identity(grid.shape[:-1])).astype(np.float32), fix.affine)
    index = pd.Index(result.pairs, name="pair")
    if structures is not None:
        result.dice = {m: pd.DataFrame(np.array(v).reshape(len(index), -1), index=index,
                                       columns=names) for m, v in dice_rows.items()}
        result.dice_rules = {r: {m: pd.DataFrame(np.array(v).reshape(len(index), -1),
                                                 index=index, columns=names)
                                 for m, v in rows.items()} for r, rows in rule_rows.items()}
        if hd95:
            result.hd95 = {m: pd.DataFrame(np.array(v).reshape(len(index), -1), index=index,
                                           columns=names) for m, v in hd_rows.items()}
    result.segmentation = {m: pd.DataFrame(np.array(v).reshape(len(index), -1), index=index,
                                           columns=classes) for m, v in seg_rows.items()}
    result.tre = pd.DataFrame(tre_rows)
    result.deformation = pd.DataFrame(def_rows)
    result.seconds = pd.DataFrame(sec_rows)
    result.extra = pd.DataFrame(extra_rows)
    return result
