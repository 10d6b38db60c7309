"""Publish a finished temporary file under its final name, atomically and with ordinary permissions.

Tables, profiles and checkpoints are written to a temporary file beside the target and renamed into
place, so a reader never sees half a file. Temporary-file creators (``tempfile.mkstemp``, safetensors)
make the file private (0600); profiles and checkpoints are meant to be shared across a lab, so the
published file gets the mode any other file the user creates would get (0666 less the umask).
"""

from __future__ import annotations

import os

__all__ = ["publish_file"]


def publish_file(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give ``temporary`` the user's default file mode and rename it to ``target`` (atomic on POSIX)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, target)
