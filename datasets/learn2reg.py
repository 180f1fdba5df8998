"""Learn2Reg data: the 2020 task folders, the current ``dataset.json`` layout, and stand-ins.

Two on-disk layouts of the Learn2Reg challenge are read into
:class:`~regseg.datasets.subjects.Subject` lists plus their registration pairs:

* **Learn2Reg 2020** task folders (the data of Gunnarsson et al. 2020, §3), one per task, as
  unpacked from the challenge's archives::

      <task 2>/training/scans/case_001_exp.nii.gz, case_001_insp.nii.gz, ...
      <task 2>/training/lungMasks/case_001_exp.nii.gz, ...
      <task 2>/keypoints/case_001_exp.csv, ...        (optional; voxel indices x,y,z per row,
                                                        also looked for in training/keypoints)
      <task 3>/Training/img/img0001.nii.gz, Training/label/label0001.nii.gz   (13 organs)
      <task 4>/Training/img/hippocampus_001.nii.gz, Training/label/hippocampus_001.nii.gz
      <task N>/pairs_val.csv                            ("fixed,moving" integer case ids)

  (folder names are matched case-insensitively). Task 2 pairs the expiration scan (fixed)
  with the inspiration scan (moving) of one case, :func:`read_learn2reg2020_task`.
* **Current** Learn2Reg datasets: ``<folder>/<Name>_dataset.json`` (or ``dataset.json``) with
  ``"training": [{"image": "./imagesTr/X_0001_0000.nii.gz", "label": ..., "mask": ...,
  "keypoints"/"landmarks": ...}]`` and ``"registration_val"`` / ``"registration_test"``:
  ``[{"fixed": ..., "moving": ...}]``; keypoint and landmark CSVs hold voxel indices (the
  evaluation config of ``../shared/data/learn2reg_lungct_ground_truth`` shows the pairs' form),
  :func:`read_learn2reg_json`.

Keypoints / landmarks are converted from the file's voxel indices to RAS world millimetres
(``Subject.landmarks``) through the image's own affine.

The registration pyramid's data (Gunnarsson et al. 2020, §3) are the tasks of this module held
together by :class:`TaskDatasets` (one dataset over several tasks, as the paper trains one model
on all three) and :class:`PyramidSplits` (the splits plus, per task, the test pairs and how the
task is scored). :func:`pyramid_standin_splits` builds them from the real stand-ins of
``../shared/data``: ``msd_hippocampus`` (the very data of Learn2Reg 2020 Task 4), ``chaos_t2``
(abdominal MRI for Task 3's abdominal CT) and the chest CTs of ``lung_ct`` deformed by random
smooth fields for training with the ``lung_ct_pair_elastix`` pair (51 landmarks) for Task 2's
TRE, never for training.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .io import DataError, Volume, check_same_grid, load_volume
from .labels import LabelMapping
from .recipes import (CropOrPad, MapLabels, MaskFromLabels, MinMax, Recipe, ResampleToShape, Step,
                      register_step)
from .subjects import Splits, Subject, SubjectDataset, split_subjects

__all__ = ["ResampleOnto", "Learn2RegTask", "read_learn2reg2020_task", "read_learn2reg_json",
           "voxel_csv_to_world", "file_grid", "TaskDatasets", "TaskSpec", "PyramidSplits", "pyramid_recipe",
           "original_resolution_recipe", "learn2reg_splits", "pyramid_standin_splits",
           "L2R2020_TASKS", "STANDIN_NAMES", "disjoint_pairs", "cyclic_pairs"]

#: Learn2Reg 2020 tasks of the pyramid paper (§3): key -> (title, labels)
L2R2020_TASKS = {
    "task2": ("Task 2: lung CT, inspiration -> expiration", ["lung"]),
    "task3": ("Task 3: abdominal CT, 13 organs",
              ["spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver",
               "stomach", "aorta", "inferior vena cava", "portal and splenic vein", "pancreas",
               "right adrenal gland", "left adrenal gland"]),
    "task4": ("Task 4: hippocampus MR", ["anterior", "posterior"]),
}

#: Stand-in names for table titles (every one says what it stands in for).
STANDIN_NAMES = {
    "task2": "lung CT stand-in: training on 2 chest CTs (lung_ct) deformed by random smooth "
             "fields; TRE on the elastix lung CT pair (1 patient, 51 landmarks)",
    "task3": "abdomen stand-in: CHAOS T2-SPIR MRI (liver, kidneys, spleen), not CT with 13 organs",
    "task4": "hippocampus: msd_hippocampus = the data of Learn2Reg 2020 Task 4 (MSD Task04)",
}


# ----------------------------------------------------------------------------- steps
@register_step
@dataclass(frozen=True)
class ResampleOnto(Step):
    """Resample every part onto the voxel grid of a reference file, in world coordinates.

    Images linear, label maps and masks nearest neighbour (SimpleITK,
    :func:`~regseg.datasets.preprocessing.resample_onto`); a sample already on that grid is left
    untouched. Learn2Reg gives the fixed and moving scans of a pair on one grid, so that the
    identity is the "Initial" registration; a pair on different grids (the elastix lung CT
    pair) is brought onto the fixed scan's grid this way.
    """

    reference: str = ""
    name: ClassVar[str] = "resample-onto"
    source: ClassVar[str] = "Learn2Reg: fixed and moving scans of a pair share one grid"

    def __call__(self, sample):
        from .preprocessing import resample_onto

        ref = load_volume(self.reference)
        first = next(iter(sample.images.values()))
        here = Volume(np.asarray(first), np.asarray(sample.affine), sample.image_path)
        try:
            check_same_grid(ref, here)
            return sample
        except DataError:
            pass
        for kind, label in (("images", False), ("labels", True), ("masks", True)):
            parts = getattr(sample, kind)
            for key, data in parts.items():
                vol = resample_onto(Volume(np.asarray(data, dtype=np.int32 if label else np.float32),
                                           sample.affine, sample.sources.get(key, "")), ref,
                                    label=label)
                parts[key] = vol.data.astype(bool) if kind == "masks" else vol.data
        sample.affine = np.asarray(ref.affine, dtype=np.float64)
        return sample


def pyramid_recipe(shape=(64, 64, 64), labels: LabelMapping | None = None, *,
                   label_source: str = "labels", before=(), after=(), name: str = "") -> Recipe:
    """Gunnarsson et al. 2020 §3: resample to ``shape`` (64^3) and min-max to [0, 1].

    Steps: ``before`` (on the file's grid, e.g. a common grid or a lung mask), resample every part
    to ``shape`` voxels over the same field of view (images linear, labels nearest), per-image
    min-max to [0, 1] (§3: "normalized (I_f, I_m in [0, 1])"), map ``label_source`` to the label
    map ``structures`` (class ``k`` = ``labels.names[k-1]``; a class may vanish after
    downsampling, so presence is not required), then ``after``.

    Args:
        shape: the network's grid, voxels.
        labels: the task's label mapping, or ``None`` (no structures).
        label_source: name of the subject's raw label map.
        before, after: extra steps.
        name: the recipe's name.
    """
    steps = [*before, ResampleToShape(tuple(int(s) for s in shape)), MinMax()]
    if labels is not None:
        steps.append(MapLabels(label_source, {"structures": labels}, require_present=False))
    steps.extend(after)
    return Recipe(steps, name=name or f"Gunnarsson et al. 2020 §3 ({'x'.join(map(str, shape))}, "
                                      f"min-max)")


def original_resolution_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` without its resampling to the network grid and its intensity rescaling.

    What remains (common grid, label mapping, masks) gives the samples at the resolution the
    Learn2Reg scorer evaluates (the original image grid).
    """
    return Recipe([s for s in recipe.steps if not isinstance(s, (ResampleToShape, MinMax))],
                  name=f"{recipe.name} at the original resolution")


# ----------------------------------------------------------------------------- file layouts
def voxel_csv_to_world(csv_path: str | os.PathLike, image_path: str | os.PathLike) -> np.ndarray:
    """Read voxel indices ``(N, 3)`` (comma separated, the file's index order) as RAS world mm.

    ``world = affine @ [i, j, k, 1]`` with the image file's own affine (nibabel, or SimpleITK for
    ITK formats), so the points survive any reorientation of the array.

    Raises:
        DataError: unreadable CSV or image header (named).
    """
    try:
        pts = np.loadtxt(csv_path, delimiter=",", ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DataError(f"{csv_path}: cannot read voxel coordinates ({exc})") from exc
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise DataError(f"{csv_path}: expected rows of 3 voxel coordinates x,y,z")
    affine = _file_affine(image_path)
    return (np.c_[pts[:, :3], np.ones(len(pts))] @ affine.T)[:, :3]


def file_grid(path: str | os.PathLike) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` of an image file's voxel grid as stored (no reorientation).

    The grid a Learn2Reg displacement file refers to: the scorer reads arrays with nibabel's
    ``get_fdata()``. ITK formats are read with SimpleITK (LPS -> RAS affine).

    Raises:
        DataError: an unreadable header (named).
    """
    import nibabel as nib

    from .itk_io import is_itk_path, read_itk_image
    try:
        img = read_itk_image(str(path)) if is_itk_path(str(path)) else nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a named DataError
        raise DataError(f"{path}: cannot read the image header ({exc})") from exc
    return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)


def _file_affine(path) -> np.ndarray:
    return file_grid(path)[1]


@dataclass
class Learn2RegTask:
    """One Learn2Reg task read from disk.

    Attributes:
        key: ``"task2"``, ``"task3"``, ``"task4"`` or the dataset's name.
        subjects: the scans (label map ``labels``, mask ``mask`` where given, landmarks).
        pairs: ``[(moving id, fixed id), ...]`` registration pairs listed by the task.
        labels: the label mapping of ``labels`` (class names).
        root: the folder read.
        grid_shape: the task's common image shape where the layout states one.
    """

    key: str
    subjects: list
    pairs: list
    labels: LabelMapping | None
    root: Path
    grid_shape: tuple | None = None


def _find_dir(root: Path, *names: str) -> Path | None:
    """The first existing sub-path of ``root`` matching ``names`` case-insensitively."""
    current = root
    for name in names:
        match = [p for p in current.iterdir() if p.is_dir() and p.name.lower() == name.lower()] \
            if current.is_dir() else []
        if not match:
            return None
        current = match[0]
    return current


def _read_pairs_csv(path: Path) -> list[tuple[int, int]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the pairs file ({exc.strerror or exc})") from exc
    if not rows:
        raise DataError(f"{path}: empty pairs file")
    header = [h.strip().lower() for h in rows[0]]
    if "fixed" not in header or "moving" not in header:
        raise DataError(f"{path}: the pairs file needs a header 'fixed,moving', got {rows[0]}")
    fi, mi = header.index("fixed"), header.index("moving")
    try:
        return [(int(r[fi]), int(r[mi])) for r in rows[1:] if r and any(c.strip() for c in r)]
    except (ValueError, IndexError) as exc:
        raise DataError(f"{path}: rows must be integer case ids fixed,moving ({exc})") from exc


def _case_id(name: str) -> int | None:
    m = re.search(r"(\d+)", name)
    return int(m.group(1)) if m else None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.name.endswith(".nii.gz") or p.name.endswith(".nii"))


def _stem(path: Path) -> str:
    return path.name[:-7] if path.name.endswith(".nii.gz") else path.stem


def read_learn2reg2020_task(root: str | os.PathLike, task: str, *,
                            fixed_phase: str = "exp") -> Learn2RegTask:
    """Read one Learn2Reg 2020 task folder (layout in the module docstring).

    Args:
        root: the task's folder.
        task: ``"task2"`` (lung CT), ``"task3"`` (abdomen CT) or ``"task4"`` (hippocampus MR).
        fixed_phase: task 2: the breathing phase of the fixed scan, ``"exp"`` (default) or
            ``"insp"``; the other one is the moving scan.
    Returns:
        :class:`Learn2RegTask`; subject ids are the file stems (``case_001_exp``, ``img0001``,
        ``hippocampus_001``); pairs from ``pairs_val.csv`` when present (else none).
    Raises:
        DataError: a missing folder, an image without its label map or mask, or a pair naming an
            absent case (each named).
        ValueError: an unknown task or phase.
    """
    if task not in L2R2020_TASKS:
        raise ValueError(f"task must be one of {sorted(L2R2020_TASKS)}, got {task!r}")
    if fixed_phase not in ("exp", "insp"):
        raise ValueError(f"fixed_phase must be 'exp' or 'insp', got {fixed_phase!r}")
    root = Path(root)
    title, names = L2R2020_TASKS[task]
    mapping = LabelMapping(names, {n: [k + 1] for k, n in enumerate(names)})
    if task == "task2":
        scans, masks = _find_dir(root, "training", "scans"), _find_dir(root, "training", "lungMasks")
        if scans is None or masks is None:
            raise DataError(f"{root}: a Learn2Reg 2020 Task 2 folder holds training/scans and "
                            f"training/lungMasks")
        kp_dir = _find_dir(root, "keypoints") or _find_dir(root, "training", "keypoints")
        subjects, by_case = [], {}
        for image in _nifti_files(scans):
            sid = _stem(image)
            mask = masks / image.name
            if not mask.is_file():
                raise DataError(f"{mask}: lung mask of {image} not found")
            kp = kp_dir / f"{sid}.csv" if kp_dir is not None else None
            landmarks = voxel_csv_to_world(kp, image) if kp is not None and kp.is_file() else None
            subjects.append(Subject(sid, {"image": str(image)}, {"labels": str(mask)},
                                    {"lung": str(mask)}, landmarks=landmarks))
            by_case.setdefault(_case_id(sid), {})["exp" if "_exp" in sid else "insp"] = sid
        moving_phase = "insp" if fixed_phase == "exp" else "exp"

        def pair(fixed, moving):
            try:
                return by_case[moving][moving_phase], by_case[fixed][fixed_phase]
            except KeyError:
                raise DataError(f"{root}: pair fixed {fixed} / moving {moving}: scan "
                                f"case_{moving:03d}_{moving_phase} or case_{fixed:03d}_"
                                f"{fixed_phase} not found") from None
    else:
        img_dir, lab_dir = _find_dir(root, "Training", "img"), _find_dir(root, "Training", "label")
        if img_dir is None or lab_dir is None:
            raise DataError(f"{root}: a Learn2Reg 2020 Task {task[-1]} folder holds Training/img "
                            f"and Training/label")
        labels = {_case_id(p.name): p for p in _nifti_files(lab_dir)}
        subjects, by_id = [], {}
        for image in _nifti_files(img_dir):
            cid = _case_id(image.name)
            if cid not in labels:
                raise DataError(f"{image}: no label map with case id {cid} in {lab_dir}")
            sid = _stem(image)
            subjects.append(Subject(sid, {"image": str(image)}, {"labels": str(labels[cid])}))
            by_id[cid] = sid

        def pair(fixed, moving):
            if fixed not in by_id or moving not in by_id:
                raise DataError(f"{root}: pair fixed {fixed} / moving {moving} names a case "
                                f"that is not in {img_dir}")
            return by_id[moving], by_id[fixed]
    if not subjects:
        raise DataError(f"{root}: no NIfTI image found for {title}")
    pairs_file = root / "pairs_val.csv"
    pairs = [pair(f, m) for f, m in _read_pairs_csv(pairs_file)] if pairs_file.is_file() else []
    return Learn2RegTask(task, subjects, pairs, mapping, root)


def _dataset_json(folder: Path) -> Path:
    candidates = sorted(folder.glob("*_dataset.json")) + [folder / "dataset.json"]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{folder}: no <Name>_dataset.json or dataset.json (current Learn2Reg layout)")


def read_learn2reg_json(folder: str | os.PathLike, *, pairs_key: str = "registration_val",
                        key: str | None = None) -> Learn2RegTask:
    """Read a current-layout Learn2Reg dataset (``<Name>_dataset.json``).

    Every ``"training"`` entry whose image exists becomes a subject (id = file stem, e.g.
    ``LungCT_0001_0000``) with its ``label`` (label map ``labels``), ``mask`` (mask ``mask``) and
    ``landmarks`` (preferred) or ``keypoints`` CSV (voxel indices -> RAS mm). Pairs are
    ``data[pairs_key]`` (default the validation pairs, whose labels are public). Label names come
    from ``"labels"`` when the file gives them (``{"0": {"1": "liver", ...}}`` or
    ``{"1": "liver", ...}``), else ``"1", "2", ...`` up to the largest id found in the first label
    map.

    Raises:
        DataError: no JSON file, invalid JSON, an entry without ``image``, or a pair naming an
            image that is not in ``"training"`` (named).
    """
    folder = Path(folder)
    path = _dataset_json(folder)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    subjects, ids = [], {}
    for entry in data.get("training", []):
        if "image" not in entry:
            raise DataError(f"{path}: a 'training' entry without 'image': {entry}")
        image = (folder / entry["image"]).resolve()
        if not image.is_file():
            continue
        sid = _stem(image)
        labels = {"labels": str(folder / entry["label"])} if entry.get("label") else {}
        masks = {"mask": str(folder / entry["mask"])} if entry.get("mask") else {}
        points = entry.get("landmarks") or entry.get("keypoints")
        landmarks = voxel_csv_to_world(folder / points, image) if points and \
            (folder / points).is_file() else None
        subjects.append(Subject(sid, {"image": str(image)}, labels, masks, landmarks=landmarks))
        ids[os.path.normpath(entry["image"])] = sid
    if not subjects:
        raise DataError(f"{path}: no 'training' image found on disk under {folder}")
    pairs = []
    for p in data.get(pairs_key, []):
        try:
            pairs.append((ids[os.path.normpath(p["moving"])], ids[os.path.normpath(p["fixed"])]))
        except KeyError:
            raise DataError(f"{path}: {pairs_key} pair {p} names an image that is not on disk "
                            f"among 'training'") from None
    names = _json_label_names(data.get("labels"))
    if names is None and subjects[0].labels:
        top = int(load_volume(subjects[0].label_path, label=True).data.max())
        names = [str(k) for k in range(1, top + 1)]
    mapping = LabelMapping(names, {n: [k + 1] for k, n in enumerate(names)}) if names else None
    shape = data.get("tensorImageShape", {}).get("0") if isinstance(
        data.get("tensorImageShape"), dict) else None
    return Learn2RegTask(key or data.get("name", folder.name), subjects, pairs, mapping, folder,
                         tuple(shape) if shape else None)


def _json_label_names(labels) -> list[str] | None:
    if not labels:
        return None
    if isinstance(labels, dict) and all(isinstance(v, dict) for v in labels.values()):
        labels = next(iter(labels.values()))
    items = sorted(((int(k), str(v)) for k, v in labels.items() if int(k) > 0))
    if not items:
        return None
    return [v for _, v in items] if [k for k, _ in items] == list(range(1, len(items) + 1)) \
        else [str(k) for k in range(1, items[-1][0] + 1)]


# ----------------------------------------------------------------------------- several tasks
def _ids(part) -> list[str]:
    if hasattr(part, "subject_ids"):
        return list(part.subject_ids)
    base = getattr(part, "base", None)  # AugmentedSamples: ids without loading
    return [f"{base.subject_id}-aug{i}" for i in range(len(part))]


class TaskDatasets:
    """Several datasets (one per task) behind one ``load(i)``, as one model trains on all.

    Args:
        name: the combined name (table titles).
        is_paper_dataset: ``True`` only for the user's Learn2Reg 2020 data.
        parts: ``{task key: dataset}`` (objects with ``load`` and ``len``), in order.
        recipe: the preprocessing recipe recorded for the run (the network's input recipe).
    """

    def __init__(self, name: str, is_paper_dataset: bool, parts: dict, recipe: Recipe):
        self.name = name
        self.is_paper_dataset = bool(is_paper_dataset)
        self.parts = dict(parts)
        self.recipe = recipe
        self.offsets, start = {}, 0
        for key, part in self.parts.items():
            self.offsets[key] = (start, start + len(part))
            start += len(part)
        self._n = start

    def __len__(self) -> int:
        return self._n

    def indices(self, task: str) -> np.ndarray:
        """Global indices of ``task``'s samples."""
        lo, hi = self.offsets[task]
        return np.arange(lo, hi)

    def locate(self, i: int) -> tuple[str, int]:
        """``(task, index within the task)`` of global index ``i``.

        Raises:
            IndexError: out of range.
        """
        i = int(i)
        for key, (lo, hi) in self.offsets.items():
            if lo <= i < hi:
                return key, i - lo
        raise IndexError(f"sample {i} out of range for {self._n} samples")

    def load(self, i: int):
        """Sample ``i`` of the concatenation (its task's preprocessing)."""
        key, j = self.locate(i)
        return self.parts[key].load(j)

    @property
    def subject_ids(self) -> list[str]:
        """``<task>/<subject id>`` for every sample (no file is read)."""
        return [f"{k}/{sid}" for k, part in self.parts.items() for sid in _ids(part)]

    @property
    def label_names(self) -> dict[str, list[str]]:
        """``{"<task>/structures": class names}``."""
        return {f"{k}/structures": list(getattr(p, "structure_names", None) or [])
                for k, p in self.parts.items()}

    structure_names: list = []
    class_names: list = []

    def use_disk_cache(self, cache) -> "TaskDatasets":
        """Give every part that supports it the on-disk preprocessing cache; returns self."""
        for part in self.parts.values():
            _use_disk_cache(part, cache)
        return self


def _use_disk_cache(part, cache):
    if hasattr(part, "use_disk_cache"):
        part.use_disk_cache(cache)
    elif hasattr(part, "dataset"):
        _use_disk_cache(part.dataset, cache)
    for sub in getattr(part, "parts", []) if not isinstance(getattr(part, "parts", None), dict) \
            else []:
        _use_disk_cache(sub, cache)


@dataclass
class TaskSpec:
    """How one task is evaluated (Table 1 row) and where its test pairs are.

    Attributes:
        key: ``"task2"``, ``"task3"``, ``"task4"``.
        title: the task's name in the tables (says "stand-in" where it is one).
        test: the test dataset (network grid); ``pairs`` index into it.
        pairs: int ``(P, 2)`` (moving, fixed) test pairs.
        scores: Table 1 columns this task fills: ``"tre"`` and/or ``"dice"`` (+ HD95), and
            always SDlogJ.
        jacobian_mask: the fixed sample's mask used for SDlogJ (Learn2Reg Task 2: the lungs).
        is_paper_dataset: whether this task's data is the paper's.
        train_groups: per training sample of the task, a group id; training pairs are drawn
            within a group (the deformed copies of one scan), or ``None`` (any two samples).
    """

    key: str
    title: str
    test: object
    pairs: np.ndarray
    scores: tuple = ("dice",)
    jacobian_mask: str | None = None
    is_paper_dataset: bool = False
    train_groups: list | None = None


@dataclass
class PyramidSplits(Splits):
    """:class:`~regseg.datasets.subjects.Splits` over several tasks plus each task's test setup.

    ``train`` / ``validation`` / ``test`` are :class:`TaskDatasets`; ``tasks`` maps each task key
    to its :class:`TaskSpec`.
    """

    tasks: dict = field(default_factory=dict)
    n_labels: int = 1

    def use_disk_cache(self, cache) -> "PyramidSplits":
        """Keep preprocessed samples of every task on disk (folder or ``PreprocessingCache``)."""
        try:
            from .cache import PreprocessingCache
            if not isinstance(cache, PreprocessingCache):
                cache = PreprocessingCache(cache)
        except ImportError:  # pragma: no cover - cache module absent
            return self
        for part in (self.train, self.validation, self.test):
            part.use_disk_cache(cache)
        return self

    def validate(self, progress=None) -> int:
        """Load (so check, and cache) every sample of every split once; returns the count.

        Raises:
            DataError: the first sample that cannot be read or preprocessed (named).
        """
        jobs = [(part, i, sid) for part in (self.train, self.validation, self.test)
                for i, sid in enumerate(part.subject_ids)]
        for k, (part, i, sid) in enumerate(jobs):
            part.load(i)
            if progress is not None:
                progress(k + 1, len(jobs), sid)
        return len(jobs)


def disjoint_pairs(n: int) -> np.ndarray:
    """``(2k -> 2k + 1)`` for ``k < n // 2``: every subject in one pair only (independent pairs)."""
    return np.array([(2 * k, 2 * k + 1) for k in range(n // 2)], dtype=np.int64).reshape(-1, 2)


def cyclic_pairs(n: int, steps=(1,)) -> np.ndarray:
    """``i -> (i + s) mod n`` for every ``s`` in ``steps``: each subject moving and fixed once per
    step."""
    return np.array([(i, (i + s) % n) for s in steps for i in range(n)],
                    dtype=np.int64).reshape(-1, 2)


# ----------------------------------------------------------------------------- the user's data
def _task_folder(root: Path, task: str) -> Path | None:
    number = task[-1]
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.is_dir() and re.fullmatch(rf"task_?0?{number}.*", p.name.lower()):
            return p
    return None


def learn2reg_splits(root: str | os.PathLike, shape=(64, 64, 64), *, layout: str = "2020",
                     validation_fraction: float = 0.0, seed: int = 0,
                     cache: bool = True) -> PyramidSplits:
    """The user's Learn2Reg data for the pyramid (the paper's data, §3).

    ``layout="2020"``: ``root`` holds one folder per task, named ``task_02`` / ``task2`` /
    ``Task02...`` (case-insensitive), each as in :func:`read_learn2reg2020_task`.
    ``layout="json"``: ``root`` holds one folder per task with a ``<Name>_dataset.json``
    (folders whose name contains ``lung``, ``abdomen`` and ``hippocampus`` map to tasks 2, 3, 4).
    The listed validation pairs are the test pairs (the challenge's test labels are not public);
    their scans are held out of training; every other scan is a training scan.

    Raises:
        DataError: no task folder found, or the errors of the readers.
    """
    root = Path(root)
    found = {}
    for task in L2R2020_TASKS:
        if layout == "2020":
            folder = _task_folder(root, task)
            if folder is not None:
                found[task] = read_learn2reg2020_task(folder, task)
        else:
            word = {"task2": "lung", "task3": "abdomen", "task4": "hippocampus"}[task]
            for folder in sorted(p for p in root.iterdir() if p.is_dir()):
                if word in folder.name.lower():
                    found[task] = read_learn2reg_json(folder, key=task)
                    break
    if not found:
        raise DataError(f"{root}: no Learn2Reg task folder (task_02/task_03/task_04 for the 2020 "
                        f"layout, or folders with a <Name>_dataset.json)")
    train_parts, test_parts, specs = {}, {}, {}
    n_labels = 1
    for task, t in found.items():
        before = []
        names = t.labels
        after = [MaskFromLabels("structures", "lung")] if task == "task2" else []
        recipe = pyramid_recipe(shape, names, before=before, after=after,
                                name=f"Gunnarsson et al. 2020 §3, {task}")
        test_ids = sorted({s for p in t.pairs for s in p})
        by_id = {s.subject_id: s for s in t.subjects}
        test_subjects = [by_id[s] for s in test_ids]
        train_subjects = [s for s in t.subjects if s.subject_id not in set(test_ids)]
        title = L2R2020_TASKS[task][0]
        train_parts[task] = SubjectDataset(f"Learn2Reg 2020 {title}", True, train_subjects,
                                           recipe, cache=cache)
        test = SubjectDataset(f"Learn2Reg 2020 {title}", True, test_subjects, recipe, cache=cache)
        test_parts[task] = test
        index = {s: k for k, s in enumerate(test_ids)}
        pairs = np.array([(index[m], index[f]) for m, f in t.pairs], dtype=np.int64).reshape(-1, 2)
        # Task 2: inspiration / expiration scans of one patient; Tasks 3, 4: inter-subject
        groups = [_case_id(s.subject_id) for s in train_subjects] if task == "task2" else None
        specs[task] = TaskSpec(task, title, test, pairs,
                               ("tre",) if task == "task2" else ("dice",),
                               "lung" if task == "task2" else None, True, train_groups=groups)
        if names is not None:
            n_labels = max(n_labels, len(names))
    first = pyramid_recipe(shape, None, name="Gunnarsson et al. 2020 §3")
    name = "Learn2Reg 2020 (" + ", ".join(found) + ")"
    return PyramidSplits(TaskDatasets(name, True, train_parts, first),
                         TaskDatasets(name, True, {k: v.subset([]) for k, v in train_parts.items()},
                                      first),
                         TaskDatasets(name, True, test_parts, first), tasks=specs,
                         n_labels=n_labels)


# ----------------------------------------------------------------------------- stand-ins
HIPPOCAMPUS = LabelMapping(["anterior", "posterior"], {"anterior": [1], "posterior": [2]})
CHAOS = LabelMapping(["liver", "right kidney", "left kidney", "spleen"],
                     {"liver": [1], "right kidney": [2], "left kidney": [3], "spleen": [4]})
LUNG = LabelMapping(["lung"], {"lung": [1]})
#: Learn2Reg 2020 Task 4 gives every hippocampus crop on one 64^3 grid (1 mm): the MSD crops
#: (about 35 x 51 x 35) are zero-padded to it, centred, without resampling.
HIPPOCAMPUS_GRID = (64, 64, 64)
#: One grid for the CHAOS volumes (256 x 256 x 31-37 slices): zero-padded to 40 slices, so that
#: the identity is a registration on one grid, as Learn2Reg gives Task 3's scans.
CHAOS_GRID = (256, 256, 40)


def _hippocampus_subjects(root: Path) -> list[Subject]:
    folder = root / "msd_hippocampus"
    images, labels = folder / "images", folder / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise DataError(f"{folder}: msd_hippocampus needs images/ and labels/")
    out = []
    for image in _nifti_files(images):
        label = labels / image.name
        if label.is_file():
            out.append(Subject(_stem(image), {"image": str(image)}, {"labels": str(label)}))
    if not out:
        raise DataError(f"{folder}: no image with its label map")
    return out


def _chaos_subjects(root: Path) -> list[Subject]:
    folder = root / "chaos_t2"
    out = []
    for image in sorted(folder.glob("image_*.nii.gz"), key=lambda p: _case_id(p.name)):
        label = folder / image.name.replace("image_", "label_")
        if label.is_file():
            out.append(Subject(f"chaos_{_case_id(image.name):02d}", {"image": str(image)},
                               {"labels": str(label)}))
    if not out:
        raise DataError(f"{folder}: no image_<id>.nii.gz with its label_<id>.nii.gz")
    return out


def pyramid_standin_splits(root: str | os.PathLike, shape=(64, 64, 64), *,
                           hippocampus_sizes=(196, 4, 60), chaos_sizes=(10, 1, 9),
                           chaos_steps=(1, 2), lung_copies: int = 16,
                           lung_max_displacement: float = 3.0, seed: int = 0,
                           cache: bool = True) -> PyramidSplits:
    """The real stand-ins of ``../shared/data`` for Learn2Reg 2020 Tasks 2, 3 and 4.

    * **Task 4** (``msd_hippocampus``, the very data of Learn2Reg 2020 Task 4): each crop
      zero-padded to the 64^3 grid of the challenge (:data:`HIPPOCAMPUS_GRID`), split by subject
      (``hippocampus_sizes`` train / validation / test, seeded); test pairs are disjoint
      (:func:`disjoint_pairs`: 60 test subjects -> 30 independent pairs).
    * **Task 3 stand-in** (``chaos_t2``, abdominal MRI, liver / kidneys / spleen): zero-padded
      to :data:`CHAOS_GRID`; split ``chaos_sizes``; test pairs ``i -> i + s`` for ``s`` in
      ``chaos_steps`` (:func:`cyclic_pairs`).
    * **Task 2 stand-in**: training on the chest CTs of ``lung_ct`` (POPI phase 00 with a
      thresholded lung mask; ct-64 with its ``wholeLung`` mask), ``lung_copies`` copies of each
      under random smooth deformations (:class:`~regseg.datasets.augmentation.AugmentedSamples`,
      lattice values up to ``lung_max_displacement`` voxels of the network grid), paired within
      one scan; test: the elastix pair (follow-up = moving resampled onto the baseline = fixed
      grid, :class:`ResampleOnto`), 51 landmarks for TRE, SDlogJ in the fixed lung mask. Its
      landmarks are never used for training.

    Every part goes through :func:`pyramid_recipe` (``shape``, min-max to [0, 1]).

    Raises:
        DataError / FileNotFoundError: a missing stand-in folder or file (named).
    """
    from .luna16 import LabelsFromMask
    from .lung_ct import CropToMaskBox, LungMaskFromCT, lung_pair_subjects

    root = Path(root)
    shape = tuple(int(s) for s in shape)
    # Task 4
    hippo_recipe = pyramid_recipe(shape, HIPPOCAMPUS, before=[CropOrPad(HIPPOCAMPUS_GRID)],
                                  name="§3 on the Learn2Reg Task 4 grid (MSD crop padded to 64^3)")
    h_train, h_val, h_test = split_subjects(_hippocampus_subjects(root), hippocampus_sizes, seed)
    h_name = STANDIN_NAMES["task4"]
    hippo = [SubjectDataset(h_name, True, part, hippo_recipe, cache=cache)
             for part in (h_train, h_val, h_test)]
    # Task 3 stand-in
    chaos_recipe = pyramid_recipe(shape, CHAOS, before=[CropOrPad(CHAOS_GRID)],
                                  name="§3 on one CHAOS grid (256x256x40, zero-padded)")
    c_train, c_val, c_test = split_subjects(_chaos_subjects(root), chaos_sizes, seed)
    c_name = STANDIN_NAMES["task3"]
    chaos = [SubjectDataset(c_name, False, part, chaos_recipe, cache=cache)
             for part in (c_train, c_val, c_test)]
    # Task 2 stand-in
    folder = root / "lung_ct"
    popi, ct64, lung64 = (folder / "popi_phase00_256x256x141.nii.gz", folder / "ct-64.nrrd",
                          folder / "wholeLung-64.nrrd")
    for path in (popi, ct64, lung64):
        if not path.is_file():
            raise DataError(f"{path}: chest CT of the shared data not found")
    lung_name = STANDIN_NAMES["task2"]
    # the test pair covers the right lung and chest wall: crop the training CTs the same way
    right_lung = CropToMaskBox("lung", 10.0, side="right")
    popi_recipe = pyramid_recipe(shape, LUNG, label_source="lungs",
                                 before=[LungMaskFromCT(mask="lung"), right_lung,
                                         LabelsFromMask("lung", "lungs")],
                                 after=[MaskFromLabels("structures", "lung")],
                                 name="lung mask by thresholding + §3")
    ct64_recipe = pyramid_recipe(shape, LUNG, label_source="lungs",
                                 before=[MaskFromLabels("lungs", "lung"), right_lung],
                                 after=[MaskFromLabels("structures", "lung")],
                                 name="right lung + §3")
    bases = [SubjectDataset(lung_name, False, [Subject("popi00", {"ct": str(popi)})],
                            popi_recipe, cache=cache),
             SubjectDataset(lung_name, False, [Subject("cip_ct64", {"ct": str(ct64)},
                                                       {"lungs": str(lung64)})],
                            ct64_recipe, cache=cache)]
    copies = [_LazyAugmented(b, lung_copies, seed, lung_max_displacement) for b in bases]
    lung_train = _Concat(copies)
    pair_subjects = lung_pair_subjects(root)  # [baseline (fixed), followup (moving)]
    baseline = pair_subjects[0].images["ct"]
    pair_recipe = pyramid_recipe(shape, LUNG, label_source="lungs",
                                 before=[ResampleOnto(baseline)],
                                 after=[MaskFromLabels("structures", "lung")],
                                 name="follow-up onto the baseline grid + §3")
    lung_test = SubjectDataset(lung_name, False, pair_subjects, pair_recipe, cache=cache)

    specs = {
        "task2": TaskSpec("task2", f"Task 2 stand-in ({lung_name})", lung_test,
                          np.array([[1, 0]]), ("tre",), "lung", False,
                          train_groups=[g for g, c in enumerate(copies) for _ in range(len(c))]),
        "task3": TaskSpec("task3", f"Task 3 stand-in ({c_name})", chaos[2],
                          cyclic_pairs(len(chaos[2]), chaos_steps), ("dice",), None, False),
        "task4": TaskSpec("task4", f"Task 4 ({h_name})", hippo[2], disjoint_pairs(len(hippo[2])),
                          ("dice",), None, True),
    }
    name = ("Learn2Reg 2020 stand-ins (real data): hippocampus MR = Task 4 data; CHAOS MRI for "
            "Task 3; lung CT for Task 2")
    # the run's recipe (for `python -m regseg register` on a user's pair): §3 alone
    run_recipe = pyramid_recipe(shape, None, name="Gunnarsson et al. 2020 §3")
    train = TaskDatasets(name, False, {"task2": lung_train, "task3": chaos[0], "task4": hippo[0]},
                         run_recipe)
    validation = TaskDatasets(name, False, {"task3": chaos[1], "task4": hippo[1]}, run_recipe)
    test = TaskDatasets(name, False, {"task2": lung_test, "task3": chaos[2], "task4": hippo[2]},
                        run_recipe)
    return PyramidSplits(train, validation, test, tasks=specs, n_labels=len(CHAOS))


class _LazyAugmented:
    """``n`` deformed copies of sample 0 of ``dataset``, the base loaded on first use."""

    def __init__(self, dataset, n, seed, max_displacement):
        self.dataset, self.n, self.seed, self.max_displacement = dataset, int(n), seed, \
            float(max_displacement)
        self._aug = None

    def __len__(self):
        return self.n

    @property
    def subject_ids(self):
        return [f"{self.dataset.subject_ids[0]}-aug{i}" for i in range(self.n)]

    structure_names = property(lambda self: self.dataset.structure_names)

    def load(self, i):
        from .augmentation import AugmentedSamples

        if self._aug is None:
            self._aug = AugmentedSamples(self.dataset.load(0), self.n, self.seed,
                                         max_displacement=self.max_displacement)
        return self._aug.load(i)


class _Concat:
    """Several datasets behind one ``load(i)`` (no file read to list the ids)."""

    def __init__(self, parts):
        self.parts = list(parts)
        self._index = [(k, i) for k, p in enumerate(self.parts) for i in range(len(p))]

    def __len__(self):
        return len(self._index)

    def load(self, i):
        k, j = self._index[int(i)]
        return self.parts[k].load(j)

    @property
    def subject_ids(self):
        return [sid for p in self.parts for sid in p.subject_ids]

    structure_names = property(lambda self: self.parts[0].structure_names)
