"""U-ReSNet (Estienne et al., MICCAI 2019) on the shared runner: presets, methods, tables.

Table 1 compares, on the same test pairs, **Rigid** (the §3.5 centre-of-mass translation alone:
identity after preprocessing), **Christodoulidis et al.** (the registration branch alone, eq. 4
+ 5) and **U-ReSNet** (eq. 7); §4.1 reports U-ReSNet's segmentation Dice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from regseg.training.folds import cross_validation_splits, fit_folds, fold_registrars
from regseg.training.runner import (IdentityMethod, KerasMethod, Preset, Reproduction, Table,
                                    demo_dataset, folder_dataset, ixi10_dataset, oasis3_dataset)

from . import published

#: ``--seg-dice`` choices (:data:`regseg.reproductions.ureSnet.model.SEG_DICE`; not imported here
#: so that the command line does not import Keras)
SEG_DICE = ("released", "mean-with-background", "generalised")


@dataclass(frozen=True)
class UReSNetPreset(Preset):
    """Adds §4's schedule and §3.5's split; ``paper`` values cited in ``PRESETS``."""

    learning_rate: float = 1e-3  # §4
    halve_every: int = 15  # §4: "decrease of the learning by half every 15 epochs"
    pairs_per_epoch: int | None = None  # None: one pass over the training subjects (§4)
    test_pairs: str = "all"  # "all" ordered pairs i != j, or "consecutive" i -> i+1
    split_sizes: tuple = (7, 1, 2)
    #: k-fold cross-validation (0: the single split of ``split_sizes``); each fold trains on the
    #: other folds' subjects, with no validation subject, and tests on all ordered pairs of its own
    folds: int = 0


#: epochs of the quick preset (5 pairs each, batch 1), chosen from the measured step time so
#: that the preset stays within 25 min on 2 cores: 15.6 s per epoch for both networks and both
#: folds in float32 (13.9 min measured at 40 epochs, 11.9 of them training); mixed bfloat16
#: with XLA on the warp makes the steps 1.54x (U-ReSNet) and 1.36x (registration only) faster
#: (results/benchmarks/cpu-2cores-amd-epyc/quick.md), about 10.6 s per epoch: 100 epochs
QUICK_EPOCHS = 100
#: §4 halves the rate "every 15 epochs" of 520 OASIS-3 training subjects at batch 4 (§3.5):
#: every 15 * 520 / 4 = 1,950 optimiser steps. The quick preset counts the same optimiser steps
#: (5 per epoch), so it halves every 390 epochs, i.e. never within its QUICK_EPOCHS * 5 steps,
#: exactly as the paper's schedule over its first QUICK_EPOCHS * 5 steps. (Scaling the halving
#: to the run instead cut the rate 32-fold within 200 steps and the networks learnt nothing.)
PAPER_HALVING_STEPS = 15 * 520 // 4

PRESETS = {
    "paper": UReSNetPreset("paper", "oasis3", 80, 4, split_sizes=(520, 67, 156),
                           test_pairs="consecutive",
                           description="OASIS-3 at 1 mm, crop 160x176x208, batch 4, Adam 1e-3 "
                                       "halved every 15 epochs, 80 epochs (paper §3.5, §4)"),
    # 2-fold cross-validation on ixi10 (issue 6): 5 training / 5 test subjects per fold, no
    # validation subject, all 20 ordered test pairs per fold. Both networks take the same optimiser
    # steps (QUICK_EPOCHS x 5 pairs, batch 1); the learning rate follows §4's halving counted in
    # optimiser steps (PAPER_HALVING_STEPS), which the quick preset never reaches.
    "quick": UReSNetPreset("quick", "ixi10", QUICK_EPOCHS, 1, pairs_per_epoch=5,
                           halve_every=PAPER_HALVING_STEPS // 5, folds=2,
                           precision="mixed_bfloat16",  # measured faster (issue 11)
                           description=f"ixi10 (real IXI T1, 2 mm), 2-fold cross-validation: 5 "
                                       f"train / 5 test subjects per fold, no validation; "
                                       f"{QUICK_EPOCHS} epochs of 5 pairs (batch 1, "
                                       f"{QUICK_EPOCHS * 5} optimiser steps per network and fold)"
                                       f", Adam 1e-3 halved every {PAPER_HALVING_STEPS:,} "
                                       f"optimiser steps as §4 (15 epochs x 520 subjects / batch "
                                       f"4), so constant here; mixed bfloat16 "
                                       f"convolutions; <= 25 min on 2 cores"),
    "smoke": UReSNetPreset("smoke", "ixi10", 1, 1, pairs_per_epoch=2,
                           description="end-to-end check for the tests: 1 epoch of 2 pairs"),
}


def _lcc_window_voxels(window_mm, spacing):
    from .model import lcc_window_voxels
    return lcc_window_voxels(window_mm, spacing)


class UReSNetMethod(KerasMethod):
    """U-ReSNet (eq. 7) or, with ``segmentation=False``, the registration-only network."""

    def __init__(self, key, label, segmentation):
        self.key, self.label, self.segmentation = key, label, segmentation

    def model_config(self, ctx):
        sample = ctx.splits.train.load(0)
        return {"input_shape": list(sample.image.shape), "segmentation": self.segmentation,
                "n_classes": len(ctx.splits.train.class_names),
                "grid_origin": ctx.args.grid_origin,
                "seg_dice": ctx.args.seg_dice,
                "lcc_window_mm": float(ctx.args.lcc_window_mm),
                "lcc_window": _lcc_window_voxels(ctx.args.lcc_window_mm, sample.spacing)}

    def fit(self, ctx, run_dir):
        # cross-validation: one network per fold, runs/ureSnet/<preset>-<data>/fold<k>/<method>
        return fit_folds(super().fit, ctx, run_dir)

    def _config(self, config):
        from .model import UReSNetConfig
        return UReSNetConfig(**{**config, "input_shape": tuple(config["input_shape"])})

    def build(self, config):
        from .model import build_ureSnet
        return build_ureSnet(self._config(config))

    def compile(self, train_model, config, ctx):
        import keras

        from .model import losses_and_weights
        loss, weights = losses_and_weights(self._config(config))
        train_model.compile(optimizer=keras.optimizers.Adam(ctx.preset.learning_rate),
                            loss=loss, loss_weights=weights)

    def training_mapping(self, config):
        classes = config["n_classes"] + 1

        def mapping(moving, fixed):
            inputs = {"moving": moving.image[..., None].astype(np.float32),
                      "reference": fixed.image[..., None].astype(np.float32)}
            targets = {"deformed": inputs["reference"]}
            if config["segmentation"]:
                eye = np.eye(classes, dtype=np.float32)
                targets.update(moving_seg=eye[moving.segmentation], warped_seg=eye[fixed.segmentation])
            return inputs, targets
        return mapping

    def schedule(self, ctx):
        from regseg.training.fit import step_decay
        return step_decay(ctx.preset.learning_rate, ctx.preset.halve_every)

    def registrar(self, predict_model, config):
        from .model import UReSNetRegistrar
        return UReSNetRegistrar(predict_model)


def _normalised(make_spec, recipe_name, folds=False):
    """A dataset spec applying ``--normalisation`` (and the preset's folds) at load time."""
    base = make_spec()

    def load(root, ctx):
        import regseg.datasets as ds
        from regseg.datasets.recipes import ureSnet_normalisation
        norm = getattr(ctx.args, "normalisation", "paper")
        recipe = None
        if norm != "paper":
            recipe = ureSnet_normalisation(getattr(ds, recipe_name)(), norm)
        splits = make_spec(recipe).load(root, ctx)
        k = getattr(ctx.preset, "folds", 0)
        if k:
            if not folds:
                from regseg.training.runner import UsageError
                raise UsageError(f"--dataset {base.key}: no cross-validation folds; use a preset "
                                 f"without folds")
            # contiguous blocks of the subjects sorted by id, no validation subject, at least
            # 2 test subjects per fold (all ordered pairs among them)
            splits = cross_validation_splits(splits, k, min_test=2)
        return splits

    return replace(base, load=load)


class UReSNet(Reproduction):
    key, module = "ureSnet", "regseg.reproductions.ureSnet.reproduction"
    title = "Table 1 of U-ReSNet (Estienne et al., MICCAI 2019)"
    presets, default_preset = PRESETS, "quick"
    datasets = {"oasis3": _normalised(oasis3_dataset, "oasis3_recipe"),
                "ixi10": _normalised(ixi10_dataset, "ixi10_recipe", folds=True),
                "folder": folder_dataset(), "demo": demo_dataset()}

    def methods(self):
        # "Rigid" (Table 1): §3.5's centre-of-mass translation alone = identity after preprocessing
        return {"rigid": IdentityMethod("rigid", "Rigid"),
                "registration_only": UReSNetMethod("registration_only", "Christodoulidis et al.",
                                                   False),
                "ureSnet": UReSNetMethod("ureSnet", "U-ReSNet", True)}

    def add_arguments(self, p):
        p.add_argument("--grid-origin", choices=["zero", "one"], default="zero",
                       help="zero: paper-correct identity; one: released code (one-voxel shift)")
        p.add_argument("--seg-dice", choices=SEG_DICE, default="released",
                       help="Dice of eq. 6: released (default; sum of the 3 foreground soft Dice "
                            "terms, released losses.generalised_dice), mean-with-background "
                            "(1 - mean over the 4 channels), generalised (Sudre et al. 2017)")
        p.add_argument("--normalisation", choices=["paper", "released"], default="paper",
                       help="paper: z-score over the brain (§3.5); released: then clip ±5 and "
                            "min-max to [0, 1] (released code)")
        p.add_argument("--lcc-window-mm", type=float, default=9.0,
                       help="LCC window of eq. 4 in mm (default 9: 5 voxels at 2 mm, 9 at 1 mm; "
                            "the odd voxel count nearest to mm / voxel size)")
        p.add_argument("--dice-rule", choices=["argmax", "released"], default="argmax",
                       help="registration Dice of Table 1: argmax of the warped one-hot labels "
                            "(default) or released (each warped channel > 0); per_pair_dice.csv "
                            "holds both")

    def describe(self, preset, args):
        from .model import UReSNetConfig, build_ureSnet
        shape = (160, 208, 176) if preset.dataset == "oasis3" else (80, 104, 88)
        _, full = build_ureSnet(UReSNetConfig(input_shape=shape))
        full.summary(line_length=110)
        print(f"parameters: {full.count_params()}")
        return full.count_params()

    def evaluate(self, ctx, registrars):
        """``evaluate_pairs`` on the test pairs (of every fold), with both Dice rules and the
        deformation statistics inside the fixed image's brain mask."""
        from regseg.evaluation.comparison import merge_folds
        from regseg.evaluation.pairs import evaluate_pairs
        from regseg.training.pairs import all_ordered_pairs, consecutive_pairs
        labels = {k: m.label for k, m in self.methods().items()}
        primary = getattr(ctx.args, "dice_rule", "argmax")
        other = "released" if primary == "argmax" else "argmax"
        folds = getattr(ctx.splits, "folds", None) or [ctx.splits]
        parts = []
        for k, split in enumerate(folds):
            test = split.test
            pairs = (all_ordered_pairs if ctx.preset.test_pairs == "all"
                     else consecutive_pairs)(len(test))
            regs = {labels[m]: r for m, r in fold_registrars(registrars, k).items()}
            mask = "brain" if len(test) and "brain" in test.load(0).masks else None
            ev = evaluate_pairs(regs, test, pairs, segmentation="segmentation",
                                label_rule=primary, extra_label_rules=(other,),
                                jacobian_mask=mask, learn2reg_sdlogj=True,
                                nifti_dir=ctx.out_dir / "nifti",
                                folder_names={v: m for m, v in labels.items()})
            parts.append(ev)
        return merge_folds(parts, primary)

    def header(self, ctx, evaluation):
        s = ctx.splits
        folds = getattr(s, "folds", None)
        n_unordered = len({"<->".join(sorted(p.split("->"))) for p in evaluation.pairs})
        if folds:
            return {"protocol": f"{len(folds)}-fold cross-validation (replaces the paper's 156 "
                                f"OASIS-3 test subjects, consecutive pairs): per fold "
                                f"{len(folds[0].train)} training and {len(folds[0].test)} test "
                                f"subjects, no validation subject",
                    "test pairs": f"{len(evaluation.pairs)} ordered = {n_unordered} unordered "
                                  f"pairs (all ordered pairs within each fold's test subjects)",
                    "Dice rule": f"{getattr(evaluation, 'rule', 'argmax')} (Table 1)"}
        return {"test pairs": f"{len(evaluation.pairs)} ({ctx.preset.test_pairs} ordered pairs of "
                              f"{len(s.test)} test subjects; {n_unordered} unordered)",
                "subjects": f"train {len(s.train)}, validation {len(s.validation)}, "
                            f"test {len(s.test)}",
                "Dice rule": f"{getattr(evaluation, 'rule', 'argmax')} (Table 1)"}

    def _table1(self, dice):
        from regseg.evaluation.comparison import unordered
        from regseg.evaluation.tables import structure_table
        return structure_table({m: unordered(df) for m, df in dice.items()}, published.TABLE1,
                               published.STRUCTURES, mean_row="mean", published_mean={
                                   m: published.mean_row(m) for m in published.METHODS})

    def report(self, ctx, evaluation):
        import pandas as pd

        from regseg.evaluation.comparison import PAIRED_COMPARISON_NOTE, paired_comparison
        from regseg.evaluation.tables import structure_table
        rule = getattr(evaluation, "rule", "argmax")
        note = ("Dice per structure, mean ± std over unordered test pairs (the two directions "
                "averaged). 'published' = Estienne et al. 2019, Table 1 (OASIS-3). 'mean of 15' = "
                "mean over structures (published value computed from Table 1; the paper prints "
                f"none). Labels warped by the {rule!r} rule.")
        tables = [Table("table1_registration_dice", self._table1(evaluation.dice),
                        f"U-ReSNet Table 1: registration Dice{ctx.title_suffix}", note)]
        fold = getattr(evaluation, "fold", {})
        n_folds = len(set(fold.values()))
        if n_folds > 1:
            for k in range(1, n_folds + 1):
                keep = [p for p, f in fold.items() if f == k]
                tables.append(Table(f"table1_registration_dice_fold{k}",
                                    self._table1({m: df.loc[keep] for m, df in
                                                  evaluation.dice.items()}),
                                    f"U-ReSNet Table 1, fold {k}: registration Dice"
                                    f"{ctx.title_suffix}", note))
        for other, dice in getattr(evaluation, "dice_rules", {}).items():
            tables.append(Table(f"table1_registration_dice_{other}_rule", self._table1(dice),
                                f"U-ReSNet Table 1 by the {other!r} Dice rule{ctx.title_suffix}",
                                note.replace(f"{rule!r} rule", f"{other!r} rule")
                                + (" released: each trilinearly warped one-hot channel > 0 "
                                   "(the released --use-mask evaluation); structures whose left "
                                   "and right labels the recipe merged are scored merged."
                                   if other == "released" else "")))
        labels = [m for m in ("U-ReSNet", "Christodoulidis et al.", "Rigid")
                  if m in evaluation.dice]
        comparisons = [(a, b) for a, b in (("U-ReSNet", "Christodoulidis et al."),
                                           ("U-ReSNet", "Rigid"),
                                           ("Christodoulidis et al.", "Rigid"))
                       if a in labels and b in labels]
        if comparisons:
            rows = pd.DataFrame([paired_comparison(evaluation.dice, a, b, seed=ctx.seed)
                                 for a, b in comparisons]).set_index("comparison")
            tables.append(Table(
                "paired_comparison", rows,
                f"U-ReSNet: paired comparison of the mean registration Dice{ctx.title_suffix}",
                "Mean over the 15 structures per unordered test pair (directions averaged); "
                f"difference a - b; {PAIRED_COMPARISON_NOTE}; subject-level bootstrap 95 % CI "
                f"(subjects resampled, 2000 draws, seed {ctx.seed}). This protocol replaces the paper's "
                "156 OASIS-3 test subjects with consecutive pairs, which reports no test."))
        if "U-ReSNet" in evaluation.segmentation:
            seg = structure_table({"U-ReSNet": evaluation.segmentation["U-ReSNet"]},
                                  {"U-ReSNet": published.SEGMENTATION},
                                  list(published.SEGMENTATION), mean_row=None)
            tables.append(Table("segmentation_dice", seg,
                                f"U-ReSNet §4.1: segmentation Dice{ctx.title_suffix}",
                                "Dice of the predicted moving segmentation, mean ± std over test "
                                "pairs; published = §4.1 (OASIS-3; its CeblC and LV values may "
                                "be swapped, see the README)."))
        return tables

    def figures(self, ctx, evaluation, results_dir):
        from regseg.evaluation import figures
        ex = evaluation.examples.get("U-ReSNet")
        if ex is None:
            return
        mov, fix, out = ex["moving"], ex["fixed"], ex["outputs"]
        name = ctx.dataset_name
        figures.registration_figure(mov.image, fix.image, out["warped"], out["displacement"],
                                    results_dir / "fig2_registration.png",
                                    title=f"U-ReSNet, {mov.subject_id} -> {fix.subject_id} — {name}")
        figures.segmentation_figure(mov.image, fix.image, out["warped"], mov.segmentation,
                                    out["moving_seg_labels"], list(ctx.splits.test.class_names),
                                    results_dir / "fig3_segmentation.png", overlay_on="moving",
                                    title=f"U-ReSNet segmentation — {name}")


REPRODUCTION = UReSNet()
