"""Webhook sinks over https, end to end through the engine: a server certificate and a client
certificate made in the test (openssl), a receiver that requires the client's; the sink's
``tls.ca_file``, ``tls.verify: false``, and ``tls.cert_file``/``key_file``."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import self_signed
from daemon_harness import until
from engine_harness import batch, events_cfg, run, started

from eventsinkd.devtools.peers.webhook import https_receiver
from eventsinkd.transports.contract import Outcome


@pytest.fixture
async def mtls(tmp_path: Path, tls_files: tuple[Path, Path]) -> AsyncIterator[dict[str, Any]]:
    """An https receiver on 127.0.0.1 that requires a client certificate it trusts."""
    cert, key = tls_files
    client_cert, client_key = self_signed(tmp_path, "client")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_cert)
    async with https_receiver(ctx) as (url, seen):
        yield {
            "url": url,
            "ca": cert,
            "client": {"cert_file": str(client_cert), "key_file": str(client_key)},
            "seen": seen,
        }


async def test_ca_file_and_a_client_certificate(mtls: dict[str, Any]) -> None:
    tls = {"ca_file": str(mtls["ca"]), **mtls["client"]}
    h = await run(events_cfg({"name": "s", "url": mtls["url"], "tls": tls}), batch(0, 3))
    assert h.accounting("s") == (3, 3, 0, 0)
    assert len(mtls["seen"]) == 3


async def test_verify_false_takes_a_certificate_nobody_signed(mtls: dict[str, Any]) -> None:
    tls = {"verify": False, **mtls["client"]}
    h = await run(events_cfg({"name": "s", "url": mtls["url"], "tls": tls}), batch(0, 2))
    assert h.accounting("s") == (2, 2, 0, 0)


@pytest.mark.parametrize(
    "tls",
    [
        pytest.param({"client": True}, id="server-not-trusted"),  # no ca_file: the system's CAs
        pytest.param({"ca": True}, id="no-client-certificate"),
    ],
)
async def test_without_trust_or_a_client_certificate_nothing_is_delivered(
    mtls: dict[str, Any], tls: dict[str, bool]
) -> None:
    cfg_tls: dict[str, Any] = {}
    if tls.get("ca"):
        cfg_tls["ca_file"] = str(mtls["ca"])
    if tls.get("client"):
        cfg_tls.update(mtls["client"])
    cfg = events_cfg({"name": "s", "url": mtls["url"], "tls": cfg_tls, "max_retries": 100})
    async with started(cfg, stop_timeout_s=0.1) as h:
        await h.handle(batch(0, 1))
        refused = h.engine.sinks["s"].metrics.attempts[Outcome.CONNECTION]
        await until(lambda: refused.value >= 2)  # tried, refused by the TLS handshake, retried
        assert h.engine.sinks["s"].stats.delivered == 0
    assert mtls["seen"] == []
