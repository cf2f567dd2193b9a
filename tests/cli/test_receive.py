"""``eventsinkd receive`` as a real subprocess: it accepts what the standardwebhooks reference
signs with its secret, rejects a bad or missing signature with 401 and says so, and counts
both when it stops."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime

from daemon_harness import command
from standardwebhooks.webhooks import Webhook

from eventsinkd.common.ports import free_port

SECRET = "whsec_" + base64.b64encode(b"r" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()
BODY = json.dumps({"event_type": "memory_written", "payload_id": "p1"}).encode()


def post(url: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=BODY, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def signed(secret: str, msg_id: str) -> dict[str, str]:
    now = datetime.now(tz=UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, BODY.decode()),
    }


def test_receive_accepts_good_signatures_and_rejects_bad_ones() -> None:
    port = free_port()
    proc = subprocess.Popen(
        command("receive", "--port", str(port), "--secret", SECRET),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "verifying signatures" in first, first
        url = f"http://127.0.0.1:{port}/"
        assert post(url, signed(SECRET, "memory_written:good")) == 204
        assert post(url, signed(OTHER, "memory_written:forged")) == 401
        unsigned = signed(SECRET, "memory_written:bare")
        del unsigned["webhook-signature"]
        assert post(url, unsigned) == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert "REJECTED memory_written:forged: bad or missing signature" in out
    assert "REJECTED memory_written:bare: bad or missing signature" in out
    assert "memory_written p1 " in out  # the accepted one, printed
    assert "received 1 event(s), 0 repeated, 2 bad signature(s)" in out, out + err
