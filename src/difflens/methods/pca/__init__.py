"""PCA of activation differences: the main directions along which a finetune moves activations.

    import difflens
    summary = difflens.pca(n_texts=256, out="runs/pca")

Modules, one job each: ``config`` (flags), ``core`` (valid positions, eigendecomposition, sign
rule, cosines), ``contexts`` (bounded mergeable top-N store), ``passes`` (the two streaming
passes over the models), ``readouts`` (logit lens, Patchscope, steering), ``runner`` (stages over
a run dir), ``result`` (artifacts), ``summary`` (text), ``report`` (HTML section), ``cli``
(``difflens pca``).  Importing this package is cheap: torch loads only when a run starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PCAConfig", "PCAResult"]


def __getattr__(name: str) -> Any:
    if name == "PCAConfig":
        from difflens.methods.pca.config import PCAConfig

        return PCAConfig
    if name == "PCAResult":
        from difflens.methods.pca.result import PCAResult

        return PCAResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
