"""Standard Webhooks v1 signatures (https://www.standardwebhooks.com/).

Written here rather than taken from the ``standardwebhooks`` package: signing is
one HMAC, and that package pulls in an HTTP client and date libraries the daemon
does not otherwise need. The tests verify every signature with that package.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def sign(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def verify(
    keys: list[bytes],
    msg_id: str,
    timestamp: str,
    body: bytes,
    header: str,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """True if ``header`` holds a v1 signature by any of ``keys`` and the time is recent."""
    if not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    offered = [part[3:] for part in header.split() if part.startswith("v1,")]
    for expected in sign(keys, msg_id, int(timestamp), body).split():
        for sig in offered:
            if hmac.compare_digest(expected[3:], sig):
                return True
    return False
