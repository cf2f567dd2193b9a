"""Dead letters: the SQLite store, the daemon keeping refused events, the CLI sending them again.

The store is tested on a real SQLite file; everything else against a real
`eventsinkd run` subprocess, a real receiver on 127.0.0.1 and the
`eventsinkd dead-letters` commands as real subprocesses (rewind: test_rewind.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from daemon_harness import (
    SECRET,
    Daemon,
    eventsinkd,
    metric_value,
    run_cli,
    settle,
    sink_status,
    until,
    wait_cursor_at_end,
    webhook_ids,
)
from standardwebhooks.webhooks import Webhook

from eventsinkd.devtools.peers.webhook import Behaviour, WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter
from eventsinkd.state.deadletters import DeadLetter, DeadLetterStore

# -- the store -----------------------------------------------------------------------------


def letter(
    sink: str,
    n: int,
    *,
    attempts: int = 1,
    last_attempt: float = 1_000.0,
    outcome: str = "HTTP 422",
    body: bytes | None = None,
) -> DeadLetter:
    """Letter number ``n`` of ``sink``; letters made with the default body are all one size."""
    return DeadLetter(
        sink=sink,
        webhook_id=f"memory_written:{n:032x}",
        event_type="memory_written",
        timestamp=f"2026-04-10T12:00:{n % 60:02d}.123456789Z",
        body=body if body is not None else b'{"payload_id":"%032x"}' % n,
        attempts=attempts,
        first_attempt=last_attempt - 0.5,
        last_attempt=last_attempt,
        last_outcome=outcome,
    )


def ids_of(letters: list[DeadLetter]) -> list[str]:
    return [x.webhook_id for x in letters]


def test_store_add_and_list_round_trip(tmp_path: Path) -> None:
    odd_body = b'{"content":"caf\xc3\xa9 \xf0\x9f\x90\x9f"}\x00\xff\n trailing bytes kept'
    first = [letter("a", 1, body=odd_body), letter("b", 2, attempts=4, outcome="HTTP 500")]
    later = [letter("a", 3, last_attempt=1_234.567890123), letter("a", 0)]
    with closing(DeadLetterStore(tmp_path)) as store:
        assert store.letters() == []
        assert store.add(first) == {}
        assert store.add(later) == {}
    with closing(DeadLetterStore(tmp_path)) as store:  # a new connection: it is on disk
        assert store.letters() == first + later  # every field (body bytes too), in stored order
        assert store.letters("a") == [first[0], *later]
        assert store.letters("nosuch") == []
        assert not any(x.replay for x in store.letters())


def test_store_evicts_the_oldest_per_sink(tmp_path: Path) -> None:
    # Exactly three letters fit per sink.
    with closing(DeadLetterStore(tmp_path, max_bytes=3 * letter("a", 0).size)) as store:
        assert store.add([letter("b", n) for n in range(3)]) == {}
        evicted = [store.add([letter("a", n)]) for n in range(5)]
        assert evicted == [
            {},
            {},
            {},
            {"a": ids_of([letter("a", 0)])},
            {"a": ids_of([letter("a", 1)])},
        ]
        assert store.letters("a") == [letter("a", n) for n in (2, 3, 4)]
        assert store.letters("b") == [letter("b", n) for n in range(3)]  # older, and all there

        # One transaction for both sinks: each loses its own oldest.
        got = store.add([letter("a", 5), letter("b", 3), letter("a", 6)])
        assert {sink: sorted(ids) for sink, ids in got.items()} == {
            "a": ids_of([letter("a", 2), letter("a", 3)]),
            "b": ids_of([letter("b", 0)]),
        }
        assert ids_of(store.letters("a")) == ids_of([letter("a", n) for n in (4, 5, 6)])
        assert store.counts() == {"a": 3, "b": 3}


def test_store_same_sink_and_id_replaces(tmp_path: Path) -> None:
    with closing(DeadLetterStore(tmp_path, max_bytes=3 * letter("a", 0).size)) as store:
        store.add([letter("a", 0), letter("a", 1), letter("b", 1)])
        again = letter("a", 1, attempts=7, last_attempt=5_000.0, outcome="HTTP 500")
        # The old letter is gone, so three of a's still fit: nothing evicted.
        assert store.add([again, letter("a", 2)]) == {}
        assert sorted(store.letters("a"), key=lambda x: x.webhook_id) == [
            letter("a", 0),
            again,
            letter("a", 2),
        ]
        assert store.letters("b") == [letter("b", 1)]  # the same id for another sink stays


@pytest.mark.parametrize(
    ("sink", "before", "purged"),
    [
        (None, None, ["a1", "a2", "a3", "b1", "b3"]),
        ("a", None, ["a1", "a2", "a3"]),
        (None, 2_000.0, ["a1", "b1"]),  # last tried strictly before
        ("a", 3_000.0, ["a1", "a2"]),
        ("b", 1_000.0, []),
        ("nosuch", None, []),
    ],
)
def test_store_purge(
    tmp_path: Path, sink: str | None, before: float | None, purged: list[str]
) -> None:
    made = {  # "a2": sink a, last tried 2000 s after the epoch
        f"{s}{t}": letter(s, 10 * t, last_attempt=1_000.0 * t)
        for s, t in [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 3)]
    }
    with closing(DeadLetterStore(tmp_path)) as store:
        store.add(list(made.values()))
        assert store.purge(sink, before) == len(purged)
        assert store.letters() == [x for name, x in made.items() if name not in purged]


def test_store_request_replay_marks_only_the_asked(tmp_path: Path) -> None:
    a = [letter("a", n) for n in range(4)]
    b = [letter("b", 1), letter("b", 9)]  # b[0] has the webhook-id of a[1]
    with closing(DeadLetterStore(tmp_path)) as store:
        store.add(a + b)
        marked = store.request_replay("a", ids_of([a[1], a[3]]))
        assert marked == [replace(a[1], replay=True), replace(a[3], replay=True)]
        assert store.replay_requests() == marked
        assert store.request_replay("b", None) == [replace(x, replay=True) for x in b]
        assert [(x.sink, x.webhook_id) for x in store.letters() if not x.replay] == [
            ("a", a[0].webhook_id),
            ("a", a[2].webhook_id),
        ]

        # What a replay does with the answers: a failure clears the flag, a success removes.
        store.failed_again("a", a[1].webhook_id, "HTTP 503")
        store.delivered("b", b[0].webhook_id)
        after = {(x.sink, x.webhook_id): x for x in store.letters()}
        tried = after["a", a[1].webhook_id]
        assert (tried.attempts, tried.last_outcome, tried.replay) == (2, "HTTP 503", False)
        assert tried.last_attempt > a[1].last_attempt
        assert ("b", b[0].webhook_id) not in after and len(after) == 5


def test_store_counts(tmp_path: Path) -> None:
    with closing(DeadLetterStore(tmp_path)) as store:
        assert store.counts() == {}
        store.add([letter("a", n) for n in range(3)] + [letter("b", 0)])
        assert store.counts() == {"a": 3, "b": 1}
        store.purge("b")
        assert store.counts() == {"a": 3}


def held(d: Daemon) -> list[DeadLetter]:
    """The letters in ``d``'s state directory, read directly."""
    with closing(DeadLetterStore(d.root / "state")) as store:
        return store.letters()


