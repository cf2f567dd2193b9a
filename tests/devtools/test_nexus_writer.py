"""Checks of the test-support Nexus WAL writer against a small independent reference parser."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import stat
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zstandard

from eventsinkd.devtools.sim.nexus_writer import NexusWriter, Written, format_go_time, run_workload

START = b"BFBFBFBFBFBFBFBF"
END = b"FBFBFBFBFBFBFBFB"
MAC_KEY = b"nexus-wal-mac-key-s-0123456789abcdef"
GO_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z$")
SEGMENT_RE = re.compile(r"^wal-\d{19}\.jsonl$")
DATA_KEYS = [
    "version",
    "payload_id",
    "idempotency_key",
    "status",
    "timestamp",
    "source",
    "destination",
    "subject",
    "actor_type",
    "actor_id",
    "payload",
    "entry_type",
    "monotonic_seq",
]


class Bad(Exception):
    pass


def ref_parse(raw: bytes, mac_key: bytes | None) -> tuple[dict[str, Any], str, bool]:
    """(entry, layout, compressed) or raise Bad. Independent of the writer's own parser."""
    if b"\n" in raw:
        raise Bad("newline inside line")
    fields = raw.split(b"\t")
    if fields[0] == START:
        if len(fields) < 4 or fields[-1] != END:
            raise Bad("torn")
        layout, inner = "sentinel", fields[1:-1]
    else:
        if len(fields) < 2:
            raise Bad("partial")
        layout, inner = "legacy", fields
    if len(inner) not in (2, 3):
        raise Bad("field count")
    field, crc = inner[0], inner[1]
    if not re.fullmatch(rb"[0-9a-f]{8}", crc):
        raise Bad("crc format")
    if int(crc, 16) != zlib.crc32(field):
        raise Bad("crc mismatch")
    if mac_key is not None:
        if len(inner) != 3:
            raise Bad("missing hmac")
        if inner[2] != hmac.new(mac_key, field, hashlib.sha256).hexdigest().encode():
            raise Bad("hmac mismatch")
    elif len(inner) == 3:
        raise Bad("unexpected hmac")
    compressed = field.startswith(b"zstd:")
    if compressed:
        blob = base64.b64decode(field[5:], validate=True)
        field = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    try:
        entry = json.loads(field)
    except ValueError as e:
        raise Bad("json") from e
    if not isinstance(entry, dict):
        raise Bad("not an object")
    return entry, layout, compressed


