"""The diffeomorphic U-Net for lung CT (Bouabid et al.) on the shared runner: Tables 1-3.

Atlas registration (§4.4): every source scan is registered to one fixed atlas, a training scan.
Table 1 sweeps the regulariser weight alpha (MSE, no mask term), Table 2 compares MSE with the
global cross-correlation at alpha = 1e-5, Table 3 adds the mask term (eq. 5) at three
(alpha, beta); each with train and test rows of MSE, CC, Dice and Hausdorff (§5.1) and the epoch
at which early stopping ended the run.

Datasets: ``luna16`` (the paper's, the user's copy, ``paper`` preset) and the stand-in ``ixi10``
(real brain MRI at 2 mm, the brain mask in the lung mask's part; ``quick`` and ``smoke``). The
stand-in has 10 subjects, so the quick preset cross-validates: the atlas is fixed and the nine
sources are split into folds; every source is tested once by a network that never saw it. The
quick preset also registers the real lung CT pair of the shared data (follow-up to baseline)
and scores its 51 landmarks (TRE, mm), its lung masks (Dice, Hausdorff) and its Jacobian.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from regseg.datasets.luna16 import TABLES_SPLIT
from regseg.training.folds import (FOLD_IN_METHOD, Fold, FoldRegistrars, fit_folds,
                                   fold_registrars, kfold)
from regseg.training.runner import (DatasetSpec, IdentityMethod, KerasMethod, Preset,
                                    Reproduction, Table, TrainingPlan, ixi10_dataset)

from . import published


@dataclass(frozen=True)
class DiffUNetPreset(Preset):
    """Adds the paper's preprocessing, optimiser, early stopping and split (values cited).

    Attributes:
        cube: side of the preprocessing cube, voxels (§4.5: 256).
        spacing_mm: resampling before the cube (§4.2: 1 mm); ``None`` keeps the files' spacing.
        learning_rate, decay: Adam 1e-3 with Keras 2 decay 1e-6 (§4.5).
        patience: early stopping on the validation loss, epochs (§4.5: 20).
        split: LUNA16 split (:data:`~regseg.datasets.luna16.TABLES_SPLIT`, the tables' 98 / 33
            plus the atlas and 20 validation scans; or ``RELEASED_SPLIT`` 60/20/20 %).
        split_sizes: ixi10 split (train, validation, test) before the folds are drawn.
        cv_folds: 1 = the split as given; k > 1 = the sources (every subject but the atlas) in
            k folds, each tested once (stand-in data, too few subjects for one split).
        atlas: index of the atlas in the training split (§4.4: one fixed training scan).
        lung_pair: also run stand-in (b), the lung CT pair.
        lung_cube, lung_epochs, lung_copies, lung_validation_copies, lung_max_displacement:
            stand-in (b): cube side, epochs, augmented copies of the follow-up for training and
            validation, their largest lattice displacement (voxels of the cube).
    """

    cube: int = 256
    spacing_mm: float | None = 1.0
    learning_rate: float = 1e-3
    decay: float = 1e-6
    patience: int = 20
    split: tuple = TABLES_SPLIT
    split_sizes: tuple = (8, 1, 1)
    cv_folds: int = 1
    atlas: int = 0
    lung_pair: bool = False
    lung_cube: int = 64
    lung_epochs: int = 0
    lung_copies: int = 0
    lung_validation_copies: int = 2
    lung_max_displacement: float = 3.0


PRESETS = {
    # §4.5: 256³, batch 1, Adam 1e-3 decay 1e-6, early stopping patience 20; the runs stopped
    # between 90 and 200 epochs (Tables 1-3), the released code trains for at most 200.
    "paper": DiffUNetPreset("paper", "luna16", 200, 1, cube=256, spacing_mm=1.0,
                            description="LUNA16 at 1 mm rescaled to 256³, atlas + 98 train / 20 "
                                        "validation / 33 test scans, batch 1, Adam 1e-3 decay "
                                        "1e-6, <= 200 epochs, early stopping patience 20 (§4.2, "
                                        "§4.4, §4.5)"),
    # measured (README "Presets"): ~0.26 s per step at 48³ and ~1 s at 64³ on the 2 shared
    # cores (load 3-5); 3 folds x 9 networks x 40 epochs of 5 pairs + the lung network's 20
    # epochs of 15 pairs: ~30 min there, less on idle cores
    "quick": DiffUNetPreset("quick", "ixi10", 40, 1, cube=48, spacing_mm=None,
                            split_sizes=(8, 1, 1), cv_folds=3, lung_pair=True, lung_cube=64,
                            lung_epochs=20, lung_copies=12, lung_validation_copies=2,
                            description="stand-ins: (a) ixi10 brain MRI, whole field of view "
                                        "rescaled to 48³, atlas IXI012, 9 sources in 3 folds "
                                        "(5 train / 1 validation / 3 test each), 40 epochs, "
                                        "batch 1, Adam 1e-3 decay 1e-6, patience 20; (b) the "
                                        "lung CT pair at 1 mm rescaled to 64³, 20 epochs of 15 "
                                        "pairs; <= 40 min on 2 cores"),
    "smoke": DiffUNetPreset("smoke", "ixi10", 1, 1, cube=32, spacing_mm=None,
                            split_sizes=(8, 1, 1), cv_folds=2, lung_pair=True, lung_cube=32,
                            lung_epochs=1, lung_copies=1, lung_validation_copies=1,
                            description="end-to-end check for the tests: 32³, 2 folds, 1 epoch"),
}

#: the registered mask of each dataset (§5.1: Dice and Hausdorff of the mask)
MASK_OF = {"luna16": "lung", "ixi10": "brain"}
IXI10_STANDIN_NAME = ("IXI (ixi10 sample, 2 mm brain MRI; the brain mask in the lung mask's "
                      "part) — stand-in for LUNA16")
#: the extra Table 1 and Table 3 columns (ours): a regulariser and a mask term large enough to
#: act (the paper's weights are <= 1e-4 of the loss, see the README)
EXTRA_ALPHA = 1.0
EXTRA_BETA = 0.1

#: key -> (label, similarity, alpha, mask term, beta, in the paper)
CONFIGS = {
    "a1e-4": ("α = 1e-4", "mse", 1e-4, False, 0.0, True),
    "a1e-5": ("α = 1e-5", "mse", 1e-5, False, 0.0, True),
    "a1e-6": ("α = 1e-6", "mse", 1e-6, False, 0.0, True),
    "a1e0": ("α = 1 (ours, not in the paper)", "mse", EXTRA_ALPHA, False, 0.0, False),
    "cc_a1e-5": ("CC, α = 1e-5", "cc", 1e-5, False, 0.0, True),
    "a1e-4_b1e-7": ("α, β = 1e-4, 1e-7", "mse", 1e-4, True, 1e-7, True),
    "a1e-4_b1e-6": ("α, β = 1e-4, 1e-6", "mse", 1e-4, True, 1e-6, True),
    "a1e-5_b1e-7": ("α, β = 1e-5, 1e-7", "mse", 1e-5, True, 1e-7, True),
    "a1e-5_b1e-1": ("α, β = 1e-5, 0.1 (ours, not in the paper)", "mse", 1e-5, True, EXTRA_BETA,
                    False),
}
TABLE1_KEYS = ["initial", "a1e-4", "a1e-5", "a1e-6", "a1e0"]
TABLE2_KEYS = ["a1e-5", "cc_a1e-5"]
TABLE3_KEYS = ["a1e-4_b1e-7", "a1e-4_b1e-6", "a1e-5_b1e-7", "a1e-5_b1e-1"]
#: per-pair scores (columns of the per-pair table), in table order
METRICS = ["MSE", "CC", "Dice", "Hausdorff (voxels)", "Hausdorff (mm)", "voxel agreement",
           "folded %", "SDlogJ"]
#: paper metric -> our column
PAPER_METRIC = {"MSE": "MSE", "CC": "CC", "Dice": "Dice", "Hausdorff": "Hausdorff (voxels)"}
LUNG_KEY = "lung_pair"
LUNG_ALPHA = 1e-5  # Tables 1-3: alpha = 1e-5 gives the best MSE and CC


# ------------------------------------------------------------------------------ data
@dataclass
class AtlasData:
    """The atlas, the source scans and the folds of one run.

    Attributes:
        atlas: the atlas :class:`~regseg.datasets.subjects.Sample` (a training scan, §4.4).
        sources: every other scan, ``load(i)``.
        folds: :class:`~regseg.training.folds.Fold` s of indices into ``sources``.
        mask: name of the registered mask (label map and mask of every sample).
    """

    atlas: object
    sources: object
    folds: list
    mask: str


def atlas_data(ctx) -> AtlasData:
    """The run's :class:`AtlasData` (built once per run and kept on ``ctx``)."""
    cached = getattr(ctx, "_diffunet_atlas", None)
    if cached is not None:
        return cached
    from regseg.datasets.augmentation import SampleList

    splits, preset = ctx.splits, ctx.preset
    train = splits.train
    if not 0 <= preset.atlas < len(train):
        raise ValueError(f"atlas index {preset.atlas} outside the {len(train)} training scans")
    others = [i for i in range(len(train)) if i != preset.atlas]
    train_sources = train.subset(others)
    sources = SampleList([train_sources, splits.validation, splits.test])
    n_train, n_val = len(train_sources), len(splits.validation)
    if preset.cv_folds > 1:
        # fold j tests sources j, j + k, ...; its validation source is fold j + 1's first test
        # source; the others train. Every source is tested exactly once.
        folds = kfold(len(sources), preset.cv_folds, assignment="strided", validation=True)
    else:
        folds = [Fold(tuple(range(n_train)), tuple(range(n_train, n_train + n_val)),
                      tuple(range(n_train + n_val, len(sources))))]
    data = AtlasData(train.load(preset.atlas), sources, folds,
                     MASK_OF.get(ctx.dataset_key, "lung"))
    ctx._diffunet_atlas = data
    return data


