"""Property tests for :class:`eventsinkd.wal.lines.LineParser`.

Every check is differential: lines are built (or judged) by a small reference
implementation of shared/spec/nexus-wal.md written here, independently of
eventsinkd/wal/lines.py, and the parser must agree with it. The parser must never
raise, whatever bytes it is given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from eventsinkd.wal.entry import Entry
from eventsinkd.wal.lines import MAX_DECOMPRESSED_BYTES, MAX_LINE_BYTES, LineParser, Reject

START = b"BFBFBFBFBFBFBFBF"
END = b"FBFBFBFBFBFBFBFB"
ZSTD = b"zstd:"
LAYOUTS = ("legacy-crc", "legacy-mac", "sentinel-crc", "sentinel-mac")
STR_FIELDS = (
    "payload_id",
    "idempotency_key",
    "status",
    "timestamp",
    "source",
    "destination",
    "subject",
    "actor_type",
    "actor_id",
    "entry_type",
)
KNOWN_FIELDS = frozenset((*STR_FIELDS, "version", "payload", "monotonic_seq"))
FIXTURES = Path(__file__).parents[1] / "fixtures" / "nexus-wal"

# deadline=None: CI is a loaded 2-core machine; example counts keep the file around 10 s.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_HEX8 = re.compile(rb"[0-9a-f]{8}")
_HEX64 = re.compile(rb"[0-9a-f]{64}")


# -- the reference implementation ------------------------------------------------


def crc_hex(field: bytes) -> bytes:
    return b"%08x" % zlib.crc32(field)


def mac_hex(key: bytes, field: bytes) -> bytes:
    return hmac.new(key, field, hashlib.sha256).hexdigest().encode()


def compress_field(json_bytes: bytes, *, content_size: bool = True) -> bytes:
    frame = zstandard.ZstdCompressor(write_content_size=content_size).compress(json_bytes)
    return ZSTD + base64.b64encode(frame)


def build_line(field: bytes, layout: str, key: bytes | None = None) -> bytes:
    """One WAL line (no newline) carrying ``field`` (JSON, or zstd: text) in ``layout``."""
    parts = [field, crc_hex(field)]
    if layout.endswith("-mac"):
        assert key is not None
        parts.append(mac_hex(key, field))
    if layout.startswith("sentinel"):
        parts = [START, *parts, END]
    return b"\t".join(parts)


def expected_entry(doc: Any) -> Entry | None:
    """The Entry a JSON document stands for, None when its shape makes it unusable."""
    if not isinstance(doc, dict):
        return None
    values: dict[str, str] = {}
    for name in STR_FIELDS:
        value = doc.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            return None
        values[name] = value
    seq = doc.get("monotonic_seq")
    if seq is None:
        seq = 0
    if type(seq) is not int:
        return None
    payload = msgspec.Raw(orjson.dumps(doc.get("payload")))
    return Entry(raw_payload=payload, monotonic_seq=seq, **values)


def decoded(got: Entry | Reject | None) -> object:
    """An entry with its payload decoded: the payload's JSON text is the line's, which
    the encoders below write in their own ways."""
    if not isinstance(got, Entry):
        return got
    return msgspec.structs.replace(got, raw_payload=msgspec.Raw(b"")), got.payload


def reference_parse(line: bytes, key: bytes | None) -> Entry | None:
    """What the spec says ``line`` holds: an Entry, or None for a line to skip."""
    if len(line) > MAX_LINE_BYTES:
        return None
    parts = line.split(b"\t")
    if parts[0] == START:
        if parts[-1] != END:
            return None
        parts = parts[1:-1]
        if len(parts) not in (2, 3):
            return None
    elif len(parts) not in (2, 3):
        return None
    field, crc = parts[0], parts[1]
    if not _HEX8.fullmatch(crc) or int(crc, 16) != zlib.crc32(field):
        return None
    if len(parts) == 3:
        if not _HEX64.fullmatch(parts[2]):
            return None
        if key is not None and not hmac.compare_digest(parts[2], mac_hex(key, field)):
            return None
    if field.startswith(ZSTD):
        try:
            frame = base64.b64decode(field[len(ZSTD) :], validate=True)
            size = zstandard.get_frame_parameters(frame).content_size
            if size != zstandard.CONTENTSIZE_UNKNOWN and size > MAX_DECOMPRESSED_BYTES:
                return None  # a decompression bomb
            dctx = zstandard.ZstdDecompressor()
            field = dctx.decompress(frame, max_output_size=MAX_DECOMPRESSED_BYTES)
        except (ValueError, zstandard.ZstdError):
            return None
    try:
        doc = orjson.loads(field)
    except orjson.JSONDecodeError:
        return None
    return expected_entry(doc)


def check_agrees(parser: LineParser, line: bytes, key: bytes | None) -> Entry | Reject:
    got = parser.parse(line)
    assert isinstance(got, Entry | Reject), type(got)
    want = reference_parse(line, key)
    if isinstance(got, Entry):
        assert want is not None, f"parser accepted a line to skip: {line[:300]!r}"
        assert decoded(got) == decoded(want), f"{line[:300]!r}"
    else:
        assert want is None, f"parser rejected a valid line as {got}: {line[:300]!r}"
    return got


# -- strategies ---------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
mac_keys = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
    min_size=1,
    max_size=80,
).map(str.encode)


@st.composite
def entry_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A Nexus entry as a JSON object: fields may be missing or null, unknown ones may appear."""
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["version"] = draw(st.sampled_from([1, 2, 3]))
    for name in STR_FIELDS:
        how = draw(st.sampled_from(["text", "text", "text", "absent", "null"]))
        if how == "text":
            if name == "entry_type":
                doc[name] = draw(st.sampled_from(["", "checkpoint", "audit", "signal"]) | st.text())
            else:
                doc[name] = draw(st.text(max_size=40))
        elif how == "null":
            doc[name] = None
    if draw(st.booleans()):
        doc["payload"] = draw(json_values)
    seq = draw(st.sampled_from(["int", "absent", "null"]))
    if seq == "int":
        doc["monotonic_seq"] = draw(st.integers(min_value=0, max_value=2**63 - 1))
    elif seq == "null":
        doc["monotonic_seq"] = None
    extra = draw(
        st.dictionaries(st.text(max_size=10).filter(lambda k: k not in KNOWN_FIELDS), json_values)
    )
    doc.update(extra)
    return doc


