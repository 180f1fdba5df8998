"""On-disk cache of preprocessed samples, keyed by file checksums and the preprocessing recipe.

Epochs then never re-read or resample NIfTI files: a :class:`~regseg.datasets.subjects.Sample`
is stored once as ``<folder>/<key>.npz`` where ``key`` is the SHA-256 of the recipe's JSON and,
for every file of the subject, its role, name and content SHA-256. Changing a file's content or
any step of the recipe gives another key, so a stale entry is never used. Content checksums are
memoised in ``<folder>/checksums.json`` by (path, size, modification time), so unchanged files
are not hashed again. Entries are written atomically.

>>> cache = PreprocessingCache("/tmp/regseg-cache-doctest")
>>> cache.folder.name
'regseg-cache-doctest'
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import numpy as np

from regseg.fileio import atomic_write_bytes, atomic_write_text

__all__ = ["PreprocessingCache", "file_sha256"]

#: Bump when the layout of cached samples changes (invalidates every entry).
CACHE_VERSION = 1


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class PreprocessingCache:
    """A folder of preprocessed samples (see the module docstring).

    Args:
        folder: where entries live (created on first write).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._checksums: dict | None = None

    # -- checksums -----------------------------------------------------------------------------
    def _index_path(self) -> Path:
        return self.folder / "checksums.json"

    def checksum(self, path: str | os.PathLike) -> str:
        """Content SHA-256 of ``path``, memoised by (absolute path, size, mtime)."""
        p = Path(path).resolve()
        st = p.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        with self._lock:
            if self._checksums is None:
                try:
                    self._checksums = json.loads(self._index_path().read_text())
                except (OSError, ValueError):
                    self._checksums = {}
            known = self._checksums.get(str(p))
            if known and known[0] == stamp:
                return known[1]
        value = file_sha256(p)
        with self._lock:
            self._checksums[str(p)] = [stamp, value]
            try:
                atomic_write_text(self._index_path(), json.dumps(self._checksums))
            except OSError:
                pass  # a read-only cache still works, it just hashes again
        return value

    def key(self, subject, recipe) -> str:
        """The entry key of ``subject`` preprocessed by ``recipe``."""
        parts = {"version": CACHE_VERSION, "recipe": recipe.to_dict(), "files": []}
        for role in ("images", "labels", "masks"):
            for name, path in getattr(subject, role).items():
                parts["files"].append([role, name, self.checksum(path)])
        landmarks = subject.landmarks
        if isinstance(landmarks, (str, os.PathLike)):
            parts["landmarks"] = self.checksum(landmarks)
        elif landmarks is not None:
            parts["landmarks"] = np.asarray(landmarks, dtype=np.float64).round(6).tolist()
        parts["grid"] = subject.common_grid
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    # -- entries -------------------------------------------------------------------------------
    def get(self, subject, recipe):
        """The cached :class:`~regseg.datasets.subjects.Sample`, or ``None``."""
        from .subjects import Sample

        path = self.folder / f"{self.key(subject, recipe)}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                arrays = {k: z[k] for k in z.files if k != "__meta__"}
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed
        sample = Sample(meta["subject_id"], {}, affine=arrays.pop("__affine__"),
                        sources=meta["sources"])
        if "__landmarks__" in arrays:
            sample.landmarks = arrays.pop("__landmarks__")
        for key, value in arrays.items():
            role, name = key.split("/", 1)
            getattr(sample, role)[name] = value
        # keep the images' order (the first image defines the grid)
        sample.images = {n: sample.images[n] for n in meta["images"]}
        return sample

    def put(self, subject, recipe, sample) -> Path:
        """Store ``sample`` (atomically) and return the entry's path."""
        arrays = {"__affine__": np.asarray(sample.affine)}
        if sample.landmarks is not None:
            arrays["__landmarks__"] = np.asarray(sample.landmarks)
        for role in ("images", "labels", "masks"):
            for name, value in getattr(sample, role).items():
                arrays[f"{role}/{name}"] = np.asarray(value)
        meta = {"subject_id": sample.subject_id, "sources": sample.sources,
                "images": list(sample.images)}
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
        path = self.folder / f"{self.key(subject, recipe)}.npz"
        return atomic_write_bytes(path, buf.getvalue())
