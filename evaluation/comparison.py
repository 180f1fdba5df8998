"""Methods compared on the same test pairs across cross-validation folds.

:func:`merge_folds` pools the per-fold :class:`~regseg.evaluation.pairs.PairEvaluation` s (each
pair once, with its fold); :func:`unordered` averages the two directions of a pair;
:func:`paired_comparison` tests two methods on the unordered pairs (paired Wilcoxon,
:func:`regseg.evaluation.statistics.paired_wilcoxon`, and a subject-level bootstrap CI).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .pairs import PairEvaluation
from .statistics import paired_wilcoxon

__all__ = ["FoldEvaluation", "merge_folds", "unordered", "paired_comparison",
           "PAIRED_COMPARISON_NOTE"]

#: what :func:`paired_comparison` computes, for a table's notes
PAIRED_COMPARISON_NOTE = (
    "Wilcoxon signed-rank p over unordered pairs (regseg.evaluation.statistics.paired_wilcoxon: "
    "scipy.stats.wilcoxon, two-sided, zero differences dropped; pairs where either method's "
    "score is not finite are left out of every column; p is NaN when fewer than 2 pairs remain "
    "or every difference is zero)")


@dataclass
class FoldEvaluation(PairEvaluation):
    """A :class:`~regseg.evaluation.pairs.PairEvaluation` of every fold.

    Attributes:
        rule: the label rule of ``dice`` (the other rules are in ``dice_rules``).
        fold: ``{pair: fold name}``.
    """

    rule: str = "argmax"
    fold: dict = field(default_factory=dict)

    def per_pair_dice(self) -> pd.DataFrame:
        """Every rule's Dice in one long table: index pair, columns ``fold``, ``rule``,
        ``method``, then the structures."""
        frames = []
        for rule, dice in ((self.rule, self.dice), *self.dice_rules.items()):
            for method, df in dice.items():
                d = df.copy()
                d.insert(0, "method", method)
                d.insert(0, "rule", rule)
                d.insert(0, "fold", [self.fold[p] for p in d.index])
                frames.append(d)
        return pd.concat(frames).rename_axis("pair") if frames else pd.DataFrame()


def _append(store: dict, key, frame: pd.DataFrame) -> None:
    store[key] = pd.concat([store[key], frame]) if key in store else frame


def merge_folds(parts: Sequence[PairEvaluation], primary: str = "argmax",
                names: Sequence | None = None) -> FoldEvaluation:
    """One :class:`FoldEvaluation` of the per-fold evaluations ``parts``.

    Args:
        parts: one evaluation per fold (disjoint pairs).
        primary: the label rule of their ``dice``.
        names: the folds' names, default 1, 2, ...
    Returns:
        every pair once, in fold order, with ``fold[pair]`` its fold; the tables (``tre``,
        ``deformation``, ``seconds``, ``extra``) gain a ``fold`` column; ``examples`` are the
        first fold's that has one.
    """
    names = list(names) if names is not None else list(range(1, len(parts) + 1))
    out = FoldEvaluation(rule=primary)
    for k, ev in zip(names, parts):
        out.pairs += ev.pairs
        out.fold.update({p: k for p in ev.pairs})
        for name in ("dice", "segmentation", "hd95"):
            for m, df in getattr(ev, name).items():
                _append(getattr(out, name), m, df)
        for rule, dice in ev.dice_rules.items():
            for m, df in dice.items():
                _append(out.dice_rules.setdefault(rule, {}), m, df)
        for name in ("tre", "deformation", "seconds", "extra"):
            frame = getattr(ev, name)
            if len(frame):
                frame = frame.assign(fold=k)
                setattr(out, name, pd.concat([getattr(out, name), frame], ignore_index=True))
        for m, ex in ev.examples.items():
            out.examples.setdefault(m, ex)
    return out


def unordered(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ``a->b`` and ``b->a`` averaged into one row ``a<->b`` (sorted ids)."""
    keys = ["<->".join(sorted(p.split("->"))) for p in df.index]
    return df.groupby(pd.Index(keys, name="pair")).mean()


def paired_comparison(dice: dict, a: str, b: str, seed: int = 0, n_boot: int = 2000) -> dict:
    """Paired comparison of methods ``a`` and ``b`` over unordered pairs of the mean Dice over
    structures.

    Pairs where either method's mean is not finite are left out of everything. Gives the mean
    difference a - b, the Wilcoxon signed-rank p (:func:`~regseg.evaluation.statistics.
    paired_wilcoxon`, two-sided: NaN when fewer than 2 pairs remain or every difference is zero)
    and a subject-level bootstrap 95 % CI (subjects resampled with replacement; the mean
    difference recomputed over the pairs among the drawn subjects, each pair counted as often as
    both its subjects were drawn; seeded).

    Args:
        dice: ``{method: DataFrame}``, rows ordered pairs ``"m->f"``, columns structures.
        a, b: the methods compared.
    """
    both = pd.concat([unordered(dice[a]).mean(axis=1), unordered(dice[b]).mean(axis=1)],
                     axis=1, keys=["a", "b"])
    both = both[np.isfinite(both["a"]) & np.isfinite(both["b"])]
    d = both["a"] - both["b"]
    pairs = [p.split("<->") for p in d.index]
    subjects = sorted({s for p in pairs for s in p})
    pos = {s: i for i, s in enumerate(subjects)}
    ia = np.array([pos[p[0]] for p in pairs], dtype=int)
    ib = np.array([pos[p[1]] for p in pairs], dtype=int)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot if subjects else 0):
        counts = np.bincount(rng.integers(0, len(subjects), len(subjects)),
                             minlength=len(subjects))
        w = counts[ia] * counts[ib]
        if w.sum():
            boot.append(float((w * d.values).sum() / w.sum()))
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot else (np.nan, np.nan)
    return {"comparison": f"{a} - {b}", "unordered pairs": len(d), "subjects": len(subjects),
            "mean difference": float(d.mean()) if len(d) else float("nan"),
            "Wilcoxon p": paired_wilcoxon(both["a"], both["b"]),
            "bootstrap 95% CI low": float(lo), "bootstrap 95% CI high": float(hi),
            "pairs where a > b": int((d > 0).sum())}
