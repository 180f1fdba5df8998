"""DeepAtlas training: the 1:20 alternation of §2.3 (step counters of each network), resume in
the middle of an alternating run, the training pairs of §2.2/§3, the labeled subsets, the
best-epoch rule and the stand-in lambda_r."""

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from regseg.datasets.subjects import Sample, Subject
from regseg.reproductions.deepatlas import reproduction as R
from regseg.training.distribute import make_strategy
from regseg.training.fit import completed_epochs, fit, step_decay
from regseg.training.pairs import pair_dataset

TINY = dict(seg_encoder=[[2], [2], [2]], seg_decoder=[[2], [2], [2], [2]],
            reg_encoder=[2, 2, 2, 2], reg_decoder=[2, 2, 2, 2, 2])


class _Images:
    """Eight 16^3 samples: a bright box moving by one voxel per subject; labels = the box."""

    def __init__(self, n=8):
        self.samples = []
        for i in range(n):
            image = np.zeros((16, 16, 16), np.float32)
            labels = np.zeros((16, 16, 16), np.int32)
            s = 4 + i % 3
            image[s:s + 6, 5:11, 4:12], labels[s:s + 6, 5:11, 4:12] = 1.0, 1
            self.samples.append(Sample(f"s{i}", {"t1": image + 0.01 * i},
                                       {"segmentation": labels, "structures": labels}))

    def __len__(self):
        return len(self.samples)

    def load(self, i):
        return self.samples[int(i)]


def _config(kind, ratio=(1, 20)):
    from regseg.reproductions.deepatlas.model import DeepAtlasConfig

    network = DeepAtlasConfig((16, 16, 16), 1, lambda_r=100.0, **TINY)
    return {"kind": kind, "n_labeled": 2, "labeled_ids": ["s0", "s1"],
            "network": network.to_dict(), "init": {},
            "learning_rates": {"segmentation": 1e-4, "registration": 5e-4},
            "ratio": list(ratio), "flip": False}


def _dataset(config, epochs, steps):
    images = _Images()
    labeled = np.array([s.subject_id in config["labeled_ids"] for s in images.samples])
    pairs = np.stack([R.epoch_pairs(config["kind"], labeled, steps, np.random.default_rng([0, e]),
                                    False) for e in range(epochs)])
    mapping = R.pair_mapping(config["labeled_ids"])
    return lambda first: pair_dataset((images, images), pairs[first:].reshape(-1, 2), 1, mapping)


def _rate(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate.value))


def _da_model(config):
    keras.utils.set_random_seed(0)
    with make_strategy().scope():
        model, nets = R.DeepAtlasMethod("da_n2", "da", 2).build(config)
        model.compile()
    return model, nets


def test_one_to_twenty_alternation_counts_the_steps_of_each_network(tmp_path):
    config = _config("da")
    model, nets = _da_model(config)
    before = {k: [w.copy() for w in n.get_weights()] for k, n in nets.items()}
    fit(model, _dataset(config, 1, 43), tmp_path / "run", epochs=1, steps_per_epoch=43,
        schedule=step_decay(1.0, 10), verbose=0)
    # steps 0, 21, 42 train F_s; the 40 others F_R (§2.3: "a 1:20 ratio")
    assert model.step_counts() == {"step": 43, "segmentation": 3, "registration": 40}
    for name, net in nets.items():
        assert any(not np.array_equal(a, b) for a, b in zip(before[name], net.get_weights()))
    # each phase has its own Adam at §3's rate (relative schedule factor 1 in epoch 0)
    rates = {o.name: _rate(o) for o in model.phase_optimizers}
    assert rates == pytest.approx({"segmentation": 1e-4, "registration": 5e-4})


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_interrupted_deepatlas_run_resumes_mid_cycle_to_the_same_networks(tmp_path):
    config = _config("da", ratio=(1, 4))   # cycle of 5 steps, epochs of 7: ends mid-cycle
    epochs, steps = 3, 7
    schedule = step_decay(1.0, 2, 0.2)
    full, full_nets = _da_model(config)
    fit(full, _dataset(config, epochs, steps), tmp_path / "full", epochs=epochs,
        steps_per_epoch=steps, schedule=schedule, verbose=0)
    assert full.step_counts() == {"step": 21, "segmentation": 5, "registration": 16}

    model, _ = _da_model(config)
    with pytest.raises(KeyboardInterrupt):
        fit(model, _dataset(config, epochs, steps), tmp_path / "cut", epochs=epochs,
            steps_per_epoch=steps, schedule=schedule, verbose=0, extra_callbacks=[_Interrupt()])
    assert completed_epochs(tmp_path / "cut") == 2
    assert model.step_counts() == {"step": 14, "segmentation": 3, "registration": 11}
    resumed, nets = _da_model(config)
    fit(resumed, _dataset(config, epochs, steps), tmp_path / "cut", epochs=epochs,
        steps_per_epoch=steps, schedule=schedule, verbose=0, resume=True)
    assert resumed.step_counts() == full.step_counts()
    for name in ("segmentation", "registration"):
        for u, v in zip(full_nets[name].get_weights(), nets[name].get_weights()):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    # epoch 3 runs at 0.2 x the initial rates (decay at half of the run, §3 "decay by 0.2")
    assert [_rate(o) for o in resumed.phase_optimizers] == pytest.approx(
        [0.2e-4, 1e-4])


