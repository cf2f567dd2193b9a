"""``type: syslog`` with ``syslog+relp://`` (or ``syslog+relp+tls://``, RELP inside TLS with
the sink's ``tls`` options, as imrelp's ``tls="on"``): the RFC 5424 messages of
:mod:`.syslog`, each one a RELP ``syslog`` command (:mod:`.relp`), delivered once rsyslog
answered it.

"Delivered" means rsyslog answered ``200`` to that message's TXNR: imrelp answers once the
message is in the queue of the ruleset it feeds (with a ``Direct`` queue, once the actions
ran). Any other answer (``500 ...``) is a RETRY_STATUS attempt for that event alone; no
answer within ``timeout_seconds`` is a TIMEOUT (connected) or CONNECTION (not connected)
attempt, retried by the sink. A lost connection within that time costs nothing but
duplicates: the client writes every unanswered message again on a new session.

Size rules are the other syslog transports' (``max_message_bytes``, ``oversize``); rsyslog's
own limit (``maxDataSize`` of imrelp, by default ``global(maxMessageSize)``) must be at
least as large: librelp 1.11 cuts a longer message and still answers 200.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventsinkd.config.sinks import SyslogSinkConfig
from eventsinkd.events import Event
from eventsinkd.transports.contract import Attempt, Outcome, Tally
from eventsinkd.transports.relp import RelpClient
from eventsinkd.transports.syslog import MessageFormat, fit_message
from eventsinkd.transports.tls import ssl_context


class RelpSyslogTransport:
    def __init__(self, cfg: SyslogSinkConfig, truncated: Tally | None = None) -> None:
        self.cfg = cfg
        self.max_batch = cfg.max_batch
        self.format = MessageFormat(cfg)
        endpoint = cfg.endpoint
        self.client = RelpClient(
            endpoint.host,
            endpoint.port,
            window=cfg.relp_window,
            timeout_s=cfg.timeout_seconds,
            name=cfg.name,
        )
        self._truncated = truncated

    async def open(self) -> None:
        """Nothing to reach yet: the first send connects (rsyslog down is no error)."""
        if self.cfg.endpoint.scheme == "syslog+relp+tls" and self.client.ssl is None:
            self.client.ssl = ssl_context(self.cfg.tls)

    async def close(self) -> None:
        await self.client.close()

    async def send(self, events: Sequence[Event]) -> list[Attempt]:
        attempts: list[Attempt | None] = [None] * len(events)
        ready: list[int] = []
        messages: list[bytes] = []
        cut: list[int] = []
        for i, event in enumerate(events):
            fitted = fit_message(self.cfg, *self.format.message(event))
            if isinstance(fitted, Attempt):
                attempts[i] = fitted
                continue
            message, truncated = fitted
            if truncated:
                cut.append(i)
            ready.append(i)
            messages.append(message)
        for i, attempt in zip(ready, await self.client.deliver(messages), strict=True):
            attempts[i] = attempt
        done = [a for a in attempts if a is not None]
        if cut and self._truncated is not None:
            acked = sum(done[i].outcome is Outcome.DELIVERED for i in cut)
            if acked:
                self._truncated.inc(acked)
        return done
