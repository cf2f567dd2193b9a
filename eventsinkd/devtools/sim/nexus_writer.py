"""A stand-in for BubbleFish Nexus's WAL writer (demo, benchmarks and tests).

It writes a WAL directory the way Nexus does (see shared/spec/nexus-wal.md): segment files
``wal-<unix ns>.jsonl``, one entry per line in the legacy (v0.1.2) or sentinel layout, CRC-32
and optional HMAC-SHA256 integrity fields, optional zstd compression of the JSON field,
group-commit batches, rotation with pre-created empty segments, status rewrites via
``wal-<ns>.tmp`` + rename, torn tails and crash-during-rotation duplicates.

It records every line it produced (:class:`Written`) so that tests can compare a reader's
output with :meth:`NexusWriter.expected_data`.

A writer is meant to be driven by a single thread (possibly a background thread while a reader
reads the same directory); it does no internal locking.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Literal

import zstandard

from eventsinkd.devtools.sim.entries import EntryMaker, format_go_time
from eventsinkd.events import go_json
from eventsinkd.wal.lines import LineParser, Reject

__all__ = [
    "END_SENTINEL",
    "START_SENTINEL",
    "NexusWriter",
    "Written",
    "format_go_time",
    "run_workload",
]

START_SENTINEL = b"BFBFBFBFBFBFBFBF"
END_SENTINEL = b"FBFBFBFBFBFBFBFB"
ZSTD_PREFIX = b"zstd:"

Layout = Literal["legacy", "sentinel", "mixed"]

_SEGMENT_RE = re.compile(r"^wal-(\d+)\.(jsonl|tmp)$")


_EVENT_FIELDS = ("source", "subject", "destination", "actor_type", "actor_id")


@dataclass(frozen=True)
class Written:
    """One line the writer put into a segment (as appended; a later rewrite may re-encode it)."""

    segment: str  # segment file name, e.g. "wal-1795728061386804104.jsonl"
    line: int  # 0-based line index in that segment
    payload_id: str
    idempotency_key: str
    entry_type: str  # "" for data entries, "checkpoint" otherwise
    timestamp: str  # the exact timestamp string written
    # Extras (not part of the required API, but handy for tests):
    monotonic_seq: int = 0  # 0 for legacy lines (no monotonic_seq key)
    layout: Literal["legacy", "sentinel"] = "sentinel"
    compressed: bool = False
    corrupt: bool = False  # torn tail / merged line: a reader must reject it
    duplicate: bool = False  # repeated by crash_rotation_duplicate: a reader must drop it
    # source, subject, destination, actor_type, actor_id as written
    fields: dict[str, str] = dataclass_field(default_factory=dict, hash=False, compare=False)


def _crc(field: bytes) -> bytes:
    return b"%08x" % (zlib.crc32(field) & 0xFFFFFFFF)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class NexusWriter:
    """Writes a Nexus-style WAL directory and remembers what it wrote.

    Extra keyword arguments beyond the required API:

    * ``shuffle_seq``: swap some adjacent ``monotonic_seq`` values inside a batch, as concurrent
      Nexus writers do (seq unique but not in file order).
    * ``mac_key`` is used as raw bytes (like Nexus's resolved ``mac_key_file`` string).
    * ``grow_after``: rotate and pre-create right after a batch is written, with files that are
      created and closed without an fsync, the way Nexus's group commit (``writeBatch``) does;
      by default that happens before the next batch, with fsynced files.

    Layout notes: ``legacy`` (v0.1.2) supports neither compression nor checkpoints (ValueError).
    In ``mixed`` layout, batches alternate legacy/sentinel starting with legacy; compression applies
    to sentinel lines only and checkpoint lines are always written in sentinel layout.
    """

    def __init__(
        self,
        wal_dir: Path,
        *,
        layout: Layout = "sentinel",
        mac_key: bytes | None = None,
        compress: bool = False,
        max_segment_bytes: int = 256 * 1024,
        precreate: bool = True,
        checkpoint_every: int = 0,
        seed: int = 0,
        payload_bytes: int = 600,
        shuffle_seq: bool = False,
        grow_after: bool = False,
    ) -> None:
        if layout not in ("legacy", "sentinel", "mixed"):
            raise ValueError(f"unknown layout {layout!r}")
        if layout == "legacy" and (compress or checkpoint_every):
            raise ValueError("v0.1.2 (legacy layout) has no compression and no checkpoints")
        if max_segment_bytes <= 0 or checkpoint_every < 0:
            raise ValueError("max_segment_bytes must be > 0 and checkpoint_every >= 0")
        self.wal_dir = Path(wal_dir)
        self.layout: Layout = layout
        self.mac_key = mac_key
        self.compress = compress
        self.max_segment_bytes = max_segment_bytes
        self.precreate = precreate
        self.checkpoint_every = checkpoint_every
        self.seed = seed
        self.payload_bytes = payload_bytes
        self.shuffle_seq = shuffle_seq
        self.grow_after = grow_after

        self._rng = random.Random(seed)
        self._entries = EntryMaker(self._rng, seed, payload_bytes)
        self._zc = zstandard.ZstdCompressor(level=3)
        self._checker = LineParser(mac_key)
        self._closed = False
        self._batches = 0
        self._since_checkpoint = 0
        self._written: list[Written] = []
        #: data entries whose bytes went into a corrupt line: the torn_tail entry (also in
        #: ``written``, as the corrupt line's record) and the entry of the next append that
        #: continued the torn line. Informational: none of them is in expected_data().
        self.lost: list[Written] = []
        self._segments: list[str] = []  # every segment this writer created, in creation order
        self._lines: dict[str, int] = {}  # segment -> line count (a partial tail counts as one)
        self._partial: str | None = None  # segment whose last line has no "\n" yet
        #: (segment, 0-based line) -> the status a rewrite gave that line
        self.marks: dict[tuple[str, int], str] = {}

        self.wal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._last_ns = 0
        for p in self.wal_dir.iterdir():
            m = _SEGMENT_RE.match(p.name)
            if m:
                self._last_ns = max(self._last_ns, int(m.group(1)))
        self._active = self._create_segment()
        self._active_size = 0

    # ------------------------------------------------------------------ properties

    @property
    def active_segment(self) -> str:
        """Name of the segment appends currently go to (newer empty segments may exist)."""
        return self._active

    @property
    def written(self) -> list[Written]:
        """Every line appended so far, in WAL order (segment name, line)."""
        return sorted(self._written, key=lambda w: (w.segment, w.line))

    @property
    def segments(self) -> list[str]:
        """Every segment file this writer created (including empty ones), sorted by name."""
        return sorted(self._segments)

    def line_count(self, segment: str) -> int:
        """Lines this writer put in `segment` (a torn, unterminated tail counts as one)."""
        return self._lines.get(segment, 0)

    def path(self, segment: str) -> Path:
        return self.wal_dir / segment

    def expected_data(self) -> list[Written]:
        """Data entries a correct reader emits exactly once, in WAL order."""
        seen: set[str] = set()
        out: list[Written] = []
        for w in self.written:
            if w.entry_type != "" or w.corrupt or w.duplicate:
                continue
            if w.idempotency_key in seen:
                continue
            seen.add(w.idempotency_key)
            out.append(w)
        return out

    # ------------------------------------------------------------------ naming

    def _next_ns(self) -> int:
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    def _create_segment(self, durable: bool = True) -> str:
        name = f"wal-{self._next_ns()}.jsonl"
        fd = os.open(self.wal_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable:
            _fsync_dir(self.wal_dir)
        self._segments.append(name)
        self._lines[name] = 0
        return name

    def _rotate(self, durable: bool = True) -> None:
        self._active = self._create_segment(durable)
        self._active_size = 0

    def _grow(self, durable: bool = True) -> None:
        """Rotate when the active segment is full; pre-create a newer one when it is 80% full."""
        if self._active_size >= self.max_segment_bytes:
            self._rotate(durable)
        elif self.precreate and self._active_size >= 0.8 * self.max_segment_bytes:
            self._create_segment(durable)  # newer, stays empty; appends keep going to _active

    def _encode(self, json_bytes: bytes, *, legacy: bool, compress: bool) -> bytes:
        """One line without the trailing newline."""
        field = json_bytes
        if compress:
            field = ZSTD_PREFIX + base64.b64encode(self._zc.compress(json_bytes))
        parts = [field, _crc(field)]
        if self.mac_key is not None:
            parts.append(hmac.new(self.mac_key, field, hashlib.sha256).hexdigest().encode())
        if not legacy:
            parts = [START_SENTINEL, *parts, END_SENTINEL]
        return b"\t".join(parts)

    def _record(
        self,
        entry: dict[str, Any],
        line: int,
        *,
        legacy: bool,
        compressed: bool,
        corrupt: bool = False,
    ) -> Written:
        return Written(
            segment=self._active,
            line=line,
            payload_id=entry["payload_id"],
            idempotency_key=entry["idempotency_key"],
            entry_type=entry.get("entry_type", ""),
            timestamp=entry["timestamp"],
            monotonic_seq=entry.get("monotonic_seq", 0),
            layout="legacy" if legacy else "sentinel",
            compressed=compressed,
            corrupt=corrupt,
            fields={k: entry.get(k, "") for k in _EVENT_FIELDS},
        )

    def _batch_legacy(self) -> bool:
        if self.layout == "legacy":
            return True
        if self.layout == "sentinel":
            return False
        return self._batches % 2 == 0

    # ------------------------------------------------------------------ appends

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("writer is closed")

    def _append_bytes(self, data: bytes) -> None:
        fd = os.open(self.wal_dir / self._active, os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._active_size += len(data)

    def append(self, n: int = 1, **fields: Any) -> list[Written]:
        """Append `n` data entries (plus due checkpoints) as one group-commit batch.

        Returns the records of the lines this batch produced. If a torn tail is pending, the
        first line of the batch lands on the torn line: that entry is lost (see ``lost``) and
        not returned. ``fields`` (``subject="a/b"``...) replace those of every entry of the
        batch, in the entry and in its payload.
        """
        self._check_open()
        if n < 1:
            raise ValueError("n must be >= 1")
        legacy = self._batch_legacy()
        self._batches += 1
        if self._partial is None and not self.grow_after:  # a torn line is completed first
            self._grow()

        entries: list[tuple[dict[str, Any], bool]] = []  # (entry, is legacy line)
        for _ in range(n):
            made = self._entries.data_entry(legacy)
            for name, value in fields.items():
                made[name] = value
                if name in made["payload"]:
                    made["payload"][name] = value
            entries.append((made, legacy))
            if self.checkpoint_every:
                self._since_checkpoint += 1
                if self._since_checkpoint >= self.checkpoint_every:
                    self._since_checkpoint = 0
                    entries.append(
                        (self._entries.checkpoint_entry(self._active, self._active_size), False)
                    )
        if self.shuffle_seq:
            self._shuffle_seqs([e for e, leg in entries if not leg])

        chunks: list[bytes] = []
        records: list[Written] = []
        line = self._lines[self._active]
        merge = self._partial == self._active
        for entry, leg in entries:
            compressed = self.compress and not leg
            chunks.append(self._encode(go_json(entry), legacy=leg, compress=compressed) + b"\n")
            if merge:  # continues the torn line: one corrupt line, already recorded
                rec = self._record(entry, line - 1, legacy=leg, compressed=compressed, corrupt=True)
                self.lost.append(rec)
                merge = False
                continue
            rec = self._record(entry, line, legacy=leg, compressed=compressed)
            records.append(rec)
            line += 1
        self._append_bytes(b"".join(chunks))
        self._partial = None
        self._lines[self._active] = line
        self._written.extend(records)
        if self.grow_after:
            self._grow(durable=False)
        return records

    def _shuffle_seqs(self, entries: list[dict[str, Any]]) -> None:
        for i in range(len(entries) - 1):
            if self._rng.random() < 0.2:
                a, b = entries[i], entries[i + 1]
                a["monotonic_seq"], b["monotonic_seq"] = b["monotonic_seq"], a["monotonic_seq"]

    def torn_tail(self) -> None:
        """Write the first half of one more entry's line with no newline (a crash mid-write).

        The next append continues on the same line, so the segment gets exactly one corrupt
        line (recorded in ``written`` with ``corrupt=True``). A rewrite before the next append
        terminates the torn line with "\\n" instead.
        """
        self._check_open()
        legacy = self._batch_legacy()
        entry = self._entries.data_entry(legacy)
        compressed = self.compress and not legacy
        json_bytes = go_json(entry)
        full = self._encode(json_bytes, legacy=legacy, compress=compressed)
        field_start = 0 if legacy else len(START_SENTINEL) + 1
        field_len = full.index(b"\t", field_start) - field_start
        cut = field_start + max(1, field_len // 2)  # always inside the JSON field
        rec = self._record(
            entry, self._lines[self._active], legacy=legacy, compressed=compressed, corrupt=True
        )
        if self._partial == self._active:  # torn twice: still the same single line
            rec = replace(rec, line=rec.line - 1)
        else:
            self._written.append(rec)
            self._lines[self._active] += 1
        self.lost.append(rec)
        self._append_bytes(full[:cut])
        self._partial = self._active

    def crash_rotation_duplicate(self, k: int = 3) -> None:
        """Rotate and repeat the last `k` lines of the active segment at the new segment's head."""
        self._check_open()
        if self._partial is not None:
            raise RuntimeError("torn tail pending: append (or rewrite) before rotating")
        old = self._active
        raw = self.path(old).read_bytes()
        lines = raw.split(b"\n")[:-1] if raw else []
        k = min(k, len(lines))
        tail = lines[len(lines) - k :] if k else []
        old_recs = {w.line: w for w in self._written if w.segment == old}
        self._rotate()
        if not tail:
            return
        self._append_bytes(b"".join(line + b"\n" for line in tail))
        for i, idx in enumerate(range(len(lines) - k, len(lines))):
            src = old_recs[idx]
            self._written.append(replace(src, segment=self._active, line=i, duplicate=True))
        self._lines[self._active] = k

    def create_empty_segments(self, n: int) -> None:
        """Create `n` empty segments newer than all others; appends stay on the active one."""
        self._check_open()
        for _ in range(n):
            self._create_segment()

    # ------------------------------------------------------------------ rewrites

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        """The entry of a valid line, None for anything corrupt or partial."""
        body = self._checker.check(line)
        if isinstance(body, Reject):
            return None
        try:
            entry = json.loads(body)
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def rewrite(
        self, segment: str | None = None, *, fraction: float = 0.5, failed: float = 0.0
    ) -> None:
        """Nexus status rewrite of one segment (default: the active one).

        About `fraction` of the PENDING entries (at least one if there are any and fraction > 0)
        become DELIVERED (each PERMANENT_FAILURE instead with probability `failed`) and are
        re-encoded in sentinel layout, uncompressed, with fresh CRC/HMAC. Every other line is
        kept byte-identical, each now ending in "\\n". The result goes to ``wal-<ns>.tmp``, is
        fsynced and renamed over the segment (new inode, new size). ``marks`` records it.
        """
        self._check_open()
        name = segment if segment is not None else self._active
        path = self.path(name)
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        pending: list[tuple[int, dict[str, Any]]] = []
        for i, line in enumerate(lines):
            parsed = self._parse(line)
            if parsed is not None and parsed.get("status") == "PENDING":
                pending.append((i, parsed))
        count = round(fraction * len(pending))
        if fraction > 0 and pending:
            count = max(1, count)
        for i, entry in self._rng.sample(pending, min(count, len(pending))):
            entry["status"] = "PERMANENT_FAILURE" if self._rng.random() < failed else "DELIVERED"
            lines[i] = self._encode(go_json(entry), legacy=False, compress=False)
            self.marks[(name, i)] = entry["status"]
        data = b"".join(line + b"\n" for line in lines)

        tmp = self.wal_dir / f"wal-{self._next_ns()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _fsync_dir(self.wal_dir)
        if self._partial == name:
            self._partial = None  # the torn line is now terminated
        if name == self._active:
            self._active_size = len(data)

    def rewrite_recent(self, *, fraction: float = 0.5, failed: float = 0.0) -> None:
        """Rewrite the active segment and the previous non-empty one (a batch spanning rotation).

        If the active segment is empty, the two newest non-empty segments up to it are used.
        """
        candidates = [s for s in self.segments if s <= self._active and self._lines[s] > 0]
        for name in candidates[-2:]:
            self.rewrite(name, fraction=fraction, failed=failed)

    def status(self, w: Written) -> str:
        """The status the line of ``w`` holds now (as appended, or as a rewrite marked it)."""
        return self.marks.get((w.segment, w.line), "PENDING")

    def close(self) -> None:
        """Stop writing. The records (``written``, ``expected_data()``) stay available."""
        self._closed = True

    def __enter__(self) -> NexusWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_workload(
    wal_dir: Path,
    total: int,
    *,
    batch: int = 50,
    rewrite_every: int = 300,
    failed: float = 0.0,
    rate_per_s: float | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
    **writer_kwargs: Any,
) -> NexusWriter:
    """Append `total` data entries in batches, rewriting recent segments every `rewrite_every`
    (a share `failed` of the entries marked become PERMANENT_FAILURE, the rest DELIVERED).

    Meant to run in a thread (e.g. ``ThreadPoolExecutor().submit(run_workload, ...)``). Paced to
    `rate_per_s` entries per second when given. Setting `stop` ends the workload early. The
    returned writer is closed; its ``written`` / ``expected_data()`` describe what was written.
    """
    writer = NexusWriter(Path(wal_dir), **writer_kwargs)
    start = time.monotonic()
    done = 0
    next_rewrite = rewrite_every
    try:
        while done < total and not (stop is not None and stop.is_set()):
            n = min(batch, total - done)
            writer.append(n)
            done += n
            if progress is not None:
                progress(done)
            if rewrite_every > 0 and done >= next_rewrite:
                writer.rewrite_recent(failed=failed)
                while next_rewrite <= done:
                    next_rewrite += rewrite_every
            if rate_per_s:
                delay = start + done / rate_per_s - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        stop.wait(delay)
                    else:
                        time.sleep(delay)
    finally:
        writer.close()
    return writer
