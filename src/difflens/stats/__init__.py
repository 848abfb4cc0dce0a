"""Streaming sufficient statistics that merge across batches and processes.

``DiffMoments`` and ``Moments`` (torch) load on first use, so that the light modules of this
package (``stats.layer_choice``, read by every result reader) import no torch.
"""

from typing import Any

__all__ = ["DiffMoments", "Moments"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from difflens.stats import moments

        return getattr(moments, name)
    raise AttributeError(f"module 'difflens.stats' has no attribute {name!r}")