def test_baseline_and_semi_runs_train_only_their_network(tmp_path):
    for kind, trained, fixed in (("baseline_seg", "segmentation", None),
                                 ("baseline_reg", "registration", None),
                                 ("semi_seg", "segmentation", "registration"),
                                 ("semi_reg", "registration", "segmentation")):
        config = _config(kind)
        keras.utils.set_random_seed(0)
        model, nets = R.DeepAtlasMethod(f"{kind}_n2", kind, 2).build(config)
        model.compile()
        assert set(nets) == ({trained} if fixed is None else {trained, fixed})
        before = {k: [w.copy() for w in n.get_weights()] for k, n in nets.items()}
        fit(model, _dataset(config, 1, 2), tmp_path / kind, epochs=1, steps_per_epoch=2,
            schedule=step_decay(1.0, 10), verbose=0)
        assert model.step_counts()[trained] == 2
        changed = {k: any(not np.array_equal(a, b) for a, b in zip(before[k], n.get_weights()))
                   for k, n in nets.items()}
        assert changed[trained]
        if fixed is not None:
            # batch-norm statistics of a fixed F_s are not updated either (inference mode)
            assert not changed[fixed]


def test_training_pairs_follow_the_rules_of_each_run():
    labeled = np.array([True, False, False, True, False, False])
    rng = np.random.default_rng(0)
    seg = R.epoch_pairs("baseline_seg", labeled, 50, rng, False)
    assert (seg[:, 0] == seg[:, 1]).all() and set(seg[:, 0]) == {0, 3}
    base = R.epoch_pairs("baseline_reg", labeled, 400, rng, False)
    assert (base[:, 0] != base[:, 1]).all()
    assert (~labeled[base[:, 0]] & ~labeled[base[:, 1]]).any()   # all M images (§3)
    for kind in ("semi_seg", "semi_reg", "da"):
        pairs = R.epoch_pairs(kind, labeled, 400, rng, False)
        assert (pairs[:, 0] != pairs[:, 1]).all()
        # "we do not use two unlabeled images for training" (§2.2)
        assert (labeled[pairs[:, 0]] | labeled[pairs[:, 1]]).all()
        admissible = {(i, j) for i in range(6) for j in range(6)
                      if i != j and (labeled[i] or labeled[j])}
        assert {tuple(int(v) for v in p) for p in pairs} == admissible     # 18, all drawn
    flipped = R.epoch_pairs("da", labeled, 400, rng, True)
    assert (flipped >= 6).any() and (flipped < 6).any()
    assert (labeled[flipped[:, 0] % 6] | labeled[flipped[:, 1] % 6]).all()
    with pytest.raises(ValueError, match="labeled"):
        R.epoch_pairs("da", np.zeros(4, bool), 3, rng, False)


def test_flip_view_mirrors_images_and_labels_along_the_sagittal_axis():
    images = _Images(2)
    view = R.FlipView(images)
    original, mirrored = view.load(0), view.load(2)
    np.testing.assert_array_equal(mirrored.image, original.image[::-1])
    np.testing.assert_array_equal(mirrored.segmentation, original.segmentation[::-1])
    assert mirrored.subject_id == original.subject_id and len(view) == 4


def test_pair_mapping_marks_only_the_experiments_labeled_images():
    images = _Images(2)
    inputs, targets = R.pair_mapping(["s1"])(images.load(0), images.load(1))
    assert inputs["moving_labeled"] == 0 and inputs["fixed_labeled"] == 1
    assert not targets["moving_labels"].any()
    np.testing.assert_array_equal(targets["fixed_labels"], images.load(1).segmentation)
    assert inputs["moving"].shape == (16, 16, 16, 1)


