"""Chaos soak: two relay instances on one persistent Redis under faults (see harness.py)."""
