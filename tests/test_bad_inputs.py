"""Bad inputs (issue 12, item 9): every failure a user met, and every case that already worked.

One parametrised case per failure of issue 12 ("What failed", items 1-7: ids ``f1-`` ... ``f7-``)
and per case that already worked ("What already works": ids ``ok-``). Each case asserts

* the exit code of the command line (``REPRODUCTION.main(argv)``: 0, 1 for data and checkpoint
  errors, 2 for usage errors and refused folders or settings) with its one ``error: ...`` line on
  stderr, or the exception type of a library call;
* that the message names the culprit (file, option, subject, setting);
* that nothing already on disk changed: the sha256 of every file under the involved folders,
  before and after (the ``disk`` fixture).

The data are 10 tiny subjects (16^3 voxels at 2 mm, two labels) read as ``--dataset folder``; one
smoke run of the registration-only network is trained once per module and copied for each case
that resumes it. The subprocess test (a file that breaks inside the input pipeline ends the run,
never hangs) is in ``test_reliability_runner.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

SHAPE = (16, 16, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
N_SUBJECTS = 10
METHOD = "registration_only"


# ------------------------------------------------------------------------------ disk checksums
def _digest(*roots) -> dict[str, str]:
    """``{path: sha256}`` of every file under ``roots`` (a file root: itself; missing: nothing)."""
    out = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Disk:
    """Checksums of the involved folders, taken by :meth:`watch` and compared by :meth:`check`."""

    def __init__(self):
        self.roots, self.before = [], {}

    def watch(self, *roots):
        self.roots += [Path(r) for r in roots]
        self.before = _digest(*self.roots)
        assert self.before, "nothing to watch"

    def check(self, *, ignore=()):
        """Assert that no file was changed, removed or added (paths under ``ignore`` excepted)."""
        after = _digest(*self.roots)
        skip = [str(Path(p)) for p in ignore]

        def kept(path):
            return not any(path == s or path.startswith(s + os.sep) for s in skip)

        changed = sorted(p for p in set(self.before) | set(after)
                         if kept(p) and self.before.get(p) != after.get(p))
        assert not changed, f"files changed on disk: {changed}"


@pytest.fixture
def disk():
    return Disk()


# ------------------------------------------------------------------------------------- data
def _save(path, data, affine=AFFINE):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _volumes(k):
    rng = np.random.default_rng(k)
    lab = np.zeros(SHAPE, np.int16)
    o = 3 + k % 4
    lab[o:o + 7, 4:11, 3:10] = 1
    lab[o + 2:o + 5, 6:9, 5:8] = 2
    img = (rng.normal(0, 0.1, SHAPE) + lab).astype(np.float32)
    return img, lab


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """10 subjects ``images/sNN.nii.gz`` + ``labels/sNN.nii.gz`` and a label mapping (read-only)."""
    from regseg.datasets import folder_splits

    base = tmp_path_factory.mktemp("bad_inputs_data")
    data = base / "data"
    for k in range(N_SUBJECTS):
        img, lab = _volumes(k)
        _save(data / "images" / f"s{k:02d}.nii.gz", img)
        _save(data / "labels" / f"s{k:02d}.nii.gz", lab)
    labels = base / "labels.json"
    labels.write_text(json.dumps({"structures": {"A": [1], "B": [2]}}))
    splits = folder_splits(data, labels, sizes=(7, 1, 2), seed=0)
    return SimpleNamespace(data=data, labels=labels, train=splits.train.subject_ids,
                           test=splits.test.subject_ids)


def _argv(data, labels, out, res, *extra):
    return ["--preset", "smoke", "--dataset", "folder", "--data-root", str(data),
            "--labels-json", str(labels), "--no-download", "--methods", METHOD,
            "--output-dir", str(out), "--results-dir", str(res), *extra]


def _main(argv):
    from regseg.reproductions.ureSnet.reproduction import REPRODUCTION
    return REPRODUCTION.main(argv)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One finished smoke run (``run/`` and ``res/``); cases resume copies of it."""
    base = tmp_path_factory.mktemp("bad_inputs_trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REGSEG_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert _main(_argv(tiny.data, tiny.labels, base / "run", base / "res")) == 0
    assert (base / "run" / METHOD / "final.weights.h5").is_file()
    return SimpleNamespace(run=base / "run", res=base / "res")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """A preprocessing cache per case; the accepted spacing restored; no cluster from the env."""
    import regseg.datasets.io as io_module

    monkeypatch.setenv("REGSEG_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(io_module, "SPACING_RANGE_MM", io_module.SPACING_RANGE_MM)
    for name in ("TF_CONFIG", "REGSEG_CLUSTER", "REGSEG_DATA_ROOT"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------ workspace
class Workspace:
    """The folders of one command-line case: the shared data unless a case takes its own copy."""

    def __init__(self, tmp, tiny, trained_run):
        self.tmp, self.tiny, self._trained = tmp, tiny, trained_run
        self.data, self.labels = tiny.data, tiny.labels
        self.out, self.res = tmp / "run", tmp / "res"
        self.train, self.test = tiny.train, tiny.test

    # -- set-ups
    def own_data(self):
        """A private copy of the data, to damage."""
        self.data = self.tmp / "data"
        shutil.copytree(self.tiny.data, self.data)
        return self.data

    def trained_copy(self):
        """A copy of the finished run and its results (same data root, so same settings)."""
        trained = self._trained()
        shutil.copytree(trained.run, self.out)
        shutil.copytree(trained.res, self.res)

    def interrupted_copy(self):
        """The finished run turned into an interrupted one: no final weights, a backup."""
        self.trained_copy()
        run = self.out / METHOD
        backup = run / "backup"
        backup.mkdir()
        (run / "final.weights.h5").rename(backup / "latest.weights.h5")
        (backup / "training_metadata.json").write_text(json.dumps({"epoch": 0, "batch": -1}))
        return run

    def image(self, sid):
        return self.data / "images" / f"{sid}.nii.gz"

    def label(self, sid):
        return self.data / "labels" / f"{sid}.nii.gz"

    def fmt(self, text):
        return text.format(data=self.data, out=self.out, res=self.res, tmp=self.tmp,
                           labels=self.labels, train0=self.train[0], test0=self.test[0],
                           ppid=os.getppid())


@pytest.fixture
def ws(tmp_path, tiny, request):
    return Workspace(tmp_path, tiny, lambda: request.getfixturevalue("trained"))


def _cli(capsys, argv):
    """``(exit code, the error: lines of stderr, stdout)``."""
    code = _main(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in captured.err
    return code, errors, captured.out


# ------------------------------------------------------------------- damaging one subject
def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _rewrite(ws, sid, *, image=None, label=None, affine=AFFINE, label_affine=None):
    img, lab = _volumes(int(sid[1:]))
    if image is not None:
        _save(ws.image(sid), image(img), affine)
    if label is not None or label_affine is not None:
        _save(ws.label(sid), (label or (lambda x: x))(lab),
              affine if label_affine is None else label_affine)


def _nan(img):
    img[3, 4, 5] = np.nan
    return img


def _spacing(mm):
    return np.diag([mm, mm, mm, 1.0])


def _shifted(mm):
    affine = AFFINE.copy()
    affine[:3, 3] = mm
    return affine


def _take_lock(folder, name=".regseg.lock", pid=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"pid": pid or os.getppid(),
                                           "host": socket.gethostname(), "started": 0}))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@dataclass
class Cli:
    """A command-line case: ``prepare(ws)``, extra arguments, exit code, culprit fragments."""

    prepare: object
    extra: tuple
    code: int
    culprit: tuple
    before_training: bool = True    # refused before any training starts
    no_folders: bool = False        # neither --output-dir nor --results-dir created
    drop: tuple = ()                # options (with their value) removed from the base command


def _nothing(ws):
    pass


CLI_CASES = {
    # 1. a corrupt training subject: found before training (no hang in the input pipeline)
    "f1-corrupt-training-subject": Cli(
        lambda ws: (ws.own_data(), _truncate(ws.image(ws.train[0]))), (), 1,
        ("{data}/images/{train0}.nii.gz", "truncated or corrupt"), no_folders=True),
    # 2. --resume checks its settings, naming each difference
    "f2-resume-other-epochs": Cli(Workspace.trained_copy, ("--resume", "--epochs", "2"), 2,
                                  ("{out}/registration_only/settings.json", "epochs: 1 -> 2",
                                   "--resume-with-changes"), before_training=False),
    "f2-resume-other-seed": Cli(Workspace.trained_copy, ("--resume", "--seed", "1"), 2,
                                ("settings.json", "seed: 0 -> 1"), before_training=False),
    "f2-resume-other-batch": Cli(Workspace.trained_copy, ("--resume", "--batch-size", "2"), 2,
                                 ("settings.json", "preset.batch_size: 1 -> 2"),
                                 before_training=False),
    "f2-resume-other-preset": Cli(Workspace.trained_copy, ("--resume", "--preset", "quick"), 2,
                                  ("settings.json", "preset.name: 'smoke' -> 'quick'"),
                                  before_training=False),
    "f2-resume-other-model-option": Cli(Workspace.trained_copy,
                                        ("--resume", "--grid-origin", "one"), 2,
                                        ("settings.json",
                                         "model_config.grid_origin: 'zero' -> 'one'"),
                                        before_training=False),
    "f2-finished-run-given-other-epochs": Cli(
        Workspace.trained_copy, ("--resume", "--resume-with-changes", "--epochs", "3"), 2,
        ("{out}/registration_only/settings.json", "finished after 1 epoch", "cannot make it 3"),
        before_training=False),
    "f2-with-changes-without-resume": Cli(_nothing, ("--resume-with-changes",), 2,
                                          ("--resume-with-changes needs --resume",),
                                          no_folders=True),
    # 3. nothing trained, or internal errors, for bad numbers and names
    "f3-epochs-zero": Cli(_nothing, ("--epochs", "0"), 2, ("--epochs", "got 0"), no_folders=True),
    "f3-epochs-negative": Cli(_nothing, ("--epochs", "-1"), 2, ("--epochs", "got -1"),
                              no_folders=True),
    "f3-batch-negative": Cli(_nothing, ("--batch-size", "-2"), 2, ("--batch-size", "got -2"),
                             no_folders=True),
    "f3-batch-zero": Cli(_nothing, ("--batch-size", "0"), 2, ("--batch-size", "got 0"),
                         no_folders=True),
    "f3-batch-larger-than-an-epoch": Cli(_nothing, ("--batch-size", "3"), 2,
                                         ("--batch-size 3", "2 training pairs"),
                                         before_training=False),
    "f3-methods-mistyped": Cli(_nothing, ("--methods", "registration_onyl"), 2,
                               ("--methods", "registration_onyl", "registration_only, ureSnet"),
                               no_folders=True),
    "f3-methods-untrained-baseline": Cli(_nothing, ("--methods", "rigid"), 2,
                                         ("--methods", "'rigid'"), no_folders=True),
    "f3-methods-empty": Cli(_nothing, ("--methods", ","), 2, ("--methods", "empty"),
                            no_folders=True),
    # 4. a resume blocked by a damaged backup names the file
    "f4-empty-metadata-file": Cli(
        lambda ws: (ws.interrupted_copy() / "backup" / "training_metadata.json").write_text(""),
        ("--resume",), 1, ("{out}/registration_only/backup/training_metadata.json",
                           "corrupt or truncated"), before_training=False),
    "f4-truncated-latest-backup-no-previous": Cli(
        lambda ws: _truncate(ws.interrupted_copy() / "backup" / "latest.weights.h5"),
        ("--resume",), 1, ("{out}/registration_only/backup/latest.weights.h5",
                           "no usable previous backup"), before_training=False),
    # 5. output folders
    "f5-results-dir-is-a-file": Cli(lambda ws: (setattr(ws, "res", ws.tmp / "notes.txt"),
                                                ws.res.write_text("my notes")), (), 1,
                                    ("{tmp}/notes.txt", "is a file")),
    "f5-results-dir-under-a-file": Cli(lambda ws: (ws.tmp.joinpath("a_file").write_text("x"),
                                                   setattr(ws, "res", ws.tmp / "a_file" / "res")),
                                       (), 2, ("{tmp}/a_file", "cannot write here")),
    "f5-output-dir-is-a-file": Cli(lambda ws: (setattr(ws, "out", ws.tmp / "a_file"),
                                               ws.out.write_text("x")), (), 2,
                                   ("{tmp}/a_file", "cannot write here")),
    "f5-second-live-run-in-output-dir": Cli(
        lambda ws: (ws.trained_copy(), _take_lock(ws.out)), ("--resume",), 2,
        ("{out} is in use by another run", "pid {ppid}", ".regseg.lock")),
    "f5-second-live-run-in-results-dir": Cli(
        lambda ws: _take_lock(ws.tmp, ".res.lock"), (), 2,
        ("{tmp} is in use by another run", "pid {ppid}", ".res.lock")),
    # 6. silent acceptance
    "f6-spacing-20-mm": Cli(lambda ws: (ws.own_data(), _rewrite(ws, "s04", image=lambda x: x,
                                                                label=lambda x: x,
                                                                affine=_spacing(20.0))),
                            (), 1, ("{data}/images/s04.nii.gz", "voxel size [20.0, 20.0, 20.0]",
                                    "--spacing-range"), no_folders=True),
    "f6-spacing-0.001-mm": Cli(lambda ws: (ws.own_data(), _rewrite(ws, "s05", image=lambda x: x,
                                                                   label=lambda x: x,
                                                                   affine=_spacing(0.001))),
                               (), 1, ("{data}/images/s05.nii.gz", "outside 0.1-10.0 mm"),
                               no_folders=True),
    "f6-singular-affine": Cli(lambda ws: (ws.own_data(), _rewrite(
        ws, "s06", image=lambda x: x, label=lambda x: x,
        affine=np.array([[2.0, 2, 0, 0], [2, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]))),
        (), 1, ("{data}/images/s06.nii.gz", "singular affine"), no_folders=True),
    "f6-label-without-image": Cli(lambda ws: (ws.own_data(), shutil.copy(
        ws.label("s01"), ws.data / "labels" / "extra.nii.gz")), (), 1,
        ("{data}/labels/extra.nii.gz", "label map without an image"), no_folders=True),
    "f6-duplicate-subject-ids": Cli(lambda ws: (ws.own_data(), nib.save(
        nib.load(ws.image("s03")), str(ws.data / "images" / "s03.nii"))), (), 1,
        ("{data}/images/s03.nii ", "{data}/images/s03.nii.gz", "subject 's03'"),
        no_folders=True),
    "f6-spacing-range-reversed": Cli(_nothing, ("--spacing-range", "5", "1"), 2,
                                     ("--spacing-range", "5.0 1.0"), no_folders=True),
    # what already works: every data error names the file, before anything is created
    "ok-truncated-image": Cli(lambda ws: (ws.own_data(), _truncate(ws.image("s02"))), (), 1,
                              ("{data}/images/s02.nii.gz",), no_folders=True),
    "ok-zero-byte-label": Cli(lambda ws: (ws.own_data(), ws.label("s07").write_bytes(b"")), (), 1,
                              ("{data}/labels/s07.nii.gz", "not a readable"), no_folders=True),
    "ok-not-nifti": Cli(lambda ws: (ws.own_data(), ws.image("s08").write_text("not an image")),
                        (), 1, ("{data}/images/s08.nii.gz", "not a readable"), no_folders=True),
    "ok-2d-image": Cli(lambda ws: (ws.own_data(), _rewrite(ws, "s01", image=lambda x: x[:, :, 0])),
                       (), 1, ("{data}/images/s01.nii.gz", "expected a 3-D volume"),
                       no_folders=True),
    "ok-4d-image": Cli(lambda ws: (ws.own_data(),
                                   _rewrite(ws, "s01", image=lambda x: np.stack([x, x], -1))),
                       (), 1, ("{data}/images/s01.nii.gz", "(16, 16, 16, 2)"), no_folders=True),
    "ok-nan-in-test-image": Cli(lambda ws: (ws.own_data(), _rewrite(ws, ws.test[0], image=_nan)),
                                (), 1, ("{data}/images/{test0}.nii.gz", "1 NaN"),
                                no_folders=True),
    "ok-empty-label-map": Cli(lambda ws: (ws.own_data(),
                                          _rewrite(ws, "s09", label=lambda x: x * 0)),
                              (), 1, ("{data}/labels/s09.nii.gz", "empty"), no_folders=True),
    "ok-float-labels": Cli(lambda ws: (ws.own_data(),
                                       _rewrite(ws, "s09", label=lambda x: x * 0.5)),
                           (), 1, ("{data}/labels/s09.nii.gz", "non-integer"), no_folders=True),
    "ok-shape-mismatch": Cli(lambda ws: (ws.own_data(),
                                         _rewrite(ws, "s00", label=lambda x: x[:, :, :12])),
                             (), 1, ("{data}/images/s00.nii.gz", "{data}/labels/s00.nii.gz",
                                     "shape mismatch"), no_folders=True),
    "ok-affine-mismatch": Cli(lambda ws: (ws.own_data(), _rewrite(ws, "s00",
                                                                  label_affine=_shifted(5.0))),
        (), 1, ("{data}/labels/s00.nii.gz", "affine (voxel-to-world) mismatch"), no_folders=True),
    "ok-image-without-label": Cli(lambda ws: (ws.own_data(), ws.label("s03").unlink()), (), 1,
                                  ("{data}/images/s03.nii.gz", "no label map"), no_folders=True),
    "ok-labels-json-not-json": Cli(lambda ws: (setattr(ws, "labels", ws.tmp / "labels.json"),
                                               ws.labels.write_text("{structures: ")), (), 1,
                                   ("{tmp}/labels.json",), no_folders=True),
    "ok-labels-json-missing": Cli(lambda ws: setattr(ws, "labels", ws.tmp / "nope.json"), (), 1,
                                  ("{tmp}/nope.json", "not found"), no_folders=True),
    "ok-data-root-missing": Cli(lambda ws: setattr(ws, "data", ws.tmp / "nowhere"), (), 1,
                                ("{tmp}/nowhere", "does not exist"), no_folders=True),
    "ok-folder-without-labels-json": Cli(_nothing, (), 2, ("--labels-json",), no_folders=True,
                                         drop=("--labels-json",)),
    # a run refuses to overwrite a finished or an interrupted one
    "ok-finished-run-not-overwritten": Cli(Workspace.trained_copy, (), 2,
                                           ("{out}/registration_only", "complete training run",
                                            "--resume"), before_training=False),
    "ok-interrupted-run-needs-resume": Cli(Workspace.interrupted_copy, (), 2,
                                           ("{out}/registration_only", "interrupted", "--resume"),
                                           before_training=False),
}


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
def test_command_line_refuses(case, ws, disk, capsys):
    spec = CLI_CASES[case]
    spec.prepare(ws)
    disk.watch(ws.tmp, ws.tiny.data, ws.tiny.labels)
    argv = _argv(ws.data, ws.labels, ws.out, ws.res, *spec.extra)
    for option in spec.drop:
        i = argv.index(option)
        del argv[i:i + 2]
    code, errors, out = _cli(capsys, argv)
    assert code == spec.code, errors
    assert len(errors) == 1, errors
    for fragment in spec.culprit:
        assert ws.fmt(fragment) in errors[0]
    if spec.before_training:
        assert "=== training" not in out
    if spec.no_folders:
        for folder in (ws.out, ws.res):
            assert not folder.exists() or folder.is_file()
    disk.check()


# ------------------------------------------------------------------- command line: it works
def test_f2_resume_with_changes_is_recorded_in_settings_and_header(ws, disk, capsys):
    ws.trained_copy()
    run = ws.out / METHOD
    disk.watch(run / "final.weights.h5", run / "checkpoints", ws.tiny.data)
    code, errors, _ = _cli(capsys, _argv(ws.data, ws.labels, ws.out, ws.res, "--resume",
                                         "--resume-with-changes", "--grid-origin", "one"))
    assert code == 0 and not errors
    stored = json.loads((run / "settings.json").read_text())
    assert stored["resumed_with_changes"] == [["model_config.grid_origin: 'zero' -> 'one'"]]
    header = (ws.res / "table1_registration_dice.md").read_text()
    assert "resumed with changes**: registration_only: model_config.grid_origin" in header
    assert "**epochs**: 1" in header
    disk.check()


def test_f5_a_reused_results_dir_keeps_no_stale_figure_but_the_users_readme(ws, disk, capsys):
    ws.trained_copy()
    meta = json.loads((ws.res / "run.json").read_text())
    meta["files"].append("fig_old.png")                       # written by an earlier run
    (ws.res / "run.json").write_text(json.dumps(meta))
    (ws.res / "fig_old.png").write_bytes(b"stale")
    (ws.res / "README.md").write_text("my notes")
    disk.watch(ws.out / METHOD / "final.weights.h5", ws.out / METHOD / "checkpoints",
               ws.res / "README.md", ws.tiny.data)
    code, errors, _ = _cli(capsys, _argv(ws.data, ws.labels, ws.out, ws.res, "--resume"))
    assert code == 0 and not errors
    names = {p.name for p in ws.res.iterdir()}
    assert "fig_old.png" not in names and {"README.md", "table1_registration_dice.csv"} <= names
    assert not [p for p in ws.tmp.iterdir() if p.name.startswith(".res.")]   # no leftover
    disk.check()


def test_f5_a_stale_lock_of_a_dead_run_is_taken_over_with_a_warning(ws, disk, capsys):
    ws.trained_copy()
    pid = _dead_pid()
    _take_lock(ws.out, pid=pid)
    disk.watch(ws.out / METHOD / "final.weights.h5", ws.out / METHOD / "checkpoints",
               ws.tiny.data)
    with pytest.warns(UserWarning, match=f"{ws.out}/.regseg.lock: taking over a stale lock of "
                                         f"dead process {pid}"):
        code, errors, _ = _cli(capsys, _argv(ws.data, ws.labels, ws.out, ws.res, "--resume"))
    assert code == 0 and not errors
    assert not (ws.out / ".regseg.lock").exists()              # released at the end
    disk.check()


def test_ok_a_kill_while_results_were_swapped_in_recovers(ws, disk, capsys):
    """Killed between the two renames of the swap: no results folder, the old one and the new
    one aside. The next run writes complete results."""
    ws.trained_copy()
    (ws.res / "README.md").write_text("my notes")
    ws.res.rename(ws.tmp / ".res.old-999999")
    partial = ws.tmp / ".res.tmp-999999"
    partial.mkdir()
    (partial / "table1_registration_dice.csv").write_text("# half written")
    disk.watch(ws.out / METHOD / "final.weights.h5", ws.out / METHOD / "checkpoints",
               ws.tmp / ".res.old-999999", partial, ws.tiny.data)
    code, errors, _ = _cli(capsys, _argv(ws.data, ws.labels, ws.out, ws.res, "--resume"))
    assert code == 0 and not errors
    from regseg.evaluation.tables import read_result_csv
    table, header = read_result_csv(ws.res / "table1_registration_dice.csv")
    assert "Christodoulidis et al. ours mean" in table.columns and header["epochs"] == "1"
    assert set(json.loads((ws.res / "run.json").read_text())["files"]) <= \
        {p.name for p in ws.res.iterdir()}
    disk.check()


def test_f6_spacing_range_lets_a_20_mm_subject_through_validation(ws, disk, capsys):
    """With ``--spacing-range 0.1 30`` the 20 mm subject passes the data check; a live lock in
    the output folder then stops the run before any training."""
    ws.own_data()
    _rewrite(ws, "s04", image=lambda x: x, label=lambda x: x, affine=_spacing(20.0))
    _take_lock(ws.out)
    disk.watch(ws.tmp)
    code, errors, out = _cli(capsys, _argv(ws.data, ws.labels, ws.out, ws.res,
                                           "--spacing-range", "0.1", "30"))
    assert code == 2 and len(errors) == 1 and f"{ws.out} is in use by another run" in errors[0]
    assert f"checked the data: {N_SUBJECTS} subjects" in out and "=== training" not in out
    disk.check()


def test_ok_argparse_rejects_an_unknown_preset(ws, disk, capsys):
    disk.watch(ws.tiny.data)
    with pytest.raises(SystemExit) as exc:
        _main(_argv(ws.data, ws.labels, ws.out, ws.res, "--preset", "smok"))
    assert exc.value.code == 2
    assert "--preset" in capsys.readouterr().err and not ws.out.exists()
    disk.check()


# ------------------------------------------------------------------------------ library calls
EPOCHS, STEPS = 3, 2
TOY_SETTINGS = {"model": {"units": 1}, "epochs": EPOCHS, "seed": 0}


def _toy_dataset(first_epoch):
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EPOCHS * STEPS * 2, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    start = first_epoch * STEPS * 2
    return tf.data.Dataset.from_tensor_slices((x[start:], y[start:])).batch(2)


def _toy_model():
    import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    return model


def _toy_fit(run, model=None, **kw):
    from regseg.training.fit import fit, step_decay
    return fit(model or _toy_model(), _toy_dataset, run, epochs=EPOCHS, steps_per_epoch=STEPS,
               schedule=step_decay(0.05, 2), verbose=0, settings=TOY_SETTINGS, **kw)


def _stop_after(epochs_done):
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs_done:
                raise KeyboardInterrupt(f"simulated kill after epoch {epochs_done}")
    return Stop()


def _interrupted(run, after):
    with pytest.raises(KeyboardInterrupt):
        _toy_fit(run, extra_callbacks=[_stop_after(after)])
    return run


def _lib_truncated_backup_without_previous(tmp):
    run = _interrupted(tmp / "run", 1)                      # one epoch: no previous backup
    _truncate(run / "backup" / "latest.weights.h5")
    return lambda: _toy_fit(run, resume=True)


def _lib_finished_run_without_resume(tmp):
    _toy_fit(tmp / "run")
    return lambda: _toy_fit(tmp / "run")


def _lib_second_lock(tmp):
    from regseg.fileio import RunLock
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _take_lock(tmp / "out", pid=holder.pid)

    def call():
        try:
            RunLock(tmp / "out").acquire()
        finally:
            holder.kill()
            holder.wait()
    return call


def _lib_load_volume(path_fn):
    def make(tmp):
        from regseg.datasets.io import load_volume
        path = path_fn(tmp)
        return lambda: load_volume(path)
    return make


def _tiny_spacing_file(tmp):
    _save(tmp / "tiny_voxels.nii.gz", _volumes(0)[0], _spacing(0.001))
    return tmp / "tiny_voxels.nii.gz"


def _layer_call(fn):
    return lambda tmp: fn


def _images(batch=2):
    return np.random.default_rng(0).random((batch, 5, 6, 1)).astype("float32")


def _grid(batch=2):
    from regseg.layers import identity_grid
    return np.repeat(np.asarray(identity_grid((5, 6)))[None], batch, 0) + 0.3


def _warp(*args, **kw):
    from regseg.layers import warp
    return warp(*args, **kw)


def _transformer(inputs, **kw):
    from regseg.layers import SpatialTransformer
    return SpatialTransformer(name="st", **kw)(inputs)


def _nan_grid():
    grid = _grid().astype("float32")
    grid[1, 2, 3, 0] = np.nan
    return grid


def _folder_subjects(prepare):
    def make(tmp):
        from regseg.datasets.folder import folder_subjects
        root = tmp / "data"
        for k in (0, 1):
            img, lab = _volumes(k)
            _save(root / "images" / f"s{k}.nii.gz", img)
            _save(root / "labels" / f"s{k}.nii.gz", lab)
        prepare(root)
        return lambda: folder_subjects(root)
    return make


LIB_CASES = {
    # (make(tmp) -> call, exception type, culprit fragments)
    "f4-truncated-backup-without-previous-fit": (
        _lib_truncated_backup_without_previous, "CheckpointError",
        ("{tmp}/run/backup/latest.weights.h5", "no usable previous backup")),
    "f5-second-live-run-RunLock": (_lib_second_lock, "LockedError",
                                   ("{tmp}/out is in use by another run", "pid")),
    "f6-spacing-0.001-mm-load_volume": (_lib_load_volume(_tiny_spacing_file), "DataError",
                                        ("{tmp}/tiny_voxels.nii.gz", "[0.001, 0.001, 0.001]")),
    "f6-label-without-image-folder_subjects": (
        _folder_subjects(lambda root: shutil.copy(root / "labels" / "s0.nii.gz",
                                                  root / "labels" / "s9.nii.gz")),
        "DataError", ("{tmp}/data/labels/s9.nii.gz", "without an image")),
    "f6-duplicate-ids-folder_subjects": (
        _folder_subjects(lambda root: shutil.copy(root / "labels" / "s1.nii.gz",
                                                  root / "labels" / "s1.nii")),
        "DataError", ("{tmp}/data/labels/s1.nii ", "{tmp}/data/labels/s1.nii.gz", "'s1'")),
    "f7-batch-mismatch-warp": (_layer_call(lambda: _warp(_images(2), _grid(3))), "ValueError",
                               ("warp", "batch sizes", "(2, 5, 6, 1)", "(3, 5, 6, 2)")),
    "f7-batch-mismatch-SpatialTransformer": (
        _layer_call(lambda: _transformer([_images(2), np.zeros((1, 5, 6, 2), "float32")],
                                         field="displacement")),
        "ValueError", ("SpatialTransformer 'st'", "batch sizes", "(1, 5, 6, 2)")),
    "f7-unbatched-grid": (_layer_call(lambda: _warp(_images(), _grid()[0])), "ValueError",
                          ("warp", "unbatched grid", "(5, 6, 2)")),
    "f7-displacement-components": (
        _layer_call(lambda: _transformer([_images(), np.zeros((2, 5, 6, 3), "float32")],
                                         field="displacement")),
        "ValueError", ("SpatialTransformer 'st'", "displacement has 3 components",
                       "2 spatial dimensions")),
    "f7-nan-grid-check_finite": (_layer_call(lambda: _warp(_images(), _nan_grid(),
                                                           check_finite=True)),
                                 "ValueError", ("warp", "grid contains NaN", "1 NaN",
                                                "index (1, 2, 3, 0)")),
    "f7-string-image": (_layer_call(lambda: _warp(np.full((2, 5, 6, 1), "a"), _grid())),
                        "ValueError", ("warp: image must be a real-valued", "dtype <U1")),
    "ok-missing-file-load_volume": (_lib_load_volume(lambda tmp: tmp / "nope.nii.gz"),
                                    "DataError", ("{tmp}/nope.nii.gz", "file not found")),
    "ok-finished-run-without-resume-fit": (_lib_finished_run_without_resume, "FileExistsError",
                                           ("{tmp}/run", "complete", "--resume")),
}


def _exception(name):
    from regseg.datasets.io import DataError
    from regseg.fileio import LockedError
    from regseg.training.fit import CheckpointError
    return {"DataError": DataError, "LockedError": LockedError, "ValueError": ValueError,
            "CheckpointError": CheckpointError, "FileExistsError": FileExistsError}[name]


@pytest.mark.parametrize("case", list(LIB_CASES), ids=list(LIB_CASES))
def test_library_refuses(case, tmp_path, disk):
    make, exc_name, culprit = LIB_CASES[case]
    call = make(tmp_path)
    (tmp_path / "marker").write_text("the folder of this case")   # something to watch
    disk.watch(tmp_path)
    with pytest.raises(_exception(exc_name)) as info:
        call()
    message = str(info.value)
    for fragment in culprit:
        assert fragment.format(tmp=tmp_path) in message, message
    disk.check()


# ------------------------------------------------------------------------- library: it works
def test_f4_the_backup_keeps_the_previous_epoch_double_checkpoint(tmp_path, disk):
    run = _interrupted(tmp_path / "run", 2)
    backup = run / "backup"
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2
    assert json.loads((backup / "training_metadata.json.bkp").read_text())["epoch"] == 1
    assert (backup / "latest.weights.h5.bkp").is_file()
    disk.watch(run / "checkpoints")
    assert _toy_fit(run, resume=True)["epochs_run"] == 1
    disk.check(ignore=[run / "checkpoints" / "epoch_003.weights.h5"])


def test_f4_ctrl_c_during_a_checkpoint_save_leaves_no_truncated_file(tmp_path, disk):
    import h5py

    model = _toy_model()
    real = model.save_weights

    def interrupted_save(path, *args, **kw):
        real(path, *args, **kw)
        if "epoch_002" in Path(path).name:                  # Ctrl-C halfway through the write
            _truncate(Path(path))
            raise KeyboardInterrupt("Ctrl-C during the save")

    model.save_weights = interrupted_save
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _toy_fit(run, model=model)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["epoch_001.weights.h5"]                  # no truncated epoch_002, no temp
    with h5py.File(run / "checkpoints" / "epoch_001.weights.h5", "r"):
        pass
    disk.watch(run / "checkpoints")
    assert _toy_fit(run, resume=True)["epochs_run"] == 1        # the backup had epoch 2
    disk.check(ignore=[run / "checkpoints" / f"epoch_00{e}.weights.h5" for e in (2, 3)])


def test_f4_a_truncated_latest_backup_falls_back_with_a_warning_naming_it(tmp_path, disk):
    run = _interrupted(tmp_path / "run", 2)
    latest = run / "backup" / "latest.weights.h5"
    _truncate(latest)
    disk.watch(run / "checkpoints")
    with pytest.warns(UserWarning, match=f"{latest}: corrupt or truncated; resuming from the "
                                         f"previous backup \\(epoch 1\\)"):
        assert _toy_fit(run, resume=True)["epochs_run"] == 2
    disk.check(ignore=[run / "checkpoints" / "epoch_002.weights.h5",
                       run / "checkpoints" / "epoch_003.weights.h5"])


def test_f4_history_csv_is_rebuilt_after_a_lost_row(tmp_path, disk):
    run = _interrupted(tmp_path / "run", 2)
    lines = (run / "history.csv").read_text().splitlines()
    (run / "history.csv").write_text("\n".join(lines[:-1]) + "\n")   # the kill lost a row
    disk.watch(run / "checkpoints")
    _toy_fit(run, resume=True)
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    disk.check(ignore=[run / "checkpoints" / "epoch_003.weights.h5"])


def test_ok_a_killed_run_resumed_gives_the_weights_of_an_uninterrupted_one(tmp_path, disk):
    reference = _toy_model()
    _toy_fit(tmp_path / "reference", model=reference)
    run = _interrupted(tmp_path / "run", 2)
    disk.watch(run / "checkpoints")
    model = _toy_model()
    assert _toy_fit(run, model=model, resume=True)["epochs_run"] == 1
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    disk.check(ignore=[run / "checkpoints" / "epoch_003.weights.h5"])


def test_f5_an_early_crash_leaves_no_folder_and_an_old_stub_is_a_new_run(tmp_path, disk):
    from regseg.training.fit import fit, run_state

    def broken(first_epoch):
        raise OSError("cannot build the training data")

    (tmp_path / "marker").write_text("x")
    disk.watch(tmp_path)
    with pytest.raises(OSError, match="training data"):
        fit(_toy_model(), broken, tmp_path / "run", epochs=1, steps_per_epoch=1,
            schedule=lambda e: 0.1, verbose=0)
    assert not (tmp_path / "run").exists()
    disk.check()
    stub = tmp_path / "stub"
    (stub / "checkpoints").mkdir(parents=True)                 # left by an older version
    (stub / "logs").mkdir()
    assert run_state(stub) == "new"
    assert _toy_fit(stub)["state"] == "trained"                 # no --resume needed


@pytest.mark.parametrize("dtype", ["int16", "bool"])
def test_f7_integer_and_bool_images_are_cast_to_float32(dtype, tmp_path, disk):
    (tmp_path / "marker").write_text("x")
    disk.watch(tmp_path)
    labels = (_images() * 3).astype(dtype)
    out = _warp(labels, _grid(), interpolation="nearest")
    assert out.dtype == "float32"
    np.testing.assert_array_equal(out, _warp(labels.astype("float32"), _grid(),
                                             interpolation="nearest"))
    disk.check()
