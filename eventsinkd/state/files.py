"""Writing files in the state directory atomically: temp file, fsync, rename, fsync directory;
and keeping the file being replaced as the previous good copy (``keep_previous``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    Raises OSError; the temporary file is removed on failure.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def keep_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` the file ``path`` is now (atomically), before ``path`` is replaced.

    A hard link renamed over ``previous``: no data is copied, and a crash leaves the old
    or the new ``previous``, whole. On a filesystem without hard links, a copy. The
    directory is not fsynced here: the ``atomic_write`` of ``path`` that follows does it.
    Raises OSError (``path`` must exist).
    """
    tmp = path.with_name(f".{previous.name}-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        data = path.read_bytes()
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    try:
        os.replace(tmp, previous)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