def _ixi10_spec() -> DatasetSpec:
    """ixi10 (stand-in (a)) with §4.2's pipeline and the brain as the mask; downloads if absent."""
    base = ixi10_dataset()

    def load(root, ctx):
        from regseg.datasets.luna16 import brain_mask_recipe
        recipe = brain_mask_recipe(ctx.preset.cube, spacing_mm=ctx.preset.spacing_mm)
        splits = ixi10_dataset(recipe=recipe).load(root, ctx)
        for part in (splits.train, splits.validation, splits.test):
            part.name = IXI10_STANDIN_NAME
        return splits

    return DatasetSpec("ixi10", load, download=base.download)


def _luna16_spec() -> DatasetSpec:
    def load(root, ctx):
        from regseg.datasets.luna16 import luna16_splits
        p = ctx.preset
        return luna16_splits(root, cube=p.cube, split=p.split, seed=ctx.seed,
                             spacing_mm=p.spacing_mm if p.spacing_mm is not None else 1.0)

    return DatasetSpec("luna16", load, missing_root="the paper preset needs your LUNA16 copy: "
                       "--data-root /path/to/luna16 (subset0..9/*.mhd and seg-lungs-LUNA16/)")


# ------------------------------------------------------------------------------ methods
def _atlas_plan(ctx, method, config, sources, atlas, validation, epochs) -> TrainingPlan:
    """Every source registered to the atlas once per epoch, in a new order each epoch (§4.4).

    Validation pairs (every validation source -> atlas) give the loss of the early stopping
    (§4.5: patience ``preset.patience`` epochs).
    """
    import keras

    from regseg.datasets.augmentation import SampleList
    from regseg.training.pairs import pair_dataset

    from .model import keras2_decay

    preset = ctx.preset
    mapping = method.training_mapping(config)
    n = len(sources)
    order = np.stack([np.random.default_rng([ctx.seed, e]).permutation(n) for e in range(epochs)])
    pairs = np.stack([order, np.zeros_like(order)], axis=-1)  # (epochs, n, 2): source -> atlas
    atlas_src = SampleList([atlas])

    def make_train(first_epoch):
        return pair_dataset((sources, atlas_src), pairs[first_epoch:].reshape(-1, 2),
                            preset.batch_size, mapping)

    vpairs = np.stack([np.arange(len(validation)), np.zeros(len(validation), int)], axis=1)
    val = pair_dataset((validation, atlas_src), vpairs, 1, mapping) if len(validation) else None
    steps = n // preset.batch_size
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss" if val is not None else "loss",
                                            patience=preset.patience, mode="min")
    return TrainingPlan(make_train, steps, epochs,
                        keras2_decay(preset.learning_rate, preset.decay, steps), val,
                        extra_callbacks=(stopper,))


