"""Standard Webhooks v1 signatures (https://www.standardwebhooks.com/).

Written here rather than taken from the ``standardwebhooks`` package: signing is
one HMAC, and that package pulls in an HTTP client and date libraries the daemon
does not otherwise need. The tests verify every signature with that package.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def sign(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )
