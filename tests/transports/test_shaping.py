"""Templated URLs and headers, and ``transform`` (jq), end to end: the real daemon over a
NexusWriter WAL and real receivers on 127.0.0.1; config refusals through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml
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
    until_metric,
    wait_cursor_at_end,
)
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from eventsinkd.config.loading import ConfigError, parse_config
from eventsinkd.devtools.peers.webhook import WebhookServer
from eventsinkd.devtools.sim.nexus_writer import NexusWriter, Written
from eventsinkd.events.templates import header_value, path_segment, query_value
from eventsinkd.wal.gotime import parse_go_time

# Subjects that would change a URL's structure if they were put in it as they are.
AWKWARD = ["a/b", "..", ".", "two words", "日本語 メモ", "?x=1#frag", "%41", "", "user:alice"]


def segment_of(target: str) -> str:
    """The one segment between /users/ and /memories of a request target."""
    path, _, _ = target.partition("?")
    parts = path.split("/")
    assert len(parts) == 4 and parts[:2] == ["", "users"] and parts[3] == "memories", target
    return parts[2]


async def test_a_templated_url_sends_each_subject_to_its_own_path(tmp_path: Path) -> None:
    peers: set[Any] = set()

    async def answer(_n: int, req: web.Request) -> web.StreamResponse:
        peers.add(req.transport.get_extra_info("peername") if req.transport else None)
        return web.Response(status=204)

    receiver = await WebhookServer(behaviour=answer, any_path=True).start()
    url = f"http://127.0.0.1:{receiver.port}/users/{{subject}}/memories?from={{source}}&v=1"
    sink = {
        "name": "s",
        "url": url,
        "headers": {"X-Subject": "{subject}", "X-Static": "{{literal}}"},
        "concurrency": 1,
        "timeout_seconds": 60,  # no timeout on a loaded machine: the one connection stays
    }
    d = Daemon(tmp_path, [sink], overflow="block")
    try:
        await d.start()
        w = NexusWriter(d.wal)
        by_id: dict[str, Written] = {}
        for subject in AWKWARD:
            for x in await asyncio.to_thread(w.append, 2, subject=subject):
                by_id[f"memory_written:{x.payload_id}"] = x
        await until(lambda: set(by_id) <= set(receiver.ids), timeout_s=60)
        await settle(d)
    finally:
        await d.stop()
        await receiver.stop()
    paths: dict[str, set[str]] = {}
    for r in receiver.requests:
        x = by_id[r.headers["webhook-id"]]
        subject = x.fields["subject"]
        segment = segment_of(r.target)
        # One segment, always: a value never adds one, climbs (..) or starts a query.
        assert "/" not in segment and "?" not in segment and "#" not in segment
        assert segment not in (".", "..", "")
        assert unquote(segment) == (subject or "_")  # empty: "_" (documented)
        assert r.target.partition("?")[2] == f"from={x.fields['source']}&v=1"
        # A header value as a ce- header: percent-encoded, printable ASCII only.
        assert all(0x21 <= ord(c) <= 0x7E for c in r.headers["X-Subject"])
        assert unquote(r.headers["X-Subject"]) == subject
        assert r.headers["X-Static"] == "{literal}"
        paths.setdefault(segment, set()).add(subject)
    assert len(paths) == len(AWKWARD)  # each subject its own path, none shared
    assert all(len(s) == 1 for s in paths.values())
    assert len(peers) == 1  # one pooled connection to the origin for every path


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("http://{subject}.example.com/x", "host"),
        ("http://example.com:{payload_id}/x", "port"),
        ("'{source}://example.com/x'", "scheme"),
        ("http://{actor_id}@example.com/x", "user"),
        ("http://example.com/x#{subject}", "fragment"),
    ],
)
def test_a_template_outside_path_and_query_is_refused_with_key_and_line(
    tmp_path: Path, url: str, where: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"wal:\n  dir: {tmp_path}\nevents:\n  sinks:\n    - name: s\n      url: {url}\n")
    res = run_cli("check-config", "-c", cfg)
    assert res.returncode == 2, (where, res.stdout, res.stderr)
    assert "events.sinks[0].url (line 6): a template can only be in the URL's path or query" in (
        res.stderr
    ), res.stderr


def test_a_templated_secret_url_never_shows_its_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    url = "https://hooks.example.com/services/T0SECRETPATH/{subject}?token=s3cr3t"
    cfg.write_text(
        f"wal:\n  dir: {tmp_path}\nevents:\n  sinks:\n    - name: s\n      url: env:HOOK_URL\n"
    )
    res = run_cli("check-config", "-c", cfg, env={**os.environ, "HOOK_URL": url})
    assert res.returncode == 0, res.stderr
    assert "T0SECRETPATH" not in res.stdout + res.stderr and "s3cr3t" not in res.stdout
    bad = url.replace("hooks.example.com", "{source}.example.com")
    res = run_cli("check-config", "-c", cfg, env={**os.environ, "HOOK_URL": bad})
    assert res.returncode == 2 and "path or query" in res.stderr
    assert "T0SECRETPATH" not in res.stdout + res.stderr and "s3cr3t" not in res.stderr


# -- transform ---------------------------------------------------------------------------

RENAME = "{memory: .payload_id, who: .actor_id, kind: $event_type, at: $wal_time}"
SHAPE = """if .subject == "skip" then empty
elif .subject == "bad" then error("no shape for " + .payload_id)
elif .subject == "null" then null
else {memory: .payload_id, who: .actor_id, kind: $event_type, at: $wal_time} end"""


async def test_a_transform_renames_filters_and_dead_letters_end_to_end(tmp_path: Path) -> None:
    receiver = await WebhookServer().start()
    sink = {"name": "s", "url": receiver.url, "secret": SECRET, "transform": SHAPE}
    d = Daemon(tmp_path, [sink], overflow="block")
    try:
        await d.start()
        w = NexusWriter(d.wal)
        plan = ["ok", "skip", "bad", "ok", "null", "bad", "ok"]
        written = []
        for subject in plan:
            written += [(subject, x) for x in await asyncio.to_thread(w.append, 2, subject=subject)]
        sent = {f"memory_written:{x.payload_id}": x for s, x in written if s == "ok"}
        await until(lambda: set(sent) <= set(receiver.ids), timeout_s=60)
        await settle(d)
        await wait_cursor_at_end(d, w)  # past the filtered and the dead letters (block mode)
        status = await sink_status(d)
        metrics = await d.get("/metrics")
        res = await eventsinkd("dead-letters", "list", "-c", d.config, "--json")
        assert await d.stop() == 0
        first = list(receiver.requests)
        # A program that no longer fails: the replay (by the command, no daemon running)
        # sends the dead letters through it.
        d.write_config([{**sink, "transform": RENAME}])
        replayed = await eventsinkd("dead-letters", "replay", "-c", d.config)
        listed = await eventsinkd("dead-letters", "list", "-c", d.config, "--json")
    finally:
        await d.stop()
        await receiver.stop()
    assert sorted(r.headers["webhook-id"] for r in first) == sorted(sent)  # no others sent
    hook = Webhook(SECRET)
    for r in first:
        hook.verify(r.body, r.headers)  # the transformed body is the one signed
        x = sent[r.headers["webhook-id"]]
        assert json.loads(r.body) == {
            "memory": x.payload_id,
            "who": x.fields["actor_id"],
            "kind": "memory_written",
            "at": pytest.approx(parse_go_time(x.timestamp)),
        }
    filtered = sum(1 for s, _ in written if s in ("skip", "null"))
    bad = {x.payload_id: x for s, x in written if s == "bad"}
    assert (status["delivered"], status["filtered"], status["failed"]) == (
        len(sent),
        filtered,
        len(bad),
    )
    assert status["offered"] == len(written)
    assert metric_value(metrics, "eventsinkd_events_filtered_total", sink="s") == filtered
    assert res.returncode == 0, res.stderr
    letters = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(x["webhook_id"] for x in letters) == sorted(f"memory_written:{p}" for p in bad)
    for x in letters:
        pid = x["webhook_id"].partition(":")[2]
        assert x["last_outcome"] == f"jq: no shape for {pid}"
        assert x["event"]["payload_id"] == pid  # the event as Nexus's body, to replay
        assert x["event"]["subject"] == "bad"
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert (listed.returncode, listed.stdout) == (0, "")
    again = receiver.requests[len(first) :]
    assert sorted(r.headers["webhook-id"] for r in again) == sorted(
        f"memory_written:{p}" for p in bad
    )
    for r in again:
        hook.verify(r.body, r.headers)
        body = json.loads(r.body)
        x = bad[body["memory"]]
        assert body == {
            "memory": x.payload_id,
            "who": x.fields["actor_id"],
            "kind": "memory_written",
            "at": pytest.approx(parse_go_time(x.timestamp)),
        }


def config_text(tmp_path: Path, receiver: WebhookServer, transform: str) -> str:
    return yaml.safe_dump(
        {
            "wal": {"dir": str(tmp_path / "wal")},
            "events": {"sinks": [{"name": "s", "url": receiver.url, "transform": transform}]},
        }
    )


async def test_a_bad_program_is_refused_at_start_and_at_reload(
    tmp_path: Path, receiver: WebhookServer
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text(tmp_path, receiver, "{memory: .payload_id"))
    (tmp_path / "wal").mkdir()
    for command in ("check-config", "run"):
        res = await eventsinkd(command, "-c", cfg)
        assert res.returncode == 2, res
        assert "events.sinks[0].transform (line " in res.stderr
        assert "the jq program does not compile: jq: error: syntax error" in res.stderr

    d = Daemon(tmp_path / "d", [{"name": "s", "url": receiver.url, "transform": RENAME}])
    try:
        await d.start()
        w = NexusWriter(d.wal)
        first = await asyncio.to_thread(w.append, 3)
        await receiver.wait_for(3)
        text = d.config.read_text()
        d.config.write_text(text.replace("who: .actor_id", "who: .actor_id |"))
        d.signal(signal.SIGHUP)
        await until_metric(d, "eventsinkd_config_reloads_total", 1, result="failure")
        log = d.log.read_text()
        assert "events.sinks[0].transform" in log and "does not compile" in log
        more = await asyncio.to_thread(w.append, 3)
        await receiver.wait_for(6)  # the running config (and its program) still works
    finally:
        await d.stop()
    bodies = [json.loads(r.body) for r in receiver.requests]
    # Each once, shaped by the program; in any order (a sink sends concurrently).
    assert sorted(b["memory"] for b in bodies) == sorted(x.payload_id for x in first + more)


async def test_tail_shows_what_a_sink_would_send(tmp_path: Path) -> None:
    w = NexusWriter(tmp_path / "wal")
    for subject in ("a/b", "skip", "bad"):
        w.append(1, subject=subject)
    cfg = tmp_path / "c.yaml"
    sink = {
        "name": "crm",
        "url": "http://crm.example.com/users/{subject}/memories?key=s3cr3t",
        "format": "cloudevents",
        "cloudevents": {"mode": "binary"},
        "transform": SHAPE,
    }
    cfg.write_text(
        yaml.safe_dump({"wal": {"dir": str(tmp_path / "wal")}, "events": {"sinks": [sink]}})
    )
    res = await eventsinkd("tail", "--sink", "crm", "-c", cfg, "--from", "beginning", "--no-follow")
    assert res.returncode == 0, res.stderr
    ok, skip, bad = [json.loads(line) for line in res.stdout.splitlines()]
    x = w.expected_data()
    assert ok["id"] == f"memory_written:{x[0].payload_id}"
    assert ok["url"] == "http://crm.example.com/users/a%2Fb/memories?key=***"
    assert ok["headers"]["ce-subject"] == "a/b" and ok["headers"]["ce-type"].endswith(
        ".memory_written"
    )
    assert ok["body"]["memory"] == x[0].payload_id and set(ok["body"]) == {
        "memory",
        "who",
        "kind",
        "at",
    }
    assert skip == {"id": f"memory_written:{x[1].payload_id}", "filtered": True}
    assert bad == {
        "id": f"memory_written:{x[2].payload_id}",
        "dead_letter": f"jq: no shape for {x[2].payload_id}",
    }
    assert "s3cr3t" not in res.stdout + res.stderr
    missing = await eventsinkd("tail", "--sink", "nope", "-c", cfg, "--no-follow")
    assert missing.returncode == 2 and "no sink 'nope'" in missing.stderr


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        (
            "      url: http://h/x\n      cloudevents: {mode: binary}\n",
            "events.sinks[0] (line 4): cloudevents options are for format: cloudevents",
        ),
        (
            "      url: http://h/x\n      max_batch: 10\n",
            "events.sinks[0] (line 4): max_batch: a webhook sink sends one event per request",
        ),
        (
            "      url: http://h/{subject}\n      format: cloudevents\n"
            "      cloudevents: {mode: batched}\n",
            "events.sinks[0] (line 4): a templated url or header is filled per event",
        ),
        (
            "      url: http://h/x\n      headers: {X-A: '{subjects}'}\n",
            "events.sinks[0].headers (line 6): header X-A: unknown field(s) subjects",
        ),
        (
            "      url: http://h/x\n      format: cloudevents\n"
            "      cloudevents: {source: '/{host}/{nope}'}\n",
            "events.sinks[0].cloudevents.source (line 7): unknown field(s) nope",
        ),
        (
            "      url: http://h/x\n      format: cloudevents\n"
            "      cloudevents: {type_prefix: 'not reverse dns'}\n",
            "events.sinks[0].cloudevents.type_prefix (line 7): use a reverse-DNS name",
        ),
        (
            "      type: nats\n      url: nats://h\n      format: cloudevents\n"
            "      cloudevents: {mode: batched}\n",
            "events.sinks[0] (line 4): a nats sink carries CloudEvents in structured mode",
        ),
        (
            "      type: syslog\n      url: syslog://h\n      transform: '.a |'\n",
            "events.sinks[0].transform (line 7): the jq program does not compile: jq: error:",
        ),
    ],
)
def test_shaping_keys_are_checked_with_the_key_and_line(sink: str, expected: str) -> None:
    text = "wal: {dir: /w}\nevents:\n  sinks:\n    - name: s\n" + sink
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("c.yaml"))
    assert any(expected in p for p in info.value.problems), info.value.problems


async def test_a_templated_secret_url_delivers_and_never_shows_its_secrets(
    tmp_path: Path,
) -> None:
    receiver = await WebhookServer(any_path=True).start()
    url = f"http://127.0.0.1:{receiver.port}/T0SECRETPATH/{{subject}}?token=s3cr3tq&s={{source}}"
    d = Daemon(tmp_path, [{"name": "s", "url": "env:HOOK_URL", "max_retries": 0}])
    try:
        await d.start(env={**os.environ, "HOOK_URL": url})
        w = NexusWriter(d.wal)
        written = await asyncio.to_thread(w.append, 3, subject="a b/c")
        await receiver.wait_for(3)
        receiver.behaviour = refuse  # then a failure, logged, and a dead letter
        await asyncio.to_thread(w.append, 1, subject="x")
        await until_metric(d, "bubblefish_events_failed_total", 1, sink="s")
        shown = await d.get("/status") + await d.get("/metrics")
        listed = await eventsinkd("dead-letters", "list", "-c", d.config, "--json")
    finally:
        await d.stop()
        await receiver.stop()
    for r, x in zip(receiver.requests, written, strict=False):
        assert r.target == f"/T0SECRETPATH/a%20b%2Fc?token=s3cr3tq&s={x.fields['source']}"
    seen = shown + d.log.read_text() + listed.stdout + listed.stderr
    assert "env:HOOK_URL (127.0.0.1)" in shown
    assert "T0SECRETPATH" not in seen and "s3cr3tq" not in seen


async def refuse(_n: int, _req: web.Request) -> web.StreamResponse:
    return web.Response(status=422)


@given(st.text())
def test_a_value_is_one_segment_one_query_value_or_one_header_value(value: str) -> None:
    segment, query, header = path_segment(value), query_value(value), header_value(value)
    assert not set("/?#& ") & set(segment + query)
    assert segment not in ("", ".", "..")
    assert unquote(segment, errors="strict") == (value or "_")
    assert unquote(query, errors="strict") == value
    assert all(0x21 <= ord(c) <= 0x7E and c != '"' for c in header)
    assert unquote(header, errors="strict") == value