class DiffUNetMethod(KerasMethod):
    """One column of Tables 1-3: the diffeomorphic U-Net with one (similarity, alpha, beta)."""

    def __init__(self, key: str):
        self.key = key
        (self.label, self.similarity, self.alpha, self.segmentation, self.beta,
         self.in_paper) = CONFIGS[key]

    # -- the model ---------------------------------------------------------------------------
    def _config(self, config):
        from .model import DiffeomorphicUNetConfig
        keys = ("input_shape", "similarity", "alpha", "segmentation", "beta", "dice_denominator",
                "grid_origin")
        return DiffeomorphicUNetConfig.from_dict({k: config[k] for k in keys})

    def model_config(self, ctx):
        data = atlas_data(ctx)
        return {"input_shape": list(data.atlas.shape), "similarity": self.similarity,
                "alpha": self.alpha, "segmentation": self.segmentation, "beta": self.beta,
                "dice_denominator": ctx.args.dice_denominator, "grid_origin": ctx.args.grid_origin,
                "mask": data.mask}

    def build(self, config):
        from .model import build_diffeomorphic_unet
        return build_diffeomorphic_unet(self._config(config))

    def compile(self, train_model, config, ctx):
        import keras

        from .model import losses_and_weights
        loss, weights = losses_and_weights(self._config(config))
        train_model.compile(optimizer=keras.optimizers.Adam(ctx.preset.learning_rate), loss=loss,
                            loss_weights=weights)

    def training_mapping(self, config):
        mask, segmentation = config["mask"], config["segmentation"]

        def mapping(moving, fixed):
            inputs = {"moving": moving.image[..., None].astype(np.float32),
                      "fixed": fixed.image[..., None].astype(np.float32)}
            targets = {"warped": inputs["fixed"]}
            if segmentation:
                source = moving.masks[mask][..., None].astype(np.float32)
                inputs["moving_mask"] = source
                targets["warped_mask"] = np.concatenate(
                    [fixed.masks[mask][..., None].astype(np.float32), source], axis=-1)
            return inputs, targets
        return mapping

    def schedule(self, ctx):
        from .model import keras2_decay
        return keras2_decay(ctx.preset.learning_rate, ctx.preset.decay, 1)

    def registrar(self, predict_model, config):
        from .model import DiffeomorphicUNetRegistrar
        return DiffeomorphicUNetRegistrar(predict_model, config["segmentation"])

    # -- training ----------------------------------------------------------------------------
    def training_plan(self, ctx, config):
        from regseg.datasets.augmentation import SampleList

        data, fold = atlas_data(ctx), ctx.fold
        sub = lambda idx: SampleList([data.sources.load(i) for i in idx])  # noqa: E731
        return _atlas_plan(ctx, self, config, sub(fold.train), data.atlas,
                           sub(fold.validation), ctx.preset.epochs)

    def training_folds(self, ctx):
        """The atlas folds (:func:`atlas_data`; one fold without cross-validation)."""
        return atlas_data(ctx).folds

    def fit(self, ctx, run_dir):
        """One network per fold (``fold<k>/`` under ``run_dir``, k from 0, when cross-validating)."""
        def fit_one(ctx, folder):
            registrar = KerasMethod.fit(self, ctx, folder)
            _fix_manifest(folder)
            return registrar

        folds = self.training_folds(ctx)
        return fit_folds(fit_one, ctx, run_dir, folds, names=range(len(folds)),
                         layout=FOLD_IN_METHOD if len(folds) > 1 else "{method}",
                         describe=lambda f: f"{len(f.train)} training sources")


