"""progress-relay: pushes every event of an execution to the people allowed to see it."""

__version__ = "0.1.0"