# -- refused events, kept and replayed --------------------------------------------------------

N_EVENTS = 70
REFUSED = slice(3, None, 7)  # every 7th event is refused with a 422 (10 of 70)


def refusing(ids: set[str], status: int = 422) -> Behaviour:
    """A receiver's answer: ``status`` for the webhook-ids in ``ids`` (read live), else 200."""

    async def answer(_n: int, req: web.Request) -> web.StreamResponse:
        return web.Response(status=status if req.headers["webhook-id"] in ids else 200)

    return answer


async def listed(d: Daemon) -> list[dict[str, Any]]:
    """What ``dead-letters list --json`` prints, one object per letter."""
    res = await eventsinkd("dead-letters", "list", "-c", d.config, "--json")
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


async def sink_figures(d: Daemon) -> tuple[float, ...]:
    """Sink s's dead letters held, events failed and events delivered, from /metrics."""
    text = await d.get("/metrics")
    names = ["eventsinkd_dead_letters", "bubblefish_events_failed_total"]
    names.append("bubblefish_events_delivered_total")
    return tuple(metric_value(text, name, sink="s") for name in names)


@pytest.mark.parametrize("replay_with", ["daemon running", "daemon stopped"])
@pytest.mark.parametrize("overflow", ["block", "drop"])
async def test_refused_events_are_kept_and_replay_sends_each_once_more(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon], overflow: str, replay_with: str
) -> None:
    refused: set[str] = set()
    receiver.behaviour = refusing(refused)
    d = new_daemon([{"name": "s", "url": receiver.url, "secret": SECRET}], overflow=overflow)
    w = NexusWriter(d.wal, max_segment_bytes=32 * 1024)
    for _ in range(N_EVENTS // 10):
        w.append(10)
    ids = webhook_ids(w)
    refused.update(ids[REFUSED])
    kept = sorted(refused)
    await d.start()
    await receiver.wait_for(N_EVENTS)
    status = (await settle(d))["sinks"]["s"]
    await wait_cursor_at_end(d, w)  # in block mode too: past the refused events

    assert Counter(receiver.ids) == Counter(ids)  # one request each: a 422 is not retried
    first_body = {r.headers["webhook-id"]: r.body for r in receiver.requests}
    letters = await listed(d)
    assert sorted(x["webhook_id"] for x in letters) == kept
    for x in letters:
        assert (x["sink"], x["attempts"], x["last_outcome"]) == ("s", 1, "HTTP 422")
        assert x["event"] == json.loads(first_body[x["webhook_id"]])
    delivered = N_EVENTS - len(kept)
    assert (status["delivered"], status["failed"], status["dropped"]) == (delivered, len(kept), 0)
    assert status["dead_letters"] == len(kept)
    assert await sink_figures(d) == (len(kept), len(kept), delivered)

    running = replay_with == "daemon running"
    if not running:
        assert await d.stop() == 0

    async def replay(*args: str) -> subprocess.CompletedProcess[str]:
        res = await eventsinkd("dead-letters", "replay", "-c", d.config, *args)
        # Who sends them: the daemon while it runs, else the command itself.
        assert ("the daemon runs" in res.stdout) == running, res.stdout
        return res

    # Still refused: exit 1, each kept with one more attempt.
    res = await replay()
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"replayed {len(kept)} dead letter(s): 0 delivered, {len(kept)} failed" in res.stdout
    assert f"failed: {kept[0]}: HTTP 422" in res.stdout
    assert sorted(ids_of(held(d))) == kept
    assert {(x.attempts, x.last_outcome, x.replay) for x in held(d)} == {(2, "HTTP 422", False)}

    # Accepted: --id sends only that one, then a replay of all sends the rest.
    refused.clear()
    sent = len(receiver.requests)
    res = await replay("--id", kept[0])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "replayed 1 dead letter(s): 1 delivered, 0 failed" in res.stdout
    assert receiver.ids[sent:] == [kept[0]]
    res = await replay()
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"replayed {len(kept) - 1} dead letter(s): {len(kept) - 1} delivered" in res.stdout

    want = Counter(ids)
    want.update(kept * 2)  # the refused replay and the accepted one: exactly once more each
    assert Counter(receiver.ids) == want
    for r in receiver.requests:
        assert r.body == first_body[r.headers["webhook-id"]]  # the body exactly as first sent
        Webhook(SECRET).verify(r.body, r.headers)  # raises unless signed with SECRET
    assert held(d) == []
    assert ("dead letters replayed" in d.log.read_text()) == running
    if running:
        assert (await sink_status(d))["dead_letters"] == 0
        assert await sink_figures(d) == (0, len(kept), delivered)
        assert await d.stop() == 0


# -- out of retries while the receiver works ---------------------------------------------------

MAX_RETRIES = 3


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> bool:
    """Poll ``check`` until it holds; False if it never did within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_event_out_of_retries_becomes_a_dead_letter_and_the_sink_runs_on(
    receiver: WebhookServer, new_daemon: Callable[..., Daemon]
) -> None:
    sink = {
        "name": "s",
        "url": receiver.url,
        "max_retries": MAX_RETRIES,
        "concurrency": 4,
        "timeout_seconds": 60,  # the receiver may hold the last attempt (below)
    }
    d = new_daemon([sink], overflow="block", retry_backoff_seconds=[0.05])
    w = NexusWriter(d.wal)
    w.append(20)
    poison = webhook_ids(w)[5]
    second_try: list[int] = []  # index of the poison's 2nd request
    held_until_success: list[bool] = []

    async def delivered_since_second_try() -> bool:
        before = sum(1 for i in receiver.ids[: second_try[0]] if i != poison)
        return int((await sink_status(d))["delivered"]) > before

    async def answer(n: int, req: web.Request) -> web.StreamResponse:
        if req.headers["webhook-id"] != poison:
            return web.Response(status=200)
        tries = receiver.ids[: n + 1].count(poison)
        if tries == 2:
            # Its first failure is behind the daemon now: more events, to succeed meanwhile.
            second_try.append(n)
            await asyncio.to_thread(w.append, 10)
        if tries == MAX_RETRIES + 1:
            # With no success since its first attempt this would be an outage (the sink
            # pauses). Hold the last attempt until the daemon has delivered an event that
            # reached us after the 2nd try, so that this holds whatever the machine's load.
            held_until_success.append(await eventually(delivered_since_second_try))
        return web.Response(status=500)

    receiver.behaviour = answer

    async def one_letter() -> bool:
        return int((await sink_status(d))["dead_letters"]) == 1

    await d.start()
    assert await eventually(one_letter), d.log.read_text()[-3000:]
    letters = await listed(d)
    assert [(x["webhook_id"], x["attempts"], x["last_outcome"]) for x in letters] == [
        (poison, MAX_RETRIES + 1, "HTTP 500")
    ]
    assert held_until_success == [True]

    # Not paused: in block mode a paused sink would take no new events.
    w.append(10)
    others = [i for i in webhook_ids(w) if i != poison]
    await until(lambda: set(receiver.ids) >= set(others))
    status = (await settle(d))["sinks"]["s"]
    await wait_cursor_at_end(d, w)
    assert Counter(i for i in receiver.ids if i != poison) == Counter(others)  # once each
    assert receiver.ids.count(poison) == MAX_RETRIES + 1  # and never again
    assert (status["state"], status["paused_since"]) == ("running", None)
    assert (status["delivered"], status["failed"], status["dropped"]) == (len(others), 1, 0)
    assert await sink_figures(d) == (1, 1, len(others))
    assert metric_value(await d.get("/metrics"), "eventsinkd_sink_paused", sink="s") == 0
    assert "paused after" not in d.log.read_text()  # never paused at all
    assert await d.stop() == 0


# -- command line errors and listings ----------------------------------------------------------

NOWHERE = "http://127.0.0.1:9/hook"


def seeded(d: Daemon) -> list[DeadLetter]:
    """Letters of sinks a and b in ``d``'s state directory, last tried 1000 to 3000 s."""
    made = [letter("a", 1, last_attempt=1_000.0), letter("a", 2, last_attempt=3_000.0)]
    made.append(letter("b", 3, last_attempt=1_000.0, attempts=4, outcome="HTTP 500"))
    with closing(DeadLetterStore(d.root / "state")) as store:
        store.add(made)
    return made


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["purge", "--before", "not-a-time"], "'not-a-time' is not an RFC 3339 time"),
        (["purge", "--before", "2026-04-10T12:00:00"], "has no time zone"),
        (["replay", "--sink", "nosuch"], "no sink named 'nosuch' in the config (sinks: a, b)"),
    ],
)
def test_cli_bad_arguments_exit_2_and_change_nothing(
    new_daemon: Callable[..., Daemon], args: list[str], message: str
) -> None:
    d = new_daemon([{"name": "a", "url": NOWHERE}, {"name": "b", "url": NOWHERE}])
    made = seeded(d)
    res = run_cli("dead-letters", *args, "-c", d.config)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert held(d) == made


