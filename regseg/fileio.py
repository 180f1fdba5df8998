"""Atomic file writes shared by ``regseg.datasets``, ``regseg.evaluation`` and ``regseg.training``.

Every writer in the suite that must never leave a half-written file behind goes through
:func:`atomic_path`: the data is written to a temporary file in the *same folder* as the
destination (so on the same file system), flushed to disk, given the mode a plain
``open(path, "w")`` would give it, and moved over the destination with :func:`os.replace`
(atomic on POSIX and Windows). A reader sees either the old file or the complete new one; on any
error the old file (if any) is left untouched and the temporary file is removed.

Example, for a library that writes to a file name and looks at its extension::

    with atomic_path(run_dir / "final.weights.h5", suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["default_file_mode", "atomic_path", "atomic_write_bytes", "atomic_write_text"]


def default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` gives a new file: 0666 minus the umask.

    ``tempfile.mkstemp`` (used for atomic writes) creates files 0600; atomic
    writers chmod their temporary file to this mode before ``os.replace``.

    Returns:
        The permission bits, e.g. ``0o644`` under the usual umask ``022``.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk (its writer may not have done so)."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Context manager giving a temporary path that replaces ``path`` atomically on success.

    On entry the parent folders of ``path`` are created if missing and an empty temporary file
    ``.<name>.<random>.tmp<suffix>`` is created in the same folder (mode 0600, by
    :func:`tempfile.mkstemp`; the leading dot hides it from ``ls`` and globbing). The body writes
    the new content to the yielded path (overwriting the empty file), by name, e.g. with a
    library that chooses its format from the extension — hence ``suffix``. When the body
    finishes without an exception, the temporary file is fsync'ed, chmod'ed to
    :func:`default_file_mode` and moved onto ``path`` with :func:`os.replace`. If the body (or
    that final step) raises, the temporary file is deleted, ``path`` is left as it was (absent
    or the old file) and the exception propagates.

    Args:
        path: destination file.
        suffix: ending of the temporary file name, for libraries that look at the extension
            (``".nii.gz"`` for nibabel, ``".weights.h5"`` for Keras ``save_weights``). Empty by
            default: the temporary name then ends in ``.tmp``.

    Yields:
        pathlib.Path: the temporary file to write, in the folder of ``path``.

    Raises:
        OSError: if the folder cannot be created or written, or the final replace fails (e.g.
            ``path`` is a folder). Any exception raised in the body is re-raised unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Readers see either the old file or the complete new one, never a partial write. On any
    error the temporary file is removed and the old file is kept. Missing parent folders are
    created; the new file gets :func:`default_file_mode`.

    Args:
        path: destination file.
        data: the complete new content.

    Returns:
        pathlib.Path: the written path.

    Raises:
        OSError: if the folder cannot be created or written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    The text is encoded as is: no newline translation on any platform.

    Args:
        path: destination file.
        text: the complete new content.
        encoding: keyword-only, text encoding (default UTF-8).

    Returns:
        pathlib.Path: the written path.

    Raises:
        OSError: if the folder cannot be created or written.
        UnicodeEncodeError: if ``text`` cannot be encoded (nothing is written then).
        LookupError: if ``encoding`` is unknown (nothing is written then).
    """
    return atomic_write_bytes(path, text.encode(encoding))


class LockedError(FileExistsError):
    """Another live process holds the lock (the message names it, its pid and host)."""


class RunLock:
    """A lock file (``.regseg.lock``: pid, host, start time) that keeps two live runs apart.

    ``with RunLock(folder): ...`` creates the folder and the lock atomically
    (``O_CREAT | O_EXCL``). A lock whose process is dead on this host is stale: it is taken over
    with a warning. A lock held by a live process (or by another host, which cannot be checked)
    raises :class:`LockedError`.
    """

    NAME = ".regseg.lock"

    def __init__(self, folder, name: str | None = None):
        import pathlib

        self.folder = pathlib.Path(folder)
        self.path = self.folder / (name or self.NAME)
        self._held = False

    def _holder(self) -> dict:
        import json

        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        """Take the lock; raises :class:`LockedError` when a live process holds it."""
        import json
        import socket
        import time
        import warnings

        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                    warnings.warn(f"{self.path}: taking over a stale lock of dead process {pid}",
                                  stacklevel=2)
                    self.path.unlink(missing_ok=True)
                    continue
                if host == me["host"] and pid == me["pid"]:
                    raise LockedError(f"{self.path}: this process already holds the lock")
                raise LockedError(f"{self.folder} is in use by another run (pid {pid} on host "
                                  f"{host}, lock {self.path}); wait for it to finish, or remove "
                                  f"the lock if that process is gone")
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self._held = True
            return self
        raise LockedError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(folder) -> None:
    """Create ``folder`` if needed and check a file can be written there.

    Raises:
        PermissionError / OSError: naming the folder and the problem.
    """
    import pathlib
    import tempfile

    folder = pathlib.Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise type(exc)(exc.errno, f"{folder}: cannot write here ({exc.strerror or exc})") from exc


def replace_folder(new, target, *, keep=()) -> None:
    """Swap a freshly built folder ``new`` in place of ``target`` (results written as a whole).

    Files of the old ``target`` whose names are in ``keep`` (and that ``new`` does not have)
    are moved into ``new`` first, so that nothing a user put there is lost; the old folder is
    then renamed aside, ``new`` renamed onto ``target``, and the old one deleted. No stale file
    from an earlier run survives.
    """
    import pathlib
    import shutil

    new, target = pathlib.Path(new), pathlib.Path(target)
    if target.exists():
        for name in keep:
            if (target / name).exists() and not (new / name).exists():
                shutil.move(str(target / name), str(new / name))
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new, target)
