"""Write a file whole: readers see the old content or the new, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["write_atomically"]


def write_atomically(path: str, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` by a file holding ``data`` (permissions ``mode``).

    The data goes to a new file of a random name in the same directory (created with
    ``O_EXCL``, so no file or symlink planted there is followed), then is renamed over
    ``path``; a symlink at ``path`` is replaced, not followed.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
