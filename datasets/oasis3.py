"""OASIS-3 FreeSurfer outputs, the data of U-ReSNet (Estienne et al., MICCAI 2019, §3.5).

OASIS-3 cannot be redistributed: a user downloads it from https://www.oasis-brains.org (data use
agreement) and points :func:`oasis3_splits` at the folder. Only the FreeSurfer outputs are read:
for every ``.../mri/`` folder that contains ``aseg.mgz`` (the labels, FreeSurfer aseg ids) and
either

* ``brainmask.mgz`` (preferred): the skull-stripped T1 (FreeSurfer's intensity-normalised T1 with
  the skull removed). It is used both as the image and as the brain mask (brain = voxels > 0); or
* ``orig.mgz``: the conformed T1 with skull; the skull is then removed with ``aseg > 0`` (a
  tighter mask than ``brainmask.mgz``: aseg does not label the sulcal CSF).

Paper: "All the modalities have been already resampled to a 1mm voxel grid and the skull have been
removed, resulting in a volume of size 256 x 256 x 256 ... we used 520, 67 and 156 images for
respectively training, validation and test". Which FreeSurfer file the authors used as the
skull-stripped image is not stated; ``brainmask.mgz`` is our reading.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .io import DataError
from .labels import FREESURFER_SEGMENTATION, FREESURFER_TABLE1
from .preprocessing import PAPER_CROP_RAS_1MM
from .recipes import Recipe, ureSnet_recipe
from .subjects import Splits, Subject, SubjectDataset, split_subjects

__all__ = ["OASIS3_NAME", "OASIS3_SIZES", "find_oasis3_sessions", "oasis3_splits", "oasis3_recipe",
           "oasis3_subject_of"]

#: Dataset name used in table titles.
OASIS3_NAME = "OASIS-3 (FreeSurfer aseg, 1 mm)"
#: Split sizes of U-ReSNet §3.5 (train, validation, test images).
OASIS3_SIZES = (520, 67, 156)

_SUBJECT_RE = re.compile(r"OAS3\d{4}")

_LAYOUT = ("expected FreeSurfer outputs laid out as <root>/.../<OAS3xxxx session folder>/.../mri/"
           "aseg.mgz with brainmask.mgz (or orig.mgz) next to it, e.g. "
           "<root>/OAS30001_Freesurfer53_d0129/.../mri/aseg.mgz; the nearest folder above mri/ "
           "whose name contains OAS3 followed by 4 digits gives the session id")


def oasis3_subject_of(session_id: str) -> str:
    """The OASIS-3 subject id (``OAS3`` + 4 digits) inside a session id.

    Example: ``"OAS30001_MR_d0129"`` -> ``"OAS30001"``.

    Raises:
        ValueError: no ``OAS3\\d{4}`` in ``session_id``.
    """
    m = _SUBJECT_RE.search(session_id)
    if m is None:
        raise ValueError(f"{session_id!r} contains no OASIS-3 subject id (OAS3 + 4 digits)")
    return m.group(0)


def _session_folder(mri_dir: Path, root: Path) -> str | None:
    for parent in [mri_dir, *mri_dir.parents]:
        if _SUBJECT_RE.search(parent.name):
            return parent.name
        if parent == root:
            break
    return None


def find_oasis3_sessions(root: str | os.PathLike) -> list[Subject]:
    """Find OASIS-3 FreeSurfer sessions under ``root`` (recursive search, symlinks followed).

    Returns:
        One :class:`~regseg.datasets.subjects.Subject` per ``mri/`` folder, sorted by session id:
        ``subject_id`` = session id (nearest ancestor folder name containing ``OAS3\\d{4}``),
        ``image_path`` = ``brainmask.mgz`` (or ``orig.mgz``), ``label_path`` = ``aseg.mgz``,
        ``brain_mask_path`` = ``brainmask.mgz`` or ``None``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        DataError: nothing matching the expected layout was found (the message describes it),
            an ``mri/`` folder with ``aseg.mgz`` has neither ``brainmask.mgz`` nor ``orig.mgz``,
            no session id can be found above an ``mri/`` folder, or a session id occurs twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: OASIS-3 folder not found ({_LAYOUT})")
    found: dict[str, Subject] = {}
    mri_dirs = sorted(Path(d) for d, _, files in os.walk(root, followlinks=True)
                      if Path(d).name == "mri" and "aseg.mgz" in files)
    for mri in mri_dirs:
        aseg = mri / "aseg.mgz"
        brainmask, orig = mri / "brainmask.mgz", mri / "orig.mgz"
        if brainmask.is_file():
            image, mask = brainmask, str(brainmask)
        elif orig.is_file():
            image, mask = orig, None
        else:
            raise DataError(f"{mri}: aseg.mgz found but neither brainmask.mgz nor orig.mgz")
        session = _session_folder(mri, root)
        if session is None:
            raise DataError(f"{aseg}: no OASIS-3 session id above this file ({_LAYOUT})")
        if session in found:
            raise DataError(f"session {session} found twice: {found[session].label_path} and "
                            f"{aseg}; keep one FreeSurfer run per session")
        found[session] = Subject(session, {"t1": str(image)}, {"labels": str(aseg)},
                                 {"brain": mask} if mask else {},
                                 group=oasis3_subject_of(session))
    if not found:
        raise DataError(f"{root}: no OASIS-3 FreeSurfer session found; {_LAYOUT}")
    return [found[k] for k in sorted(found)]


