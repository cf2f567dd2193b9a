"""Development tools, kept apart from the daemon: the Nexus-like WAL writer, the demo, and
the peers (the servers tests, benchmarks and ``eventsinkd receive`` deliver to)."""