def _go_json(doc: Any) -> bytes:
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    for char, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, esc)  # these only occur inside JSON strings
    return text.encode()


ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "orjson": orjson.dumps,
    "go": _go_json,
    "ascii": lambda doc: json.dumps(doc, ensure_ascii=True).encode(),
    "utf8-spaced": lambda doc: json.dumps(doc, ensure_ascii=False, indent=None).encode(),
}


@st.composite
def valid_lines(draw: st.DrawFn) -> tuple[bytes, Entry, str, bytes]:
    """(line, the entry it holds, layout, the key its HMAC uses)."""
    doc = draw(entry_docs())
    want = expected_entry(doc)
    assert want is not None
    body = ENCODERS[draw(st.sampled_from(sorted(ENCODERS)))](doc)
    if draw(st.booleans()):
        body = compress_field(body, content_size=draw(st.booleans()))
    layout = draw(st.sampled_from(LAYOUTS))
    key = draw(mac_keys)
    return build_line(body, layout, key), want, layout, key


TOKENS = st.sampled_from(
    [
        START,
        END,
        ZSTD,
        b"\t",
        b"\t\t",
        b"\n",
        b"{}",
        b'{"payload_id":"x"}',
        b"00000000",
        b"=",
        b"\xff",
    ]
)


@st.composite
def noise_lines(draw: st.DrawFn) -> bytes:
    """Bytes shaped like WAL lines, often with a correct CRC so the later stages get exercised."""
    kind = draw(
        st.sampled_from(
            ["raw", "tokens", "crc-body", "crc-zstd-b64", "crc-zstd-frame", "crc-zstd-junk"]
        )
    )
    if kind == "raw":
        return draw(st.binary(max_size=300))
    if kind == "tokens":
        return b"".join(draw(st.lists(TOKENS | st.binary(max_size=12), max_size=12)))
    if kind == "crc-body":
        body = draw(st.binary(max_size=200) | json_values.map(orjson.dumps))
    elif kind == "crc-zstd-b64":
        body = ZSTD + draw(st.binary(max_size=80) | st.binary(max_size=60).map(base64.b64encode))
    elif kind == "crc-zstd-junk":  # a good frame in base64 with one character that is not base64
        body = compress_field(draw(json_values.map(orjson.dumps)))
        at = draw(st.integers(min_value=len(ZSTD), max_value=len(body)))
        body = body[:at] + draw(st.sampled_from([b" ", b"-", b"_", b"!", b"\r", b"."])) + body[at:]
    else:
        inner = draw(st.binary(max_size=200) | json_values.map(orjson.dumps))
        body = compress_field(inner, content_size=draw(st.booleans()))
    body = body.replace(b"\t", b" ").replace(b"\n", b" ")
    layout = draw(st.sampled_from(LAYOUTS))
    return build_line(body, layout, draw(mac_keys))


