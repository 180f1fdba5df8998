"""The ixi10-trained U-ReSNet networks beside classical registration: on Mindboggle-101
(generalisation) or on the quick preset's own ixi10 test pairs.

::

    python reproductions/ureSnet/generalisation.py [--dataset mindboggle101|ixi10]
        [--runs runs/ureSnet/quick-ixi10] [--data-root DIR] [--pairs N|all]
        [--methods com,ants_affine,ants_syn,registration_only,ureSnet]
        [--cache runs/ureSnet/classical-cache | --no-cache] [--threads 1]
        [--normalisation paper|released] [--out DIR]

``--dataset mindboggle101`` (default): the quick preset's networks (trained on the ixi10 sample
only, one network per fold) register ordered pairs of the Mindboggle-101 OASIS-TRT-20 subjects of
the data root, preprocessed as their training data
(:func:`~regseg.datasets.mindboggle.mindboggle_ureSnet_recipe`: 2 mm, brain = image > 0, z-score
over the brain, crop 80 x 104 x 88 around the brain's centre of mass), and are scored on the 14
Table 1 structures Mindboggle labels (:data:`~regseg.datasets.labels.MINDBOGGLE_TABLE1`; no
cerebral white matter), beside

* ``com`` — "centre-of-mass": the identity after that preprocessing
  (:class:`~regseg.evaluation.pairs.IdentityRegistrar`, Table 1's "Rigid");
* ``ants_affine``, ``ants_syn`` — ANTs ``Affine`` and ``SyN`` with default parameters
  (:class:`~regseg.evaluation.classical.AntsRegistrar`, started from the identity), cached per
  pair by content in ``--cache`` (they do not depend on training: computed once, e.g. before
  training with ``--methods com,ants_affine,ants_syn``);
* ``registration_only``, ``ureSnet`` — the trained networks found under ``--runs``
  (``<runs>/fold<k>/<method>``), one row per fold; missing or unfinished runs are skipped with
  a printed note.

Pairs (default): each subject ``i`` (sorted by id) registered to ``i + 1`` and ``i + 2`` (mod n),
so that every subject is moving twice and fixed twice (30 pairs for 15 subjects);
``--pairs N`` takes the first N of the offsets 1, 2, 3, ... in that order; ``--pairs all`` is
every ordered pair (210). Evaluation: :func:`~regseg.evaluation.pairs.evaluate_pairs` (labels
warped by the argmax of the trilinearly warped one-hot maps; folding and SDlogJ inside the fixed
image's brain mask).

``--dataset ixi10``: Table 1's test pairs with the classical rows a user would pick instead of
the networks. The ixi10 sample is loaded with the quick preset's own dataset spec
(``REPRODUCTION.datasets["ixi10"]``: :func:`~regseg.datasets.ixi10.ixi10_splits` with
``--normalisation``, then :func:`~regseg.training.folds.cross_validation_splits` with the
preset's 2 folds, ``min_test=2``), so the folds, pairs and preprocessed volumes are exactly those
the networks were tested on. For each fold ``k``, every ordered pair of its 5 test subjects
(:func:`~regseg.training.pairs.all_ordered_pairs`, as the preset) is registered by ``Rigid``
(``com``: the identity after the preprocessing), ``ANTs Affine``, ``ANTs SyN`` and fold ``k``'s
networks only (``<runs>/fold<k>/<method>``, rows "Christodoulidis et al." and "U-ReSNet"; a
network whose ``settings.json`` names other training subjects than fold ``k``'s is refused); the
folds are pooled with :func:`~regseg.evaluation.comparison.merge_folds` (40 ordered = 20
unordered pairs; a network missing in one fold is left out with a note). Scored on the 15 Table 1
structures (argmax rule), folding and SDlogJ inside the fixed brain mask.

Written into ``--out`` (a new folder swapped in whole, :func:`regseg.fileio.replace_folder`;
default ``results/ureSnet/generalisation-mindboggle101`` or ``results/ureSnet/classical-ixi10``):
``generalisation_dice.{md,csv}`` (Mindboggle: Dice per structure mean ± std over the ordered
pairs; ixi10: over the unordered pairs, the two directions averaged, as Table 1; then the mean
over the structures, seconds per pair, folded % and SDlogJ — these three over the ordered
registrations; one column per method), ``paired_comparison.{md,csv}`` (networks vs the
classical rows and the ANTs rows vs Rigid / centre-of-mass:
:func:`~regseg.evaluation.comparison.paired_comparison` of the mean Dice over unordered pairs,
Wilcoxon p and subject-level bootstrap CI), ``per_pair_dice.csv``,
``deformation_statistics.csv``, ``seconds_per_pair.csv`` and ``README.md`` (command, commit,
wall time, pairs, what was cached).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "METHODS", "CLASSICAL", "NETWORKS", "IXI10_NAME", "IXI10_COMPARISONS",
           "ring_pairs", "mindboggle_dataset", "ixi10_folds", "find_runs", "comparison_pairs",
           "generalisation_table", "run", "main"]

#: ``--dataset`` values
DATASETS = ("mindboggle101", "ixi10")
#: ``--methods`` keys in table order
METHODS = ("com", "ants_affine", "ants_syn", "registration_only", "ureSnet")
#: untrained rows -> table name
CLASSICAL = {"com": "centre-of-mass", "ants_affine": "ANTs Affine", "ants_syn": "ANTs SyN"}
#: trained rows (run folders ``<runs>/fold<k>/<key>``)
NETWORKS = ("registration_only", "ureSnet")
_ANTS = {"ants_affine": "Affine", "ants_syn": "SyN"}
STEM = "generalisation_dice"
COMPARISON_STEM = "paired_comparison"
#: the identity row's name on ixi10 (Table 1's "Rigid": §3.5's centre-of-mass translation alone)
RIGID = "Rigid"
#: the dataset in the ixi10 mode's titles
IXI10_NAME = "ixi10 (real IXI T1, 2 mm), stand-in for OASIS-3"
#: the paired comparisons (a, b) of the ixi10 mode, in table order (Table 1's row names); those
#: whose methods were not evaluated are left out
IXI10_COMPARISONS = (("U-ReSNet", "ANTs SyN"), ("U-ReSNet", "ANTs Affine"),
                     ("Christodoulidis et al.", "ANTs Affine"), ("ANTs Affine", RIGID),
                     ("ANTs SyN", RIGID))
#: seed of the paired comparisons' bootstrap (as the quick preset's ``--seed`` default)
COMPARISON_SEED = 0


class UsageError(ValueError):
    """A command-line value that cannot work (exit code 2)."""


def ring_pairs(n: int, count: int | None = None) -> np.ndarray:
    """Ordered pairs ``(i, (i + k) % n)`` for offsets ``k = 1, 2, ...``, offset-major.

    Args:
        n: number of subjects (>= 2).
        count: number of pairs, at most ``n (n - 1)``; default ``2 n`` (each subject moving
            twice and fixed twice: offsets 1 and 2), or all pairs when ``n < 3``.
    Returns:
        int64 ``(count, 2)`` of (moving, fixed) indices; ``count = n (n - 1)`` gives every
        ordered pair once.
    Raises:
        ValueError: ``n < 2``, or ``count`` outside ``1 .. n (n - 1)``.
    """
    if n < 2:
        raise ValueError(f"need at least 2 subjects for pairs, got {n}")
    total = n * (n - 1)
    count = min(2 * n, total) if count is None else int(count)
    if not 1 <= count <= total:
        raise ValueError(f"--pairs must be 1..{total} (every ordered pair of {n} subjects) or "
                         f"'all', got {count}")
    pairs = [(i, (i + k) % n) for k in range(1, n) for i in range(n)]
    return np.asarray(pairs[:count], dtype=np.int64).reshape(-1, 2)


def mindboggle_dataset(root, normalisation: str = "paper", preprocessing_cache=None):
    """The Mindboggle-101 subjects of ``root`` under the networks' preprocessing.

    Args:
        root: data root holding ``mindboggle101/<subset>_volumes/`` (or that folder itself).
        normalisation: ``"paper"`` or ``"released"`` (as the networks' runs).
        preprocessing_cache: folder of a :class:`~regseg.datasets.cache.PreprocessingCache`,
            or ``None``.
    Returns:
        :class:`~regseg.datasets.subjects.SubjectDataset` (labels ``labels.DKT31.manual+aseg``
        mapped to ``structures``), named e.g. "MindBoggle-101 OASIS-TRT-20, 15 subjects, 2 mm —
        networks trained on ixi10 only".
    Raises:
        FileNotFoundError / DataError: no Mindboggle layout, a subject without its files.
    """
    from regseg.datasets.mindboggle import (ASEG_LABELS, mindboggle_subjects,
                                            mindboggle_ureSnet_recipe)
    from regseg.datasets.subjects import SubjectDataset

    subjects = mindboggle_subjects(root, labels=ASEG_LABELS)
    groups = ", ".join(sorted({s.group for s in subjects}))
    name = (f"MindBoggle-101 {groups}, {len(subjects)} subjects, 2 mm — networks trained on "
            f"ixi10 only")
    return SubjectDataset(name, False, subjects, mindboggle_ureSnet_recipe(normalisation),
                          cache=True, disk_cache=preprocessing_cache)


def ixi10_folds(root, normalisation: str = "paper", preprocessing_cache=None):
    """The ixi10 sample as the U-ReSNet quick preset tests it: its cross-validation folds.

    Loads through the reproduction's own dataset spec (``REPRODUCTION.datasets["ixi10"]`` with
    the ``quick`` preset: :func:`~regseg.datasets.ixi10.ixi10_splits` under the chosen
    normalisation, then :func:`~regseg.training.folds.cross_validation_splits` with the preset's
    folds, contiguous blocks of the subjects sorted by id, ``min_test=2``), so the folds and the
    preprocessed volumes are exactly those of ``run.py --preset quick``.

    Args:
        root: data root holding ``ixi10/`` (or that folder itself).
        normalisation: ``"paper"`` or ``"released"`` (the runs' ``--normalisation``).
        preprocessing_cache: folder of a :class:`~regseg.datasets.cache.PreprocessingCache`
            (the runner's: ``$REGSEG_CACHE/preprocessed``), or ``None``.
    Returns:
        :class:`~regseg.training.folds.CrossValidationSplits`; ``.folds[k - 1]`` is fold ``k``
        (``train``: the subjects its networks were trained on, ``test``: those it tests).
    Raises:
        FileNotFoundError / DataError: no ixi10 layout, a subject without its label map.
    """
    from types import SimpleNamespace

    from regseg.reproductions.ureSnet.reproduction import PRESETS, REPRODUCTION

    preset = PRESETS["quick"]
    ctx = SimpleNamespace(args=SimpleNamespace(normalisation=normalisation), preset=preset)
    splits = REPRODUCTION.datasets[preset.dataset].load(root, ctx)
    if preprocessing_cache is not None:
        splits.use_disk_cache(preprocessing_cache)
    return splits


def comparison_pairs(names, rigid: str = RIGID, *, ixi10: bool = False) -> list[tuple[str, str]]:
    """The paired comparisons ``(a, b)`` among the evaluated methods ``names``.

    ``ixi10`` (Table 1's row names): :data:`IXI10_COMPARISONS`. Otherwise (Mindboggle, one row
    per network and fold): every network row against ANTs SyN, ANTs Affine and ``rigid``, then
    the ANTs rows against ``rigid``. Methods not evaluated are left out.
    """
    names = list(names)
    if ixi10:
        return [(a, b) for a, b in IXI10_COMPARISONS if a in names and b in names]
    classical = {rigid, "ANTs Affine", "ANTs SyN"}
    rows = [(net, other) for net in names if net not in classical
            for other in ("ANTs SyN", "ANTs Affine", rigid) if other in names]
    rows += [(a, rigid) for a in ("ANTs Affine", "ANTs SyN") if a in names and rigid in names]
    return rows


def _comparison_table(evaluation, names, rigid, ixi10=False):
    """:func:`comparison_pairs` as a DataFrame (one row each), or ``None`` when there is none."""
    import pandas as pd

    from regseg.evaluation.comparison import paired_comparison

    pairs = comparison_pairs(names, rigid, ixi10=ixi10)
    if not pairs:
        return None
    return pd.DataFrame([paired_comparison(evaluation.dice, a, b, seed=COMPARISON_SEED)
                         for a, b in pairs]).set_index("comparison")


def _fold_number(folder: Path) -> int:
    match = re.fullmatch(r"fold(\d+)", folder.parent.name)
    return int(match.group(1)) if match else 0


def find_runs(runs_dir, keys=NETWORKS) -> tuple[list[tuple[str, str, Path]], list[str]]:
    """The finished network runs under ``runs_dir``.

    Looks for ``<runs_dir>/fold<k>/<key>`` (cross-validation, fold order) and else
    ``<runs_dir>/<key>``; a run is finished when it holds ``regseg_run.json`` and the final
    weights.

    Returns:
        ``([(key, fold name or "", run folder), ...], [notes on what was skipped])``.
    """
    from regseg.training.fit import FINAL_WEIGHTS
    from regseg.training.runner import RUN_MANIFEST

    runs_dir = Path(runs_dir)
    found, notes = [], []
    for key in keys:
        folders = sorted(runs_dir.glob(f"fold*/{key}"), key=_fold_number)
        if not folders and (runs_dir / key).is_dir():
            folders = [runs_dir / key]
        if not folders:
            notes.append(f"{key}: no run under {runs_dir} (skipped)")
        for folder in folders:
            if not ((folder / RUN_MANIFEST).is_file() and (folder / FINAL_WEIGHTS).is_file()):
                notes.append(f"{folder}: training not finished (no {RUN_MANIFEST} or "
                             f"{FINAL_WEIGHTS}; skipped)")
                continue
            fold = str(_fold_number(folder)) if folder.parent.name.startswith("fold") else ""
            found.append((key, fold, folder))
    return found, notes


def _run_normalisation(manifest: dict) -> str:
    steps = {s.get("step") for s in manifest.get("recipe", {}).get("steps", [])}
    return "released" if {"clip", "min-max"} & steps else "paper"


def _load_network(run_dir: Path, normalisation: str, shape, data: str = "Mindboggle"):
    """``(label, registrar)`` of a finished run; raises UsageError when it cannot take our data."""
    import importlib

    from regseg.training.runner import read_run_manifest

    manifest = read_run_manifest(run_dir)
    theirs = _run_normalisation(manifest)
    if theirs != normalisation:
        raise UsageError(f"{run_dir}: trained with the {theirs!r} normalisation; pass "
                         f"--normalisation {theirs}")
    expected = tuple(manifest.get("model_config", {}).get("input_shape", ()))
    if expected != tuple(shape):
        raise UsageError(f"{run_dir}: the network takes {expected} voxels, the {data} "
                         f"preprocessing gives {tuple(shape)}")
    spacing = manifest.get("spacing_mm")
    if spacing and not np.allclose(spacing, 2.0):
        raise UsageError(f"{run_dir}: trained at {spacing} mm, the {data} preprocessing "
                         f"is at 2 mm")
    repro = importlib.import_module(manifest["reproduction"]).REPRODUCTION
    registrar = repro.methods()[manifest["method"]].load(run_dir, manifest)
    return manifest.get("label") or manifest["method"], registrar


class _ReportedSeconds:
    """Wraps a registrar and keeps the ``"seconds"`` each output reports (else ``None``)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, []

    def register(self, moving, fixed):
        out = self.inner.register(moving, fixed)
        self.seconds.append(out.get("seconds"))
        return out


def _use_reported_seconds(evaluation, wrappers: dict) -> None:
    """Replace the measured seconds by those the registrars reported (cached ANTs results:
    the original registration's seconds, not the cache read)."""
    frame = evaluation.seconds
    for method, wrapper in wrappers.items():
        rows = frame.index[frame["method"] == method]
        if len(rows) == len(wrapper.seconds) and all(s is not None for s in wrapper.seconds):
            frame.loc[rows, "seconds"] = [float(s) for s in wrapper.seconds]


def generalisation_table(evaluation, methods, identity=(), unordered_dice: bool = False):
    """Dice per structure, mean of the structures, seconds, folded % and SDlogJ per method.

    Args:
        evaluation: :class:`~regseg.evaluation.pairs.PairEvaluation`.
        methods: method names (columns) in table order.
        identity: methods that are the identity (folded 0 %, SDlogJ 0; ``evaluate_pairs``
            computes no Jacobian for them).
        unordered_dice: Dice rows over unordered pairs, the two directions of a pair averaged
            (:func:`~regseg.evaluation.comparison.unordered`, Table 1); seconds, folded % and
            SDlogJ stay over the ordered registrations.
    Returns:
        DataFrame: rows = structures, ``mean of N``, ``seconds per pair``, ``folded %``,
        ``SDlogJ``; columns ``<method> mean`` and ``<method> std`` over the pairs (population
        std), rendered ``mean ± std`` by :func:`~regseg.evaluation.tables.write_result_table`.
    """
    import pandas as pd

    from regseg.evaluation.comparison import unordered

    names = list(next(iter(evaluation.dice.values())).columns)
    mean_row = f"mean of {len(names)}"
    rows = [*names, mean_row, "seconds per pair", "folded %", "SDlogJ"]
    data = {}
    deformation, seconds = evaluation.deformation, evaluation.seconds
    for method in methods:
        dice = evaluation.dice[method]
        if unordered_dice:
            dice = unordered(dice)[names]
        values = {name: dice[name].to_numpy(dtype=float) for name in names}
        values[mean_row] = dice.mean(axis=1).to_numpy(dtype=float)
        values["seconds per pair"] = seconds.loc[seconds["method"] == method,
                                                 "seconds"].to_numpy(dtype=float)
        if method in identity:
            values["folded %"] = values["SDlogJ"] = np.zeros(len(evaluation.dice[method]))
        elif len(deformation) and (deformation["method"] == method).any():
            d = deformation[deformation["method"] == method]
            values["folded %"] = 100.0 * d["folding fraction"].to_numpy(dtype=float)
            values["SDlogJ"] = d["SDlogJ"].to_numpy(dtype=float)
        data[f"{method} mean"] = [float(np.mean(values[r])) if r in values and len(values[r])
                                  else np.nan for r in rows]
        data[f"{method} std"] = [float(np.std(values[r])) if r in values and len(values[r])
                                 else np.nan for r in rows]
    return pd.DataFrame(data, index=pd.Index(rows, name="structure"))


def _mapping_markdown() -> str:
    from regseg.datasets.labels import DLMUSE_TABLE1, MINDBOGGLE_TABLE1, TABLE1_FULL_NAMES

    def ids(values):
        values = sorted(values)
        if len(values) > 6:
            runs, start = [], values[0]
            for a, b in zip(values, values[1:] + [None]):
                if b != a + 1:
                    runs.append(f"{start}–{a}" if a != start else str(a))
                    start = b
            return ", ".join(runs)
        return ", ".join(map(str, values))

    lines = ["| structure | Mindboggle `labels.DKT31.manual+aseg` ids | ixi10 DLMUSE ids |",
             "|---|---|---|"]
    for name in DLMUSE_TABLE1.names:
        ours = ids(MINDBOGGLE_TABLE1.ids[name]) if name in MINDBOGGLE_TABLE1.ids else \
            "— (not labelled: no cerebral white-matter label)"
        lines.append(f"| {name} ({TABLE1_FULL_NAMES[name]}) | {ours} | "
                     f"{ids(DLMUSE_TABLE1.ids[name])} |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    from regseg.training.runner import REPO_ROOT

    p = argparse.ArgumentParser(
        prog="python reproductions/ureSnet/generalisation.py",
        description="The ixi10-trained U-ReSNet networks beside centre-of-mass (Rigid), ANTs "
                    "Affine and ANTs SyN on the same pairs: Mindboggle-101 pairs "
                    "(generalisation) or the quick preset's own ixi10 test pairs.")
    p.add_argument("--dataset", choices=DATASETS, default="mindboggle101",
                   help="mindboggle101 (default): generalisation to Mindboggle-101 pairs; ixi10: "
                        "the quick preset's test pairs (each fold's networks on its own test "
                        "subjects, pooled over the folds, as Table 1)")
    p.add_argument("--runs", default=str(REPO_ROOT / "runs" / "ureSnet" / "quick-ixi10"),
                   help="the quick preset's run folder (<runs>/fold<k>/<method>)")
    p.add_argument("--data-root", default=None,
                   help="data root holding mindboggle101/ or ixi10/ (default $REGSEG_DATA_ROOT)")
    p.add_argument("--pairs", default=None,
                   help="mindboggle101 only: number of ordered pairs (default 2 per subject: "
                        "i -> i+1, i+2) or 'all'")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, of {', '.join(METHODS)} (default all)")
    p.add_argument("--cache", default=str(REPO_ROOT / "runs" / "ureSnet" / "classical-cache"),
                   help="folder of the per-pair ANTs cache")
    p.add_argument("--no-cache", action="store_true",
                   help="no ANTs cache and no preprocessing cache")
    p.add_argument("--threads", type=int, default=1,
                   help="ITK threads for ANTs (default 1: bit-for-bit reproducible; more threads "
                        "are faster but not reproducible)")
    p.add_argument("--normalisation", choices=["paper", "released"], default="paper",
                   help="intensity normalisation of the networks' runs (see run.py)")
    p.add_argument("--out", default=None,
                   help="results folder, replaced whole (default results/ureSnet/"
                        "generalisation-mindboggle101, or results/ureSnet/classical-ixi10 with "
                        "--dataset ixi10)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _command(argv) -> str:
    import shlex

    return "python reproductions/ureSnet/generalisation.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def _classical(methods, args, names: dict):
    """``({table name: registrar}, {table name: AntsRegistrar})`` of the untrained rows asked
    for, named by ``names`` (``{key: table name}``)."""
    from regseg.evaluation.classical import AntsRegistrar
    from regseg.evaluation.pairs import IdentityRegistrar

    cache = None if args.no_cache else Path(args.cache)
    registrars, ants = {}, {}
    for key in methods:
        if key == "com":
            registrars[names[key]] = IdentityRegistrar()
        elif key in _ANTS:
            ants[names[key]] = registrars[names[key]] = AntsRegistrar(
                _ANTS[key], threads=args.threads, cache_dir=cache)
    return registrars, ants


def _ants_header(ants, args) -> str:
    from regseg.evaluation.classical import ants_version

    return (f"antspyx {ants_version()}, default parameters from the identity, {args.threads} ITK "
            f"thread(s), seed 1; " + "; ".join(
                f"{name}: {reg.hits} read from the cache, {reg.misses} computed"
                for name, reg in ants.items()))



def _readme_head(title, command, commit, wall, root, pairs_line) -> list[str]:
    """The first lines of a results README: title, command, commit, wall time, data, pairs."""
    return [f"# {title}", "", f"- command: `{command}`", f"- commit: {commit}",
            f"- wall time: {wall / 60:.1f} min ({wall:.0f} s)", f"- data root: {root}",
            pairs_line, ""]


def _readme_comparison_and_ants(comparison, comparison_note, ants_info, header, args):
    """The README lines on the paired comparison and the ANTs settings and cache."""
    lines = ["Paired comparison: " + comparison_note, ""] if comparison is not None else []
    if ants_info:
        cache = None if args.no_cache else Path(args.cache)
        lines += [f"ANTs: {header['ANTs']}. Cache: {cache if cache is not None else 'none'} "
                  f"(one entry per pair, keyed by the preprocessed images' content, the method "
                  f"and its parameters).", ""]
    return lines

def _new_results_folder(out_dir: Path) -> Path:
    results = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    return results


def _write_common(results: Path, evaluation, table, comparison, header, title, note,
                  comparison_title, comparison_note, skipped) -> None:
    """The tables and per-pair CSVs shared by both datasets."""
    from regseg.evaluation.tables import atomic_write_csv, write_result_table

    write_result_table(table, results, STEM, header, title=title, overwrite=True,
                       notes=note + ("\n\nSkipped: " + "; ".join(skipped) if skipped else ""))
    if comparison is not None:
        write_result_table(comparison, results, COMPARISON_STEM, header, title=comparison_title,
                           overwrite=True, notes=comparison_note)
    atomic_write_csv(evaluation.per_pair_dice(), results / "per_pair_dice.csv")
    if len(evaluation.deformation):
        atomic_write_csv(evaluation.deformation, results / "deformation_statistics.csv")
    atomic_write_csv(evaluation.seconds, results / "seconds_per_pair.csv")


def _comparison_note(pairs_text: str) -> str:
    from regseg.evaluation.comparison import PAIRED_COMPARISON_NOTE

    return (f"Mean Dice over the structures per {pairs_text}; difference a - b; "
            f"{PAIRED_COMPARISON_NOTE}; subject-level bootstrap 95 % CI (subjects resampled, "
            f"2000 draws, seed {COMPARISON_SEED}).")


def _check_training_subjects(folder: Path, fold, k: int) -> str:
    """Refuse a network trained on a subject of fold ``k``'s test pairs, or on other subjects
    than fold ``k``'s training subjects (``settings.json``); returns a line for the README."""
    import json

    from regseg.training.fit import SETTINGS

    path = folder / SETTINGS
    try:
        train = json.loads(path.read_text())["settings"]["subjects"]["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{folder}: no training subjects in {SETTINGS} (not checked)"
    test = set(fold.test.subject_ids)
    if set(train) & test:
        raise UsageError(f"{folder}: trained on {sorted(set(train) & test)}, test subjects of "
                         f"fold {k}: not the quick preset's fold {k} network")
    if sorted(train) != sorted(fold.train.subject_ids):
        raise UsageError(f"{folder}: trained on {sorted(train)}, but fold {k} of the quick preset "
                         f"trains on {sorted(fold.train.subject_ids)}")
    return f"{folder}: trained on fold {k}'s training subjects ({', '.join(sorted(train))})"


def _table1_consistency(evaluation, path: Path) -> list[str]:
    """Per method, the largest |Dice difference| against the quick preset's own per-pair Dice
    (same pairs, argmax rule): 0 for Rigid, and about 0 for the networks when ``--runs`` holds
    the networks that made that table."""
    import pandas as pd

    if not path.is_file():
        return [f"{path}: not found (no check against the quick preset's table)"]
    try:
        theirs = pd.read_csv(path, index_col=0, comment="#")
        theirs = theirs[theirs["rule"] == "argmax"]
    except (OSError, ValueError, KeyError) as exc:
        return [f"{path}: unreadable ({exc})"]
    lines = []
    for method, ours in evaluation.dice.items():
        other = theirs[theirs["method"] == method]
        if other.empty:
            continue
        common = [p for p in ours.index if p in other.index]
        cols = [c for c in ours.columns if c in other.columns]
        diff = (ours.loc[common, cols].astype(float) -
                other.loc[common, cols].astype(float)).abs().to_numpy()
        lines.append(f"{method}: {len(common)} of {len(ours)} pairs in {path.name}; largest "
                     f"|Dice difference| {float(diff.max()) if diff.size else float('nan'):.2e}")
    return lines


def run(argv=None) -> Path:
    """Compute and write the tables (see the module docstring); returns the results folder.

    Raises:
        UsageError: bad ``--methods``, ``--pairs`` or ``--threads``, or a run that cannot take
            the data; DataError / FileNotFoundError: data problems (named).
    """
    args = _parser().parse_args(argv)
    start = time.time()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown {unknown or 'none given'}; choose from "
                         f"{', '.join(METHODS)}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.dataset == "ixi10" and args.pairs not in (None, ""):
        raise UsageError("--pairs is for --dataset mindboggle101; --dataset ixi10 takes the quick "
                         "preset's test pairs (all ordered pairs within each fold's test subjects)")

    from regseg.datasets import resolve_data_root
    from regseg.training.runner import REPO_ROOT

    root = resolve_data_root(args.data_root)
    if root is None:
        folder = "mindboggle101/" if args.dataset == "mindboggle101" else "ixi10/"
        raise UsageError(f"no data root: pass --data-root (the folder holding {folder}) or set "
                         f"$REGSEG_DATA_ROOT")
    if args.out is None:
        args.out = str(REPO_ROOT / "results" / "ureSnet" / (
            "generalisation-mindboggle101" if args.dataset == "mindboggle101" else
            "classical-ixi10"))
    if args.dataset == "ixi10":
        return _run_ixi10(args, argv, methods, root, start)
    return _run_mindboggle(args, argv, methods, root, start)


def _run_mindboggle(args, argv, methods, root, start) -> Path:
    from regseg.evaluation.pairs import evaluate_pairs
    from regseg.evaluation.tables import atomic_write_text, git_commit
    from regseg.fileio import RunLock, check_writable, replace_folder
    from regseg.training.runner import cache_dir

    dataset = mindboggle_dataset(root, args.normalisation,
                                 None if args.no_cache else cache_dir() / "preprocessed")
    n = len(dataset)
    if args.pairs in (None, ""):
        count = None
    elif str(args.pairs).lower() == "all":
        count = n * (n - 1)
    else:
        try:
            count = int(args.pairs)
        except ValueError:
            raise UsageError(f"--pairs must be a number or 'all', got {args.pairs!r}") from None
    try:
        pairs = ring_pairs(n, count)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    ids = dataset.subject_ids
    print(f"dataset: {dataset.name}\npairs: {len(pairs)} ordered "
          f"({', '.join(f'{ids[a]}->{ids[b]}' for a, b in pairs[:3])}, ...)\nmethods: "
          f"{', '.join(methods)}\nresults: {args.out}", flush=True)

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: --out is a file, not a folder")
    check_writable(out_dir.parent)
    used = sorted({int(i) for i in pairs.ravel()})
    subset = dataset.subset(used)  # only the subjects of the pairs are read
    local = np.searchsorted(used, pairs)
    samples = [subset.load(k) for k in range(len(subset))]  # preprocess and check them first
    shape = samples[0].shape

    registrars, ants_info = _classical(methods, args, CLASSICAL)
    wrappers = {name: _ReportedSeconds(reg) for name, reg in ants_info.items()}
    registrars.update(wrappers)
    notes = []
    network_keys = [m for m in methods if m in NETWORKS]
    if network_keys:
        found, skipped = find_runs(args.runs, network_keys)
        for note in skipped:
            print(f"note: {note}", flush=True)
        notes += skipped
        for key, fold, folder in found:
            label, registrar = _load_network(folder, args.normalisation, shape)
            name = f"{label} (fold {fold})" if fold else label
            a, b = (samples[int(i)] for i in local[0])
            registrar.register(a, b)  # warm-up (graph building), not timed
            registrars[name] = registrar
    if not registrars:
        raise UsageError("nothing to evaluate: no method left (see the notes above)")

    with RunLock(out_dir.parent, f".{out_dir.name}.lock"):
        print(f"evaluating {len(registrars)} methods on {len(pairs)} pairs ...", flush=True)
        evaluation = evaluate_pairs(registrars, subset, local, structures="structures",
                                    segmentation=None, label_rule="argmax",
                                    jacobian_mask="brain")
        _use_reported_seconds(evaluation, wrappers)
        rigid = CLASSICAL["com"]
        table = generalisation_table(evaluation, list(registrars), identity=[rigid])
        comparison = _comparison_table(evaluation, list(registrars), rigid)
        wall = time.time() - start
        commit = git_commit()
        command = _command(argv)
        header = {
            "dataset": dataset.name,
            "commit": commit,
            "wall time": f"{wall / 60:.1f} min",
            "command": command,
            "pairs": f"{len(pairs)} ordered pairs of {len(used)} subjects ("
                     + ("every ordered pair" if len(pairs) == n * (n - 1)
                        else "i -> i+k (mod n), k = 1, 2, ...") + ")",
            "preprocessing": dataset.recipe.name + f" ({args.normalisation} normalisation)",
            "networks": str(args.runs) if network_keys else "not requested",
        }
        if ants_info:
            header["ANTs"] = _ants_header(ants_info, args)
        note = ("Dice per structure (14 Table 1 structures; Mindboggle has no cerebral white "
                "matter), mean ± std over the ordered pairs; labels warped by the argmax of the "
                "trilinearly warped one-hot maps. 'seconds per pair': wall seconds of one "
                "registration on this machine's CPU (ANTs: the original registration when read "
                "from the cache; networks: one forward pass after a warm-up call). 'folded %' "
                "(det J ≤ 0) and SDlogJ inside the fixed image's brain mask. Networks: trained "
                "on ixi10 only (quick preset), one row per cross-validation fold.")
        comparison_note = _comparison_note(
            "pair, the two directions averaged where both were registered (the default pairs "
            "i -> i+1, i+2 hold one direction each)")
        results = _new_results_folder(out_dir)
        title = f"U-ReSNet generalisation: registration Dice — {dataset.name}"
        comparison_title = (f"U-ReSNet generalisation: paired comparison of the mean "
                            f"registration Dice — {dataset.name}")
        _write_common(results, evaluation, table, comparison, header, title, note,
                      comparison_title, comparison_note, notes)
        readme = _readme_head(title, command, commit, wall, root,
                              f"- pairs: {header['pairs']}: " + ", ".join(evaluation.pairs))
        readme += ["Files: `generalisation_dice.md` / `.csv` (the table), "
                   + ("`paired_comparison.md` / `.csv` (networks vs the classical rows, ANTs vs "
                      "centre-of-mass), " if comparison is not None else "")
                   + "`per_pair_dice.csv`, `deformation_statistics.csv`, `seconds_per_pair.csv`.",
                   "", note, ""]
        readme += _readme_comparison_and_ants(comparison, comparison_note, ants_info, header,
                                              args)
        readme += ["Skipped:", *[f"- {n_}" for n_ in notes], ""] if notes else []
        readme += ["## Preprocessing", "", dataset.recipe.describe(), "",
                   "## Label mapping (Table 1 structures)", "", _mapping_markdown(),
                   "Mindboggle's subcortical labels are the Neuromorphometrics labels renumbered "
                   "to FreeSurfer ids (the vermis as 630–632); the inferior lateral ventricles "
                   "(5/44) are not part of LV, as DLMUSE 49/50 are not; see "
                   "`regseg.datasets.labels` for every choice.", ""]
        atomic_write_text(results / "README.md", "\n".join(readme))
        replace_folder(results, out_dir)
    print("\n" + (out_dir / f"{STEM}.md").read_text())
    if comparison is not None:
        print("\n" + (out_dir / f"{COMPARISON_STEM}.md").read_text())
    print(f"wall time: {(time.time() - start) / 60:.1f} min; results in {out_dir}")
    return out_dir


def _run_ixi10(args, argv, methods, root, start) -> Path:
    from regseg.evaluation.comparison import merge_folds
    from regseg.evaluation.pairs import evaluate_pairs
    from regseg.evaluation.tables import atomic_write_text, git_commit
    from regseg.fileio import RunLock, check_writable, replace_folder
    from regseg.reproductions.ureSnet.reproduction import PRESETS
    from regseg.training.folds import epochs_run
    from regseg.training.pairs import all_ordered_pairs, consecutive_pairs
    from regseg.training.runner import REPO_ROOT, cache_dir, read_run_manifest

    preset = PRESETS["quick"]
    splits = ixi10_folds(root, args.normalisation,
                         None if args.no_cache else cache_dir() / "preprocessed")
    folds = list(splits.folds)
    pair_rule = all_ordered_pairs if preset.test_pairs == "all" else consecutive_pairs
    fold_pairs = [pair_rule(len(f.test)) for f in folds]
    n_pairs = sum(len(p) for p in fold_pairs)
    print(f"dataset: {IXI10_NAME}: {len(folds)}-fold cross-validation of the quick preset\n"
          + "".join(f"fold {k}: test {', '.join(f.test.subject_ids)} ({len(p)} ordered pairs)\n"
                    for k, (f, p) in enumerate(zip(folds, fold_pairs), 1))
          + f"methods: {', '.join(methods)}\nresults: {args.out}", flush=True)

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: --out is a file, not a folder")
    check_writable(out_dir.parent)
    samples = [[f.test.load(i) for i in range(len(f.test))] for f in folds]  # preprocess first
    shape = samples[0][0].shape

    names = {**CLASSICAL, "com": RIGID}
    classical, ants_info = _classical(methods, args, names)
    notes, network_lines = [], []
    networks = {}  # table name -> [registrar of fold 1, fold 2, ...]
    network_keys = [m for m in methods if m in NETWORKS]
    if network_keys:
        found, skipped = find_runs(args.runs, network_keys)
        notes += skipped
        by_key = {}
        for key, fold, folder in found:
            by_key.setdefault(key, {})[fold] = folder
        for key in network_keys:
            have = by_key.get(key, {})
            missing = [str(k) for k in range(1, len(folds) + 1) if str(k) not in have]
            if have and missing:
                notes.append(f"{key}: no finished run for fold(s) {', '.join(missing)} under "
                             f"{args.runs} (left out: a row pooled over the folds needs each "
                             f"fold's network)")
            if missing:
                continue
            loaded = []
            for k, fold in enumerate(folds, 1):
                folder = have[str(k)]
                checked = _check_training_subjects(folder, fold, k)
                label, registrar = _load_network(folder, args.normalisation, shape, "ixi10")
                manifest = read_run_manifest(folder)
                epochs = epochs_run(folder)
                line = (f"{label}, fold {k}: {checked}; commit {manifest.get('commit', '?')}, "
                        f"{epochs} epochs trained")
                if epochs != preset.epochs:
                    line += (f" (the quick preset trains {preset.epochs}: not the networks of "
                             f"the current quick preset)")
                    print(f"note: {folder}: {epochs} epochs trained, the quick preset trains "
                          f"{preset.epochs}", flush=True)
                network_lines.append(line)
                a, b = (samples[k - 1][int(i)] for i in fold_pairs[k - 1][0])
                registrar.register(a, b)  # warm-up (graph building), not timed
                loaded.append(registrar)
            networks[label] = loaded
        for note in notes:
            print(f"note: {note}", flush=True)
    order = list(classical) + list(networks)
    if not order:
        raise UsageError("nothing to evaluate: no method left (see the notes above)")

    with RunLock(out_dir.parent, f".{out_dir.name}.lock"):
        print(f"evaluating {len(order)} methods on {n_pairs} pairs ...", flush=True)
        parts = []
        for k, (fold, pairs) in enumerate(zip(folds, fold_pairs), 1):
            wrappers = {name: _ReportedSeconds(reg) for name, reg in ants_info.items()}
            registrars = {name: wrappers.get(name, classical.get(name)) for name in classical}
            registrars.update({name: regs[k - 1] for name, regs in networks.items()})
            part = evaluate_pairs(registrars, fold.test, pairs, structures="structures",
                                  segmentation=None, label_rule="argmax", jacobian_mask="brain",
                                  learn2reg_sdlogj=True)
            _use_reported_seconds(part, wrappers)
            parts.append(part)
            print(f"fold {k}: {len(pairs)} pairs done ({(time.time() - start) / 60:.1f} min)",
                  flush=True)
        evaluation = merge_folds(parts, "argmax")
        table = generalisation_table(evaluation, order, identity=[RIGID], unordered_dice=True)
        comparison = _comparison_table(evaluation, order, RIGID, ixi10=True)
        consistency = _table1_consistency(
            evaluation, REPO_ROOT / "results" / "ureSnet" / "quick-ixi10" / "per_pair_dice.csv")
        wall = time.time() - start
        commit = git_commit()
        command = _command(argv)
        n_unordered = len({"<->".join(sorted(p.split("->"))) for p in evaluation.pairs})
        header = {
            "dataset": IXI10_NAME,
            "commit": commit,
            "wall time": f"{wall / 60:.1f} min",
            "command": command,
            "protocol": f"the U-ReSNet quick preset's {len(folds)}-fold cross-validation "
                        f"(regseg.training.folds.cross_validation_splits: the 10 subjects "
                        f"sorted by id in contiguous blocks): per fold {len(folds[0].train)} "
                        f"training and {len(folds[0].test)} test subjects; each fold's networks "
                        f"register only its own test pairs",
            "test pairs": f"{n_pairs} ordered = {n_unordered} unordered pairs (all ordered pairs "
                          f"within each fold's test subjects, as Table 1 of the quick preset)",
            "Dice rule": "argmax (Table 1)",
            "preprocessing": folds[0].test.recipe.name + f" ({args.normalisation} "
                                                         f"normalisation)",
            "networks": str(args.runs) if networks else "not requested",
        }
        if ants_info:
            header["ANTs"] = _ants_header(ants_info, args)
        note = ("Dice per structure (the 15 Table 1 structures), mean ± std over the "
                f"{n_unordered} unordered test pairs (the two directions averaged, as Table 1); "
                "labels warped by the argmax of the trilinearly warped one-hot maps. 'seconds "
                f"per pair', 'folded %' (det J ≤ 0) and SDlogJ: mean ± std over the {n_pairs} "
                "ordered registrations; folding and SDlogJ inside the fixed image's brain mask. "
                "Seconds: wall seconds of one registration on this machine's CPU (ANTs: "
                f"{args.threads} ITK thread(s), the original registration when read from the "
                "cache; networks: one forward pass with TensorFlow's default threads, after a "
                "warm-up call). Rigid = identity after the preprocessing (§3.5's centre-of-mass "
                "translation). Networks: each fold's network on its own fold's test pairs, pooled "
                "over the folds into one row. ixi10 stands in for OASIS-3: not the paper's data.")
        comparison_note = _comparison_note(
            "unordered test pair (the two directions averaged)")
        title = (f"U-ReSNet Table 1 pairs beside classical registration (ANTs): registration "
                 f"Dice — {IXI10_NAME}")
        comparison_title = (f"U-ReSNet Table 1 pairs beside classical registration (ANTs): "
                            f"paired comparison of the mean registration Dice — {IXI10_NAME}")
        results = _new_results_folder(out_dir)
        _write_common(results, evaluation, table, comparison, header, title, note,
                      comparison_title, comparison_note, notes)
        readme = _readme_head(title, command, commit, wall, root,
                              f"- test pairs: {header['test pairs']}")
        readme += ["## Folds", "", "| fold | training subjects (networks) | test subjects | "
                   "ordered test pairs |", "|---|---|---|---:|"]
        readme += [f"| {k} | {', '.join(f.train.subject_ids)} | {', '.join(f.test.subject_ids)} "
                   f"| {len(p)} |" for k, (f, p) in enumerate(zip(folds, fold_pairs), 1)]
        readme += ["", "Files: `generalisation_dice.md` / `.csv` (the table), "
                   + ("`paired_comparison.md` / `.csv`, " if comparison is not None else "")
                   + "`per_pair_dice.csv` (with each pair's `fold`), "
                   "`deformation_statistics.csv`, `seconds_per_pair.csv`.", "", note, ""]
        readme += _readme_comparison_and_ants(comparison, comparison_note, ants_info, header,
                                              args)
        if network_lines:
            readme += ["Networks:", *[f"- {line}" for line in network_lines], ""]
        readme += ["Check against the quick preset's own per-pair Dice "
                   "(`results/ureSnet/quick-ixi10/per_pair_dice.csv`, argmax rule; the same "
                   "pairs and volumes, so Rigid must agree exactly and the networks up to "
                   "floating point when `--runs` holds the networks that made it):",
                   *[f"- {line}" for line in consistency], ""]
        readme += ["Skipped:", *[f"- {n_}" for n_ in notes], ""] if notes else []
        readme += ["## Preprocessing", "", folds[0].test.recipe.describe(), ""]
        atomic_write_text(results / "README.md", "\n".join(readme))
        replace_folder(results, out_dir)
    print("\n" + (out_dir / f"{STEM}.md").read_text())
    if comparison is not None:
        print("\n" + (out_dir / f"{COMPARISON_STEM}.md").read_text())
    print("\n".join(["check against results/ureSnet/quick-ixi10:", *consistency]))
    print(f"wall time: {(time.time() - start) / 60:.1f} min; results in {out_dir}")
    return out_dir


def main(argv=None) -> int:
    """Command-line entry: one-line errors; exit 2 for usage, 1 for data problems."""
    from regseg.datasets.io import DataError
    from regseg.fileio import LockedError

    try:
        run(argv)
    except (UsageError, LockedError) as exc:
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, NotADirectoryError, ImportError, OSError) as exc:
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
