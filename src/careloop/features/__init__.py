"""Point-in-time features over the event store."""
