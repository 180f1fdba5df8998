"""Generalisation of the ixi10-trained networks to Mindboggle-101, beside classical baselines.

::

    python reproductions/ureSnet/generalisation.py [--runs runs/ureSnet/quick-ixi10]
        [--data-root DIR] [--pairs N|all]
        [--methods com,ants_affine,ants_syn,registration_only,ureSnet]
        [--cache runs/ureSnet/classical-cache | --no-cache] [--threads 1]
        [--normalisation paper|released] [--out results/ureSnet/generalisation-mindboggle101]

The quick preset's networks (trained on the ixi10 sample only, one network per fold) register
ordered pairs of the Mindboggle-101 OASIS-TRT-20 subjects of the data root, preprocessed as their
training data (:func:`~regseg.datasets.mindboggle.mindboggle_ureSnet_recipe`: 2 mm, brain = image
> 0, z-score over the brain, crop 80 x 104 x 88 around the brain's centre of mass), and are
scored on the 14 Table 1 structures Mindboggle labels
(:data:`~regseg.datasets.labels.MINDBOGGLE_TABLE1`; no cerebral white matter), beside

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

Written into ``--out`` (a new folder swapped in whole, :func:`regseg.fileio.replace_folder`):
``generalisation_dice.{md,csv}`` (Dice per structure mean ± std over the pairs, the mean over
the 14 structures, seconds per pair, folded % and SDlogJ; one column per method),
``per_pair_dice.csv``, ``deformation_statistics.csv``, ``seconds_per_pair.csv`` and
``README.md`` (command, commit, wall time, label mapping, what was cached).
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

__all__ = ["METHODS", "CLASSICAL", "NETWORKS", "ring_pairs", "mindboggle_dataset", "find_runs",
           "generalisation_table", "run", "main"]

#: ``--methods`` keys in table order
METHODS = ("com", "ants_affine", "ants_syn", "registration_only", "ureSnet")
#: untrained rows -> table name
CLASSICAL = {"com": "centre-of-mass", "ants_affine": "ANTs Affine", "ants_syn": "ANTs SyN"}
#: trained rows (run folders ``<runs>/fold<k>/<key>``)
NETWORKS = ("registration_only", "ureSnet")
_ANTS = {"ants_affine": "Affine", "ants_syn": "SyN"}
STEM = "generalisation_dice"


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


def _load_network(run_dir: Path, normalisation: str, shape):
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
        raise UsageError(f"{run_dir}: the network takes {expected} voxels, the Mindboggle "
                         f"preprocessing gives {tuple(shape)}")
    spacing = manifest.get("spacing_mm")
    if spacing and not np.allclose(spacing, 2.0):
        raise UsageError(f"{run_dir}: trained at {spacing} mm, the Mindboggle preprocessing "
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


def generalisation_table(evaluation, methods, identity=()):
    """Dice per structure, mean of the structures, seconds, folded % and SDlogJ per method.

    Args:
        evaluation: :class:`~regseg.evaluation.pairs.PairEvaluation`.
        methods: method names (columns) in table order.
        identity: methods that are the identity (folded 0 %, SDlogJ 0; ``evaluate_pairs``
            computes no Jacobian for them).
    Returns:
        DataFrame: rows = structures, ``mean of N``, ``seconds per pair``, ``folded %``,
        ``SDlogJ``; columns ``<method> mean`` and ``<method> std`` over the pairs (population
        std), rendered ``mean ± std`` by :func:`~regseg.evaluation.tables.write_result_table`.
    """
    import pandas as pd

    names = list(next(iter(evaluation.dice.values())).columns)
    mean_row = f"mean of {len(names)}"
    rows = [*names, mean_row, "seconds per pair", "folded %", "SDlogJ"]
    data = {}
    deformation, seconds = evaluation.deformation, evaluation.seconds
    for method in methods:
        dice = evaluation.dice[method]
        values = {name: dice[name].to_numpy(dtype=float) for name in names}
        values[mean_row] = dice.mean(axis=1).to_numpy(dtype=float)
        values["seconds per pair"] = seconds.loc[seconds["method"] == method,
                                                 "seconds"].to_numpy(dtype=float)
        if method in identity:
            values["folded %"] = values["SDlogJ"] = np.zeros(len(dice))
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
        description="Mindboggle-101 generalisation table: the ixi10-trained U-ReSNet networks "
                    "beside centre-of-mass, ANTs Affine and ANTs SyN on the same pairs.")
    p.add_argument("--runs", default=str(REPO_ROOT / "runs" / "ureSnet" / "quick-ixi10"),
                   help="the quick preset's run folder (<runs>/fold<k>/<method>)")
    p.add_argument("--data-root", default=None,
                   help="data root holding mindboggle101/ (default $REGSEG_DATA_ROOT)")
    p.add_argument("--pairs", default=None,
                   help="number of ordered pairs (default 2 per subject: i -> i+1, i+2) or 'all'")
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
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "ureSnet" /
                                        "generalisation-mindboggle101"),
                   help="results folder (replaced whole)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _command(argv) -> str:
    import shlex

    return "python reproductions/ureSnet/generalisation.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def run(argv=None) -> Path:
    """Compute and write the table (see the module docstring); returns the results folder.

    Raises:
        UsageError: bad ``--methods``, ``--pairs`` or ``--threads``, or a run that cannot take
            the Mindboggle data; DataError / FileNotFoundError: data problems (named).
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

    from regseg.datasets import resolve_data_root
    from regseg.evaluation.classical import AntsRegistrar, ants_version
    from regseg.evaluation.pairs import IdentityRegistrar, evaluate_pairs
    from regseg.evaluation.tables import (atomic_write_csv, atomic_write_text, git_commit,
                                          write_result_table)
    from regseg.fileio import RunLock, check_writable, replace_folder
    from regseg.training.runner import cache_dir

    root = resolve_data_root(args.data_root)
    if root is None:
        raise UsageError("no data root: pass --data-root (the folder holding mindboggle101/) or "
                         "set $REGSEG_DATA_ROOT")
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

    registrars, wrappers, notes = {}, {}, []
    ants_info = {}
    cache = None if args.no_cache else Path(args.cache)
    for key in methods:
        if key == "com":
            registrars[CLASSICAL[key]] = IdentityRegistrar()
        elif key in _ANTS:
            reg = AntsRegistrar(_ANTS[key], threads=args.threads, cache_dir=cache)
            ants_info[CLASSICAL[key]] = reg
            wrappers[CLASSICAL[key]] = registrars[CLASSICAL[key]] = _ReportedSeconds(reg)
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
        table = generalisation_table(evaluation, list(registrars),
                                     identity=[CLASSICAL["com"]])
        wall = time.time() - start
        commit = git_commit()
        command = _command(argv)
        cached = {name: f"{reg.hits} read from the cache, {reg.misses} computed"
                  for name, reg in ants_info.items()}
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
            header["ANTs"] = (f"antspyx {ants_version()}, default parameters from the identity, "
                              f"{args.threads} ITK thread(s), seed 1; " +
                              "; ".join(f"{k}: {v}" for k, v in cached.items()))
        note = ("Dice per structure (14 Table 1 structures; Mindboggle has no cerebral white "
                "matter), mean ± std over the ordered pairs; labels warped by the argmax of the "
                "trilinearly warped one-hot maps. 'seconds per pair': wall seconds of one "
                "registration on this machine's CPU (ANTs: the original registration when read "
                "from the cache; networks: one forward pass after a warm-up call). 'folded %' "
                "(det J ≤ 0) and SDlogJ inside the fixed image's brain mask. Networks: trained "
                "on ixi10 only (quick preset), one row per cross-validation fold.")
        results = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(results, ignore_errors=True)
        results.mkdir(parents=True)
        title = f"U-ReSNet generalisation: registration Dice — {dataset.name}"
        write_result_table(table, results, STEM, header, title=title, overwrite=True,
                           notes=note + ("\n\nSkipped: " + "; ".join(notes) if notes else ""))
        atomic_write_csv(evaluation.per_pair_dice(), results / "per_pair_dice.csv")
        if len(evaluation.deformation):
            atomic_write_csv(evaluation.deformation, results / "deformation_statistics.csv")
        atomic_write_csv(evaluation.seconds, results / "seconds_per_pair.csv")
        readme = [f"# {title}", "",
                  f"- command: `{command}`", f"- commit: {commit}",
                  f"- wall time: {wall / 60:.1f} min ({wall:.0f} s)",
                  f"- data root: {root}", f"- pairs: {header['pairs']}: "
                  + ", ".join(evaluation.pairs), ""]
        readme += ["Files: `generalisation_dice.md` / `.csv` (the table), `per_pair_dice.csv`, "
                   "`deformation_statistics.csv`, `seconds_per_pair.csv`.", "",
                   note, ""]
        if ants_info:
            readme += [f"ANTs: {header['ANTs']}. Cache: "
                       f"{cache if cache is not None else 'none'} (one entry per pair, keyed by "
                       f"the preprocessed images' content, the method and its parameters).", ""]
        if notes:
            readme += ["Skipped:", *[f"- {n_}" for n_ in notes], ""]
        readme += ["## Preprocessing", "", dataset.recipe.describe(), "",
                   "## Label mapping (Table 1 structures)", "", _mapping_markdown(),
                   "Mindboggle's subcortical labels are the Neuromorphometrics labels renumbered "
                   "to FreeSurfer ids (the vermis as 630–632); the inferior lateral ventricles "
                   "(5/44) are not part of LV, as DLMUSE 49/50 are not; see "
                   "`regseg.datasets.labels` for every choice.", ""]
        atomic_write_text(results / "README.md", "\n".join(readme))
        replace_folder(results, out_dir)
    print("\n" + (out_dir / f"{STEM}.md").read_text())
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
