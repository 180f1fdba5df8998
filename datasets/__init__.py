"""regseg.datasets: loading, preprocessing and splitting the suite's data.

Everything enters through :func:`~regseg.datasets.io.load_volume` (RAS+ canonical orientation,
validated content), is preprocessed by a :class:`~regseg.datasets.recipes.Recipe` of named, cited steps (U-ReSNet
§3.5 is :func:`~regseg.datasets.recipes.ureSnet_recipe`) inside a
:class:`~regseg.datasets.subjects.SubjectDataset`, and is split deterministically.

Datasets:

* :func:`oasis3_splits` — OASIS-3 FreeSurfer outputs (the paper's data; user's own copy).
* :func:`ixi10_splits` — 10 real IXI MRIs with DLMUSE labels (stand-in for OASIS-3; tests, CI).
* :func:`folder_splits` — any ``images/`` + ``labels/`` folder with a JSON label mapping.
* :func:`demo_splits` — offline MNI152 demo (reproduces nothing).

The data root is given on the command line or by the environment variable ``REGSEG_DATA_ROOT``
(see :func:`resolve_data_root`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .io import DataError, Volume, check_same_grid, load_volume, save_volume
from .labels import (
    DLMUSE_SEGMENTATION,
    DLMUSE_TABLE1,
    FREESURFER_SEGMENTATION,
    FREESURFER_TABLE1,
    SEGMENTATION_CLASSES,
    TABLE1_FULL_NAMES,
    TABLE1_STRUCTURES,
    LabelMapping,
    check_structures_present,
)
from .preprocessing import (
    PAPER_CROP_LIA_1MM,
    PAPER_CROP_RAS_1MM,
    crop_around_centre_of_mass,
    crop_shape_for_spacing,
    normalise_zscore,
    resample_onto,
    resample_to_spacing,
)
from .recipes import Recipe, Step, ureSnet_recipe
from .subjects import Sample, Splits, Subject, SubjectDataset, read_subject, split_subjects
from .ixi10 import IXI10_NAME, ixi10_recipe, ixi10_splits
from .oasis3 import OASIS3_NAME, oasis3_recipe, oasis3_splits
from .folder import folder_splits
from .demo import DEMO_NAME, demo_splits

#: Environment variable naming the data root.
DATA_ROOT_ENV = "REGSEG_DATA_ROOT"


def resolve_data_root(cli_value: str | os.PathLike | None = None) -> Path | None:
    """The data root: the command-line value, else ``$REGSEG_DATA_ROOT``, else ``None``.

    Args:
        cli_value: value given on the command line (``None`` or ``""`` = not given).

    Returns:
        The resolved folder, or ``None`` when neither is set (callers then fall back to the
        offline demo dataset or report that data is needed).

    Raises:
        DataError: the chosen path does not exist or is not a folder (the message says where
            the value came from).
    """
    if cli_value not in (None, ""):
        value, source = cli_value, "the command-line data root"
    elif os.environ.get(DATA_ROOT_ENV):
        value, source = os.environ[DATA_ROOT_ENV], f"${DATA_ROOT_ENV}"
    else:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: data root from {source} does not exist or is not a folder")
    return path.resolve()


_LAZY = {"DownloadError": "download", "download_ixi10": "download"}


def __getattr__(name):
    # ``download`` is imported lazily so that ``python -m regseg.datasets.download`` does not find
    # the module already imported by this package (runpy's RuntimeWarning).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATA_ROOT_ENV", "resolve_data_root",
    "DataError", "Volume", "load_volume", "check_same_grid", "save_volume",
    "TABLE1_STRUCTURES", "TABLE1_FULL_NAMES", "SEGMENTATION_CLASSES", "LabelMapping",
    "FREESURFER_TABLE1", "FREESURFER_SEGMENTATION", "DLMUSE_TABLE1", "DLMUSE_SEGMENTATION",
    "check_structures_present",
    "PAPER_CROP_RAS_1MM", "PAPER_CROP_LIA_1MM", "normalise_zscore", "crop_around_centre_of_mass",
    "resample_to_spacing", "resample_onto", "crop_shape_for_spacing",
    "Recipe", "Step", "ureSnet_recipe",
    "Subject", "Sample", "SubjectDataset", "Splits", "split_subjects", "read_subject",
    "IXI10_NAME", "ixi10_splits", "ixi10_recipe", "OASIS3_NAME", "oasis3_splits", "oasis3_recipe",
    "folder_splits",
    "DEMO_NAME", "demo_splits", "DownloadError", "download_ixi10",
]