@dataclass
class LungData:
    """Stand-in (b): the pair (baseline = atlas, follow-up = source) and the chest CTs."""

    baseline: object
    followup: object
    training_scans: list
    recipe: object


def lung_data(ctx, cube: int) -> LungData | None:
    """The lung CT pair and chest CTs under ``ctx.data_root``, or ``None`` if absent."""
    from regseg.datasets.lung_ct import lung_ct_training_datasets, lung_pair_dataset

    cached = getattr(ctx, "_diffunet_lung", None)
    if cached is not None:
        return cached
    if ctx.data_root is None:
        return None
    try:
        pair = lung_pair_dataset(ctx.data_root, cube)
        scans = [d.load(0) for d in lung_ct_training_datasets(ctx.data_root, cube)]
    except FileNotFoundError as exc:
        print(f"\n!!! lung CT pair not available ({exc}): stand-in (b) skipped\n", flush=True)
        return None
    data = LungData(pair.load(0), pair.load(1), scans, pair.recipe)
    ctx._diffunet_lung = data
    return data


class LungPairMethod(DiffUNetMethod):
    """Stand-in (b): the network for the lung CT pair (follow-up -> baseline as the atlas).

    Trained on the follow-up, the right lungs of the two chest CTs of ``lung_ct/`` and
    ``preset.lung_copies`` copies of the follow-up under random smooth deformations (never on
    any landmark); validated on ``preset.lung_validation_copies`` other copies. MSE, alpha =
    1e-5 (Tables 1-3's best MSE and CC), no mask term.
    """

    def __init__(self):
        super().__init__("a1e-5")
        self.key, self.label = LUNG_KEY, "diffeomorphic U-Net (α = 1e-5), lung CT pair"

    def model_config(self, ctx):
        cube = ctx.preset.lung_cube
        return {"input_shape": [cube] * 3, "similarity": "mse", "alpha": LUNG_ALPHA,
                "segmentation": False, "beta": 0.0, "dice_denominator": ctx.args.dice_denominator,
                "grid_origin": ctx.args.grid_origin, "mask": "lung"}

    def training_plan(self, ctx, config):
        from regseg.datasets.augmentation import AugmentedSamples, SampleList

        p, data = ctx.preset, self._lung
        copies = dict(control_points=5, max_displacement=p.lung_max_displacement)
        sources = SampleList([data.followup, *data.training_scans,
                              AugmentedSamples(data.followup, p.lung_copies, ctx.seed, **copies)])
        validation = AugmentedSamples(data.followup, p.lung_validation_copies, ctx.seed + 1000,
                                      **copies)
        return _atlas_plan(ctx, self, config, sources, data.baseline, validation, p.lung_epochs)

    def training_folds(self, ctx):
        """None: one network, on the pair."""
        return None

    def training_setup(self, ctx):
        """See :meth:`KerasMethod.training_setup`.

        Raises:
            FileNotFoundError: the lung CT pair is not under the data root.
        """
        self._lung = lung_data(ctx, ctx.preset.lung_cube)
        if self._lung is None:
            raise FileNotFoundError(f"{ctx.data_root}: the lung CT pair is not available")
        return super().training_setup(ctx)

    def fit(self, ctx, run_dir):
        if not ctx.preset.lung_pair or ctx.args.no_lung_pair or ctx.preset.lung_epochs < 1:
            print(f"stand-in (b) not part of this run (preset {ctx.preset.name}"
                  f"{', --no-lung-pair' if ctx.args.no_lung_pair else ''})", flush=True)
            return None
        self._lung = lung_data(ctx, ctx.preset.lung_cube)
        if self._lung is None:
            return None
        registrar = KerasMethod.fit(self, ctx, Path(run_dir))
        _fix_manifest(Path(run_dir), recipe=self._lung.recipe.to_dict(),
                      label_names={"lung": ["lung"]},
                      dataset="lung CT pair (lung_ct_pair_elastix) and lung_ct chest CTs")
        return FoldRegistrars([registrar], folders=[run_dir])


def _fix_manifest(run_dir: Path, **changes) -> None:
    """Adjust a run manifest for §4.2's cube recipes (``python -m regseg register``).

    ``spacing_mm`` becomes ``None``: every image is rescaled to the cube by its own voxel size,
    so no common voxel size must be imposed first; ``changes`` replace other entries (the lung
    network's recipe, not the brain stand-in's).
    """
    import json

    from regseg.fileio import atomic_write_text
    from regseg.training.runner import RUN_MANIFEST, read_run_manifest

    manifest = read_run_manifest(run_dir)
    manifest.update(spacing_mm=None, **changes)
    atomic_write_text(Path(run_dir) / RUN_MANIFEST, json.dumps(manifest, indent=2) + "\n")


# ------------------------------------------------------------------------------ evaluation
def pair_metrics(mask: str) -> dict:
    """§5.1's per-pair scores beyond Dice, for ``evaluate_pairs(pair_metrics=...)``."""
    from regseg.evaluation.intensity import (mean_squared_error, squared_cross_correlation,
                                             voxel_agreement)
    from regseg.evaluation.metrics import hausdorff_distance

    def fixed_mask(fix):
        return fix.label(mask) > 0

    return {
        "MSE": lambda mov, fix, out: mean_squared_error(out["warped"], fix.image),
        "CC": lambda mov, fix, out: squared_cross_correlation(out["warped"], fix.image),
        "Hausdorff (voxels)": lambda mov, fix, out: hausdorff_distance(
            out["warped_labels"] > 0, fixed_mask(fix), spacing=1.0),
        "Hausdorff (mm)": lambda mov, fix, out: hausdorff_distance(
            out["warped_labels"] > 0, fixed_mask(fix), spacing=fix.spacing),
        "voxel agreement": lambda mov, fix, out: voxel_agreement(
            out["warped_labels"] > 0, fixed_mask(fix)),
    }


