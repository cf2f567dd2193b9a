"""Nexus-like WAL entries: memory writes and checkpoints, with realistic awkward content."""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

# Words for payload content: non-ASCII (2-, 3- and 4-byte UTF-8), quotes, backslashes, control
# characters that JSON escapes (newline, tab) and the characters Go escapes as \u003c etc.
_TEXT = (
    "the deploy pipeline failed because the staging \n migration timed out after thirty seconds "
    'remember that alice prefers postgres over "quoted" mysql and <tag> weekly summaries of '
    "incident reports & the retrieval firewall blocks pii \t memories for agents below tier two "
    "nexus stores every memory in the café ahead log before the queue delivers it to sqlite "
    "reminder rotate the naïve keys on friday 日本語 メモ 🐟 back\\slash C:\\temp"
)
_WORDS = tuple(_TEXT.split(" "))
_SOURCES = ("claude-desktop", "openclaw", "cursor")
_SUBJECTS = ("user:alice", "project:nexus", "team:infra")


def format_go_time(ns: int) -> str:
    """Format unix nanoseconds like Go's ``time.Time.UTC().Format(time.RFC3339Nano)``."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac == 0:
        return base + "Z"
    return f"{base}.{frac:09d}".rstrip("0") + "Z"


class EntryMaker:
    """Makes entry dicts in Nexus's field order; deterministic for a seed (but for times)."""

    def __init__(self, rng: random.Random, seed: int, payload_bytes: int) -> None:
        self._rng = rng
        self.seed = seed
        self.payload_bytes = payload_bytes
        self.data_count = 0  # data entries made (including ones later lost to a torn line)
        self.seq = 0  # the last monotonic_seq given out

    def timestamp(self) -> str:
        ns = time.time_ns()
        r = self._rng.random()
        # Real time.Now() almost never has trailing zeros; make the rarer shapes common so that
        # readers are exercised on "no fraction" and short fractions.
        if r < 0.03:
            ns -= ns % 1_000_000_000
        elif r < 0.08:
            ns -= ns % 1_000_000
        elif r < 0.13:
            ns -= ns % 1_000
        elif r < 0.18:
            ns -= ns % 100
        return format_go_time(ns)

    def content(self) -> str:
        words: list[str] = []
        size = 0
        start = self._rng.randrange(len(_WORDS))
        i = start
        while size < self.payload_bytes:
            w = _WORDS[i % len(_WORDS)]
            words.append(w)
            size += len(w) + 1
            i += 1
        return " ".join(words)

    def data_entry(self, legacy: bool) -> dict[str, Any]:
        n = self.data_count
        self.data_count += 1
        payload_id = f"{self._rng.getrandbits(128):032x}"
        key = f"idem-s{self.seed}-{n:08d}"
        source = _SOURCES[n % len(_SOURCES)]
        subject = _SUBJECTS[n % len(_SUBJECTS)]
        actor_id = f"user-{n}"
        payload: dict[str, Any] = {
            "payload_id": payload_id,
            "request_id": f"{self._rng.getrandbits(128):032x}",
            "source": source,
            "subject": subject,
            "namespace": "default",
            "destination": "sqlite",
            "collection": "memories",
            "content": self.content(),
            "model": "claude-sonnet-4",
            "role": "user",
            "timestamp": self.timestamp(),
            "idempotency_key": key,
            "schema_version": 1,
            "transform_version": "1.0",
            "actor_type": "user",
            "actor_id": actor_id,
            "metadata": {
                "seq_in_run": str(n),
                "session_id": f"sess-s{self.seed}-{n // 100}",
                "tags": "harness,walwriter",
                "worker": str(n % 8),
            },
            "classification_tier": "public",
        }
        entry: dict[str, Any] = {
            "version": 2,
            "payload_id": payload_id,
            "idempotency_key": key,
            "status": "PENDING",
            "timestamp": self.timestamp(),
            "source": source,
            "destination": "sqlite",
            "subject": subject,
            "actor_type": "user",
            "actor_id": actor_id,
            "payload": payload,
        }
        if not legacy:
            self.seq += 1
            entry["entry_type"] = ""
            entry["monotonic_seq"] = self.seq
        return entry

    def checkpoint_entry(self, segment: str, offset: int) -> dict[str, Any]:
        ns = time.time_ns()
        self.seq += 1
        return {
            "version": 2,
            "payload_id": f"checkpoint-{ns}",
            "idempotency_key": "",
            "status": "DELIVERED",
            "timestamp": format_go_time(ns),
            "source": "",
            "destination": "",
            "subject": "",
            "actor_type": "",
            "actor_id": "",
            "payload": {
                "segment": segment,
                "offset_bytes": offset,
                "timestamp": format_go_time(time.time_ns()),
                "applied_count": self.data_count,
                "state_hash": hashlib.sha256(str(self.seq).encode()).hexdigest(),
            },
            "entry_type": "checkpoint",
            "monotonic_seq": self.seq,
        }
