"""RELP frames (librelp's ``doc/relp.html``): ``TXNR SP COMMAND SP DATALEN [SP DATA] LF``.

TXNR is 1-9 digits (0 only for the server's ``serverclose``), COMMAND 1-32 letters, DATALEN
1-9 digits; with DATALEN 0 there is no SP and no DATA. Written by hand with the client
(:mod:`.relp`): there is no maintained Python RELP library.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_TXNR = 999_999_999
MAX_ANSWER_BYTES = 64 * 1024  # a server's rsp data (code, text, offers) is far less
_HEAD = re.compile(rb"(\d{1,9}) ([A-Za-z]{1,32}) (\d{1,9})([ \n])")
_HEAD_SO_FAR = re.compile(rb"\d{0,9}(?: [A-Za-z]{0,32}(?: \d{0,9})?)?")  # may become a _HEAD


class RelpError(Exception):
    """The server sent something RELP does not allow here."""


class Frame(NamedTuple):
    txnr: int
    command: str
    data: bytes


def next_txnr(txnr: int) -> int:
    """The TXNR after ``txnr``: 999,999,999 wraps to 1."""
    return 1 if txnr >= MAX_TXNR else txnr + 1


def encode_frame(txnr: int, command: bytes, data: bytes = b"") -> bytes:
    if not data:
        return b"%d %b 0\n" % (txnr, command)
    return b"%d %b %d %b\n" % (txnr, command, len(data), data)


class FrameParser:
    """Frames out of a byte stream, as it arrives."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        while pos < len(buf):
            m = _HEAD.match(buf, pos)
            if m is None:
                if _HEAD_SO_FAR.fullmatch(buf, pos):
                    break  # the start of a header: wait for the rest
                raise RelpError(f"not a RELP frame: {bytes(buf[pos : pos + 40])!r}")
            txnr, command, length = int(m[1]), m[2].decode(), int(m[3])
            if m[4] == b"\n":  # DATALEN with no data
                if length:
                    raise RelpError(f"frame {txnr}: DATALEN {length} but no data")
                frames.append(Frame(txnr, command, b""))
                pos = m.end()
                continue
            if length > MAX_ANSWER_BYTES:
                raise RelpError(f"frame {txnr}: {length} bytes of data is too long an answer")
            end = m.end() + length
            if len(buf) <= end:
                break
            if buf[end] != 0x0A:
                raise RelpError(f"frame {txnr}: no LF after {length} bytes of data")
            frames.append(Frame(txnr, command, bytes(buf[m.end() : end])))
            pos = end + 1
        del buf[:pos]
        return frames
