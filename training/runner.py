"""The shared experiment runner: one command line and one flow for every reproduction.

A paper folder supplies a :class:`Reproduction` (its presets, datasets, methods, published
numbers and table layout); ``reproductions/<paper>/run.py`` is then two lines::

    from regseg.reproductions.<paper>.reproduction import REPRODUCTION
    sys.exit(REPRODUCTION.main())

The flow (:func:`run`)::

    arguments -> preset -> data (download / demo fallback) -> MirroredStrategy
      -> for each method: Method.fit(ctx, run folder) -> a registrar (training with resume)
      -> Reproduction.evaluate -> evaluate_pairs on the test pairs
      -> Reproduction.report -> tables beside the published numbers, figures
      -> per-pair CSVs, run.json (provenance header in every table)

Library functions raise exceptions; only :func:`main` turns them into an exit code and a
one-line message (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = ["IdentityMethod", "ixi10_dataset", "oasis3_dataset", "folder_dataset", "demo_dataset",
           "Preset", "DatasetSpec", "Method", "KerasMethod", "TrainingPlan", "Table",
           "Reproduction", "RunContext", "UsageError", "run", "main", "RUN_MANIFEST",
           "read_run_manifest", "random_pairs_plan"]

_SOURCE_ROOT = Path(__file__).resolve().parents[1]
#: Default parent of ``runs/`` and ``results/``: the source checkout when running from one (editable
#: install), else the current folder (a regular install lives in site-packages).
REPO_ROOT = _SOURCE_ROOT if (_SOURCE_ROOT / "pyproject.toml").is_file() else Path.cwd()
#: File in every trained method's run folder: what ``python -m regseg register`` needs.
RUN_MANIFEST = "regseg_run.json"


class UsageError(ValueError):
    """A command-line value that cannot work (exit code 2)."""


@dataclass(frozen=True)
class Preset:
    """Settings of one preset; a paper subclasses it to add its own (cite the paper's values).

    Attributes:
        name: preset name (``paper``, ``quick``, ``smoke``, ...).
        dataset: default dataset key (one of the reproduction's ``datasets``).
        epochs: training epochs.
        batch_size: GLOBAL batch (per-replica batch x replicas).
        description: one line for reports.
        precision: ``float32`` (the papers') or ``mixed_bfloat16``
            (:mod:`regseg.training.performance`; ``--precision`` overrides it).
    """

    name: str
    dataset: str
    epochs: int
    batch_size: int
    description: str = ""
    precision: str = "float32"


@dataclass(frozen=True)
class DatasetSpec:
    """How a reproduction gets one dataset.

    Attributes:
        key: ``--dataset`` value.
        load: ``f(data_root or None, ctx) -> Splits``.
        download: ``f(cache folder) -> data root`` fetching a public sample when no data root
            is given (network errors fall back to the demo dataset), or ``None``.
        needs_root: without ``download``, whether a data root is required.
        missing_root: message when a required data root is missing.
    """

    key: str
    load: Callable
    download: Callable | None = None
    needs_root: bool = True
    missing_root: str = ""


@dataclass(frozen=True)
class Table:
    """A result table to write: ``<stem>.csv`` and ``<stem>.md``."""

    stem: str
    frame: object
    title: str
    notes: str = ""


@dataclass
class RunContext:
    """Everything a method or report needs about the current run."""

    reproduction: "Reproduction"
    args: argparse.Namespace
    preset: Preset
    splits: object = None
    dataset_key: str = ""
    data_root: Path | None = None
    strategy: object = None
    out_dir: Path = Path(".")
    results_dir: Path = Path(".")
    command: str = ""
    verbose: int = 2
    timings: dict = field(default_factory=dict)
    changes: dict = field(default_factory=dict)
    start: float = field(default_factory=time.time)
    #: the cross-validation fold being trained (:func:`regseg.training.folds.fit_folds`), else None
    fold: object = None
    #: seconds :func:`validate_data` spent reading and preprocessing every subject
    data_check_seconds: float = 0.0

    @property
    def seed(self) -> int:
        """The run's seed (``--seed``)."""
        return int(self.args.seed)

    @property
    def dataset_name(self) -> str:
        """The dataset's name for titles."""
        return self.splits.name

    @property
    def title_suffix(self) -> str:
        """`` (DEMO DATA: reproduces nothing)``, `` (STAND-IN DATASET, not the paper's)`` or ``""``."""
        if self.dataset_key == "demo":
            return " (DEMO DATA: reproduces nothing)"
        return "" if self.splits.is_paper_dataset else " (STAND-IN DATASET, not the paper's)"


@dataclass
class TrainingPlan:
    """What :meth:`KerasMethod.fit` hands to :func:`regseg.training.fit.fit`."""

    make_train: Callable
    steps_per_epoch: int
    epochs: int
    schedule: Callable
    validation: object = None
    #: more Keras callbacks for ``fit`` (e.g. the diffeomorphic U-Net's ``EarlyStopping``, §4.5)
    extra_callbacks: tuple = ()


@dataclass
class TrainingSetup:
    """:meth:`Method.training_setup`: a method's training step as :meth:`Method.fit` runs it.

    Attributes:
        model: the compiled Keras training model; ``model.make_train_function()`` then
            ``model.train_function(iter([element]))`` runs one step of ``fit`` on one element
            of ``dataset``, as ``fit`` receives it (``train_on_batch`` would wrap it as
            ``(x, y, sample_weight)``, which the alternating models do not take).
        dataset: ``tf.data`` of the training batches from the first epoch (global batches).
        batch_size: pairs (or samples) per global batch.
        description: what is trained, e.g. ``"fold 1 of 2"`` or ``"joint stage"``.
    """

    model: object
    dataset: object
    batch_size: int
    description: str = ""


class Method:
    """One row of a paper's tables: a registration method, trained or not.

    Attributes:
        key: the one name of the method in commands, folders and CSV files.
        label: the method's name in the paper's tables (e.g. "Christodoulidis et al.").
        trained: whether it is trained (``--methods`` selects among trained methods; the others
            are always evaluated).
    """

    key: str = ""
    label: str = ""
    trained: bool = False

    def fit(self, ctx: RunContext, run_dir: Path):
        """Train (or load) the method and return its registrar."""
        raise NotImplementedError

    def load(self, run_dir: Path, manifest: dict):
        """A registrar from a finished run folder (``python -m regseg register``)."""
        raise NotImplementedError(f"{self.key} has no trained model to load")

    def training_setup(self, ctx: RunContext) -> "TrainingSetup":
        """What :meth:`fit` trains, built but not trained: the compiled training model (inside
        ``ctx.strategy``, with the run's XLA setting) and its training batches, of the first
        fold where :meth:`fit` trains one network per fold. Nothing is written.

        ``benchmarks/run.py`` times the input pipeline and the training step from it.

        Raises:
            NotImplementedError: a method without a trained model.
        """
        raise NotImplementedError(f"{self.key} trains no model")


class IdentityMethod(Method):
    """An untrained baseline: the identity after preprocessing (a table's "Initial" row; for
    U-ReSNet, "Rigid", since §3.5's preprocessing already aligns the centres of mass)."""

    def __init__(self, key: str, label: str):
        self.key, self.label = key, label

    def fit(self, ctx: RunContext, run_dir: Path):
        from regseg.evaluation.pairs import IdentityRegistrar
        return IdentityRegistrar()


class KerasMethod(Method):
    """A method trained with Keras ``fit`` under the run's strategy, with checkpoints and resume.

    Subclasses implement :meth:`model_config`, :meth:`build`, :meth:`compile`,
    :meth:`training_mapping`, :meth:`schedule` and :meth:`registrar`; :meth:`training_plan`
    defaults to random pairs per epoch (:func:`random_pairs_plan`).
    """

    trained = True

    def model_config(self, ctx: RunContext) -> dict:
        """JSON-serialisable settings that rebuild the model (stored in the run folder)."""
        raise NotImplementedError

    def build(self, config: dict):
        """``(train_model, predict_model)`` sharing weights (called inside the strategy scope)."""
        raise NotImplementedError

    def compile(self, train_model, config: dict, ctx: RunContext) -> None:
        """Compile ``train_model`` (optimiser, losses) inside the strategy scope."""
        raise NotImplementedError

    def training_mapping(self, config: dict) -> Callable:
        """``f(moving Sample, fixed Sample) -> (inputs, targets)`` numpy dicts."""
        raise NotImplementedError

    def schedule(self, ctx: RunContext) -> Callable:
        """``f(epoch) -> learning rate``."""
        raise NotImplementedError

    def registrar(self, predict_model, config: dict):
        """The registrar of a trained model."""
        raise NotImplementedError

    def training_plan(self, ctx: RunContext, config: dict) -> TrainingPlan:
        """Default: :func:`random_pairs_plan`."""
        return random_pairs_plan(ctx, self.training_mapping(config), self.schedule(ctx))

    def training_folds(self, ctx: RunContext):
        """The folds :meth:`fit` trains one network each on (:func:`~regseg.training.folds.fit_folds`);
        default ``ctx.splits.folds``, None or empty for a single split."""
        return getattr(ctx.splits, "folds", None)

    def training_setup(self, ctx: RunContext) -> TrainingSetup:
        """See :meth:`Method.training_setup` (the first fold's network and batches)."""
        from regseg.training.folds import fold_context
        from regseg.training.performance import apply_to_model

        import keras

        folds = self.training_folds(ctx)
        with fold_context(ctx, folds[0] if folds else None):
            config = self.model_config(ctx)
            keras.utils.set_random_seed(ctx.seed)  # as fit: the same initial weights
            with ctx.strategy.scope():
                train_model, _ = self.build(config)
                self.compile(train_model, config, ctx)
            apply_to_model(train_model)
            plan = self.training_plan(ctx, config)
            dataset = plan.make_train(0)
        return TrainingSetup(train_model, dataset, int(ctx.preset.batch_size),
                             f"fold 1 of {len(folds)}" if folds else "")

    def fit(self, ctx: RunContext, run_dir: Path):
        import keras

        from regseg.training.fit import fit

        config = self.model_config(ctx)
        keras.utils.set_random_seed(ctx.seed)
        with ctx.strategy.scope():
            train_model, predict_model = self.build(config)
            self.compile(train_model, config, ctx)
        plan = self.training_plan(ctx, config)
        result = fit(train_model, plan.make_train, run_dir, epochs=plan.epochs,
                     steps_per_epoch=plan.steps_per_epoch, schedule=plan.schedule,
                     validation_data=plan.validation, resume=ctx.args.resume,
                     verbose=ctx.verbose, settings=run_settings(ctx, self, config, plan),
                     extra_callbacks=tuple(plan.extra_callbacks),
                     allow_changes=ctx.args.resume_with_changes)
        if result["changes"]:
            ctx.changes[self.key] = result["changes"]
        from regseg.training.distribute import worker_dir
        write_run_manifest(worker_dir(run_dir, ctx.strategy), ctx, self, config)
        return self.registrar(predict_model, config)

    def load(self, run_dir: Path, manifest: dict):
        from regseg.training.fit import FINAL_WEIGHTS

        from regseg.training.performance import built_with_precision

        config = manifest["model_config"]
        # the precision it was trained and evaluated with (float32 for runs before issue 11)
        with built_with_precision(manifest.get("precision", "float32")):
            train_model, predict_model = self.build(config)
        weights = Path(run_dir) / FINAL_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: no trained model in this run folder (training "
                                    f"did not finish; resume it with --resume)")
        train_model.load_weights(weights)
        return self.registrar(predict_model, config)


def random_pairs_plan(ctx: RunContext, mapping: Callable, schedule: Callable) -> TrainingPlan:
    """Random (moving, fixed) training pairs per epoch, fixed validation pairs (U-ReSNet §4).

    Each epoch pairs two permutations of the training subjects
    (:func:`~regseg.training.pairs.training_pairs`, ``preset.pairs_per_epoch`` pairs, default one
    pass); validation pairs are ``i -> i+1`` (a single validation subject is paired with the first
    training subject; no validation subject, as in a cross-validation fold: no validation).
    """
    from regseg.training.pairs import pair_dataset, training_pairs, validation_pairs

    preset, splits = ctx.preset, ctx.splits
    per_epoch = getattr(preset, "pairs_per_epoch", None) or len(splits.train)
    if preset.batch_size > per_epoch:
        raise UsageError(f"--batch-size {preset.batch_size} is larger than the {per_epoch} "
                         f"training pairs of an epoch (no full batch to train on)")
    pairs = training_pairs(len(splits.train), preset.epochs, ctx.seed, per_epoch)

    def make_train(first_epoch):
        return pair_dataset((splits.train, splits.train), pairs[first_epoch:].reshape(-1, 2),
                            preset.batch_size, mapping)

    if len(splits.validation) >= 2:
        vsrc, vpairs = (splits.validation, splits.validation), validation_pairs(len(splits.validation))
    else:
        vsrc, vpairs = (splits.validation, splits.train), np.array([[0, 0]])
    replicas = ctx.strategy.num_replicas_in_sync
    validation = (pair_dataset(vsrc, vpairs, min(preset.batch_size, len(vpairs)), mapping)
                  if len(splits.validation) and len(vpairs) >= replicas else None)
    return TrainingPlan(make_train, per_epoch // preset.batch_size, preset.epochs, schedule,
                        validation)


def run_settings(ctx: RunContext, method: Method, config: dict, plan: TrainingPlan) -> dict:
    """The settings a resumed run must share with the run it continues (``settings.json``)."""
    preset = {k: v for k, v in asdict(ctx.preset).items() if k != "description"}
    return {"method": method.key, "model_config": config, "preset": preset, "seed": ctx.seed,
            "epochs": plan.epochs, "steps_per_epoch": plan.steps_per_epoch,
            "dataset": ctx.dataset_key, "dataset_name": ctx.dataset_name,
            "subjects": {"train": ctx.splits.train.subject_ids,
                         "validation": ctx.splits.validation.subject_ids},
            "recipe": ctx.splits.recipe.to_dict()}


def write_run_manifest(run_dir: Path, ctx: RunContext, method: Method, config: dict) -> Path:
    """Write ``regseg_run.json``: reproduction, method, model config, preprocessing recipe."""
    from regseg.evaluation.tables import atomic_write_text, git_commit

    manifest = {
        "reproduction": ctx.reproduction.module,
        "method": method.key,
        "label": method.label,
        "model_config": config,
        "recipe": ctx.splits.recipe.to_dict(),
        "label_names": ctx.splits.train.label_names,
        "spacing_mm": [float(v) for v in ctx.splits.train.load(0).spacing],
        "dataset": ctx.dataset_name,
        "preset": ctx.preset.name,
        "precision": ctx.preset.precision,
        "jit_compile": ctx.args.jit_compile,
        "seed": ctx.seed,
        "commit": git_commit(),
    }
    return atomic_write_text(Path(run_dir) / RUN_MANIFEST,
                             json.dumps(manifest, indent=2, default=str) + "\n")


def read_run_manifest(run_dir) -> dict:
    """Read a run folder's ``regseg_run.json``.

    Raises:
        FileNotFoundError: not a folder, or no manifest (the message names the path).
        ValueError: the manifest is not valid JSON (named).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    path = run_dir / RUN_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a trained run folder (no {RUN_MANIFEST}); pass "
                                f"the folder of one method, e.g. runs/ureSnet/quick-ixi10/ureSnet")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


class Reproduction:
    """What a paper folder supplies to the runner.

    Attributes:
        key: folder name under ``runs/`` and ``results/`` (e.g. ``"ureSnet"``).
        module: import path of the module holding the instance (for run manifests).
        title: the paper, for ``--help`` and reports.
        presets: ``{name: Preset}``; ``default_preset`` is used without ``--preset``.
        datasets: ``{key: DatasetSpec}``; ``"demo"`` (if present) is the offline fallback.
    """

    key: str = ""
    module: str = ""
    title: str = ""
    presets: Mapping[str, Preset] = {}
    default_preset: str = "quick"
    datasets: Mapping[str, DatasetSpec] = {}

    # -- what a paper implements --------------------------------------------------------------
    def methods(self) -> dict[str, Method]:
        """``{key: Method}`` in table order (trained methods and baselines)."""
        raise NotImplementedError

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the paper's own command-line options."""

    def describe(self, preset: Preset, args) -> int:
        """Print the model summary ending with ``parameters: N``; return N."""
        raise NotImplementedError

    def evaluate(self, ctx: RunContext, registrars: dict):
        """Evaluate ``{method key: registrar}`` on the test pairs (a :class:`PairEvaluation`)."""
        raise NotImplementedError

    def report(self, ctx: RunContext, evaluation) -> list[Table]:
        """The paper's tables (ours beside the published numbers)."""
        return []

    def figures(self, ctx: RunContext, evaluation, results_dir: Path) -> None:
        """Write the paper's figures into ``results_dir``."""

    def header(self, ctx: RunContext, evaluation) -> dict:
        """Extra provenance lines for the tables' header."""
        return {}

    # -- shared --------------------------------------------------------------------------------
    def parser(self) -> argparse.ArgumentParser:
        """The common command line plus :meth:`add_arguments`."""
        trained = [k for k, m in self.methods().items() if m.trained]
        p = argparse.ArgumentParser(prog=f"reproductions/{self.key}/run.py",
                                    description=f"Reproduce {self.title}.")
        p.add_argument("--preset", choices=sorted(self.presets), default=self.default_preset,
                       help=f"default {self.default_preset}; see the reproduction's README")
        p.add_argument("--dataset", default="auto", choices=["auto", *sorted(self.datasets)],
                       help="auto: the preset's dataset")
        p.add_argument("--data-root", default=None,
                       help="folder holding the dataset (default: $REGSEG_DATA_ROOT)")
        p.add_argument("--labels-json", default=None, help="label mapping for --dataset folder")
        p.add_argument("--output-dir", default=None,
                       help=f"training runs, checkpoints, logs, NIfTI (default runs/{self.key}/"
                            f"<preset>-<dataset>)")
        p.add_argument("--results-dir", default=None,
                       help=f"tables and figures (default results/{self.key}/<preset>-<dataset>)")
        p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
        p.add_argument("--batch-size", type=int, default=None, help="global batch (override)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--resume", action="store_true",
                       help="continue interrupted training in --output-dir (or reuse finished runs)")
        p.add_argument("--resume-with-changes", action="store_true",
                       help="with --resume: accept settings other than the run's (recorded in "
                            "settings.json and in the tables' header); without it --resume "
                            "refuses them, naming each difference")
        p.add_argument("--methods", default=",".join(trained),
                       help=f"trained methods, comma-separated, among {', '.join(trained)} "
                            f"(the untrained baselines are always evaluated)")
        p.add_argument("--describe", action="store_true",
                       help="print the model summary, ending with 'parameters: N', and exit")
        p.add_argument("--no-download", action="store_true",
                       help="never download; without data fall back to the demo")
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
        p.add_argument("--deterministic", action="store_true",
                       help="TensorFlow op determinism with the seed: same seed, same machine, "
                            "bit-identical results (slower; see the README)")
        p.add_argument("--no-cache", action="store_true",
                       help="do not keep preprocessed volumes on disk ($REGSEG_CACHE/preprocessed)")
        p.add_argument("--spacing-range", nargs=2, type=float, metavar=("LO", "HI"),
                       default=None, help="accepted voxel sizes in mm (default 0.1 10)")
        p.add_argument("--precision", default=None, choices=["float32", "mixed_bfloat16"],
                       help="numerical precision (default: the preset's, float32 for the papers' "
                            "presets); mixed_bfloat16 runs the convolutions in bfloat16 and the "
                            "warps and losses in float32")
        p.add_argument("--jit-compile", default="auto", choices=["auto", "layers", "on", "off"],
                       help="XLA: auto = the warp and cost volume compiled in graphs, the step "
                            "as Keras decides (never under tf.distribute); layers = those layers "
                            "always; on = the whole training step (try it on GPUs; slow on "
                            "CPUs); off = never")
        p.add_argument("--cluster", choices=["auto", "none", "slurm", "tf_config"], default="auto",
                       help="several machines (docs/multi_machine.md): tf_config (the cluster of "
                            "$TF_CONFIG), slurm (the tasks of this srun step), none (this machine "
                            "only); auto: $REGSEG_CLUSTER, else tf_config when TF_CONFIG lists "
                            "several workers, else none")
        self.add_arguments(p)
        return p

    def run(self, argv=None) -> RunContext:
        """:func:`run` for this reproduction."""
        return run(self, argv)

    def main(self, argv=None) -> int:
        """:func:`main` for this reproduction."""
        return main(self, argv)


# ------------------------------------------------------------------------------- data
def _split_sizes(ctx) -> tuple:
    return tuple(getattr(ctx.preset, "split_sizes", (7, 1, 2)))


def ixi10_dataset(recipe=None) -> DatasetSpec:
    """The ixi10 sample (real IXI T1, 2 mm): ``<root>/ixi10``, else downloaded (pinned, sha256).

    Split by ``preset.split_sizes`` (train, validation, test); ``recipe`` default: U-ReSNet §3.5.
    """
    def load(root, ctx):
        from regseg.datasets import ixi10_splits
        train, val, test = _split_sizes(ctx)
        return ixi10_splits(root, train=train, validation=val, test=test, recipe=recipe)

    def download(cache):
        from regseg.datasets import download_ixi10
        download_ixi10(cache)
        return cache

    return DatasetSpec("ixi10", load, download=download)


def oasis3_dataset(recipe=None) -> DatasetSpec:
    """The user's OASIS-3 FreeSurfer outputs (needs ``--data-root``), split by subject."""
    def load(root, ctx):
        from regseg.datasets import oasis3_splits
        return oasis3_splits(root, sizes=_split_sizes(ctx), seed=ctx.seed, recipe=recipe)

    return DatasetSpec("oasis3", load, missing_root="this preset needs your OASIS-3 FreeSurfer "
                       "outputs: --data-root /path/to/oasis3 (see datasets/oasis3.py for the layout)")


def folder_dataset() -> DatasetSpec:
    """Any ``images/`` + ``labels/`` folder with ``--labels-json`` (U-ReSNet §3.5 recipe)."""
    def load(root, ctx):
        from regseg.datasets import folder_splits
        if ctx.args.labels_json is None:
            raise UsageError("--dataset folder needs --data-root and --labels-json")
        return folder_splits(root, ctx.args.labels_json, sizes=_split_sizes(ctx), seed=ctx.seed)

    return DatasetSpec("folder", load,
                       missing_root="--dataset folder needs --data-root and --labels-json")


def demo_dataset(recipe=None) -> DatasetSpec:
    """The offline demo (MNI152 deformed by random fields, built in the cache); reproduces nothing."""
    def load(root, ctx):
        from regseg.datasets import demo_splits
        return demo_splits(cache_dir() / "demo", recipe=recipe)

    return DatasetSpec("demo", load, needs_root=False)


def _banner(text: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n{text}\n{line}\n", flush=True)


def cache_dir() -> Path:
    """``$REGSEG_CACHE`` or ``~/.cache/regseg``: downloads and the demo dataset."""
    return Path(os.environ.get("REGSEG_CACHE", Path.home() / ".cache" / "regseg"))


def resolve_data(repro: Reproduction, ctx: RunContext) -> None:
    """Fill ``ctx.splits``, ``ctx.dataset_key`` and ``ctx.data_root``.

    Without a data root, a dataset with a downloader fetches its public sample; only a failed
    download (:class:`~regseg.datasets.download.DownloadError`: network, HTTP or checksum) or
    ``--no-download`` falls back to the demo dataset, announced loudly. Any other error is raised.

    Raises:
        UsageError: a dataset that needs ``--data-root`` without one, or an unknown dataset.
    """
    from regseg.datasets import resolve_data_root
    from regseg.datasets.download import DownloadError

    args = ctx.args
    key = ctx.preset.dataset if args.dataset == "auto" else args.dataset
    if key not in repro.datasets:
        raise UsageError(f"unknown dataset {key!r}; known: {', '.join(sorted(repro.datasets))}")
    root = resolve_data_root(args.data_root)
    spec = repro.datasets[key]
    if root is None and key != "demo":
        if spec.download is not None:
            if args.no_download:
                key = "demo"
            else:
                try:
                    print(f"no --data-root: fetching the public {key} sample into {cache_dir()} ...")
                    root = spec.download(cache_dir())
                except DownloadError as exc:
                    _banner(f"could not download the {key} sample ({exc}).\nFALLING BACK TO THE "
                            f"OFFLINE DEMO DATA.\nTHIS RUN REPRODUCES NOTHING; pass --data-root.")
                    key = "demo"
            if key == "demo" and "demo" not in repro.datasets:
                raise UsageError(f"--dataset {spec.key} needs --data-root (no demo fallback)")
        elif spec.needs_root:
            raise UsageError(spec.missing_root or f"--dataset {key} needs --data-root")
    if key == "demo":
        _banner("DEMO DATA: the MNI152 template shipped with nilearn, deformed by known random\n"
                "smooth fields. THIS RUN REPRODUCES NOTHING.")
    ctx.dataset_key, ctx.data_root = key, root
    ctx.splits = repro.datasets[key].load(root, ctx)


def enable_determinism(seed: int) -> None:
    """Seeds, TensorFlow op determinism and no oneDNN custom ops (``--deterministic``).

    oneDNN's CPU kernels were measured to give two different tables in five same-seed runs of
    the U-ReSNet smoke preset (3 epochs) even with op determinism; without them the tables
    agreed but the weights still differed by ~1e-8, so CPU ops also run on one thread (intra-
    and inter-op). ``TF_ENABLE_ONEDNN_OPTS`` only acts before TensorFlow is imported, so the
    guarantee holds for a fresh process (``run.py --deterministic``); a warning says when
    TensorFlow was imported earlier.
    """
    import warnings

    if "tensorflow" in sys.modules and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
        warnings.warn("--deterministic: TensorFlow was imported before oneDNN could be turned "
                      "off (TF_ENABLE_ONEDNN_OPTS=0); results may differ in the last bits",
                      stacklevel=2)
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    # Multi-threaded CPU kernels (e.g. the 3-D convolutions' weight gradients) still summed in a
    # thread-dependent order: weights differed by ~1e-8 between same-seed runs. One thread each.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def validate_data(ctx: RunContext) -> int:
    """Read and preprocess every subject of every split once, before any training.

    A bad file then stops the run at once with its name, never inside the input pipeline; the
    samples land in the preprocessing cache on the way.

    Raises:
        DataError: the first subject that cannot be used (named).
    """
    tty = sys.stdout.isatty()
    start = time.time()

    def progress(done, total, subject_id):
        if tty:
            print(f"\rchecking the data: {done}/{total} subjects ({subject_id})", end="",
                  flush=True)

    n = ctx.splits.validate(progress)
    print(("\r" if tty else "") + f"checked the data: {n} subjects read and preprocessed in "
          f"{time.time() - start:.1f} s", flush=True)
    return n


# ------------------------------------------------------------------------------- run
def _command(repro: Reproduction, argv) -> str:
    args = argv if argv is not None else sys.argv[1:]
    command = f"python reproductions/{repro.key}/run.py " + " ".join(shlex.quote(a) for a in args)
    if "--data-root" not in args and os.environ.get("REGSEG_DATA_ROOT"):
        command = f"REGSEG_DATA_ROOT={shlex.quote(os.environ['REGSEG_DATA_ROOT'])} {command}"
    return command.strip()


def _check_settings(repro: Reproduction, args, preset: Preset) -> list[str]:
    if args.resume_with_changes and not args.resume:
        raise UsageError("--resume-with-changes needs --resume")
    if preset.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {preset.epochs}")
    if preset.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {preset.batch_size}")
    methods = repro.methods()
    trained = [k for k, m in methods.items() if m.trained]
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in trained]
    if unknown or not wanted:
        raise UsageError(f"--methods: unknown or empty {unknown or wanted}; choose among "
                         f"{', '.join(trained)}")
    return wanted


def prepare(repro: Reproduction, argv=None) -> tuple[RunContext, list[str]]:
    """The first half of :func:`run`: parse ``argv``, set precision and XLA, resolve, load and
    check the data, make the strategy; nothing is written and no run folder is locked.

    ``benchmarks/run.py`` measures a reproduction's input pipeline and training step from here
    (:meth:`Method.training_setup`).

    Returns:
        ``(ctx, wanted)``: the :class:`RunContext` (``ctx.strategy`` set; ``ctx.out_dir`` and
        ``ctx.results_dir`` the default folders) and the trained methods ``--methods`` selects.
        With ``--describe`` the model summary is printed and ``wanted`` is empty.
    Raises:
        UsageError: bad command-line values; DataError / FileNotFoundError: data problems
        (named).
    """
    args = repro.parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    preset = repro.presets[args.preset]
    if args.epochs is not None:
        preset = replace(preset, epochs=args.epochs)
    if args.batch_size is not None:
        preset = replace(preset, batch_size=args.batch_size)
    if args.precision is not None:
        preset = replace(preset, precision=args.precision)
    ctx = RunContext(repro, args, preset, command=_command(repro, argv),
                     verbose=1 if sys.stdout.isatty() else 2)
    if args.describe:
        repro.describe(preset, args)
        return ctx, []
    wanted = _check_settings(repro, args, preset)
    if args.spacing_range is not None:
        import regseg.datasets.io as io_module
        lo, hi = args.spacing_range
        if not 0 < lo < hi:
            raise UsageError(f"--spacing-range: need 0 < LO < HI, got {lo} {hi}")
        io_module.SPACING_RANGE_MM = (lo, hi)
    if args.deterministic:
        enable_determinism(ctx.seed)
    from regseg.training.performance import configure
    configure(preset.precision, args.jit_compile)

    from regseg.training.distribute import describe as describe_strategy
    from regseg.training.distribute import make_strategy

    resolve_data(repro, ctx)
    if not args.no_cache:
        ctx.splits.use_disk_cache(cache_dir() / "preprocessed")
    start = time.time()
    validate_data(ctx)
    ctx.data_check_seconds = time.time() - start
    tag = f"{preset.name}-{ctx.dataset_key}"
    ctx.out_dir = Path(args.output_dir or REPO_ROOT / "runs" / repro.key / tag)
    ctx.results_dir = Path(args.results_dir or REPO_ROOT / "results" / repro.key / tag)
    ctx.strategy = make_strategy(cluster=args.cluster)
    replicas = ctx.strategy.num_replicas_in_sync
    if preset.batch_size % replicas:
        raise UsageError(f"global batch {preset.batch_size} is not a multiple of the {replicas} "
                         f"replicas; pass --batch-size")
    print(f"dataset: {ctx.dataset_name}\npreset: {preset.name} ({preset.description})\n"
          f"strategy: {describe_strategy(ctx.strategy)}\noutput: {ctx.out_dir}\n"
          f"results: {ctx.results_dir}", flush=True)
    return ctx, wanted


def run(repro: Reproduction, argv=None) -> RunContext:
    """Run a reproduction end to end (see the module docstring); raises on any error.

    Returns:
        The :class:`RunContext` (its ``results_dir`` holds the tables).
    Raises:
        UsageError: bad command-line values; FileExistsError: a run folder holds a run and
        ``--resume`` was not given; DataError / FileNotFoundError: data problems (named).
    """
    ctx, wanted = prepare(repro, argv)
    if ctx.args.describe:
        return ctx
    args = ctx.args

    from regseg.fileio import RunLock, check_writable
    from regseg.training.distribute import worker_dir

    # several workers: only the chief writes results and locks the shared folders
    ctx.results_dir = worker_dir(ctx.results_dir, ctx.strategy)
    check_writable(worker_dir(ctx.out_dir, ctx.strategy))
    check_writable(ctx.results_dir.parent)
    if ctx.results_dir.exists() and not ctx.results_dir.is_dir():  # it would be replaced whole
        raise NotADirectoryError(f"{ctx.results_dir}: --results-dir is a file, not a folder")
    with RunLock(worker_dir(ctx.out_dir, ctx.strategy)), \
            RunLock(ctx.results_dir.parent, f".{ctx.results_dir.name}.lock"):
        return _train_evaluate_report(repro, ctx, wanted)


def _train_evaluate_report(repro: Reproduction, ctx: RunContext, wanted: list[str]) -> RunContext:
    import shutil

    from regseg.evaluation.tables import atomic_write_csv, atomic_write_text, git_commit, write_result_table
    from regseg.fileio import replace_folder
    from regseg.training.distribute import describe as describe_strategy

    preset, replicas = ctx.preset, ctx.strategy.num_replicas_in_sync
    registrars = {}
    for key, method in repro.methods().items():
        if method.trained and key not in wanted:
            continue
        t0 = time.time()
        if method.trained:
            print(f"\n=== training {method.label} ({key}) ===", flush=True)
        registrars[key] = method.fit(ctx, ctx.out_dir / key)
        if method.trained:
            ctx.timings[key] = time.time() - t0
    print("\n=== evaluating on the test pairs ===", flush=True)
    from regseg.training.distribute import worker_dir
    ctx.out_dir = worker_dir(ctx.out_dir, ctx.strategy)  # NIfTI outputs: the chief's alone
    evaluation = repro.evaluate(ctx, registrars)
    tables = repro.report(ctx, evaluation)
    wall = time.time() - ctx.start
    header = {
        "dataset": ctx.dataset_name,
        "data root": str(ctx.data_root) if ctx.data_root is not None
        else "none (downloaded or demo cache)",
        "preset": f"{preset.name}: {preset.description}",
        "commit": git_commit(),
        "seed": ctx.seed,
        "wall time": f"{wall / 60:.1f} min ("
                     + ", ".join(f"{k} training {v / 60:.1f} min" for k, v in ctx.timings.items())
                     + ")",
        "command": ctx.command,
        "replicas": f"{replicas} ({describe_strategy(ctx.strategy)})",
        "epochs": preset.epochs,
        "precision": preset.precision,
        "XLA (--jit-compile)": ctx.args.jit_compile,
        **repro.header(ctx, evaluation),
    }
    if ctx.changes:
        header["resumed with changes"] = "; ".join(
            f"{k}: {', '.join(v)}" for k, v in ctx.changes.items())
    results = ctx.results_dir.with_name(f".{ctx.results_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    for table in tables:
        write_result_table(table.frame, results, table.stem, header, title=table.title,
                           overwrite=True, notes=table.notes)
    per_pair = evaluation.per_pair_dice()
    if len(per_pair):
        atomic_write_csv(per_pair, results / "per_pair_dice.csv")
    if len(evaluation.deformation):
        atomic_write_csv(evaluation.deformation, results / "deformation_statistics.csv")
    if len(evaluation.tre):
        atomic_write_csv(evaluation.tre, results / "per_pair_tre.csv")
    if len(evaluation.seconds):
        atomic_write_csv(evaluation.seconds, results / "seconds_per_pair.csv")
    repro.figures(ctx, evaluation, results)
    meta = {k: str(v) for k, v in header.items()}
    meta.update(wall_time_seconds=round(wall, 1), preset_settings=asdict(preset),
                methods={k: repro.methods()[k].label for k in registrars},
                files=sorted(p.name for p in results.iterdir()) + ["run.json"])
    atomic_write_text(results / "run.json", json.dumps(meta, indent=2, default=str) + "\n")
    replace_folder(results, ctx.results_dir, keep=_user_files(ctx.results_dir))
    if tables:
        print("\n" + (ctx.results_dir / f"{tables[0].stem}.md").read_text())
    print(f"wall time: {wall / 60:.1f} min; results in {ctx.results_dir}")
    return ctx


def _user_files(results_dir: Path) -> list[str]:
    """Files of an earlier results folder that no run wrote (kept when results are replaced)."""
    if not results_dir.is_dir():
        return []
    try:
        written = set(json.loads((results_dir / "run.json").read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        written = None  # a folder from before run.json listed its files: keep the READMEs only
    return [p.name for p in results_dir.iterdir() if not p.name.startswith(".")
            and ((p.name not in written) if written is not None else p.name == "README.md")]


def _data_error_in(exc: BaseException) -> str | None:
    """The DataError message carried by a TensorFlow error from inside an input pipeline."""
    import re

    match = re.search(r"DataError: (.+)", str(exc))
    return match.group(1).strip() if match else None


def main(repro: Reproduction, argv=None) -> int:
    """Command-line entry: :func:`run`, with errors as one line on stderr.

    Called without ``argv`` (from ``run.py``), the process ends with ``os._exit`` after an error,
    so that no TensorFlow input-pipeline thread can hang the interpreter's shutdown.

    Returns:
        0 on success; 2 for a usage error, a refused folder or refused settings; 1 for data
        and checkpoint errors.
    """
    cli = argv is None
    try:
        code = _main(repro, argv)
    except SystemExit:  # argparse: --help (0) and usage errors (2)
        raise
    except KeyboardInterrupt:
        if not cli:
            raise
        print("interrupted (resume with --resume)", file=sys.stderr)
        code = 130
    except BaseException:
        if not cli:
            raise
        traceback.print_exc()
        code = 1
    if cli and code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _exit_code(exc: BaseException) -> tuple[int, str] | None:
    """``(exit code, one-line message)`` for the errors a user can act on, else ``None``."""
    from regseg.datasets.io import DataError
    from regseg.fileio import LockedError

    if isinstance(exc, (UsageError, FileExistsError, LockedError)):
        return 2, str(exc)
    if isinstance(exc, (DataError, FileNotFoundError, PermissionError, NotADirectoryError)):
        return 1, str(exc)
    if "regseg.training.fit" in sys.modules:  # imported lazily: it imports TensorFlow
        from regseg.training.fit import CheckpointError, NonFiniteLoss, SettingsMismatch
        if isinstance(exc, SettingsMismatch):
            return 2, str(exc)
        if isinstance(exc, (CheckpointError, NonFiniteLoss)):
            return 1, str(exc)
    message = _data_error_in(exc)  # a DataError raised inside a tf.data pipeline, wrapped
    return (1, message) if message is not None else None


def _main(repro: Reproduction, argv=None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        run(repro, argv)
        return 0
    except Exception as exc:
        known = _exit_code(exc)
        if known is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {known[1]}", file=sys.stderr)
        return known[0]
