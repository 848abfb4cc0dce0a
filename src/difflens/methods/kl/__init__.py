"""Per-token KL: where, and on which tokens, the finetune's next-token distribution departs
from the base's, with the activation-difference norm at chosen layers from the same passes.

    from difflens.methods.kl import kl
    summary = kl(n_texts=128, out="runs/kl")        # or kl(KLConfig(...))

Modules, one job each: ``config``, ``core`` (tiled KL and fingerprint sweeps, pure tensors),
``aggregate`` (mergeable streaming statistics and top-N stores), ``corpus_pass`` (the forward
passes), ``tables`` (summary tables), ``runner`` (stages over a run dir), ``result``
(artifacts), ``summary`` (text), ``report`` (HTML section), ``cli`` (``difflens kl``).
Importing this package is cheap: torch and the models load only when a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from difflens.methods.kl.config import KLConfig

__all__ = ["KLConfig", "KLResult", "kl"]


def kl(config: KLConfig | None = None, out: str | None = None, pair: Any = None,
       progress: bool = True, **fields: Any) -> dict[str, Any]:
    """Run the per-token KL with a :class:`KLConfig` or its fields as keyword arguments (no
    report; :func:`difflens.kl` also writes it).  Returns the run summary."""
    from dataclasses import replace
    from pathlib import Path

    from difflens.methods.kl.config import KLConfig
    from difflens.methods.kl.runner import run_kl

    config = KLConfig(**fields) if config is None else replace(config, **fields)
    return run_kl(config, Path(out) if out else None, pair=pair, progress=progress)


def __getattr__(name: str) -> Any:
    if name == "KLConfig":
        from difflens.methods.kl.config import KLConfig

        return KLConfig
    if name == "KLResult":
        from difflens.methods.kl.result import KLResult

        return KLResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
