"""A new paper needs no copy of the orchestration: a toy reproduction of a few lines on the runner.

The toy paper has one trained method (a one-convolution displacement network), one baseline and
one published number; its data are small synthetic NIfTI volumes (shifted boxes) written by the
dataset loader itself. The runner resolves the data, trains under MirroredStrategy with
checkpoints and resume, evaluates with ``evaluate_pairs`` and writes the table beside the
published value with the provenance header.
"""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from regseg.evaluation.tables import read_result_csv
from regseg.training import runner as R

PUBLISHED_MEAN_DICE = 0.9  # the toy paper's only published number


def _load_toy(root, ctx):
    """Ten 16^3 volumes: a bright box, shifted by up to 2 voxels; labels = the box."""
    from regseg.datasets import LabelMapping, Recipe, Subject, SubjectDataset, Splits
    from regseg.datasets.recipes import MapLabels, MinMax

    folder = R.Path(ctx.args.output_dir) / "toy_data"
    subjects = []
    for i in range(10):
        img = np.zeros((16, 16, 16), np.float32)
        lab = np.zeros((16, 16, 16), np.int16)
        s = 4 + i % 3
        img[s:s + 7, 5:11, 4:12] = 1.0
        lab[s:s + 7, 5:11, 4:12] = 1
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(img + 0.01 * i, affine), str(folder / f"t{i}_img.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(folder / f"t{i}_lab.nii.gz"))
        subjects.append(Subject(f"t{i}", str(folder / f"t{i}_img.nii.gz"),
                                str(folder / f"t{i}_lab.nii.gz")))
    recipe = Recipe([MinMax(), MapLabels("labels", {"structures": LabelMapping(["box"], {"box": [1]})})])
    make = lambda part: SubjectDataset("TOY synthetic boxes", False, part, recipe)  # noqa: E731
    return Splits(make(subjects[:6]), make(subjects[6:7]), make(subjects[7:]))


class ToyRegistrar:
    def __init__(self, model):
        self.model = model

    def register(self, moving, fixed):
        pair = np.stack([moving.image, fixed.image], -1)[None]
        return {"displacement": np.asarray(self.model(pair))[0]}


class ToyNet(R.KerasMethod):
    key, label = "toy", "Toy net"

    def model_config(self, ctx):
        return {"shape": list(ctx.splits.train.load(0).shape)}

    def build(self, config):
        import keras

        from regseg.layers import SpatialTransformer
        pair = keras.Input((*config["shape"], 2), name="pair")
        disp = keras.layers.Conv3D(3, 3, padding="same", kernel_initializer="zeros")(pair)
        warped = SpatialTransformer(field="displacement")([pair[..., :1], disp])
        return keras.Model(pair, {"warped": warped}), keras.Model(pair, disp)

    def compile(self, model, config, ctx):
        import keras
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss={"warped": "mse"})

    def training_mapping(self, config):
        return lambda m, f: ({"pair": np.stack([m.image, f.image], -1)},
                             {"warped": f.image[..., None]})

    def schedule(self, ctx):
        return lambda epoch: 1e-2

    def registrar(self, predict_model, config):
        return ToyRegistrar(predict_model)


class Identity(R.Method):
    key, label = "identity", "Initial"

    def fit(self, ctx, run_dir):
        from regseg.evaluation.pairs import IdentityRegistrar
        return IdentityRegistrar()


