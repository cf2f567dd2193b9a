"""``eventsinkd run``: the daemon's lifecycle.

Start-up: position store, delivery engine, admin server (a taken port is a
start-up failure, exit 3), then the WAL reader. Shutdown, in this order: stop
reading, let the sinks drain within ``events.shutdown_timeout_s``, save the
position. Signal handlers only set state; a second SIGTERM/SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

from eventsinkd import __version__
from eventsinkd.admin import AdminServer, ReaderCollector, lag_of
from eventsinkd.config import Config
from eventsinkd.configfile import ConfigError, load_config
from eventsinkd.delivery.engine import Engine
from eventsinkd.logs import setup_logging
from eventsinkd.metrics import Metrics
from eventsinkd.systemd import Notifier
from eventsinkd.wal.follower import WalFollower
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Checkpointer, Position, PositionFileError, PositionStore
from eventsinkd.wal.scanner import StartAt, WalScanner

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1  # the reader died of an unexpected error: let systemd restart us
EXIT_CONFIG = 2
EXIT_STARTUP = 3
STATUS_EVERY_S = 5.0


class Daemon:
    def __init__(
        self, cfg: Config, config_path: Path | None = None, notifier: Notifier | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.loaded_at = time.time()
        self.metrics = Metrics()
        self.notifier = notifier or Notifier()
        self.store = PositionStore(cfg.state_dir, cfg.wal.dir)
        self.checkpoints = Checkpointer(self.store, cfg.state_save_interval_s)
        self.position_error: str | None = None
        self.follower: WalFollower | None = None
        self.engine: Engine | None = None
        self.admin: AdminServer | None = None
        self.reading = False
        self._should_exit: asyncio.Event | None = None
        self._reload: asyncio.Event | None = None
        self._force_exit = False
        self._failed = False
        self._reader_task: asyncio.Task[None] | None = None
        self.metrics.registry.register(ReaderCollector(self))

    # -- state the admin server shows ------------------------------------------------

    @property
    def scanner(self) -> WalScanner | None:
        return self.follower.scanner if self.follower is not None else None

    @property
    def ready(self) -> bool:
        return self.reading and self.follower is not None and self.follower.ready

    def problems(self) -> list[str]:
        out = []
        scanner = self.scanner
        if scanner is None or not self.reading:
            out.append("the WAL reader is not running")
        elif scanner.error is not None:
            out.append(scanner.error)
        if self.store.last_error is not None:
            out.append(self.store.last_error)
        if self.position_error is not None:
            out.append(self.position_error)
        return out

    def lag(self) -> dict[str, float]:
        scanner = self.scanner
        if scanner is None:
            return {"bytes_behind": 0.0, "seconds_behind": 0.0}
        return lag_of(scanner.backlog_bytes(), scanner.stats.last_timestamp)

    def status(self) -> dict[str, Any]:
        scanner = self.scanner
        acked = self.checkpoints.acked
        saved = self.store.last_saved
        sinks = {}
        for name, sink in self.engine.sinks.items() if self.engine else []:
            st = sink.stats
            sinks[name] = {
                "url": str(sink.cfg.url),
                "queue_depth": sink.inflight,
                "max_inflight": sink.max_inflight,
                "offered": st.offered,
                "delivered": st.delivered,
                "failed": st.failed,
                "dropped": st.dropped,
                "last_success": st.last_success,
                "last_failure": st.last_failure,
            }
        return {
            "version": __version__,
            "ready": self.ready,
            "problems": self.problems(),
            "wal_dir": str(self.cfg.wal.dir),
            "position": {
                "read": str(scanner.position) if scanner else None,
                "acknowledged": str(acked) if acked else None,
                "saved": str(saved) if saved else None,
                # Block mode: the position cannot pass the oldest event a sink still holds.
                "oldest_unfinished": (
                    str(oldest)
                    if self.engine and (oldest := self.engine.tracker.oldest_unfinished)
                    else None
                ),
            },
            "lag": self.lag(),
            "reader": {
                "lines": scanner.stats.lines if scanner else 0,
                "rejected": dict(scanner.stats.rejected) if scanner else {},
                "segments": scanner.stats.segments if scanner else 0,
                "rewrites": scanner.stats.rewrites if scanner else 0,
                "truncations": scanner.stats.truncations if scanner else 0,
                "vanished": scanner.stats.vanished if scanner else 0,
            },
            "overflow": self.cfg.events.overflow,
            "sinks": sinks,
            "config": {
                "file": str(self.config_path) if self.config_path else None,
                "loaded_at": self.loaded_at,
            },
        }

    # -- signals (they only set state) -----------------------------------------------

    def handle_signal(self, sig: int) -> None:
        assert self._should_exit is not None and self._reload is not None
        if sig == signal.SIGHUP:
            self._reload.set()
        elif self._should_exit.is_set():
            log.warning("second signal: stopping now")
            self._force_exit = True
            if self._reader_task is not None:
                self._reader_task.cancel()
            if self.engine is not None:
                self.engine.abort()
        else:
            log.info("received %s: stopping", signal.Signals(sig).name)
            self._should_exit.set()

    # -- lifecycle ---------------------------------------------------------------

    async def serve(self, install_signals: bool = True) -> int:
        self._should_exit = asyncio.Event()
        self._reload = asyncio.Event()
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, self.handle_signal, sig)
        try:
            code = await self._startup()
            if code != EXIT_OK:
                return code
            await self._main_loop()
            await self._shutdown()
            return EXIT_FAILURE if self._failed else EXIT_OK
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            self.notifier.close()

    def _start_position(self) -> Position | StartAt:
        try:
            saved = self.store.load()
        except PositionFileError as exc:
            self.position_error = f"{exc}; started at the {self.cfg.wal.start_at} of the WAL"
            log.error("%s", self.position_error)
            return self.cfg.wal.start_at
        if saved is None:
            log.info("no saved position; starting at the %s of the WAL", self.cfg.wal.start_at)
            return self.cfg.wal.start_at
        return saved

    async def _startup(self) -> int:
        cfg = self.cfg
        self.engine = Engine(cfg.events, self.metrics, self.checkpoints.ack)
        self.admin = AdminServer(cfg.admin.host, cfg.admin.port, self, self.status)
        try:
            await self.admin.start()
        except OSError as exc:
            log.error("cannot listen on %s for metrics and health: %s", cfg.admin.listen, exc)
            return EXIT_STARTUP
        await self.engine.start()
        self.follower = WalFollower(
            cfg.wal.dir,
            LineParser(cfg.wal.mac_key_bytes),
            self._start_position(),
            poll_interval_s=cfg.wal.poll_interval_s,
            force_polling=cfg.wal.force_polling,
        )
        self._reader_task = asyncio.create_task(self._read(), name="wal-reader")
        log.info(
            "eventsinkd %s started: WAL %s, %d sink(s), overflow %s, admin http://%s:%d",
            __version__,
            cfg.wal.dir,
            len(cfg.events.sinks),
            cfg.events.overflow,
            cfg.admin.host,
            self.admin.port,
        )
        return EXIT_OK

    async def _read(self) -> None:
        assert self.follower is not None and self.engine is not None
        self.reading = True
        self.notifier.ready("reading the WAL")
        try:
            async for batch in self.follower:
                await self.engine.handle(batch)
        finally:
            self.reading = False

    async def _main_loop(self) -> None:
        assert self._should_exit is not None and self._reload is not None
        assert self._reader_task is not None
        saver = asyncio.create_task(self.checkpoints.run(), name="position-saver")
        pinger = asyncio.create_task(self._heartbeat(), name="systemd-heartbeat")
        try:
            while not self._should_exit.is_set():
                exit_wait = asyncio.create_task(self._should_exit.wait())
                reload_wait = asyncio.create_task(self._reload.wait())
                await asyncio.wait(
                    {exit_wait, reload_wait, self._reader_task},
                    return_when=asyncio.FIRST_COMPLETED,
                )
                exit_wait.cancel()
                reload_wait.cancel()
                if self._reader_task.done():
                    if not self._reader_task.cancelled() and self._reader_task.exception():
                        log.error("the WAL reader failed", exc_info=self._reader_task.exception())
                        self._failed = True
                    break
                if self._reload.is_set():
                    self._reload.clear()
                    await self.reload()
        finally:
            for task in (saver, pinger):
                task.cancel()
            await asyncio.gather(saver, pinger, return_exceptions=True)

    async def _shutdown(self) -> None:
        assert self.follower is not None and self.engine is not None
        assert self._reader_task is not None
        self.notifier.stopping()
        timeout_s = 0.0 if self._force_exit else self.cfg.events.shutdown_timeout_s
        started = time.monotonic()
        # 1. Stop reading. In block mode the reader may wait for room in a full
        #    sink: what it had not handed over yet is read again after a restart.
        self.follower.stop()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._reader_task), 1.0)
        if not self._reader_task.done():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        # 2. Let the sinks drain within what is left of the timeout.
        left_s = 0.0 if self._force_exit else max(0.0, timeout_s - (time.monotonic() - started))
        await self.engine.stop(left_s)
        # 3. Save the position.
        self.checkpoints.flush()
        if self.admin is not None:
            await self.admin.stop()
        log.info("stopped at %s", self.checkpoints.acked or self.follower.position)

    async def reload(self) -> None:
        assert self.engine is not None
        if self.config_path is None:
            log.warning("SIGHUP ignored: no config file to reload")
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.metrics.reloads.labels("failure").inc()
            log.error("reload failed, keeping the running config:\n%s", exc)
            self.notifier.ready("reload failed; running the previous config")
            return
        old = self.cfg
        fixed = [
            key
            for key, a, b in (
                ("wal", old.wal, new.wal),
                ("state_dir", old.state_dir, new.state_dir),
                ("state_save_interval_s", old.state_save_interval_s, new.state_save_interval_s),
                ("admin", old.admin, new.admin),
                ("events.overflow", old.events.overflow, new.events.overflow),
            )
            if a != b
        ]
        if fixed:
            log.warning("changed on reload, applied only after a restart: %s", ", ".join(fixed))
        events = new.events.model_copy(update={"overflow": old.events.overflow})
        changes = await self.engine.reconfigure(events)
        if new.log != old.log:
            setup_logging(new.log.level, new.log.format)
        self.cfg = old.model_copy(update={"events": events, "log": new.log})
        self.loaded_at = time.time()
        self.metrics.reloads.labels("success").inc()
        log.info("config reloaded: %s", "; ".join(changes) or "no sink changes")
        self.notifier.ready("reloaded")

    async def _heartbeat(self) -> None:
        """systemd watchdog pings and a status line; nothing when not under systemd."""
        if not self.notifier.enabled:
            return
        interval = min(self.notifier.watchdog_interval_s or STATUS_EVERY_S, STATUS_EVERY_S)
        last_t, last_delivered = time.monotonic(), self._delivered_total()
        while True:
            await asyncio.sleep(interval)
            self.notifier.watchdog()
            now, delivered = time.monotonic(), self._delivered_total()
            rate = (delivered - last_delivered) / max(now - last_t, 1e-9)
            last_t, last_delivered = now, delivered
            dropped = sum(s.stats.dropped for s in self.engine.sinks.values()) if self.engine else 0
            self.notifier.status(f"{rate:.0f} events/s delivered, {dropped} dropped")

    def _delivered_total(self) -> int:
        return sum(s.stats.delivered for s in self.engine.sinks.values()) if self.engine else 0
