"""Packaging: a regular (non-editable) wheel holds and imports every mapped package.

The top-level folders are mapped into the import package ``regseg`` by the table
``[tool.setuptools.package-dir]`` of pyproject.toml, and setup.py discovers every sub-package
under them. These tests build real wheels (offline: ``pip wheel --no-deps --no-build-isolation
--no-index``) from a copy of the source tree in a temporary folder, so the repository gets no
``build/`` folder, and check that

* every folder with an ``__init__.py`` under a mapped folder (every paper under
  ``reproductions/``) and every module in it is in the wheel, under ``regseg/...``;
* each package imports from the unzipped wheel alone (the editable install of the
  development environment is switched off in the subprocess that imports them);
* a new paper folder ``reproductions/<paper>/`` is picked up without editing any list.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                                reason="building a wheel offline needs setuptools in this env")


def _mapping(root: Path) -> dict[str, str]:
    with open(root / "pyproject.toml", "rb") as fh:
        return dict(tomllib.load(fh)["tool"]["setuptools"]["package-dir"])


def _copy_source(dst: Path) -> Path:
    """Copy pyproject.toml, setup.py, README.md and the .py files of the mapped folders."""
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for folder in sorted(set(_mapping(REPO).values())):
        for src in (REPO / folder).rglob("*.py"):
            if "__pycache__" in src.parts:
                continue
            target = dst / src.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dst


def _expected_packages(root: Path) -> dict[str, Path]:
    """``{package name: folder}`` for every package folder under the mapped folders of ``root``.

    A sub-folder is a package when it and every folder above it (up to the mapped folder) hold
    an ``__init__.py`` — the rule of ``setuptools.find_packages``.
    """
    packages = {}
    for name, folder in _mapping(root).items():
        base = root / folder
        assert (base / "__init__.py").is_file(), f"{base} is mapped to {name} but has no __init__"
        for here, dirs, files in os.walk(base):
            here = Path(here)
            if "__init__.py" not in files:
                dirs[:] = []
                continue
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = here.relative_to(base)
            packages[".".join((name, *rel.parts))] = here
    return packages


def _build_wheel(src: Path, out: Path) -> zipfile.ZipFile:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out)],
        cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = sorted(out.glob("regseg-*.whl"))
    assert len(wheels) == 1, f"expected one regseg wheel in {out}, got {wheels}"
    return zipfile.ZipFile(wheels[0])


def _missing_from_wheel(root: Path, names: set[str]) -> list[str]:
    missing = []
    for package, folder in _expected_packages(root).items():
        prefix = package.replace(".", "/")
        for module in sorted(folder.glob("*.py")):
            if f"{prefix}/{module.name}" not in names:
                missing.append(f"{prefix}/{module.name}")
    return missing


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the repository, unzipped: ``(source copy, unzipped folder, names)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src")
    with _build_wheel(src, tmp / "dist") as zf:
        names = set(zf.namelist())
        zf.extractall(tmp / "unzipped")
    return src, tmp / "unzipped", names


@pytest.mark.slow
def test_wheel_contains_every_mapped_package_and_module(wheel):
    src, _, names = wheel
    packages = _expected_packages(src)
    papers = [p for p in packages if p.count(".") == 2 and p.startswith("regseg.reproductions.")]
    assert "regseg.reproductions.ureSnet" in papers
    for name in _mapping(src):
        assert name in packages
    assert _missing_from_wheel(src, names) == []
    # nothing outside the regseg package (no tests/, benchmarks/, top-level datasets/ ...)
    assert {n.split("/")[0] for n in names} == {"regseg", "regseg-0.1.0.dist-info"}


_IMPORT_FROM_WHEEL_ONLY = textwrap.dedent("""
    import importlib, json, sys
    from pathlib import Path

    root = Path(sys.argv[1]).resolve()

    # Switch off the editable install of the development environment: setuptools' finders live
    # in modules named __editable___regseg_<version>_finder (a meta-path finder and a path hook).
    def editable(obj):
        return str(getattr(obj, "__module__", "") or "").startswith("__editable___regseg")

    removed = [repr(f) for f in sys.meta_path if editable(f)]
    removed += [repr(h) for h in sys.path_hooks if editable(h)]
    sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
    sys.path_importer_cache.clear()
    for name in [m for m in sys.modules if m == "regseg" or m.startswith("regseg.")]:
        del sys.modules[name]
    importlib.invalidate_caches()

    import regseg
    assert Path(regseg.__file__).resolve().is_relative_to(root), regseg.__file__
    files = {}
    for name in sys.argv[2:]:
        module = importlib.import_module(name)
        files[name] = module.__file__
        assert Path(module.__file__).resolve().is_relative_to(root), (name, module.__file__)
    print(json.dumps({"removed": removed, "files": files}))
""")


def _import_from(unzipped: Path, packages: list[str], cwd: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(unzipped), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONSAFEPATH", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    proc = subprocess.run([sys.executable, "-c", _IMPORT_FROM_WHEEL_ONLY, str(unzipped), *packages],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"import from the wheel failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_package_imports_from_the_unzipped_wheel_only(wheel):
    src, unzipped, _ = wheel
    packages = sorted(_expected_packages(src))  # regseg, regseg.layers, ..., every paper
    for name in ("regseg.layers", "regseg.datasets", "regseg.evaluation", "regseg.training",
                 "regseg.reproductions", "regseg.reproductions.ureSnet"):
        assert name in packages
    # cwd is the unzipped folder's parent, never the repository (whose regseg/ would shadow it)
    result = _import_from(unzipped, packages, cwd=unzipped.parent)
    assert sorted(result["files"]) == packages
    for name, file in result["files"].items():
        assert Path(file).resolve().is_relative_to(unzipped.resolve()), (name, file)


@pytest.mark.slow
def test_new_paper_folder_is_discovered_without_editing_a_list(tmp_path):
    src = _copy_source(tmp_path / "src")
    paper = src / "reproductions" / "newpaper"
    (paper / "nets").mkdir(parents=True)
    (paper / "__init__.py").write_text('"""A new paper."""\nPAPER = "newpaper"\n')
    (paper / "model.py").write_text("VALUE = 42\n")
    (paper / "nets" / "__init__.py").write_text("")
    (paper / "notes").mkdir()  # no __init__.py: not a package, not shipped
    (paper / "notes" / "scratch.py").write_text("")
    with _build_wheel(src, tmp_path / "dist") as zf:
        names = set(zf.namelist())
    assert "regseg/reproductions/newpaper/__init__.py" in names
    assert "regseg/reproductions/newpaper/model.py" in names
    assert "regseg/reproductions/newpaper/nets/__init__.py" in names
    assert not any(n.startswith("regseg/reproductions/newpaper/notes/") for n in names)
    assert _missing_from_wheel(src, names) == []