@dataclass
class AtlasEvaluation:
    """Every (set, fold, source -> atlas) score of every method, plus stand-in (b).

    Attributes:
        metrics: long table, columns ``set``, ``fold``, ``pair``, ``method`` and :data:`METRICS`.
        seconds, tre: as :class:`~regseg.evaluation.pairs.PairEvaluation` (with set and fold).
        epochs_run: ``{method: [epochs per fold]}``.
        examples: ``{method: example}`` of the first test pair.
        lung: ``{"table": DataFrame, "example": ..., "landmarks": DataFrame}`` or ``None``.
    """

    metrics: pd.DataFrame
    seconds: pd.DataFrame
    tre: pd.DataFrame = field(default_factory=pd.DataFrame)
    epochs_run: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    lung: dict | None = None

    @property
    def pairs(self) -> list:
        return sorted(set(self.metrics["pair"])) if len(self.metrics) else []

    @property
    def deformation(self) -> pd.DataFrame:
        cols = ["set", "fold", "pair", "method", "folded %", "SDlogJ"]
        return self.metrics[cols].dropna(subset=["SDlogJ"]) if len(self.metrics) else pd.DataFrame()

    def per_pair_dice(self) -> pd.DataFrame:
        if not len(self.metrics):
            return pd.DataFrame()
        return self.metrics[["pair", "set", "fold", "method", "Dice"]].set_index("pair")


def _rows(set_name, fold, ev) -> list[dict]:
    extra = ev.extra.set_index("method") if len(ev.extra) else pd.DataFrame()
    deform = ev.deformation.set_index("method") if len(ev.deformation) else pd.DataFrame()
    rows = []
    for method, dice in ev.dice.items():
        row = {"set": set_name, "fold": fold, "pair": ev.pairs[0], "method": method,
               "Dice": float(dice.iloc[0, 0])}
        if method in extra.index:
            row.update({k: float(extra.at[method, k]) for k in extra.columns if k != "pair"})
        if method in deform.index:
            row.update({"folded %": 100.0 * float(deform.at[method, "folding fraction"]),
                        "SDlogJ": float(deform.at[method, "SDlogJ"])})
        else:  # the identity: no folding, log-Jacobian 0 everywhere
            row.update({"folded %": 0.0, "SDlogJ": 0.0})
        rows.append(row)
    return rows


def _claim_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """§5's claims as paired Wilcoxon signed-rank tests over the test pairs."""
    from regseg.evaluation.statistics import paired_wilcoxon

    test = metrics[metrics["set"] == "test"]
    comparisons = [
        ("§5.2 lower α improves overlap", "a1e-5", "a1e-4", [("Dice", +1), ("Hausdorff (voxels)", -1)]),
        ("§5.2 lower α improves overlap", "a1e-6", "a1e-5", [("Dice", +1), ("Hausdorff (voxels)", -1)]),
        ("§5.2 too low α worsens MSE and CC", "a1e-6", "a1e-5", [("MSE", +1), ("CC", -1)]),
        ("§5.2 (ours, α = 1) strong regularisation: smoother, worse overlap and MSE", "a1e0",
         "a1e-5", [("SDlogJ", -1), ("Dice", -1), ("MSE", +1)]),
        ("§5.3 MSE beats CC, even on CC", "a1e-5", "cc_a1e-5",
         [("CC", +1), ("MSE", -1), ("Dice", +1), ("Hausdorff (voxels)", -1)]),
        ("§5.4 the mask term improves Dice and Hausdorff", "a1e-4_b1e-7", "a1e-4",
         [("Dice", +1), ("Hausdorff (voxels)", -1)]),
        ("§5.4 the mask term improves Dice and Hausdorff", "a1e-4_b1e-6", "a1e-4",
         [("Dice", +1), ("Hausdorff (voxels)", -1)]),
        ("§5.4 the mask term improves Dice and Hausdorff", "a1e-5_b1e-7", "a1e-5",
         [("Dice", +1), ("Hausdorff (voxels)", -1)]),
        ("§5.4 (ours, β = 0.1) the mask term improves Dice and Hausdorff", "a1e-5_b1e-1", "a1e-5",
         [("Dice", +1), ("Hausdorff (voxels)", -1)]),
    ]
    rows = []
    for claim, a, b, checks in comparisons:
        ta = test[test["method"] == a].set_index("pair")
        tb = test[test["method"] == b].set_index("pair")
        common = ta.index.intersection(tb.index)
        if not len(common):
            continue
        for metric, sign in checks:
            va = ta.loc[common, metric].to_numpy(dtype=float)
            vb = tb.loc[common, metric].to_numpy(dtype=float)
            d = (va - vb)[np.isfinite(va - vb)]
            p = paired_wilcoxon(va, vb)  # NaN: fewer than 2 pairs or identical scores
            mean = float(d.mean()) if len(d) else np.nan
            agrees = np.sign(mean) == sign
            verdict = ("no difference (identical scores)" if not np.any(d != 0) else
                       "reproduced (p < 0.05)" if agrees and p < 0.05 else
                       "same direction, not significant" if agrees else
                       "opposite, significant (p < 0.05)" if p < 0.05 else
                       "opposite direction, not significant")
            rows.append({"claim": claim, "comparison": f"{CONFIGS[a][0]} vs {CONFIGS[b][0]}",
                         "metric": metric, "expected sign of A − B": "+" if sign > 0 else "−",
                         "mean A − B": mean, "test pairs": len(d), "Wilcoxon p": p,
                         "verdict": verdict})
    return pd.DataFrame(rows)


