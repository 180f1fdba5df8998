"""The registration pyramid (Gunnarsson et al., Learn2Reg 2020) on the shared runner.

Table 1 compares, per Learn2Reg 2020 task and on the same test pairs, **Initial** (the identity
after the same preprocessing) and **Ours** (one pyramid trained on pairs of all three tasks at
once, §3), scored as the Learn2Reg scorer does at the original image resolution (TRE, TRE30,
DSC, DSC30, HD95, SDlogJ) with the CPU time per pair; Table 2 is a figure of the moving image
warped by the displacement of levels 4, 2 and 0 beside the fixed image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from regseg.training.runner import (DatasetSpec, IdentityMethod, KerasMethod, Preset, Reproduction,
                                    Table, TrainingPlan)

from . import published


@dataclass(frozen=True)
class PyramidPreset(Preset):
    """Adds §3's settings; ``paper`` values cited in ``PRESETS``.

    Attributes:
        shape: the network's grid (§3: 64^3).
        learning_rate: Adam's (§3: 1e-4).
        pairs_per_task: training pairs drawn per task and epoch (the paper does not give the
            epoch size; the released code uses 300 pairs per task).
        hippocampus_sizes, chaos_sizes, chaos_steps, lung_copies: the stand-ins' splits
            (:func:`~regseg.datasets.learn2reg.pyramid_standin_splits`).
        cpu_time_shape: the grid at which Table 1's CPU time is measured (§3's 64^3) when the
            preset trains at another one.
        submission_pairs: Learn2Reg displacement files written per task (``None``: every test
            pair; a CHAOS field at the original resolution is 30 MB).
    """

    shape: tuple = (64, 64, 64)
    learning_rate: float = 1e-4
    pairs_per_task: int = 300
    hippocampus_sizes: tuple = (196, 4, 60)
    chaos_sizes: tuple = (10, 1, 9)
    chaos_steps: tuple = (1, 2)
    lung_copies: int = 16
    cpu_time_shape: tuple = (64, 64, 64)
    submission_pairs: int | None = None


PRESETS = {
    "paper": PyramidPreset("paper", "learn2reg2020", 100, 1,
                           description="your Learn2Reg 2020 Tasks 2, 3, 4 at 64^3, one model on "
                                       "all tasks, Adam 1e-4, batch 1 per replica, 100 epochs "
                                       "(§3) of 300 pairs per task (released code)"),
    # 2 CPU cores: 32^3 instead of 64^3 (8x fewer voxels, ~6x faster steps; README, presets);
    # 40 epochs (960 steps) since issue 11: 20 took 13.0 min of the 30-minute budget
    "quick": PyramidPreset("quick", "standins", 40, 1, shape=(32, 32, 32), pairs_per_task=8,
                           submission_pairs=4,
                           description="real stand-ins (hippocampus = Task 4 data; CHAOS MRI; "
                                       "lung CTs) at 32^3, 40 epochs of 8 pairs per task, Adam "
                                       "1e-4, batch 1; <= 30 min on 2 cores"),
    "smoke": PyramidPreset("smoke", "standins", 1, 1, shape=(32, 32, 32), pairs_per_task=1,
                           hippocampus_sizes=(4, 1, 4), chaos_sizes=(3, 1, 2), chaos_steps=(1,),
                           lung_copies=2, cpu_time_shape=(32, 32, 32), submission_pairs=1,
                           description="end-to-end check for the tests: 1 epoch of 1 pair per "
                                       "task"),
}

#: ``--released-code``: the authors' code where it differs from the paper (README, fidelity)
RELEASED = {"densenet_filters": [64, 64, 32, 16, 8], "affine_on": "displacements",
            "similarity": "local", "weights": "released", "kernel_l2": 1e-3}
RELEASED_LEARNING_RATE = 5e-5


def _standins(root, ctx):
    from regseg.datasets.learn2reg import pyramid_standin_splits
    p = ctx.preset
    return pyramid_standin_splits(root, p.shape, hippocampus_sizes=p.hippocampus_sizes,
                                  chaos_sizes=p.chaos_sizes, chaos_steps=p.chaos_steps,
                                  lung_copies=p.lung_copies, seed=ctx.seed)


def _learn2reg(layout):
    def load(root, ctx):
        from regseg.datasets.learn2reg import learn2reg_splits
        return learn2reg_splits(root, ctx.preset.shape, layout=layout, seed=ctx.seed)
    return load


def task_pairs(train, tasks: dict, per_task: int, epochs: int, seed: int) -> np.ndarray:
    """Training pairs of every epoch: ``per_task`` random ordered pairs of each task, shuffled.

    Args:
        train: the training :class:`~regseg.datasets.learn2reg.TaskDatasets`.
        tasks: ``{task: TaskSpec}``; a task's ``train_groups`` restricts pairs to one group
            (the deformed copies of one lung CT).
        per_task: pairs per task and epoch.
        epochs: number of epochs.
        seed: epoch ``e`` uses ``numpy.random.default_rng([seed, e])`` (a resumed run sees the
            same pairs).
    Returns:
        int ``(epochs, T * per_task, 2)`` global (moving, fixed) indices, moving != fixed, both
        of one task (and group); tasks with fewer than 2 samples are skipped.
    """
    out = []
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        rows = []
        for key in train.parts:
            idx = train.indices(key)
            if len(idx) < 2:
                continue
            spec = tasks.get(key)
            groups = np.asarray(spec.train_groups if spec is not None and spec.train_groups
                                else np.zeros(len(idx), int))
            counts = {g: int(np.sum(groups == g)) for g in set(groups.tolist())}
            movable = np.flatnonzero([counts[g] > 1 for g in groups.tolist()])
            if not len(movable):
                continue
            for _ in range(per_task):
                m = int(movable[rng.integers(len(movable))])
                same = np.flatnonzero((groups == groups[m]) & (np.arange(len(idx)) != m))
                f = int(rng.choice(same))
                rows.append((idx[m], idx[f]))
        rows = np.asarray(rows, dtype=np.int64)
        out.append(rows[rng.permutation(len(rows))])
    return np.stack(out)


class PyramidMethod(KerasMethod):
    """The registration pyramid (§2), trained on the pairs of all tasks at once (§3)."""

    key, label = "pyramid", "Ours"

    def model_config(self, ctx):
        from .model import PyramidConfig
        config = PyramidConfig(input_shape=tuple(ctx.preset.shape),
                               n_labels=int(ctx.splits.n_labels)).to_dict()
        if ctx.args.released_code:
            config.update(RELEASED)
        return config

    def _config(self, config):
        from .model import PyramidConfig
        return PyramidConfig.from_dict(config)

    def build(self, config):
        from .model import build_pyramid
        return build_pyramid(self._config(config))

    def compile(self, train_model, config, ctx):
        import keras

        from .model import compile_losses
        loss, weights = compile_losses(self._config(config))
        train_model.compile(optimizer=keras.optimizers.Adam(self._lr(ctx)), loss=loss,
                            loss_weights=weights)

    def _lr(self, ctx):
        return RELEASED_LEARNING_RATE if ctx.args.released_code else ctx.preset.learning_rate

    def training_mapping(self, config):
        classes = int(config["n_labels"]) + 1
        eye = np.eye(classes, dtype=np.float32)
        terms = None

        def mapping(moving, fixed):
            nonlocal terms
            if terms is None:
                from .model import compile_losses
                terms = list(compile_losses(self._config(config))[0])
            inputs = {"moving": moving.image[..., None].astype(np.float32),
                      "fixed": fixed.image[..., None].astype(np.float32),
                      "moving_seg": eye[np.clip(moving.label("structures"), 0, classes - 1)],
                      "fixed_seg": eye[np.clip(fixed.label("structures"), 0, classes - 1)]}
            return inputs, {k: np.zeros((), np.float32) for k in terms}
        return mapping

    def schedule(self, ctx):
        lr = self._lr(ctx)
        pre = int(ctx.args.pretrain_epochs)
        return lambda epoch, current=None: float(ctx.preset.learning_rate if epoch < pre else lr)

    def training_plan(self, ctx, config):
        from regseg.training.pairs import pair_dataset

        preset, splits = ctx.preset, ctx.splits
        pairs = task_pairs(splits.train, splits.tasks, preset.pairs_per_task, preset.epochs,
                           ctx.seed)
        pre = int(ctx.args.pretrain_epochs)
        if pre:  # released code: pre-training on a fixed set of 50 pairs per task
            fixed_set = task_pairs(splits.train, splits.tasks, 50, 1, ctx.seed + 10_000)[0]
            rng = np.random.default_rng([ctx.seed, 10_001])
            for e in range(min(pre, preset.epochs)):
                pairs[e] = fixed_set[rng.integers(len(fixed_set), size=pairs.shape[1])]
        mapping = self.training_mapping(config)

        def make_train(first_epoch):
            return pair_dataset((splits.train, splits.train), pairs[first_epoch:].reshape(-1, 2),
                                preset.batch_size, mapping)
        return TrainingPlan(make_train, pairs.shape[1] // preset.batch_size, preset.epochs,
                            self.schedule(ctx), None)

    def registrar(self, predict_model, config):
        from .model import PyramidRegistrar
        return PyramidRegistrar(predict_model)


class _Recorder:
    """Wraps a registrar and keeps each pair's displacement (for the scorer's evaluation)."""

    def __init__(self, registrar):
        self.registrar, self.records = registrar, {}

    def register(self, moving, fixed):
        out = self.registrar.register(moving, fixed)
        self.records[(moving.subject_id, fixed.subject_id)] = np.asarray(out["displacement"])
        return out


@dataclass
class PyramidEvaluation:
    """Per-task :class:`~regseg.evaluation.pairs.PairEvaluation` plus the scorer's per-pair rows.

    Attributes:
        tasks: ``{task: PairEvaluation}`` at the network grid.
        scores: DataFrame, one row per (task, pair, method): the Learn2Reg scores at the
            original resolution (:func:`~regseg.evaluation.learn2reg.learn2reg_scores`).
        landmarks: DataFrame, one row per (task, pair, method, landmark): TRE mm.
        cpu_seconds: median CPU seconds of one prediction at ``cpu_shape`` (§3's 64^3).
        cpu_shape: that grid.
        submissions: folder of the Learn2Reg displacement files written for "Ours".
    """

    tasks: dict = field(default_factory=dict)
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    landmarks: pd.DataFrame = field(default_factory=pd.DataFrame)
    cpu_seconds: float = float("nan")
    cpu_shape: tuple = ()
    submissions: str = ""

    def _concat(self, attr):
        frames = []
        for key, ev in self.tasks.items():
            df = getattr(ev, attr)
            if len(df):
                df = df.copy()
                df.insert(0, "task", key)
                frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def per_pair_dice(self):
        """Dice at the network grid, all tasks (column ``task``, then ``method``, structures)."""
        frames = []
        for key, ev in self.tasks.items():
            df = ev.per_pair_dice()
            if len(df):
                df = df.reset_index()
                df.insert(0, "task", key)
                frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @property
    def deformation(self):
        return self._concat("deformation")

    @property
    def tre(self):
        return self._concat("tre")

    @property
    def seconds(self):
        return self._concat("seconds")

    @property
    def examples(self):
        return {k: ev.examples for k, ev in self.tasks.items()}


def cpu_seconds_per_pair(config: dict, shape, repeats: int = 3) -> float:
    """Median CPU seconds of one prediction of the pyramid at ``shape`` (weights do not matter).

    The model is built at ``shape``, traced once (not timed), then ``repeats`` predictions of a
    random pair are timed (prediction only, as Table 1's footnote a).
    """
    from types import SimpleNamespace

    from .model import PyramidConfig, PyramidRegistrar, build_pyramid

    cfg = PyramidConfig.from_dict({**config, "input_shape": list(shape)})
    _, predict = build_pyramid(cfg)
    reg = PyramidRegistrar(predict)
    rng = np.random.default_rng(0)
    pair = [SimpleNamespace(image=rng.random(tuple(shape), dtype=np.float32), subject_id=s)
            for s in ("a", "b")]
    reg.register(*pair)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reg.register(*pair)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _short(key, spec):
    return f"Task {key[-1]}" + ("" if spec.is_paper_dataset else " stand-in")


def _wilcoxon(ours, initial, alternative):
    from regseg.evaluation.statistics import paired_wilcoxon
    return paired_wilcoxon(ours, initial, alternative)


class Pyramid(Reproduction):
    key, module = "pyramid", "regseg.reproductions.pyramid.reproduction"
    title = "Table 1 of the deformable registration pyramid (Gunnarsson et al., Learn2Reg 2020)"
    presets, default_preset = PRESETS, "quick"
    datasets = {
        "learn2reg2020": DatasetSpec("learn2reg2020", _learn2reg("2020"), missing_root=(
            "this preset needs your Learn2Reg 2020 data: --data-root holding task_02/, task_03/, "
            "task_04/ (see datasets/learn2reg.py for the layout)")),
        "learn2reg": DatasetSpec("learn2reg", _learn2reg("json"), missing_root=(
            "--dataset learn2reg needs --data-root holding the task folders with their "
            "<Name>_dataset.json")),
        "standins": DatasetSpec("standins", _standins, missing_root=(
            "the quick preset needs the shared data: --data-root ../shared/data (or "
            "REGSEG_DATA_ROOT) holding msd_hippocampus/, chaos_t2/, lung_ct/ and "
            "lung_ct_pair_elastix/")),
    }

    def methods(self):
        return {"initial": IdentityMethod("initial", "Initial"), "pyramid": PyramidMethod()}

    def add_arguments(self, p):
        p.add_argument("--released-code", action="store_true",
                       help="the authors' code where it differs from the paper: DenseNet 16 "
                            "filters, affine applied to displacements, local 9^3 NCC, betas x10, "
                            "kernel L2 1e-3, learning rate 5e-5 (README, fidelity table)")
        p.add_argument("--pretrain-epochs", type=int, default=0,
                       help="released code: the first N epochs train on a fixed set of 50 pairs "
                            "per task at the preset's learning rate (default 0: no pre-training)")
        p.add_argument("--no-submission", action="store_true",
                       help="do not write the Learn2Reg displacement files of the test pairs")

    def describe(self, preset, args):
        from .model import PyramidConfig, build_pyramid
        config = PyramidConfig(input_shape=tuple(preset.shape))
        if getattr(args, "released_code", False):
            config = PyramidConfig.from_dict({**config.to_dict(), **RELEASED})
        _, predict = build_pyramid(config)
        predict.summary(line_length=120, expand_nested=False)
        n = predict.count_params()
        print(f"paper (§2.1): {published.PARAMETERS / 1e6:.1f} million; difference "
              f"{(n - published.PARAMETERS) / 1e6:+.2f} million (README, fidelity table)")
        print(f"parameters: {n}")
        return n

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, ctx, registrars):
        from regseg.datasets.learn2reg import file_grid, original_resolution_recipe
        from regseg.datasets.subjects import read_subject
        from regseg.evaluation.learn2reg import (displacement_name, learn2reg_scores,
                                                 resample_displacement, write_displacement_2020,
                                                 write_displacement_nifti)
        from regseg.evaluation.pairs import evaluate_pairs

        labels = {k: m.label for k, m in self.methods().items()}
        result = PyramidEvaluation()
        rows, lm_rows = [], []
        submit = None if ctx.args.no_submission else ctx.out_dir / "learn2reg_submission"
        for key, spec in ctx.splits.tasks.items():
            print(f"--- {spec.title}: {len(spec.pairs)} test pair(s)", flush=True)
            recorders = {labels[k]: _Recorder(r) for k, r in registrars.items()}
            result.tasks[key] = evaluate_pairs(recorders, spec.test, spec.pairs,
                                               structures="structures",
                                               jacobian_mask=spec.jacobian_mask)
            test = spec.test
            recipe = original_resolution_recipe(test.recipe)
            originals = {}

            def original(i):
                if i not in originals:
                    originals[i] = recipe(read_subject(test.subjects[i]))
                return originals[i]

            ids = list(range(1, len(test.structure_names) + 1))
            n_files = ctx.preset.submission_pairs
            for n_pair, (m_i, f_i) in enumerate(spec.pairs):
                mov, fix = test.load(int(m_i)), test.load(int(f_i))
                mov_o, fix_o = original(int(m_i)), original(int(f_i))
                pair_id = f"{mov.subject_id}->{fix.subject_id}"
                for method, rec in recorders.items():
                    disp = rec.records[(mov.subject_id, fix.subject_id)]
                    disp_o = resample_displacement(disp, fix.affine, mov.affine, fix_o.shape,
                                                   fix_o.affine, mov_o.affine)
                    dice = "dice" in spec.scores
                    scores = learn2reg_scores(
                        disp_o,
                        fixed_labels=fix_o.label("structures") if dice else None,
                        moving_labels=mov_o.label("structures") if dice else None,
                        labels=ids, spacing=fix_o.spacing,
                        mask=fix_o.masks.get(spec.jacobian_mask) if spec.jacobian_mask else None,
                        fixed_points=fix_o.landmarks_voxels() if "tre" in spec.scores else None,
                        moving_points=mov_o.landmarks_voxels() if "tre" in spec.scores else None)
                    errors = scores.pop("TRE landmarks", None)
                    if errors is not None:
                        lm_rows += [{"task": key, "pair": pair_id, "method": method,
                                     "landmark": k, "TRE mm": float(e)}
                                    for k, e in enumerate(errors)]
                    rows.append({"task": key, "pair": pair_id, "method": method, **scores})
                    if submit is not None and method == labels["pyramid"] and (
                            n_files is None or n_pair < n_files):
                        self._write_submission(submit / key, test, int(m_i), int(f_i), disp, mov,
                                               fix, file_grid, resample_displacement,
                                               displacement_name, write_displacement_nifti,
                                               write_displacement_2020)
        result.scores = pd.DataFrame(rows)
        result.landmarks = pd.DataFrame(lm_rows)
        result.submissions = str(submit) if submit is not None else ""
        if "pyramid" in registrars:
            config = self.methods()["pyramid"].model_config(ctx)
            shape = tuple(ctx.preset.cpu_time_shape)
            if shape == tuple(ctx.preset.shape):
                sec = result.seconds
                ours = sec[sec["method"] == labels["pyramid"]]["seconds"] if len(sec) else []
                result.cpu_seconds = float(np.median(ours)) if len(ours) else float("nan")
            else:
                print(f"--- CPU time per pair at {shape}", flush=True)
                result.cpu_seconds = cpu_seconds_per_pair(config, shape)
            result.cpu_shape = shape
        return result

    @staticmethod
    def _write_submission(folder, test, m_i, f_i, disp, mov, fix, file_grid, resample, name,
                          write_nifti, write_2020):
        """The pair's displacement on the fixed FILE's grid (voxel order as stored)."""
        fixed_path, moving_path = test.subjects[f_i].image_path, test.subjects[m_i].image_path
        shape, fixed_affine = file_grid(fixed_path)
        _, moving_affine = file_grid(moving_path)
        field_ = resample(disp, fix.affine, mov.affine, shape, fixed_affine, moving_affine)
        fid, mid = fix.subject_id, mov.subject_id
        write_nifti(folder / name(fid, mid, "nifti"), field_, fixed_affine)
        if not any(s % 2 for s in shape):
            write_2020(folder / name(fid, mid, "2020"), field_)

    def header(self, ctx, evaluation):
        tasks = ctx.splits.tasks
        out = {"test pairs": "; ".join(f"{k}: {len(t.pairs)}" for k, t in tasks.items()),
               "training samples": "; ".join(f"{k}: {len(p)}" for k, p in
                                             ctx.splits.train.parts.items())}
        if evaluation.submissions:
            out["Learn2Reg displacement files"] = evaluation.submissions
        if ctx.args.released_code:
            out["released-code options"] = "on (README, fidelity table)"
        return out

    def report(self, ctx, evaluation):
        from regseg.evaluation.metrics import worst_fraction_mean

        scores = evaluation.scores
        rows, index = [], []
        ours_label = "Ours"
        for key, spec in ctx.splits.tasks.items():
            task = scores[scores["task"] == key]
            for method in ("Ours", "Initial"):
                s = task[task["method"] == method]
                if not len(s):
                    continue
                row = {c: np.nan for c in published.COLUMNS}
                if "tre" in spec.scores:
                    lm = evaluation.landmarks
                    lm = lm[(lm["task"] == key) & (lm["method"] == method)]["TRE mm"]
                    row["TRE"] = float(s["TRE mm"].mean())
                    # one pair: TRE30 over its landmarks; several pairs: over the pairs
                    row["TRE30"] = worst_fraction_mean(
                        (lm if len(s) == 1 else s["TRE mm"]).to_numpy(), 0.3,
                        higher_is_better=False)
                if "dice" in spec.scores:
                    row["DSC"] = float(s["DSC"].mean())
                    row["DSC30"] = worst_fraction_mean(s["DSC"].to_numpy(), 0.3)
                    row["HD95"] = float(s["HD95"].mean())
                row["SDlogJ"] = float(s["SDlogJ L2R"].mean())
                row["SDlogJ plain"] = float(s["SDlogJ"].mean())
                row["folded %"] = 100.0 * float(s["folding fraction"].mean())
                row["GPU s"] = np.nan
                if method == ours_label:
                    row["CPU s"] = evaluation.cpu_seconds
                    initial = task[task["method"] == "Initial"]
                    merged = s.merge(initial, on="pair", suffixes=("", " initial"))
                    if "dice" in spec.scores:
                        row["p vs Initial"] = _wilcoxon(merged["DSC"], merged["DSC initial"],
                                                        "greater")
                    elif "tre" in spec.scores and len(evaluation.landmarks):
                        lm = evaluation.landmarks[evaluation.landmarks["task"] == key]
                        a = lm[lm["method"] == "Ours"].sort_values(["pair", "landmark"])
                        b = lm[lm["method"] == "Initial"].sort_values(["pair", "landmark"])
                        row["p vs Initial"] = _wilcoxon(a["TRE mm"], b["TRE mm"], "less")
                row["pairs"] = len(s)
                rows.append(row)
                index.append(f"{_short(key, spec)} — {method}")
            for method in ("Ours", "Initial"):
                pub = published.TABLE1.get(key, {}).get(method)
                if pub:
                    rows.append({c: (np.nan if v is None else v) for c, v in pub.items()})
                    index.append(f"Task {key[-1]} published (Learn2Reg 2020 test) — {method}")
        table = pd.DataFrame(rows, index=pd.Index(index, name="task — method"))
        cols = published.COLUMNS + ["SDlogJ plain", "folded %", "p vs Initial", "pairs"]
        table = table[[c for c in cols if c in table.columns]]
        cpu_shape = "x".join(map(str, evaluation.cpu_shape)) if evaluation.cpu_shape else "?"
        tasks_line = " ".join(f"{_short(k, t)}: {t.title}." for k, t in ctx.splits.tasks.items())
        notes = (tasks_line + " " +
            "Scored at the original image resolution as the Learn2Reg 2020 scorer does: TRE in "
            "mm (fixed landmarks moved by the field, cubic interpolation); DSC over the labels "
            "present in both images; HD95 in voxels (unit spacing, DeepMind surface distance); "
            "SDlogJ = std(log(clip(det J + 3))) on the 2-voxel-cropped field (the scorer's "
            "'+3' quirk; Task 2 inside the fixed lung mask); 'SDlogJ plain' without the quirk; "
            "'folded %' = voxels with det J <= 0. DSC30 / TRE30 = mean of the worst 30 % of "
            "pairs (TRE30 of a single pair: of its worst 30 % landmarks). 'p vs Initial' = "
            "one-sided Wilcoxon signed-rank test, paired by test pair (DSC) or landmark (TRE). "
            f"CPU s = median prediction time per pair at {cpu_shape} on this machine (2 cores; "
            "published: 4.83 s CPU, 0.31 s GPU); no GPU here. Published rows: the paper's "
            "Table 1 on the Learn2Reg 2020 test sets (different data for Tasks 2 and 3).")
        tables = [Table("table1", table, f"Gunnarsson et al. Table 1: registration pyramid vs "
                                         f"Initial{ctx.title_suffix}", notes)]
        if len(scores):
            per_pair = scores.set_index(["task", "pair", "method"])
            tables.append(Table("per_pair_learn2reg", per_pair,
                                f"Learn2Reg scores per test pair{ctx.title_suffix}",
                                "Original resolution; see table1.md for the definitions."))
        if len(evaluation.landmarks):
            tables.append(Table("per_landmark_tre",
                                evaluation.landmarks.set_index(["task", "pair", "method",
                                                                "landmark"]),
                                f"TRE per landmark (lung CT pair){ctx.title_suffix}",
                                "mm; fixed = baseline, moving = follow-up on the baseline grid."))
        return tables

    def figures(self, ctx, evaluation, results_dir):
        from .figures import table2_figure
        rows = []
        for key, ev in evaluation.tasks.items():
            ex = ev.examples.get("Ours")
            if ex is not None and "levels" in ex["outputs"]:
                rows.append((ctx.splits.tasks[key].title, ex))
        if rows:
            table2_figure(rows, results_dir / "table2_levels.png",
                          title=f"Gunnarsson et al. Table 2: I_m, I_m o phi(4), phi(2), phi(0), "
                                f"I_f{ctx.title_suffix}")


REPRODUCTION = Pyramid()
