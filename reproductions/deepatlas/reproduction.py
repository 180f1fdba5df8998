"""DeepAtlas (Xu & Niethammer, MICCAI 2019) on the shared runner: presets, methods, tables.

Every row of Tables 1 and 2 is a training run on the shared harness (§3):

* **Baseline segmentation** (N labeled images, L_sp only) and **Baseline registration** (all M
  training images, eq. 1 with L_a only between two labeled images; N = 0 is unsupervised), Adam
  1e-3;
* **Semi-DA**: one network trained with the other one fixed (F_s with the baseline F_R fixed,
  F_R with the baseline F_s fixed; for N = 1, F_s from scratch with the unsupervised F_R);
* **DA**: both networks alternately trained, 1 segmentation step : 20 registration steps
  (:class:`regseg.training.alternating.AlternatingModel`), initialised from the baselines (for
  N = 1 from Semi-DA's F_s and the unsupervised F_R); Adam 1e-4 (F_s) and 5e-4 (F_R).

All decay by 0.2 (at half the epochs, as the released ``train_seg.py``'s milestones).  The
best epoch on the validation images ("The best models based on validation performance are
evaluated", §3) is kept.  Test: registration Dice on random test pairs
(:func:`regseg.evaluation.pairs.evaluate_pairs`), segmentation Dice on the test images
(:func:`regseg.evaluation.segmentation.evaluate_segmentations`), Mann-Whitney U (§3) and the
paired Wilcoxon test, Benjamini-Hochberg FDR.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from regseg.training.runner import (DatasetSpec, KerasMethod, Preset, Reproduction, Table,
                                    TrainingPlan)

from . import published

KINDS = ("baseline_seg", "baseline_reg", "semi_seg", "semi_reg", "da")
_SEGMENTS = ("baseline_seg", "semi_seg", "da")
_REGISTERS = ("baseline_reg", "semi_reg", "da")


@dataclass(frozen=True)
class DeepAtlasPreset(Preset):
    """Adds §3's settings (cited in ``PRESETS`` and the README's fidelity table).

    Attributes:
        labeled: the numbers N of manually labeled training images (one experiment each).
        all_labeled: also train the baselines with every training image labeled (N = M).
        split_sizes: ``(train, validation, test)`` images; ``None``: the paper's Mindboggle
            split (OASIS-TRT-20 for validation and test).
        test_pairs: random ordered test pairs for registration Dice (all if fewer exist).
        spacing_mm, box: voxel size and RAS box (voxels) of the preprocessing.
        lambda_r, lambda_a, lambda_sp: §3 loss weights.
        lr_baseline, lr_registration, lr_segmentation: §3 Adam rates.
        decay, decay_at: learning rates times ``decay`` from ``decay_at`` of the epochs on.
        ratio: segmentation : registration steps of DA (§2.3: 1:20).
        seg_steps, reg_steps, semi_seg_steps, semi_reg_steps, da_steps: optimiser steps per
            epoch of each kind of run (baseline segmentation, baseline registration, Semi-DA
            segmentation, Semi-DA registration, DA).
        flip: sagittal flips as training augmentation (§3, brain).
        labeled_subset: take the labeled images from this subset (§3, brain: MMRR-21).
        reference_id: the training image used as affine reference (hippocampus, knee).
        table: which published table ("table1" knee, "table2" brain).
    """

    labeled: tuple = (1, 5)
    all_labeled: bool = True
    split_sizes: tuple | None = (200, 10, 51)
    test_pairs: int = 200
    spacing_mm: float = 1.0
    box: tuple = (48, 64, 48)
    lambda_r: float = 20000.0
    lambda_a: float = 3.0
    lambda_sp: float = 3.0
    lr_baseline: float = 1e-3
    lr_registration: float = 5e-4
    lr_segmentation: float = 1e-4
    decay: float = 0.2
    decay_at: float = 0.5
    ratio: tuple = (1, 20)
    seg_steps: int = 100
    reg_steps: int = 100
    semi_seg_steps: int = 100
    semi_reg_steps: int = 100
    da_steps: int = 105
    flip: bool = False
    labeled_subset: str | None = None
    reference_id: str | None = None
    table: str = "table1"

    def steps(self, kind: str) -> int:
        """Optimiser steps per epoch of a run of ``kind``."""
        return {"baseline_seg": self.seg_steps, "baseline_reg": self.reg_steps,
                "semi_seg": self.semi_seg_steps, "semi_reg": self.semi_reg_steps,
                "da": self.da_steps}[kind]


def stand_in_lambda_r(paper_lambda: float, paper_spacing: float, paper_box, spacing: float,
                      box) -> float:
    """lambda_r that penalises the same physical bending on a stand-in grid as the paper's
    lambda_r on the paper's grid.

    Eq. 5 is computed on the displacement in [-1, 1] units with per-voxel differences (§3, and
    :func:`~.model.regularity_loss`): a smooth displacement field ``v`` in mm gives, for
    component ``k``, the normalised field ``2 v_k / F_k`` (``F_k = (n_k - 1) h`` mm between the
    first and last voxel centres) and second differences ``h^2 d^2(2 v_k / F_k)``.  So ``L_r``
    scales as ``h^4 mean_k F_k^-2`` and the same physical penalty needs
    ``lambda' = lambda (h / h')^4 mean_k F_k^-2 / mean_k F'_k^-2``.

    Args:
        paper_lambda: §3's lambda_r (20,000 knee, 5,000 brain).
        paper_spacing, paper_box: the paper's voxel size (mm) and crop (voxels).
        spacing, box: ours.
    Returns:
        lambda_r for our grid.
    """
    def inv_sq(h, shape):
        return np.mean([1.0 / ((n - 1) * h) ** 2 for n in shape])

    return float(paper_lambda * (paper_spacing / spacing) ** 4
                 * inv_sq(paper_spacing, paper_box) / inv_sq(spacing, box))


#: §3: lambda_r = 20,000 (knee, 160^3 at 1 mm) and 5,000 (brain, 168 x 200 x 169 at 1 mm).
KNEE_LAMBDA_R, BRAIN_LAMBDA_R = 20000.0, 5000.0
KNEE_CROP, BRAIN_CROP = (160, 160, 160), (168, 200, 169)
HIPPOCAMPUS_LAMBDA_R = round(stand_in_lambda_r(KNEE_LAMBDA_R, 1.0, KNEE_CROP, 1.0, (48, 64, 48)))
BRAIN_2MM_LAMBDA_R = round(stand_in_lambda_r(BRAIN_LAMBDA_R, 1.0, BRAIN_CROP, 2.0, (80, 96, 80)))

_KNEE = dict(dataset="oai_zib", table="table1", split_sizes=(200, 53, 254), test_pairs=10000,
             box=(160, 160, 160), lambda_r=20000.0, labeled=(1, 5, 10))
_BRAIN = dict(dataset="mindboggle101", table="table2", split_sizes=None, test_pairs=210,
              box=(176, 208, 176), lambda_r=5000.0, labeled=(1, 21), flip=True,
              labeled_subset="MMRR-21")

PRESETS = {
    # §3 settings; epochs and steps are not given in the paper ("trained for a sufficient
    # number of epochs until they over-fit"): 100 epochs of one pass over the 200 images.
    "paper-knee": DeepAtlasPreset(
        "paper-knee", epochs=100, batch_size=1, seg_steps=200, reg_steps=200, semi_seg_steps=200,
        semi_reg_steps=200, da_steps=210,
        description="OAI-ZIB knee (your data), 200/53/254, N = 1, 5, 10 and 200, crop 160^3 at "
                    "1 mm, lambda_r 20,000, lambda_a = lambda_sp = 3 (§3)", **_KNEE),
    "paper-brain": DeepAtlasPreset(
        "paper-brain", epochs=100, batch_size=1, seg_steps=130, reg_steps=130,
        semi_seg_steps=130, semi_reg_steps=130, da_steps=126,
        description="Mindboggle-101 (your data), OASIS-TRT-20 for validation (5) and test (15), "
                    "N = 1, 21 (MMRR-21) and all, 168x200x169 padded to 176x208x176 at 1 mm, "
                    "lambda_r 5,000, sagittal flips (§3)", **_BRAIN),
    # Stand-in for Table 1: the knee's "N of 200" on real hippocampus MRI; 40 minutes on 2
    # CPU cores (README: how the steps were measured).
    "quick": DeepAtlasPreset(
        "quick", "msd_hippocampus", epochs=4, batch_size=1, labeled=(1, 5), test_pairs=200,
        split_sizes=(200, 10, 51), box=(48, 64, 48), reference_id="hippocampus_001",
        lambda_r=HIPPOCAMPUS_LAMBDA_R, seg_steps=100, reg_steps=225, semi_seg_steps=63,
        semi_reg_steps=88, da_steps=168,
        description="MSD hippocampus (stand-in for the knee): 200 training images (N = 1, 5 and "
                    "all 199 labeled; one image has no labels), 10 validation, 51 test, 200 "
                    "random test pairs, box 48x64x48 at 1 mm, §3 weights and rates (lambda_r "
                    "scaled to the grid: stand_in_lambda_r); <= 40 min on 2 CPU cores"),
    "quick-brain": DeepAtlasPreset(
        "quick-brain", "mindboggle101", epochs=3, batch_size=1, labeled=(1, 3), test_pairs=200,
        split_sizes=(8, 1, 6), spacing_mm=2.0, box=(80, 96, 80), lambda_r=BRAIN_2MM_LAMBDA_R,
        flip=True, table="table2", seg_steps=40, reg_steps=50, semi_seg_steps=20,
        semi_reg_steps=30, da_steps=56,
        description="Mindboggle-101, the 15 OASIS-TRT-20 subjects of the shared folder at 2 mm "
                    "(8 training with N = 1, 3 and all 8 labeled, 1 validation, 6 test: 30 "
                    "pairs), box 80x96x80, lambda_r 5,000 scaled to 2 mm (stand_in_lambda_r), "
                    "sagittal flips; <= 40 min on 2 CPU cores"),
    "smoke": DeepAtlasPreset(
        "smoke", "msd_hippocampus", epochs=1, batch_size=1, labeled=(1, 2), all_labeled=False,
        split_sizes=(6, 2, 3), test_pairs=4, box=(32, 48, 32), reference_id="hippocampus_001",
        lambda_r=HIPPOCAMPUS_LAMBDA_R, seg_steps=2, reg_steps=2, semi_seg_steps=2,
        semi_reg_steps=2, da_steps=3, ratio=(1, 2),
        description="end-to-end check for the tests: 6/2/3 hippocampus images, N = 1 and 2 "
                    "(every kind of run), one epoch of 2-3 steps per run"),
}


# ----------------------------------------------------------------------------------- datasets
def _hippocampus(root, ctx):
    from regseg.datasets.msd_hippocampus import msd_hippocampus_splits
    p = ctx.preset
    return msd_hippocampus_splits(root, sizes=p.split_sizes, seed=0,
                                  reference_id=p.reference_id or "hippocampus_001", box=p.box)


def _mindboggle(root, ctx):
    from regseg.datasets.mindboggle import mindboggle_splits
    p = ctx.preset
    return mindboggle_splits(root, sizes=p.split_sizes, seed=0, spacing_mm=p.spacing_mm,
                             box=p.box)


def _knee(root, ctx):
    from regseg.datasets.oai_zib import oai_zib_splits
    p = ctx.preset
    return oai_zib_splits(root, sizes=p.split_sizes, seed=0, reference_id=p.reference_id,
                          spacing_mm=p.spacing_mm, box=p.box)


DATASETS = {
    "msd_hippocampus": DatasetSpec(
        "msd_hippocampus", _hippocampus,
        missing_root="--dataset msd_hippocampus needs --data-root (or $REGSEG_DATA_ROOT) holding "
                     "msd_hippocampus/{images,labels}/ or the MSD Task04_Hippocampus release"),
    "mindboggle101": DatasetSpec(
        "mindboggle101", _mindboggle,
        missing_root="--dataset mindboggle101 needs --data-root holding mindboggle101/"
                     "<subset>_volumes/<subject>/ (the Mindboggle-101 release layout)"),
    "oai_zib": DatasetSpec(
        "oai_zib", _knee,
        missing_root="--dataset oai_zib needs --data-root holding OAI-ZIB/images/<ID>.nii.gz, "
                     "OAI-ZIB/segmentation/segmentation_masks/ and OAI-ZIB/knee_sides.csv "
                     "(see datasets/oai_zib.py)"),
}


# ------------------------------------------------------------------------- training data
def labeled_subjects(train, n, seed: int = 0, subset: str | None = None) -> list[str]:
    """The ids of the ``n`` manually labeled training images (``"all"``: every one with labels).

    Candidates are the training subjects with a label map (of ``subset`` when given, §3: "Manual
    segmentations in the N = 1 and N = 21 experiments are only from the MMRR-21 subset"), in a
    permutation seeded by ``seed``; the first ``n`` are taken, so the sets are nested
    (N = 1 within N = 5 within ...).

    Raises:
        ValueError: fewer candidates than ``n``.
    """
    with_labels = [s for s in train.subjects if s.labels]
    if n == "all":
        return [s.subject_id for s in with_labels]
    pool = [s for s in with_labels if subset is None or s.group == subset]
    if len(pool) < int(n):
        raise ValueError(f"N = {n} labeled images asked, only {len(pool)} training images with "
                         f"labels{f' in {subset}' if subset else ''}")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[k].subject_id for k in order[: int(n)]]


def epoch_pairs(kind: str, labeled: np.ndarray, count: int, rng, flip: bool) -> np.ndarray:
    """``count`` training pairs ``(moving, fixed)`` of one epoch (indices into a
    :class:`FlipView`: ``i + n`` is image ``i`` flipped).

    * ``baseline_seg``: ``(i, i)`` with ``i`` labeled (single images);
    * ``baseline_reg``: ordered pairs ``i != j`` of all training images (§3: "using all M
      training images");
    * Semi-DA and DA: ordered pairs ``i != j`` with at least one labeled image (§2.2: "we do not
      use two unlabeled images for training").

    Pairs are drawn uniformly with replacement.  With ``flip`` each index is flipped with
    probability 1/2 (§3, brain: "sagittal flipping for training data augmentation").

    Raises:
        ValueError: no admissible pair (e.g. no labeled image).
    """
    labeled = np.asarray(labeled, bool)
    n = len(labeled)
    if kind == "baseline_seg":
        idx = np.flatnonzero(labeled)
        if not len(idx):
            raise ValueError("baseline segmentation needs at least one labeled training image")
        chosen = idx[rng.integers(0, len(idx), count)]
        pairs = np.stack([chosen, chosen], 1)
    else:
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        ok = i != j
        if kind != "baseline_reg":
            ok &= labeled[i] | labeled[j]
        allowed = np.stack([i[ok], j[ok]], 1)
        if not len(allowed):
            raise ValueError(f"{kind}: no training pair with a labeled image")
        pairs = allowed[rng.integers(0, len(allowed), count)]
    if flip:
        flips = rng.integers(0, 2, pairs.shape)
        if kind == "baseline_seg":
            flips[:, 1] = flips[:, 0]
        pairs = pairs + n * flips
    return pairs.astype(np.int64)


class FlipView:
    """A dataset view: index ``i < n`` is sample ``i``, ``n + i`` the same sample mirrored along
    the sagittal (left-right, RAS axis 0) axis (images and label maps; the fused left/right
    labels stay valid)."""

    def __init__(self, dataset):
        self.dataset, self.n = dataset, len(dataset)

    def __len__(self):
        return 2 * self.n

    def load(self, i: int):
        from regseg.datasets.subjects import Sample

        sample = self.dataset.load(int(i) % self.n)
        if int(i) < self.n:
            return sample
        return Sample(sample.subject_id,
                      {k: np.ascontiguousarray(v[::-1]) for k, v in sample.images.items()},
                      {k: np.ascontiguousarray(v[::-1]) for k, v in sample.labels.items()},
                      {k: np.ascontiguousarray(v[::-1]) for k, v in sample.masks.items()},
                      sample.affine, sample.landmarks, dict(sample.sources))


def pair_mapping(labeled_ids):
    """``(moving, fixed) -> (inputs, targets)`` for :class:`~.model.DeepAtlasLosses`.

    A sample counts as labeled only if its id is in ``labeled_ids`` (the N manual segmentations
    of the experiment) and it has a ``segmentation`` label map; otherwise its labels are zeros
    and its flag 0.
    """
    labeled_ids = set(labeled_ids)

    def mapping(moving, fixed):
        inputs, targets = {}, {}
        for role, s in (("moving", moving), ("fixed", fixed)):
            has = s.subject_id in labeled_ids and "segmentation" in s.labels
            inputs[role] = np.asarray(s.image, np.float32)[..., None]
            inputs[f"{role}_labeled"] = np.float32(has)
            targets[f"{role}_labels"] = (np.asarray(s.labels["segmentation"], np.int32) if has
                                         else np.zeros(s.image.shape, np.int32))
        return inputs, targets
    return mapping


# ----------------------------------------------------------------------------- validation
def validation_pairs_of(splits) -> tuple[list, np.ndarray]:
    """Samples and ``(moving, fixed)`` index pairs for the validation registration Dice.

    ``i -> i + 1`` over the validation images; a single validation image is paired both ways
    with the first training image that has labels.
    """
    val = [splits.validation.load(i) for i in range(len(splits.validation))]
    if len(val) >= 2:
        return val, np.array([(i, i + 1) for i in range(len(val) - 1)], np.int64)
    first = next(i for i, s in enumerate(splits.train.subjects) if s.labels)
    return val + [splits.train.load(first)], np.array([(0, 1), (1, 0)], np.int64)


def _score_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def best_epoch(path: Path) -> int | None:
    """0-based epoch with the highest validation score in ``validation.csv`` (first of ties)."""
    rows = _score_rows(Path(path))
    if not rows:
        return None
    return int(max(rows, key=lambda r: (r["score"], -r["epoch"]))["epoch"])


def _make_validation_callback(kind, nets, splits, path):
    import keras

    from regseg.evaluation import metrics
    from regseg.evaluation.pairs import warp_labels
    from regseg.fileio import atomic_write_text

    from .model import DeepAtlasRegistrar, DeepAtlasSegmenter

    images = [splits.validation.load(i) for i in range(len(splits.validation))]
    samples, pairs = validation_pairs_of(splits)
    seg = DeepAtlasSegmenter(nets["segmentation"]) if kind in _SEGMENTS else None
    reg = DeepAtlasRegistrar(nets["registration"]) if kind in _REGISTERS else None

    class ValidationDice(keras.callbacks.Callback):
        """Mean validation Dice after every epoch -> ``validation.csv`` (epoch, seg, reg, score)."""

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": int(epoch)}
            if seg is not None:
                row["segmentation"] = float(np.mean([
                    metrics.dice(seg.segment(s).argmax(-1), s.segmentation,
                                 range(1, len(splits.train.class_names) + 1), empty=0.0).mean()
                    for s in images]))
            if reg is not None:
                k = len(splits.train.structure_names)
                values = []
                for i, j in pairs:
                    grid = reg.register(samples[i], samples[j])["grid"]
                    warped = warp_labels(samples[i].structures, grid, k, "argmax")
                    values.append(metrics.dice(warped, samples[j].structures, range(1, k + 1),
                                               empty=0.0).mean())
                row["registration"] = float(np.mean(values))
            row["score"] = float(np.mean([v for key, v in row.items() if key != "epoch"]))
            rows = [r for r in _score_rows(path) if r["epoch"] < epoch] + [row]
            keys = ["epoch"] + [c for c in ("segmentation", "registration") if c in row] + ["score"]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore",
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(path, buf.getvalue())
            print("  validation Dice: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                     if k != "epoch"), flush=True)

    return ValidationDice()


# ------------------------------------------------------------------------------- methods
@dataclass
class Trained:
    """What a DeepAtlas run yields: a segmenter and/or a registrar (``None`` where absent)."""

    segmenter: object = None
    registrar: object = None


class DeepAtlasMethod(KerasMethod):
    """One training run of §3 (a kind of :data:`KINDS` at one N).

    Args:
        key: run folder name, e.g. ``"da_n5"``.
        kind: one of :data:`KINDS`.
        n: labeled training images (int, or ``"all"``).
        init: ``{"segmentation" | "registration": key of the run whose final network starts
            (or, for the network not trained, fixes) this one}``.
    """

    def __init__(self, key: str, kind: str, n, init=None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.key, self.kind, self.n, self.init = key, kind, n, dict(init or {})
        model = {"baseline_seg": "Baseline", "baseline_reg": "Baseline", "semi_seg": "Semi-DA",
                 "semi_reg": "Semi-DA", "da": "DA"}[kind]
        what = {"baseline_seg": " segmentation", "baseline_reg": " registration",
                "semi_seg": " segmentation", "semi_reg": " registration", "da": ""}[kind]
        self.model = model
        self.label = f"{model}{what} (N={n})"

    # -- settings
    def model_config(self, ctx) -> dict:
        from .model import DeepAtlasConfig

        p, args = ctx.preset, ctx.args
        network = DeepAtlasConfig(
            input_shape=tuple(ctx.splits.train.load(0).shape),
            n_classes=len(ctx.splits.train.class_names), lambda_r=p.lambda_r,
            lambda_a=p.lambda_a, lambda_sp=p.lambda_sp, dice=args.dice,
            dice_background=not args.dice_foreground_only,
            regulariser=args.regulariser)
        labeled = labeled_subjects(ctx.splits.train, self.n, seed=0, subset=p.labeled_subset) \
            if self.n != 0 else []
        if self.kind.startswith("baseline"):
            rates = {"segmentation": p.lr_baseline, "registration": p.lr_baseline}
        else:
            rates = {"segmentation": p.lr_segmentation, "registration": p.lr_registration}
        return {"kind": self.kind, "n_labeled": self.n, "labeled_ids": labeled,
                "network": network.to_dict(), "init": self.init, "learning_rates": rates,
                "ratio": list(p.ratio), "flip": bool(p.flip)}

    def _network_config(self, config):
        from .model import DeepAtlasConfig
        return DeepAtlasConfig.from_dict(config["network"])

    # -- model
    def networks(self, config) -> dict:
        """The networks of this kind of run: ``{"segmentation": F_s, "registration": F_R}``
        (the one a baseline does not use is absent)."""
        from .model import build_registration_network, build_segmentation_network

        net = self._network_config(config)
        nets = {}
        if config["kind"] != "baseline_reg":
            nets["segmentation"] = build_segmentation_network(net)
        if config["kind"] != "baseline_seg":
            nets["registration"] = build_registration_network(net)
        return nets

    def build(self, config):
        """``(AlternatingModel, networks)``: the phases of this kind (inside the strategy)."""
        import keras

        from regseg.training.alternating import AlternatingModel, Phase

        from .model import DeepAtlasLosses

        kind, rates = config["kind"], config["learning_rates"]
        nets = self.networks(config)
        losses = DeepAtlasLosses(self._network_config(config), nets.get("segmentation"),
                                 nets.get("registration"), joint=kind != "baseline_reg")

        def adam(name):
            return keras.optimizers.Adam(rates[name], name=name)

        def seg_phase(steps, loss):
            return Phase("segmentation", steps, nets["segmentation"], loss, adam("segmentation"))

        def reg_phase(steps):
            return Phase("registration", steps, nets["registration"], losses.registration,
                         adam("registration"))

        phases = {"baseline_seg": lambda: [seg_phase(1, losses.supervised)],
                  "baseline_reg": lambda: [reg_phase(1)],
                  "semi_seg": lambda: [seg_phase(1, losses.segmentation)],
                  "semi_reg": lambda: [reg_phase(1)],
                  "da": lambda: [seg_phase(config["ratio"][0], losses.segmentation),
                                 reg_phase(config["ratio"][1])]}[kind]()
        model = AlternatingModel(nets, phases, relative_learning_rates=True, name=self.key)
        return model, nets

    def compile(self, train_model, config, ctx):
        train_model.compile()

    def training_mapping(self, config):
        return pair_mapping(config["labeled_ids"])

    def schedule(self, ctx):
        from regseg.training.fit import step_decay
        every = max(1, int(round(ctx.preset.epochs * ctx.preset.decay_at)))
        return step_decay(1.0, every, ctx.preset.decay)  # factor of each phase's initial rate

    def training_plan(self, ctx, config) -> TrainingPlan:
        """Pairs of :func:`epoch_pairs` per epoch (seeded by run seed and epoch, so a resumed
        run sees the same pairs), global batch ``preset.batch_size``."""
        from regseg.training.pairs import pair_dataset

        p, train = ctx.preset, ctx.splits.train
        labeled_ids = set(config["labeled_ids"])
        labeled = np.array([s.subject_id in labeled_ids for s in train.subjects])
        steps = p.steps(self.kind)
        per_epoch = steps * p.batch_size
        pairs = np.stack([epoch_pairs(self.kind, labeled, per_epoch,
                                      np.random.default_rng([ctx.seed, e]), p.flip)
                          for e in range(p.epochs)])
        source = FlipView(train)
        mapping = self.training_mapping(config)

        def make_train(first_epoch):
            return pair_dataset((source, source), pairs[first_epoch:].reshape(-1, 2),
                                p.batch_size, mapping)

        return TrainingPlan(make_train, steps, p.epochs, self.schedule(ctx), None)

    # -- training
    def _initialise(self, nets, config, out_dir: Path):
        for name, source in config["init"].items():
            path = Path(out_dir) / source / f"{name}.weights.h5"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: {self.key} starts from the {name} network of run {source!r}, "
                    f"which has not finished; train it first (--methods {source},{self.key})")
            nets[name].load_weights(path)

    def fit(self, ctx, run_dir):
        import keras

        from regseg.fileio import atomic_path
        from regseg.training.fit import fit
        from regseg.training.runner import run_settings, write_run_manifest

        run_dir = Path(run_dir)
        config = self.model_config(ctx)
        keras.utils.set_random_seed(ctx.seed)
        with ctx.strategy.scope():
            model, nets = self.build(config)
            self._initialise(nets, config, ctx.out_dir)
            self.compile(model, config, ctx)
        plan = self.training_plan(ctx, config)
        validation = _make_validation_callback(self.kind, nets, ctx.splits,
                                               run_dir / "validation.csv")
        result = fit(model, plan.make_train, run_dir, epochs=plan.epochs,
                     steps_per_epoch=plan.steps_per_epoch, schedule=plan.schedule,
                     resume=ctx.args.resume, verbose=ctx.verbose, extra_callbacks=[validation],
                     settings=run_settings(ctx, self, config, plan),
                     allow_changes=ctx.args.resume_with_changes)
        if result["changes"]:
            ctx.changes[self.key] = result["changes"]
        best = best_epoch(run_dir / "validation.csv")
        if best is not None:  # §3: "The best models based on validation performance"
            checkpoint = run_dir / "checkpoints" / f"epoch_{best + 1:03d}.weights.h5"
            if checkpoint.is_file():
                model.load_weights(checkpoint)
                print(f"  {self.key}: best validation epoch {best + 1} of {plan.epochs}",
                      flush=True)
        for name, net in nets.items():
            with atomic_path(run_dir / f"{name}.weights.h5", suffix=".weights.h5") as tmp:
                net.save_weights(tmp)
        write_run_manifest(run_dir, ctx, self, config)
        return self._trained(nets)

    def _trained(self, nets) -> Trained:
        from .model import DeepAtlasRegistrar, DeepAtlasSegmenter

        seg = nets.get("segmentation")
        reg = nets.get("registration")
        return Trained(DeepAtlasSegmenter(seg) if seg is not None and self.kind in _SEGMENTS
                       else None,
                       DeepAtlasRegistrar(reg) if reg is not None and self.kind in _REGISTERS
                       else None)  # F_s is scored on the test images, not inside each pair

    def registrar(self, predict_model, config):
        raise NotImplementedError("DeepAtlas runs are loaded with load()")

    def load(self, run_dir, manifest):
        """The registrar of a finished run (``python -m regseg register``).

        Raises:
            FileNotFoundError: no registration network in the run folder (a segmentation run,
                or unfinished training).
        """
        from .model import DeepAtlasRegistrar

        path = Path(run_dir) / "registration.weights.h5"
        if self.kind not in _REGISTERS or not path.is_file():
            raise FileNotFoundError(f"{path}: {self.key} has no trained registration network"
                                    + ("" if self.kind in _REGISTERS else
                                       f" ({self.label} trains segmentation only)"))
        nets = self.networks(manifest["model_config"])
        for name, net in nets.items():
            weights = Path(run_dir) / f"{name}.weights.h5"
            if weights.is_file():
                net.load_weights(weights)
        return DeepAtlasRegistrar(nets["registration"],
                                  nets.get("segmentation") if self.kind == "da" else None)


def method_list(preset: DeepAtlasPreset) -> list[DeepAtlasMethod]:
    """The runs of a preset in training order (each after the runs it starts from)."""
    out = [DeepAtlasMethod("baseline_reg_n0", "baseline_reg", 0)]
    for n in preset.labeled:
        if n == 1:  # §3: no baseline segmentation for N = 1; Semi-DA F_s from scratch
            out += [DeepAtlasMethod("semi_seg_n1", "semi_seg", 1,
                                    {"registration": "baseline_reg_n0"}),
                    DeepAtlasMethod("da_n1", "da", 1, {"segmentation": "semi_seg_n1",
                                                       "registration": "baseline_reg_n0"})]
            continue
        base = {"segmentation": f"baseline_seg_n{n}", "registration": f"baseline_reg_n{n}"}
        out += [DeepAtlasMethod(f"baseline_seg_n{n}", "baseline_seg", n),
                DeepAtlasMethod(f"baseline_reg_n{n}", "baseline_reg", n),
                DeepAtlasMethod(f"semi_seg_n{n}", "semi_seg", n, base),
                DeepAtlasMethod(f"semi_reg_n{n}", "semi_reg", n, base),
                DeepAtlasMethod(f"da_n{n}", "da", n, base)]
    if preset.all_labeled:
        out += [DeepAtlasMethod("baseline_seg_all", "baseline_seg", "all"),
                DeepAtlasMethod("baseline_reg_all", "baseline_reg", "all")]
    return out


# ------------------------------------------------------------------------------- tables
def table_rows(preset: DeepAtlasPreset) -> list[tuple]:
    """``(N, model, segmentation run key, registration run key)`` in Table 1/2 order."""
    rows = [(0, "Baseline", None, "baseline_reg_n0")]
    for n in preset.labeled:
        if n == 1:
            rows += [(1, "Semi-DA", "semi_seg_n1", None), (1, "DA", "da_n1", "da_n1")]
        else:
            rows += [(n, "Baseline", f"baseline_seg_n{n}", f"baseline_reg_n{n}"),
                     (n, "Semi-DA", f"semi_seg_n{n}", f"semi_reg_n{n}"),
                     (n, "DA", f"da_n{n}", f"da_n{n}")]
    if preset.all_labeled:
        rows.append(("all", "Baseline", "baseline_seg_all", "baseline_reg_all"))
    return rows


def paper_n(preset: DeepAtlasPreset, n) -> int | None:
    """The paper's N compared with ours: the same N where the paper has it (0, 1, 5, 10 in
    Table 1; 0, 1, 21 in Table 2), the paper's "few labels" row (21 of 65) for our other N in
    Table 2, the all-labeled row (200 / 65) for ``"all"``."""
    if n == "all":
        return published.TABLE1_M if preset.table == "table1" else published.TABLE2_M
    table = published.TABLE1 if preset.table == "table1" else published.TABLE2
    if any(k[0] == n for k in table):
        return n
    return 21 if preset.table == "table2" else None


def column_groups(class_names, table: str) -> dict[str, list[str]]:
    """Columns of our table: Table 1's Bones / Cartilages / All for the knee; each class and
    "All" for a few classes (hippocampus: anterior, posterior); "All" alone for many (brain)."""
    from regseg.datasets.oai_zib import KNEE_GROUPS

    names = list(class_names)
    if table == "table1" and all(c in names for g in KNEE_GROUPS.values() for c in g):
        return {**KNEE_GROUPS, "All": names}
    if len(names) <= 4:
        return {**{c: [c] for c in names}, "All": names}
    return {"All": names}


def _group_values(frame: pd.DataFrame, columns) -> pd.Series:
    return frame[list(columns)].mean(axis=1) * 100.0


class DeepAtlas(Reproduction):
    key, module = "deepatlas", "regseg.reproductions.deepatlas.reproduction"
    title = "Tables 1-2 of DeepAtlas (Xu & Niethammer, MICCAI 2019)"
    presets, default_preset = PRESETS, "quick"
    datasets = DATASETS

    def __init__(self):
        self.active_preset: str | None = None

    # -- the runs depend on the preset: pick it before the runner asks for methods()
    def _activate(self, argv):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--preset", default=self.default_preset)
        known, _ = pre.parse_known_args(argv)
        self.active_preset = known.preset if known.preset in self.presets else None

    def run(self, argv=None):
        import sys
        self._activate(sys.argv[1:] if argv is None else argv)
        return super().run(argv)

    def main(self, argv=None):
        import sys
        self._activate(sys.argv[1:] if argv is None else argv)
        return super().main(argv)

    def methods(self):
        """The runs of the active preset; without one, those of every preset (run folders)."""
        presets = ([self.presets[self.active_preset]] if self.active_preset
                   else list(self.presets.values()))
        out = {}
        for p in presets:
            for m in method_list(p):
                out.setdefault(m.key, m)
        return out

    def add_arguments(self, p):
        from .model import DICE_VARIANTS, REGULARISERS

        p.add_argument("--dice", choices=DICE_VARIANTS, default="v-net",
                       help="eq. 3: v-net = with the factor 2 (Dice coefficient, released code; "
                            "default), as-printed = without it, as the paper's converted text")
        p.add_argument("--dice-foreground-only", action="store_true",
                       help="eq. 3 over the K foreground classes only (default: background "
                            "included, as the released code)")
        p.add_argument("--regulariser", choices=REGULARISERS, default="released",
                       help="eq. 5 on the displacement in [-1, 1] units: released = mean over "
                            "the 27 Hessian entries, per-voxel differences (the released "
                            "code's scaling, with which lambda_r balances NCC; default), "
                            "eq5-voxel = the printed sum, eq5-unit = derivatives w.r.t. the "
                            "[-1, 1] coordinates (README, fidelity)")

    def describe(self, preset, args):
        from .model import (DeepAtlasConfig, build_registration_network,
                            build_segmentation_network)

        n_classes = {"table1": 4, "table2": 31}[preset.table] if preset.dataset != \
            "msd_hippocampus" else 2
        config = DeepAtlasConfig(preset.box, n_classes)
        seg, reg = build_segmentation_network(config), build_registration_network(config)
        seg.summary(line_length=110)
        reg.summary(line_length=110)
        total = seg.count_params() + reg.count_params()
        print(f"segmentation: {seg.count_params()}, registration: {reg.count_params()}")
        print(f"parameters: {total}")
        return total

    # -- evaluation
    def test_pairs(self, ctx) -> np.ndarray:
        """``preset.test_pairs`` distinct random ordered pairs of test images (seed 0), or all
        ordered pairs when there are no more."""
        from regseg.training.pairs import all_ordered_pairs

        pairs = all_ordered_pairs(len(ctx.splits.test))
        if len(pairs) <= ctx.preset.test_pairs:
            return pairs
        rng = np.random.default_rng(0)
        return pairs[np.sort(rng.choice(len(pairs), ctx.preset.test_pairs, replace=False))]

    def evaluate(self, ctx, registrars):
        from regseg.evaluation.pairs import evaluate_pairs
        from regseg.evaluation.segmentation import evaluate_segmentations

        methods = self.methods()
        reg = {methods[k].label: t.registrar for k, t in registrars.items()
               if t is not None and t.registrar is not None}
        seg = {methods[k].label: t.segmenter for k, t in registrars.items()
               if t is not None and t.segmenter is not None}
        test = ctx.splits.test
        evaluation = evaluate_pairs(reg, test, self.test_pairs(ctx), structures="structures",
                                    label_rule="argmax")
        evaluation.segmentation_images = evaluate_segmentations(seg, test, label="segmentation")
        evaluation.segmenters = seg
        return evaluation

    def header(self, ctx, evaluation):
        s = ctx.splits
        ids = {n: labeled_subjects(s.train, n, 0, ctx.preset.labeled_subset)
               for n in ctx.preset.labeled}
        return {"test pairs": f"{len(evaluation.pairs)} random ordered pairs of {len(s.test)} "
                              f"test images (registration Dice); segmentation Dice on the "
                              f"{len(s.test)} test images",
                "subjects": f"train {len(s.train)} ({sum(1 for x in s.train.subjects if x.labels)}"
                            f" with labels), validation {len(s.validation)}, test {len(s.test)}",
                "labeled images": "; ".join(f"N={n}: {', '.join(v)}" for n, v in ids.items())}

    def _scores(self, evaluation, quantity, key, groups):
        """Per-case group values (%) of a run: DataFrame columns = groups."""
        label = self.methods()[key].label
        frames = evaluation.segmentation_images if quantity == "seg" else evaluation.dice
        frame = frames.get(label)
        if frame is None:
            return None
        return pd.DataFrame({g: _group_values(frame, cols) for g, cols in groups.items()})

    def report(self, ctx, evaluation):
        p = ctx.preset
        groups = column_groups(ctx.splits.test.class_names, p.table)
        pub_groups = published.TABLE1_GROUPS if p.table == "table1" else ("All",)
        rows, index = [], []
        scores = {}
        for n, model, seg_key, reg_key in table_rows(p):
            pn = paper_n(p, n)
            row = {"paper N": "–" if pn is None else str(pn)}
            for quantity, key in (("seg", seg_key), ("reg", reg_key)):
                values = self._scores(evaluation, quantity, key, groups) if key else None
                scores[(n, model, quantity)] = values
                for g in groups:
                    row[f"{quantity} {g} mean"] = values[g].mean() if values is not None else np.nan
                    row[f"{quantity} {g} std"] = (values[g].std(ddof=0) if values is not None
                                                  else np.nan)
            pub = published.published_row(p.table, paper_n(p, n), model) \
                if paper_n(p, n) is not None else None
            for quantity in ("seg", "reg"):
                entry = pub.get(quantity) if pub else None
                for g in pub_groups:
                    value = entry.get(g) if isinstance(entry, dict) else entry
                    row[f"published {quantity} {g} mean"] = value[0] if value else np.nan
                    row[f"published {quantity} {g} std"] = value[1] if value else np.nan
            index.append(f"N={n if n != 'all' else 'all'} {model}")
            rows.append(row)
        stats, tests = self._statistics(p, scores)
        for name, values in stats.items():
            rows[index.index(name)].update(values)
        table = pd.DataFrame(rows, index=pd.Index(index, name="N, model"))
        which = "Table 1" if p.table == "table1" else "Table 2"
        title = (f"DeepAtlas {which}: segmentation and registration Dice (%)"
                 f"{ctx.title_suffix}")
        paper_data = ("OAI knee, N of 200" if p.table == "table1"
                      else "Mindboggle-101 at 1 mm, N of 65")
        group_text = ", ".join(f"{g} = {c}" for g, c in groups.items())
        notes = (f"Mean ± std over test images (segmentation) and test pairs (registration), in "
                 f"%. Groups: {group_text}. 'published' = Xu & Niethammer 2019, {which} "
                 f"({paper_data}), the row of 'paper N'. p: "
                 f"Mann-Whitney U (two-sided, §3) of the row's model against the Baseline of the "
                 f"same N (N=1: DA registration against the N=0 Baseline); the 'statistics' "
                 f"table adds the paired Wilcoxon test and Benjamini-Hochberg q-values.")
        out = [Table(f"{p.table}_dice", table, title, notes), Table(
            "statistics", tests, f"DeepAtlas §3 significance tests{ctx.title_suffix}",
            "Per-case mean Dice (%) over all classes. MWU: Mann-Whitney U (two-sided), the "
            "paper's test; Wilcoxon: paired signed-rank test on the same cases; q: "
            "Benjamini-Hochberg FDR over the MWU p-values of this table (§3: FDR 0.05).")]
        out.append(Table("claims", self._claims(p, table, tests),
                         f"DeepAtlas §3 claims on our run{ctx.title_suffix}",
                         "Each claim of §3 checked on this run's numbers (All columns, %)."))
        seg_frames = []
        for label, frame in evaluation.segmentation_images.items():
            f = frame.copy()
            f.insert(0, "method", label)
            seg_frames.append(f)
        if seg_frames:
            out.append(Table("per_image_segmentation_dice", pd.concat(seg_frames),
                             f"DeepAtlas segmentation Dice per test image{ctx.title_suffix}"))
        return out

    def _statistics(self, p, scores):
        from regseg.evaluation.statistics import compare, fdr

        comparisons = []
        for n, model, _, _ in table_rows(p):
            if model == "Baseline":
                continue
            for quantity in ("seg", "reg"):
                a = scores.get((n, model, quantity))
                if a is None:
                    continue
                if n == 1:
                    ref_key, ref_name = ((0, "Baseline", quantity), "Baseline N=0") \
                        if quantity == "reg" else ((1, "Semi-DA", quantity), "Semi-DA N=1")
                    if model == "Semi-DA":
                        continue
                else:
                    ref_key, ref_name = (n, "Baseline", quantity), f"Baseline N={n}"
                b = scores.get(ref_key)
                if b is None or len(a) < 2:
                    continue
                result = compare(a["All"].to_numpy(), b["All"].to_numpy())
                comparisons.append({"row": f"N={n} {model}", "quantity": quantity,
                                    "against": ref_name, **result})
        tests = pd.DataFrame(comparisons)
        stats = {}
        if len(tests):
            tests["q (BH, MWU)"] = fdr(tests["Mann-Whitney p"].to_numpy())
            for _, r in tests.iterrows():
                if r["against"].startswith("Baseline"):
                    stats.setdefault(r["row"], {})[
                        f"{r['quantity']} p (MWU vs Baseline)"] = r["Mann-Whitney p"]
            tests = tests.set_index("row")
        return stats, tests

    def _claims(self, p, table, tests):
        def get(row, col):
            try:
                return float(table.at[row, col])
            except KeyError:
                return np.nan

        many = [n for n in p.labeled if n != 1]
        lines = []
        for n in many:
            for quantity in ("seg", "reg"):
                base = get(f"N={n} Baseline", f"{quantity} All mean")
                semi = get(f"N={n} Semi-DA", f"{quantity} All mean")
                da = get(f"N={n} DA", f"{quantity} All mean")
                lines.append({"claim": f"Semi-DA boosts over the Baseline ({quantity}, N={n})",
                              "ours": f"Semi-DA {semi:.2f} vs Baseline {base:.2f}",
                              "reproduced": _verdict(semi > base)})
                lines.append({"claim": f"DA better still ({quantity}, N={n})",
                              "ours": f"DA {da:.2f} vs Semi-DA {semi:.2f}, Baseline {base:.2f}",
                              "reproduced": _verdict(da >= semi and da > base)})
        if 1 in p.labeled:
            base = get("N=0 Baseline", "reg All mean")
            da = get("N=1 DA", "reg All mean")
            seg = get("N=1 DA", "seg All mean")
            paper = 2.7 if p.table == "table1" else 1.8
            lines.append({"claim": f"one-shot: DA registration over unsupervised (+{paper} in "
                                   f"the paper)",
                          "ours": f"DA N=1 {da:.2f} vs Baseline N=0 {base:.2f} "
                                  f"({da - base:+.2f})",
                          "reproduced": _verdict(da > base)})
            full = get("N=all Baseline", "seg All mean")
            lines.append({"claim": "one-shot: reasonable segmentation (paper: 87.2 of 90.9 knee, "
                                   "61.2 of 81.3 brain)",
                          "ours": f"DA N=1 {seg:.2f} vs all-labeled Baseline {full:.2f}",
                          "reproduced": "see numbers"})
        if len(tests):
            against = tests[tests["against"].str.startswith("Baseline")]
            sig = int(((against["q (BH, MWU)"] < 0.05) & (against["mean difference"] > 0)).sum())
            lines.append({"claim": "DA/Semi-DA significantly better than the Baselines (MWU, "
                                   "FDR 0.05)",
                          "ours": f"{sig} of {len(against)} comparisons significant and larger",
                          "reproduced": _verdict(sig == len(against))})
        return pd.DataFrame(lines).set_index("claim") if lines else pd.DataFrame()

    # -- figures
    def figures(self, ctx, evaluation, results_dir):
        """Fig. 2 analogue: registration (moving, target, warped with grid and segmentations by
        Baseline and DA) and segmentation (image, manual, predictions)."""
        try:
            _figure2(self, ctx, evaluation, Path(results_dir) / "fig2_examples.png")
        except KeyError:
            pass  # no DA / Baseline pair of rows (e.g. a --methods subset)


def _verdict(ok) -> str:
    if ok is None or (isinstance(ok, float) and math.isnan(ok)):
        return "n/a"
    return "yes" if bool(ok) else "no"


def _figure2(repro, ctx, evaluation, path):
    from matplotlib.figure import Figure

    from regseg.evaluation.figures import _save
    from regseg.evaluation.pairs import warp_labels

    p = ctx.preset
    n = max([k for k in p.labeled if k != 1] or [1])
    methods = repro.methods()
    reg_rows = [("BL", f"baseline_reg_n{n}" if n != 1 else "baseline_reg_n0"), ("DA", f"da_n{n}")]
    examples = evaluation.examples
    ex = examples[methods[reg_rows[1][1]].label]
    mov, fix = ex["moving"], ex["fixed"]
    k = len(ctx.splits.test.structure_names)
    z = int(np.argmax((fix.structures > 0).sum(axis=(0, 1))))  # the slice with most labels
    panels = [("moving", mov.image, mov.structures, None), ("target", fix.image, fix.structures,
                                                            None)]
    for name, key in reg_rows:
        out = examples[methods[key].label]["outputs"]
        warped_labels = warp_labels(mov.structures, out["grid"], k, "argmax")
        panels.append((f"{name}{n if name != 'BL' or n != 1 else 0}: warped", out["warped"],
                       warped_labels, out["grid"]))
    seg_keys = [("BL", f"baseline_seg_n{n}"), ("DA", f"da_n{n}")]
    if 1 in p.labeled:
        seg_keys.append(("DA", "da_n1"))
    image = ctx.splits.test.load(0)
    seg_panels = [("image", image.image, None), ("manual", image.image, image.segmentation)]
    for name, key in seg_keys:
        label = methods[key].label if key in methods else None
        if label is None or label not in evaluation.segmenters:
            continue
        seg_panels.append((f"{name}{key.rsplit('_n', 1)[-1]}", image.image,
                           _predicted_labels(evaluation, label, image)))
    cols = max(len(panels), len(seg_panels))
    fig = Figure(figsize=(2.4 * cols, 5.4))
    axes = fig.subplots(2, cols, squeeze=False)
    cmap = _label_colours(k)
    for c, (name, img, labels, grid) in enumerate(panels):
        ax = axes[0, c]
        ax.imshow(img[:, :, z].T, cmap="gray", origin="lower")
        ax.imshow(np.ma.masked_equal(labels[:, :, z].T, 0), cmap=cmap, vmin=0, vmax=k,
                  alpha=0.45, origin="lower", interpolation="nearest")
        if grid is not None:
            _draw_grid(ax, grid[:, :, z, :2])
        ax.set_title(name, fontsize=9)
    zs = int(np.argmax((image.segmentation > 0).sum(axis=(0, 1))))
    for c, (name, img, labels) in enumerate(seg_panels):
        ax = axes[1, c]
        ax.imshow(img[:, :, zs].T, cmap="gray", origin="lower")
        if labels is not None:
            ax.imshow(np.ma.masked_equal(labels[:, :, zs].T, 0), cmap=cmap,
                      vmin=0, vmax=k, alpha=0.45, origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.set_axis_off()
    fig.suptitle(f"DeepAtlas Fig. 2 analogue — {ctx.dataset_name} (axial slices; top: "
                 f"{mov.subject_id} -> {fix.subject_id}; bottom: {image.subject_id})",
                 fontsize=9)
    return _save(fig, path, 110, True)


def _predicted_labels(evaluation, label, sample):
    return evaluation.segmenters[label].segment(sample).argmax(-1)


def _label_colours(k):
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    base = colormaps["tab10" if k <= 10 else "tab20"]
    return ListedColormap([(0, 0, 0, 0)] + [base(i % base.N) for i in range(k)])


def _draw_grid(ax, grid2d, step: int = 4):
    """Deformation grid: lines of constant moving-image coordinate drawn at the fixed
    positions (x = grid[..., 0], y = grid[..., 1]) every ``step`` voxels."""
    gx, gy = grid2d[..., 0], grid2d[..., 1]
    for i in range(0, gx.shape[0], step):
        ax.plot(gx[i, :], gy[i, :], color="yellow", linewidth=0.4)
    for j in range(0, gx.shape[1], step):
        ax.plot(gx[:, j], gy[:, j], color="yellow", linewidth=0.4)


REPRODUCTION = DeepAtlas()
