"""Parse one Nexus WAL line (without its newline) into an :class:`Entry`.

The four layouts (shared/spec/nexus-wal.md)::

    legacy     JSON<TAB>CRC[<TAB>HMAC]
    sentinel   BFBFBFBFBFBFBFBF<TAB>JSON<TAB>CRC[<TAB>HMAC]<TAB>FBFBFBFBFBFBFBFB

A line that cannot be used is never an exception: :meth:`LineParser.parse`
returns a :class:`Reject` saying why, and the caller counts it and moves on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from enum import StrEnum

import msgspec
import orjson
import zstandard

from eventsinkd.wal.entry import Entry

START = b"BFBFBFBFBFBFBFBF"
END = b"FBFBFBFBFBFBFBFB"
ZSTD_PREFIX = b"zstd:"
# Nexus reads lines up to 10 MiB; a decompressed field may be larger than the
# line that carried it, but not without bound (a zstd bomb must not take the host).
MAX_LINE_BYTES = 10 * 1024 * 1024
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024

_HEX = frozenset(b"0123456789abcdef")


class Reject(StrEnum):
    """Why a line was skipped; the value is the ``reason`` label in metrics and reports."""

    PARTIAL = "partial"  # fewer than two fields: a write cut short
    TORN = "torn"  # starts with the start sentinel but does not end with the end sentinel
    GARBAGE = "garbage"  # fields present but malformed (CRC or HMAC not hex, too many fields)
    CRC = "crc"  # CRC-32 does not match the JSON field
    HMAC = "hmac"  # HMAC-SHA256 does not match the JSON field
    DECOMPRESS = "decompress"  # zstd: field that is not valid base64 or zstd
    JSON = "json"  # checksums fine, but not a JSON object of the expected shape
    TOO_LONG = "too_long"  # longer than MAX_LINE_BYTES (rejected by the line reader)


def _is_hex(field: bytes, length: int) -> bool:
    return len(field) == length and _HEX.issuperset(field)


_decode_entry = msgspec.json.Decoder(Entry).decode
_STR_FIELDS = tuple(Entry.__struct_fields__[:10])


def entry_from_json_bytes(body: bytes) -> Entry | None:
    """The Entry a line's JSON text holds; None when it is not JSON or its shape is wrong.

    Missing string fields become "" (as Go's zero value), and so does null; a field of
    the wrong type makes the entry unusable, as it would fail Go's json.Unmarshal. The
    payload and unknown fields are checked for JSON syntax only, as Go checks them.
    """
    try:
        return _decode_entry(body)
    except msgspec.MsgspecError:
        # Not JSON, or something the strict decoder refuses that may still make an entry:
        # a null string, a monotonic_seq above int64 (orjson reads up to uint64).
        return _entry_from_document(body)


def _entry_from_document(body: bytes) -> Entry | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    values: list[str] = []
    for key in _STR_FIELDS:
        value = doc.get(key, "")
        if value is None:
            value = ""
        elif not isinstance(value, str):
            return None
        values.append(value)
    seq = doc.get("monotonic_seq", 0)
    if seq is None:
        seq = 0
    elif not isinstance(seq, int) or isinstance(seq, bool):
        return None
    entry = Entry(raw_payload=msgspec.Raw(orjson.dumps(doc.get("payload"))), monotonic_seq=seq)
    return msgspec.structs.replace(entry, **dict(zip(_STR_FIELDS, values, strict=True)))


class LineParser:
    """Checks and decodes lines; holds the HMAC key and a reusable zstd context."""

    def __init__(self, mac_key: bytes | None = None) -> None:
        self._mac_key = mac_key
        self._zstd = zstandard.ZstdDecompressor()

    @property
    def checks_mac(self) -> bool:
        return self._mac_key is not None

    def parse(self, line: bytes) -> Entry | Reject:
        body = self.check(line)
        if isinstance(body, Reject):
            return body
        entry = entry_from_json_bytes(body)
        return Reject.JSON if entry is None else entry

    def check(self, line: bytes) -> bytes | Reject:
        """The line's JSON bytes (decompressed) if its framing and checksums hold."""
        if len(line) > MAX_LINE_BYTES:
            return Reject.TOO_LONG
        fields = line.split(b"\t")
        if fields[0] == START:
            if len(fields) < 4 or fields[-1] != END:
                return Reject.TORN
            fields = fields[1:-1]
        elif len(fields) < 2:
            return Reject.PARTIAL
        if len(fields) > 3:
            return Reject.GARBAGE
        body = fields[0]
        crc = fields[1]
        if b"%08x" % zlib.crc32(body) != crc:
            return Reject.CRC if _is_hex(crc, 8) else Reject.GARBAGE
        if len(fields) == 3:
            mac = fields[2]
            if not _is_hex(mac, 64):
                return Reject.GARBAGE
            if self._mac_key is not None:
                want = hmac.new(self._mac_key, body, hashlib.sha256).hexdigest().encode()
                if not hmac.compare_digest(want, mac):
                    return Reject.HMAC
        if body.startswith(ZSTD_PREFIX):
            try:
                compressed = base64.b64decode(body[len(ZSTD_PREFIX) :], validate=True)
                # decompress() allocates what the frame header claims, ignoring
                # max_output_size: check the claim first (-1 means not stated).
                if zstandard.frame_content_size(compressed) > MAX_DECOMPRESSED_BYTES:
                    return Reject.DECOMPRESS
                body = self._zstd.decompress(compressed, max_output_size=MAX_DECOMPRESSED_BYTES)
            except (binascii.Error, zstandard.ZstdError):
                return Reject.DECOMPRESS
        return body