def test_cli_list_with_no_dead_letters(new_daemon: Callable[..., Daemon]) -> None:
    d = new_daemon([{"name": "s", "url": NOWHERE}])
    res = run_cli("dead-letters", "list", "-c", d.config)
    assert (res.returncode, res.stdout, res.stderr) == (0, "0 dead letter(s)\n", "")


def test_cli_list_and_purge(new_daemon: Callable[..., Daemon]) -> None:
    d = new_daemon([{"name": "a", "url": NOWHERE}, {"name": "b", "url": NOWHERE}])
    a1, a2, b3 = seeded(d)
    res = run_cli("dead-letters", "list", "-c", d.config, "--sink", "a")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"a\t{a1.webhook_id}\t1 attempt(s)\tlast 1970-01-01T00:16:40Z\tHTTP 422",
        f"a\t{a2.webhook_id}\t1 attempt(s)\tlast 1970-01-01T00:50:00Z\tHTTP 422",
        "2 dead letter(s)",
    ]
    # 2000 s after the epoch, with an offset: a1 (1000 s) goes, a2 (3000 s) and b3 stay.
    before = "1970-01-01T01:33:20+01:00"
    res = run_cli("dead-letters", "purge", "-c", d.config, "--sink", "a", "--before", before)
    assert (res.returncode, res.stdout) == (0, "purged 1 dead letter(s)\n"), res.stderr
    assert held(d) == [a2, b3]


def test_cli_replay_of_an_id_with_no_letter_exits_1(new_daemon: Callable[..., Daemon]) -> None:
    d = new_daemon([{"name": "s", "url": NOWHERE}])
    res = run_cli("dead-letters", "replay", "-c", d.config, "--id", "memory_written:nosuch")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "failed: memory_written:nosuch: no such dead letter" in res.stdout


def test_cli_reports_a_damaged_store_without_a_traceback(
    new_daemon: Callable[..., Daemon],
) -> None:
    d = new_daemon([{"name": "s", "url": NOWHERE}])
    (d.root / "state").mkdir(exist_ok=True)
    (d.root / "state" / "dead-letters.sqlite3").write_text("garbage\n" * 100)
    res = run_cli("dead-letters", "list", "-c", d.config)
    assert res.returncode == 1
    assert "cannot use the dead-letter store" in res.stderr
    assert "Traceback" not in res.stderr
