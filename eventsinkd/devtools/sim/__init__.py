"""A stand-in for Nexus's WAL writer, for the demo, the benchmarks and the tests."""
