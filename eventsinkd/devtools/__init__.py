"""Development tools, kept apart from the daemon: the Nexus-like WAL writer, demo, receiver."""
