"""eventsinkd's own state beside the cursors: dead letters, the state lock, requests."""
