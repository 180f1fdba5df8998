"""Small file helpers shared by ``regseg.datasets`` and ``regseg.evaluation``."""

import os


def default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` gives a new file: 0666 minus the umask.

    ``tempfile.mkstemp`` (used for atomic writes) creates files 0600; atomic
    writers chmod their temporary file to this mode before ``os.replace``.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
