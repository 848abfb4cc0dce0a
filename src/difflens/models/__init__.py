"""Model pairs, architecture access and hooks."""