class Toy(R.Reproduction):
    key, module, title = "toy", __name__, "the toy paper"
    presets = {"smoke": R.Preset("smoke", "toy", epochs=2, batch_size=2)}
    default_preset = "smoke"
    datasets = {"toy": R.DatasetSpec("toy", _load_toy, needs_root=False)}

    def methods(self):
        return {"identity": Identity(), "toy": ToyNet()}

    def evaluate(self, ctx, registrars):
        from regseg.evaluation.pairs import evaluate_pairs
        from regseg.training.pairs import all_ordered_pairs
        return evaluate_pairs({self.methods()[k].label: r for k, r in registrars.items()},
                              ctx.splits.test, all_ordered_pairs(len(ctx.splits.test)))

    def report(self, ctx, evaluation):
        from regseg.evaluation.tables import comparison_table
        ours = {m: df.agg(["mean", "std"]).T for m, df in evaluation.dice.items()}
        table = comparison_table(ours, {"Toy net": {"box": (PUBLISHED_MEAN_DICE, None)}}, ["box"])
        return [R.Table("table1", table, f"Toy Table 1{ctx.title_suffix}")]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    args = ["--output-dir", str(out / "run"), "--results-dir", str(out / "results")]
    ctx = Toy().run(args)
    return out, args, ctx


def test_toy_reproduction_runs_end_to_end(toy_run):
    out, _, ctx = toy_run
    table, header = read_result_csv(out / "results" / "table1.csv")
    assert table.at["box", "Toy net published mean"] == PUBLISHED_MEAN_DICE
    per_pair = pd.read_csv(out / "results" / "per_pair_dice.csv", comment="#", index_col=0)
    toy = per_pair[per_pair["method"] == "Toy net"]["box"]
    assert len(toy) == 6                                    # 3 test subjects, ordered pairs
    np.testing.assert_allclose(table.at["box", "Toy net ours mean"], toy.mean())
    np.testing.assert_allclose(table.at["box", "Toy net diff"], toy.mean() - PUBLISHED_MEAN_DICE)
    # the identity row: Dice of the unregistered boxes, computed here by hand
    boxes = [4 + i % 3 for i in (7, 8, 9)]

    def dice(a, b):  # two 7-voxel-long boxes offset by |a - b| along x
        return 2 * max(0, 7 - abs(a - b)) / 14
    expected = np.mean([dice(boxes[i], boxes[j]) for i in range(3) for j in range(3) if i != j])
    initial = per_pair[per_pair["method"] == "Initial"]["box"]
    np.testing.assert_allclose(initial.mean(), expected)
    assert "STAND-IN" in (out / "results" / "table1.md").read_text().splitlines()[0]
    assert header["dataset"] == "TOY synthetic boxes" and header["epochs"] == "2"
    run = json.loads((out / "results" / "run.json").read_text())
    assert run["methods"] == {"identity": "Initial", "toy": "Toy net"}
    manifest = R.read_run_manifest(out / "run" / "toy")
    assert manifest["reproduction"] == __name__ and manifest["model_config"]["shape"] == [16, 16, 16]
    assert (out / "run" / "toy" / "checkpoints" / "epoch_002.weights.h5").is_file()


def test_toy_resume_reuses_the_trained_run_and_a_bad_method_is_refused(toy_run, capsys):
    out, args, _ = toy_run
    before = read_result_csv(out / "results" / "table1.csv")[0]
    with pytest.raises(FileExistsError):
        Toy().run(args)
    Toy().run(args + ["--resume"])
    after = read_result_csv(out / "results" / "table1.csv")[0]
    np.testing.assert_allclose(after["Toy net ours mean"], before["Toy net ours mean"], atol=1e-6)
    assert Toy().main(args + ["--resume", "--methods", "identity"]) == 2   # not a trained method
    assert "--methods" in capsys.readouterr().err


def test_registered_run_loads_through_the_method(toy_run):
    out, _, ctx = toy_run
    manifest = R.read_run_manifest(out / "run" / "toy")
    registrar = ToyNet().load(out / "run" / "toy", manifest)
    test = ctx.splits.test
    a = registrar.register(test.load(0), test.load(1))["displacement"]
    assert a.shape == (16, 16, 16, 3) and np.isfinite(a).all() and np.abs(a).max() > 0