@st.composite
def mutations(draw: st.DrawFn, line: bytes) -> bytes:
    """``line`` after one to three byte-level accidents."""
    data = bytearray(line)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "dup-tab"]))
        if kind == "insert":
            at = draw(st.integers(min_value=0, max_value=len(data)))
            data[at:at] = draw(
                st.sampled_from([b"\t", b"\n", b" ", b"0", b"a", b"{"])
                | st.binary(min_size=1, max_size=1)
            )
            continue
        if not data:
            continue
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if kind == "flip":  # 0x20 turns hex digits upper case
            data[at] ^= draw(
                st.sampled_from([0x20, 0x01]) | st.integers(min_value=1, max_value=255)
            )
        elif kind == "delete":
            del data[at]
        elif kind == "truncate":  # often inside the last fields, where the layout is decided
            at = draw(
                st.just(at) | st.integers(min_value=max(0, len(data) - 90), max_value=len(data) - 1)
            )
            del data[at:]
        else:
            tabs = [i for i, b in enumerate(data) if b == 0x09]
            if tabs:
                tab = draw(st.sampled_from(tabs))
                data[tab:tab] = b"\t"
    return bytes(data)


# -- properties ---------------------------------------------------------------------


@MANY
@given(line=noise_lines() | st.binary(max_size=2000), key=st.none() | mac_keys)
@example(line=b"", key=None)
@example(line=b"\t", key=None)
@example(line=START, key=None)
@example(line=START + b"\t" + END, key=None)
@example(line=START + b"\t\t\t" + END, key=b"k")
@example(line=b"zstd:\t" + crc_hex(b"zstd:"), key=None)
@example(line=b"zstd:====\t" + crc_hex(b"zstd:===="), key=None)
@example(line=b"\t".join([START, b"{}", crc_hex(b"{}"), b"0" * 64, b"x", END]), key=None)
def test_arbitrary_bytes_never_raise(line: bytes, key: bytes | None) -> None:
    check_agrees(LineParser(key), line, key)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\t" * 1000,
        b"x" * (MAX_LINE_BYTES + 1),
        START + b"\t" + b"{" * (MAX_LINE_BYTES - 100),
        b"\t".join([START, b"[" * 5000, crc_hex(b"[" * 5000), END]),
    ],
    ids=["empty", "tabs", "too-long", "huge-torn", "deep-json"],
)
@pytest.mark.parametrize("key", [None, b"k"], ids=["crc", "mac"])
def test_degenerate_lines(line: bytes, key: bytes | None) -> None:
    assert isinstance(check_agrees(LineParser(key), line, key), Reject)


def test_huge_valid_line_at_the_limit() -> None:
    pad = MAX_LINE_BYTES - 200
    body = orjson.dumps({"payload_id": "p", "payload": "a" * pad})
    line = build_line(body, "sentinel-crc")
    assert len(line) <= MAX_LINE_BYTES
    got = LineParser(b"k").parse(line)
    assert isinstance(got, Entry)
    assert got.payload_id == "p" and len(got.payload) == pad


