"""U-ReSNet experiment: data, training of both networks, evaluation, result tables.

``reproductions/ureSnet/run.py`` is the command-line entry point; everything
here is importable for tests and for users' own scripts.

Produces Table 1 of Estienne et al. (2019) on one set of test pairs:

* **Rigid** — Dice after the centre-of-mass translation alone (the
  preprocessing of §3.5 already moves every brain's centre of mass to the
  volume centre, so this is the Dice of the preprocessed label maps);
* **Christodoulidis et al.** — the registration branch alone (same encoder,
  registration decoder, affine and deformable blocks) trained with eq. 4 + 5
  only;
* **U-ReSNet** — the joint network trained with eq. 7;

plus the segmentation Dice of §4.1 (CeblWM, CeblC, LV), each beside the
published numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Preset:
    """Training/evaluation settings; the ``paper`` values trace to §3.5 and §4."""

    name: str
    dataset: str  # "oasis3" | "ixi10"
    epochs: int
    batch_size: int  # global batch (per-replica batch x replicas)
    learning_rate: float = 1e-3  # §4
    halve_every: int = 15  # §4 "decrease of the learning by half every 15 epochs"
    pairs_per_epoch: int | None = None  # None: one pass over the training subjects (§4)
    test_pairs: str = "all"  # "all" ordered pairs i != j, or "consecutive" i -> i+1
    split_sizes: tuple = (7, 1, 2)
    description: str = ""


PRESETS = {
    "paper": Preset("paper", "oasis3", epochs=80, batch_size=4, split_sizes=(520, 67, 156),
                    test_pairs="consecutive",
                    description="OASIS-3 at 1 mm, crop 160x176x208, batch 4, Adam 1e-3 halved "
                                "every 15 epochs, 80 epochs (paper §3.5, §4)"),
    # The paper halves the learning rate every 15 epochs of 520 pairs, i.e. every
    # 7,800 steps.  The quick preset's 80 epochs of 7 pairs (560 steps) all fall
    # inside the paper's first stage at 1e-3, so it halves every 15 * 520 steps too
    # (never, within the run) instead of every 15 of its tiny epochs.
    "quick": Preset("quick", "ixi10", epochs=80, batch_size=1, pairs_per_epoch=7,
                    halve_every=15 * 520 // 7, split_sizes=(7, 1, 2),
                    description="ixi10 (real IXI T1, 2 mm): 7 train / 1 validation / 2 test "
                                "subjects, 80 epochs (§4) of 7 pairs, batch 1, Adam 1e-3 halved every "
                                "7,800 steps as in §4; <= 20 min on 2 cores"),
    "smoke": Preset("smoke", "ixi10", epochs=1, batch_size=1, pairs_per_epoch=2,
                    split_sizes=(7, 1, 2),
                    description="end-to-end check for the tests: 1 epoch of 2 pairs"),
}

METHOD_KEYS = {"Rigid": None, "Christodoulidis et al.": "registration_only", "U-ReSNet": "ureSnet"}


# --------------------------------------------------------------------------- data
def _banner(text: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n{text}\n{line}\n", flush=True)


def load_splits(dataset: str, data_root, *, preset: Preset, seed: int, labels_json=None,
                allow_download=True):
    """Return ``(Splits, dataset_key)`` for the requested dataset.

    ``dataset`` is ``"auto"`` (the preset's), ``"oasis3"``, ``"ixi10"``,
    ``"folder"`` (with ``labels_json``) or ``"demo"``.  For ``ixi10`` without a
    data root the public sample is downloaded (pinned URLs, sha256) into the
    cache ``$REGSEG_CACHE`` (default ``~/.cache/regseg``); offline, the
    suite falls back to the DEMO data, announced loudly.
    """
    from regseg import datasets as D

    key = preset.dataset if dataset == "auto" else dataset
    train, val, test = preset.split_sizes
    if key == "oasis3":
        if data_root is None:
            raise SystemExit("the paper preset needs your OASIS-3 FreeSurfer outputs: "
                             "--data-root /path/to/oasis3 (see datasets/oasis3.py for the layout)")
        return D.oasis3_splits(data_root, sizes=preset.split_sizes, seed=seed), key
    if key == "folder":
        if data_root is None or labels_json is None:
            raise SystemExit("--dataset folder needs --data-root and --labels-json")
        return D.folder_splits(data_root, labels_json, sizes=preset.split_sizes, seed=seed), key
    if key == "ixi10":
        root = Path(data_root) if data_root is not None else None
        if root is None:
            cache = Path(os.environ.get("REGSEG_CACHE", Path.home() / ".cache" / "regseg"))
            if allow_download:
                try:
                    print(f"no --data-root: fetching the public ixi10 sample into {cache} ...")
                    D.download_ixi10(cache)
                    root = cache
                except Exception as exc:  # offline or server error
                    _banner(f"could not download the ixi10 sample ({exc}).\n"
                            "FALLING BACK TO THE OFFLINE DEMO DATA (MNI152 template deformed by "
                            "random fields).\nTHIS RUN REPRODUCES NOTHING; pass --data-root.")
                    key = "demo"
            else:
                key = "demo"
        if key == "ixi10":
            return D.ixi10_splits(root, train=train, validation=val, test=test), key
    if key == "demo":
        cache = Path(os.environ.get("REGSEG_CACHE", Path.home() / ".cache" / "regseg"))
        _banner("DEMO DATA: the MNI152 template shipped with nilearn, deformed by known random\n"
                "smooth fields. It has tissue labels only; THIS RUN REPRODUCES NOTHING.")
        return D.demo_splits(cache / "demo"), key
    raise SystemExit(f"unknown dataset {dataset!r}")


# --------------------------------------------------------------------------- training
def train_network(segmentation: bool, splits, preset: Preset, *, strategy, run_dir: Path,
                  seed: int, resume: bool, verbose: int, model_options: dict):
    """Train U-ReSNet (``segmentation=True``) or the registration-only network.

    Returns the ``full_model`` (see :func:`model.build_ureSnet`) with trained weights.
    """
    import keras

    from regseg.training.fit import fit, step_decay
    from regseg.training.pairs import pair_dataset, training_pairs, validation_pairs

    from .model import UReSNetConfig, build_ureSnet, losses_and_weights

    sample = splits.train.load(0)
    n_classes = len(splits.train.class_names)
    config = UReSNetConfig(input_shape=tuple(sample.image.shape), segmentation=segmentation,
                           n_classes=n_classes, **model_options)
    keras.utils.set_random_seed(seed)
    replicas = strategy.num_replicas_in_sync
    if preset.batch_size % replicas:
        raise SystemExit(f"global batch {preset.batch_size} is not a multiple of the "
                         f"{replicas} replicas; pass --batch-size")
    with strategy.scope():
        train_model, full_model = build_ureSnet(config)
        loss, weights = losses_and_weights(config)
        train_model.compile(optimizer=keras.optimizers.Adam(preset.learning_rate),
                            loss=loss, loss_weights=weights)
    per_epoch = preset.pairs_per_epoch or len(splits.train)
    pairs = training_pairs(len(splits.train), preset.epochs, seed, per_epoch)
    seg_classes = n_classes if segmentation else None

    def make_train(first_epoch):
        return pair_dataset((splits.train, splits.train), pairs[first_epoch:].reshape(-1, 2),
                            preset.batch_size, seg_classes)

    if len(splits.validation) >= 2:
        vsrc, vpairs = (splits.validation, splits.validation), validation_pairs(len(splits.validation))
    else:  # a single validation subject: registered to the first training subject
        vsrc, vpairs = (splits.validation, splits.train), np.array([[0, 0]])
    vbatch = min(preset.batch_size, len(vpairs))
    validation = pair_dataset(vsrc, vpairs, vbatch, seg_classes) if len(vpairs) >= replicas else None
    steps = per_epoch // preset.batch_size
    fit(train_model, make_train, run_dir, epochs=preset.epochs, steps_per_epoch=steps,
        schedule=step_decay(preset.learning_rate, preset.halve_every),
        validation_data=validation, resume=resume, verbose=verbose)
    return full_model


# --------------------------------------------------------------------------- evaluation
def _test_pairs(n, mode):
    from regseg.training.pairs import all_ordered_pairs

    if mode == "all":
        return all_ordered_pairs(n)
    return np.array([(i, (i + 1) % n) for i in range(n)], dtype=np.int64)


def predict_pair(full_model, moving, reference):
    """Run a full model on one pair of ``(X, Y, Z)`` images; numpy dict, batch removed."""
    out = full_model({"moving": moving[None, ..., None].astype(np.float32),
                      "reference": reference[None, ..., None].astype(np.float32)}, training=False)
    return {k: np.asarray(v)[0] for k, v in out.items()}


def warp_labels(labels, grid, n_labels):
    """Warp a label map with a sampling grid: one-hot, trilinear, argmax (released code).

    Args:
        labels: int ``(X, Y, Z)`` with values ``0..n_labels``.
        grid: ``(X, Y, Z, 3)`` sampling grid, voxels.
    Returns:
        int32 ``(X, Y, Z)``.
    """
    from regseg.layers import warp

    onehot = np.eye(n_labels + 1, dtype=np.float32)[labels]
    warped = np.asarray(warp(onehot[None], grid[None].astype(np.float32)))[0]
    return warped.argmax(-1).astype(np.int32)


def evaluate(models: dict, test, pair_mode: str, nifti_dir: Path | None = None):
    """Per-pair Dice of every method on the same test pairs.

    Args:
        models: ``{"Christodoulidis et al.": full_model, "U-ReSNet": full_model}``
            (either may be missing); "Rigid" is always evaluated.
        test: the test ``SubjectDataset``.
        pair_mode: ``"all"`` or ``"consecutive"``.
        nifti_dir: where to write warped images, labels and displacement
            fields (voxels) of every pair, in the reference's geometry.
    Returns:
        ``(registration, segmentation, deformation, first_pair)`` where
        ``registration`` maps a method to a DataFrame (rows = pairs, columns =
        structures), ``segmentation`` is U-ReSNet's per-pair Dice of the
        moving image's predicted classes, ``deformation`` per-pair Jacobian
        statistics, ``first_pair`` the arrays used for the figures.
    """
    import pandas as pd

    from regseg.datasets.io import save_volume
    from regseg.evaluation import metrics
    from regseg.layers import identity_grid

    names = list(test.structure_names)
    classes = list(test.class_names)
    labels = list(range(1, len(names) + 1))
    samples = [test.load(i) for i in range(len(test))]
    pairs = _test_pairs(len(samples), pair_mode)
    reg = {m: [] for m in ["Rigid", *models]}
    seg_rows, def_rows, index = [], [], []
    first = None
    for i, j in pairs:
        mov, ref = samples[i], samples[j]
        pair_id = f"{mov.subject_id}->{ref.subject_id}"
        index.append(pair_id)
        reg["Rigid"].append(metrics.dice(mov.structures, ref.structures, labels, empty=0.0))
        for method, model in models.items():
            out = predict_pair(model, mov.image, ref.image)
            grid = out["grid"]
            warped = warp_labels(mov.structures, grid, len(names))
            reg[method].append(metrics.dice(warped, ref.structures, labels, empty=0.0))
            jac = metrics.jacobian_determinant(grid)
            def_rows.append({"pair": pair_id, "method": method,
                             "folding fraction": metrics.folding_fraction(jac),
                             "SDlogJ": metrics.sd_log_jacobian(jac)})
            if "moving_seg" in out:
                pred = out["moving_seg"].argmax(-1)
                seg_rows.append(metrics.dice(pred, mov.segmentation,
                                             list(range(1, len(classes) + 1)), empty=0.0))
                if first is None:
                    first = dict(moving=mov, reference=ref, deformed=out["deformed"][..., 0],
                                 grid=grid, seg_pred=pred, warped_structures=warped)
            if nifti_dir is not None:
                folder = Path(nifti_dir) / METHOD_KEYS[method]
                stem = f"{mov.subject_id}_to_{ref.subject_id}"
                disp = grid - np.asarray(identity_grid(grid.shape[:-1]))
                save_volume(folder / f"{stem}_warped.nii.gz", out["deformed"][..., 0], ref.affine)
                save_volume(folder / f"{stem}_warped_structures.nii.gz",
                            warped.astype(np.int16), ref.affine)
                save_volume(folder / f"{stem}_displacement_voxels.nii.gz",
                            disp.astype(np.float32), ref.affine)
    registration = {m: pd.DataFrame(np.array(v), index=index, columns=names)
                    for m, v in reg.items()}
    segmentation = pd.DataFrame(np.array(seg_rows).reshape(-1, len(classes)),
                                index=index[:len(seg_rows)], columns=classes)
    deformation = pd.DataFrame(def_rows)
    return registration, segmentation, deformation, first


def result_tables(registration, segmentation):
    """Build Table 1 and the segmentation table beside the published numbers.

    Rows follow the paper's order; structures or classes of another dataset
    (the demo's tissues) are listed after them without published values.  The
    mean row is "mean of 15" only when the 15 structures of Table 1 were
    evaluated (its published value is computed from Table 1).
    """
    import pandas as pd

    from regseg.evaluation.tables import comparison_table

    from . import published

    names = list(next(iter(registration.values())).columns)
    complete = names == list(published.STRUCTURES)
    mean_row = "mean of 15" if complete else f"mean of {len(names)} (no published value)"
    ours = {}
    for method, df in registration.items():
        summary = pd.DataFrame({"mean": df.mean(axis=0), "std": df.std(axis=0, ddof=0)})
        per_pair_mean = df.mean(axis=1)
        summary.loc[mean_row] = [per_pair_mean.mean(), per_pair_mean.std(ddof=0)]
        ours[method] = summary
    pub = {m: dict(published.TABLE1[m]) for m in published.METHODS}
    if complete:
        for m in pub:
            pub[m]["mean of 15"] = (published.mean_row(m), None)
    rows = [s for s in published.STRUCTURES if s in names] + \
        [s for s in names if s not in published.STRUCTURES] + [mean_row]
    if not complete:
        rows = [s for s in published.STRUCTURES if s not in names] + rows
    table1 = comparison_table(ours, pub, rows)
    classes = list(segmentation.columns)
    seg_ours = {"U-ReSNet": pd.DataFrame({"mean": segmentation.mean(axis=0),
                                          "std": segmentation.std(axis=0, ddof=0)})}
    seg_rows = list(published.SEGMENTATION) + [c for c in classes if c not in published.SEGMENTATION]
    table_seg = comparison_table(seg_ours, {"U-ReSNet": published.SEGMENTATION}, seg_rows)
    return table1, table_seg


# --------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="reproductions/ureSnet/run.py",
        description="Reproduce Table 1 of U-ReSNet (Estienne et al., MICCAI 2019).")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="paper: OASIS-3 as in the paper; quick: ixi10 in <= 20 min on 2 cores "
                        "(default); smoke: seconds, for tests")
    p.add_argument("--dataset", default="auto",
                   choices=["auto", "oasis3", "ixi10", "folder", "demo"],
                   help="auto: the preset's (paper: oasis3, quick/smoke: ixi10)")
    p.add_argument("--data-root", default=None,
                   help="folder holding the dataset (default: $REGSEG_DATA_ROOT); for ixi10 the "
                        "folder containing ixi10/ (e.g. ../shared/data)")
    p.add_argument("--labels-json", default=None, help="label mapping for --dataset folder")
    p.add_argument("--output-dir", default=None,
                   help="training runs, checkpoints, logs, NIfTI (default runs/ureSnet/<preset>-<dataset>)")
    p.add_argument("--results-dir", default=None,
                   help="tables and figures (default results/ureSnet/<preset>-<dataset>)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (override)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted training in --output-dir (or reuse finished runs)")
    p.add_argument("--methods", default="registration_only,ureSnet",
                   help="networks to train, comma-separated (Rigid is always evaluated)")
    p.add_argument("--grid-origin", choices=["zero", "one"], default="zero",
                   help="zero: paper-correct identity; one: released code (one-voxel shift)")
    p.add_argument("--dice-foreground-only", action="store_true",
                   help="soft Dice of eq. 6 over the 3 foreground channels only (released code); "
                        "default: background channel included (see README, fidelity)")
    p.add_argument("--describe", action="store_true",
                   help="print the U-ReSNet summary, ending with 'parameters: N', and exit")
    p.add_argument("--no-download", action="store_true",
                   help="never download; without data fall back to the demo")
    return p.parse_args(argv)


def describe(preset: Preset) -> int:
    """Print the U-ReSNet model summary and ``parameters: N``; return N."""
    from .model import UReSNetConfig, build_ureSnet

    shape = (160, 208, 176) if preset.dataset == "oasis3" else (80, 104, 88)
    _, full = build_ureSnet(UReSNetConfig(input_shape=shape))
    full.summary(line_length=110)
    n = full.count_params()
    print(f"parameters: {n}")
    return n


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    preset = PRESETS[args.preset]
    if args.epochs is not None:
        preset = replace(preset, epochs=args.epochs)
    if args.batch_size is not None:
        preset = replace(preset, batch_size=args.batch_size)
    if args.describe:
        describe(preset)
        return 0

    from regseg.datasets import resolve_data_root
    from regseg.evaluation import figures
    from regseg.evaluation.tables import atomic_write_csv, atomic_write_text, git_commit, write_result_table
    from regseg.training.distribute import describe as describe_strategy
    from regseg.training.distribute import make_strategy

    start = time.time()
    command = "python reproductions/ureSnet/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.data_root is None and os.environ.get("REGSEG_DATA_ROOT"):
        command = f"REGSEG_DATA_ROOT={shlex.quote(os.environ['REGSEG_DATA_ROOT'])} {command}"
    data_root = resolve_data_root(args.data_root)
    splits, key = load_splits(args.dataset, data_root, preset=preset, seed=args.seed,
                              labels_json=args.labels_json, allow_download=not args.no_download)
    dataset_name = splits.train.name
    out_dir = Path(args.output_dir or REPO_ROOT / "runs" / "ureSnet" / f"{preset.name}-{key}")
    results_dir = Path(args.results_dir or REPO_ROOT / "results" / "ureSnet" / f"{preset.name}-{key}")
    strategy = make_strategy()
    print(f"dataset: {dataset_name}\npreset: {preset.name} ({preset.description})\n"
          f"strategy: {describe_strategy(strategy)}\noutput: {out_dir}\nresults: {results_dir}",
          flush=True)
    verbose = 1 if sys.stdout.isatty() else 2
    models = {}
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    timings = {}
    for method, mkey in METHOD_KEYS.items():
        if mkey is None or mkey not in wanted:
            continue
        t0 = time.time()
        print(f"\n=== training {method} ({mkey}) ===", flush=True)
        models[method] = train_network(
            mkey == "ureSnet", splits, preset, strategy=strategy, run_dir=out_dir / mkey,
            seed=args.seed, resume=args.resume, verbose=verbose,
            model_options={"grid_origin": args.grid_origin,
                           "dice_background": not args.dice_foreground_only})
        timings[mkey] = time.time() - t0
    print("\n=== evaluating on the test pairs ===", flush=True)
    registration, segmentation, deformation, first = evaluate(
        models, splits.test, preset.test_pairs, nifti_dir=out_dir / "nifti")
    table1, table_seg = result_tables(registration, segmentation)
    wall = time.time() - start
    header = {
        "dataset": dataset_name,
        "data root": str(data_root) if data_root is not None else "none (downloaded or demo cache)",
        "preset": f"{preset.name}: {preset.description}",
        "commit": git_commit(),
        "seed": args.seed,
        "wall time": f"{wall / 60:.1f} min ({', '.join(f'{k} training {v / 60:.1f} min' for k, v in timings.items())})",
        "command": command,
        "replicas": f"{strategy.num_replicas_in_sync} ({describe_strategy(strategy)})",
        "epochs": preset.epochs,
        "test pairs": f"{len(registration['Rigid'])} ({preset.test_pairs} ordered pairs of "
                      f"{len(splits.test)} test subjects)",
        "subjects": f"train {len(splits.train)}, validation {len(splits.validation)}, "
                    f"test {len(splits.test)}",
    }
    if key == "demo":
        stand_in = " (DEMO DATA: reproduces nothing)"
    else:
        stand_in = "" if splits.train.is_paper_dataset else " (STAND-IN DATASET, not the paper's)"
    note = ("Dice per structure, mean ± std over test pairs. 'published' = Estienne et al. 2019, "
            "Table 1 (OASIS-3). 'mean of 15' = mean over structures (published value computed "
            "from Table 1; the paper prints none).")
    results_dir.mkdir(parents=True, exist_ok=True)
    write_result_table(table1, results_dir, "table1_registration_dice", header,
                       title=f"U-ReSNet Table 1: registration Dice{stand_in}", overwrite=True,
                       notes=note)
    write_result_table(table_seg, results_dir, "segmentation_dice", header,
                       title=f"U-ReSNet §4.1: segmentation Dice{stand_in}", overwrite=True,
                       notes="Dice of the predicted moving segmentation, mean ± std over test pairs; "
                             "published = §4.1 (OASIS-3).")
    per_pair = []
    for method, df in registration.items():
        d = df.copy()
        d.insert(0, "method", method)
        per_pair.append(d)
    import pandas as pd
    atomic_write_csv(pd.concat(per_pair).rename_axis("pair"), results_dir / "per_pair_dice.csv")
    if len(deformation):
        atomic_write_csv(deformation, results_dir / "deformation_statistics.csv")
    if first is not None:
        disp = first["grid"] - np.indices(first["grid"].shape[:-1]).transpose(1, 2, 3, 0)
        figures.registration_figure(first["moving"].image, first["reference"].image,
                                    first["deformed"], disp, results_dir / "fig2_registration.png",
                                    title=f"U-ReSNet, {first['moving'].subject_id} -> "
                                          f"{first['reference'].subject_id} — {dataset_name}")
        figures.segmentation_figure(first["moving"].image, first["reference"].image,
                                    first["deformed"], first["moving"].segmentation,
                                    first["seg_pred"], list(splits.test.class_names),
                                    results_dir / "fig3_segmentation.png",
                                    overlay_on="moving",
                                    title=f"U-ReSNet segmentation — {dataset_name}")
    meta = {k: str(v) for k, v in header.items()}
    meta.update(wall_time_seconds=round(wall, 1), preset_settings=asdict(preset))
    atomic_write_text(results_dir / "run.json", json.dumps(meta, indent=2, default=str) + "\n")
    print("\n" + (results_dir / "table1_registration_dice.md").read_text())
    print(f"wall time: {wall / 60:.1f} min; results in {results_dir}")
    return 0