class DiffeomorphicUNet(Reproduction):
    key, module = "diffeomorphic_unet", "regseg.reproductions.diffeomorphic_unet.reproduction"
    title = "Tables 1-3 of the diffeomorphic U-Net for lung CT (Bouabid et al.)"
    presets, default_preset = PRESETS, "quick"
    datasets = {"luna16": _luna16_spec(), "ixi10": _ixi10_spec()}

    def methods(self):
        out = {"initial": IdentityMethod("initial", "Initial (identity; not in the paper)")}
        out.update({k: DiffUNetMethod(k) for k in CONFIGS})
        out[LUNG_KEY] = LungPairMethod()
        return out

    def add_arguments(self, p):
        p.add_argument("--grid-origin", choices=["zero", "one"], default="zero",
                       help="zero: 0-based identity grid; one: released code (one-voxel shift)")
        p.add_argument("--dice-denominator", choices=["source", "warped"], default="source",
                       help="eq. 5's denominator: source = |T| + |S| as printed (default); "
                            "warped = |T| + |phi(S)| (V-Net soft Dice)")
        p.add_argument("--no-lung-pair", action="store_true",
                       help="skip stand-in (b), the lung CT pair")

    def describe(self, preset, args):
        from .model import DiffeomorphicUNetConfig, build_diffeomorphic_unet
        _, full = build_diffeomorphic_unet(DiffeomorphicUNetConfig(input_shape=(preset.cube,) * 3))
        full.summary(line_length=110)
        print(f"parameters: {full.count_params()}")
        return full.count_params()

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, ctx, registrars):
        from regseg.evaluation.pairs import evaluate_pairs

        data = atlas_data(ctx)
        metrics = pair_metrics(data.mask)
        rows, seconds, examples = [], [], {}
        brain = {k: r for k, r in registrars.items() if k != LUNG_KEY and r is not None}
        for k, fold in enumerate(data.folds):
            regs = fold_registrars(brain, k)
            for set_name in ("test", "train"):
                for i in getattr(fold, set_name):
                    ev = evaluate_pairs(
                        regs, [data.sources.load(i), data.atlas], [[0, 1]], structures=data.mask,
                        jacobian_mask=data.mask, pair_metrics=metrics,
                        nifti_dir=ctx.out_dir / "nifti" if set_name == "test" else None)
                    rows += _rows(set_name, k, ev)
                    if len(ev.seconds):
                        seconds.append(ev.seconds.assign(set=set_name, fold=k))
                    if set_name == "test":
                        for m, ex in ev.examples.items():
                            examples.setdefault(m, ex)
        epochs = {m: r.epochs_run for m, r in registrars.items() if isinstance(r, FoldRegistrars)}
        evaluation = AtlasEvaluation(pd.DataFrame(rows),
                                     pd.concat(seconds) if seconds else pd.DataFrame(),
                                     epochs_run=epochs, examples=examples)
        lung = registrars.get(LUNG_KEY)
        if lung is not None:
            evaluation.lung = self._evaluate_lung(ctx, lung)
            evaluation.tre = evaluation.lung["tre"]
        return evaluation

    def _evaluate_lung(self, ctx, registrar: FoldRegistrars) -> dict:
        from regseg.datasets.io import load_volume
        from regseg.datasets.lung_ct import lung_pair_folder
        from regseg.datasets.preprocessing import resample_onto
        from regseg.evaluation.landmarks import world_landmark_errors
        from regseg.evaluation.metrics import dice, hausdorff_distance
        from regseg.evaluation.pairs import IdentityRegistrar, evaluate_pairs

        data = lung_data(ctx, ctx.preset.lung_cube)
        mov, fix = data.followup, data.baseline
        cube = ctx.preset.lung_cube
        labels = {"grid identity": f"identity on the network grids ({cube}³ cubes, no training)",
                  LUNG_KEY: "diffeomorphic U-Net (α = 1e-5)"}
        ev = evaluate_pairs({"grid identity": IdentityRegistrar(), LUNG_KEY: registrar[0]},
                            [mov, fix], [[0, 1]], structures="lung", jacobian_mask="lung",
                            pair_metrics=pair_metrics("lung"),
                            nifti_dir=ctx.out_dir / "nifti" / "lung_pair")
        rows, landmarks = [], {}
        # no registration, in world coordinates on the native grids (the README's 35.3 mm)
        folder = lung_pair_folder(ctx.data_root)
        base = load_volume(folder / "3DCT_lung_baseline_mask.mha", label=True)
        follow = load_volume(folder / "3DCT_lung_followup_mask.mha", label=True)
        onto = resample_onto(follow, base, label=True).data > 0
        world = np.linalg.norm(mov.landmarks - fix.landmarks, axis=1)
        landmarks["no registration (world coordinates, native grids)"] = world
        rows.append({"method": "no registration (world coordinates, native grids)",
                     "Dice": float(dice(onto.astype(int), (base.data > 0).astype(int), [1])[0]),
                     "Hausdorff (mm)": hausdorff_distance(onto, base.data > 0, spacing=base.spacing),
                     "Hausdorff (voxels)": np.nan, "folded %": 0.0, "SDlogJ": 0.0})
        for row in _rows("pair", 0, ev):
            out = ev.examples[row["method"]]["outputs"] if row["method"] in ev.examples else None
            grid = out["grid"] if out is not None else np.stack(
                np.meshgrid(*[np.arange(s) for s in fix.shape], indexing="ij"), -1)
            errors = world_landmark_errors(fix.landmarks, fix.affine, mov.landmarks, mov.affine,
                                           grid)
            landmarks[labels[row["method"]]] = errors
            row["method"] = labels[row["method"]]
            rows.append(row)
        table = pd.DataFrame(rows).set_index("method")
        for name, e in landmarks.items():
            table.loc[name, "TRE mean (mm)"] = float(e.mean())
            table.loc[name, "TRE std (mm)"] = float(e.std())
            table.loc[name, "TRE median (mm)"] = float(np.median(e))
            table.loc[name, "TRE max (mm)"] = float(e.max())
        cols = ["TRE mean (mm)", "TRE std (mm)", "TRE median (mm)", "TRE max (mm)", "Dice",
                "Hausdorff (mm)", "Hausdorff (voxels)", "voxel agreement", "MSE", "CC",
                "folded %", "SDlogJ"]
        table = table.reindex(columns=cols)
        per_landmark = pd.DataFrame(landmarks)
        per_landmark.index.name = "landmark"
        tre = ev.tre.assign(method=lambda d: d["method"].map(labels)) if len(ev.tre) else ev.tre
        return {"table": table, "landmarks": per_landmark, "tre": tre,
                "example": ev.examples.get(LUNG_KEY), "epochs": registrar.epochs_run[0],
                "training": (f"the follow-up, the right lungs of POPI phase 00 and CIP ct-64 "
                             f"(lung_ct/), and {ctx.preset.lung_copies} copies of the follow-up "
                             f"under random smooth deformations (lattice 5³, ≤ "
                             f"{ctx.preset.lung_max_displacement:g} voxels); validation: "
                             f"{ctx.preset.lung_validation_copies} other copies; never a "
                             f"landmark")}

    # -- tables --------------------------------------------------------------------------------
    def header(self, ctx, evaluation):
        data = atlas_data(ctx)
        folds = data.folds
        epochs = {k: v for k, v in evaluation.epochs_run.items()}
        return {"atlas": data.atlas.subject_id,
                "folds": f"{len(folds)} (" + "; ".join(
                    f"train {len(f.train)} / validation {len(f.validation)} / test "
                    f"{len(f.test)}" for f in folds) + ")",
                "test pairs": f"{sum(len(f.test) for f in folds)} sources -> atlas",
                "epochs run (per fold)": "; ".join(f"{k}: {v}" for k, v in epochs.items())}

    def _config_table(self, ctx, evaluation, keys, published_table):
        from regseg.evaluation.tables import comparison_table

        metrics = evaluation.metrics
        rows = [f"{s} {m}" for s in ("train", "test") for m in METRICS] + ["epochs run"]
        ours, pub = {}, {}
        for key in keys:
            label = CONFIGS[key][0] if key in CONFIGS else "Initial (identity)"
            sub = metrics[metrics["method"] == key]
            if not len(sub):
                continue
            summary = {}
            for s in ("train", "test"):
                part = sub[sub["set"] == s]
                for m in METRICS:
                    summary[f"{s} {m}"] = (part[m].mean(), part[m].std(ddof=0))
            ep = evaluation.epochs_run.get(key)
            if ep:
                summary["epochs run"] = (float(np.mean(ep)), float(np.std(ep)))
            ours[label] = pd.DataFrame(summary, index=["mean", "std"]).T
            if key in published_table:
                values = {f"{s} {PAPER_METRIC[m]}": published_table[key][s][m]
                          for s in ("train", "test") for m in published.METRICS}
                values["epochs run"] = published.CONFIGS[key][1]
                pub[label] = values
        return comparison_table(ours, pub, rows)

    def report(self, ctx, evaluation):
        suffix = ctx.title_suffix
        n_test = int((evaluation.metrics["set"] == "test").sum() / max(
            1, evaluation.metrics["method"].nunique())) if len(evaluation.metrics) else 0
        common = (f"Ours: mean ± std over source -> atlas pairs ({n_test} test pairs: every "
                  f"source tested once across the folds; train rows: each fold's training "
                  f"sources through that fold's network). Published: Bouabid et al. (LUNA16, 98 "
                  f"train / 33 test scans, 256³), no std printed. MSE and CC (squared global "
                  f"Pearson correlation) of the warped source and the atlas; Dice of the warped "
                  f"source mask (trilinear, > 0.5) and the atlas mask — the published 'Dice' is "
                  f"the released code's voxel agreement, our 'voxel agreement' row; Hausdorff = "
                  f"maximum surface distance, voxels of our {ctx.preset.cube}³ grid (paper: "
                  f"256³) and mm; folded % and SDlogJ of the Jacobian determinant inside the "
                  f"atlas mask. 'epochs run': early stopping (patience {ctx.preset.patience}) "
                  f"or the preset's {ctx.preset.epochs}.")
        tables = [
            Table("table1_regularisation", self._config_table(
                ctx, evaluation, TABLE1_KEYS, published.TABLE1),
                f"Table 1: atlas registration without the mask term, α sweep{suffix}",
                common + f" The identity and α = {EXTRA_ALPHA:g} columns are ours, not the "
                         f"paper's."),
            Table("table2_similarity", self._config_table(
                ctx, evaluation, TABLE2_KEYS, published.TABLE2),
                f"Table 2: MSE against CC at α = 1e-5{suffix}", common),
            Table("table3_segmentation", self._config_table(
                ctx, evaluation, TABLE3_KEYS, published.TABLE3),
                f"Table 3: with the mask term (eq. 5){suffix}",
                common + f" The last column (β = {EXTRA_BETA:g}) is ours, not the paper's."),
        ]
        claims = _claim_rows(evaluation.metrics)
        if len(claims):
            tables.append(Table("claims_paired_tests", claims.set_index("claim"),
                                f"§5 claims: paired Wilcoxon tests on the test pairs{suffix}",
                                "A − B per test pair (same source, same fold); reproduced = the "
                                "paper's direction with p < 0.05."))
        per_pair = evaluation.metrics.set_index("pair")
        tables.append(Table("per_pair_metrics", per_pair, f"Per-pair scores{suffix}",
                            "Every source -> atlas pair of every fold and method."))
        if evaluation.lung is not None:
            lung = evaluation.lung
            tables.append(Table(
                "lung_pair", lung["table"],
                "Lung CT pair (real CT, one patient, follow-up -> baseline; STAND-IN for LUNA16)",
                f"Network trained on: {lung['training']}; {lung['epochs']} epochs. TRE over the "
                f"51 landmarks in world coordinates (mm); Dice and Hausdorff of the lung masks "
                f"(voxels of the baseline's {ctx.preset.lung_cube}³ grid and mm); folded % and "
                f"SDlogJ inside the baseline lung mask. 'no registration': the scans in their "
                f"scanner coordinates (follow-up mask resampled onto the baseline's native "
                f"grid)."))
            tables.append(Table("lung_pair_landmarks", lung["landmarks"],
                                "Lung CT pair: error of every landmark (mm; STAND-IN for LUNA16)"))
        return tables

    # -- figures -------------------------------------------------------------------------------
    def figures(self, ctx, evaluation, results_dir):
        ex = evaluation.examples.get("a1e-5")
        if ex is not None:
            atlas_figure(ex["fixed"].image, ex["moving"].image, ex["outputs"]["warped"],
                         ex["outputs"]["grid"], results_dir / "fig_brain_atlas_registration.png",
                         title=f"α = 1e-5, {ex['moving'].subject_id} -> atlas "
                               f"{ex['fixed'].subject_id} ({ctx.dataset_key}, stand-in)"
                               if not ctx.splits.is_paper_dataset else
                               f"α = 1e-5, {ex['moving'].subject_id} -> atlas "
                               f"{ex['fixed'].subject_id} ({ctx.dataset_key})")
        if evaluation.lung is not None and evaluation.lung["example"] is not None:
            ex = evaluation.lung["example"]
            atlas_figure(ex["fixed"].image, ex["moving"].image, ex["outputs"]["warped"],
                         ex["outputs"]["grid"], results_dir / "fig_lung_pair_registration.png",
                         title="lung CT pair: follow-up -> baseline (real CT, stand-in)")


