"""Diff Mining: which tokens a finetune promotes or suppresses, read from logit differences.

    from difflens.methods.mining import mine
    summary = mine(n_texts=256, out="runs/mining")      # or mine(MiningConfig(...))

Modules, one job each: ``extract`` (Δ per position, batched), ``aggregate`` (streaming Top-K
counts), ``orderings``, ``nmf`` (topics), ``normalize`` (token merging), ``examples`` (contexts),
``relevance`` (grader hook), ``runner`` (stages over a run dir), ``result`` (artifacts),
``summary`` (text), ``report`` (HTML section), ``cli`` (``difflens mine``).  Importing this
package is cheap: torch and the models load only when a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from difflens.methods.mining.config import MiningConfig

__all__ = ["MiningConfig", "MiningResult", "mine"]


def mine(config: MiningConfig | None = None, out: str | None = None, pair: Any = None,
         progress: bool = True, grader: Any = None, **fields: Any) -> dict[str, Any]:
    """Run Diff Mining with a :class:`MiningConfig` or its fields as keyword arguments.

    Returns the run summary (:class:`MiningResult` as a dict, also ``<run dir>/summary.json``).
    """
    from pathlib import Path

    from difflens.methods.mining.config import MiningConfig
    from difflens.methods.mining.runner import run_mining

    if config is None:
        config = MiningConfig(**fields)
    elif fields:
        from dataclasses import replace

        config = replace(config, **fields)
    return run_mining(config, Path(out) if out else None, pair=pair, progress=progress,
                      grader=grader)


def __getattr__(name: str) -> Any:
    if name == "MiningConfig":
        from difflens.methods.mining.config import MiningConfig

        return MiningConfig
    if name == "MiningResult":
        from difflens.methods.mining.result import MiningResult

        return MiningResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
