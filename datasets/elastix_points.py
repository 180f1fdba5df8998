"""elastix / transformix point files: landmarks as world points or voxel indices.

Format (elastix manual, "point sets"; the corrected point sets of the ITKElastix lung CT
example in ``../shared/data/lung_ct_pair_elastix``)::

    point            <- or "index": what the coordinates are
    51               <- number of points
    -36.351 -36.974 -1204.5
    ...              <- one point per line, x y z separated by white space

``point`` coordinates are ITK physical points, i.e. **LPS+** world millimetres; ``index``
coordinates are (continuous) voxel indices ``(i, j, k)`` of an image, in the file's index order.
The suite holds landmarks in **RAS+** world millimetres (see :mod:`regseg.datasets.subjects`):
:func:`elastix_points_ras` converts either kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .io import DataError

__all__ = ["ElastixPoints", "read_elastix_points", "elastix_points_ras", "write_elastix_points"]

_KINDS = ("point", "index")


@dataclass(frozen=True)
class ElastixPoints:
    """The content of an elastix point file.

    Attributes:
        kind: ``"point"`` (LPS world mm) or ``"index"`` (voxel indices of an image).
        points: ``(N, 3)`` float64 coordinates as written in the file.
        path: the file read.
    """

    kind: str
    points: np.ndarray
    path: str


def read_elastix_points(path: str | os.PathLike) -> ElastixPoints:
    """Read an elastix point file.

    Args:
        path: the text file (``point`` or ``index`` on line 1, the count on line 2, then one
            ``x y z`` per line; blank lines ignored).
    Returns:
        :class:`ElastixPoints`.
    Raises:
        DataError: (one line naming the file) unreadable file, an unknown first line, a count
            that is not a whole number or does not match the number of point lines, or a line
            without exactly 3 numbers (its line number is given).
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [(n, line.strip()) for n, line in enumerate(fh, start=1) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the elastix point file ({exc})") from exc
    if len(lines) < 2:
        raise DataError(f"{path}: an elastix point file needs 'point' or 'index' on line 1 and "
                        f"the number of points on line 2")
    kind = lines[0][1].split()[0].lower()
    if kind not in _KINDS:
        raise DataError(f"{path}: line {lines[0][0]}: expected 'point' or 'index', got "
                        f"{lines[0][1]!r}")
    try:
        count = int(lines[1][1])
    except ValueError:
        raise DataError(f"{path}: line {lines[1][0]}: expected the number of points, got "
                        f"{lines[1][1]!r}") from None
    rows = []
    for n, line in lines[2:]:
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if len(values) != 3:
            raise DataError(f"{path}: line {n}: expected 3 numbers x y z, got {line!r}")
        rows.append(values)
    if len(rows) != count:
        raise DataError(f"{path}: line 2 announces {count} points but the file holds {len(rows)}")
    return ElastixPoints(kind, np.asarray(rows, dtype=np.float64).reshape(-1, 3), path)


def elastix_points_ras(points: ElastixPoints, image_path: str | os.PathLike | None = None):
    """The points in RAS+ world millimetres, ``(N, 3)`` float64.

    ``point`` files: ``(x, y, z)_LPS -> (-x, -y, z)``. ``index`` files: the continuous index is
    mapped through ``image_path``'s ITK geometry (origin + direction @ (spacing * index)), then
    to RAS.

    Args:
        points: from :func:`read_elastix_points`.
        image_path: the image an ``index`` file refers to (ignored for ``point`` files).
    Raises:
        DataError: an ``index`` file without ``image_path`` (naming the point file).
    """
    flip = np.array([-1.0, -1.0, 1.0])
    if points.kind == "point":
        return points.points * flip
    if image_path is None:
        raise DataError(f"{points.path}: holds voxel indices ('index'); the image they refer to "
                        f"is needed to place them in world coordinates")
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    reader.ReadImageInformation()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = (np.asarray(reader.GetOrigin())[None, :]
           + (points.points * np.asarray(reader.GetSpacing())[None, :]) @ direction.T)
    return lps * flip


def write_elastix_points(path: str | os.PathLike, points, kind: str = "point"):
    """Write ``(N, 3)`` coordinates as an elastix point file (``kind`` ``point`` or ``index``).

    Raises:
        ValueError: unknown ``kind`` or points that are not ``(N, 3)``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    from regseg.fileio import atomic_write_text

    text = f"{kind}\n{len(pts)}\n" + "".join(" ".join(repr(float(v)) for v in p) + "\n"
                                              for p in pts)
    return atomic_write_text(path, text)
