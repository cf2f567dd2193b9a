"""A NATS sink's connection: the nats-py client, its state and its callbacks.

nats-py keeps the connection: it reconnects forever, to any server of the
cluster. ``open()`` waits up to ``timeout_seconds`` for the first connection and
then leaves it to the background, so a server that is down when eventsinkd
starts does not hold it up; until connected, sends fail as connection errors and
the sink pauses as for any receiver that is down.

Secrets (token, password) are resolved at each (re)connection, so a rotated
``file:`` secret is picked up, and never sent in plaintext: nats-py upgrades to
TLS only when the server requires it, so a ``tls://`` url whose server offers no
TLS is refused here rather than used in plaintext.

The publishing (:mod:`eventsinkd.transports.nats`) is nats-py's core ``publish``
with a reply subject, not ``js.publish`` (see there for why), so the acks come
back on one wildcard subscription per client, ``_INBOX.<nuid>.*``, made here at
the first connection and handed to the publisher's callback; nats-py sends it
again on every reconnection, before anything it had buffered. Each connection
also checks, once connected, which stream takes the sink's subjects, to say at
once, not at the first event, when none does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from eventsinkd.common.logs import RateLimitedLog
from eventsinkd.common.secrets import SecretError, resolve_secret
from eventsinkd.config.sinks import NatsSinkConfig
from eventsinkd.transports.nats_subjects import SubjectTemplate
from eventsinkd.transports.tls import ssl_context

log = logging.getLogger("eventsinkd.transports.nats")  # one logger for the whole transport

RECONNECT_WAIT_S = 2.0  # between two attempts at the same server (nats-py's default)
PING_INTERVAL_S = 20  # a silently dead connection is noticed within ~1 minute
_REFUSAL = re.compile(r"authori[sz]ation|authentication|offers no TLS|cannot resolve the", re.I)
PLAINTEXT = "the NATS server offers no TLS but the sink's url asks for tls://"


class NatsConnection:
    """The sink's nats-py client, from ``open()`` to ``close()``, and what it last said."""

    def __init__(
        self,
        cfg: NatsSinkConfig,
        subjects: SubjectTemplate,
        on_reply: Callable[[Msg], Awaitable[None]],
    ) -> None:
        self.cfg = cfg
        self.subjects = subjects
        self._on_reply = on_reply  # every message on the reply subscription
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._replies: Subscription | None = None  # <prefix>*: every ack of this connection
        self._prefix = ""  # "_INBOX.<nuid>."
        self._up = asyncio.Event()
        self._lost: asyncio.Future[None] | None = None  # done when this connection drops
        self._connecting: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._rlog = RateLimitedLog(log)
        self._closing = False
        self._error = "no answer yet"  # the last connection error nats-py reported
        self._refusal: str | None = None  # credentials (or plaintext) refused since connected
        self._wants_tls = any(url.startswith("tls://") for url in cfg.url)

    @property
    def nc(self) -> NATS | None:
        """The client, from ``open()`` to ``close()`` (connected or not)."""
        return self._nc

    @property
    def js(self) -> JetStreamContext | None:
        """For stream look-ups (requests, on nats-py's own inbox), once first connected."""
        return self._js

    @property
    def prefix(self) -> str:
        """``_INBOX.<nuid>.``: a publish's reply subject is this and a token; "" until ready."""
        return self._prefix

    @property
    def lost(self) -> asyncio.Future[None] | None:
        """Done when the current connection drops; None before the first one."""
        return self._lost

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def open(self) -> None:
        if self._nc is not None:
            return
        self._closing = False
        nc = self._nc = NATS()
        options = self._connect_options()
        self._connecting = asyncio.create_task(
            self._connect(nc, options), name=f"nats-connect-{self.cfg.name}"
        )
        # A short wait for the first connection (a replay sends right after open());
        # a server that is down does not hold the daemon up: sends fail until it is back.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), self.cfg.timeout_seconds)
        if not self._up.is_set() and not self._connecting.done():
            log.warning(
                "sink %s: not connected to NATS %s yet (%s); connecting in the background",
                self.cfg.name,
                self.cfg.target,
                self.last_error(),
            )

    def _connect_options(self) -> dict[str, Any]:
        cfg = self.cfg
        options: dict[str, Any] = {
            "servers": list(cfg.url),
            "name": f"eventsinkd/{cfg.name}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # forever; also for the first connection
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "connect_timeout": max(1, round(cfg.timeout_seconds)),
            "ping_interval": PING_INTERVAL_S,
            "max_outstanding_pings": 3,
            # Used for tls:// servers and for any server that requires TLS.
            "tls": ssl_context(cfg.tls),
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        if cfg.creds_file is not None:
            options["user_credentials"] = str(cfg.creds_file)
        # Secrets are resolved at each (re)connection, so a rotated file: secret is picked up.
        if cfg.token is not None:
            options["token"] = self._secret_callback("token", cfg.token)
        if cfg.user is not None and cfg.password is not None:
            options["user"] = cfg.user
            options["password"] = self._secret_callback("password", cfg.password)
        return options

    def _secret_callback(self, what: str, ref: str) -> Callable[[], str]:
        """A credential for nats-py, resolved when it connects (never over plaintext when the
        url says tls://); a failure is a connection error, which nats-py retries, and its text
        never holds the secret."""

        def resolve() -> str:
            if self._plaintext():
                raise nats.errors.Error(PLAINTEXT)
            try:
                return resolve_secret(ref)
            except SecretError as exc:
                raise nats.errors.Error(f"cannot resolve the {what}: {exc}") from None

        return resolve

    def _plaintext(self) -> bool:
        """True when the sink asks for TLS (a tls:// url) and the server offers none.

        nats-py upgrades to TLS only when the server's INFO requires it, and would
        otherwise carry on in plaintext whatever the url's scheme says."""
        if not self._wants_tls or self._nc is None:
            return False
        info = getattr(self._nc, "_server_info", None)  # the INFO nats-py acted on
        return not (isinstance(info, dict) and info.get("tls_required"))

    async def _connect(self, nc: NATS, options: dict[str, Any]) -> None:
        try:
            await nc.connect(**options)  # tries until it connects (max_reconnect_attempts -1)
        except ImportError as exc:  # creds_file: nats-py needs the nkeys package for it
            self._error = f"creds_file needs the {exc.name} package (pip install 'nats-py[nkeys]')"
            log.error("sink %s: cannot connect to NATS: %s", self.cfg.name, self._error)
            return
        except Exception as exc:  # nats-py gave up (it should not): say so, sends keep failing
            self._error = describe(exc)
            log.error("sink %s: cannot connect to NATS: %s", self.cfg.name, self._error)
            return
        await self._connected(nc)

    async def _connected(self, nc: NATS) -> None:
        if self._plaintext():
            self._error = PLAINTEXT
            log.error("sink %s: %s: not publishing over it", self.cfg.name, PLAINTEXT)
            return
        if self._js is None:  # for the stream checks (requests, on nats-py's own inbox)
            self._js = nc.jetstream(timeout=self.cfg.timeout_seconds)
        if self._replies is None:  # one for the client's life: nats-py renews it on reconnect
            prefix = f"{nc.new_inbox()}."
            try:
                self._replies = await nc.subscribe(f"{prefix}*", cb=self._on_reply)
            except (nats.errors.Error, OSError) as exc:  # lost again already: the next try
                self._error = describe(exc)
                return
            self._prefix = prefix
        self._lost = asyncio.get_running_loop().create_future()
        self._refusal = None
        self._up.set()
        url = nc.connected_url
        log.info(
            "sink %s: connected to NATS %s", self.cfg.name, url.netloc if url else self.cfg.target
        )
        if self._checking is None or self._checking.done():
            self._checking = asyncio.create_task(self._check_stream())

    async def _on_reconnected(self) -> None:
        if self._nc is not None:
            await self._connected(self._nc)

    async def _on_disconnected(self) -> None:
        if self._up.is_set() and not self._closing:
            self._up.clear()
            log.warning(
                "sink %s: disconnected from NATS (%s); reconnecting",
                self.cfg.name,
                self.last_error(),
            )
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _on_closed(self) -> None:
        await self._on_disconnected()

    async def _on_error(self, exc: Exception) -> None:
        self._error = describe(exc)
        if _REFUSAL.search(self._error):
            self._refusal = self._error
        # Connection attempts fail every few seconds while a server is down: rate-limited.
        self._rlog.log(logging.WARNING, "error", "sink %s: NATS: %s", self.cfg.name, describe(exc))

    def last_error(self) -> str:
        """The last error, and the server's refusal if one came since the last connection: a
        server that refuses the credentials may also just reset the next attempt."""
        if self._refusal is None or self._refusal == self._error:
            return self._error
        return f"{self._error}; before that: {self._refusal}"

    async def _check_stream(self) -> None:
        """Say at once, not at the first event, when no stream takes the sink's subjects."""
        js = self._js
        if js is None:
            return
        probe = self.subjects.probe
        try:
            stream = await js.find_stream_name_by_subject(probe)
        except nats.js.errors.NotFoundError:
            log.error(
                "sink %s: no JetStream stream takes subject %s; events wait until one does "
                "(create one, e.g. nats stream add NEXUS --subjects '%s')",
                self.cfg.name,
                probe,
                self.subjects.suggestion,
            )
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            log.error(
                "sink %s: JetStream is not available on NATS %s (start nats-server with -js); "
                "events wait until it is",
                self.cfg.name,
                self.cfg.target,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.warning(
                "sink %s: cannot check which stream takes %s: %s",
                self.cfg.name,
                probe,
                describe(exc),
            )
        else:
            log.info("sink %s: subject %s goes to stream %s", self.cfg.name, probe, stream)

    async def close(self) -> None:
        self._closing = True
        for task in (self._connecting, self._checking):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._connecting = self._checking = None
        nc, self._nc, self._js = self._nc, None, None
        self._replies, self._prefix = None, ""
        self._up.clear()
        if nc is not None and not nc.is_closed:
            # AssertionError: nats-py's close() of a client whose connect() never got going.
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError, AssertionError):
                await nc.close()


def describe(exc: BaseException) -> str:
    """A short text for an exception from nats-py (never holds a credential)."""
    text = str(exc).strip()
    if not text or text == "nats: ":
        return type(exc).__name__
    return text.removeprefix("nats: ")
