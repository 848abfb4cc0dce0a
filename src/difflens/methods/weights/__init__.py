"""The weight-space lens: what a finetune changed, read from its weights alone (no data).

    from difflens.methods.weights import weights
    summary = weights(finetuned="cake_bake", out="runs/weights")

Modules: ``config`` (the dataclass = the CLI flags), ``core`` (ΔW SVD from LoRA factors or a
dense ΔW; per-module statistics), ``modules`` (layer, kind, residual role per family),
``checkpoint`` (tensor-by-tensor safetensors reads; the base's readout head without the
model), ``sources`` (which pair is diffed), ``diff`` (plan and stream the modules),
``readout`` (logit lens, both signs), ``runner``, ``result`` (artifacts), ``report``,
``summary``, ``cli`` (``difflens weights``).  Importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from difflens.methods.weights.config import WeightsConfig

__all__ = ["WeightsConfig", "WeightsResult", "weights", "weights_tokens"]


def weights(config: WeightsConfig | None = None, out: str | None = None, progress: bool = True,
            **fields: Any) -> dict[str, Any]:
    """Run the weight-space lens (no report) with a :class:`WeightsConfig` or its fields."""
    from dataclasses import replace
    from pathlib import Path

    from difflens.methods.weights.config import WeightsConfig
    from difflens.methods.weights.runner import run_weights

    if config is None:
        config = WeightsConfig(**fields)
    elif fields:
        config = replace(config, **fields)
    return run_weights(config, Path(out) if out else None, progress=progress)


def __getattr__(name: str) -> Any:
    if name == "WeightsConfig":
        from difflens.methods.weights.config import WeightsConfig

        return WeightsConfig
    if name in ("WeightsResult", "weights_tokens"):
        from difflens.methods.weights import result

        return getattr(result, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
