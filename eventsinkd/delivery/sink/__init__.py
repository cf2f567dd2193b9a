"""One sink: what it holds (:mod:`.ledger`) and what it does with it (:mod:`.sink`)."""

from eventsinkd.delivery.sink.sink import Sink

__all__ = ["Sink"]
