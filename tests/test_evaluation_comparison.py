"""Per-fold evaluations merged, pair directions averaged and the paired comparison of two methods
(``regseg.evaluation.comparison``), checked against values computed another way."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from regseg.evaluation.comparison import merge_folds, paired_comparison, unordered
from regseg.evaluation.pairs import PairEvaluation

IDX = ["a->b", "b->a", "a->c", "c->a", "b->c", "c->b"]


def test_unordered_averages_the_two_directions():
    df = pd.DataFrame({"s": [0.6, 0.8, 0.5, 0.5, 0.9, 0.7], "t": [1, 3, 0, 2, 5, 5]}, index=IDX)
    got = unordered(df)
    assert got.index.name == "pair" and list(got.index) == ["a<->b", "a<->c", "b<->c"]
    assert got["s"].to_dict() == pytest.approx({"a<->b": 0.7, "a<->c": 0.5, "b<->c": 0.8})
    assert got["t"].to_dict() == pytest.approx({"a<->b": 2, "a<->c": 1, "b<->c": 5})
    # one direction only: kept as it is; ids sorted in the key
    one = unordered(pd.DataFrame({"s": [0.4]}, index=["z->y"]))
    assert one["s"].to_dict() == {"y<->z": 0.4}


def test_paired_comparison_on_hand_data():
    a = pd.DataFrame({"s": [0.6, 0.8, 0.5, 0.5, 0.9, 0.7]}, index=IDX)
    b = pd.DataFrame({"s": [0.5, 0.5, 0.4, 0.4, 0.6, 0.6]}, index=IDX)
    r = paired_comparison({"A": a, "B": b}, "A", "B")
    # unordered differences: a<->b 0.7 - 0.5, a<->c 0.5 - 0.4, b<->c 0.8 - 0.6
    d = np.array([0.7 - 0.5, 0.5 - 0.4, 0.8 - 0.6])
    assert r["comparison"] == "A - B" and r["unordered pairs"] == 3 and r["subjects"] == 3
    assert r["mean difference"] == pytest.approx(d.mean()) and r["pairs where a > b"] == 3
    assert r["Wilcoxon p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert d.min() - 1e-9 <= r["bootstrap 95% CI low"] <= d.mean() <= r["bootstrap 95% CI high"]
    assert r["bootstrap 95% CI high"] <= d.max() + 1e-9


def _frames(n_subjects, seed):
    """Two methods' Dice (2 structures) on every ordered pair of ``n_subjects`` subjects."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i:02d}" for i in range(n_subjects)]
    idx = [f"{m}->{f}" for m in ids for f in ids if m != f]
    a = pd.DataFrame(rng.uniform(0.5, 0.9, (len(idx), 2)), index=idx, columns=["x", "y"])
    b = a - rng.normal(0.05, 0.05, a.shape)  # a better on average
    return ids, a, b


def test_paired_comparison_matches_scipy_and_a_bootstrap_over_drawn_subjects():
    ids, a, b = _frames(6, seed=3)
    r = paired_comparison({"A": a, "B": b}, "A", "B", seed=7, n_boot=300)
    # differences of the structure-mean Dice, the two directions of a pair averaged, by loops
    d = {}
    for i, s in enumerate(ids):
        for t in ids[i + 1:]:
            d[(s, t)] = np.mean([a.loc[p].mean() - b.loc[p].mean() for p in (f"{s}->{t}",
                                                                             f"{t}->{s}")])
    values = np.array(list(d.values()))
    assert r["unordered pairs"] == 15 and r["subjects"] == 6
    assert r["mean difference"] == pytest.approx(values.mean())
    assert r["Wilcoxon p"] == pytest.approx(stats.wilcoxon(values).pvalue)
    assert r["pairs where a > b"] == int((values > 0).sum())
    # the bootstrap as "every pair of draws (i, j) of two different subjects, s_i < s_j": a pair
    # counted as often as both its subjects were drawn; same seeded draws
    rng, boot = np.random.default_rng(7), []
    for _ in range(300):
        drawn = [ids[k] for k in rng.integers(0, len(ids), len(ids))]
        got = [d[(s, t)] for s in drawn for t in drawn if s < t]
        if got:
            boot.append(np.mean(got))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert r["bootstrap 95% CI low"] == pytest.approx(lo)
    assert r["bootstrap 95% CI high"] == pytest.approx(hi)
    assert lo <= values.mean() <= hi