def oasis3_recipe() -> Recipe:
    """U-ReSNet §3.5 on OASIS-3: brain = ``brainmask.mgz`` > 0 (else aseg > 0), z-score, crop
    :data:`~regseg.datasets.preprocessing.PAPER_CROP_RAS_1MM`, FreeSurfer label maps."""
    return ureSnet_recipe(PAPER_CROP_RAS_1MM, FREESURFER_TABLE1, FREESURFER_SEGMENTATION,
                          skull_strip="brainmask")


def oasis3_splits(root: str | os.PathLike, *, sizes=OASIS3_SIZES, seed: int = 0,
                  cache: bool = False, recipe: Recipe | None = None) -> Splits:
    """OASIS-3 train/validation/test splits as in U-ReSNet §3.5 (520 / 67 / 156 images).

    Sessions are split with :func:`~regseg.datasets.subjects.split_subjects` grouped by OASIS-3
    subject, so all sessions of one subject stay in the same split (the paper does not say how it
    split; grouping avoids subject overlap between training and test). Preprocessing: 1 mm (no
    resampling), skull removed (``brainmask.mgz`` > 0, else ``aseg`` > 0), z-score over the brain,
    crop :data:`~regseg.datasets.preprocessing.PAPER_CROP_RAS_1MM` = (160, 208, 176) voxels RAS
    (the paper's 160 x 176 x 208 in FreeSurfer's LIA order) around the brain's centre of mass;
    labels mapped with ``FREESURFER_TABLE1`` and ``FREESURFER_SEGMENTATION``.

    Args:
        root: folder searched recursively for FreeSurfer ``mri/`` folders.
        sizes: (train, validation, test) numbers of images (sessions); scaled proportionally if
            fewer sessions are found.
        seed: seed of the split permutation.
        cache: keep preprocessed samples in memory (about 70 MB per session at 1 mm).
        recipe: another preprocessing recipe (default :func:`oasis3_recipe`).

    Returns:
        :class:`~regseg.datasets.subjects.Splits` with ``is_paper_dataset=True``.

    Raises:
        FileNotFoundError, DataError: see :func:`find_oasis3_sessions`.
        ValueError: a split would be empty.
    """
    sessions = find_oasis3_sessions(root)
    parts = split_subjects(sessions, sizes, seed=seed,
                           group_key=lambda s: oasis3_subject_of(s.subject_id))

    def make(part):
        return SubjectDataset(OASIS3_NAME, True, part, recipe or oasis3_recipe(), cache=cache)

    return Splits(*(make(p) for p in parts))