@FAST
@given(valid=valid_lines(), with_key=st.booleans())
def test_valid_lines_parse_to_the_same_entry(
    valid: tuple[bytes, Entry, str, bytes], with_key: bool
) -> None:
    line, want, _layout, key = valid
    parser = LineParser(key if with_key else None)
    assert decoded(parser.parse(line)) == decoded(want)
    check_agrees(parser, line, key if with_key else None)


@MANY
@given(valid=valid_lines(), data=st.data(), with_key=st.booleans())
def test_mutated_lines_are_rejected_unless_still_valid(
    valid: tuple[bytes, Entry, str, bytes], data: st.DataObject, with_key: bool
) -> None:
    line, _want, _layout, key = valid
    mutated = data.draw(mutations(line))
    check_agrees(LineParser(key if with_key else None), mutated, key if with_key else None)


@FAST
@given(valid=valid_lines(), data=st.data(), with_key=st.booleans())
def test_one_byte_changed_in_the_field_is_a_crc_reject(
    valid: tuple[bytes, Entry, str, bytes], data: st.DataObject, with_key: bool
) -> None:
    """CRC-32 catches every error burst of up to 32 bits, so any one-byte change is caught."""
    line, _want, layout, key = valid
    start = len(START) + 1 if layout.startswith("sentinel") else 0
    end = line.index(b"\t", start)
    at = data.draw(st.integers(min_value=start, max_value=end - 1))
    new = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b not in b"\t\n"))
    assume(new != line[at])
    mutated = line[:at] + bytes([new]) + line[at + 1 :]
    assert LineParser(key if with_key else None).parse(mutated) is Reject.CRC


@FAST
@given(valid=valid_lines(), data=st.data(), with_key=st.booleans())
def test_sentinel_lines_cut_short_are_torn(
    valid: tuple[bytes, Entry, str, bytes], data: st.DataObject, with_key: bool
) -> None:
    line, _want, layout, key = valid
    assume(layout.startswith("sentinel"))
    cut = data.draw(st.integers(min_value=len(START), max_value=len(line) - 1))
    assert LineParser(key if with_key else None).parse(line[:cut]) is Reject.TORN


@FAST
@given(valid=valid_lines(), with_key=st.booleans(), field=st.sampled_from(["crc", "hmac"]))
def test_upper_case_hex_is_rejected(
    valid: tuple[bytes, Entry, str, bytes], with_key: bool, field: str
) -> None:
    """The CRC and HMAC fields are lowercase hex (8 and 64 digits)."""
    line, _want, layout, key = valid
    assume(field == "crc" or layout.endswith("-mac"))
    parts = line.split(b"\t")
    at = (2 if layout.startswith("sentinel") else 1) + (field == "hmac")
    assume(parts[at] != parts[at].upper())
    parts[at] = parts[at].upper()
    assert isinstance(LineParser(key if with_key else None).parse(b"\t".join(parts)), Reject)


@FAST
@given(
    valid=valid_lines(),
    with_key=st.booleans(),
    where=st.sampled_from(["before", "after"]),
    space=st.sampled_from([b" ", b"\r", b"\x0b", b"\x0c", b"\x00"]),
)
def test_whitespace_around_the_field_is_a_crc_reject(
    valid: tuple[bytes, Entry, str, bytes], with_key: bool, where: str, space: bytes
) -> None:
    """The CRC covers the field exactly as written: nothing may be stripped."""
    line, _want, layout, key = valid
    parts = line.split(b"\t")
    at = 1 if layout.startswith("sentinel") else 0
    parts[at] = space + parts[at] if where == "before" else parts[at] + space
    assert LineParser(key if with_key else None).parse(b"\t".join(parts)) is Reject.CRC


