"""Paired but unregistered multimodal images: two NIfTI images of one patient, each with its own mask.

The data of Couteaux et al. §3.2.1: "88 pairs of T1-weighted and T2-weighted MRIs centered on the
liver, coming from 51 patients", each image with its own manual liver mask; the two images of a
pair are not registered. One pair is one :class:`~regseg.datasets.subjects.Subject` with the
paper's names:

* ``images = {"x1": first modality, "x2": second modality}`` (§2.1: the first channel receives
  the modality that is easier to segment);
* ``masks = {"s1": mask of x1, "s2": mask of x2}``;
* ``group`` = the patient (splits and cross-validation never separate a patient's pairs);
* ``common_grid="resample"``: ``x2`` and ``s2`` are resampled onto ``x1``'s grid in world
  coordinates (no registration: what was misaligned stays misaligned), so that one network can
  take both images as two channels.

Layouts:

* :func:`read_pairs_csv` — the user's own data (e.g. the liver T1/T2 pairs): a CSV with the
  columns ``patient,image1,image2,mask1,mask2`` (optional ``pair``), paths relative to the CSV's
  folder.
* :func:`brats_toolkit_subjects` — ``brats_toolkit_unregistered`` (two TCGA glioma patients,
  T1 / T1c / T2 / FLAIR each on its own native grid, an HD-BET brain mask per sequence): the
  stand-in used by the reproduction.

:func:`leave_one_group_out` gives the cross-validation folds; :func:`paired_recipe` the
preprocessing (resample, rescale, crop or pad).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from .io import DataError
from .recipes import CropOrPad, MinMax, Recipe, Resample
from .subjects import Subject, SubjectDataset

__all__ = ["paired_subject", "read_pairs_csv", "brats_toolkit_subjects", "BRATS_TOOLKIT_PAIRS",
           "BRATS_TOOLKIT_PATIENTS", "BRATS_TOOLKIT_NAME", "leave_one_group_out", "hold_out_groups",
           "paired_recipe"]

#: Patients of ``brats_toolkit_unregistered`` (folder name -> TCGA id).
BRATS_TOOLKIT_PATIENTS = {"OtherEXampleFromTCIA": "TCGA-FG-6692", "TCGA-DU-7294": "TCGA-DU-7294"}
#: Modality pairs (first = easier to segment, §2.1): every pair of the four sequences, ordered
#: T1 > T1c > T2 > FLAIR (the T1-weighted sequences show the brain boundary with the most
#: contrast; see the reproduction's README).
BRATS_TOOLKIT_PAIRS = (("t1", "t1c"), ("t1", "t2"), ("t1", "flair"), ("t1c", "t2"),
                       ("t1c", "flair"), ("t2", "flair"))
BRATS_TOOLKIT_NAME = ("brats_toolkit_unregistered: 2 TCGA glioma patients, T1/T1c/T2/FLAIR on "
                      "native grids, HD-BET brain masks — stand-in for the liver T1/T2 pairs")
_FILE_TAG = {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "fla"}


def paired_subject(patient: str, image1, image2, mask1, mask2, pair: str | None = None) -> Subject:
    """One pair as a :class:`~regseg.datasets.subjects.Subject` (see the module docstring).

    Args:
        patient: patient id (the subject's ``group``).
        image1, image2: paths of the first (easier) and second modality.
        mask1, mask2: paths of their masks (non-zero = inside).
        pair: pair name (default ``"<image1 file>-<image2 file>"``); the subject id is
            ``"<patient>:<pair>"``.
    Returns:
        the subject (nothing is read).
    Raises:
        DataError: a file that does not exist (named).
    """
    for role, path in (("image1", image1), ("image2", image2), ("mask1", mask1), ("mask2", mask2)):
        if not Path(path).is_file():
            raise DataError(f"{path}: {role} of patient {patient} not found")
    if pair is None:
        pair = f"{Path(image1).name.split('.')[0]}-{Path(image2).name.split('.')[0]}"
    return Subject(f"{patient}:{pair}", {"x1": str(image1), "x2": str(image2)},
                   masks={"s1": str(mask1), "s2": str(mask2)}, group=str(patient),
                   common_grid="resample")


def read_pairs_csv(path: str | os.PathLike) -> list[Subject]:
    """Subjects listed in a CSV: ``patient,image1,image2,mask1,mask2[,pair]``, one pair a row.

    Relative paths are relative to the CSV's folder.

    Raises:
        DataError: unreadable file, a missing column, an empty file, duplicate pairs or a file
            that does not exist (the message names the CSV, the row and the problem).
    """
    path = Path(path)
    try:
        rows = list(csv.DictReader(open(path, encoding="utf-8", newline="")))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the pairs CSV ({exc.strerror or exc})") from exc
    need = ("patient", "image1", "image2", "mask1", "mask2")
    if not rows:
        raise DataError(f"{path}: no pair listed (columns {','.join(need)}[,pair])")
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (need "
                        f"{','.join(need)}[,pair])")
    out, seen = [], set()
    for k, row in enumerate(rows, start=2):
        files = {c: (path.parent / row[c].strip()) for c in need[1:]}
        try:
            subject = paired_subject(row["patient"].strip(), files["image1"], files["image2"],
                                     files["mask1"], files["mask2"], (row.get("pair") or "").strip()
                                     or None)
        except DataError as exc:
            raise DataError(f"{path}, row {k}: {exc}") from exc
        if subject.subject_id in seen:
            raise DataError(f"{path}, row {k}: pair {subject.subject_id} listed twice")
        seen.add(subject.subject_id)
        out.append(subject)
    return out


def brats_toolkit_subjects(root: str | os.PathLike, pairs: Sequence = BRATS_TOOLKIT_PAIRS, *,
                           images: str = "skull_stripped") -> list[Subject]:
    """The modality pairs of ``brats_toolkit_unregistered`` for both patients.

    Args:
        root: the ``brats_toolkit_unregistered`` folder (or a data root holding it).
        pairs: ``(first, second)`` modality pairs among ``t1``, ``t1c``, ``t2``, ``flair``.
        images: ``"skull_stripped"`` (the HD-BET native-space images: the only copy of both
            patients in the sample) or ``"raw"`` (the unprocessed inputs; the sample has them
            for TCGA-FG-6692 only, so the other patient then falls back to skull-stripped ones).
    Returns:
        one subject per (patient, pair), ids ``"<TCGA id>:<first>-<second>"``.
    Raises:
        FileNotFoundError: the folder layout is not found (named).
        ValueError: an unknown modality or ``images`` value.
    """
    root = Path(root)
    if (root / "brats_toolkit_unregistered").is_dir():
        root = root / "brats_toolkit_unregistered"
    base = root / "output_preprocessor_batch"
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: not found; expected brats_toolkit_unregistered/"
                                f"output_preprocessor_batch/<patient>/{{hdbet_native-space,"
                                f"masks_hdbet_native-space}}")
    if images not in ("skull_stripped", "raw"):
        raise ValueError(f"images must be 'skull_stripped' or 'raw', got {images!r}")
    for pair in pairs:
        for m in pair:
            if m not in _FILE_TAG:
                raise ValueError(f"unknown modality {m!r}; known: {', '.join(_FILE_TAG)}")
    out = []
    for folder, patient in BRATS_TOOLKIT_PATIENTS.items():
        def image(m):
            tag = _FILE_TAG[m]
            raw = sorted((root / "input_preprocessor_batch_processing" / "exams_to_preprocess"
                          / folder).glob(f"*_{tag}.nii.gz"))
            if images == "raw" and raw:
                return raw[0]
            return base / folder / "hdbet_native-space" / f"{folder}_hdbet_native_{tag}.nii.gz"

        def mask(m):
            return (base / folder / "masks_hdbet_native-space"
                    / f"{folder}_hdbet_mask_native_{_FILE_TAG[m]}.nii.gz")

        for a, b in pairs:
            out.append(paired_subject(patient, image(a), image(b), mask(a), mask(b), f"{a}-{b}"))
    return out


def paired_recipe(spacing_mm=3.0, shape=(64, 80, 64)) -> Recipe:
    """Preprocessing of a pair: resample, rescale every image to [0, 1], centred crop or pad.

    Args:
        spacing_mm: voxel size (mm, one value or three); the liver paper's images are
            1.5 x 1.5 x 3 mm (§3.2.1).
        shape: grid after the centred crop or zero pad, voxels (multiples of 16 for the
            registor's four poolings, §3.2.2).
    Returns:
        the :class:`~regseg.datasets.recipes.Recipe` (resample, min-max, crop-or-pad).
    """
    return Recipe([Resample(spacing_mm), MinMax(), CropOrPad(tuple(int(s) for s in shape))],
                  name="cooperating-pairs")


def leave_one_group_out(dataset: SubjectDataset) -> list[tuple[str, SubjectDataset, SubjectDataset]]:
    """Cross-validation folds that leave one group (patient) out.

    Args:
        dataset: subjects with a ``group`` (e.g. from :func:`brats_toolkit_subjects`).
    Returns:
        ``[(held-out group, train dataset, test dataset), ...]`` in sorted group order; the
        datasets share ``dataset``'s recipe and cache.
    Raises:
        ValueError: fewer than two groups.
    """
    groups = [s.group or s.subject_id for s in dataset.subjects]
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError(f"leave_one_group_out needs at least two groups (patients), got {names}")
    folds = []
    for g in names:
        test = [i for i, h in enumerate(groups) if h == g]
        train = [i for i, h in enumerate(groups) if h != g]
        folds.append((g, dataset.subset(train), dataset.subset(test)))
    return folds


def hold_out_groups(dataset: SubjectDataset, n_test: int, seed: int = 0
                    ) -> list[tuple[str, SubjectDataset, SubjectDataset]]:
    """One train / test split by group: whole groups (patients) go to the test set, in a seeded
    random order, until it holds at least ``n_test`` subjects (§3.2.2: "keeping 12 pairs for
    testing").

    Returns:
        ``[("held-out", train dataset, test dataset)]`` (the :func:`leave_one_group_out` form).
    Raises:
        ValueError: ``n_test < 1`` or no subject would be left to train on.
    """
    import numpy as np

    if n_test < 1:
        raise ValueError(f"n_test must be >= 1, got {n_test}")
    groups = [s.group or s.subject_id for s in dataset.subjects]
    names = sorted(set(groups))
    order = [names[k] for k in np.random.default_rng(seed).permutation(len(names))]
    chosen, count = [], 0
    for g in order:
        if count >= n_test:
            break
        chosen.append(g)
        count += groups.count(g)
    train = [i for i, g in enumerate(groups) if g not in chosen]
    if not train:
        raise ValueError(f"holding out {n_test} pairs leaves nothing to train on "
                         f"({len(groups)} pairs, {len(names)} patients)")
    test = [i for i, g in enumerate(groups) if g in chosen]
    return [("held-out", dataset.subset(train), dataset.subset(test))]
