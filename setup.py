"""Package discovery for ``regseg``; all other metadata lives in ``pyproject.toml``.

The top-level folders (``layers/``, ``datasets/``, ``reproductions/``, ...) are mapped into the
one import package ``regseg`` by the table ``[tool.setuptools.package-dir]`` of
``pyproject.toml`` — the only place that mapping is written. This file walks each mapped folder
with :func:`setuptools.find_packages`, so every sub-folder holding an ``__init__.py`` (e.g. a new
paper ``reproductions/<paper>/``) becomes ``regseg.<mapped>.<sub>...`` in both editable and
regular (wheel) installs without being listed by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import find_packages, setup

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli is a build requirement there (see pyproject.toml)
    import tomli as tomllib

HERE = Path(__file__).resolve().parent


def package_dir_mapping(pyproject: Path = HERE / "pyproject.toml") -> dict[str, str]:
    """The ``{import package: folder}`` table ``[tool.setuptools.package-dir]`` of pyproject.toml.

    Args:
        pyproject: the ``pyproject.toml`` to read.

    Returns:
        The mapping, e.g. ``{"regseg": "regseg", "regseg.layers": "layers", ...}``; folders are
        relative to the folder of ``pyproject``.

    Raises:
        KeyError: if the table is missing.
        OSError: if the file cannot be read.
    """
    with open(pyproject, "rb") as fh:
        config = tomllib.load(fh)
    return dict(config["tool"]["setuptools"]["package-dir"])


def discover_packages(mapping: dict[str, str], root: Path = HERE) -> list[str]:
    """Every import package under the mapped folders.

    Args:
        mapping: ``{import package: folder}`` as returned by :func:`package_dir_mapping`.
        root: folder the mapped folders are relative to.

    Returns:
        Sorted package names: each mapped package, plus ``<mapped>.<sub>...`` for every folder
        below it that holds an ``__init__.py`` (reached through folders that hold one too).

    Raises:
        FileNotFoundError: if a mapped folder has no ``__init__.py``.
    """
    packages = set()
    for name, folder in mapping.items():
        base = root / folder
        if not (base / "__init__.py").is_file():
            raise FileNotFoundError(f"{base}: mapped to {name!r} in pyproject.toml but has no "
                                    f"__init__.py")
        packages.add(name)
        packages.update(f"{name}.{sub}" for sub in find_packages(str(base)))
    return sorted(packages)


if __name__ == "__main__":
    setup(packages=discover_packages(package_dir_mapping()))