def test_labeled_subsets_are_nested_and_respect_the_subset():
    subjects = [Subject(f"a{i}", "x.nii.gz", "y.nii.gz", group="MMRR-21") for i in range(6)]
    subjects += [Subject(f"b{i}", "x.nii.gz", "y.nii.gz", group="HLN-12") for i in range(6)]
    subjects += [Subject("c", "x.nii.gz")]                       # an unlabeled image
    train = SimpleNamespace(subjects=subjects)
    one, five = (R.labeled_subjects(train, n, subset="MMRR-21") for n in (1, 5))
    assert set(one) <= set(five) and len(five) == 5
    assert all(i.startswith("a") for i in five)                  # §3: MMRR-21 only
    assert len(R.labeled_subjects(train, "all")) == 12            # every image with labels
    with pytest.raises(ValueError, match="only 6"):
        R.labeled_subjects(train, 7, subset="MMRR-21")


def test_best_epoch_is_the_highest_validation_score(tmp_path):
    path = tmp_path / "validation.csv"
    path.write_text("epoch,segmentation,score\n0,0.5,0.5\n1,0.7,0.7\n2,0.7,0.7\n3,0.6,0.6\n")
    assert R.best_epoch(path) == 1
    assert R.best_epoch(tmp_path / "none.csv") is None


def test_stand_in_lambda_r_keeps_the_physical_penalty():
    # the paper's own grid gives the paper's value
    assert R.stand_in_lambda_r(20000, 1.0, (160,) * 3, 1.0, (160,) * 3) == pytest.approx(20000)
    # half the field of view (same voxels): normalised displacements double -> lambda / 4
    assert R.stand_in_lambda_r(20000, 1.0, (161,) * 3, 1.0, (81,) * 3) == pytest.approx(5000)
    # the same field of view at 2 mm: second differences x 4, squared -> lambda / 16
    assert R.stand_in_lambda_r(5000, 1.0, (161,) * 3, 2.0, (81,) * 3) == pytest.approx(312.5)
    # one smooth field (mm) on the paper's grid and on a 2 mm grid over the same 40 mm:
    # lambda_r times eq. 5 is the same
    from regseg.reproductions.deepatlas.model import regularity_loss

    def energy(n, h):
        x = np.stack(np.meshgrid(*[np.arange(n) * h] * 3, indexing="ij"), -1)     # mm
        v = 3.0 * np.sin(2 * np.pi * x / 40.0 + np.array([0.3, 1.1, 2.0]))       # mm
        return float(regularity_loss((v / ((n - 1) * h / 2))[None].astype(np.float32))[0])

    lam = R.stand_in_lambda_r(5000, 1.0, (41,) * 3, 2.0, (21,) * 3)
    assert lam == pytest.approx(312.5)
    assert lam * energy(21, 2.0) == pytest.approx(5000 * energy(41, 1.0), rel=0.03)


def test_methods_follow_the_preset_and_start_from_their_baselines():
    repro = R.DeepAtlas()
    repro.active_preset = "quick"
    keys = list(repro.methods())
    assert keys == ["baseline_reg_n0", "semi_seg_n1", "da_n1", "baseline_seg_n5",
                    "baseline_reg_n5", "semi_seg_n5", "semi_reg_n5", "da_n5",
                    "baseline_seg_all", "baseline_reg_all"]
    m = repro.methods()
    assert m["da_n1"].init == {"segmentation": "semi_seg_n1", "registration": "baseline_reg_n0"}
    assert m["da_n5"].init == {"segmentation": "baseline_seg_n5",
                               "registration": "baseline_reg_n5"}
    assert "registration" in m["semi_seg_n1"].init and "segmentation" not in m["semi_seg_n1"].init
    rows = R.table_rows(R.PRESETS["quick"])
    assert [(n, model) for n, model, _, _ in rows] == [
        (0, "Baseline"), (1, "Semi-DA"), (1, "DA"), (5, "Baseline"), (5, "Semi-DA"), (5, "DA"),
        ("all", "Baseline")]
    assert R.paper_n(R.PRESETS["quick"], 5) == 5 and R.paper_n(R.PRESETS["quick"], "all") == 200
    assert R.paper_n(R.PRESETS["quick-brain"], 3) == 21
    repro.active_preset = None   # every preset's runs (python -m regseg register)
    assert {"da_n10", "da_n21", "da_n3"} <= set(repro.methods())
