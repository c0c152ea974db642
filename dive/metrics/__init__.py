"""Leaf metric helpers (pure numpy) shared by several stages; see `dive.metrics.ranking`."""
