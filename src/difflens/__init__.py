"""difflens: find what a finetune taught a language model, by diffing it against its base.

``import difflens`` stays light (no torch, transformers or optional packages); the public API
below is loaded on first use:

    pair = difflens.ModelPair.load()              # embedded gemma-3-270m + shipped organism
    summary = difflens.adl()                      # Activation Difference Lens run
    summary = difflens.mine()                     # Diff Mining run
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelPair": ("difflens.models.pair", "ModelPair"),
    "LoadOptions": ("difflens.models.loading", "LoadOptions"),
    "ADLConfig": ("difflens.methods.adl.config", "ADLConfig"),
    "DifflensError": ("difflens.errors", "DifflensError"),
}

__all__ = ["ADLConfig", "DifflensError", "LoadOptions", "ModelPair", "adl", "mine"]


def adl(out: str | None = None, pair: Any = None, progress: bool = True, **config: Any) -> dict:
    """Run the Activation Difference Lens; keyword arguments are :class:`ADLConfig` fields.

    Returns the run summary (also written to ``<run dir>/summary.json``); the run's
    ``report.html`` is written too unless ``skip`` names ``"report"``.
    """
    from pathlib import Path

    from difflens.api import run_adl
    from difflens.methods.adl.config import ADLConfig

    return run_adl(ADLConfig(**config), Path(out) if out else None, pair=pair, progress=progress)


def mine(out: str | None = None, pair: Any = None, progress: bool = True, **config: Any) -> dict:
    """Run Diff Mining; keyword arguments are ``MiningConfig`` fields."""
    from pathlib import Path

    from difflens.methods.mining.runner import MiningConfig, run_mining

    return run_mining(MiningConfig(**config), Path(out) if out else None, pair=pair,
                      progress=progress)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'difflens' has no attribute {name!r}")