def seg_lines(path: Path) -> list[bytes]:
    """Lines of a segment; an unterminated tail counts as a line."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def segments(wal: Path) -> list[str]:
    return sorted(p.name for p in wal.iterdir() if p.name.endswith(".jsonl"))


def check_records(w: NexusWriter, mac_key: bytes | None) -> list[dict[str, Any]]:
    """Every record sits at its reported place and parses; counts per segment match disk."""
    wal = w.wal_dir
    recs = w.written
    assert recs == sorted(recs, key=lambda r: (r.segment, r.line))
    by_seg: dict[str, list[Written]] = {}
    for r in recs:
        by_seg.setdefault(r.segment, []).append(r)
    entries = []
    for name in segments(wal):
        assert SEGMENT_RE.match(name)
        assert stat.S_IMODE((wal / name).stat().st_mode) == 0o600
        lines = seg_lines(wal / name)
        assert [r.line for r in by_seg.get(name, [])] == list(range(len(lines)))
        for r in by_seg.get(name, []):
            raw = lines[r.line]
            if r.corrupt:
                with pytest.raises(Bad):
                    ref_parse(raw, mac_key)
                continue
            entry, layout, compressed = ref_parse(raw, mac_key)
            if (layout, compressed) != (r.layout, r.compressed):  # rewritten since
                assert (layout, compressed) == ("sentinel", False)
                assert entry["status"] == "DELIVERED"
            assert entry["payload_id"] == r.payload_id
            assert entry["idempotency_key"] == r.idempotency_key
            assert entry.get("entry_type", "") == r.entry_type
            assert entry["timestamp"] == r.timestamp
            assert GO_TIME_RE.match(r.timestamp), r.timestamp
            assert GO_TIME_RE.match(entry["payload"].get("timestamp", "2026-01-01T00:00:00Z"))
            if r.layout == "legacy":
                assert list(entry) == DATA_KEYS[:-2]
            else:
                assert list(entry) == DATA_KEYS
                assert entry["monotonic_seq"] == r.monotonic_seq > 0
            if not compressed:
                json_field = raw.split(b"\t")[1 if layout == "sentinel" else 0]
                assert b": " not in json_field[:40] and b", " not in json_field[:40]
            entries.append(entry)
    assert not list(wal.glob("*.tmp"))
    return entries


@pytest.mark.parametrize(
    ("layout", "mac_key", "compress"),
    [
        ("legacy", None, False),
        ("legacy", MAC_KEY, False),
        ("sentinel", None, False),
        ("sentinel", MAC_KEY, True),
        ("mixed", MAC_KEY, True),
        ("mixed", None, False),
    ],
)
def test_lines_at_reported_place_and_parse(
    tmp_path: Path, layout: Any, mac_key: bytes | None, compress: bool
) -> None:
    w = NexusWriter(
        tmp_path / "wal",
        layout=layout,
        mac_key=mac_key,
        compress=compress,
        max_segment_bytes=20_000,
        checkpoint_every=0 if layout == "legacy" else 7,
        seed=3,
    )
    got: list[Written] = []
    for n in (1, 5, 12, 30, 2, 17, 9, 40):
        batch = w.append(n)
        assert sum(1 for r in batch if r.entry_type == "") == n
        got.extend(batch)
    w.close()
    assert got == w.written
    entries = check_records(w, mac_key)
    assert len(entries) == len(got)
    assert len({r.segment for r in got}) > 1  # rotated
    data = w.expected_data()
    assert len(data) == 116
    assert [r for r in got if r.entry_type == ""] == data
    assert len({r.idempotency_key for r in data}) == 116
    assert all(e["status"] == ("DELIVERED" if e.get("entry_type") else "PENDING") for e in entries)
    if layout != "legacy":
        checkpoints = [r for r in got if r.entry_type == "checkpoint"]
        assert len(checkpoints) == 116 // 7
        assert all(r.layout == "sentinel" for r in checkpoints)
    if layout == "mixed":
        assert {r.layout for r in data} == {"legacy", "sentinel"}
    if compress:
        assert all(r.compressed == (r.layout == "sentinel") for r in got)
    contents = "".join(e["payload"].get("content", "") for e in entries)
    for s in ("\n", "\t", '"', "café", "🐟", "<tag>", "&"):
        assert s in contents
    raw = b"".join((w.wal_dir / s).read_bytes() for s in segments(w.wal_dir))
    assert b"\\u003ctag\\u003e" in raw or compress


@pytest.mark.parametrize(("layout", "compress"), [("legacy", False), ("mixed", True)])
def test_rewrite_preserves_lines_changes_inode_and_size(
    tmp_path: Path, layout: Any, compress: bool
) -> None:
    w = NexusWriter(tmp_path / "wal", layout=layout, mac_key=MAC_KEY, compress=compress)
    for _ in range(4):
        w.append(10)
    path = w.wal_dir / w.active_segment
    before = seg_lines(path)
    st = path.stat()
    w.rewrite(fraction=0.5)
    after = seg_lines(path)
    st2 = path.stat()
    assert st2.st_ino != st.st_ino
    assert st2.st_size != st.st_size
    assert stat.S_IMODE(st2.st_mode) == 0o600
    assert path.read_bytes().endswith(b"\n")
    assert len(after) == len(before) == 40
    changed = 0
    for old, new in zip(before, after, strict=True):
        e_old, _, _ = ref_parse(old, MAC_KEY)
        e_new, layout_new, compressed_new = ref_parse(new, MAC_KEY)
        assert e_new["payload_id"] == e_old["payload_id"]
        if old == new:
            assert e_new["status"] == "PENDING"
            continue
        changed += 1
        assert e_old["status"] == "PENDING" and e_new["status"] == "DELIVERED"
        assert layout_new == "sentinel" and not compressed_new
        assert {k: v for k, v in e_new.items() if k != "status"} == {
            k: v for k, v in e_old.items() if k != "status"
        }
    assert 10 <= changed <= 30
    # appends continue on the new inode at the right line
    w.append(3)
    check_records(w, MAC_KEY)
    assert len(seg_lines(path)) == 43
    # a second rewrite only finds the remaining PENDING lines
    w.rewrite(fraction=1.0)
    statuses = [ref_parse(x, MAC_KEY)[0]["status"] for x in seg_lines(path)]
    assert statuses == ["DELIVERED"] * 43
    assert len(w.expected_data()) == 43


def test_rewrite_recent_spans_rotation(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", max_segment_bytes=8_000, precreate=False)
    for _ in range(5):
        w.append(4)
    data_segs = [s for s in segments(w.wal_dir) if seg_lines(w.wal_dir / s)]
    assert len(data_segs) >= 3
    inodes = {s: (w.wal_dir / s).stat().st_ino for s in data_segs}
    w.rewrite_recent()
    changed = {s for s in data_segs if (w.wal_dir / s).stat().st_ino != inodes[s]}
    assert changed == set(data_segs[-2:])
    check_records(w, None)


def test_torn_tail_gives_one_bad_line(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", mac_key=MAC_KEY, compress=True)
    w.append(5)
    w.torn_tail()
    path = w.wal_dir / w.active_segment
    assert not path.read_bytes().endswith(b"\n")
    nxt = w.append(5)
    assert len(nxt) == 4 and nxt[0].line == 6  # the first entry went into the torn line
    lines = seg_lines(path)
    assert len(lines) == 10
    bad = []
    for i, raw in enumerate(lines):
        try:
            ref_parse(raw, MAC_KEY)
        except Bad:
            bad.append(i)
    assert bad == [5]
    assert [r.line for r in w.written if r.corrupt] == [5]
    assert [(r.line, r.corrupt) for r in w.lost] == [(5, True), (5, True)]
    data = w.expected_data()
    assert len(data) == 9
    assert not {r.idempotency_key for r in w.lost} & {r.idempotency_key for r in data}
    check_records(w, MAC_KEY)


def test_torn_tail_then_rewrite_terminates_it(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", layout="legacy")
    w.append(3)
    w.torn_tail()
    w.rewrite(fraction=1.0)
    w.append(2)
    lines = seg_lines(w.wal_dir / w.active_segment)
    assert len(lines) == 6
    with pytest.raises(Bad):
        ref_parse(lines[3], None)
    assert len(w.expected_data()) == 5
    check_records(w, None)


def test_crash_rotation_duplicate_repeats_keys(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", mac_key=MAC_KEY, compress=True)
    w.append(10)
    first = w.active_segment
    w.crash_rotation_duplicate(3)
    second = w.active_segment
    assert second > first
    w.append(4)
    old = seg_lines(w.wal_dir / first)
    new = seg_lines(w.wal_dir / second)
    assert new[:3] == old[-3:]
    keys_old = [ref_parse(x, MAC_KEY)[0]["idempotency_key"] for x in old[-3:]]
    keys_new = [ref_parse(x, MAC_KEY)[0]["idempotency_key"] for x in new[:3]]
    assert keys_old == keys_new
    assert [r.line for r in w.written if r.duplicate] == [0, 1, 2]
    data = w.expected_data()
    assert len(data) == 14
    assert len({r.idempotency_key for r in data}) == 14
    assert all(r.segment == first for r in data[:10])
    check_records(w, MAC_KEY)


def test_precreate_empty_newer_segments(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", max_segment_bytes=30_000, precreate=True)
    first = w.active_segment
    saw_empty_newer = False
    while w.active_segment == first:
        recs = w.append(2)
        if w.active_segment == first:
            assert all(r.segment == first for r in recs)
            newer = [s for s in segments(w.wal_dir) if s > first]
            assert all((w.wal_dir / s).stat().st_size == 0 for s in newer)
            saw_empty_newer = saw_empty_newer or bool(newer)
    assert saw_empty_newer
    names = segments(w.wal_dir)
    empties = [s for s in names if (w.wal_dir / s).stat().st_size == 0]
    assert len(empties) >= 2
    # rotation opened a name newer than every pre-created one
    assert w.active_segment == names[-1]
    assert all(e < w.active_segment for e in empties)
    w.create_empty_segments(4)
    active = w.active_segment
    recs = w.append(3)
    assert all(r.segment == active for r in recs)
    assert len([s for s in segments(w.wal_dir) if s > active]) == 4
    check_records(w, None)


def test_go_time_format() -> None:
    assert format_go_time(1_775_824_496_000_000_000) == "2026-04-10T12:34:56Z"
    assert format_go_time(1_775_824_496_123_456_700) == "2026-04-10T12:34:56.1234567Z"
    assert format_go_time(1_775_824_496_100_000_000) == "2026-04-10T12:34:56.1Z"
    assert format_go_time(1_775_824_496_000_000_001) == "2026-04-10T12:34:56.000000001Z"


def test_timestamps_vary_in_shape(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", payload_bytes=50, max_segment_bytes=10**7)
    w.append(400)
    stamps = [r.timestamp for r in w.written]
    assert all(GO_TIME_RE.match(t) for t in stamps)
    assert any("." not in t for t in stamps)  # no fraction at all
    assert any(len(t.split(".")[-1]) < 9 for t in stamps if "." in t)


def test_shuffle_seq_unique_not_in_file_order(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal", shuffle_seq=True, checkpoint_every=10)
    w.append(100)
    seqs = [r.monotonic_seq for r in w.written]
    assert sorted(seqs) == list(range(1, 111))
    assert seqs != sorted(seqs)
    check_records(w, None)


def test_run_workload_in_thread(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(
            run_workload, wal, 300, batch=25, rewrite_every=100, max_segment_bytes=40_000, seed=9
        )
        w = fut.result(timeout=30)
    assert len(w.expected_data()) == 300
    entries = check_records(w, None)
    assert sum(e["status"] == "DELIVERED" for e in entries) > 0

    stop = threading.Event()
    stop.set()
    w2 = run_workload(tmp_path / "wal2", 1000, rate_per_s=10.0, stop=stop)
    assert w2.written == []


def test_run_workload_rate_and_stop(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    stop = threading.Event()

    def stop_after(lines: int) -> None:  # once the writer is under way, not after a time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if wal.is_dir() and sum(p.read_bytes().count(b"\n") for p in wal.iterdir()) >= lines:
                break
            time.sleep(0.01)
        stop.set()

    watcher = threading.Thread(target=stop_after, args=(30,))
    watcher.start()
    started = time.monotonic()
    w = run_workload(wal, 10_000, batch=10, rate_per_s=200.0, stop=stop)
    elapsed = time.monotonic() - started
    watcher.join()
    n = len(w.expected_data())
    assert 30 <= n < 10_000  # it stopped when told, long before the end
    # Paced: never faster than 200/s (a batch of 10 may go at once); slower is allowed.
    assert elapsed >= (n - 10) / 200.0
    check_records(w, None)


def test_layout_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        NexusWriter(tmp_path / "a", layout="legacy", compress=True)
    with pytest.raises(ValueError):
        NexusWriter(tmp_path / "b", layout="legacy", checkpoint_every=5)