@FAST
@given(valid=valid_lines(), other=mac_keys)
def test_hmac_with_another_key_is_rejected(
    valid: tuple[bytes, Entry, str, bytes], other: bytes
) -> None:
    line, want, layout, key = valid
    assume(other != key)
    assert decoded(LineParser(key).parse(line)) == decoded(want)
    parser = LineParser(other)
    if layout.endswith("-mac"):
        assert parser.parse(line) is Reject.HMAC
        # crc mode does not check the HMAC
        assert decoded(LineParser(None).parse(line)) == decoded(want)
    else:
        # no HMAC field: valid even in mac mode
        assert decoded(parser.parse(line)) == decoded(want)


@FAST
@given(doc=entry_docs(), key=mac_keys, sentinel=st.booleans(), compress=st.booleans())
def test_lines_without_hmac_are_accepted_in_mac_mode(
    doc: dict[str, Any], key: bytes, sentinel: bool, compress: bool
) -> None:
    body = orjson.dumps(doc)
    if compress:
        body = compress_field(body)
    line = build_line(body, "sentinel-crc" if sentinel else "legacy-crc")
    assert decoded(LineParser(key).parse(line)) == decoded(expected_entry(doc))


@FAST
@given(
    doc=entry_docs(),
    field=st.sampled_from([*STR_FIELDS, "monotonic_seq"]),
    bad=st.sampled_from([1, 1.5, True, [], {}, "7"]),
)
def test_fields_of_the_wrong_type_are_a_json_reject(
    doc: dict[str, Any], field: str, bad: Any
) -> None:
    assume(not (field == "monotonic_seq" and isinstance(bad, int) and not isinstance(bad, bool)))
    assume(not (field != "monotonic_seq" and isinstance(bad, str)))
    doc[field] = bad
    assert LineParser().parse(build_line(orjson.dumps(doc), "sentinel-crc")) is Reject.JSON


@pytest.mark.parametrize("body", [b"[]", b"null", b"1", b'"s"', b"{", b"\xff", b"NaN"])
def test_checksummed_non_objects_are_a_json_reject(body: bytes) -> None:
    assert LineParser().parse(build_line(body, "legacy-crc")) is Reject.JSON


def _fixture_dirs() -> list[Path]:
    return (
        sorted(p for p in FIXTURES.iterdir() if (p / "wal").is_dir()) if FIXTURES.is_dir() else []
    )


@pytest.mark.parametrize("fixture", _fixture_dirs(), ids=lambda p: p.name)
def test_reference_agrees_with_the_parser_on_real_nexus_lines(fixture: Path) -> None:
    """Anchors the reference implementation above to what Nexus really wrote."""
    key_file = fixture / "mac.key"
    key = key_file.read_bytes().strip() if key_file.exists() else None
    parser = LineParser(key)
    entries = 0
    for segment in sorted((fixture / "wal").glob("wal-*.jsonl")):
        for line in segment.read_bytes().split(b"\n"):
            if line:
                entries += isinstance(check_agrees(parser, line, key), Entry)
    assert entries > 0


# -- decompression bombs -----------------------------------------------------------


def _forged_frame(content_size: int) -> bytes:
    """A 7-byte zstd frame whose header claims ``content_size`` bytes."""
    plain = zstandard.ZstdCompressor(write_content_size=False, write_checksum=False)
    frame = plain.compress(b'{"a":1}')
    header = 6 if frame[4] & 0x20 == 0 else 5  # magic, descriptor, [window descriptor]
    # Descriptor 0xE0: 8-byte content size, single segment, no checksum, no dictionary.
    return frame[:4] + bytes([0xE0]) + struct.pack("<Q", content_size) + frame[header:]


def test_forged_content_size_does_not_raise() -> None:
    body = compress_field(b"x")[: len(ZSTD)] + base64.b64encode(_forged_frame(1 << 60))
    assert LineParser().parse(build_line(body, "legacy-crc")) is Reject.DECOMPRESS


def test_decompressed_size_is_bounded() -> None:
    big = b'{"payload":"' + b"a" * (MAX_DECOMPRESSED_BYTES + 1024) + b'"}'
    line = build_line(compress_field(big, content_size=True), "sentinel-crc")
    assert len(line) < MAX_LINE_BYTES
    assert LineParser().parse(line) is Reject.DECOMPRESS
