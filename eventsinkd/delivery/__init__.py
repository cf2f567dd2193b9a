"""Delivering events: per-sink queues, HTTP workers, retries and signatures."""
