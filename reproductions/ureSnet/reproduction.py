"""U-ReSNet (Estienne et al., MICCAI 2019) on the shared runner: presets, methods, tables.

Table 1 compares, on the same test pairs, **Rigid** (the §3.5 centre-of-mass translation alone:
identity after preprocessing), **Christodoulidis et al.** (the registration branch alone, eq. 4
+ 5) and **U-ReSNet** (eq. 7); §4.1 reports U-ReSNet's segmentation Dice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from regseg.training.runner import (IdentityMethod, KerasMethod, Preset, Reproduction, Table,
                                    demo_dataset, folder_dataset, ixi10_dataset, oasis3_dataset)

from . import published


@dataclass(frozen=True)
class UReSNetPreset(Preset):
    """Adds §4's schedule and §3.5's split; ``paper`` values cited in ``PRESETS``."""

    learning_rate: float = 1e-3  # §4
    halve_every: int = 15  # §4: "decrease of the learning by half every 15 epochs"
    pairs_per_epoch: int | None = None  # None: one pass over the training subjects (§4)
    test_pairs: str = "all"  # "all" ordered pairs i != j, or "consecutive" i -> i+1
    split_sizes: tuple = (7, 1, 2)


PRESETS = {
    "paper": UReSNetPreset("paper", "oasis3", 80, 4, split_sizes=(520, 67, 156),
                           test_pairs="consecutive",
                           description="OASIS-3 at 1 mm, crop 160x176x208, batch 4, Adam 1e-3 "
                                       "halved every 15 epochs, 80 epochs (paper §3.5, §4)"),
    # The paper halves every 15 epochs of 520 pairs (7,800 pairs); the quick preset's 80 epochs
    # of 7 pairs (560 steps) all fall inside the paper's first stage at 1e-3.
    "quick": UReSNetPreset("quick", "ixi10", 80, 1, pairs_per_epoch=7, halve_every=15 * 520 // 7,
                           description="ixi10 (real IXI T1, 2 mm): 7 train / 1 validation / 2 test "
                                       "subjects, 80 epochs (§4) of 7 pairs, batch 1, Adam 1e-3 "
                                       "halved every 7,800 steps as in §4; <= 20 min on 2 cores"),
    "smoke": UReSNetPreset("smoke", "ixi10", 1, 1, pairs_per_epoch=2,
                           description="end-to-end check for the tests: 1 epoch of 2 pairs"),
}


class UReSNetMethod(KerasMethod):
    """U-ReSNet (eq. 7) or, with ``segmentation=False``, the registration-only network."""

    def __init__(self, key, label, segmentation):
        self.key, self.label, self.segmentation = key, label, segmentation

    def model_config(self, ctx):
        sample = ctx.splits.train.load(0)
        return {"input_shape": list(sample.image.shape), "segmentation": self.segmentation,
                "n_classes": len(ctx.splits.train.class_names),
                "grid_origin": ctx.args.grid_origin,
                "dice_background": not ctx.args.dice_foreground_only}

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


class UReSNet(Reproduction):
    key, module = "ureSnet", "regseg.reproductions.ureSnet.reproduction"
    title = "Table 1 of U-ReSNet (Estienne et al., MICCAI 2019)"
    presets, default_preset = PRESETS, "quick"
    datasets = {"oasis3": oasis3_dataset(), "ixi10": ixi10_dataset(), "folder": folder_dataset(),
                "demo": demo_dataset()}

    def methods(self):
        # "Rigid" (Table 1): §3.5's centre-of-mass translation alone = identity after preprocessing
        return {"rigid": IdentityMethod("rigid", "Rigid"),
                "registration_only": UReSNetMethod("registration_only", "Christodoulidis et al.",
                                                   False),
                "ureSnet": UReSNetMethod("ureSnet", "U-ReSNet", True)}

    def add_arguments(self, p):
        p.add_argument("--grid-origin", choices=["zero", "one"], default="zero",
                       help="zero: paper-correct identity; one: released code (one-voxel shift)")
        p.add_argument("--dice-foreground-only", action="store_true",
                       help="soft Dice of eq. 6 over the 3 foreground channels only (released "
                            "code); default: background channel included (README, fidelity)")

    def describe(self, preset, args):
        from .model import UReSNetConfig, build_ureSnet
        shape = (160, 208, 176) if preset.dataset == "oasis3" else (80, 104, 88)
        _, full = build_ureSnet(UReSNetConfig(input_shape=shape))
        full.summary(line_length=110)
        print(f"parameters: {full.count_params()}")
        return full.count_params()

    def evaluate(self, ctx, registrars):
        from regseg.evaluation.pairs import evaluate_pairs
        from regseg.training.pairs import all_ordered_pairs, consecutive_pairs
        test = ctx.splits.test
        pairs = (all_ordered_pairs if ctx.preset.test_pairs == "all" else consecutive_pairs)(len(test))
        labels = {k: m.label for k, m in self.methods().items()}
        return evaluate_pairs({labels[k]: r for k, r in registrars.items()}, test, pairs,
                              segmentation="segmentation", nifti_dir=ctx.out_dir / "nifti",
                              folder_names={v: k for k, v in labels.items()})

    def header(self, ctx, evaluation):
        s = ctx.splits
        return {"test pairs": f"{len(evaluation.pairs)} ({ctx.preset.test_pairs} ordered pairs of "
                              f"{len(s.test)} test subjects)",
                "subjects": f"train {len(s.train)}, validation {len(s.validation)}, "
                            f"test {len(s.test)}"}

    def report(self, ctx, evaluation):
        from regseg.evaluation.tables import structure_table
        table1 = structure_table(evaluation.dice, published.TABLE1, published.STRUCTURES,
                                 mean_row="mean", published_mean={
                                     m: published.mean_row(m) for m in published.METHODS})
        tables = [Table("table1_registration_dice", table1,
                        f"U-ReSNet Table 1: registration Dice{ctx.title_suffix}",
                        "Dice per structure, mean ± std over test pairs. 'published' = Estienne "
                        "et al. 2019, Table 1 (OASIS-3). 'mean of 15' = mean over structures "
                        "(published value computed from Table 1; the paper prints none).")]
        if "U-ReSNet" in evaluation.segmentation:
            seg = structure_table({"U-ReSNet": evaluation.segmentation["U-ReSNet"]},
                                  {"U-ReSNet": published.SEGMENTATION},
                                  list(published.SEGMENTATION), mean_row=None)
            tables.append(Table("segmentation_dice", seg,
                                f"U-ReSNet §4.1: segmentation Dice{ctx.title_suffix}",
                                "Dice of the predicted moving segmentation, mean ± std over test "
                                "pairs; published = §4.1 (OASIS-3)."))
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
