"""Classical registration baselines with ANTs (antspyx): ``Affine`` and ``SyN``.

:class:`AntsRegistrar` implements the registrar protocol of :mod:`regseg.evaluation.pairs`
(``register(moving, fixed) -> {"displacement": (X, Y, Z, 3) voxels of the moving grid, ...}``)
with ``ants.registration(fixed, moving, type_of_transform=...)`` and ANTs' default parameters
(Avants et al. 2008, SyN; ANTsPy 0.6: ``Affine`` = Mattes mutual information, 4 levels
2100x1200x1200x10 iterations; ``SyN`` = that affine stage then SyN[0.2, 3, 0] with Mattes MI,
40x20x0 iterations) but one: by default the registration starts from the identity
(``initial_transform="Identity"``), not from ANTs' default initial translation between the
intensity-weighted centres of mass (``[fixed, moving, 1]``). That default is undefined on
z-scored images (U-ReSNet §3.5's N(0, 1) over the brain, 0 outside: the intensities sum to about
zero, and the centre of mass flies off; measured on Mindboggle pairs: translations of 1e11
voxels, and SyN then fails), and the recipe's crop around the brain mask's centre of mass has
already aligned the centres. ``initialisation="centre-of-mass"`` restores ANTs' default.

Conventions, checked in ``tests/test_classical.py``:

* each preprocessed :class:`~regseg.datasets.subjects.Sample` becomes an ANTs image of its array
  with the sample's voxel size (mm), origin 0 and identity direction, so that ANTs' physical
  point of voxel ``i`` is ``i * spacing`` along the array axes, for both images: the registration
  starts from the alignment of the preprocessing (for U-ReSNet's recipe: the centres of mass of
  the brain masks), whatever the samples' world affines;
* ``ants.apply_transforms(..., compose=prefix)`` writes the composed transform as a
  displacement field on the fixed grid, in mm along those axes, mapping fixed point ``p`` to
  moving point ``p + u(p)`` (backward warping, ITK's convention); the moving voxel sampled for
  fixed voxel ``i`` is ``(i * s_fixed + u) / s_moving``, and the returned displacement is that
  minus ``i`` (voxels of the moving grid).

Threads and reproducibility: ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` is set to ``threads``
before the first registration of the process (ITK reads it once per process: a later registrar
asking for another count gets a warning and the first count), and ANTs' random seed
(``--random-seed`` of ``antsRegistration``, which must be non-zero: 0 means "seed from the
clock"; antspyx 0.6.3 reads it from ``ants.config._random_seed``, its ``random_seed=`` keyword is
silently ignored) is set to ``seed`` for each call and restored afterwards. Measured with
antspyx 0.6.3 on a Mindboggle pair at 2 mm: with ONE thread two runs give identical fields; with
two threads they do not (ITK 5 splits the metric's work among threads dynamically, so sums are
taken in another order; the Affine fields of two runs differed by up to 2-4 voxels at some voxel).
Bit-for-bit reproducible results need ``threads=1``; the cache keeps the first result either way.

Caching: registration does not depend on any training, and takes seconds per pair, so
``cache_dir`` keeps every result on disk (``<cache_dir>/<key>.npz`` with the float32
displacement, ``<key>.json`` with the original seconds and the provenance). ``key`` is the
SHA-256 of the method name, the antspyx version, the parameters (transform, extra keywords,
seed) and, for the moving then the fixed sample, the image's float32 bytes, shape and voxel
size: a changed image, spacing or parameter misses the cache. The thread count is not part of the
key. A hit returns the stored displacement and the stored ``"seconds"`` of the original
registration.

antspyx is optional (``pip install antspyx``, or the ``ants`` extra): this module imports without
it and raises ImportError on the first registration.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["AntsRegistrar", "ANTS_TRANSFORMS", "INITIALISATIONS", "ants_version", "import_ants",
           "ants_image", "displacement_from_field"]

#: transforms offered (``type_of_transform`` of ``ants.registration``) -> table name
ANTS_TRANSFORMS = {"Affine": "ANTs Affine", "SyN": "ANTs SyN"}
#: where the registration starts (see :class:`AntsRegistrar`)
INITIALISATIONS = ("identity", "centre-of-mass")

_CACHE_FORMAT = 1
#: the ITK thread count of this process, fixed by its first registration
_ITK_THREADS: int | None = None


def import_ants():
    """``import ants`` (antspyx).

    Raises:
        ImportError: antspyx is not installed (one line naming ``pip install antspyx``).
    """
    try:
        import ants
    except ImportError as exc:
        raise ImportError("ANTs registration needs antspyx, which is not installed: "
                          "pip install antspyx (or pip install -e .[ants])") from exc
    return ants


def ants_version() -> str:
    """The installed antspyx version (without importing it).

    Raises:
        ImportError: antspyx is not installed (one line naming ``pip install antspyx``).
    """
    from importlib import metadata

    try:
        return metadata.version("antspyx")
    except metadata.PackageNotFoundError as exc:
        raise ImportError("ANTs registration needs antspyx, which is not installed: "
                          "pip install antspyx (or pip install -e .[ants])") from exc


def ants_image(sample, role: str = "image"):
    """An ANTs image of ``sample.image`` with its voxel size, origin 0, identity direction.

    Args:
        sample: a :class:`~regseg.datasets.subjects.Sample` (``image`` ``(X, Y, Z)``).
        role: ``"moving"`` / ``"fixed"``, for messages.
    Raises:
        ImportError: antspyx is not installed.
        ValueError: a non-3-D or non-finite image (naming the subject).
    """
    ants = import_ants()
    image = np.asarray(sample.image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"{sample.subject_id}: ANTs registration needs a 3-D {role} image, "
                         f"got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError(f"{sample.subject_id}: the {role} image has non-finite values")
    spacing = tuple(float(s) for s in np.asarray(sample.spacing, dtype=np.float64))
    return ants.from_numpy(np.ascontiguousarray(image), origin=(0.0, 0.0, 0.0), spacing=spacing,
                           direction=np.eye(3))


def displacement_from_field(field, fixed_spacing, moving_spacing) -> np.ndarray:
    """ANTs' composed displacement field (mm, fixed grid) -> displacement in moving voxels.

    Both images have origin 0 and identity direction (:func:`ants_image`): fixed voxel ``i``
    is the point ``i * fixed_spacing``, mapped to ``i * fixed_spacing + field[i]``, which is the
    moving voxel ``(i * fixed_spacing + field[i]) / moving_spacing``.

    Args:
        field: ``(X, Y, Z, 3)`` mm along the array axes, on the fixed grid.
        fixed_spacing, moving_spacing: ``(3,)`` mm.
    Returns:
        float32 ``(X, Y, Z, 3)``: that moving voxel minus ``i``.
    Raises:
        ValueError: ``field`` is not ``(X, Y, Z, 3)``.
    """
    field = np.asarray(field, dtype=np.float64)
    if field.ndim != 4 or field.shape[-1] != 3:
        raise ValueError(f"ANTs displacement field must be (X, Y, Z, 3), got {field.shape}")
    s_fix = np.asarray(fixed_spacing, dtype=np.float64)
    s_mov = np.asarray(moving_spacing, dtype=np.float64)
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in field.shape[:3]],
                                 indexing="ij"), axis=-1)
    return ((index * s_fix + field) / s_mov - index).astype(np.float32)


def _image_digest(sample, digest) -> None:
    image = np.ascontiguousarray(np.asarray(sample.image, dtype=np.float32))
    spacing = np.asarray(sample.spacing, dtype=np.float64)
    digest.update(json.dumps({"shape": list(image.shape),
                              "spacing": [float(s) for s in spacing]}).encode())
    digest.update(image.tobytes())


class AntsRegistrar:
    """ANTs registration (``Affine`` or ``SyN``, default parameters) as a registrar.

    Args:
        transform: ``type_of_transform`` of ``ants.registration`` (:data:`ANTS_TRANSFORMS`:
            ``"Affine"`` or ``"SyN"``; others are passed through to ANTs).
        threads: ITK threads (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``); default
            ``os.cpu_count()``.
        seed: ANTs' random seed, non-zero (the Mattes metric samples voxels at random).
        cache_dir: folder of the per-pair disk cache (see the module docstring; created on first
            write), or ``None`` (default) for no cache.
        initialisation: ``"identity"`` (default: start from the preprocessing's alignment) or
            ``"centre-of-mass"`` (ANTs' default, intensity centres of mass; see the module
            docstring).
        options: more keyword arguments of ``ants.registration`` (part of the cache key), e.g.
            ``{"reg_iterations": (40, 20, 0)}``; default none (ANTs' defaults).
    Raises:
        ValueError: ``threads < 1``, ``seed == 0``, an unknown ``initialisation``.

    ``register(moving, fixed)`` returns ``{"displacement": float32 (X, Y, Z, 3), "seconds":
    float}`` on the fixed grid; ``seconds`` is the wall time of the registration and of the
    composition of its transforms into the field (on a cache hit: that of the original call).
    """

    def __init__(self, transform: str = "SyN", *, threads: int | None = None, seed: int = 1,
                 cache_dir: str | os.PathLike | None = None, initialisation: str = "identity",
                 options: Mapping[str, object] | None = None):
        self.transform = str(transform)
        if initialisation not in INITIALISATIONS:
            raise ValueError(f"initialisation must be one of {INITIALISATIONS}, got "
                             f"{initialisation!r}")
        self.initialisation = initialisation
        self.threads = int(threads if threads is not None else (os.cpu_count() or 1))
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.seed = int(seed)
        if self.seed == 0:
            raise ValueError("seed must be non-zero (antsRegistration --random-seed 0 seeds from "
                             "the clock)")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.options = dict(options or {})
        self.name = ANTS_TRANSFORMS.get(self.transform, f"ANTs {self.transform}")
        #: cache hits and misses of this registrar (for reports)
        self.hits = self.misses = 0

    def __repr__(self) -> str:
        return (f"AntsRegistrar({self.transform!r}, threads={self.threads}, seed={self.seed}, "
                f"cache_dir={str(self.cache_dir) if self.cache_dir else None!r})")

    def parameters(self) -> dict:
        """The settings that define the result (part of the cache key)."""
        return {"type_of_transform": self.transform, "seed": self.seed,
                "initialisation": self.initialisation,
                "options": json.loads(json.dumps(self.options, default=str, sort_keys=True))}

    def cache_key(self, moving, fixed) -> str:
        """SHA-256 (hex) of method, antspyx version, parameters and both images.

        Raises:
            ImportError: antspyx is not installed.
        """
        digest = hashlib.sha256()
        digest.update(json.dumps({"method": self.name, "ants": ants_version(),
                                  "parameters": self.parameters(), "format": _CACHE_FORMAT},
                                 sort_keys=True).encode())
        _image_digest(moving, digest)
        _image_digest(fixed, digest)
        return digest.hexdigest()

    # -- cache ------------------------------------------------------------------------------
    def _cache_paths(self, key: str) -> tuple[Path, Path]:
        return self.cache_dir / f"{key}.npz", self.cache_dir / f"{key}.json"

    def _read_cache(self, key: str, shape) -> dict | None:
        npz, meta = self._cache_paths(key)
        if not (npz.is_file() and meta.is_file()):
            return None
        try:
            info = json.loads(meta.read_text())
            with np.load(npz) as data:
                disp = np.asarray(data["displacement"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as exc:
            import warnings
            warnings.warn(f"{npz}: unreadable ANTs cache entry, registering again ({exc})",
                          stacklevel=3)
            return None
        if disp.shape != (*shape, 3):
            return None
        return {"displacement": disp, "seconds": float(info["seconds"])}

    def _write_cache(self, key: str, out: dict, moving, fixed) -> None:
        from regseg.fileio import atomic_path, atomic_write_text

        npz, meta = self._cache_paths(key)
        try:
            with atomic_path(npz, suffix=".npz") as tmp:
                np.savez_compressed(tmp, displacement=out["displacement"].astype(np.float32))
            info = {"method": self.name, "ants": ants_version(), "parameters": self.parameters(),
                    "seconds": out["seconds"], "threads": _ITK_THREADS or self.threads,
                    "moving": moving.subject_id, "fixed": fixed.subject_id,
                    "shape": list(out["displacement"].shape[:3]),
                    "written": time.strftime("%Y-%m-%d %H:%M:%S")}
            # the JSON last: an entry is complete when its JSON exists
            atomic_write_text(meta, json.dumps(info, indent=2) + "\n")
        except OSError as exc:  # a full or read-only cache never stops an evaluation
            import warnings
            warnings.warn(f"{self.cache_dir}: cannot write the ANTs cache ({exc})", stacklevel=3)

    # -- registration -----------------------------------------------------------------------
    def _run(self, moving, fixed) -> dict:
        global _ITK_THREADS
        ants = import_ants()
        if _ITK_THREADS is None:
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(self.threads)
            _ITK_THREADS = self.threads
        elif _ITK_THREADS != self.threads:
            import warnings
            warnings.warn(f"ANTs: this process registers with {_ITK_THREADS} ITK threads (read "
                          f"once per process), not the {self.threads} asked for", stacklevel=3)
        f_img, m_img = ants_image(fixed, "fixed"), ants_image(moving, "moving")
        previous_seed = getattr(ants.config, "_random_seed", None)
        ants.config._random_seed = self.seed
        try:
            with tempfile.TemporaryDirectory(prefix="regseg-ants-") as tmp:
                t0 = time.perf_counter()
                options = dict(self.options)
                if self.initialisation == "identity":
                    options.setdefault("initial_transform", "Identity")
                reg = ants.registration(f_img, m_img, type_of_transform=self.transform,
                                        outprefix=os.path.join(tmp, "reg_"), **options)
                path = ants.apply_transforms(f_img, m_img, reg["fwdtransforms"],
                                             compose=os.path.join(tmp, "field_"))
                if not path or not os.path.isfile(path):
                    raise RuntimeError(f"ANTs {self.transform}: composing the transforms of "
                                       f"{moving.subject_id} -> {fixed.subject_id} wrote no field")
                field = np.asarray(ants.image_read(path).numpy(), dtype=np.float64)
                seconds = time.perf_counter() - t0
        finally:
            ants.config._random_seed = previous_seed
        shape = tuple(fixed.image.shape[:3])
        if field.shape != (*shape, 3):
            raise RuntimeError(f"ANTs {self.transform}: field of shape {field.shape}, expected "
                               f"{(*shape, 3)} (the fixed grid)")
        return {"displacement": displacement_from_field(field, fixed.spacing, moving.spacing),
                "seconds": float(seconds)}

    def register(self, moving, fixed) -> dict:
        """Register ``moving`` to ``fixed`` (preprocessed samples; grids may differ).

        Returns:
            ``{"displacement": float32 (X, Y, Z, 3), "seconds": float}``: the fixed grid's
            shape, voxels of the moving grid (backward warping), and the wall seconds of the
            original registration.
        Raises:
            ImportError: antspyx is not installed (one line naming ``pip install antspyx``).
            ValueError: a non-3-D or non-finite image (naming the subject).
            RuntimeError: ANTs failed (its exit code), or wrote no field.
        """
        key = None
        if self.cache_dir is not None:
            key = self.cache_key(moving, fixed)
            hit = self._read_cache(key, tuple(fixed.image.shape[:3]))
            if hit is not None:
                self.hits += 1
                return hit
        out = self._run(moving, fixed)
        self.misses += 1
        if key is not None:
            self._write_cache(key, out, moving, fixed)
        return out
