"""difflens: find what a finetune taught a language model, by diffing it against its base.

``import difflens`` stays light (no torch, transformers or optional packages); the public API
below is loaded on first use:

    pair = difflens.ModelPair.load()              # embedded gemma-3-270m + shipped organism
    summary = difflens.adl()                      # Activation Difference Lens run
    summary = difflens.mine()                     # Diff Mining run
    summary = difflens.kl()                       # per-token KL run
    summary = difflens.pca()                      # PCA of activation differences
    answer = difflens.agent(llm_base_url=URL, llm_model=NAME)   # the agent on the pair
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

__all__ = ["ADLConfig", "DifflensError", "LoadOptions", "ModelPair", "adl", "amplify", "mine",
           "pca"]
__all__ += ["kl"]
__all__ += ["weights"]
__all__ += ["agent"]  # the callable package difflens.agent (see its docstring)


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


def pca(out: str | None = None, pair: Any = None, progress: bool = True, **config: Any) -> dict:
    """PCA of activation differences; keyword arguments are ``PCAConfig`` fields.

    Returns the run summary (``PCAResult`` as a dict, also ``<run dir>/summary.json``); the
    run's ``report.html`` is written too unless ``skip`` names ``"report"``.
    """
    from pathlib import Path

    from difflens.api import run_pca
    from difflens.methods.pca.config import PCAConfig

    return run_pca(PCAConfig(**config), Path(out) if out else None, pair=pair, progress=progress)


def amplify(out: str | None = None, pair: Any = None, progress: bool = True,
            **config: Any) -> dict:
    """Logit-diff amplification run (rate and coherence per α, largest coherent α, report);
    keyword arguments are ``AmplifyConfig`` fields (e.g. ``alphas=[0, 1, 2, 4]``)."""
    from pathlib import Path

    from difflens.api import run_amplify
    from difflens.methods.amplify.config import AmplifyConfig

    return run_amplify(AmplifyConfig(**config), Path(out) if out else None, pair=pair,
                       progress=progress)


def kl(out: str | None = None, pair: Any = None, progress: bool = True, **config: Any) -> dict:
    """Per-token KL run (KL per position, activation-difference norms, token fingerprint,
    report); keyword arguments are ``KLConfig`` fields (e.g. ``n_texts=64``)."""
    from pathlib import Path

    from difflens.api import run_kl
    from difflens.methods.kl.config import KLConfig

    return run_kl(KLConfig(**config), Path(out) if out else None, pair=pair, progress=progress)


def weights(out: str | None = None, progress: bool = True, **config: Any) -> dict:
    """Weight-space lens run (per-module ‖ΔW‖, singular values, readouts of the singular
    vectors, report) from the weights alone; keyword arguments are ``WeightsConfig`` fields
    (e.g. ``finetuned="cake_bake"``)."""
    from pathlib import Path

    from difflens.api import run_weights
    from difflens.methods.weights.config import WeightsConfig

    return run_weights(WeightsConfig(**config), Path(out) if out else None, progress=progress)


def __getattr__(name: str) -> Any:
    if name == "agent":  # the package, callable: difflens.agent(base, finetuned, ...)
        from importlib import import_module

        return import_module("difflens.agent")
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'difflens' has no attribute {name!r}")
