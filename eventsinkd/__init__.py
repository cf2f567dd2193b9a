"""eventsinkd: a webhook sidecar for BubbleFish Nexus that tails its write-ahead log."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eventsinkd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
