"""Publish a finished temporary file under its final name, atomically and with ordinary permissions.

Tables, profiles and checkpoints are written to a temporary file beside the target and renamed into
place, so a reader never sees half a file. Temporary-file creators (``tempfile.mkstemp``, safetensors)
make the file private (0600); profiles and checkpoints are meant to be shared across a lab, so the
published file gets the mode any other file the user creates would get (0666 less the umask).
"""

from __future__ import annotations

import os

__all__ = ["publish_file"]


def _umask_by_setting() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# ``os.umask`` can only be read by setting it, which for that instant gives files other threads create another
# mode; Linux reports it in /proc/self/status, elsewhere it is read once, here, at import
_UMASK_AT_IMPORT = _umask_by_setting()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def publish_file(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give ``temporary`` the user's default file mode and rename it to ``target`` (atomic on POSIX)."""
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, target)