def test_paired_comparison_constant_difference_and_zero_differences():
    ids, a, _ = _frames(4, seed=1)
    r = paired_comparison({"A": a, "B": a - 0.1}, "A", "B", n_boot=200)
    assert r["mean difference"] == pytest.approx(0.1)
    assert r["bootstrap 95% CI low"] == pytest.approx(0.1)
    assert r["bootstrap 95% CI high"] == pytest.approx(0.1)
    # every difference zero: the test says nothing (NaN, as paired_wilcoxon)
    same = paired_comparison({"A": a, "B": a.copy()}, "A", "B", n_boot=50)
    assert np.isnan(same["Wilcoxon p"]) and same["mean difference"] == 0.0
    assert same["pairs where a > b"] == 0


def test_paired_comparison_leaves_out_non_finite_pairs():
    ids, a, b = _frames(5, seed=2)
    b = b.copy()
    b.loc[["s00->s01", "s01->s00"]] = np.nan            # pair s00<->s01 unscored for B
    b.loc[["s02->s03", "s03->s02"], "x"] = np.inf       # pair s02<->s03: B's mean infinite
    r = paired_comparison({"A": a, "B": b}, "A", "B", n_boot=100)
    keep = [p for p in unordered(a).index if p not in ("s00<->s01", "s02<->s03")]
    da, db = unordered(a).mean(axis=1)[keep], unordered(b).mean(axis=1)[keep]
    assert r["unordered pairs"] == len(keep) == 8
    assert r["mean difference"] == pytest.approx((da - db).mean())
    assert r["Wilcoxon p"] == pytest.approx(stats.wilcoxon(da.values - db.values).pvalue)
    assert np.isfinite(r["bootstrap 95% CI low"]) and np.isfinite(r["bootstrap 95% CI high"])
    # one pair left: no test
    one = paired_comparison({"A": a.loc[["s00->s01"]], "B": a.loc[["s00->s01"]] - 0.1}, "A", "B",
                            n_boot=20)
    assert one["unordered pairs"] == 1 and np.isnan(one["Wilcoxon p"])


def _evaluation(pairs, offset):
    ev = PairEvaluation(pairs=list(pairs))
    for m in ("M", "N"):
        ev.dice[m] = pd.DataFrame({"x": [offset + i for i in range(len(pairs))]}, index=pairs)
    ev.dice_rules["released"] = {"M": ev.dice["M"] + 100}
    ev.deformation = pd.DataFrame({"pair": pairs, "method": "M", "SDlogJ": 0.1})
    ev.examples["M"] = {"from": offset}
    return ev


def test_merge_folds_keeps_every_pair_once_with_its_fold():
    first, second = _evaluation(["a->b", "b->a"], 0), _evaluation(["c->d", "d->c", "c->e"], 10)
    out = merge_folds([first, second], primary="argmax")
    assert out.pairs == ["a->b", "b->a", "c->d", "d->c", "c->e"]
    assert out.fold == {"a->b": 1, "b->a": 1, "c->d": 2, "d->c": 2, "c->e": 2}
    assert out.rule == "argmax"
    for m in ("M", "N"):
        assert list(out.dice[m].index) == out.pairs
        assert out.dice[m]["x"].tolist() == [0, 1, 10, 11, 12]
    assert out.dice_rules["released"]["M"]["x"].tolist() == [100, 101, 110, 111, 112]
    assert out.deformation["fold"].tolist() == [1, 1, 2, 2, 2]
    assert out.examples["M"] == {"from": 0}                     # the first fold's
    long = out.per_pair_dice()
    assert list(long.columns[:3]) == ["fold", "rule", "method"] and long.index.name == "pair"
    # 5 pairs x (2 methods by argmax + 1 by the released rule), each with its fold
    assert len(long) == 15 and not long.reset_index().duplicated(["pair", "rule", "method"]).any()
    assert (long["fold"] == long.index.map(out.fold)).all()
    named = merge_folds([first, second], names=["p1", "p2"])
    assert set(named.fold.values()) == {"p1", "p2"}
