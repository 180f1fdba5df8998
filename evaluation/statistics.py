"""Significance tests between two methods' per-case scores.

DeepAtlas §3: "Based on a Mann-Whitney U-test with a significance level of 0.05 and a
correction for multiple comparisons with a false discovery rate of 0.05, our models ... result
in significantly larger Dice scores than the baselines".  :func:`compare` gives that test
(``scipy.stats.mannwhitneyu``, two unpaired samples) and, since both methods are scored on the
same cases (pairs or images), the paired Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``); :func:`fdr` is the Benjamini-Hochberg correction
(``scipy.stats.false_discovery_control``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["compare", "fdr", "paired_wilcoxon"]


def paired_wilcoxon(a, b, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of paired scores ``a`` against ``b`` (``scipy.stats.wilcoxon``).

    Cases where either score is not finite are dropped pairwise. The p-value is NaN when fewer
    than 2 pairs remain or every difference is zero (within float tolerance): the test then says
    nothing.

    >>> paired_wilcoxon([1.0, 2.0], [1.0, 2.0])
    nan
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2 or np.allclose(a[keep], b[keep]):
        return float("nan")
    return float(stats.wilcoxon(a[keep], b[keep], alternative=alternative).pvalue)


def compare(a, b, *, alternative: str = "two-sided") -> dict:
    """Mann-Whitney U and Wilcoxon signed-rank tests of scores ``a`` against ``b``.

    Args:
        a, b: per-case scores of two methods (e.g. mean Dice per test image), same length and
            order for the paired test; NaN cases are dropped (pairwise for Wilcoxon).
        alternative: ``"two-sided"``, ``"greater"`` (``a`` larger) or ``"less"``.
    Returns:
        ``{"n", "mean a", "mean b", "mean difference", "U", "Mann-Whitney p",
        "Wilcoxon p"}``; the Wilcoxon p is NaN when every difference is zero or the lengths
        differ.
    Raises:
        ValueError: fewer than 2 finite scores on a side, or an unknown ``alternative``.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got "
                         f"{alternative!r}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(fa) < 2 or len(fb) < 2:
        raise ValueError(f"need at least 2 finite scores per method, got {len(fa)} and {len(fb)}")
    u = stats.mannwhitneyu(fa, fb, alternative=alternative)
    wilcoxon_p = paired_wilcoxon(a, b, alternative) if a.shape == b.shape else np.nan
    return {"n": int(min(len(fa), len(fb))), "mean a": float(fa.mean()), "mean b": float(fb.mean()),
            "mean difference": float(fa.mean() - fb.mean()), "U": float(u.statistic),
            "Mann-Whitney p": float(u.pvalue), "Wilcoxon p": wilcoxon_p}


def fdr(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN.

    >>> np.round(fdr([0.01, 0.04, 0.03]), 3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out
