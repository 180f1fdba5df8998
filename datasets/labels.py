"""Label maps: which source label ids make up each evaluated structure.

Source: U-ReSNet (Estienne et al., MICCAI 2019), §4.1 and Table 1 (15 structures, left and
right merged, for the registration Dice) and §4.1 "Evaluation of the Segmentation" (3 classes:
CeblWM, CeblC, LV).

Two source label conventions are provided:

* FreeSurfer ``aseg`` ids (``FreeSurferColorLUT.txt``), what OASIS-3 ships and the paper used.
* DLMUSE / MUSE ids (Neuromorphometrics-style), what the ``ixi10`` sample in the shared data
  folder ships (see ``shared/data/README.md``). Two choices make DLMUSE match FreeSurfer's
  definitions as closely as the label sets allow:

  - CblmC includes the vermis (71, 72, 73): FreeSurfer's Cerebellum-Cortex includes the vermis
    cortex (aseg has no vermis label).
  - LV is 51, 52 only; the inferior lateral ventricles (49, 50) are NOT included, as FreeSurfer's
    Lateral-Ventricle (4, 43) excludes Inf-Lat-Vent (5, 44).
  - CeblWM is 81-95: lobar white matter, fornix (89, 90), internal capsule (91-94) and corpus
    callosum (95). FreeSurfer's Cerebral-White-Matter similarly contains the fornix, capsules and
    callosum (aseg has no separate labels for them).
  - CSF is DLMUSE 1 (sulcal/extra-cerebral CSF) vs FreeSurfer 24 (CSF, mostly around the brain stem
    and basal cisterns). The two definitions differ in extent; no closer match exists.

* Mindboggle-101 ``labels.DKT31.manual+aseg.nii.gz`` ids (:data:`MINDBOGGLE_TABLE1`, 14 of the 15
  structures: Mindboggle has no cerebral white-matter label). Its non-cortical labels are the
  Neuromorphometrics BrainCOLOR labels (the source of DLMUSE too) renumbered to FreeSurfer ids,
  with the vermis (Neuromorphometrics 71-73) moved to 630-632 and the basal forebrain (75/76) to
  91/92 (Mindboggle ``mindboggle/mio/labels.py``, ``DKTprotocol``). Ids found in the 15
  OASIS-TRT-20 files of the shared data: 4, 5, 6, 7, 10-18, 24, 26, 28, 30, 43-46, 49-54, 58, 60,
  62, 85, 91, 92, 630-632 (72 in 3 subjects, 74 in 1) and the DKT cortex 1002-1035 / 2002-2035.
  The FreeSurfer ids 8/47 (Cerebellum-Cortex) and 2/41, 3/42 (cerebral white matter, cortex) do
  not occur. Choices, the same as for DLMUSE:

  - CblmC is 6/45 (Cerebellum-Exterior, Mindboggle's cerebellar cortex) plus the vermis
    630-632 (DLMUSE CblmC includes the vermis 71-73); 8/47 are listed too, absent in these files.
  - LV is 4/43; the inferior lateral ventricles 5/44 are NOT included (as DLMUSE 49/50 and
    FreeSurfer Inf-Lat-Vent).
  - CeblC is every DKT cortical id, 1000-1035 and 2000-2035 (left and right hemispheres).
  - Thalamus 10/49, accumbens 26/58, vessel 30/62, optic chiasm 85, basal forebrain 91/92,
    5th ventricle 72 and 74 are background, as their DLMUSE counterparts are in
    :data:`DLMUSE_TABLE1`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import DataError

__all__ = [
    "TABLE1_STRUCTURES",
    "TABLE1_FULL_NAMES",
    "SEGMENTATION_CLASSES",
    "LabelMapping",
    "FREESURFER_TABLE1",
    "FREESURFER_SEGMENTATION",
    "DLMUSE_TABLE1",
    "DLMUSE_SEGMENTATION",
    "MINDBOGGLE_TABLE1",
    "check_structures_present",
]

#: The 15 structures of U-ReSNet Table 1, in the table's row order (left and right merged).
TABLE1_STRUCTURES: list[str] = [
    "BS", "CSF", "CblmC", "CblmWM", "CeblWM", "Pu", "VDC", "Pa", "Ca", "LV", "Hi", "3V", "4V",
    "Am", "CeblC",
]

#: Full names of the Table 1 abbreviations (as spelled in U-ReSNet §4.1).
TABLE1_FULL_NAMES: dict[str, str] = {
    "BS": "brain stem",
    "CSF": "CSF",
    "CblmC": "cerebellum cortex",
    "CblmWM": "cerebellum white matter",
    "CeblWM": "cerebral white matter",
    "Pu": "putamen",
    "VDC": "ventral DC",
    "Pa": "pallidum",
    "Ca": "caudate",
    "LV": "lateral ventricle",
    "Hi": "hippocampus",
    "3V": "3rd ventricle",
    "4V": "4th ventricle",
    "Am": "amygdala",
    "CeblC": "cerebral cortex",
}

#: The 3 segmentation classes of U-ReSNet §4.1 "Evaluation of the Segmentation" (left+right merged).
SEGMENTATION_CLASSES: list[str] = ["CeblWM", "CeblC", "LV"]


@dataclass
class LabelMapping:
    """Maps source label ids to consecutive class indices.

    ``names[k]`` becomes class ``k + 1``; every id not listed (and 0) becomes background 0.

    Attributes:
        names: class names in output order.
        ids: for each name, the list of source label ids merged into that class.

    Raises (on construction):
        ValueError: a name without ids, ids for an unknown name, a negative id, or an id listed
            for two classes.
    """

    names: list[str]
    ids: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate class names: {self.names}")
        unknown = [k for k in self.ids if k not in self.names]
        if unknown:
            raise ValueError(f"label ids given for names not in `names`: {unknown}")
        self.ids = {name: [int(v) for v in self.ids.get(name, [])] for name in self.names}
        seen: dict[int, str] = {}
        for name in self.names:
            if not self.ids[name]:
                raise ValueError(f"class {name!r} has no label ids")
            for v in self.ids[name]:
                if v < 0:
                    raise ValueError(f"class {name!r}: negative label id {v}")
                if v in seen and seen[v] != name:
                    raise ValueError(f"label id {v} is listed for both {seen[v]!r} and {name!r}")
                seen[v] = name

    def __len__(self) -> int:
        return len(self.names)

    def lookup_table(self, size: int | None = None) -> np.ndarray:
        """Return the int32 lookup table ``lut`` with ``lut[source_id] = class index``.

        Args:
            size: table length (at least ``max id + 1``); default ``max id + 1``.
        """
        max_id = max(max(v) for v in self.ids.values())
        lut = np.zeros(max(max_id + 1, size or 0), dtype=np.int32)
        for k, name in enumerate(self.names):
            lut[self.ids[name]] = k + 1
        return lut

    def apply(self, label_array: np.ndarray) -> np.ndarray:
        """Map a source label map to class indices.

        Args:
            label_array: integer array of any shape (e.g. ``(X, Y, Z)`` voxels) of source ids.

        Returns:
            int32 array of the same shape: 0 = background, ``k + 1`` for ``names[k]``.

        Raises:
            ValueError: ``label_array`` holds non-integer values.
        """
        arr = np.asarray(label_array)
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.array_equal(arr, np.round(arr)):
                raise ValueError("label_array must hold integer label ids")
        arr = arr.astype(np.int64, copy=False)
        if arr.size == 0:
            return np.zeros(arr.shape, dtype=np.int32)
        lut = self.lookup_table()
        inside = (arr >= 0) & (arr < lut.size)
        return np.where(inside, lut[np.where(inside, arr, 0)], 0).astype(np.int32)

    def subset(self, names: Iterable[str]) -> "LabelMapping":
        """Mapping restricted to ``names`` (in the given order); ``KeyError`` for an unknown name."""
        names = list(names)
        missing = [n for n in names if n not in self.ids]
        if missing:
            raise KeyError(f"unknown structure(s) {missing}; known: {self.names}")
        return LabelMapping(names=names, ids={n: list(self.ids[n]) for n in names})

    def to_dict(self) -> dict:
        """``{"structures": {name: [ids...], ...}}`` with the class order preserved."""
        return {"structures": {n: list(self.ids[n]) for n in self.names}}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Serialise as ``{"structures": {"BS": [16], ...}}`` (order preserved).

        Args:
            path: if given, the JSON text is also written there.

        Returns:
            The JSON text.
        """
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, structures: dict, source: str = "<dict>") -> "LabelMapping":
        """Build from ``{name: [ids]}`` (a single int is accepted for one id).

        Raises:
            DataError: naming ``source`` when the content is malformed.
        """
        if not isinstance(structures, dict) or not structures:
            raise DataError(f"{source}: 'structures' must be a non-empty object of name -> list of ids")
        ids: dict[str, list[int]] = {}
        for name, value in structures.items():
            values = [value] if isinstance(value, int) else value
            if (not isinstance(values, list)
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
                raise DataError(f"{source}: structure {name!r}: ids must be integers, got {value!r}")
            ids[str(name)] = values
        try:
            return cls(names=list(ids), ids=ids)
        except ValueError as exc:
            raise DataError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "LabelMapping":
        """Read a mapping written by :meth:`to_json` (format ``{"structures": {"BS": [16], ...}}``).

        Raises:
            DataError: naming the file if it is missing, not JSON, or lacks "structures".
        """
        path = str(path)
        try:
            with open(path, encoding="utf-8") as fh:
                content = json.load(fh)
        except FileNotFoundError as exc:
            raise DataError(f"{path}: label mapping file not found") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(content, dict) or "structures" not in content:
            raise DataError(f'{path}: expected an object with a "structures" key, e.g. '
                            '{"structures": {"BS": [16], "CSF": [24]}}')
        return cls.from_dict(content["structures"], source=path)


def _ids(*ranges) -> list[int]:
    out: list[int] = []
    for r in ranges:
        out.extend([r] if isinstance(r, int) else list(r))
    return out


#: FreeSurfer aseg ids of the Table 1 structures (FreeSurferColorLUT; left, right).
FREESURFER_TABLE1 = LabelMapping(
    names=TABLE1_STRUCTURES,
    ids={
        "BS": [16],           # Brain-Stem
        "CSF": [24],          # CSF
        "CblmC": [8, 47],     # Left/Right-Cerebellum-Cortex
        "CblmWM": [7, 46],    # Left/Right-Cerebellum-White-Matter
        "CeblWM": [2, 41],    # Left/Right-Cerebral-White-Matter
        "Pu": [12, 51],       # Left/Right-Putamen
        "VDC": [28, 60],      # Left/Right-VentralDC
        "Pa": [13, 52],       # Left/Right-Pallidum
        "Ca": [11, 50],       # Left/Right-Caudate
        "LV": [4, 43],        # Left/Right-Lateral-Ventricle (Inf-Lat-Vent 5/44 excluded)
        "Hi": [17, 53],       # Left/Right-Hippocampus
        "3V": [14],           # 3rd-Ventricle
        "4V": [15],           # 4th-Ventricle
        "Am": [18, 54],       # Left/Right-Amygdala
        "CeblC": [3, 42],     # Left/Right-Cerebral-Cortex
    },
)
#: FreeSurfer aseg ids of the 3 segmentation classes (CeblWM, CeblC, LV).
FREESURFER_SEGMENTATION = FREESURFER_TABLE1.subset(SEGMENTATION_CLASSES)

#: DLMUSE ids of the Table 1 structures, for the ixi10 sample (see module docstring for choices).
DLMUSE_TABLE1 = LabelMapping(
    names=TABLE1_STRUCTURES,
    ids={
        "BS": [35],
        "CSF": [1],
        "CblmC": [38, 39, 71, 72, 73],   # cerebellum exterior + vermis lobules
        "CblmWM": [40, 41],
        "CeblWM": _ids(range(81, 96)),   # 81..95
        "Pu": [57, 58],
        "VDC": [61, 62],
        "Pa": [55, 56],
        "Ca": [36, 37],
        "LV": [51, 52],                  # inferior lateral ventricles 49/50 excluded
        "Hi": [47, 48],
        "3V": [4],
        "4V": [11],
        "Am": [31, 32],
        "CeblC": _ids(range(100, 208)),  # 100..207 cortical parcels
    },
)
#: DLMUSE ids of the 3 segmentation classes (CeblWM, CeblC, LV).
DLMUSE_SEGMENTATION = DLMUSE_TABLE1.subset(SEGMENTATION_CLASSES)

#: Mindboggle-101 ``labels.DKT31.manual+aseg`` ids of the 14 Table 1 structures it labels (no
#: CeblWM), in Table 1's order (see the module docstring for the choices).
MINDBOGGLE_TABLE1 = LabelMapping(
    names=[s for s in TABLE1_STRUCTURES if s != "CeblWM"],
    ids={
        "BS": [16],                        # Brain-Stem
        "CSF": [24],                       # CSF
        "CblmC": [6, 45, 8, 47, 630, 631, 632],  # Cerebellum-Exterior (+ -Cortex) + vermis
        "CblmWM": [7, 46],                 # Left/Right-Cerebellum-White-Matter
        "Pu": [12, 51],                    # Left/Right-Putamen
        "VDC": [28, 60],                   # Left/Right-VentralDC
        "Pa": [13, 52],                    # Left/Right-Pallidum
        "Ca": [11, 50],                    # Left/Right-Caudate
        "LV": [4, 43],                     # Left/Right-Lateral-Ventricle (Inf-Lat-Vent 5/44 not)
        "Hi": [17, 53],                    # Left/Right-Hippocampus
        "3V": [14],                        # 3rd-Ventricle
        "4V": [15],                        # 4th-Ventricle
        "Am": [18, 54],                    # Left/Right-Amygdala
        "CeblC": _ids(range(1000, 1036), range(2000, 2036)),  # DKT cortex, left and right
    },
)


def check_structures_present(mapped: np.ndarray, names: Sequence[str], path: str) -> None:
    """Check that every class ``1..len(names)`` occurs in a mapped label map.

    Args:
        mapped: int array (e.g. ``(X, Y, Z)`` voxels) produced by :meth:`LabelMapping.apply`.
        names: class names, ``names[k]`` is class ``k + 1``.
        path: the source file, for the error message.

    Raises:
        DataError: naming ``path`` and every missing structure.
    """
    mapped = np.asarray(mapped)
    flat = mapped.ravel()
    flat = flat[(flat > 0) & (flat <= len(names))]
    counts = np.bincount(flat, minlength=len(names) + 1)[1:]
    missing = [name for name, c in zip(names, counts) if c == 0]
    if missing:
        raise DataError(f"{path}: structure(s) missing from the label map (after cropping): "
                        f"{', '.join(missing)}")
