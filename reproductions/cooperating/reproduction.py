"""Cooperating segmentor and registor networks (Couteaux et al.) on the shared runner.

Two experiments, selected by the dataset:

* **The toy sweep of §3.1 / Fig. 3** (``--dataset toy``): models trained with
  ``λ_r = 1 - λ_p``, ``λ_g = 1`` for ``λ_p`` over ``[0, 1]``; for each, the distribution over a
  fixed test set of ``D_S(ŝ1, ŝ2) - D_S(s1, s2)`` relative to translations (box plots against
  ``λ_r``) and a table of the medians.
* **Paired, unregistered multimodal images, §3.2** (``--dataset brats_toolkit``: the brain
  stand-in; ``--dataset pairs_csv``: the user's own pairs, e.g. liver T1/T2): the cooperating
  networks (``λ_r = 0.1, λ_g = 1, λ_p = 1``), the segmentor alone (``λ_p = λ_g = 0``) and a
  single-input U-Net, tested across patients; the table of §3.2.3.

The quick preset runs both (``--dataset toy+brats_toolkit``).

The runner's notions map as follows: each *method* is one row family of the tables
(``toy``: the whole λ_p sweep; ``cooperating``, ``segmentor_only``, ``single_unet``: the §3.2.3
rows); ``Method.fit`` trains every model of that family (one run folder each, with checkpoints and
``--resume``) and returns the trained networks; :meth:`Cooperating.evaluate` returns a
:class:`CooperatingEvaluation` (a :class:`~regseg.evaluation.pairs.PairEvaluation` whose
``dice`` holds the per-pair segmentation Dice of the §3.2 methods) with the toy and per-pair
tables attached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from regseg.evaluation.pairs import PairEvaluation
from regseg.training.folds import fit_folds, fold_registrars
from regseg.training.runner import DatasetSpec, Method, Preset, Reproduction, Table

from . import published

QUICK_LAMBDAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class CooperatingPreset(Preset):
    """Settings of a preset (``paper-*`` values cited; "not stated" = our choice, README).

    ``epochs`` (``--epochs``) is the number of epochs of the final, joint stage of every model;
    ``batch_size`` (``--batch-size``) the batch of the §3.2 experiment (§3.2.2: 1).

    Attributes:
        learning_rate: Adam, every stage (not stated).
        toy_lambdas_p: λ_p of the toy models (§3.1: 30 values in [0, 1]; λ_r = 1 - λ_p, λ_g = 1).
        toy_batch_size, toy_steps_per_epoch: toy training batches (not stated).
        toy_pretrain_epochs: epochs of the segmentor and registor pre-training (§2.2 steps 1-2).
        toy_share_pretraining: pre-train once and start every λ_p model's joint stage from it
            (the pre-training does not depend on λ; same data order for every model).
        toy_test_pairs: size of the fixed toy test set (not stated).
        toy_segmentor_encoder, toy_segmentor_decoder: toy U-Net widths (not stated).
        pairs_steps_per_epoch: §3.2.2: "1500 epochs of 100 steps".
        pairs_pretrain_epochs: epochs of the two pre-training stages (split not stated).
        pairs_spacing_mm, pairs_shape: common grid of a pair (the liver images are 1.5 x 1.5 x 3
            mm, §3.2.1; the shape is ours).
        pairs_crop_min: smallest side of the random cuboid crops (§3.2.2: "cuboids of random
            sizes and ratios"; sides are multiples of 16 from this to the grid's side).
        pairs_intensity_shift: half-width of the uniform random intensity shift (§3.2.2: "random
            intensity shift"; images in [0, 1]).
        pairs_lambdas: (λ_r, λ_g, λ_p), §3.2.2: 0.1, 1, 1.
        pairs_modalities: modality pairs of the brain stand-in (first = easier).
        pairs_folds: ``"leave_one_patient_out"`` or ``"hold_out"`` (``pairs_test_pairs``
            pairs, §3.2.2: 12).
        pairs_segmentor_encoder, pairs_segmentor_decoder: 3-D U-Net widths (Models Genesis, ref.
            [8], in the paper preset; smaller for CPU presets).
        ds_steps, ds_step_size: gradient descent of the elastic D_S (§2.2; not stated).
    """

    learning_rate: float = 1e-3
    toy_lambdas_p: tuple = tuple(float(v) for v in np.linspace(0.0, 1.0, 30))
    toy_batch_size: int = 8
    toy_steps_per_epoch: int = 50
    toy_pretrain_epochs: tuple = (20, 20)
    toy_share_pretraining: bool = False
    toy_test_pairs: int = 200
    toy_segmentor_encoder: tuple = (16, 32, 64, 64)
    toy_segmentor_decoder: tuple = (64, 64, 32, 16, 16)
    pairs_steps_per_epoch: int = 100
    pairs_pretrain_epochs: tuple = (300, 200)
    pairs_spacing_mm: tuple = (1.5, 1.5, 3.0)
    pairs_shape: tuple = (256, 224, 80)
    pairs_crop_min: int = 64
    pairs_intensity_shift: float = 0.1
    pairs_lambdas: tuple = (0.1, 1.0, 1.0)
    pairs_modalities: tuple = (("t1", "t1c"), ("t1", "t2"), ("t1", "flair"), ("t1c", "t2"),
                               ("t1c", "flair"), ("t2", "flair"))
    pairs_folds: str = "hold_out"
    pairs_test_pairs: int = 12
    pairs_segmentor_encoder: tuple = (32, 64, 128, 256)
    pairs_segmentor_decoder: tuple = (256, 128, 64, 32, 32)
    ds_steps: int = 300
    ds_step_size: float = 0.1


PRESETS = {
    "paper-toy": CooperatingPreset(
        "paper-toy", "toy", epochs=20, batch_size=1,
        description="§3.1 toy sweep: 30 models, λ_p in [0, 1], λ_r = 1 - λ_p, λ_g = 1; per model "
                    "20 + 20 + 20 epochs of 50 steps of 8 pairs (stage lengths not stated); 200 "
                    "fixed test pairs"),
    "paper-liver": CooperatingPreset(
        "paper-liver", "pairs_csv", epochs=1000, batch_size=1,
        description="§3.2 on your paired T1/T2 data (pairs.csv): 1500 epochs of 100 steps "
                    "(300 segmentor + 200 registor + 1000 joint), batch 1, random cuboid crops, "
                    "intensity shifts, λ = (0.1, 1, 1), 12 test pairs (§3.2.2)"),
    "quick": CooperatingPreset(
        "quick", "toy+brats_toolkit", epochs=8, batch_size=1,
        toy_lambdas_p=QUICK_LAMBDAS, toy_batch_size=4, toy_pretrain_epochs=(8, 8),
        toy_share_pretraining=True, toy_test_pairs=100, pairs_steps_per_epoch=50,
        pairs_pretrain_epochs=(8, 5), pairs_spacing_mm=(4.0, 4.0, 4.0), pairs_shape=(48, 48, 48),
        pairs_crop_min=32, pairs_folds="leave_one_patient_out",
        pairs_segmentor_encoder=(8, 16, 32, 32), pairs_segmentor_decoder=(32, 32, 16, 8, 8),
        ds_steps=100,
        description="toy sweep, 6 values of λ_p (shared pre-training 400 + 400 steps, joint 400 "
                    "steps, batch 4, 100 test pairs) + brain stand-in (brats_toolkit_unregistered, "
                    "6 modality pairs per patient, leave-one-patient-out, 4 mm, 400 + 250 + 400 "
                    "steps of batch 1); about 25 min on 2 idle CPU cores"),
    "smoke": CooperatingPreset(
        "smoke", "toy+brats_toolkit", epochs=1, batch_size=1, toy_lambdas_p=(0.0, 1.0),
        toy_batch_size=2, toy_steps_per_epoch=2, toy_pretrain_epochs=(1, 1),
        toy_share_pretraining=True, toy_test_pairs=4, toy_segmentor_encoder=(4, 4, 4, 4),
        toy_segmentor_decoder=(4, 4, 4, 4, 4), pairs_steps_per_epoch=2,
        pairs_pretrain_epochs=(1, 1), pairs_spacing_mm=(4.0, 4.0, 4.0), pairs_shape=(48, 48, 32),
        pairs_crop_min=48, pairs_modalities=(("t1", "t2"),), pairs_folds="leave_one_patient_out",
        pairs_segmentor_encoder=(4, 4, 4, 4), pairs_segmentor_decoder=(4, 4, 4, 4, 4),
        ds_steps=5,
        description="end-to-end check for the tests: 2 toy models and one modality pair per "
                    "patient, a few steps each"),
}


# ------------------------------------------------------------------------------ data
@dataclass
class CooperatingData:
    """What the runner holds as ``ctx.splits``: the toy generator and/or the paired images.

    Attributes:
        name: the data's name for titles and headers.
        is_paper_dataset: always ``False`` (the liver set is private; the toy is our generator).
        toy: the toy generator's parameters, or ``None``.
        pairs: every pair (a :class:`~regseg.datasets.subjects.SubjectDataset`), or ``None``.
        folds: ``[(held-out patient(s), train dataset, test dataset)]``.
    """

    name: str
    is_paper_dataset: bool = False
    toy: object = None
    pairs: object = None
    folds: list = field(default_factory=list)

    def use_disk_cache(self, cache) -> "CooperatingData":
        """Keep the preprocessed pairs on disk (the runner's ``$REGSEG_CACHE/preprocessed``)."""
        from regseg.datasets.cache import PreprocessingCache

        if self.pairs is not None:
            cache = cache if isinstance(cache, PreprocessingCache) else PreprocessingCache(cache)
            for part in [self.pairs] + [d for _, tr, te in self.folds for d in (tr, te)]:
                part.use_disk_cache(cache)
        return self

    def validate(self, progress=None) -> int:
        """Read and preprocess every pair once (a bad file stops the run before training).

        Returns:
            the number of pairs checked (0 for the toy alone).
        Raises:
            DataError: the first pair that cannot be used (named).
        """
        if self.pairs is None:
            return 0
        for i in range(len(self.pairs)):
            self.pairs.load(i)
            if progress is not None:
                progress(i + 1, len(self.pairs), self.pairs.subjects[i].subject_id)
        return len(self.pairs)


def _toy_part(ctx):
    from regseg.datasets.toy_blobs import TEST_SEED, ToyBlobsConfig
    cfg = ToyBlobsConfig()
    return cfg, (f"toy blobs (our §3.1 generator, 240x240, |t| <= {cfg.max_translation} px, "
                 f"{ctx.preset.toy_test_pairs} test pairs of seed {TEST_SEED})")


def _pairs_dataset(subjects, name, ctx):
    from regseg.datasets.paired_modalities import paired_recipe
    from regseg.datasets.subjects import SubjectDataset
    p = ctx.preset
    return SubjectDataset(name, False, subjects, paired_recipe(p.pairs_spacing_mm, p.pairs_shape),
                          cache=True)


def _folds(dataset, ctx):
    from regseg.datasets.paired_modalities import hold_out_groups, leave_one_group_out
    if ctx.preset.pairs_folds == "leave_one_patient_out":
        return leave_one_group_out(dataset)
    return hold_out_groups(dataset, ctx.preset.pairs_test_pairs, ctx.seed)


def _brats(root, ctx):
    from regseg.datasets.paired_modalities import BRATS_TOOLKIT_NAME, brats_toolkit_subjects
    subjects = brats_toolkit_subjects(root, ctx.preset.pairs_modalities,
                                      images=ctx.args.brain_images)
    dataset = _pairs_dataset(subjects, BRATS_TOOLKIT_NAME, ctx)
    return dataset, _folds(dataset, ctx)


def _load_toy(root, ctx):
    cfg, name = _toy_part(ctx)
    return CooperatingData(name, toy=cfg)


def _load_brats(root, ctx):
    dataset, folds = _brats(root, ctx)
    return CooperatingData(dataset.name, pairs=dataset, folds=folds)


def _load_both(root, ctx):
    cfg, toy_name = _toy_part(ctx)
    dataset, folds = _brats(root, ctx)
    return CooperatingData(f"{toy_name} + {dataset.name}", toy=cfg, pairs=dataset, folds=folds)


def _load_csv(root, ctx):
    from regseg.datasets.paired_modalities import read_pairs_csv
    csv = Path(ctx.args.pairs_csv) if ctx.args.pairs_csv else Path(root) / "pairs.csv"
    dataset = _pairs_dataset(read_pairs_csv(csv), f"your paired images ({csv})", ctx)
    return CooperatingData(dataset.name, pairs=dataset, folds=_folds(dataset, ctx))


_BRATS_MISSING = ("the brain pairs need the data root holding brats_toolkit_unregistered/: "
                  "--data-root DIR or REGSEG_DATA_ROOT (or --dataset toy for the toy sweep only)")

DATASETS = {
    "toy": DatasetSpec("toy", _load_toy, needs_root=False),
    "brats_toolkit": DatasetSpec("brats_toolkit", _load_brats, missing_root=_BRATS_MISSING),
    "toy+brats_toolkit": DatasetSpec("toy+brats_toolkit", _load_both, missing_root=_BRATS_MISSING),
    "pairs_csv": DatasetSpec("pairs_csv", _load_csv,
                             missing_root="--dataset pairs_csv needs --data-root DIR holding "
                                          "pairs.csv (patient,image1,image2,mask1,mask2)"),
}


# ------------------------------------------------------------------------------ training
@dataclass
class Trained:
    """Trained networks of one model and their configuration."""

    segmentor: object
    registor: object
    config: object


def _stages_for(kind: str, pretrain: tuple, joint: int) -> list[tuple[str, int]]:
    """Stages (phase name, steps) of a model kind: §2.2's three steps for ``cooperating``."""
    seg, reg = pretrain
    if kind == "cooperating":
        return [("segmentor", seg), ("registor", reg), ("joint", joint)]
    if kind == "pretrain":
        return [("segmentor", seg), ("registor", reg)]
    if kind == "joint":
        return [("joint", joint)]
    return [("segmentor", seg + joint)]  # segmentor alone, single-input U-Net: L_r only


def train_model(ctx, run_dir: Path, config, stages, make_train, steps_per_epoch: int,
                settings: dict, init: Path | None = None) -> Trained:
    """Train one model through its stages (:class:`~regseg.training.alternating.AlternatingModel`
    phases, one cycle = the whole run) with the shared :func:`~regseg.training.fit.fit`.

    Args:
        ctx: the run context (strategy, seed, ``--resume``).
        run_dir: the model's run folder.
        config: :class:`~regseg.reproductions.cooperating.model.CooperatingConfig`.
        stages: ``[(phase, steps)]`` among ``segmentor``, ``registor``, ``joint`` (§2.2).
        make_train: ``f(first_epoch) -> tf.data`` of batches ``{"x1", "x2", "s1", "s2"}``.
        steps_per_epoch: every stage's steps must be a multiple of it.
        settings: stored in ``settings.json`` and checked on ``--resume``.
        init: a folder holding ``segmentor.weights.h5`` / ``registor.weights.h5`` to start from.
    Returns:
        :class:`Trained`; the networks' weights are also saved in ``run_dir``.
    Raises:
        ValueError: a stage not a multiple of ``steps_per_epoch``.
    """
    from regseg.fileio import atomic_path
    from regseg.training.fit import fit

    stages = [(n, int(s)) for n, s in stages if s > 0]
    for name, steps in stages:
        if steps % steps_per_epoch:
            raise ValueError(f"stage {name}: {steps} steps is not a multiple of the "
                             f"{steps_per_epoch} steps per epoch")
    lr = float(ctx.preset.learning_rate)
    model, networks = build_stages(ctx, config, stages, init)
    segmentor, registor = networks["segmentor"], networks.get("registor")
    total = sum(s for _, s in stages)
    settings = {**settings, "stages": stages, "learning_rate": lr, "seed": ctx.seed,
                "model_config": config.to_dict()}
    fit(model, make_train, run_dir, epochs=total // steps_per_epoch,
        steps_per_epoch=steps_per_epoch, schedule=lambda epoch: lr, resume=ctx.args.resume,
        verbose=ctx.verbose, settings=settings, allow_changes=ctx.args.resume_with_changes)
    for name, net in networks.items():
        with atomic_path(Path(run_dir) / f"{name}.weights.h5", suffix=".weights.h5") as tmp:
            net.save_weights(tmp)
    return Trained(segmentor, registor, config)


def build_stages(ctx, config, stages, init: Path | None = None):
    """``(model, networks)``: the compiled :class:`~regseg.training.alternating.AlternatingModel`
    of ``stages`` (``[(phase, steps)]``, §2.2) inside ``ctx.strategy``, and ``{"segmentor",
    "registor"}`` (the registor only where a stage trains it or ``init`` holds one)."""
    import keras

    from regseg.training.alternating import AlternatingModel, Phase

    from .model import build_registor, build_segmentor, stage_losses

    lr = float(ctx.preset.learning_rate)
    keras.utils.set_random_seed(ctx.seed)
    needs_registor = any(n in ("registor", "joint") for n, _ in stages) or (
        init is not None and (Path(init) / "registor.weights.h5").is_file())
    with ctx.strategy.scope():
        segmentor = build_segmentor(config)
        registor = build_registor(config) if needs_registor and config.inputs == 2 else None
        if init is not None:
            segmentor.load_weights(Path(init) / "segmentor.weights.h5")
            if registor is not None:
                registor.load_weights(Path(init) / "registor.weights.h5")
        losses = stage_losses(segmentor, registor, config)
        trains = {"segmentor": segmentor, "registor": registor, "joint": [segmentor, registor]}
        phases = [Phase(n, s, trains[n], losses[n], keras.optimizers.Adam(lr, name=n))
                  for n, s in stages]
        networks = {"segmentor": segmentor, **({"registor": registor} if registor else {})}
        model = AlternatingModel(networks, phases)
        model.compile()
    return model, networks


def toy_config(ctx, lambda_p: float):
    """The toy model of ``λ_p`` (§3.1: ``λ_r = 1 - λ_p``, ``λ_g = 1``)."""
    from .model import CooperatingConfig
    p = ctx.preset
    return CooperatingConfig(spatial_shape=(ctx.splits.toy.size,) * 2, transform="translation",
                             segmentor_encoder=tuple(p.toy_segmentor_encoder),
                             segmentor_decoder=tuple(p.toy_segmentor_decoder),
                             max_translation=float(ctx.splits.toy.max_translation),
                             lambda_r=1.0 - float(lambda_p), lambda_g=1.0,
                             lambda_p=float(lambda_p))


def lambda_folder(lambda_p: float) -> str:
    """Run folder name of a toy model."""
    return f"lambda_p={lambda_p:.3f}"


class ToySweep(Method):
    """Fig. 3: the toy models for every ``λ_p`` of the preset."""

    key, label, trained = "toy", "toy λ_p sweep (Fig. 3)", True

    def fit(self, ctx, run_dir):
        from regseg.datasets.toy_blobs import toy_dataset

        data, p = ctx.splits, ctx.preset
        if data.toy is None:
            print("toy sweep: not part of this dataset, skipped")
            return None
        spe, batch = p.toy_steps_per_epoch, p.toy_batch_size
        seg, reg = (e * spe for e in p.toy_pretrain_epochs)
        joint = p.epochs * spe
        base = {"experiment": "toy", "generator": data.toy.to_dict(), "batch": batch,
                "steps_per_epoch": spe}

        def stream(offset):
            def make(first_epoch):
                return toy_dataset(ctx.seed, batch, data.toy,
                                   start=(offset + first_epoch * spe) * batch)
            return make

        models, init = {}, None
        if p.toy_share_pretraining:
            print(f"\n--- toy: shared pre-training (segmentor {seg}, registor {reg} steps)",
                  flush=True)
            init = Path(run_dir) / "pretrain"
            train_model(ctx, init, toy_config(ctx, 0.0), _stages_for("pretrain", (seg, reg), 0),
                        stream(0), spe, {**base, "model": "pretrain"})
        for lam in p.toy_lambdas_p:
            print(f"\n--- toy: λ_p = {lam:.3f}, λ_r = {1 - lam:.3f}", flush=True)
            cfg = toy_config(ctx, lam)
            folder = Path(run_dir) / lambda_folder(lam)
            if init is not None:
                models[float(lam)] = train_model(ctx, folder, cfg, _stages_for("joint", (0, 0), joint),
                                                 stream(seg + reg), spe,
                                                 {**base, "model": "joint", "lambda_p": lam},
                                                 init=init)
            else:
                models[float(lam)] = train_model(ctx, folder, cfg,
                                                 _stages_for("cooperating", (seg, reg), joint),
                                                 stream(0), spe,
                                                 {**base, "model": "full", "lambda_p": lam})
        return models


def pairs_config(ctx, kind: str):
    """The §3.2 model of a method kind (``cooperating``, ``segmentor_only``, ``single_unet``)."""
    from .model import CooperatingConfig
    p = ctx.preset
    lam_r, lam_g, lam_p = p.pairs_lambdas if kind == "cooperating" else (1.0, 0.0, 0.0)
    return CooperatingConfig(spatial_shape=(None, None, None), transform="elastic",
                             segmentor_encoder=tuple(p.pairs_segmentor_encoder),
                             segmentor_decoder=tuple(p.pairs_segmentor_decoder),
                             segmentor_normalisation="instance", lambda_r=lam_r, lambda_g=lam_g,
                             lambda_p=lam_p, inputs=1 if kind == "single_unet" else 2)


def sample_arrays(sample) -> tuple:
    """``(x1, x2, s1, s2)`` float32 arrays of a preprocessed pair sample."""
    return (sample.images["x1"].astype(np.float32), sample.images["x2"].astype(np.float32),
            sample.masks["s1"].astype(np.float32), sample.masks["s2"].astype(np.float32))


def pairs_training_dataset(train, seed: int, batch: int, crop_min: int, shift: float,
                           start_step: int = 0):
    """``tf.data`` of training batches of §3.2.2: random pairs, random cuboid crops, random
    intensity shifts; batch ``b`` of step ``k`` drawn with ``default_rng([seed, k])``.

    Each crop side is a multiple of 16 (the registor's factor) drawn uniformly between
    ``crop_min`` and the grid's side ("cuboids of random sizes and ratios"); every image gets
    ``+ U(-shift, shift)``. Pairs are drawn uniformly with replacement. Steps 0 and 1 take the
    largest and the smallest crop, so that TensorFlow traces the training step twice at most
    (the second trace leaves every differing size unknown) instead of once per newly seen size.

    Returns:
        endless dataset of ``{"x1", "x2", "s1", "s2"}``, each ``(batch, d, h, w, 1)``.
    """
    import tensorflow as tf

    arrays = [sample_arrays(train.load(i)) for i in range(len(train))]
    shape = arrays[0][0].shape
    sides = [[s for s in range(16, n + 1, 16) if s >= min(crop_min, n - n % 16)] for n in shape]

    def make(step):
        rng = np.random.default_rng([int(seed), int(step)])
        crop = [int(rng.choice(s)) for s in sides]
        if step < 2:  # the largest, then the smallest crop: the step is compiled for every size
            crop = [s[-1] if step == 0 else s[0] for s in sides]
        out = [[], [], [], []]
        for _ in range(batch):
            x1, x2, s1, s2 = arrays[int(rng.integers(len(arrays)))]
            start = [int(rng.integers(0, n - c + 1)) for n, c in zip(shape, crop)]
            box = tuple(slice(a, a + c) for a, c in zip(start, crop))
            shifts = rng.uniform(-shift, shift, size=2) if shift > 0 else np.zeros(2)
            for k, arr in enumerate((x1[box] + shifts[0], x2[box] + shifts[1], s1[box], s2[box])):
                out[k].append(arr[..., None].astype(np.float32))
        return [np.stack(o) for o in out]

    def tf_make(step):
        out = tf.numpy_function(make, [step], [tf.float32] * 4, stateful=False)
        for o in out:
            o.set_shape((batch, None, None, None, 1))
        return dict(zip(("x1", "x2", "s1", "s2"), out))

    ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    return ds.map(tf_make, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True).prefetch(tf.data.AUTOTUNE)


class PairsMethod(Method):
    """One §3.2.3 method, trained on every fold (leave-one-patient-out or a held-out set)."""

    trained = True

    def __init__(self, key, label, kind):
        self.key, self.label, self.kind = key, label, kind

    @staticmethod
    def _training_data(ctx, train, start_step: int):
        p = ctx.preset
        return pairs_training_dataset(train, ctx.seed, p.batch_size, p.pairs_crop_min,
                                      p.pairs_intensity_shift, start_step)

    def training_setup(self, ctx):
        """See :meth:`Method.training_setup`: the first fold's model in its last stage (the
        joint stage of the cooperating networks, §2.2 step 3; the segmentor's own otherwise),
        with random weights.

        Raises:
            FileNotFoundError: the dataset has no paired images.
        """
        from regseg.training.performance import apply_to_model
        from regseg.training.runner import TrainingSetup

        data = ctx.splits
        if data.pairs is None:
            raise FileNotFoundError(f"{ctx.dataset_name}: no paired images in this dataset")
        kind = "cooperating" if self.kind == "cooperating" else "segmentor"
        stage = _stages_for(kind, (1, 1), 1)[-1]
        model, _ = build_stages(ctx, pairs_config(ctx, self.kind), [stage])
        apply_to_model(model)
        held_out, train, _ = data.folds[0]
        return TrainingSetup(model, self._training_data(ctx, train, 0), ctx.preset.batch_size,
                             f"{stage[0]} stage, fold without {held_out}")

    def fit(self, ctx, run_dir):
        data, p = ctx.splits, ctx.preset
        if data.pairs is None:
            print(f"{self.key}: no paired images in this dataset, skipped")
            return None
        spe = p.pairs_steps_per_epoch
        seg, reg = (e * spe for e in p.pairs_pretrain_epochs)
        joint = p.epochs * spe
        config = pairs_config(ctx, self.kind)
        kind = "cooperating" if self.kind == "cooperating" else "segmentor"

        def fit_one(ctx, folder):
            held_out, train, _ = ctx.fold

            def make(first_epoch):
                return self._training_data(ctx, train, first_epoch * spe)

            settings = {"experiment": "pairs", "kind": self.kind, "held_out": held_out,
                        "train": train.subject_ids, "recipe": train.recipe.to_dict(),
                        "batch": p.batch_size, "steps_per_epoch": spe,
                        "crop_min": p.pairs_crop_min, "shift": p.pairs_intensity_shift}
            return train_model(ctx, folder, config, _stages_for(kind, (seg, reg), joint), make,
                               spe, settings)

        # one model per fold, <run>/<method>/fold-<held-out patient(s)>
        return fit_folds(fit_one, ctx, run_dir, data.folds, names=[g for g, _, _ in data.folds],
                         layout="{method}/fold-{name}",
                         describe=lambda fold: f"without {fold[0]}, {len(fold[1])} training pairs")


# ------------------------------------------------------------------------------ evaluation
@dataclass
class CooperatingEvaluation(PairEvaluation):
    """:class:`~regseg.evaluation.pairs.PairEvaluation` (``dice``: per-pair segmentation Dice of
    the §3.2 methods, ``seconds``: prediction time per pair) plus this paper's results.

    Attributes:
        toy: per toy test pair and model: ``lambda_p``, ``lambda_r``, ``pair``, ``ds_truth``,
            ``ds_prediction``, ``gain``, ``dice_first``, ``dice_second``, ``dice_warped``,
            ``translation_error_px``.
        pair_metrics: per test pair and §3.2 method: ``dice_before``, ``ds_annotations``,
            ``ds_prediction``, ``dice_first``, ``dice_second``, ``dice_warped``.
    """

    toy: pd.DataFrame = field(default_factory=pd.DataFrame)
    pair_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int((a & b).sum()) / total


def evaluate_toy(ctx, models: dict, result: CooperatingEvaluation, batch: int = 10) -> None:
    """D_S gains and Dice of every toy model on the fixed test set (fills ``result.toy``)."""
    from regseg.datasets.toy_blobs import TEST_SEED, toy_pairs
    from regseg.evaluation.relative_similarity import exhaustive_translation_similarity

    from .model import predict

    cfg = ctx.splits.toy
    test = toy_pairs(ctx.preset.toy_test_pairs, TEST_SEED, cfg)
    n = len(test["x1"])
    truth = [exhaustive_translation_similarity(test["s1"][i], test["s2"][i], cfg.max_translation)[0]
             for i in range(n)]
    rows, examples = [], {}
    for lam, trained in models.items():
        outs = [predict(trained.segmentor, trained.registor, test["x1"][k:k + batch],
                        test["x2"][k:k + batch], trained.config) for k in range(0, n, batch)]
        out = {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}
        b1, b2, warped = out["s_hat1"] >= 0.5, out["s_hat2"] >= 0.5, out["warped"] >= 0.5
        for i in range(n):
            ds = exhaustive_translation_similarity(b1[i], b2[i], cfg.max_translation)[0]
            rows.append({"lambda_p": lam, "lambda_r": 1.0 - lam, "pair": i,
                         "ds_truth": truth[i], "ds_prediction": ds, "gain": ds - truth[i],
                         "dice_first": _dice(b1[i], test["s1"][i]),
                         "dice_second": _dice(b2[i], test["s2"][i]),
                         "dice_warped": _dice(warped[i], test["s2"][i]),
                         "translation_error_px": float(np.linalg.norm(
                             out["theta"][i] + test["translation"][i]))})
        examples[lam] = {k: v[0] for k, v in out.items()}
    result.toy = pd.DataFrame(rows)
    result.examples["toy"] = {"pair": {k: v[0] for k, v in test.items()}, "predictions": examples}


def evaluate_pairs_experiment(ctx, trained: dict, result: CooperatingEvaluation) -> None:
    """§3.2.3 quantities on every fold's test pairs (fills ``pair_metrics``, ``dice``,
    ``seconds``)."""
    from regseg.evaluation.relative_similarity import relative_similarities

    from .model import predict

    p = ctx.preset
    ds_opts = {"steps": p.ds_steps, "step_size": p.ds_step_size, "grid_factor": 16}
    rows, seconds, examples = [], [], {}
    for f, (held_out, _, test) in enumerate(ctx.splits.folds):
        samples = [test.load(i) for i in range(len(test))]
        arrays = [sample_arrays(s) for s in samples]
        s1 = np.stack([a[2] > 0 for a in arrays])
        s2 = np.stack([a[3] > 0 for a in arrays])
        annotations = relative_similarities(s1, s2, "elastic", **ds_opts)
        for key, model in fold_registrars(trained, f).items():
            preds = []
            for (x1, x2, _, _), sample in zip(arrays, samples):
                t0 = time.perf_counter()
                preds.append(predict(model.segmentor, model.registor, x1[None], x2[None],
                                     model.config))
                seconds.append({"pair": sample.subject_id, "method": key,
                                "seconds": time.perf_counter() - t0})
            b1 = np.stack([q["s_hat1"][0] >= 0.5 for q in preds])
            b2 = np.stack([q["s_hat2"][0] >= 0.5 for q in preds])
            ours = relative_similarities(b1, b2, "elastic", **ds_opts)
            for i, sample in enumerate(samples):
                warped = preds[i].get("warped")
                rows.append({"method": key, "pair": sample.subject_id, "fold": held_out,
                             "dice_before": _dice(s1[i], s2[i]),
                             "ds_annotations": annotations.dice[i],
                             "ds_prediction": ours.dice[i],
                             "dice_first": _dice(b1[i], s1[i]), "dice_second": _dice(b2[i], s2[i]),
                             "dice_warped": (_dice(warped[0] >= 0.5, s2[i]) if warped is not None
                                             else float("nan"))})
            # Fig. 4: one pair per fold, T1 -> T2 where there is one (the paper's pair)
            ids = [s.subject_id for s in samples]
            i = next((k for k, n in enumerate(ids) if n.endswith(":t1-t2")), 0)
            examples.setdefault(key, []).append(
                {"pair": ids[i], "x1": arrays[i][0], "x2": arrays[i][1], "s1": s1[i], "s2": s2[i],
                 "p1": b1[i], "p2": b2[i]})
    frame = pd.DataFrame(rows)
    result.pair_metrics = frame
    labels = {k: m.label for k, m in REPRODUCTION.methods().items()}
    for key in trained:
        d = frame[frame["method"] == key].set_index("pair")[["dice_first", "dice_second"]]
        result.dice[labels[key]] = d.rename(columns={"dice_first": "first modality",
                                                     "dice_second": "second modality"})
    result.pairs = list(dict.fromkeys(frame["pair"]))
    result.seconds = pd.DataFrame(seconds)
    result.examples["pairs"] = examples


def _wilcoxon(a, b) -> float:
    from regseg.evaluation.statistics import paired_wilcoxon
    return paired_wilcoxon(a, b)


def toy_median_table(toy: pd.DataFrame) -> pd.DataFrame:
    """Fig. 3 in numbers: per λ_r, the median and quartiles of the similarity gain and more."""
    from scipy.stats import wilcoxon
    rows = {}
    for lam, g in toy.groupby("lambda_p", sort=True):
        gain = g["gain"].to_numpy()
        empty = int((~np.isfinite(gain)).sum())  # D_S of an empty prediction is undefined
        gain = gain[np.isfinite(gain)]
        nz = gain[np.abs(gain) > 0]
        q = (lambda f: float(np.quantile(gain, f)) if len(gain) else np.nan)  # noqa: E731
        rows[f"{1 - lam:.3f}"] = {
            "lambda_p": lam, "median gain": q(0.5), "q1 gain": q(0.25), "q3 gain": q(0.75),
            "mean gain": gain.mean() if len(gain) else np.nan, "n pairs": len(gain),
            "pairs with an empty prediction": empty,
            "Wilcoxon p (gain = 0)": float(wilcoxon(nz).pvalue) if len(nz) else float("nan"),
            "median D_S truth": g["ds_truth"].median(),
            "median D_S prediction": g["ds_prediction"].median(),
            "mean Dice first": g["dice_first"].mean(), "mean Dice second": g["dice_second"].mean(),
            "mean Dice θ(ŝ1) vs s2": g["dice_warped"].mean(),
            "mean translation error (px)": g["translation_error_px"].mean()}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "lambda_r"
    return out.sort_index(ascending=False)


def pairs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The §3.2.3 quantities (mean, std, n over test pairs) beside the published liver values."""
    by = {k: g.reset_index(drop=True) for k, g in frame.groupby("method")}
    ref = next(iter(by.values()))
    values: dict = {}

    def put(name, series):
        v = np.asarray(series, float)
        v = v[np.isfinite(v)]
        values[name] = (v.mean() if len(v) else np.nan, v.std(ddof=1) if len(v) > 1 else np.nan,
                        len(v))

    put("Dice of the annotations before registration", ref["dice_before"])
    put("D_S annotations", ref["ds_annotations"])
    names = {"segmentor_only": "segmentor alone", "cooperating": "ours",
             "single_unet": "single-input U-Net"}
    if "segmentor_only" in by:
        put("D_S segmentor alone (no registor)", by["segmentor_only"]["ds_prediction"])
    if "cooperating" in by:
        put("D_S ours", by["cooperating"]["ds_prediction"])
        values["Wilcoxon p, D_S ours vs annotations"] = (
            _wilcoxon(by["cooperating"]["ds_prediction"], by["cooperating"]["ds_annotations"]),
            np.nan, len(by["cooperating"]))
        put("Dice θ(ŝ1) vs s2, ours", by["cooperating"]["dice_warped"])
    for key, name in names.items():
        if key in by:
            put(f"Dice first modality, {name}", by[key]["dice_first"])
            put(f"Dice second modality, {name}", by[key]["dice_second"])
    if "single_unet" in by:
        put("D_S single-input U-Net", by["single_unet"]["ds_prediction"])
    if "cooperating" in by and "segmentor_only" in by:
        a = by["cooperating"].set_index("pair")["ds_prediction"]
        b = by["segmentor_only"].set_index("pair")["ds_prediction"].reindex(a.index)
        values["Wilcoxon p, D_S ours vs segmentor alone"] = (_wilcoxon(a, b), np.nan, len(a))
    rows = [r for r in published.LIVER_ROWS if r in values]
    out = pd.DataFrame({"ours mean": [values[r][0] for r in rows],
                        "ours std": [values[r][1] for r in rows],
                        "n pairs": [values[r][2] for r in rows],
                        "published (liver)": [published.LIVER.get(r, np.nan) for r in rows]},
                       index=pd.Index(rows, name="quantity"))
    out["diff"] = out["ours mean"] - out["published (liver)"]
    return out


class Cooperating(Reproduction):
    key, module = "cooperating", "regseg.reproductions.cooperating.reproduction"
    title = ("Couteaux et al., cooperating segmentor and registor networks: the toy sweep "
             "(Fig. 3) and paired unregistered multimodal segmentation (§3.2.3)")
    presets, default_preset = PRESETS, "quick"
    datasets = DATASETS

    def methods(self):
        return {"toy": ToySweep(),
                "cooperating": PairsMethod("cooperating", "ours (S + R, λ_r=0.1, λ_g=1, λ_p=1)",
                                           "cooperating"),
                "segmentor_only": PairsMethod("segmentor_only", "segmentor alone (λ_p=λ_g=0)",
                                              "segmentor_only"),
                "single_unet": PairsMethod("single_unet", "single-input U-Net", "single_unet")}

    def add_arguments(self, p):
        p.add_argument("--pairs-csv", default=None,
                       help="--dataset pairs_csv: the CSV listing the pairs (default "
                            "<data root>/pairs.csv)")
        p.add_argument("--brain-images", choices=["skull_stripped", "raw"],
                       default="skull_stripped",
                       help="brats_toolkit: the HD-BET skull-stripped native images (default; "
                            "the only copy of both patients) or the raw inputs where present")

    def describe(self, preset, args):
        from types import SimpleNamespace

        from .model import build_registor, build_segmentor
        total = 0
        toy_ctx = SimpleNamespace(preset=preset, splits=SimpleNamespace(
            toy=SimpleNamespace(size=240, max_translation=32)))
        pair_ctx = SimpleNamespace(preset=preset)
        for title, cfg in (("toy", toy_config(toy_ctx, 0.5)),
                           ("pairs", pairs_config(pair_ctx, "cooperating"))):
            for net in (build_segmentor(cfg), build_registor(cfg)):
                print(f"{title} {net.name}: {net.count_params()} parameters")
                total += net.count_params()
        print(f"parameters: {total}")
        return total

    def evaluate(self, ctx, registrars):
        result = CooperatingEvaluation()
        toy = registrars.get("toy")
        if toy:
            evaluate_toy(ctx, toy, result)
        pairs = {k: v for k, v in registrars.items() if k != "toy" and v}
        if pairs:
            evaluate_pairs_experiment(ctx, pairs, result)
        return result

    def header(self, ctx, evaluation):
        out = {}
        if len(evaluation.toy):
            out["toy"] = (f"{evaluation.toy['pair'].nunique()} fixed test pairs, λ_p = "
                          + ", ".join(f"{v:.3f}" for v in sorted(evaluation.toy['lambda_p'].unique())))
        if len(evaluation.pair_metrics):
            folds = ", ".join(f"without {g}" for g, _, _ in ctx.splits.folds)
            out["pairs"] = (f"{evaluation.pair_metrics['pair'].nunique()} test pairs over "
                            f"{len(ctx.splits.folds)} fold(s) ({folds})")
        return out

    def report(self, ctx, evaluation):
        tables = []
        if len(evaluation.toy):
            tables.append(Table(
                "fig3_toy_similarity_gain", toy_median_table(evaluation.toy),
                "Couteaux et al. Fig. 3: gain in relative similarity D_S(predictions) - "
                "D_S(ground truth), toy dataset (our generator of §3.1)",
                f"Per λ_r = 1 - λ_p (λ_g = 1): distribution over the fixed test pairs of D_S(ŝ1, "
                f"ŝ2) - D_S(s1, s2), D_S relative to translations of at most 32 px (exact, every "
                f"integer translation). Published: Fig. 3's values are not in the text; its "
                f"claim: {published.TOY_CLAIM}. Dice first/second: predictions against s1/s2; "
                f"translation error: |θ - true translation| of the registor on the predictions."))
        if len(evaluation.pair_metrics):
            tables.append(Table(
                "table_3_2_3_pairs", pairs_table(evaluation.pair_metrics),
                f"Couteaux et al. §3.2.3 on brain MRI pairs — a brain stand-in for the liver "
                f"T1/T2 pairs{ctx.title_suffix}",
                "Mean ± std over the test pairs (every fold). First/second modality = x1/x2 of "
                "each pair (T1/T2 in the paper). D_S relative to the elastic class of §3.2.2 "
                "(displacements on a 16x coarser grid), gradient descent of §2.2. Published: "
                "§3.2.3, liver T1/T2 (12 test pairs); the segmentor was initialised from Models "
                "Genesis in the paper, trained from scratch here. Wilcoxon: two-sided signed-rank "
                "test over the test pairs (scipy)."))
        return tables

    def figures(self, ctx, evaluation, results_dir):
        from regseg.evaluation.tables import atomic_write_csv

        from . import figures
        if len(evaluation.toy):
            atomic_write_csv(evaluation.toy, Path(results_dir) / "toy_per_pair.csv")
            figures.toy_pair_figure(evaluation.examples["toy"],
                                    Path(results_dir) / "fig2_toy_pair.png")
            figures.similarity_gain_boxplot(evaluation.toy,
                                            Path(results_dir) / "fig3_toy_similarity_gain.png")
        if len(evaluation.pair_metrics):
            atomic_write_csv(evaluation.pair_metrics, Path(results_dir) / "pairs_per_pair.csv")
            label = self.methods()["cooperating"].label
            ex = evaluation.examples["pairs"].get("cooperating")
            if ex:
                name = ctx.splits.pairs.name.split(":")[0]
                figures.pairs_figure(ex, Path(results_dir) / "fig4_pairs_examples.png",
                                     title=f"{label}\n{name}{ctx.title_suffix}")


REPRODUCTION = Cooperating()