def atlas_figure(atlas, source, warped, grid, path, *, title="", spacing_lines=4):
    """Atlas, source, warped source and the deformation grid, mid-slices of the three planes.

    The grid column draws the lines of constant sampling coordinate (every ``spacing_lines``
    voxels of the source) of the two in-plane components: straight, evenly spaced lines for the
    identity. Written as PNG (atomically).

    Args:
        atlas, source, warped: ``(X, Y, Z)`` images on one grid.
        grid: ``(X, Y, Z, 3)`` sampling grid, voxels of the source.
        path: output file.
    """
    from matplotlib.figure import Figure

    from regseg.fileio import atomic_path

    images = [np.asarray(a, dtype=np.float64) for a in (atlas, source, warped)]
    grid = np.asarray(grid, dtype=np.float64)
    lo, hi = np.percentile(np.concatenate([a.ravel() for a in images]), [0.5, 99.5])
    centre = [s // 2 for s in images[0].shape]
    planes = [("axial", 2), ("coronal", 1), ("sagittal", 0)]
    fig = Figure(figsize=(11, 8.5))
    axes = fig.subplots(3, 4, squeeze=False)
    for r, (plane, axis) in enumerate(planes):
        index = [slice(None)] * 3
        index[axis] = centre[axis]
        in_plane = [a for a in range(3) if a != axis]
        for c, img in enumerate(images):
            axes[r, c].imshow(img[tuple(index)].T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        ax = axes[r, 3]
        ax.imshow(images[2][tuple(index)].T, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                  alpha=0.35)
        for comp, colour in zip(in_plane, ("tab:red", "tab:blue")):
            g = grid[tuple(index) + (comp,)].T
            levels = np.arange(np.floor(g.min()), np.ceil(g.max()) + 1, spacing_lines)
            if len(levels) > 1:
                ax.contour(g, levels=levels, colors=colour, linewidths=0.6)
        axes[r, 0].set_ylabel(plane)
        for c in range(4):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(["atlas (fixed)", "source (moving)", "warped source",
                                      "deformation grid"][c], fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    return path


REPRODUCTION = DiffeomorphicUNet()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(REPRODUCTION.main())