# ------------------------------------------------------------------ data resolution and fallback
def _resolve(download, tmp_path, monkeypatch, *extra):
    monkeypatch.delenv("REGSEG_DATA_ROOT", raising=False)
    monkeypatch.setenv("REGSEG_CACHE", str(tmp_path / "cache"))
    loaded = []

    class Net(Toy):
        datasets = {"web": R.DatasetSpec("web", lambda root, ctx: loaded.append(("web", root)) or "W",
                                         download=download),
                    "demo": R.DatasetSpec("demo", lambda root, ctx: loaded.append(("demo", root)) or "D",
                                          needs_root=False)}
        presets = {"smoke": R.Preset("smoke", "web", 1, 1)}

    repro = Net()
    args = repro.parser().parse_args(list(extra))
    ctx = R.RunContext(repro, args, repro.presets["smoke"])
    R.resolve_data(repro, ctx)
    return ctx, loaded


def test_only_a_failed_download_falls_back_to_the_demo(tmp_path, monkeypatch, capsys):
    from regseg.datasets.download import DownloadError

    def offline(cache):
        raise DownloadError("http://127.0.0.1:9/x: download failed: connection refused")

    ctx, loaded = _resolve(offline, tmp_path, monkeypatch)
    assert ctx.dataset_key == "demo" and loaded == [("demo", None)]
    assert "REPRODUCES NOTHING" in capsys.readouterr().out

    ctx, loaded = _resolve(lambda cache: cache, tmp_path, monkeypatch)   # download works
    assert ctx.dataset_key == "web" and loaded == [("web", tmp_path / "cache")]

    ctx, loaded = _resolve(offline, tmp_path, monkeypatch, "--no-download")
    assert ctx.dataset_key == "demo"

    def buggy(cache):
        raise KeyError("a bug in the downloader")

    with pytest.raises(KeyError, match="a bug"):                         # a bug is never hidden
        _resolve(buggy, tmp_path, monkeypatch)


def test_a_dataset_that_needs_a_root_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("REGSEG_DATA_ROOT", raising=False)
    repro = Toy()
    repro.datasets = {"mine": R.DatasetSpec("mine", lambda r, c: None, missing_root="give --data-root X")}
    ctx = R.RunContext(repro, repro.parser().parse_args(["--dataset", "mine"]), repro.presets["smoke"])
    with pytest.raises(R.UsageError, match="give --data-root X"):
        R.resolve_data(repro, ctx)


# ------------------------------------------------------------- the step as benchmarks time it
def test_training_setup_is_the_step_fit_runs(tmp_path):
    """``prepare`` + ``training_setup`` (what ``benchmarks/run.py`` times) give the model and
    batches ``fit`` trains: one step of its ``train_function`` on the first batch ends with the
    weights that ``fit`` writes after its only step (1 epoch of 1 batch of all 6 pairs)."""
    from regseg.training.fit import FINAL_WEIGHTS

    args = ["--output-dir", str(tmp_path / "run"), "--results-dir", str(tmp_path / "results"),
            "--epochs", "1", "--batch-size", "6", "--seed", "3", "--no-cache"]
    ctx, wanted = R.prepare(Toy(), args)
    assert wanted == ["toy"] and ctx.strategy is not None and ctx.data_check_seconds > 0
    assert not (tmp_path / "run" / "toy").exists()  # no run folder (the toy data only)
    method = ToyNet()
    setup = method.training_setup(ctx)
    assert setup.batch_size == 6
    inputs, targets = next(iter(setup.dataset))
    assert inputs["pair"].shape == (6, 16, 16, 16, 2)
    setup.model.make_train_function()
    setup.model.train_function(iter([(inputs, targets)]))
    stepped = [np.asarray(w) for w in setup.model.weights]

    method.fit(ctx, tmp_path / "run" / "toy")
    trained, _ = method.build(method.model_config(ctx))
    trained.load_weights(tmp_path / "run" / "toy" / FINAL_WEIGHTS)
    assert any(np.abs(w).max() > 0 for w in stepped)            # the step moved the weights
    for a, b in zip(stepped, trained.weights):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-7)


def test_a_method_without_a_model_has_no_training_setup():
    with pytest.raises(NotImplementedError, match="identity trains no model"):
        Identity().training_setup(None)
