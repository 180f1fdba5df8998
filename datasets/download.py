"""Pinned, checksummed downloads of public data.

Every file is fetched from a URL pinned to a commit and verified against a SHA-256 checksum
written in this module; a file is written atomically (temporary file in the destination folder,
then ``os.replace``) only when its checksum matches, so an interrupted or corrupted download never
leaves a partial or wrong file behind.

Command line::

    python -m regseg.datasets.download ixi10 --dest DATA_ROOT

downloads the ``ixi10`` sample (10 IXI T1 MRIs + DLMUSE labels, ~6 MB) into
``DATA_ROOT/ixi10/{images,labels}/<ID>-T1.nii.gz`` (the layout read by
:func:`regseg.datasets.ixi10.ixi10_splits`).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

from regseg.fileio import atomic_path

__all__ = ["DownloadError", "IXI10_BASE_URL", "IXI10_FILES", "sha256_of", "download_files",
           "download_ixi10", "main"]


class DownloadError(RuntimeError):
    """A download failed (HTTP/network error or checksum mismatch); the message names the URL."""


#: Commit-pinned source of the ixi10 sample (CBICA CCL_NMF_Prediction test data, MIT licence;
#: images from the IXI dataset, CC BY-SA 3.0, brain-development.org).
IXI10_BASE_URL = ("https://raw.githubusercontent.com/CBICA/CCL_NMF_Prediction/"
                  "ec021b5aafc9ddf7ed08f0bca1ce4b673e3bfc4f/test/input/IXI/")

# (subject id, sha256 of the image, sha256 of the DLMUSE label map); from shared/data/ixi10/SHA256SUMS.
_IXI10_SUBJECTS = [
    ("IXI012-HH-1211", "d4d595a3d2ea2a0b597be64054193bf52cbea37dfdea8424459154991fc8eba3",
     "6391dd8cdfccaa7f7eb35b40da3affd5330099aad60db13579166e0f0780e352"),
    ("IXI013-HH-1212", "3d9f39cc7ce649573361494da47708a19d40b230fc40660296281f1bcee26be7",
     "893eff4670897f1a8f82f35927aad8f9e33cd960d3e212093156610aa03f99ef"),
    ("IXI014-HH-1236", "74c815403bde182fe762bf8f63288fa06891546f899e55e33b68f1a9146240c2",
     "d48f555c50893ff0aa7753abb45a7c9e75e9057648d4cd1863f41f189a0e0525"),
    ("IXI015-HH-1258", "0ef3b676a5fd76583d76edf9176cdac89732e5663b44680764ad3908644d223a",
     "67f3d2e43e42841553d74d2e81aee7a5bb031d147792b14372adbc4033a13116"),
    ("IXI033-HH-1259", "1a668062b42c2a64737a0375cbe457187a63e756aaa3d9602eb9a05c4b169bc5",
     "311cd6d59b6bf658f3482d8289b7816a16b055b52352483ace91877cb9d7f6ae"),
    ("IXI034-HH-1260", "c2c52c9d50fee114e494af194b79887df8c5b6b9d5cd0f554507b0ce8a838395",
     "ba148de5105b8d4322048947ee73ddc00ef9ca1191877dbef30404b62ee9df63"),
    ("IXI039-HH-1261", "709d996de85933843fd2bd91c8d52194945562b5906da433142e47fb54ba3d16",
     "5b4655d186475f089e01d6124e93e7552f1cfd654d474d2cf2bde53cd5b71e38"),
    ("IXI048-HH-1326", "56bbd7624a7468af5179a6c14e89df516bd5dfdbbfbcd8a754f4844746219378",
     "ad9fbb847aca6af4cf50da6fb3377806e48d4c579ff49fe8d5ec0279e08b9907"),
    ("IXI049-HH-1358", "3014985b1e61c03ff36ebe73c6d999662bc29b9bff96d3fedbebc03e0f789287",
     "9ef8f2c614a7b657338a26ff4bf4642339ca6f61e5f617d0f6103b8524648af8"),
    ("IXI051-HH-1328", "43dd4680b51c2d21257fdcfe727bc33bdfaf720c2d09ba09c18a839fbe1215da",
     "26f4e46a22dc168d46ef1b3adf308cf88a582b33bb3ba4f7ef987fb0270a927f"),
]

#: ``(remote path relative to IXI10_BASE_URL, local path relative to the data root, sha256)``.
IXI10_FILES: list[tuple[str, str, str]] = (
    [(f"nifti/{sid}-T1_ds.nii.gz", f"ixi10/images/{sid}-T1.nii.gz", img_sha)
     for sid, img_sha, _ in _IXI10_SUBJECTS]
    + [(f"dlmuse/{sid}-T1_ds_DLMUSE.nii.gz", f"ixi10/labels/{sid}-T1.nii.gz", lab_sha)
       for sid, _, lab_sha in _IXI10_SUBJECTS]
    + [("dlmuse/IXI_dlmuse.csv", "ixi10/muse_roi_volumes.csv",
        "064c734714746dbdd6699958bb5e81240668478f0da3deb0880c7cc47fc67db0"),
       ("lists/IXI_demog_n10.csv", "ixi10/demographics.csv",
        "bd0174568b12a5ae62ad7a09b4721aefd9a55f3cbf4a9ea3b809163a9410e630")]
)

_CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _url(base_url: str, remote: str) -> str:
    return base_url.rstrip("/") + "/" + urllib.parse.quote(remote.lstrip("/"))


def download_files(files: Iterable[Sequence[str]], dest: str | os.PathLike, base_url: str, *,
                   timeout: float = 30) -> list[Path]:
    """Download files, verify their SHA-256 and write them atomically.

    A file already present at its destination with the right checksum is skipped (not
    downloaded again); one with a wrong checksum is downloaded again and replaced.

    Args:
        files: ``(remote relative path, local relative path, sha256 hex)`` triples.
        dest: destination root folder (created if needed).
        base_url: URL that the remote paths are relative to.
        timeout: socket timeout in seconds for each request.

    Returns:
        The local paths, in the order of ``files``.

    Raises:
        DownloadError: naming the URL, on an HTTP or network error or a checksum mismatch. The
            destination file is then left as it was (absent or the old file) and no temporary
            file remains.
    """
    dest = Path(dest)
    out = []
    for remote, local, sha in files:
        target = dest / local
        out.append(target)
        if target.is_file() and sha256_of(target) == sha.lower():
            continue
        url = _url(base_url, remote)
        with atomic_path(target, suffix=".part") as tmp:  # removed again on any error
            digest = hashlib.sha256()
            with open(tmp, "wb") as fh:
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as response:
                        for chunk in iter(lambda: response.read(_CHUNK), b""):
                            digest.update(chunk)
                            fh.write(chunk)
                except urllib.error.HTTPError as exc:
                    raise DownloadError(f"{url}: HTTP error {exc.code} {exc.reason}") from exc
                except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                    reason = getattr(exc, "reason", exc)
                    raise DownloadError(f"{url}: download failed: {reason}") from exc
            got = digest.hexdigest()
            if got != sha.lower():
                raise DownloadError(f"{url}: checksum mismatch: expected sha256 {sha.lower()}, "
                                    f"got {got}; file not saved")
    return out


def download_ixi10(dest: str | os.PathLike, base_url: str = IXI10_BASE_URL, *,
                   timeout: float = 30) -> Path:
    """Download the ixi10 sample (10 IXI T1 MRIs, DLMUSE labels, 2 CSVs) into ``dest/ixi10/``.

    Returns:
        ``dest/ixi10``.

    Raises:
        DownloadError: see :func:`download_files`.
    """
    download_files(IXI10_FILES, dest, base_url, timeout=timeout)
    return Path(dest) / "ixi10"


_DATASETS = {"ixi10": download_ixi10}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m regseg.datasets.download ixi10 --dest DIR``."""
    parser = argparse.ArgumentParser(prog="python -m regseg.datasets.download",
                                     description="Download public data with pinned URLs and "
                                                 "SHA-256 checksums.")
    parser.add_argument("dataset", choices=sorted(_DATASETS))
    parser.add_argument("--dest", required=True, help="data root folder (e.g. $REGSEG_DATA_ROOT)")
    parser.add_argument("--base-url", default=None, help="override the pinned base URL (mirror)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)
    kwargs = {"timeout": args.timeout}
    if args.base_url:
        kwargs["base_url"] = args.base_url
    try:
        folder = _DATASETS[args.dataset](args.dest, **kwargs)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: files verified in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
