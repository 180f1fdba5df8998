"""Shared pytest configuration for the regseg test-suite."""

import os

# Silence TensorFlow's C++ start-up chatter; must be set before TF is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------- shared data root
# Real public images live OUTSIDE the repository (never copied into it): $REGSEG_DATA_ROOT, or
# by default ../shared/data next to the repository root.
from pathlib import Path as _Path

import pytest as _pytest

_DEFAULT_DATA_ROOT = _Path(__file__).resolve().parents[2] / "shared" / "data"


@_pytest.fixture(scope="session")
def data_root() -> _Path:
    """The shared data folder ($REGSEG_DATA_ROOT, else ``<repo>/../shared/data``); skips if absent."""
    root = _Path(os.environ.get("REGSEG_DATA_ROOT") or _DEFAULT_DATA_ROOT).resolve()
    if not root.is_dir():
        _pytest.skip(f"shared data folder not found at {root}; set REGSEG_DATA_ROOT to the folder "
                     f"holding ixi10/ (python -m regseg.datasets.download ixi10 --dest DIR)")
    return root


@_pytest.fixture(scope="session")
def ixi10_root(data_root) -> _Path:
    """``<data root>/ixi10``; skips if absent."""
    root = data_root / "ixi10"
    if not (root / "images").is_dir():
        _pytest.skip(f"ixi10 sample not found under {data_root} "
                     f"(python -m regseg.datasets.download ixi10 --dest {data_root})")
    return root
