"""Streaming sufficient statistics that merge across batches and processes."""

from difflens.stats.moments import DiffMoments, Moments

__all__ = ["DiffMoments", "Moments"]
