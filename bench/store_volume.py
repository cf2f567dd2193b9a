"""The dead-letter store on a 2 MB volume: ``python -m bench.store_volume`` (as root).

Mounts a 2 MB tmpfs, adds letters of 8 KB, 5 at a time, until the volume is full,
and reports the files and the largest ``-wal`` seen. Then runs ``purge`` (in another
process, as the CLI does) while a writer keeps retrying, as the daemon does, with
and without the reserve file. docs/state-directory.md quotes its figures. Not part
of ``python -m bench``: it needs root for the mount.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from eventsinkd.state.deadletters import DeadLetter, DeadLetterStore

LETTER_BYTES = 8000

_PURGE = """
import sys
from pathlib import Path
from eventsinkd.state.deadletters import DeadLetterStore
if sys.argv[2] == "no-reserve":
    DeadLetterStore.keep_reserve = lambda self: None
store = DeadLetterStore(Path(sys.argv[1]))
try:
    print(f"purged {store.purge()}")
except Exception as exc:
    print(f"purge failed: {exc}")
"""


def _letter(n: int) -> DeadLetter:
    return DeadLetter("s", f"id{n}", "memory_written", "t", os.urandom(LETTER_BYTES), 1, 1, 1, "x")


def _files(d: Path) -> str:
    return ", ".join(f"{f.name} {f.stat().st_size:,}" for f in sorted(d.iterdir()))


def run(d: Path, reserve: bool) -> None:
    store = DeadLetterStore(d)
    if reserve:
        store.keep_reserve()
    stored, failures, largest_wal, stop = 0, 0, 0, threading.Event()
    wal = d / "dead-letters.sqlite3-wal"

    def writer() -> None:  # the daemon: a batch, and after a failure the same again later
        nonlocal stored, failures, largest_wal
        while not stop.is_set():
            try:
                store.add([_letter(stored + i) for i in range(5)])
                stored += 5
            except Exception:
                failures += 1
            if wal.exists():
                largest_wal = max(largest_wal, wal.stat().st_size)
            time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    while failures < 5:
        time.sleep(0.05)
    print(f"  full after {stored} letters; largest -wal {largest_wal:,}; files: {_files(d)}")
    mode = "reserve" if reserve else "no-reserve"
    res = subprocess.run(
        [sys.executable, "-c", _PURGE, str(d), mode], capture_output=True, text=True, check=False
    )
    stop.set()
    thread.join()
    print(f"  {res.stdout.strip() or res.stderr.strip()}; files: {_files(d)}")
    store.close()


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (it mounts a tmpfs)", file=sys.stderr)
        return 1
    for reserve in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", tmp], check=True)
            try:
                print(f"2 MB volume, {'with' if reserve else 'without'} the reserve file:")
                run(d, reserve)
            finally:
                subprocess.run(["umount", "-l", tmp], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
