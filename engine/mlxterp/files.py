"""Writing a file so that a reader sees the old file or the new one, never a part of either.

``atomic_write`` writes through a temporary file in the same folder (named with
``TEMP_PREFIX``, so a folder's leftovers from a killed writer can be recognised), syncs it,
keeps the permissions of the file it replaces (or the umask's for a new one) and renames it
over the target.  Sessions, their sidecars, exports and tuned lenses are all written so.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_PREFIX = ".mlxterp-tmp-"
UMASK = os.umask(0)  # read once, at import (setting it is process-wide)
os.umask(UMASK)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary_path)``, then put that file in place of ``path`` in one rename;
    on any failure ``path`` is untouched and the temporary file is gone."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix[:16])
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~UMASK)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
