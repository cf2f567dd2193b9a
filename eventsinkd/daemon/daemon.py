"""``eventsinkd run``: the daemon's lifecycle.

Start-up: the state directory's lock (one daemon per state directory), the
dead-letter store, every sink's cursor (upgrading the old single position; in
block mode a sink whose cursor exists but cannot be used is a start-up failure,
exit 3), the admin server (a taken port is one too), then one cursor per sink
reading the WAL. Shutdown, in this order: stop reading, let the sinks
drain within ``events.shutdown_timeout_s``, save every cursor. Signal handlers
only set state; a second SIGTERM/SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from eventsinkd import __version__
from eventsinkd.admin.server import AdminServer
from eventsinkd.admin.status import status_document
from eventsinkd.common.logs import setup_logging
from eventsinkd.config.loading import ConfigError, load_config
from eventsinkd.config.model import Config
from eventsinkd.daemon.requests import Requests
from eventsinkd.daemon.systemd import Notifier
from eventsinkd.delivery import rewinds
from eventsinkd.delivery.cursor import SinkCursor
from eventsinkd.delivery.engine import Engine
from eventsinkd.delivery.replay import Send, replay
from eventsinkd.metrics import DaemonCollector, Lag, Metrics
from eventsinkd.state.control import StateLock, pending_rewinds
from eventsinkd.state.cursors import CursorFiles
from eventsinkd.state.errors import CONTROL, DEAD_LETTERS, StateErrors
from eventsinkd.state.letterwriter import DeadLetterWriter
from eventsinkd.state.storecheck import check_writable, open_store
from eventsinkd.wal.lines import LineParser
from eventsinkd.wal.position import Position, describe
from eventsinkd.wal.reading import ReaderStats, SharedReading
from eventsinkd.wal.statuses import StatusWatch

log = logging.getLogger("eventsinkd.daemon")  # its name before the move

EXIT_OK = 0
EXIT_FAILURE = 1  # the reader died of an unexpected error: let systemd restart us
EXIT_CONFIG = 2
EXIT_STARTUP = 3
STATUS_EVERY_S = 5.0
LOCK_WAIT_S = 10.0  # a replay or rewind run without a daemon holds the lock this long at most


class Daemon:
    def __init__(
        self, cfg: Config, config_path: Path | None = None, notifier: Notifier | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.loaded_at = time.time()
        self.metrics = Metrics()
        self.notifier = notifier or Notifier()
        self.state_errors = StateErrors()
        self.cursor_files = CursorFiles(cfg, config_path, self.state_errors)
        self.lock = StateLock(cfg.state_dir)
        self.dead_letters: DeadLetterWriter | None = None
        self.reading = SharedReading(
            cfg.wal.dir,
            LineParser(cfg.wal.mac_key_bytes),
            poll_interval_s=cfg.wal.poll_interval_s,
            force_polling=cfg.wal.force_polling,
        )
        self.engine: Engine | None = None
        self.admin: AdminServer | None = None
        self._should_exit: asyncio.Event | None = None
        self._reload: asyncio.Event | None = None
        self._force_exit = False
        self._failure: BaseException | None = None
        self._reader_failed: asyncio.Event | None = None
        self.metrics.registry.register(DaemonCollector(self))

    # -- what the admin server and the collector show (metrics.DaemonView) -------------

    @property
    def cursors(self) -> dict[str, SinkCursor]:
        return self.engine.cursors if self.engine is not None else {}

    @property
    def ready(self) -> bool:
        cursors = self.cursors.values()
        return (
            self.engine is not None
            and self._failure is None
            and not self.state_errors.failing
            and all(c.reading and c.follower is not None and c.follower.ready for c in cursors)
        )

    def problems(self) -> list[str]:
        out = []
        if self.engine is None or self._failure is not None:
            out.append("the WAL reader is not running")
        errors = {
            c.follower.scanner.error
            for c in self.cursors.values()
            if c.follower is not None and c.follower.scanner.error is not None
        }
        out += sorted(errors)
        out += self.cursor_files.store_errors()
        out += self.state_errors.problems()
        out += self.cursor_files.problems
        return out

    def state_error_counts(self) -> dict[str, int]:
        return dict(self.state_errors.counts)

    def reader_stats(self) -> ReaderStats:
        return self.reading.stats

    def sink_lags(self) -> dict[str, Lag]:
        return {name: c.lag() for name, c in self.cursors.items()}

    def status_watches(self) -> dict[str, StatusWatch]:
        return {name: c.statuses for name, c in self.cursors.items() if c.statuses is not None}

    def dead_letters_by_sink(self) -> dict[str, tuple[int, int]]:
        if self.dead_letters is None:
            return {}
        path = self.dead_letters.store.path
        what = f"{path} (reading)"  # apart from its writes: a read does not clear those
        try:
            held = self.dead_letters.store.counts()
        except sqlite3.Error as exc:
            self.state_errors.failed(
                DEAD_LETTERS, what, f"cannot read the dead-letter store {path}: {exc}"
            )
            held = {}
        else:
            self.state_errors.ok(DEAD_LETTERS, what)
        evicted = self.dead_letters.evicted
        names = {*self.cursors, *held, *evicted}
        return {n: (held.get(n, 0), evicted.get(n, 0)) for n in names}

    def status(self) -> dict[str, Any]:
        return status_document(self)

    # -- signals (they only set state) -----------------------------------------------

    def handle_signal(self, sig: int) -> None:
        assert self._should_exit is not None and self._reload is not None
        if sig == signal.SIGHUP:
            self._reload.set()
        elif self._should_exit.is_set():
            log.warning("second signal: stopping now")
            self._force_exit = True
            if self.engine is not None:
                self.engine.abort()
        else:
            log.info("received %s: stopping", signal.Signals(sig).name)
            self._should_exit.set()

    def _cursor_failed(self, name: str, exc: BaseException) -> None:
        log.error("the WAL reader of sink %s failed", name, exc_info=exc)
        self._failure = exc
        if self._reader_failed is not None:
            self._reader_failed.set()

    # -- lifecycle ---------------------------------------------------------------

    async def serve(self, install_signals: bool = True) -> int:
        self._should_exit = asyncio.Event()
        self._reload = asyncio.Event()
        self._reader_failed = asyncio.Event()
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, self.handle_signal, sig)
        try:
            code = await self._startup()
            if code != EXIT_OK:
                return code
            await self._main_loop()
            saved = await self._shutdown()
            return EXIT_FAILURE if self._failure is not None or not saved else EXIT_OK
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            if self.dead_letters is not None:
                await self.dead_letters.close()
                self.dead_letters.store.close()
            self.lock.release()
            self.notifier.close()

    async def _startup(self) -> int:
        cfg = self.cfg
        # One daemon per state directory; a `dead-letters replay` or `rewind` run
        # without a daemon holds the lock for a moment.
        try:
            locked = await asyncio.to_thread(
                self.lock.acquire, "eventsinkd run", wait_s=LOCK_WAIT_S
            )
        except OSError as exc:
            log.error("cannot use the state directory %s: %s", cfg.state_dir, exc)
            return EXIT_STARTUP
        if not locked:
            log.error(
                "state directory %s is in use by %s; not starting",
                cfg.state_dir,
                self.lock.holder(),
            )
            return EXIT_STARTUP
        store = await asyncio.to_thread(open_store, cfg, self.state_errors)
        if store is None:
            return EXIT_STARTUP
        self.dead_letters = DeadLetterWriter(store, self.state_errors)
        self.cursor_files.migrate(cfg.events.sinks)
        refusals = self.cursor_files.check(cfg.events.sinks)
        for refusal in refusals:
            log.error("%s", refusal)
        if refusals:
            return EXIT_STARTUP
        self.engine = Engine(
            cfg.events,
            self.metrics,
            self.cursor_files.checkpoints,
            start_for=self.cursor_files.start_for,
            dead_letters=self.dead_letters,
            on_failure=self._cursor_failed,
        )
        self.admin = AdminServer(
            cfg.admin.host, cfg.admin.port, self, self.status, self.metrics.registry
        )
        try:
            await self.admin.start()
        except OSError as exc:
            log.error(
                "cannot listen on %s for metrics and health (admin.listen): %s. %s",
                cfg.admin.listen,
                exc.strerror or exc,
                "Another program (another eventsinkd?) has that port: stop it, or give "
                "admin.listen another port"
                if exc.errno == errno.EADDRINUSE
                else "Give admin.listen an address of this host",
            )
            return EXIT_STARTUP
        await self.engine.start()
        if not cfg.wal.force_polling:
            self.reading.waker.start()
        self.engine.follow(self.reading)
        self.notifier.ready("reading the WAL")
        log.info(
            "eventsinkd %s started: WAL %s, %d sink(s), events %s, overflow %s, admin http://%s:%d",
            __version__,
            cfg.wal.dir,
            len(cfg.events.sinks),
            ", ".join(cfg.events.types),
            cfg.events.overflow,
            cfg.admin.host,
            self.admin.port,
        )
        return EXIT_OK

    async def _main_loop(self) -> None:
        assert self._should_exit is not None and self._reload is not None
        assert self._reader_failed is not None and self.engine is not None
        background: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._save_cursors(), name="cursor-saver"),
            asyncio.create_task(self._heartbeat(), name="systemd-heartbeat"),
            asyncio.create_task(
                Requests(self.cfg.state_dir, self._serve_requests).run(), name="requests"
            ),
        ]
        try:
            while not self._should_exit.is_set():
                waits = [
                    asyncio.create_task(ev.wait())
                    for ev in (self._should_exit, self._reload, self._reader_failed)
                ]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in waits:
                    task.cancel()
                if self._reader_failed.is_set():
                    break
                if self._reload.is_set():
                    self._reload.clear()
                    await self.reload()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def _save_cursors(self) -> None:
        assert self.engine is not None
        while True:
            await asyncio.sleep(self.cfg.state_save_interval_s)
            self.engine.flush()

    async def _serve_requests(self) -> None:
        """Carry out what `rewind` and `dead-letters replay` left in the state directory
        (when: :mod:`eventsinkd.daemon.requests`)."""
        assert self.engine is not None and self.dead_letters is not None
        writer = self.dead_letters
        check_writable(self.cfg.state_dir, self.state_errors)
        for request in await asyncio.to_thread(pending_rewinds, self.cfg.state_dir):
            try:
                await rewinds.serve(request, self.cfg, self.engine, self.cursor_files)
            except OSError as exc:
                self.state_errors.failed(
                    CONTROL, str(request.path), f"cannot answer {request.path}: {exc}"
                )
            else:
                self.state_errors.ok(CONTROL, str(request.path))
        letters = await writer.run(writer.store.replay_requests)
        if letters:
            result = await replay(letters, self._send_for, writer.store, writer.run)
            log.info(
                "dead letters replayed: %d delivered, %d failed",
                len(result.delivered),
                len(result.failed),
            )

    def _send_for(self, sink: str) -> Send | None:
        """How a dead letter of ``sink`` is replayed: one attempt by the running sink."""
        running = self.engine.sinks.get(sink) if self.engine is not None else None
        return running.send_one if running is not None else None

    async def _shutdown(self) -> bool:
        """Stop; False if a cursor could not be saved (then the log says what is on disk)."""
        assert self.engine is not None
        self.notifier.stopping()
        timeout_s = 0.0 if self._force_exit else self.cfg.events.shutdown_timeout_s
        # Stop reading (in block mode what was not handed over is read again after a
        # restart), let the sinks drain within the timeout, save every cursor.
        await self.engine.stop(timeout_s)
        await self.reading.waker.stop()
        self.reading.close()
        if self.admin is not None:
            await self.admin.stop()
        unsaved = {
            name: c.checkpoints.store.last_error
            for name, c in self.cursors.items()
            if c.checkpoints.store is not None and c.checkpoints.store.last_error is not None
        }
        on_disk = {name: self.cursor_files.on_disk(name) for name in self.cursors}
        for name, error in unsaved.items():
            log.error(
                "sink %s: its final cursor %s was not saved (%s); the cursor file holds %s: "
                "after a restart delivery resumes there and sends again what followed",
                name,
                _in_words(self.cursors[name].checkpoints.acked),
                error,
                _in_words(on_disk[name]),
            )
        log.info(
            "stopped at these positions: %s%s",
            "; ".join(f"sink {n} at {_in_words(pos)}" for n, pos in on_disk.items()) or "no sinks",
            " (the positions on disk; some cursors could not be saved)" if unsaved else "",
        )
        return not unsaved

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
        fixed = old.restart_only_changes(new)
        if fixed:
            log.warning("changed on reload, applied only after a restart: %s", ", ".join(fixed))
        running = old.reloaded(new)
        changes = await self.engine.reconfigure(running.events)
        if new.log != old.log:
            setup_logging(new.log.level, new.log.format)
        self.cfg = running
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


def _in_words(pos: Position | None) -> str:
    """A saved cursor in a log line: segment and line, or that there is none."""
    return describe(pos) if pos is not None else "nothing saved (the sink starts at its start_at)"
