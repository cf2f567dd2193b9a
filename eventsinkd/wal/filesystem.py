"""Which filesystem holds a path, and whether reads from it may be made on the event loop.

A read of what Nexus has just written comes from the page cache of a local
filesystem and takes microseconds: handing it to the reader thread and back costs
more than the read (:mod:`eventsinkd.wal.follower`). On a network or FUSE
filesystem any read can stall for as long as the server likes, so there every
read stays in the thread. Filesystems not listed here count as remote.

The type is looked up in ``/proc/self/mountinfo`` (the mount with the longest
mount point above the path): Python has no ``statfs``, and the file says the
type by name. Written by hand because it is one line of the kernel's documented
format (proc(5)); off Linux the answer is "remote", and every read stays in the
thread.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
LOCAL = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "bcachefs", "f2fs", "jfs", "reiserfs",
        "zfs", "tmpfs", "ramfs", "overlay", "vfat", "exfat", "ntfs3",
    }
)  # fmt: skip
_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes space, tab, newline, \ as \ooo


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem ``path`` is on (or would be: a missing path counts as on
    its nearest parent's); None if it cannot be told."""
    target = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                try:
                    mount = _unescape(fields[4])
                    fstype = fields[fields.index("-") + 1]
                except (IndexError, ValueError):
                    continue
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, best_type = mount, fstype
    except OSError:
        return None
    return best_type


def is_local(path: Path) -> bool:
    """True if ``path`` is on a local filesystem (reads from it never wait for a server)."""
    return filesystem_type(path) in LOCAL
