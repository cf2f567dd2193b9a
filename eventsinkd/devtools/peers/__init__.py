"""The servers eventsinkd delivers to, run on 127.0.0.1 by the tests, the benchmarks and
``eventsinkd receive``: one module per kind of peer.

- :mod:`.webhook`: the tests' programmable receiver, ``eventsinkd receive``'s signature
  checker, and the benchmarks' counting receiver (a raw asyncio HTTP/1.1 protocol).
- :mod:`.otlp`, :mod:`.fluentd`: a strict peer for the tests and a counting one for the
  benchmarks, side by side.
- :mod:`.nats`: nats-server with JetStream, launched; :mod:`.rsyslogd`: Debian's rsyslogd,
  configured and launched; :mod:`.syslog`: RFC 5424 parsing and small TCP/TLS/UDP peers.
- :mod:`.process` launches a server program and stops it; :mod:`.serving` runs one of our
  own peers as a child process (stop on a signal or when the parent goes away).

None of it is used by ``eventsinkd run``.
"""
