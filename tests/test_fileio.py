"""Atomic writers give new files the usual mode (0666 minus umask), not mkstemp's 0600."""

import os
import stat

import numpy as np

from regseg.datasets.io import save_volume
from regseg.evaluation.tables import atomic_write_text


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        text = atomic_write_text(tmp_path / "t.md", "x\n")
        vol = save_volume(tmp_path / "v.nii.gz", np.zeros((2, 2, 2), np.float32), np.eye(4))
    finally:
        os.umask(old)
    for path in (text, vol):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


# --------------------------------------------------------------------------- regseg.fileio
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from regseg import fileio  # noqa: E402
from regseg.evaluation import tables  # noqa: E402


def test_atomic_path_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    seen = []
    with pytest.raises(RuntimeError, match="half-way"):
        with fileio.atomic_path(target) as tmp:
            seen.append(tmp)
            tmp.write_text("new, partial")
            raise RuntimeError("failed half-way")
    assert target.read_text() == "old"
    assert not seen[0].exists()
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_path_failure_without_old_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(tmp_path / "new.bin"):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_path_failed_replace_removes_temp(tmp_path):
    (tmp_path / "dir").mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        with fileio.atomic_path(tmp_path / "dir") as tmp:
            tmp.write_bytes(b"x")
    assert os.listdir(tmp_path) == ["dir"]
    assert os.listdir(tmp_path / "dir") == []


@pytest.mark.parametrize("name, suffix", [("v.nii.gz", ".nii.gz"),
                                          ("final.weights.h5", ".weights.h5"),
                                          ("t.txt", "")])
def test_atomic_path_temp_is_hidden_in_same_folder_with_suffix(tmp_path, name, suffix):
    target = tmp_path / name
    with fileio.atomic_path(target, suffix=suffix) as tmp:
        assert isinstance(tmp, Path)
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".{name}.")
        assert tmp.name.endswith(suffix or ".tmp")
        assert tmp.name != target.name and tmp.is_file()  # created (empty), so the name is ours
        tmp.write_bytes(b"payload")
        assert not target.exists()  # nothing visible before the body finishes
    assert target.read_bytes() == b"payload"
    assert os.listdir(tmp_path) == [name]


def test_atomic_path_final_mode_is_default_file_mode(tmp_path):
    old = os.umask(0o027)
    try:
        mode = fileio.default_file_mode()
        with fileio.atomic_path(tmp_path / "m.bin") as tmp:
            assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o600  # mkstemp's mode while writing
            tmp.write_bytes(b"x")
        written = fileio.atomic_write_bytes(tmp_path / "b.bin", b"y")
    finally:
        os.umask(old)
    assert mode == 0o640
    for path in (tmp_path / "m.bin", written):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_atomic_path_creates_missing_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    with fileio.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and target.parent.is_dir()
        tmp.write_text("deep")
    assert target.read_text() == "deep"


def test_atomic_write_bytes_and_text(tmp_path):
    assert fileio.atomic_write_bytes(tmp_path / "x.bin", b"\x00\x01") == tmp_path / "x.bin"
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    out = fileio.atomic_write_text(str(tmp_path / "x.txt"), "é\r\n", encoding="latin-1")
    assert out == tmp_path / "x.txt" and out.read_bytes() == "é\r\n".encode("latin-1")
    with pytest.raises(UnicodeEncodeError):  # nothing written when the text cannot be encoded
        fileio.atomic_write_text(tmp_path / "y.txt", "€", encoding="ascii")
    assert sorted(os.listdir(tmp_path)) == ["x.bin", "x.txt"]


def test_tables_reexports_the_shared_helpers():
    assert tables.atomic_write_bytes is fileio.atomic_write_bytes
    assert tables.atomic_write_text is fileio.atomic_write_text
